//! The shared alert outbox in Consul KV, under `<prefix>/outbox/<api>/<seq>`: an alert raised by
//! a state change is written in the same fenced transaction as that state, so it exists if and
//! only if its decision was persisted, and it survives the instance that raised it. Whoever
//! holds the leader lock delivers the entries (per channel, oldest first, retried with
//! [`backoff`]) and deletes each one after delivery by compare-and-set.
//!
//! Bounded: at most [`CAP_PER_API`] entries per API (the oldest are deleted in the same
//! transaction to make room, never blocking the state write), each value at most
//! [`MAX_ENTRY_BYTES`], and a transaction within Consul's limits on operations (64 in older
//! releases, 128 in current ones: agent/txn_endpoint.go) and on request size (512 KiB). What
//! does not fit is handed back to the caller, which keeps it in the local outbox.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::alert::outbox::backoff;
use crate::alert::{DeliveryReport, Notifier, OutboxEntry};
use crate::consul::{ConsulClient, ConsulError, Fence, TxnOp};
use crate::traffic::Retry;

/// Most entries waiting per API; beyond it the oldest are dropped (counted and logged).
pub const CAP_PER_API: usize = 50;
/// Outbox operations (writes and drops) in one state transaction: Consul's smallest limit of
/// 64 operations, less the fence check, the state itself and its history records.
pub const MAX_OPS: usize = 64 - 2 - super::store::HISTORY_OPS;
/// Largest stored entry (JSON).
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Largest total of new entries in one transaction (JSON, before base64): with base64 (4/3)
/// 256 KiB of the 512 KiB a transaction may carry, the rest is left for the state.
pub const MAX_TXN_ENTRY_BYTES: usize = 192 * 1024;

/// The folder of `api`'s entries under greenlight's `prefix`.
pub fn api_prefix(prefix: &str, api: &str) -> String {
    format!("{}/outbox/{api}/", prefix.trim_end_matches('/'))
}

/// The key of the `n`th entry written together with the state whose ModifyIndex was `index`.
/// A compare-and-set on that index changes it (Consul keeps the index only of an unchanged
/// value, and then the same entry gets the same key), so the key is new, and keys sort by age.
pub fn entry_key(api_prefix: &str, index: u64, n: usize, entry: &OutboxEntry) -> String {
    let mut hasher = Sha256::new();
    hasher.update(entry.channel.as_bytes());
    hasher.update([0]);
    hasher.update(entry.event.key.as_bytes());
    hasher.update([u8::from(entry.event.resolved)]);
    let hash: String = hasher.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{api_prefix}{index:020}-{n:03}-{}-{hash}", entry.event.kind)
}

/// What to write with one state change.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New entries: key and stored value.
    pub writes: Vec<(String, Vec<u8>)>,
    /// Oldest waiting entries deleted to stay within [`CAP_PER_API`].
    pub drops: Vec<String>,
    /// Entries that do not fit this transaction (too big, too many): the caller keeps them in
    /// the local outbox.
    pub spilled: Vec<OutboxEntry>,
}

impl Plan {
    /// The transaction operations of the plan (writes, then drops). None of them can fail, so
    /// the outbox never makes a state write fail.
    pub fn ops(&self) -> Vec<TxnOp> {
        self.writes
            .iter()
            .map(|(k, v)| TxnOp::set(k, v))
            .chain(self.drops.iter().map(|k| TxnOp::delete(k)))
            .collect()
    }
}

/// Plans writing `entries` next to the state at ModifyIndex `index`, given the keys already
/// waiting under `api_prefix` (any order).
pub fn plan(api_prefix: &str, existing: &[String], index: u64, entries: Vec<OutboxEntry>) -> Plan {
    let mut plan = Plan::default();
    let mut bytes = 0;
    for entry in entries {
        let value = match serde_json::to_vec(&entry) {
            Ok(v) if v.len() <= MAX_ENTRY_BYTES && bytes + v.len() <= MAX_TXN_ENTRY_BYTES => v,
            _ => {
                plan.spilled.push(entry);
                continue;
            }
        };
        if plan.writes.len() >= CAP_PER_API.min(MAX_OPS) {
            plan.spilled.push(entry);
            continue;
        }
        bytes += value.len();
        let key = entry_key(api_prefix, index, plan.writes.len(), &entry);
        plan.writes.push((key, value));
    }
    let mut waiting: Vec<&String> = existing
        .iter()
        .filter(|k| k.starts_with(api_prefix))
        .collect();
    waiting.sort();
    loop {
        let excess = (waiting.len() + plan.writes.len()).saturating_sub(CAP_PER_API);
        plan.drops = waiting.iter().take(excess).map(|k| k.to_string()).collect();
        if plan.writes.len() + plan.drops.len() <= MAX_OPS {
            break;
        }
        // Too many operations: the newest write goes to the local outbox instead.
        if let Some((_, value)) = plan.writes.pop() {
            if let Ok(entry) = serde_json::from_slice(&value) {
                plan.spilled.insert(0, entry);
            }
        }
    }
    plan
}

