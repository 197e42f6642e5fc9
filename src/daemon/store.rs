//! Rollout state in Consul KV: one JSON document per API under `<prefix>/state/<api>`, always
//! written by compare-and-set (and, for the daemon, fenced by its lock), together with the
//! alerts that state change raised (the shared outbox, `<prefix>/outbox/<api>/`) and the
//! decisions it took (the history, `<prefix>/history/<api>/<slot>`).
//!
//! The history is kept out of the state document so that a state costs the same to write at
//! its thousandth decision as at its first: each decision is written once, to the slot
//! `revision % HISTORY_LEN` (a ring of the newest [`HISTORY_LEN`] decisions, overwritten in
//! place, so nothing needs deleting), in the transaction that stores the state it produced.
//! It is read only when someone asks for it ([`StateStore::history`]).

use super::outbox;
use crate::alert::OutboxEntry;
use crate::consul::{is_stale_index, ConsulClient, ConsulError, Fence, KvEntry, TxnOp};
use crate::engine::{
    decode_state, encode_record, encode_state, DecisionRecord, RolloutState, HISTORY_LEN,
};
use crate::policy::Policy;

/// Why reading or writing a state failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the state since it was read (an operator intent, another instance).
    #[error("the state of {api} changed since it was read")]
    Conflict { api: String },
    /// The writer's lock is no longer held; nothing was written.
    #[error("lost the lock guarding writes; the state of {api} was not written")]
    LockLost { api: String },
    /// The stored document is not a state this version understands. `index` is the
    /// ModifyIndex of those bytes, so that a repair can replace exactly them (compare-and-set)
    /// after keeping a copy ([`StateStore::replace_undecodable`]).
    #[error("the state of {api} at {key} (index {index}) cannot be decoded: {reason}")]
    Corrupt {
        api: String,
        key: String,
        index: u64,
        reason: String,
    },
    /// The state holds something that cannot be stored so that it reads back (a number that is
    /// not finite); nothing was written.
    #[error("the state of {api} cannot be encoded: {reason}")]
    Encode { api: String, reason: String },
    #[error("Consul: {0}")]
    Consul(#[from] ConsulError),
}

/// The stored form of a state (JSON; refuses non-finite numbers).
pub fn encode(state: &RolloutState) -> Result<Vec<u8>, StoreError> {
    encode_state(state).map_err(|e| StoreError::Encode {
        api: state.api.clone(),
        reason: e.to_string(),
    })
}

/// History operations in one state transaction (the decisions of one evaluation, and once the
/// history an older version kept in the state). Counted out of the outbox's share
/// ([`outbox::MAX_OPS`]).
pub const HISTORY_OPS: usize = 3;

/// The folder of `api`'s history under greenlight's `prefix`.
pub fn history_prefix(prefix: &str, api: &str) -> String {
    format!("{}/history/{api}/", prefix.trim_end_matches('/'))
}

/// The transaction operations storing the decisions `state` took since it was loaded (the
/// newest ones, within [`HISTORY_OPS`]) and the history an older version kept in the state.
pub fn history_ops(prefix: &str, state: &RolloutState) -> Result<Vec<TxnOp>, StoreError> {
    let folder = history_prefix(prefix, &state.api);
    let encode_error = |e: crate::engine::CodecError| StoreError::Encode {
        api: state.api.clone(),
        reason: format!("history: {e}"),
    };
    let mut ops = Vec::new();
    if !state.legacy_history.is_empty() {
        let body = serde_json::to_vec(&state.legacy_history)
            .map_err(|e| encode_error(crate::engine::CodecError::RoundTrip(e.to_string())))?;
        ops.push(TxnOp::set(&format!("{folder}legacy"), &body));
    }
    let room = HISTORY_OPS - ops.len();
    let skip = state.new_records.len().saturating_sub(room);
    for record in &state.new_records[skip..] {
        let body = encode_record(record).map_err(encode_error)?;
        ops.push(TxnOp::set(&history_key(&folder, record.revision), &body));
    }
    Ok(ops)
}

fn history_key(folder: &str, revision: u64) -> String {
    format!("{folder}{:02}", revision % HISTORY_LEN as u64)
}

