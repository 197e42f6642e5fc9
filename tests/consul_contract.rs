//! Consul API contract: the same cases run against the project's Consul double and, when a
//! `consul` binary is on PATH, against a real `consul agent -dev` started here. The cases are
//! the behaviours a review doubted, each checked against Consul's source (cited per case):
//! per-operation ACL errors inside a transaction, `delete-cas` on a missing key, the
//! transaction limits, CAS index 0, the lock verbs and lock-delay.
//!
//! Without a `consul` binary the real half is skipped with a printed note; the double half
//! always runs.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use greenlight::consul::{ConsulClient, ConsulError, SessionBehavior, SessionRequest, TxnOp};
use serde_json::{json, Value};
use support::consul_double::ConsulDouble;
use support::{free_port, Proc};

/// The management token of the ACL-enabled targets.
const ROOT: &str = "contract-root-token";

/// What a case runs against: its URL and, with ACLs on, the management token.
struct Target {
    name: &'static str,
    url: String,
    root: Option<String>,
    _keep: Keep,
}

#[allow(dead_code)] // held only to keep the server running
enum Keep {
    Double(ConsulDouble),
    Real(Proc, tempfile::TempDir),
}

impl Target {
    fn client(&self) -> ConsulClient {
        ConsulClient::new(&self.url, self.root.clone(), Duration::from_secs(10)).unwrap()
    }

    fn anonymous(&self) -> ConsulClient {
        ConsulClient::new(&self.url, None, Duration::from_secs(10)).unwrap()
    }

    /// A raw request; returns (status, body).
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .body(body);
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn txn(&self, token: Option<&str>, ops: Value) -> (u16, Value) {
        let (status, body) = self
            .raw(
                reqwest::Method::PUT,
                "/v1/txn",
                token,
                ops.to_string().into_bytes(),
            )
            .await;
        let parsed = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, parsed)
    }
}