/// The lock holder's view of the shared outbox: delivers and deletes entries.
#[derive(Debug)]
pub struct SharedOutbox {
    client: ConsulClient,
    root: String,
    retry: Retry,
    /// What this deliverer knows of each waiting key. An entry is never changed once written
    /// (a key is written once, or again with the same entry), so its value is read once and
    /// each pass lists only the keys. Attempts are counted here: a new leader starts afresh,
    /// which is at most one early retry.
    known: Mutex<HashMap<String, Known>>,
    depth: AtomicU64,
}

#[derive(Debug, Clone)]
struct Known {
    index: u64,
    entry: OutboxEntry,
    attempts: u32,
    next_attempt_at: Option<Timestamp>,
}

impl SharedOutbox {
    pub fn new(client: ConsulClient, prefix: &str) -> Self {
        SharedOutbox {
            client,
            root: format!("{}/outbox/", prefix.trim_end_matches('/')),
            retry: Retry::default(),
            known: Mutex::new(HashMap::new()),
            depth: AtomicU64::new(0),
        }
    }

    /// Entries waiting, as of the last delivery pass.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers every due entry through `notifier`'s channels, oldest first per API; a channel
    /// that fails is not tried again in this pass (its entries keep their order). Each
    /// delivered entry is deleted by compare-and-set, fenced by the lock: an entry written
    /// again meanwhile stays, and a deliverer that lost the lock deletes nothing.
    pub async fn deliver(
        &self,
        notifier: &Notifier,
        fence: &Fence,
        now: Timestamp,
    ) -> Result<DeliveryReport, ConsulError> {
        let mut report = DeliveryReport::default();
        let keys = self.client.keys(&self.root).await?;
        self.known().retain(|k, _| keys.binary_search(k).is_ok());
        let mut down: BTreeSet<String> = BTreeSet::new();
        let mut left = 0;
        for key in &keys {
            let Some(known) = self.read(key, fence, &mut report).await? else {
                continue;
            };
            let due = known.next_attempt_at.is_none_or(|t| t <= now);
            if !due || down.contains(&known.entry.channel) || !fence.is_held() {
                left += 1;
                continue;
            }
            let (channel, event) = (&known.entry.channel, &known.entry.event);
            match notifier.send(channel, event).await {
                None => {
                    if !report.unknown_channels.contains(channel) {
                        tracing::error!(%channel, key = %event.key, "Alert channel is not configured; the alert waits in the shared outbox.");
                        report.unknown_channels.push(channel.clone());
                    }
                    left += 1;
                }
                Some(Ok(())) => {
                    report.delivered += 1;
                    report.attempts.push((channel.clone(), true));
                    self.delete(key, known.index, fence).await?;
                }
                Some(Err(error)) if error.is_permanent() => {
                    report.rejected += 1;
                    report.attempts.push((channel.clone(), false));
                    tracing::error!(%error, key = %event.key, %channel, "Alert rejected by its receiver; removed from the shared outbox.");
                    self.delete(key, known.index, fence).await?;
                }
                Some(Err(error)) => {
                    report.retrying += 1;
                    report.attempts.push((channel.clone(), false));
                    left += 1;
                    let (attempts, next) = self.failed(key, now);
                    tracing::warn!(%error, key = %event.key, %channel, attempts, next_attempt_at = %next, "Alert delivery failed; will retry from the shared outbox.");
                    down.insert(channel.clone());
                }
            }
        }
        self.depth.store(left, Ordering::Relaxed);
        Ok(report)
    }

