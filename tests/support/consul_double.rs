//! In-process Consul HTTP API double (KV, blocking queries, txn, sessions, locks, lock-delay,
//! ACL token checks) following the Consul HTTP API contract, served on 127.0.0.1 by a
//! background thread.
//!
//! Time-based rules (session TTLs, lock-delays) run on a virtual clock that tests move with
//! [`ConsulDouble::advance_clock`]; blocking-query waits use real time.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use base64::Engine as _;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::watch;

/// Largest KV value Consul accepts.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;
/// Most operations in one transaction (agent/txn_endpoint.go `maxTxnOps`: 128 in current
/// releases, 64 in older ones; the double follows Consul 1.17 and later).
pub const MAX_TXN_OPS: usize = 128;
/// Largest transaction body (`txn_max_req_len`, default raft's suggested 512 KiB).
pub const MAX_TXN_REQ_LEN: usize = 512 * 1024;
/// Default blocking wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest blocking wait.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Longest lock-delay Consul applies.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    value: Vec<u8>,
    flags: u64,
    session: Option<String>,
    lock_index: u64,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Clone, Default)]
struct Kv {
    entries: BTreeMap<String, Entry>,
    /// Index at which each deleted key was deleted.
    tombstones: BTreeMap<String, u64>,
    /// Highest index of any KV change, deletions included.
    table_index: u64,
}

#[derive(Debug, Clone)]
struct Session {
    id: String,
    name: String,
    lock_delay: Duration,
    behavior: String,
    ttl: Option<Duration>,
    ttl_text: String,
    create_index: u64,
    /// Virtual time after which the session is invalidated (2×TTL after the last renewal).
    expires: Option<Instant>,
    renewals: u64,
}

struct State {
    index: u64,
    kv: Kv,
    sessions: HashMap<String, Session>,
    /// Key → virtual time until which acquires fail.
    lock_delays: HashMap<String, Instant>,
    acl: Option<String>,
    /// A key prefix the request's token may read but not write (an ACL `key_prefix` rule with
    /// `policy = "read"`).
    read_only: Option<String>,
    /// Reason the next write transaction's commit fails with (see `fail_next_commit`).
    commit_failure: Option<String>,
    clock_offset: Duration,
    rng: rand::rngs::StdRng,
}

impl State {
    fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn new_id(&mut self) -> String {
        let a: u32 = self.rng.random();
        let b: u16 = self.rng.random();
        let c: u16 = self.rng.random::<u16>() & 0x0fff;
        let d: u16 = (self.rng.random::<u16>() & 0x3fff) | 0x8000;
        let e: u64 = self.rng.random::<u64>() & 0xffff_ffff_ffff;
        format!("{a:08x}-{b:04x}-4{c:03x}-{d:04x}-{e:012x}")
    }

    /// Invalidates sessions whose TTL ran out (2×TTL without renewal). Returns whether anything
    /// changed.
    fn expire_sessions(&mut self) -> bool {
        let now = self.now();
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.expires.is_some_and(|t| t <= now))
            .map(|s| s.id.clone())
            .collect();
        let any = !expired.is_empty();
        for id in expired {
            self.invalidate(&id);
        }
        any
    }

    /// Session invalidation: held keys released (or deleted), lock-delay set on each.
    fn invalidate(&mut self, id: &str) -> bool {
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        let idx = self.next_index();
        let until = self.now() + session.lock_delay.min(MAX_LOCK_DELAY);
        let held: Vec<String> = self
            .kv
            .entries
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            if session.behavior == "delete" {
                self.kv.delete(&key, idx);
            } else if let Some(e) = self.kv.entries.get_mut(&key) {
                e.session = None;
                e.modify_index = idx;
                self.kv.table_index = idx;
            }
            if !session.lock_delay.is_zero() {
                self.lock_delays.insert(key, until);
            }
        }
        true
    }

    fn lock_delayed(&self, key: &str) -> bool {
        self.lock_delays.get(key).is_some_and(|t| *t > self.now())
    }

    fn session_json(&self, s: &Session) -> Value {
        json!({
            "ID": s.id,
            "Name": s.name,
            "Node": "consul-double",
            "LockDelay": s.lock_delay.as_nanos() as u64,
            "Behavior": s.behavior,
            "TTL": s.ttl_text,
            "NodeChecks": ["serfHealth"],
            "ServiceChecks": null,
            "CreateIndex": s.create_index,
            "ModifyIndex": s.create_index,
        })
    }
}

