//! Consul HTTP client: KV reads and writes, compare-and-set, blocking queries, sessions.
//!
//! Follows the Consul HTTP API contract: the ACL token travels in `X-Consul-Token` (never in
//! the query string, never logged), 403 answers (and per-operation ACL failures inside a
//! transaction, which Consul answers with a 409) become [`ConsulError::PermissionDenied`], and
//! blocking queries follow the client rules (index reset when it goes backwards, index ≥ 1,
//! rate-limited loop; see [`Watch`]). Transactions live in [`txn`], the lock recipe in [`lock`].

pub mod lock;
mod session;
pub mod txn;

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

pub use lock::{Fence, Lock, LockOptions};
pub use session::{SessionBehavior, SessionInfo, SessionRequest};
pub use txn::{is_session_check_failure, is_stale_index, TxnOp, TxnResults};

/// Errors from the Consul HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsulError {
    /// 403: the token is missing, unknown, or lacks a permission. Carries Consul's text.
    #[error("Consul refused the request (check the ACL token and its policy): {0}")]
    PermissionDenied(String),
    /// The agent could not be reached (connection refused, reset, timeout).
    #[error("Consul agent is unreachable: {0}")]
    Unreachable(String),
    /// Any other non-success status, with Consul's text.
    #[error("Consul answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// A transaction was rolled back (409): `(op index, reason)` for each failed operation.
    #[error("Consul transaction rolled back: {}", describe_txn_errors(.0))]
    TxnRolledBack(Vec<(usize, String)>),
    /// A session renewal named a session Consul no longer knows (it expired or was destroyed).
    #[error("Consul session {0} not found")]
    SessionNotFound(String),
    /// A response that does not match the documented shape.
    #[error("unexpected Consul response: {0}")]
    Decode(String),
}