/// Starts `consul agent -dev` on free loopback ports, or `None` when there is no binary.
fn real_agent(acl: bool) -> Option<(Proc, tempfile::TempDir, String)> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("consul").is_file()))
        .unwrap_or(false);
    if !found {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let mut cmd = Command::new("consul");
    cmd.args([
        "agent",
        "-dev",
        "-bind",
        "127.0.0.1",
        "-client",
        "127.0.0.1",
    ])
    .args([
        "-http-port",
        &http.to_string(),
        "-dns-port",
        "-1",
        "-grpc-port",
        "-1",
    ])
    .args(["-serf-lan-port", &free_port().to_string()])
    .args(["-serf-wan-port", &free_port().to_string()])
    .args(["-server-port", &free_port().to_string()])
    // Dev agents also open a gRPC TLS port (8503) by default; several run at once here.
    .args(["-hcl", "ports { grpc_tls = -1 }"]);
    if acl {
        cmd.arg("-hcl").arg(format!(
            r#"acl {{ enabled = true default_policy = "deny" tokens {{ initial_management = "{ROOT}" }} }}"#
        ));
    }
    let mut proc = Proc::spawn("consul", cmd, dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        proc.assert_running();
        if let Ok((200, body)) = support::http(addr, "GET", "/v1/status/leader", b"") {
            if body.trim().len() > 2 {
                break;
            }
        }
        assert!(
            Instant::now() < until,
            "consul agent -dev elected no leader"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((proc, dir, format!("http://{addr}")))
}

/// The double, then (if installed) a real agent, with or without ACLs.
fn targets(acl: bool) -> Vec<Target> {
    let double = if acl {
        ConsulDouble::start().with_acl(ROOT)
    } else {
        ConsulDouble::start()
    };
    let root = acl.then(|| ROOT.to_string());
    let mut all = vec![Target {
        name: "double",
        url: double.url(),
        root: root.clone(),
        _keep: Keep::Double(double),
    }];
    match real_agent(acl) {
        Some((proc, dir, url)) => all.push(Target {
            name: "consul agent -dev",
            url,
            root,
            _keep: Keep::Real(proc, dir),
        }),
        None => println!(
            "note: no `consul` binary on PATH; this contract case ran against the double only"
        ),
    }
    all
}

fn session(name: &str, lock_delay: Duration) -> SessionRequest {
    SessionRequest {
        name: name.into(),
        ttl: Some(Duration::from_secs(30)),
        lock_delay,
        behavior: SessionBehavior::Release,
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// (OpIndex, What) of each error of a 409 answer.
fn errors(body: &Value) -> Vec<(u64, String)> {
    body["Errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no Errors in {body}"))
        .iter()
        .map(|e| {
            (
                e["OpIndex"].as_u64().expect("OpIndex"),
                e["What"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// agent/consul/txn_endpoint.go `Txn.Apply`: an unknown token fails the whole request (403
/// from `ResolveToken`), a known token lacking permissions fails per operation in `preCheck`
/// (409, one error per denied operation; reads are filtered, not denied).
#[tokio::test]
async fn txn_acl_denial_is_per_operation_409_and_unknown_token_is_403() {
    for t in targets(true) {
        let ops = json!([
            {"KV": {"Verb": "set", "Key": "acl/a", "Value": b64(b"1")}},
            {"KV": {"Verb": "check-session", "Key": "acl/lock", "Session": "x"}},
            {"KV": {"Verb": "get", "Key": "acl/b"}},
        ]);
        let (status, body) = t.txn(None, ops.clone()).await;
        assert_eq!(status, 409, "{}: anonymous txn: {body}", t.name);
        let errs = errors(&body);
        let ops_failed: Vec<u64> = errs.iter().map(|e| e.0).collect();
        assert_eq!(ops_failed, vec![0, 1], "{}: {body}", t.name);
        assert!(
            errs.iter().all(|(_, w)| w.contains("Permission denied")),
            "{}: {body}",
            t.name
        );

        let (status, body) = t.txn(Some("no-such-token"), ops.clone()).await;
        assert_eq!(status, 403, "{}: unknown token: {body}", t.name);
        assert!(body.to_string().contains("ACL not found"), "{}", t.name);

        // The client reports a per-operation denial as PermissionDenied, with the ops named.
        match t
            .anonymous()
            .txn(&[TxnOp::set("acl/a", b"1"), TxnOp::get("acl/b")])
            .await
        {
            Err(ConsulError::PermissionDenied(text)) => {
                assert!(
                    text.contains("op 0") && text.contains("Permission denied"),
                    "{text}"
                )
            }
            other => panic!("{}: expected PermissionDenied, got {other:?}", t.name),
        }
        // A plain KV write without permission is a 403.
        let (status, _) = t
            .raw(reqwest::Method::PUT, "/v1/kv/acl/a", None, b"1".to_vec())
            .await;
        assert_eq!(status, 403, "{}", t.name);
        // The management token may do everything.
        t.client()
            .txn(&[TxnOp::set("acl/a", b"1")])
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", t.name));
    }
}

/// agent/consul/state/kvs.go `kvsDeleteCASTxn`: a missing key counts as deleted, in the KV
/// endpoint and in a transaction; an existing key with another ModifyIndex is not deleted.
#[tokio::test]
async fn delete_cas_on_a_missing_key_succeeds() {
    for t in targets(false) {
        let c = t.client();
        assert!(
            c.delete_cas("dc/missing", 7).await.unwrap(),
            "{}: DELETE ?cas on a missing key",
            t.name
        );
        let (status, body) = t
            .txn(
                None,
                json!([{"KV": {"Verb": "delete-cas", "Key": "dc/missing", "Index": 7}}]),
            )
            .await;
        assert_eq!(status, 200, "{}: {body}", t.name);

        c.put("dc/k", b"v").await.unwrap();
        let e = c.get("dc/k").await.unwrap().unwrap();
        assert!(!c.delete_cas("dc/k", e.modify_index + 100).await.unwrap());
        let (status, body) = t
            .txn(
                None,
                json!([{"KV": {"Verb": "delete-cas", "Key": "dc/k", "Index": e.modify_index + 100}}]),
            )
            .await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        assert!(
            errors(&body)[0].1.ends_with("index is stale"),
            "{}: {body}",
            t.name
        );
        assert!(c.delete_cas("dc/k", e.modify_index).await.unwrap());
        assert_eq!(c.get("dc/k").await.unwrap(), None);
    }
}

/// agent/consul/state/txn.go `txnDispatch` runs in one memdb write transaction that is aborted
/// when any operation fails: a transaction whose last operation fails leaves no trace of the
/// writes, deletes and tree deletes before it (values, indexes, and the KV index a blocking
/// query waits on).
#[tokio::test]
async fn a_transaction_with_a_failing_operation_changes_nothing() {
    for t in targets(false) {
        let c = t.client();
        c.put("atom/keep", b"old").await.unwrap();
        c.put("atom/tree/a", b"1").await.unwrap();
        c.put("atom/tree/b", b"2").await.unwrap();
        let before = c.list("atom/").await.unwrap();
        let (status, body) = t
            .txn(
                None,
                json!([
                    {"KV": {"Verb": "set", "Key": "atom/keep", "Value": b64(b"new")}},
                    {"KV": {"Verb": "set", "Key": "atom/fresh", "Value": b64(b"x")}},
                    {"KV": {"Verb": "delete-tree", "Key": "atom/tree/"}},
                    {"KV": {"Verb": "set", "Key": "atom/tree/a", "Value": b64(b"again")}},
                    {"KV": {"Verb": "cas", "Key": "atom/keep", "Value": b64(b"v"), "Index": 1}},
                ]),
            )
            .await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        assert_eq!(errors(&body)[0].0, 4, "{}: {body}", t.name);
        let after = c.list("atom/").await.unwrap();
        assert_eq!(after.1, before.1, "{}: the KV index moved", t.name);
        let keys = |l: &(Vec<greenlight::consul::KvEntry>, u64)| -> Vec<(String, Vec<u8>, u64)> {
            l.0.iter()
                .map(|e| (e.key.clone(), e.value.clone(), e.modify_index))
                .collect()
        };
        assert_eq!(keys(&after), keys(&before), "{}", t.name);
        // The same operations without the failing one all apply.
        let (status, body) = t
            .txn(
                None,
                json!([
                    {"KV": {"Verb": "set", "Key": "atom/keep", "Value": b64(b"new")}},
                    {"KV": {"Verb": "delete-tree", "Key": "atom/tree/"}},
                ]),
            )
            .await;
        assert_eq!(status, 200, "{}: {body}", t.name);
        let now = c.list("atom/").await.unwrap();
        let names: Vec<&str> = now.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(names, ["atom/keep"], "{}", t.name);
        assert!(now.1 > before.1, "{}", t.name);
    }
}

/// agent/txn_endpoint.go `convertOps` (Consul 1.17+): at most 128 operations, a body of at most
/// `txn_max_req_len` (512 KiB by default); more is a 413 before anything runs.
#[tokio::test]
async fn txn_limits_are_128_operations_and_512_kib() {
    for t in targets(false) {
        let op = |i: usize| json!({"KV": {"Verb": "check-not-exists", "Key": format!("lim/{i}")}});
        let (status, body) = t.txn(None, Value::Array((0..128).map(op).collect())).await;
        assert_eq!(status, 200, "{}: 128 operations: {body}", t.name);
        let (status, body) = t.txn(None, Value::Array((0..129).map(op).collect())).await;
        assert_eq!(status, 413, "{}: 129 operations", t.name);
        assert!(
            body.to_string().contains("too many operations (129 > 128)"),
            "{}: {body}",
            t.name
        );

        let big = b64(&vec![b'x'; 200 * 1024]);
        let ops = json!([
            {"KV": {"Verb": "set", "Key": "lim/a", "Value": big}},
            {"KV": {"Verb": "set", "Key": "lim/b", "Value": big}},
        ]);
        let (status, _) = t.txn(None, ops).await;
        assert_eq!(status, 413, "{}: a body over 512 KiB", t.name);
        assert_eq!(t.client().get("lim/a").await.unwrap(), None, "{}", t.name);
    }
}

/// agent/consul/state/kvs.go `kvsSetCASTxn`: index 0 writes only a missing key; a non-zero
/// index fails on a missing key and on any other ModifyIndex.
#[tokio::test]
async fn cas_index_zero_creates_only_a_missing_key() {
    for t in targets(false) {
        let c = t.client();
        assert!(!c.put_cas("cas/k", b"v", 5).await.unwrap(), "{}", t.name);
        assert!(c.put_cas("cas/k", b"v1", 0).await.unwrap(), "{}", t.name);
        assert!(!c.put_cas("cas/k", b"v2", 0).await.unwrap(), "{}", t.name);
        let e = c.get("cas/k").await.unwrap().unwrap();
        assert_eq!(e.value, b"v1");
        let (status, body) = t
            .txn(
                None,
                json!([{"KV": {"Verb": "cas", "Key": "cas/k", "Value": b64(b"v3"), "Index": 0}}]),
            )
            .await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        assert!(
            c.put_cas("cas/k", b"v4", e.modify_index).await.unwrap(),
            "{}",
            t.name
        );
        assert_eq!(c.get("cas/k").await.unwrap().unwrap().value, b"v4");
    }
}

/// agent/consul/state/kvs.go `kvsLockTxn`, `kvsUnlockTxn`, `kvsCheckSessionTxn`, and
/// state/txn.go `txnDispatch` (every failed operation is reported, not only the first).
#[tokio::test]
async fn lock_unlock_and_check_session_verbs() {
    for t in targets(false) {
        let c = t.client();
        let a = c
            .session_create(&session("a", Duration::ZERO))
            .await
            .unwrap();
        let b = c
            .session_create(&session("b", Duration::ZERO))
            .await
            .unwrap();
        let lock = |s: &str| json!({"KV": {"Verb": "lock", "Key": "lk/k", "Value": b64(b"me"), "Session": s}});
        let check = |s: &str| json!({"KV": {"Verb": "check-session", "Key": "lk/k", "Session": s}});

        let (status, body) = t.txn(None, json!([check(&a)])).await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        assert!(
            errors(&body)[0]
                .1
                .starts_with("failed to check session, key"),
            "{}: {body}",
            t.name
        );

        let (status, body) = t.txn(None, json!([lock(&a), check(&a)])).await;
        assert_eq!(status, 200, "{}: {body}", t.name);
        let e = c.get("lk/k").await.unwrap().unwrap();
        assert_eq!((e.lock_index, e.session.as_deref()), (1, Some(a.as_str())));

        // Both failures are reported, with their operation index.
        let (status, body) = t
            .txn(
                None,
                json!([check(&b), lock(&b), {"KV": {"Verb": "unlock", "Key": "lk/k", "Session": b}}]),
            )
            .await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        let errs = errors(&body);
        assert_eq!(errs.len(), 3, "{}: {body}", t.name);
        assert!(
            errs[0].1.starts_with("failed session check for key"),
            "{body}"
        );
        assert!(errs[1].1.contains("lock is already held"), "{body}");
        assert!(errs[2].1.contains("failed to unlock key"), "{body}");

        let (status, body) = t
            .txn(None, json!([{"KV": {"Verb": "lock", "Key": "lk/other"}}]))
            .await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        assert_eq!(errors(&body)[0].1, "missing session", "{}", t.name);
        let (status, body) = t
            .txn(None, json!([lock("00000000-0000-4000-8000-000000000000")]))
            .await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        assert!(errors(&body)[0].1.starts_with("invalid session"), "{body}");

        // Unlock by the holder keeps the LockIndex; the next lock increments it.
        let (status, body) = t
            .txn(
                None,
                json!([{"KV": {"Verb": "unlock", "Key": "lk/k", "Value": b64(b""), "Session": a}}]),
            )
            .await;
        assert_eq!(status, 200, "{}: {body}", t.name);
        let e = c.get("lk/k").await.unwrap().unwrap();
        assert_eq!((e.lock_index, e.session), (1, None));
        let (status, _) = t.txn(None, json!([lock(&b)])).await;
        assert_eq!(status, 200);
        assert_eq!(c.get("lk/k").await.unwrap().unwrap().lock_index, 2);
    }
}

/// agent/consul/kvs_endpoint.go `kvsPreApply`: after the holder's session is invalidated, its
/// keys cannot be locked for the session's lock-delay: `?acquire` answers `false`, a txn
/// `lock` fails with "due to lock delay" (agent/consul/txn_endpoint.go `preCheck`).
#[tokio::test]
async fn lock_delay_refuses_locks_until_it_ends() {
    for t in targets(false) {
        let c = t.client();
        let delay = Duration::from_secs(2);
        let a = c.session_create(&session("a", delay)).await.unwrap();
        let b = c.session_create(&session("b", delay)).await.unwrap();
        assert!(c.acquire("ld/k", b"a", &a).await.unwrap());
        c.session_destroy(&a).await.unwrap();
        let invalidated = Instant::now();
        assert_eq!(c.get("ld/k").await.unwrap().unwrap().session, None);
        assert!(!c.acquire("ld/k", b"b", &b).await.unwrap(), "{}", t.name);
        let (status, body) = t
            .txn(
                None,
                json!([{"KV": {"Verb": "lock", "Key": "ld/k", "Value": b64(b"b"), "Session": b}}]),
            )
            .await;
        assert_eq!(status, 409, "{}: {body}", t.name);
        assert!(errors(&body)[0].1.contains("due to lock delay"), "{body}");

        let deadline = invalidated + delay + Duration::from_secs(10);
        loop {
            if c.acquire("ld/k", b"b", &b).await.unwrap() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: lock-delay never ended",
                t.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            invalidated.elapsed() >= delay - Duration::from_millis(100),
            "{}: acquired during the lock-delay",
            t.name
        );
    }
}