impl Kv {
    fn set(&mut self, key: &str, value: &[u8], flags: u64, idx: u64) {
        match self.entries.get_mut(key) {
            Some(e) => {
                if e.value == value && e.flags == flags {
                    return;
                }
                e.value = value.to_vec();
                e.flags = flags;
                e.modify_index = idx;
            }
            None => {
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        value: value.to_vec(),
                        flags,
                        session: None,
                        lock_index: 0,
                        create_index: idx,
                        modify_index: idx,
                    },
                );
                self.tombstones.remove(key);
            }
        }
        self.table_index = idx;
    }

    /// agent/consul/state/kvs.go `kvsSetCASTxn`: index 0 writes only a missing key; any other
    /// index only a key whose ModifyIndex it is (a missing key fails).
    fn cas(&mut self, key: &str, value: &[u8], flags: u64, cas: u64, idx: u64) -> bool {
        let ok = match self.entries.get(key) {
            None => cas == 0,
            Some(e) => cas != 0 && e.modify_index == cas,
        };
        if ok {
            self.set(key, value, flags, idx);
        }
        ok
    }

    /// Lock acquisition; the caller has checked the session exists and no lock-delay applies.
    fn acquire(&mut self, key: &str, value: &[u8], flags: u64, session: &str, idx: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(e) => match e.session.as_deref() {
                Some(holder) if holder != session => return false,
                Some(_) => {
                    if e.value == value && e.flags == flags {
                        return true;
                    }
                    e.value = value.to_vec();
                    e.flags = flags;
                    e.modify_index = idx;
                }
                None => {
                    e.value = value.to_vec();
                    e.flags = flags;
                    e.session = Some(session.to_string());
                    e.lock_index += 1;
                    e.modify_index = idx;
                }
            },
            None => {
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        value: value.to_vec(),
                        flags,
                        session: Some(session.to_string()),
                        lock_index: 1,
                        create_index: idx,
                        modify_index: idx,
                    },
                );
                self.tombstones.remove(key);
            }
        }
        self.table_index = idx;
        true
    }

    fn release(&mut self, key: &str, value: &[u8], flags: u64, session: &str, idx: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(e) if e.session.as_deref() == Some(session) => {
                e.session = None;
                e.value = value.to_vec();
                e.flags = flags;
                e.modify_index = idx;
                self.table_index = idx;
                true
            }
            _ => false,
        }
    }

    fn delete(&mut self, key: &str, idx: u64) {
        if self.entries.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), idx);
            self.table_index = idx;
        }
    }

    /// agent/consul/state/kvs.go `kvsDeleteCASTxn`: deletes only if the ModifyIndex is `cas`;
    /// a missing key counts as deleted (`true`).
    fn delete_cas(&mut self, key: &str, cas: u64, idx: u64) -> bool {
        match self.entries.get(key) {
            None => true,
            Some(e) if e.modify_index == cas => {
                self.delete(key, idx);
                true
            }
            Some(_) => false,
        }
    }

    fn delete_tree(&mut self, prefix: &str, idx: u64) {
        let keys: Vec<String> = self
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in keys {
            self.delete(&k, idx);
        }
    }

    /// Index of a prefix read: highest ModifyIndex or tombstone under it, else the table index.
    fn prefix_index(&self, prefix: &str) -> u64 {
        let live = self
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.modify_index);
        let dead = self
            .tombstones
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i);
        match live.chain(dead).max() {
            Some(i) => i,
            None => self.table_index,
        }
    }
}

fn entry_json(key: &str, e: &Entry, with_value: bool) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": if with_value && !e.value.is_empty() {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value))
        } else {
            Value::Null
        },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(s) = &e.session {
        v["Session"] = Value::String(s.clone());
    }
    v
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    reachable: AtomicBool,
    /// Bumped to cut every proxied connection.
    cut: watch::Sender<u64>,
    refused: AtomicU64,
    requests: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        let index = self.lock().index;
        self.changed.send_replace(index);
    }
}

