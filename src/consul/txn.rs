//! Consul transactions (`PUT /v1/txn`): a typed KV operation builder and result decoding.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::{http_error, ConsulClient, ConsulError, KvEntry, RawKvEntry};

/// Consul's limit on operations in one transaction (agent/txn_endpoint.go `maxTxnOps`: 128
/// in current releases, 64 in older ones).
pub const MAX_TXN_OPS: usize = 128;

/// One KV operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxnOp {
    #[serde(rename = "KV")]
    kv: KvOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvOp {
    verb: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

impl TxnOp {
    fn new(verb: &'static str, key: &str) -> Self {
        TxnOp {
            kv: KvOp {
                verb,
                key: key.to_string(),
                value: None,
                index: None,
                session: None,
            },
        }
    }

    fn value(mut self, value: &[u8]) -> Self {
        self.kv.value = Some(base64::engine::general_purpose::STANDARD.encode(value));
        self
    }

    fn index(mut self, index: u64) -> Self {
        self.kv.index = Some(index);
        self
    }

    fn session(mut self, session: &str) -> Self {
        self.kv.session = Some(session.to_string());
        self
    }

    /// Writes `value` unconditionally.
    pub fn set(key: &str, value: &[u8]) -> Self {
        Self::new("set", key).value(value)
    }

    /// Writes `value` only if the key's ModifyIndex is `index` (0: only if it does not exist).
    pub fn cas(key: &str, value: &[u8], index: u64) -> Self {
        Self::new("cas", key).value(value).index(index)
    }

    /// Reads the key; the transaction fails if it does not exist.
    pub fn get(key: &str) -> Self {
        Self::new("get", key)
    }

    /// Reads the key; a missing key comes back as an entry without a value (ModifyIndex 0).
    pub fn get_or_empty(key: &str) -> Self {
        Self::new("get-or-empty", key)
    }

    /// Fails the transaction unless the key's ModifyIndex is `index`.
    pub fn check_index(key: &str, index: u64) -> Self {
        Self::new("check-index", key).index(index)
    }

    /// Fails the transaction if the key exists.
    pub fn check_not_exists(key: &str) -> Self {
        Self::new("check-not-exists", key)
    }

    /// Deletes the key unconditionally.
    pub fn delete(key: &str) -> Self {
        Self::new("delete", key)
    }

    /// Deletes the key only if its ModifyIndex is `index`; a missing key counts as deleted.
    pub fn delete_cas(key: &str, index: u64) -> Self {
        Self::new("delete-cas", key).index(index)
    }

    /// Takes the lock on the key for `session`, writing `value`.
    pub fn lock(key: &str, value: &[u8], session: &str) -> Self {
        Self::new("lock", key).value(value).session(session)
    }

    /// Fails the transaction unless `session` holds the lock on the key (fencing).
    pub fn check_session(key: &str, session: &str) -> Self {
        Self::new("check-session", key).session(session)
    }

    /// Releases the lock on the key held by `session`, writing `value`.
    pub fn unlock(key: &str, value: &[u8], session: &str) -> Self {
        Self::new("unlock", key).value(value).session(session)
    }

    /// The operation's verb, e.g. `cas`.
    pub fn verb(&self) -> &str {
        self.kv.verb
    }

    /// The key the operation touches.
    pub fn key(&self) -> &str {
        &self.kv.key
    }
}

/// The entries a committed transaction returned, in operation order. Only operations that
/// return an entry appear (`get`, `set`, `cas`, `lock`, `unlock`, `check-index`); values are
/// empty except for `get`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResults {
    pub entries: Vec<KvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnErrorBody>>,
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV", default)]
    kv: Option<RawKvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnErrorBody {
    /// Always present in Consul's answers (agent/structs/txn.go `TxnError`); an answer without
    /// it is not attributed to operation 0.
    #[serde(default)]
    op_index: Option<usize>,
    #[serde(default)]
    what: String,
}

/// Whether `what` is Consul's reason for a failed `check-session`: the key is missing or
/// another session (or none) holds it (agent/consul/state/kvs.go `kvsCheckSessionTxn`:
/// `failed session check for key "k", current session "a" != "b"` and
/// `failed to check session, key "k" doesn't exist`).
pub fn is_session_check_failure(what: &str) -> bool {
    what.starts_with("failed session check for key")
        || what.starts_with("failed to check session, key")
}

/// Whether `what` is Consul's reason for a failed `cas` or `delete-cas`: the key's ModifyIndex
/// is not the one given (agent/consul/state/txn.go `txnKVS`:
/// `failed to set key "k", index is stale`).
pub fn is_stale_index(what: &str) -> bool {
    what.ends_with(", index is stale")
}

impl ConsulClient {
    /// Runs `ops` atomically: all apply or none. A rollback is
    /// [`ConsulError::TxnRolledBack`] with each failed operation's index and Consul's reason
    /// (Consul reports every failed operation, not only the first); an ACL failure of any
    /// operation is [`ConsulError::PermissionDenied`] carrying each denied operation's text.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnResults, ConsulError> {
        if ops.len() > MAX_TXN_OPS {
            return Err(ConsulError::Http {
                status: 413,
                body: format!(
                    "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                    ops.len()
                ),
            });
        }
        let body = serde_json::to_vec(ops)
            .map_err(|e| ConsulError::Decode(format!("encode transaction: {e}")))?;
        let reply = self
            .call(Method::PUT, "txn", &[], Some(body), Duration::ZERO)
            .await?;
        match reply.status {
            StatusCode::OK | StatusCode::CONFLICT => {}
            status => return Err(http_error(status, &reply.body)),
        }
        let parsed: TxnResponse = serde_json::from_str(&reply.body)
            .map_err(|e| ConsulError::Decode(format!("transaction response: {e}")))?;
        let mut errors = Vec::new();
        for e in parsed.errors.unwrap_or_default() {
            match e.op_index {
                Some(i) => errors.push((i, e.what)),
                None => {
                    return Err(ConsulError::Decode(format!(
                        "transaction error without an OpIndex: {}",
                        e.what
                    )))
                }
            }
        }
        if reply.status == StatusCode::CONFLICT || !errors.is_empty() {
            // Per-operation ACL failures come back as a 409 rolled-back transaction
            // (agent/consul/txn_endpoint.go `Txn.preCheck`), not as a 403.
            let denied: Vec<String> = errors
                .iter()
                .filter(|(_, what)| what.contains("Permission denied"))
                .map(|(i, what)| format!("op {i}: {what}"))
                .collect();
            if !denied.is_empty() {
                return Err(ConsulError::PermissionDenied(denied.join("; ")));
            }
            return Err(ConsulError::TxnRolledBack(errors));
        }
        let entries = parsed
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .map(RawKvEntry::decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TxnResults { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_reasons_are_classified_by_their_source_texts() {
        // agent/consul/state/kvs.go kvsCheckSessionTxn and state/txn.go txnKVS.
        assert!(is_session_check_failure(
            r#"failed session check for key "l", current session "" != "s1""#
        ));
        assert!(is_session_check_failure(
            r#"failed to check session, key "l" doesn't exist"#
        ));
        assert!(!is_session_check_failure("Permission denied"));
        assert!(is_stale_index(r#"failed to set key "k", index is stale"#));
        assert!(!is_stale_index(
            r#"failed to lock key "k", lock is already held"#
        ));
    }

    #[test]
    fn ops_serialize_to_the_documented_shape() {
        let ops = vec![
            TxnOp::cas("a/b", b"10", 123),
            TxnOp::get("a/c"),
            TxnOp::lock("a/l", b"me", "sess"),
        ];
        let json = serde_json::to_value(&ops).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"KV": {"Verb": "cas", "Key": "a/b", "Value": "MTA=", "Index": 123}},
                {"KV": {"Verb": "get", "Key": "a/c"}},
                {"KV": {"Verb": "lock", "Key": "a/l", "Value": "bWU=", "Session": "sess"}},
            ])
        );
    }
}
