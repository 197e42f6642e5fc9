//! Rollout state in Consul KV: one JSON document per API under `<prefix>/state/<api>`, always
//! written by compare-and-set (and, for the daemon, fenced by its lock), together with the
//! alerts that state change raised (the shared outbox, `<prefix>/outbox/<api>/`).

use super::outbox;
use crate::alert::OutboxEntry;
use crate::consul::{is_stale_index, ConsulClient, ConsulError, Fence, TxnOp};
use crate::engine::{decode_state, encode_state, RolloutState};
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
        let key = self.key(&policy.api);
        match self.client.get(&key).await? {
            None => Ok((RolloutState::new(policy), 0)),
            Some(entry) => Ok((
                decode(&policy.api, &key, entry.modify_index, &entry.value)?,
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
        cas_txn(
            &self.client,
            &self.key(&state.api),
            &body,
            index,
            fence,
            extra,
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
        let ops = [TxnOp::set(&kept, old), TxnOp::cas(&key, &body, index)];
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