/// A running Consul API double. Dropping it stops the server.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsulDouble {
    /// Starts the double on 127.0.0.1 with a free port, without ACLs.
    pub fn start() -> ConsulDouble {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                index: 1,
                kv: Kv::default(),
                sessions: HashMap::new(),
                lock_delays: HashMap::new(),
                acl: None,
                read_only: None,
                commit_failure: None,
                clock_offset: Duration::ZERO,
                rng: rand::rngs::StdRng::seed_from_u64(0x636f_6e73_756c),
            }),
            changed: watch::channel(1).0,
            reachable: AtomicBool::new(true),
            cut: watch::channel(0).0,
            refused: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let public = std::net::TcpListener::bind("127.0.0.1:0").expect("bind Consul double");
        public.set_nonblocking(true).expect("nonblocking listener");
        let addr = public.local_addr().expect("local addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let shared2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("consul-double".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime for the Consul double");
                rt.block_on(serve(shared2, public, stop_rx, ready_tx));
            })
            .expect("spawn Consul double thread");
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("Consul double did not start");
        ConsulDouble {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Turns on ACLs: only `token` is accepted; no token is "Permission denied", another token
    /// is "ACL not found".
    pub fn with_acl(self, token: &str) -> ConsulDouble {
        self.shared.lock().acl = Some(token.to_string());
        self
    }

    /// Lets every token read but not write keys under `prefix`, as an ACL policy with
    /// `key_prefix "<prefix>" { policy = "read" }` does: such writes are "Permission denied".
    pub fn read_only_under(&self, prefix: &str) {
        self.shared.lock().read_only = Some(prefix.to_string());
    }

    /// Undoes [`ConsulDouble::read_only_under`]: every key is writable again.
    pub fn writable_everywhere(&self) {
        self.shared.lock().read_only = None;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While false, every connection is closed at once (existing ones are cut), as if the
    /// agent were down.
    pub fn set_reachable(&self, reachable: bool) {
        self.shared.reachable.store(reachable, Ordering::SeqCst);
        if !reachable {
            self.shared.cut.send_modify(|g| *g += 1);
        }
    }

    /// Connections refused while unreachable.
    pub fn refused_connections(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// HTTP requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Invalidates a session as a failed health check or expired TTL would: held keys are
    /// released (or deleted) and get the session's lock-delay. Returns whether it existed.
    pub fn invalidate_session(&self, id: &str) -> bool {
        let found = self.shared.lock().invalidate(id);
        self.shared.notify();
        found
    }

    /// Makes the commit of the next write transaction fail with `what`, as a Raft apply or
    /// state-store commit failure does: 409, reported at operation 0 (agent/consul/state/txn.go
    /// `TxnRW`), nothing applied.
    pub fn fail_next_commit(&self, what: &str) {
        self.shared.lock().commit_failure = Some(what.to_string());
    }

    /// Moves the virtual clock used for TTLs and lock-delays forward, expiring what is due.
    pub fn advance_clock(&self, by: Duration) {
        {
            let mut st = self.shared.lock();
            st.clock_offset += by;
            st.expire_sessions();
        }
        self.shared.notify();
    }

    /// How many times a session was renewed.
    pub fn renewals(&self, id: &str) -> Option<u64> {
        self.shared.lock().sessions.get(id).map(|s| s.renewals)
    }

    /// Whether Consul knows the session.
    pub fn has_session(&self, id: &str) -> bool {
        self.shared.lock().sessions.contains_key(id)
    }

    /// The raw value at `key`, bypassing HTTP and ACLs.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.shared
            .lock()
            .kv
            .entries
            .get(key)
            .map(|e| e.value.clone())
    }

    /// Every key under `prefix` with its raw value, in key order (bypassing HTTP and ACLs).
    pub fn values_under(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.shared
            .lock()
            .kv
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    /// `api`'s stored state as JSON, with its decision history (kept under its own keys,
    /// `greenlight/history/<api>/`) put back as `history`, oldest first, as a reader of the
    /// store sees the whole rollout.
    pub fn rollout_json(&self, api: &str) -> Option<serde_json::Value> {
        let raw = self.value(&format!("greenlight/state/{api}"))?;
        let mut state: serde_json::Value = serde_json::from_slice(&raw).ok()?;
        let mut records: Vec<serde_json::Value> = Vec::new();
        for (key, value) in self.values_under(&format!("greenlight/history/{api}/")) {
            let v: serde_json::Value = serde_json::from_slice(&value).ok()?;
            match v {
                serde_json::Value::Array(old) if key.ends_with("/legacy") => records.extend(old),
                one => records.push(one),
            }
        }
        records.sort_by_key(|r| r["revision"].as_u64().unwrap_or(0));
        records.dedup_by_key(|r| r["revision"].as_u64().unwrap_or(0));
        state["history"] = serde_json::Value::Array(records);
        Some(state)
    }

    /// Writes `key` directly (bypassing HTTP and ACLs), as an operator's edit would.
    pub fn put(&self, key: &str, value: &[u8]) {
        {
            let mut st = self.shared.lock();
            let idx = st.next_index();
            st.kv.set(key, value, 0, idx);
        }
        self.shared.notify();
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    public: std::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let public = tokio::net::TcpListener::from_std(public).expect("tokio listener");
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind inner listener");
    let inner_addr = inner.local_addr().expect("inner addr");
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(shared.clone());
    // Consul's HTTP server is Go's net/http, whose TCP connections have Nagle off; with it on,
    // a request written in two segments waits for the delayed ACK (tens of ms).
    let inner = inner.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(inner, app).await;
    });
    // Session TTLs also expire without traffic, so blocked watchers see it.
    let reaper = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let changed = reaper.lock().expire_sessions();
            if changed {
                reaper.notify();
            }
        }
    });
    let _ = ready.send(());
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = public.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                if !shared.reachable.load(Ordering::SeqCst) {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let mut cut = shared.cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(inner_addr).await else {
                        return;
                    };
                    let _ = upstream.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        }
    }
}

/// Parsed query string: each parameter with its (possibly empty) value, in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `0`).
pub fn parse_go_duration(s: &str) -> Option<(bool, Duration)> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some((negative, Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some((negative, Duration::from_secs_f64(total)))
}

/// The wait a blocking query gets for its `wait` parameter, before jitter: missing or ≤ 0 is
/// 5 min, more than 10 min is clamped. `Err` for an unparsable value (400 `Invalid wait time`).
pub fn effective_wait(param: Option<&str>) -> Result<Duration, ()> {
    let Some(text) = param else {
        return Ok(DEFAULT_WAIT);
    };
    let (negative, d) = parse_go_duration(text).ok_or(())?;
    if negative || d.is_zero() {
        return Ok(DEFAULT_WAIT);
    }
    Ok(d.min(MAX_WAIT))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Body::from(body.into()))
        .expect("response")
}