/// The newest [`HISTORY_LEN`] decisions among stored history values (`(key, bytes)`), oldest
/// first; a value that does not decode is skipped (and named in the second list).
pub fn history_from(entries: &[(String, Vec<u8>)]) -> (Vec<DecisionRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    for (key, bytes) in entries {
        let read = if key.ends_with("/legacy") {
            serde_json::from_slice::<Vec<DecisionRecord>>(bytes)
        } else {
            serde_json::from_slice::<DecisionRecord>(bytes).map(|r| vec![r])
        };
        match read {
            Ok(rs) => records.extend(rs),
            Err(_) => unreadable.push(key.clone()),
        }
    }
    // The ring's own record of a revision wins over an older version's copy of it.
    records.sort_by_key(|r| r.revision);
    records.dedup_by_key(|r| r.revision);
    let extra = records.len().saturating_sub(HISTORY_LEN);
    records.drain(..extra);
    (records, unreadable)
}

/// A state from its stored form (`index`: the ModifyIndex of those bytes).
pub fn decode(api: &str, key: &str, index: u64, bytes: &[u8]) -> Result<RolloutState, StoreError> {
    decode_state(bytes).map_err(|e| StoreError::Corrupt {
        api: api.to_string(),
        key: key.to_string(),
        index,
        reason: e.to_string(),
    })
}

/// What a state write with alerts stored.
#[derive(Debug, Default)]
pub struct Saved {
    /// The state's new ModifyIndex.
    pub index: u64,
    /// Alerts written to the shared outbox.
    pub written: usize,
    /// Keys of the oldest waiting alerts dropped to make room.
    pub dropped: Vec<String>,
    /// Alerts that did not fit the transaction (to be kept in the local outbox).
    pub spilled: Vec<OutboxEntry>,
}

/// Reads and writes rollout states.
#[derive(Debug, Clone)]
pub struct StateStore {
    client: ConsulClient,
    prefix: String,
}

