//! The audit trail in Consul KV: one key per entry under `<prefix>/audit/<api>/`, named so that
//! keys sort in time order; at most [`AUDIT_LEN`] per API, the oldest dropped first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::alert::{AlertEvent, EventKind, Notifier};
use crate::consul::{ConsulClient, TxnOp};
use crate::daemon::StoreError;
use crate::policy::Policy;
use crate::server::Telemetry;

use super::AuditEntry;

/// How many entries are kept per API.
pub const AUDIT_LEN: usize = 500;

/// How long recording an entry may take before it is given up (the action has happened).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Consul accepts at most 64 operations in one transaction.
const TXN_MAX_OPS: usize = 64;

/// Writes and reads the audit trail.
#[derive(Debug, Clone)]
pub struct AuditLog {
    client: ConsulClient,
    prefix: String,
    capacity: usize,
    notifier: Option<Arc<Notifier>>,
    telemetry: Option<Arc<Telemetry>>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    failed: AtomicU64,
    sequence: AtomicU64,
}

impl AuditLog {
    /// The trail under greenlight's Consul `prefix` (`consul.prefix`).
    pub fn new(client: ConsulClient, prefix: &str) -> AuditLog {
        AuditLog {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            capacity: AUDIT_LEN,
            notifier: None,
            telemetry: None,
            counters: Arc::default(),
        }
    }

    /// Keeps at most `capacity` entries per API (at least 1).
    pub fn with_capacity(mut self, capacity: usize) -> AuditLog {
        self.capacity = capacity.max(1);
        self
    }

    /// Sends each entry to the channels a policy routes `audit` events to.
    pub fn with_notifier(mut self, notifier: Arc<Notifier>) -> AuditLog {
        self.notifier = Some(notifier);
        self
    }

    /// Counts entries in `telemetry` (`greenlight_audit_entries_total`).
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> AuditLog {
        self.telemetry = Some(telemetry);
        self
    }

    /// The folder of `api`'s entries (ends with `/`).
    pub fn folder(&self, api: &str) -> String {
        format!("{}/audit/{api}/", self.prefix)
    }

    /// Entries written by this log since it was made.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Entries this log failed to write since it was made.
    pub fn write_failures(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Records `entry`: one structured log line, the entry in Consul (then the oldest beyond
    /// the capacity dropped), and an alert to the policy's `audit` channels. Never fails: a
    /// write that does not succeed is logged and counted, and its reason returned.
    pub async fn record(&self, policy: &Policy, entry: &AuditEntry) -> Option<String> {
        crate::server::logging::log_audit(entry);
        let written = match tokio::time::timeout(WRITE_TIMEOUT, self.write(entry)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "Consul did not answer within {}",
                humantime::format_duration(WRITE_TIMEOUT)
            )),
        };
        if let Some(t) = &self.telemetry {
            t.audit_entry(written.is_none());
        }
        match &written {
            None => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Some(why) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                crate::server::logging::audit_write_failed(&entry.api, why);
            }
        }
        self.alert(policy, entry).await;
        written
    }

    /// Writes `entry` and drops the oldest entries beyond the capacity.
    pub async fn write(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let body = serde_json::to_vec(entry).map_err(|e| StoreError::Encode {
            api: entry.api.clone(),
            reason: e.to_string(),
        })?;
        let key = self.entry_key(entry);
        self.client.put(&key, &body).await?;
        self.prune(&entry.api).await
    }

    /// The newest `limit` entries of `api` (at most the capacity), oldest first. Entries that
    /// cannot be decoded are skipped (and logged).
    pub async fn list(&self, api: &str, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let (entries, _) = self.client.list(&self.folder(api)).await?;
        let mut out: Vec<AuditEntry> = entries
            .iter()
            .filter_map(|e| match serde_json::from_slice(&e.value) {
                Ok(entry) => Some(entry),
                Err(err) => {
                    crate::server::logging::audit_entry_undecodable(api, &e.key, &err.to_string());
                    None
                }
            })
            .collect();
        let keep = limit.min(self.capacity);
        if out.len() > keep {
            out.drain(..out.len() - keep);
        }
        Ok(out)
    }

    /// `<folder>/<microseconds since the epoch, 20 digits>-<sequence>-<request id>`: sorts in
    /// time order, unique per writer.
    fn entry_key(&self, entry: &AuditEntry) -> String {
        let micros = entry.at.as_microsecond().max(0);
        let seq = self.counters.sequence.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        let id = safe_id(&entry.request_id);
        format!("{}{micros:020}-{seq:06}-{id}", self.folder(&entry.api))
    }

    /// Deletes the oldest entries of `api` beyond the capacity.
    async fn prune(&self, api: &str) -> Result<(), StoreError> {
        let keys = self.client.keys(&self.folder(api)).await?;
        if keys.len() <= self.capacity {
            return Ok(());
        }
        let extra = keys.len() - self.capacity;
        for chunk in keys[..extra].chunks(TXN_MAX_OPS) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::delete(k)).collect();
            self.client.txn(&ops).await?;
        }
        Ok(())
    }

    async fn alert(&self, policy: &Policy, entry: &AuditEntry) {
        let channels = policy.alert_channels(EventKind::Audit.as_str());
        let Some(notifier) = &self.notifier else {
            return;
        };
        if channels.is_empty() {
            return;
        }
        let event = event(entry);
        if let Err(e) = notifier.notify(&event, channels).await {
            crate::server::logging::audit_alert_failed(&entry.api, &e.to_string());
        }
    }
}

/// `id` with only letters, digits, `-` and `_`, at most 48 of them (for keys and file names).
fn safe_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(48)
        .collect()
}

/// The alert telling an `audit` channel about `entry`.
pub(crate) fn event(entry: &AuditEntry) -> AlertEvent {
    let summary = format!(
        "{}: {} by {} ({})",
        entry.api,
        entry.action.as_str(),
        entry.user,
        entry.reason
    );
    let weights = |s: &super::StateSummary| {
        format!(
            "{} at step {} (blue={} green={})",
            s.phase.as_str(),
            s.step + 1,
            s.weights.blue,
            s.weights.green
        )
    };
    AlertEvent::new(
        &entry.api,
        EventKind::Audit,
        &format!(
            "{}-{}",
            entry.at.as_microsecond(),
            safe_id(&entry.request_id)
        ),
        summary,
        entry.at,
    )
    .with_description(format!(
        "{} asked to {} {}: {}\nBefore: {}.\nAfter: {}.\n",
        entry.user,
        entry.action.as_str(),
        entry.api,
        entry.reason,
        weights(&entry.before),
        weights(&entry.after)
    ))
    .with_field("user", &entry.user)
    .with_field("groups", entry.groups.join(","))
    .with_field("action", entry.action.as_str())
    .with_field("reason", &entry.reason)
    .with_field("source", &entry.source)
    .with_field("request_id", &entry.request_id)
    .with_field("before", weights(&entry.before))
    .with_field("after", weights(&entry.after))
}