fn describe_txn_errors(errors: &[(usize, String)]) -> String {
    errors
        .iter()
        .map(|(i, what)| format!("op {i}: {what}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConsulError {
    /// Whether retrying the same request later may succeed (unreachable, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ConsulError::Unreachable(_) => true,
            ConsulError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// One KV entry as Consul returns it, with the value already base64-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    /// Raw value bytes (empty when Consul sends `null`).
    pub value: Vec<u8>,
    pub flags: u64,
    /// Session holding the lock on this key, if any.
    pub session: Option<String>,
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl KvEntry {
    /// The value as UTF-8 text, if it is valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// The JSON shape of a KV entry on the wire.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawKvEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
}

impl RawKvEntry {
    pub(crate) fn decode(self) -> Result<KvEntry, ConsulError> {
        let value = match self.value {
            Some(v) if !v.is_empty() => base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|e| ConsulError::Decode(format!("value of {:?}: {e}", self.key)))?,
            _ => Vec::new(),
        };
        Ok(KvEntry {
            key: self.key,
            value,
            flags: self.flags,
            session: self.session.filter(|s| !s.is_empty()),
            lock_index: self.lock_index,
            create_index: self.create_index,
            modify_index: self.modify_index,
        })
    }
}

/// The token, kept out of Debug output.
#[derive(Clone)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Asynchronous Consul HTTP API client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    token: Option<Token>,
    timeout: Duration,
}

/// A response reduced to what callers need: status, X-Consul-Index and body.
struct Reply {
    status: StatusCode,
    index: u64,
    body: String,
}

/// Minimum spacing of successive blocking queries in a [`Watch`] loop.
pub const WATCH_MIN_INTERVAL: Duration = Duration::from_millis(50);

impl ConsulClient {
    /// A client for the agent at `url` (e.g. `http://127.0.0.1:8500`). `timeout` bounds every
    /// non-blocking request; blocking queries get their wait time on top.
    pub fn new(
        url: impl Into<String>,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ConsulError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ConsulError::Unreachable(format!("cannot build HTTP client: {e}")))?;
        let base = url.into().trim_end_matches('/').to_string();
        Ok(ConsulClient {
            http,
            base,
            token: token.filter(|t| !t.is_empty()).map(Token),
            timeout,
        })
    }

    /// The agent's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        extra_wait: Duration,
    ) -> Result<Reply, ConsulError> {
        let url = format!("{}/v1/{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .query(query)
            .timeout(self.timeout + extra_wait);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", &token.0);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's Display includes the URL but never headers, so the token stays out.
            ConsulError::Unreachable(format!("{} {path}: {}", self.base, error_chain(&e)))
        })?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let body = resp.text().await.map_err(|e| {
            ConsulError::Unreachable(format!("{} {path}: {}", self.base, error_chain(&e)))
        })?;
        if status == StatusCode::FORBIDDEN {
            tracing::warn!(path, "Consul denied a request.");
            return Err(ConsulError::PermissionDenied(body.trim().to_string()));
        }
        Ok(Reply {
            status,
            index,
            body,
        })
    }

    /// The entry at `key`, or `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, ConsulError> {
        Ok(self.get_with_index(key).await?.0)
    }

    /// The entry at `key` (or `None`) and the X-Consul-Index of the answer, for a later
    /// blocking query.
    pub async fn get_with_index(&self, key: &str) -> Result<(Option<KvEntry>, u64), ConsulError> {
        let reply = self
            .call(Method::GET, &kv_path(key), &[], None, Duration::ZERO)
            .await?;
        let entries = decode_entries(reply_ok_or_404(reply.status, &reply.body)?, &reply.body)?;
        Ok((entries.into_iter().next(), reply.index))
    }

    /// All entries under `prefix` (recursive) and the X-Consul-Index of the answer.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64), ConsulError> {
        let reply = self
            .call(
                Method::GET,
                &kv_path(prefix),
                &[("recurse", String::new())],
                None,
                Duration::ZERO,
            )
            .await?;
        let entries = decode_entries(reply_ok_or_404(reply.status, &reply.body)?, &reply.body)?;
        Ok((entries, reply.index))
    }

    /// The keys under `prefix` (recursive, without values), sorted; none when nothing is there
    /// (Consul answers 404).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, ConsulError> {
        let reply = self
            .call(
                Method::GET,
                &kv_path(prefix),
                &[("keys", String::new())],
                None,
                Duration::ZERO,
            )
            .await?;
        if !reply_ok_or_404(reply.status, &reply.body)? {
            return Ok(Vec::new());
        }
        let mut keys: Vec<String> = serde_json::from_str(&reply.body)
            .map_err(|e| ConsulError::Decode(format!("KV keys: {e}")))?;
        keys.sort();
        Ok(keys)
    }

    /// Writes `value` at `key` unconditionally.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), ConsulError> {
        self.put_query(key, value, &[]).await.map(|_| ())
    }

    /// Writes `value` at `key` only if its ModifyIndex is `index` (`0`: only if it does not
    /// exist). Returns whether the write happened.
    pub async fn put_cas(&self, key: &str, value: &[u8], index: u64) -> Result<bool, ConsulError> {
        self.put_query(key, value, &[("cas", index.to_string())])
            .await
    }

    /// Takes the lock on `key` for `session`, writing `value`. Returns whether the lock is held.
    pub async fn acquire(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        self.put_query(key, value, &[("acquire", session.to_string())])
            .await
    }

    /// Releases the lock on `key` held by `session`, writing `value` (Consul replaces the value
    /// on release). Returns false if `session` did not hold it.
    pub async fn release(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        self.put_query(key, value, &[("release", session.to_string())])
            .await
    }

    async fn put_query(
        &self,
        key: &str,
        value: &[u8],
        query: &[(&str, String)],
    ) -> Result<bool, ConsulError> {
        let reply = self
            .call(
                Method::PUT,
                &kv_path(key),
                query,
                Some(value.to_vec()),
                Duration::ZERO,
            )
            .await?;
        parse_bool(reply)
    }

    /// Deletes `key` (succeeds when it is already missing).
    pub async fn delete(&self, key: &str) -> Result<(), ConsulError> {
        let reply = self
            .call(Method::DELETE, &kv_path(key), &[], None, Duration::ZERO)
            .await?;
        parse_bool(reply).map(|_| ())
    }

    /// Deletes `key` only if its ModifyIndex is `index`. Returns false if it has another
    /// index; true if it was deleted or was already missing (Consul's `kvsDeleteCASTxn`).
    pub async fn delete_cas(&self, key: &str, index: u64) -> Result<bool, ConsulError> {
        let reply = self
            .call(
                Method::DELETE,
                &kv_path(key),
                &[("cas", index.to_string())],
                None,
                Duration::ZERO,
            )
            .await?;
        parse_bool(reply)
    }

    /// Deletes every key under `prefix`.
    pub async fn delete_tree(&self, prefix: &str) -> Result<(), ConsulError> {
        let reply = self
            .call(
                Method::DELETE,
                &kv_path(prefix),
                &[("recurse", String::new())],
                None,
                Duration::ZERO,
            )
            .await?;
        parse_bool(reply).map(|_| ())
    }

    /// One blocking query on a key, or on a prefix when `key_or_prefix` ends with `/`.
    ///
    /// `index` is the index returned by the previous call (0: answer at once). Returns the
    /// entries (empty when the key is missing) and the index to send next: reset to 0 when
    /// Consul's index went backwards, never 0 otherwise. A return does not imply a change.
    pub async fn watch(
        &self,
        key_or_prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<KvEntry>, u64), ConsulError> {
        let mut query = Vec::new();
        if key_or_prefix.ends_with('/') {
            query.push(("recurse", String::new()));
        }
        let mut extra = Duration::ZERO;
        if index > 0 {
            query.push(("index", index.to_string()));
            query.push(("wait", format!("{}ms", wait.as_millis().max(1))));
            // Consul adds up to wait/16 of jitter.
            extra = wait + wait / 16 + Duration::from_secs(1);
        }
        let reply = self
            .call(Method::GET, &kv_path(key_or_prefix), &query, None, extra)
            .await?;
        let entries = decode_entries(reply_ok_or_404(reply.status, &reply.body)?, &reply.body)?;
        Ok((entries, next_index(index, reply.index)))
    }

    /// A rate-limited blocking-query loop on a key or prefix (see [`ConsulClient::watch`]).
    pub fn watcher(&self, key_or_prefix: impl Into<String>, wait: Duration) -> Watch {
        Watch {
            client: self.clone(),
            key: key_or_prefix.into(),
            index: 0,
            wait,
            min_interval: WATCH_MIN_INTERVAL,
            last: None,
        }
    }
}