fn json_response(status: StatusCode, index: u64, body: &Value) -> Response {
    with_meta(
        Response::builder()
            .status(status)
            .header("Content-Type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("response"),
        index,
    )
}

fn with_meta(mut resp: Response, index: u64) -> Response {
    let h = resp.headers_mut();
    // 0 is never sent: it would make the next blocking query return at once.
    h.insert(
        "X-Consul-Index",
        index.max(1).to_string().parse().expect("header"),
    );
    h.insert("X-Consul-KnownLeader", "true".parse().expect("header"));
    h.insert("X-Consul-LastContact", "0".parse().expect("header"));
    resp
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert("Allow", allow.parse().expect("header"));
    r
}

/// The request's token: `?token=` > `X-Consul-Token` > `Authorization: Bearer`.
fn request_token(query: &Query, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = query.get("token").filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    if let Some(t) = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_string());
    }
    let auth = headers.get("Authorization")?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

enum Access {
    Allowed,
    /// Anonymous: may not read or write (listings are filtered to nothing).
    Anonymous,
    /// Unknown token.
    NotFound,
}

impl State {
    /// Whether writing `key` is denied by [`ConsulDouble::read_only_under`].
    fn write_denied(&self, key: &str) -> bool {
        self.read_only
            .as_ref()
            .is_some_and(|p| key.starts_with(p.as_str()))
    }
}

fn access(st: &State, token: Option<&str>) -> Access {
    match (&st.acl, token) {
        (None, _) => Access::Allowed,
        (Some(acl), Some(t)) if t == acl => Access::Allowed,
        (Some(_), None) => Access::Anonymous,
        (Some(_), Some(_)) => Access::NotFound,
    }
}

/// acl/errors.go `PermissionDeniedError` text for the anonymous token.
fn denied_text(what: &str, resource: &str) -> String {
    format!(
        "Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR}' lacks permission '{what}' on \"{resource}\""
    )
}

fn denied(what: &str, resource: &str) -> Response {
    text(StatusCode::FORBIDDEN, denied_text(what, resource))
}

fn acl_not_found() -> Response {
    text(StatusCode::FORBIDDEN, "ACL not found")
}

async fn handle(AxState(shared): AxState<Arc<Shared>>, req: Request<Body>) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let path = percent_decode(parts.uri.path());
    let query = Query::parse(parts.uri.query());
    let token = request_token(&query, &parts.headers);
    let body = match axum::body::to_bytes(body, 4 * MAX_VALUE_SIZE).await {
        Ok(b) => b.to_vec(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    if shared.lock().expire_sessions() {
        shared.notify();
    }
    let method = parts.method;
    if let Some(key) =
        path.strip_prefix("/v1/kv/")
            .or(if path == "/v1/kv" { Some("") } else { None })
    {
        let key = key.to_string();
        return match method {
            Method::GET => kv_get(&shared, &key, &query, token.as_deref()).await,
            Method::PUT => kv_put(&shared, &key, &query, token.as_deref(), &body),
            Method::DELETE => kv_delete(&shared, &key, &query, token.as_deref()),
            _ => method_not_allowed("GET,PUT,DELETE"),
        };
    }
    if path == "/v1/txn" {
        return match method {
            Method::PUT => txn(&shared, token.as_deref(), &body),
            _ => method_not_allowed("PUT"),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        return session(&shared, &method, rest, token.as_deref(), &body);
    }
    if path == "/v1/status/leader" {
        return json_response(
            StatusCode::OK,
            shared.lock().index,
            &json!("127.0.0.1:8300"),
        );
    }
    text(StatusCode::NOT_FOUND, format!("no such route {path}"))
}

/// Computes a KV read: (status, body, index).
fn kv_read(st: &State, key: &str, query: &Query, filtered: bool) -> (Response, u64) {
    if query.has("keys") {
        let sep = query.get("separator").filter(|s| !s.is_empty());
        let mut keys: Vec<String> = Vec::new();
        if !filtered {
            for k in st.kv.entries.keys().filter(|k| k.starts_with(key)) {
                let rest = &k[key.len()..];
                let shown = match sep.and_then(|s| rest.find(s).map(|i| i + s.len())) {
                    Some(end) => format!("{key}{}", &rest[..end]),
                    None => k.clone(),
                };
                if keys.last() != Some(&shown) {
                    keys.push(shown);
                }
            }
        }
        let index = st.kv.prefix_index(key);
        return (json_response(StatusCode::OK, index, &json!(keys)), index);
    }
    if query.has("recurse") {
        let index = st.kv.prefix_index(key);
        let entries: Vec<Value> = if filtered {
            Vec::new()
        } else {
            st.kv
                .entries
                .iter()
                .filter(|(k, _)| k.starts_with(key))
                .map(|(k, e)| entry_json(k, e, true))
                .collect()
        };
        if entries.is_empty() {
            return (with_meta(text(StatusCode::NOT_FOUND, ""), index), index);
        }
        return (json_response(StatusCode::OK, index, &json!(entries)), index);
    }
    match st.kv.entries.get(key) {
        None => {
            let index = st.kv.table_index;
            (with_meta(text(StatusCode::NOT_FOUND, ""), index), index)
        }
        Some(e) => {
            let index = e.modify_index;
            if query.has("raw") {
                let resp = Response::builder()
                    .status(StatusCode::OK)
                    .header("Content-Type", "text/plain; charset=utf-8")
                    .body(Body::from(e.value.clone()))
                    .expect("response");
                return (with_meta(resp, index), index);
            }
            let body = json!([entry_json(key, e, true)]);
            (json_response(StatusCode::OK, index, &body), index)
        }
    }
}

async fn kv_get(shared: &Arc<Shared>, key: &str, query: &Query, token: Option<&str>) -> Response {
    if query.has("stale") && query.has("consistent") {
        return text(
            StatusCode::BAD_REQUEST,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        );
    }
    let min_index = match query.get("index") {
        None => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(i) => i,
            Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid index"),
        },
    };
    let wait = match effective_wait(query.get("wait")) {
        Ok(w) => w,
        Err(()) => return text(StatusCode::BAD_REQUEST, "Invalid wait time"),
    };
    let listing = query.has("recurse") || query.has("keys");
    if key.is_empty() && !listing {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let filtered = {
        let st = shared.lock();
        match access(&st, token) {
            Access::Allowed => false,
            Access::NotFound => return acl_not_found(),
            Access::Anonymous if listing => true,
            Access::Anonymous => return denied("key:read", key),
        }
    };
    let deadline = {
        let mut st = shared.lock();
        let jitter = if wait.is_zero() {
            Duration::ZERO
        } else {
            let max = (wait / 16).as_millis() as u64;
            Duration::from_millis(st.rng.random_range(0..=max))
        };
        tokio::time::Instant::now() + wait + jitter
    };
    let mut changed = shared.changed.subscribe();
    loop {
        changed.borrow_and_update();
        let (resp, index) = kv_read(&shared.lock(), key, query, filtered);
        if min_index == 0 || index > min_index || tokio::time::Instant::now() >= deadline {
            return resp;
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            let (resp, _) = kv_read(&shared.lock(), key, query, filtered);
            return resp;
        }
    }
}

fn parse_u64(query: &Query, name: &str) -> Result<Option<u64>, ()> {
    match query.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ()),
    }
}