    /// What is known of `key`, reading its value the first time. An undecodable entry is
    /// logged and deleted (`None`), as is a key gone meanwhile.
    async fn read(
        &self,
        key: &str,
        fence: &Fence,
        report: &mut DeliveryReport,
    ) -> Result<Option<Known>, ConsulError> {
        if let Some(k) = self.known().get(key) {
            return Ok(Some(k.clone()));
        }
        let Some(kv) = self.client.get(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<OutboxEntry>(&kv.value) {
            Ok(entry) => {
                let known = Known {
                    index: kv.modify_index,
                    entry,
                    attempts: 0,
                    next_attempt_at: None,
                };
                self.known().insert(key.to_string(), known.clone());
                Ok(Some(known))
            }
            Err(error) => {
                tracing::error!(%key, %error, "Dropped an undecodable entry of the shared alert outbox.");
                report.corrupt += 1;
                self.delete(key, kv.modify_index, fence).await?;
                Ok(None)
            }
        }
    }

    fn failed(&self, key: &str, now: Timestamp) -> (u32, Timestamp) {
        let mut known = self.known();
        let Some(k) = known.get_mut(key) else {
            return (1, now);
        };
        k.attempts = k.attempts.saturating_add(1);
        let delay = jiff::SignedDuration::try_from(backoff(k.attempts))
            .unwrap_or(jiff::SignedDuration::MAX);
        let next = now.checked_add(delay).unwrap_or(Timestamp::MAX);
        k.next_attempt_at = Some(next);
        (k.attempts, next)
    }

    /// Deletes `key` if it is still at `index`, while `fence` holds (transient Consul errors
    /// retried). A rolled-back delete (written again, or the lock is gone) leaves it.
    async fn delete(&self, key: &str, index: u64, fence: &Fence) -> Result<(), ConsulError> {
        self.known().remove(key);
        let ops = [fence.check(), TxnOp::delete_cas(key, index)];
        let done = self
            .retry
            .run(
                "delete a delivered alert",
                ConsulError::is_transient,
                || self.client.txn(&ops),
            )
            .await;
        match done {
            Ok(_) => Ok(()),
            Err((ConsulError::TxnRolledBack(errors), _)) => {
                tracing::debug!(%key, ?errors, "A delivered alert was not deleted (written again, or the lock is gone).");
                Ok(())
            }
            Err((e, _)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertEvent, EventKind};

    fn entry(channel: &str, key: &str, description_len: usize) -> OutboxEntry {
        let at: Timestamp = "2026-11-27T05:00:00Z".parse().unwrap();
        let event = AlertEvent::new("checkout", EventKind::Rollback, key, "rolled back", at)
            .with_description("x".repeat(description_len));
        OutboxEntry::new(channel, &event, at)
    }

    const P: &str = "greenlight/outbox/checkout/";

    #[test]
    fn keys_are_new_per_state_write_and_sort_by_age() {
        let e = entry("oncall", "r1", 10);
        let a = entry_key(P, 7, 0, &e);
        let b = entry_key(P, 7, 1, &e);
        let c = entry_key(P, 12, 0, &e);
        assert!(a.starts_with(P) && a.contains("-rollback-"), "{a}");
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(api_prefix("greenlight/", "checkout"), P);
    }

    #[test]
    fn the_oldest_entries_are_dropped_beyond_the_cap_and_nothing_else() {
        let existing: Vec<String> = (0..CAP_PER_API as u64)
            .rev()
            .map(|i| entry_key(P, 100 + i, 0, &entry("oncall", "old", 1)))
            .chain(["greenlight/outbox/other/1".to_string()])
            .collect();
        let p = plan(
            P,
            &existing,
            500,
            vec![entry("oncall", "a", 1), entry("pager", "a", 1)],
        );
        assert_eq!(p.writes.len(), 2);
        assert!(p.spilled.is_empty());
        assert_eq!(
            p.drops,
            vec![
                entry_key(P, 100, 0, &entry("oncall", "old", 1)),
                entry_key(P, 101, 0, &entry("oncall", "old", 1)),
            ]
        );
        // Under the cap, nothing is dropped.
        let p = plan(P, &existing[..10], 500, vec![entry("oncall", "a", 1)]);
        assert!(p.drops.is_empty());
        // The operations never exceed the smallest transaction limit.
        let many: Vec<OutboxEntry> = (0..200).map(|i| entry("c", &format!("k{i}"), 1)).collect();
        let p = plan(P, &existing, 500, many);
        assert!(p.writes.len() + p.drops.len() <= MAX_OPS);
        assert_eq!(p.writes.len() + p.spilled.len(), 200, "nothing vanishes");
        assert_eq!(
            existing.len() - 1 - p.drops.len() + p.writes.len(),
            CAP_PER_API
        );
    }

    #[test]
    fn entries_too_big_for_consul_are_handed_back() {
        let big = entry("oncall", "big", MAX_ENTRY_BYTES);
        let p = plan(P, &[], 1, vec![entry("oncall", "small", 1), big.clone()]);
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.spilled, vec![big]);
        // Together, new entries stay within the transaction's size budget.
        let mid: Vec<OutboxEntry> = (0..8)
            .map(|i| entry("oncall", &format!("m{i}"), 40 * 1024))
            .collect();
        let p = plan(P, &[], 1, mid);
        let total: usize = p.writes.iter().map(|(_, v)| v.len()).sum();
        assert!(total <= MAX_TXN_ENTRY_BYTES, "{total}");
        assert_eq!(p.writes.len() + p.spilled.len(), 8);
        assert!(!p.spilled.is_empty());
    }
}