/// A blocking-query loop over one key or prefix, following the client rules: the index is reset
/// when it goes backwards, never sent as 0 after the first answer, and successive queries are at
/// least [`WATCH_MIN_INTERVAL`] apart.
#[derive(Debug)]
pub struct Watch {
    client: ConsulClient,
    key: String,
    index: u64,
    wait: Duration,
    min_interval: Duration,
    last: Option<tokio::time::Instant>,
}

impl Watch {
    /// Starts from a known index instead of an immediate first read.
    pub fn from_index(mut self, index: u64) -> Self {
        self.index = index;
        self
    }

    /// Overrides the minimum spacing between queries.
    pub fn min_interval(mut self, every: Duration) -> Self {
        self.min_interval = every;
        self
    }

    /// Makes the next query answer at once (index 0), as after a refused lock attempt.
    pub fn reset(&mut self) {
        self.index = 0;
    }

    /// The index the next query will send.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The next answer: the first call returns at once, later calls block until the data changes
    /// or the wait expires.
    pub async fn next(&mut self) -> Result<Vec<KvEntry>, ConsulError> {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + self.min_interval).await;
        }
        self.last = Some(tokio::time::Instant::now());
        let (entries, index) = self.client.watch(&self.key, self.index, self.wait).await?;
        self.index = index;
        Ok(entries)
    }
}

/// Index rules for blocking queries: backwards → 0 (re-read at once), otherwise at least 1.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

fn kv_path(key: &str) -> String {
    format!("kv/{}", key.trim_start_matches('/'))
}

/// Some(true) for 200 with a body, Some(false) for 404, error otherwise.
fn reply_ok_or_404(status: StatusCode, body: &str) -> Result<bool, ConsulError> {
    if status == StatusCode::NOT_FOUND {
        Ok(false)
    } else if status.is_success() {
        Ok(true)
    } else {
        Err(http_error(status, body))
    }
}

fn decode_entries(found: bool, body: &str) -> Result<Vec<KvEntry>, ConsulError> {
    if !found {
        return Ok(Vec::new());
    }
    let raw: Vec<RawKvEntry> =
        serde_json::from_str(body).map_err(|e| ConsulError::Decode(format!("KV entries: {e}")))?;
    raw.into_iter().map(RawKvEntry::decode).collect()
}

fn parse_bool(reply: Reply) -> Result<bool, ConsulError> {
    expect_ok(&reply)?;
    match reply.body.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ConsulError::Decode(format!(
            "expected true or false, got {other:?}"
        ))),
    }
}

fn expect_ok(reply: &Reply) -> Result<(), ConsulError> {
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(http_error(reply.status, &reply.body))
    }
}

pub(crate) fn http_error(status: StatusCode, body: &str) -> ConsulError {
    ConsulError::Http {
        status: status.as_u16(),
        body: body.trim().to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_resets_when_it_goes_backwards_and_is_never_zero() {
        assert_eq!(next_index(10, 5), 0);
        assert_eq!(next_index(10, 10), 10);
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn debug_redacts_the_token() {
        let c = ConsulClient::new(
            "http://127.0.0.1:8500",
            Some("s3cr3t-token".into()),
            Duration::from_secs(1),
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("s3cr3t-token"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn entries_decode_base64_and_null_values() {
        let body = r#"[{"LockIndex":1,"Key":"a","Flags":3,"Value":"dGVzdA==","Session":"s1","CreateIndex":100,"ModifyIndex":200},
                      {"LockIndex":0,"Key":"b","Flags":0,"Value":null,"CreateIndex":5,"ModifyIndex":6}]"#;
        let e = decode_entries(true, body).unwrap();
        assert_eq!(e[0].value, b"test");
        assert_eq!(e[0].session.as_deref(), Some("s1"));
        assert_eq!(
            (e[0].lock_index, e[0].modify_index, e[0].flags),
            (1, 200, 3)
        );
        assert!(e[1].value.is_empty());
        assert_eq!(e[1].session, None);
    }
}