fn kv_put(
    shared: &Arc<Shared>,
    key: &str,
    query: &Query,
    token: Option<&str>,
    body: &[u8],
) -> Response {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let exclusive = ["cas", "acquire", "release"]
        .iter()
        .filter(|f| query.has(f))
        .count();
    if exclusive > 1 {
        let q: Vec<String> = query.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return text(
            StatusCode::BAD_REQUEST,
            format!("Conflicting flags: {}", q.join("&")),
        );
    }
    let Ok(flags) = parse_u64(query, "flags") else {
        return text(StatusCode::BAD_REQUEST, "Invalid flags");
    };
    let flags = flags.unwrap_or(0);
    let Ok(cas) = parse_u64(query, "cas") else {
        return text(StatusCode::BAD_REQUEST, "Invalid cas index");
    };
    if body.len() > MAX_VALUE_SIZE {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_VALUE_SIZE} bytes.",
                body.len()
            ),
        );
    }
    let result = {
        let mut st = shared.lock();
        match access(&st, token) {
            Access::Allowed if st.write_denied(key) => return denied("key:write", key),
            Access::Allowed => {}
            Access::NotFound => return acl_not_found(),
            Access::Anonymous => return denied("key:write", key),
        }
        let idx = st.index + 1;
        let ok = if let Some(cas) = cas {
            st.kv.cas(key, body, flags, cas, idx)
        } else if let Some(session) = query.get("acquire") {
            if !st.sessions.contains_key(session) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("invalid session \"{session}\""),
                );
            }
            if st.lock_delayed(key) {
                false
            } else {
                st.kv.acquire(key, body, flags, session, idx)
            }
        } else if let Some(session) = query.get("release") {
            st.kv.release(key, body, flags, session, idx)
        } else {
            st.kv.set(key, body, flags, idx);
            true
        };
        st.index = idx;
        ok
    };
    shared.notify();
    json_response(StatusCode::OK, shared.lock().index, &json!(result))
}

fn kv_delete(shared: &Arc<Shared>, key: &str, query: &Query, token: Option<&str>) -> Response {
    let recurse = query.has("recurse");
    if recurse && query.has("cas") {
        let q: Vec<String> = query.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return text(
            StatusCode::BAD_REQUEST,
            format!("Conflicting flags: {}", q.join("&")),
        );
    }
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let Ok(cas) = parse_u64(query, "cas") else {
        return text(StatusCode::BAD_REQUEST, "Invalid cas index");
    };
    let result = {
        let mut st = shared.lock();
        match access(&st, token) {
            Access::Allowed if st.write_denied(key) => return denied("key:write", key),
            Access::Allowed => {}
            Access::NotFound => return acl_not_found(),
            Access::Anonymous => return denied("key:write", key),
        }
        let idx = st.index + 1;
        let ok = if recurse {
            st.kv.delete_tree(key, idx);
            true
        } else if let Some(cas) = cas {
            st.kv.delete_cas(key, cas, idx)
        } else {
            st.kv.delete(key, idx);
            true
        };
        st.index = idx;
        ok
    };
    shared.notify();
    json_response(StatusCode::OK, shared.lock().index, &json!(result))
}