impl StateStore {
    pub fn new(client: ConsulClient, prefix: &str) -> Self {
        StateStore {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The key holding `api`'s state.
    pub fn key(&self, api: &str) -> String {
        format!("{}/state/{api}", self.prefix)
    }

    /// The key of the leader lock.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// greenlight's Consul prefix (`consul.prefix`, without a trailing `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stored state of `policy`'s API and its ModifyIndex, or a fresh state and index 0.
    pub async fn load(&self, policy: &Policy) -> Result<(RolloutState, u64), StoreError> {
        let entry = self.client.get(&self.key(&policy.api)).await?;
        self.state_of(policy, entry.as_ref())
    }

    /// The state in `entry`, read from [`StateStore::key`] (`None`, or an entry without a
    /// ModifyIndex as a transaction's `get-or-empty` returns for a missing key: a fresh state
    /// and index 0).
    pub fn state_of(
        &self,
        policy: &Policy,
        entry: Option<&KvEntry>,
    ) -> Result<(RolloutState, u64), StoreError> {
        match entry.filter(|e| e.modify_index != 0) {
            None => Ok((RolloutState::new(policy), 0)),
            Some(entry) => Ok((
                decode(&policy.api, &entry.key, entry.modify_index, &entry.value)?,
                entry.modify_index,
            )),
        }
    }

    /// Writes `state` if the stored one still has ModifyIndex `index` (0: does not exist yet),
    /// and, with a fence, only while that lock is held. Returns the new ModifyIndex.
    ///
    /// [`StoreError::LockLost`] only when the fence's `check-session` failed because the session
    /// no longer holds the lock; [`StoreError::Conflict`] only when the compare-and-set found a
    /// newer state; any other rolled-back transaction is
    /// `StoreError::Consul(ConsulError::TxnRolledBack(..))` with Consul's per-operation reasons.
    pub async fn save(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        self.save_ops(state, index, fence, Vec::new()).await
    }

    /// [`StateStore::save`] with `alerts` written to the shared outbox in the same transaction:
    /// either the state and its alerts are stored, or neither. The oldest waiting alerts of the
    /// API beyond [`outbox::CAP_PER_API`] are dropped in that transaction; alerts that do not
    /// fit it are handed back in [`Saved::spilled`].
    pub async fn save_with_alerts(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
        alerts: Vec<OutboxEntry>,
    ) -> Result<Saved, StoreError> {
        if alerts.is_empty() {
            let index = self.save(state, index, fence).await?;
            return Ok(Saved {
                index,
                ..Saved::default()
            });
        }
        let folder = outbox::api_prefix(&self.prefix, &state.api);
        // Without the list nothing is dropped this time (the cap is restored at the next
        // write); the state write does not wait for it.
        let existing = match self.client.keys(&folder).await {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(api = %state.api, %error, "Could not list the shared alert outbox; writing without trimming it.");
                Vec::new()
            }
        };
        let plan = outbox::plan(&folder, &existing, index, alerts);
        let index = self.save_ops(state, index, fence, plan.ops()).await?;
        Ok(Saved {
            index,
            written: plan.writes.len(),
            dropped: plan.drops,
            spilled: plan.spilled,
        })
    }

    async fn save_ops(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
        extra: Vec<TxnOp>,
    ) -> Result<u64, StoreError> {
        let body = encode(state)?;
        let mut ops = history_ops(&self.prefix, state)?;
        ops.extend(extra);
        cas_txn(
            &self.client,
            &self.key(&state.api),
            &body,
            index,
            fence,
            ops,
            &state.api,
        )
        .await
    }

    /// Where the undecodable bytes of `api`'s state at ModifyIndex `index` are kept by
    /// [`StateStore::replace_undecodable`]; outside `<prefix>/state/`, so nothing reads them as
    /// a state.
    pub fn undecodable_key(&self, api: &str, index: u64) -> String {
        format!("{}/undecodable/{api}/{index}", self.prefix)
    }

    /// Replaces an undecodable state (the bytes at ModifyIndex `index`) with `state`, keeping
    /// the old bytes under [`StateStore::undecodable_key`]: one transaction, so either both are
    /// written or neither (then [`StoreError::Conflict`] if the state changed meanwhile). Returns
    /// the key the old bytes are kept at and the new ModifyIndex.
    pub async fn replace_undecodable(
        &self,
        state: &RolloutState,
        index: u64,
        old: &[u8],
    ) -> Result<(String, u64), StoreError> {
        let key = self.key(&state.api);
        let kept = self.undecodable_key(&state.api, index);
        let body = encode(state)?;
        let mut ops = vec![TxnOp::set(&kept, old), TxnOp::cas(&key, &body, index)];
        ops.extend(history_ops(&self.prefix, state)?);
        match self.client.txn(&ops).await {
            Ok(results) => {
                let new_index = results
                    .entries
                    .iter()
                    .find(|e| e.key == key)
                    .map(|e| e.modify_index)
                    .unwrap_or(index);
                Ok((kept, new_index))
            }
            Err(ConsulError::TxnRolledBack(_)) => Err(StoreError::Conflict {
                api: state.api.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// `api`'s newest decisions, oldest first (empty when it has none).
    pub async fn history(&self, api: &str) -> Result<Vec<DecisionRecord>, StoreError> {
        let (entries, _) = self.client.list(&history_prefix(&self.prefix, api)).await?;
        let entries: Vec<(String, Vec<u8>)> =
            entries.into_iter().map(|e| (e.key, e.value)).collect();
        let (records, unreadable) = history_from(&entries);
        if !unreadable.is_empty() {
            tracing::warn!(api = %api, keys = ?unreadable, "Skipping history records that cannot be decoded.");
        }
        Ok(records)
    }

    /// The raw bytes of `api`'s state and their ModifyIndex, if it exists.
    pub async fn load_raw(&self, api: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        Ok(self
            .client
            .get(&self.key(api))
            .await?
            .map(|e| (e.value, e.modify_index)))
    }
}

/// Writes `body` at `key` if its ModifyIndex is still `index` (0: absent), fenced by the lock
/// when given, with `extra` operations in the same transaction. Returns the new ModifyIndex.
/// `name` (an API or a campaign) names what was written in errors: [`StoreError::LockLost`]
/// when the fence failed, [`StoreError::Conflict`] when only the compare-and-set did.
pub(crate) async fn cas_txn(
    client: &ConsulClient,
    key: &str,
    body: &[u8],
    index: u64,
    fence: Option<&Fence>,
    extra: Vec<TxnOp>,
    name: &str,
) -> Result<u64, StoreError> {
    let mut ops = Vec::with_capacity(2 + extra.len());
    if let Some(f) = fence {
        ops.push(f.check());
    }
    let state_op = ops.len();
    ops.push(TxnOp::cas(key, body, index));
    ops.extend(extra);
    match client.txn(&ops).await {
        Ok(results) => Ok(results
            .entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.modify_index)
            .unwrap_or(index)),
        Err(ConsulError::TxnRolledBack(errors)) => {
            if fence.is_some_and(|f| f.lost_in(&errors, 0)) {
                Err(StoreError::LockLost {
                    api: name.to_string(),
                })
            } else if errors
                .iter()
                .all(|(i, what)| *i == state_op && is_stale_index(what))
            {
                Err(StoreError::Conflict {
                    api: name.to_string(),
                })
            } else {
                // Neither a lost lock nor a race: keep Consul's own reasons.
                Err(StoreError::Consul(ConsulError::TxnRolledBack(errors)))
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::{decide, Intent, Observation};
    use jiff::{SignedDuration, Timestamp};

    fn t(m: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000).unwrap() + SignedDuration::from_mins(m)
    }

    fn empty(m: i64) -> Observation {
        Observation {
            start: t(m - 1),
            end: t(m),
            checks: Vec::new(),
        }
    }

    /// A state after `n` decisions, each stored as the daemon stores it; returns the state
    /// document and every history value written, by key.
    fn stored_after(n: i64) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
        let policy = crate::engine::tests::policy();
        let mut state = RolloutState::new(&policy);
        let mut kv = BTreeMap::new();
        for m in 1..=n {
            if m % 7 == 0 {
                state.intent = Some(Intent::Pause {
                    reason: format!("look {m}"),
                });
            } else if m % 7 == 1 {
                state.intent = Some(Intent::Resume);
            }
            state = decide(&policy, &state, &empty(m), t(m)).state;
            for op in history_ops("greenlight", &state).unwrap() {
                let v = serde_json::to_value(&op).unwrap();
                let key = v["KV"]["Key"].as_str().unwrap().to_string();
                let value = v["KV"]["Value"].as_str().unwrap();
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .unwrap();
                kv.insert(key, bytes);
            }
            state.new_records.clear();
        }
        (encode(&state).unwrap(), kv)
    }

    #[test]
    fn a_long_rollout_stores_a_state_no_larger_than_a_short_one() {
        // The failure this guards against: a busy rollout whose stored document grew with
        // every decision until it no longer fitted Consul's limits.
        let (short, _) = stored_after(3);
        let (long, kv) = stored_after(2_000);
        assert!(
            long.len() <= short.len() + 512,
            "{} bytes after 2,000 decisions vs {} after 3",
            long.len(),
            short.len()
        );
        // The history is a ring of the newest decisions, one key each.
        assert_eq!(kv.len(), HISTORY_LEN);
        let entries: Vec<(String, Vec<u8>)> = kv.into_iter().collect();
        let (records, unreadable) = history_from(&entries);
        assert!(unreadable.is_empty());
        let revisions: Vec<u64> = records.iter().map(|r| r.revision).collect();
        let expected: Vec<u64> = (2_000 - HISTORY_LEN as u64 + 1..=2_000).collect();
        assert_eq!(revisions, expected);
        assert_eq!(records.last().unwrap().at, t(2_000));
    }

    #[test]
    fn an_older_versions_history_is_moved_to_its_own_key_and_read_with_the_ring() {
        let text = include_str!("../engine/testdata/state_previous_version.json");
        let mut state =
            decode("checkout", "greenlight/state/checkout", 1, text.as_bytes()).unwrap();
        let legacy = state.legacy_history.clone();
        assert!(!legacy.is_empty());
        // The next write: the document without it, the old history under `legacy`.
        let body = encode(&state).unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("\"history\""));
        let ops = history_ops("greenlight", &state).unwrap();
        assert_eq!(ops.len(), 1);
        let op = serde_json::to_value(&ops[0]).unwrap();
        assert_eq!(op["KV"]["Key"], "greenlight/history/checkout/legacy");
        // A decision after the upgrade lands in the ring, after the old ones.
        let policy = crate::engine::tests::policy();
        state.intent = Some(Intent::Pause {
            reason: "after the upgrade".into(),
        });
        state = decide(&policy, &state, &empty(1), t(1)).state;
        let newest = state.new_records.last().unwrap().clone();
        let entries = vec![
            (
                "greenlight/history/checkout/legacy".to_string(),
                serde_json::to_vec(&legacy).unwrap(),
            ),
            (
                history_key("greenlight/history/checkout/", newest.revision),
                encode_record(&newest).unwrap(),
            ),
            (
                "greenlight/history/checkout/07".to_string(),
                b"{not json".to_vec(),
            ),
        ];
        let (records, unreadable) = history_from(&entries);
        assert_eq!(
            unreadable,
            vec!["greenlight/history/checkout/07".to_string()]
        );
        assert_eq!(records.len(), legacy.len() + 1);
        assert_eq!(records.last(), Some(&newest));
        assert!(records.windows(2).all(|w| w[0].revision < w[1].revision));
    }

    #[test]
    fn a_decision_with_a_non_finite_number_is_refused_before_anything_is_written() {
        let policy = crate::engine::tests::policy();
        let mut state = decide(&policy, &RolloutState::new(&policy), &empty(1), t(1)).state;
        state.new_records[0]
            .evidence
            .push(crate::engine::EvidenceRecord {
                stream: "errors".into(),
                rollback_log_e: f64::NAN,
                advance_log_e: 0.0,
            });
        let e = history_ops("greenlight", &state).unwrap_err();
        assert!(matches!(e, StoreError::Encode { .. }), "{e}");
    }
}