/// One KV operation of a transaction, decoded from the API format
/// (agent/txn_endpoint.go `convertOps`).
struct KvTxnOp {
    verb: String,
    key: String,
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

/// Whether a verb writes (agent/txn_endpoint.go `isWrite`).
fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "set" | "delete" | "delete-cas" | "delete-tree" | "cas" | "lock" | "unlock"
    )
}

/// What a transaction changed, to undo it when one of its operations fails: each touched key's
/// entry and tombstone before its first change, and the table index.
struct Undo {
    keys: Vec<(String, Option<Entry>, Option<u64>)>,
    table_index: u64,
}

impl Undo {
    fn new(kv: &Kv) -> Self {
        Undo {
            keys: Vec::new(),
            table_index: kv.table_index,
        }
    }

    fn remember(&mut self, kv: &Kv, key: &str) {
        if !self.keys.iter().any(|(k, _, _)| k == key) {
            let entry = kv.entries.get(key).cloned();
            let tombstone = kv.tombstones.get(key).copied();
            self.keys.push((key.to_string(), entry, tombstone));
        }
    }

    fn remember_tree(&mut self, kv: &Kv, prefix: &str) {
        let keys: Vec<String> = kv
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.remember(kv, &k);
        }
    }

    fn roll_back(self, kv: &mut Kv) {
        for (key, entry, tombstone) in self.keys.into_iter().rev() {
            match entry {
                Some(e) => kv.entries.insert(key.clone(), e),
                None => kv.entries.remove(&key),
            };
            match tombstone {
                Some(t) => kv.tombstones.insert(key, t),
                None => kv.tombstones.remove(&key),
            };
        }
        kv.table_index = self.table_index;
    }
}

/// `PUT /v1/txn`, as Consul (1.17 and later) answers it:
/// - agent/txn_endpoint.go `convertOps`: a body over `txn_max_req_len` (512 KiB) is 413, an
///   undecodable one 400, more than [`MAX_TXN_OPS`] operations 413, a value over
///   `kv_max_value_size` (512 KiB) 413;
/// - agent/consul/txn_endpoint.go `Txn.Apply` / `Txn.Read`: an unknown token is a whole-request
///   403 (`ResolveToken` fails), but a known token lacking a permission fails *per operation*
///   in `preCheck` (agent/consul/kvs_endpoint.go `kvsPreApply`: key:write for writes, key:read
///   for check-session / check-index, nothing for reads, whose results are filtered instead),
///   as does a `lock` during a lock-delay; any pre-check error is a 409 listing them, nothing
///   applied;
/// - agent/consul/state/txn.go `txnDispatch`: every operation runs and every failure is
///   reported with its OpIndex (not only the first); any failure rolls everything back (409);
///   a commit failure is reported at OpIndex 0 (`TxnRW`).
fn txn(shared: &Arc<Shared>, token: Option<&str>, body: &[u8]) -> Response {
    if body.len() > MAX_TXN_REQ_LEN {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_TXN_REQ_LEN} bytes. See https://www.consul.io/docs/agent/config/config-files#txn_max_req_len.",
                body.len()
            ),
        );
    }
    let raw: Vec<Value> = match serde_json::from_slice(body) {
        Ok(Value::Array(ops)) => ops,
        Ok(_) | Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "Failed to parse body: expected a JSON array of operations",
            )
        }
    };
    if raw.len() > MAX_TXN_OPS {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                raw.len()
            ),
        );
    }
    let mut ops = Vec::with_capacity(raw.len());
    for (i, op) in raw.iter().enumerate() {
        let Some(op) = op.get("KV") else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Operation {i} is not a KV operation"),
            );
        };
        let s = |name: &str| {
            op.get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let n = |name: &str| op.get(name).and_then(Value::as_u64).unwrap_or(0);
        let key = s("Key");
        let value = match op.get("Value").and_then(Value::as_str) {
            None => Vec::new(),
            Some(v) => match base64::engine::general_purpose::STANDARD.decode(v) {
                Ok(v) => v,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("Failed to parse body: failed to decode value: {e}"),
                    )
                }
            },
        };
        if value.len() > MAX_VALUE_SIZE {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Value for key {key:?} is too large ({} > {MAX_VALUE_SIZE} bytes)",
                    value.len()
                ),
            );
        }
        ops.push(KvTxnOp {
            verb: s("Verb"),
            key,
            value,
            flags: n("Flags"),
            index: n("Index"),
            session: s("Session"),
        });
    }
    let writes = ops.iter().any(|op| is_write(&op.verb));

    let mut st = shared.lock();
    let anonymous = match access(&st, token) {
        Access::Allowed => false,
        Access::NotFound => return acl_not_found(),
        Access::Anonymous => true,
    };

    // agent/consul/txn_endpoint.go `Txn.preCheck`, via kvsPreApply.
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.key.is_empty() && op.verb != "delete-tree" {
            errors.push(json!({"OpIndex": i, "What": "Must provide key"}));
            continue;
        }
        let needs = match op.verb.as_str() {
            "get" | "get-tree" | "get-or-empty" => None,
            "check-session" | "check-index" => Some("key:read"),
            _ => Some("key:write"),
        };
        if let (true, Some(what)) = (anonymous, needs) {
            errors.push(json!({"OpIndex": i, "What": denied_text(what, &op.key)}));
            continue;
        }
        if needs == Some("key:write") && st.write_denied(&op.key) {
            errors.push(json!({"OpIndex": i, "What": denied_text("key:write", &op.key)}));
            continue;
        }
        if op.verb == "lock" && st.lock_delayed(&op.key) {
            errors.push(json!({"OpIndex": i,
                "What": format!("failed to lock key {:?} due to lock delay", op.key)}));
        }
    }
    if !errors.is_empty() {
        let index = st.index;
        return json_response(
            StatusCode::CONFLICT,
            index,
            &json!({"Results": null, "Errors": errors}),
        );
    }

    // agent/consul/state/txn.go `txnDispatch` and `txnKVS`, applied in place with an undo log
    // of every key the transaction touches, rolled back unless every operation succeeded (as
    // memdb aborts the write transaction). Copying the store instead would make each
    // transaction cost as much as the whole KV.
    let idx = st.index + 1;
    let state = &mut *st;
    let kv = &mut state.kv;
    let mut undo = Undo::new(kv);
    let mut results = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op.verb.as_str() {
            "delete-tree" => undo.remember_tree(kv, &op.key),
            "get" | "get-or-empty" | "get-tree" | "check-index" | "check-session"
            | "check-not-exists" => {}
            _ => undo.remember(kv, &op.key),
        }
        let (key, value, flags, index, session) =
            (&op.key, &op.value, op.flags, op.index, &op.session);
        let mut fail = |what: String| errors.push(json!({"OpIndex": i, "What": what}));
        // Results carry the entry without its value, except for reads (`txnKVS`).
        let mut result = |kv: &Kv, key: &str, with_value: bool| {
            if let Some(e) = kv.entries.get(key) {
                results.push(json!({"KV": entry_json(key, e, with_value)}));
            }
        };
        match op.verb.as_str() {
            "set" => {
                kv.set(key, value, flags, idx);
                result(kv, key, false);
            }
            // kvsSetCASTxn: Index 0 means "only if it does not exist"; a missing key with a
            // non-zero Index fails.
            "cas" => {
                if kv.cas(key, value, flags, index, idx) {
                    result(kv, key, false);
                } else {
                    fail(format!("failed to set key {key:?}, index is stale"));
                }
            }
            // kvsLockTxn.
            "lock" => {
                if session.is_empty() {
                    fail("missing session".into());
                } else if !state.sessions.contains_key(session) {
                    fail(format!("invalid session {session:?}"));
                } else if kv.acquire(key, value, flags, session, idx) {
                    result(kv, key, false);
                } else {
                    fail(format!("failed to lock key {key:?}, lock is already held"));
                }
            }
            // kvsUnlockTxn.
            "unlock" => {
                if session.is_empty() {
                    fail("missing session".into());
                } else if kv.release(key, value, flags, session, idx) {
                    result(kv, key, false);
                } else {
                    fail(format!(
                        "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                    ));
                }
            }
            "get" => {
                if kv.entries.contains_key(key) {
                    result(kv, key, true);
                } else {
                    fail(format!("key {key:?} doesn't exist"));
                }
            }
            "get-or-empty" => {
                if kv.entries.contains_key(key) {
                    result(kv, key, true);
                } else {
                    results.push(json!({"KV": {"LockIndex": 0, "Key": key, "Flags": flags,
                        "Value": null, "CreateIndex": 0, "ModifyIndex": index}}));
                }
            }
            "get-tree" => {
                for (k, e) in kv
                    .entries
                    .iter()
                    .filter(|(k, _)| k.starts_with(key.as_str()))
                {
                    results.push(json!({"KV": entry_json(k, e, true)}));
                }
            }
            // kvsCheckIndexTxn.
            "check-index" => match kv.entries.get(key) {
                None => fail(format!("failed to check index, key {key:?} doesn't exist")),
                Some(e) if e.modify_index != index => fail(format!(
                    "failed index check for key {key:?}, current modify index {} != {index}",
                    e.modify_index
                )),
                Some(_) => result(kv, key, false),
            },
            // kvsCheckSessionTxn.
            "check-session" => match kv.entries.get(key) {
                None => fail(format!(
                    "failed to check session, key {key:?} doesn't exist"
                )),
                Some(e) if e.session.as_deref().unwrap_or("") != session.as_str() => fail(format!(
                    "failed session check for key {key:?}, current session {:?} != {session:?}",
                    e.session.as_deref().unwrap_or("")
                )),
                Some(_) => result(kv, key, false),
            },
            "check-not-exists" => {
                if kv.entries.contains_key(key) {
                    fail(format!("key {key:?} exists"));
                }
            }
            "delete" => kv.delete(key, idx),
            "delete-tree" => kv.delete_tree(key, idx),
            // kvsDeleteCASTxn: a missing key counts as deleted.
            "delete-cas" => {
                if !kv.delete_cas(key, index, idx) {
                    fail(format!("failed to delete key {key:?}, index is stale"));
                }
            }
            other => fail(format!("unknown KV verb {other:?}")),
        }
    }
    if errors.is_empty() && writes {
        if let Some(what) = state.commit_failure.take() {
            // TxnRW: a failed commit is reported at operation 0.
            errors.push(json!({"OpIndex": 0, "What": what}));
        }
    }
    if !errors.is_empty() {
        undo.roll_back(kv);
        let index = state.index;
        return json_response(
            StatusCode::CONFLICT,
            index,
            &json!({"Results": null, "Errors": errors}),
        );
    }
    if anonymous {
        // FilterTxnResults: entries the token may not read are dropped.
        results.clear();
    }
    if writes {
        state.index = idx;
    }
    let index = state.index;
    drop(st);
    if writes {
        shared.notify();
    }
    json_response(
        StatusCode::OK,
        index,
        &json!({"Results": results, "Errors": null}),
    )
}

/// Parses a LockDelay: a Go duration string, or a number (seconds below 1000, else
/// nanoseconds).
fn parse_lock_delay(v: &Value) -> Option<Duration> {
    match v {
        Value::String(s) => match parse_go_duration(s)? {
            (false, d) => Some(d),
            (true, _) => Some(Duration::ZERO),
        },
        Value::Number(n) => {
            let n = n.as_u64()?;
            Some(if n < 1000 {
                Duration::from_secs(n)
            } else {
                Duration::from_nanos(n)
            })
        }
        Value::Null => Some(Duration::from_secs(15)),
        _ => None,
    }
}

fn session(
    shared: &Arc<Shared>,
    method: &Method,
    rest: &str,
    token: Option<&str>,
    body: &[u8],
) -> Response {
    let (action, id) = rest.split_once('/').unwrap_or((rest, ""));
    let want = match action {
        "create" | "renew" | "destroy" => Method::PUT,
        "info" | "list" => Method::GET,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no such route /v1/session/{rest}"),
            )
        }
    };
    if *method != want {
        return method_not_allowed(want.as_str());
    }
    let mut st = shared.lock();
    match access(&st, token) {
        Access::Allowed => {}
        Access::NotFound => return acl_not_found(),
        Access::Anonymous => return denied("session:write", "consul-double"),
    }
    match action {
        "create" => {
            let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("Request decode failed: {e}"),
                        )
                    }
                }
            };
            let behavior = req
                .get("Behavior")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let behavior = match behavior.as_str() {
                "" | "release" => "release".to_string(),
                "delete" => "delete".to_string(),
                other => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("Invalid Behavior setting '{other}'"),
                    )
                }
            };
            let ttl_text = req
                .get("TTL")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ttl = if ttl_text.is_empty() {
                None
            } else {
                match parse_go_duration(&ttl_text) {
                    Some((false, d))
                        if d >= Duration::from_secs(10) && d <= Duration::from_secs(86400) =>
                    {
                        Some(d)
                    }
                    _ => {
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!(
                                "Invalid Session TTL '{ttl_text}', must be between [10s=24h0m0s]"
                            ),
                        )
                    }
                }
            };
            let Some(lock_delay) = parse_lock_delay(req.get("LockDelay").unwrap_or(&Value::Null))
            else {
                return text(StatusCode::BAD_REQUEST, "Invalid LockDelay");
            };
            let id = st.new_id();
            let idx = st.next_index();
            let expires = ttl.map(|t| st.now() + 2 * t);
            let session = Session {
                id: id.clone(),
                name: req
                    .get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                lock_delay,
                behavior,
                ttl,
                ttl_text: ttl.map(|t| format!("{}s", t.as_secs())).unwrap_or_default(),
                create_index: idx,
                expires,
                renewals: 0,
            };
            st.sessions.insert(id.clone(), session);
            json_response(StatusCode::OK, idx, &json!({"ID": id}))
        }
        "renew" => {
            let now = st.now();
            let index = st.index;
            let Some(s) = st.sessions.get_mut(id) else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("Session id '{id}' not found"),
                );
            };
            s.expires = s.ttl.map(|t| now + 2 * t);
            s.renewals += 1;
            let s = s.clone();
            json_response(StatusCode::OK, index, &json!([st.session_json(&s)]))
        }
        "destroy" => {
            st.invalidate(id);
            let index = st.index;
            drop(st);
            shared.notify();
            json_response(StatusCode::OK, index, &json!(true))
        }
        "info" => {
            let body = match st.sessions.get(id) {
                Some(s) => json!([st.session_json(s)]),
                None => json!([]),
            };
            json_response(StatusCode::OK, st.index, &body)
        }
        _ => {
            let mut all: Vec<Value> = st.sessions.values().map(|s| st.session_json(s)).collect();
            all.sort_by_key(|v| v["CreateIndex"].as_u64());
            json_response(StatusCode::OK, st.index, &json!(all))
        }
    }
}
