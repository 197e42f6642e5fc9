//! Weights in two Consul KV keys, read in one transaction and changed by one two-key CAS txn.

use super::sticky_maps::{salt_matters, share_of};
use super::{Retry, TrafficError};
use crate::consul::lock::Fence;
use crate::consul::{is_stale_index, ConsulClient, ConsulError, KvEntry, TxnOp};
use crate::policy::{Policy, TrafficTarget, Weights};

/// Rounds of read → compare → CAS before giving up on a key that keeps changing to the same
/// values under us.
const CAS_ROUNDS: u32 = 3;

/// The weight entries (and the salt's, in sticky mode) as one transaction read them.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEntries {
    pub blue: KvEntry,
    pub green: KvEntry,
    pub salt: Option<KvEntry>,
}

/// The Consul KV actuator: the policy's `consul_keys` hold blue's and green's integer weights.
#[derive(Debug, Clone)]
pub struct ConsulKv {
    client: ConsulClient,
    retry: Retry,
}

impl ConsulKv {
    pub fn new(client: ConsulClient) -> Self {
        ConsulKv {
            client,
            retry: Retry::default(),
        }
    }

    /// Replaces the backoff used for transient Consul failures.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    fn keys(policy: &Policy) -> Result<(&str, &str), TrafficError> {
        match &policy.traffic.target {
            TrafficTarget::ConsulKeys { blue, green } => Ok((blue, green)),
            TrafficTarget::Haproxy { .. } => Err(TrafficError::WrongTarget {
                api: policy.api.clone(),
                wanted: "Consul KV",
            }),
        }
    }

    /// Runs a transaction, retrying transient failures.
    async fn txn(&self, ops: &[TxnOp]) -> Result<Vec<KvEntry>, ConsulError> {
        self.retry
            .run("consul", ConsulError::is_transient, || self.client.txn(ops))
            .await
            .map(|r| r.entries)
            .map_err(|(e, _attempts)| e)
    }

    fn map_err(&self, e: ConsulError) -> TrafficError {
        match e {
            ConsulError::PermissionDenied(text) => TrafficError::PermissionDenied(text),
            e if e.is_transient() => TrafficError::Unreachable {
                target: format!("Consul at {}", self.client.url()),
                attempts: self.retry.attempts.max(1),
                reason: e.to_string(),
            },
            e => TrafficError::Consul(e),
        }
    }

    /// Both weight entries and, with `salt_key`, the salt's (without a value when the key is
    /// missing), read atomically.
    async fn read_entries(
        &self,
        blue: &str,
        green: &str,
        salt_key: Option<&str>,
    ) -> Result<(KvEntry, KvEntry, Option<KvEntry>), TrafficError> {
        let mut ops = vec![TxnOp::get(blue), TxnOp::get(green)];
        ops.extend(salt_key.map(TxnOp::get_or_empty));
        let wanted: Vec<&str> = [blue, green].into_iter().chain(salt_key).collect();
        match self.txn(&ops).await {
            Ok(mut entries) if entries.len() == wanted.len() => {
                let salt = (entries.len() == 3).then(|| entries.remove(2));
                let g = entries.remove(1);
                let b = entries.remove(0);
                Ok((b, g, salt))
            }
            // A `get` of a missing key fails the transaction, so a committed read that lacks
            // an entry had it filtered out by ACLs (agent/consul/txn_endpoint.go
            // `FilterTxnResults`): the token may not read that key.
            Ok(entries) => {
                let hidden: Vec<&str> = wanted
                    .into_iter()
                    .filter(|k| !entries.iter().any(|e| e.key == *k))
                    .collect();
                Err(TrafficError::PermissionDenied(format!(
                        "Permission denied: Consul filtered {} out of a transaction read (the token lacks key:read)",
                        hidden.join(", ")
                    )))
            }
            Err(ConsulError::TxnRolledBack(errors)) => {
                let keys = [blue, green];
                let mut missing: Vec<String> = errors
                    .iter()
                    .filter_map(|(i, _)| keys.get(*i).map(|k| k.to_string()))
                    .collect();
                if missing.is_empty() {
                    missing = keys.iter().map(|k| k.to_string()).collect();
                }
                Err(TrafficError::Missing { keys: missing })
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    /// The weights stored in the policy's two keys.
    pub async fn read(&self, policy: &Policy) -> Result<Weights, TrafficError> {
        self.read_split(policy, None).await
    }

    fn salt_key(policy: &Policy) -> Option<&str> {
        policy.traffic.sticky.as_ref()?.salt_key.as_deref()
    }

    /// [`ConsulKv::read`]; in sticky mode, given the rollout's `salt`, the salt key is read in
    /// the same transaction and must hold it wherever it matters (green's share strictly
    /// between 0 and everyone), else [`TrafficError::StaleSalt`].
    pub async fn read_split(
        &self,
        policy: &Policy,
        salt: Option<&str>,
    ) -> Result<Weights, TrafficError> {
        let (blue, green) = Self::keys(policy)?;
        let salt_key = Self::salt_key(policy).filter(|_| salt.is_some());
        let (blue, green, salt_entry) = self.read_entries(blue, green, salt_key).await?;
        Self::split_of(
            policy,
            &LiveEntries {
                blue,
                green,
                salt: salt_entry,
            },
            salt,
        )
    }

    /// The split in entries read by [`ConsulKv::read_along`], checked as
    /// [`ConsulKv::read_split`] checks it: in sticky mode, given the rollout's `salt`, the salt
    /// key must hold it wherever it matters.
    pub fn split_of(
        policy: &Policy,
        live: &LiveEntries,
        salt: Option<&str>,
    ) -> Result<Weights, TrafficError> {
        let found = weights_of(&live.blue, &live.green)?;
        let salt_key = Self::salt_key(policy);
        if let (Some(want), Some(key), Some(s)) = (salt, salt_key, &live.salt) {
            let live = salt_of(s).ok().flatten();
            if salt_matters(share_of(found)) && live.as_deref() != Some(want) {
                return Err(TrafficError::StaleSalt {
                    found,
                    places: vec![format!("Consul key {key}")],
                });
            }
        }
        Ok(found)
    }

    /// Reads `first` (without a value when missing) and the policy's weight keys (and salt key)
    /// in one transaction: the evaluation's one read of its state and its live split. `None`
    /// when the answer cannot stand for both (a weight key missing, or an entry filtered out by
    /// ACLs): the caller reads them apart, which reports each case as its own read does.
    pub async fn read_along(
        &self,
        policy: &Policy,
        first: &str,
    ) -> Result<Option<(KvEntry, LiveEntries)>, ConsulError> {
        let Ok((blue, green)) = Self::keys(policy) else {
            return Ok(None);
        };
        let salt_key = Self::salt_key(policy);
        let mut ops = vec![
            TxnOp::get_or_empty(first),
            TxnOp::get(blue),
            TxnOp::get(green),
        ];
        ops.extend(salt_key.map(TxnOp::get_or_empty));
        let mut entries = match self.txn(&ops).await {
            Ok(entries) => entries,
            // A weight key is missing (a `get` of a missing key fails the transaction).
            Err(ConsulError::TxnRolledBack(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let wanted: Vec<&str> = [first, blue, green].into_iter().chain(salt_key).collect();
        let complete =
            entries.len() == wanted.len() && entries.iter().zip(&wanted).all(|(e, k)| e.key == *k);
        if !complete {
            return Ok(None);
        }
        let salt = (entries.len() == 4).then(|| entries.remove(3));
        let green = entries.remove(2);
        let blue = entries.remove(1);
        let first = entries.remove(0);
        Ok(Some((first, LiveEntries { blue, green, salt })))
    }

    /// The weights and, in sticky mode, the salt (`None` when its key is missing or empty),
    /// read in one transaction: what `greenlight sync` applies.
    pub async fn read_with_salt(
        &self,
        policy: &Policy,
    ) -> Result<(Weights, Option<String>), TrafficError> {
        let (blue, green) = Self::keys(policy)?;
        let (b, g, s) = self
            .read_entries(blue, green, Self::salt_key(policy))
            .await?;
        let salt = match s {
            Some(s) => salt_of(&s)?,
            None => None,
        };
        Ok((weights_of(&b, &g)?, salt))
    }

    /// Compare-and-set of both keys in one transaction of two `cas` operations.
    pub async fn write(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
    ) -> Result<(), TrafficError> {
        self.write_fenced(policy, expected, new, None).await
    }

    /// [`ConsulKv::write`] guarded by a lock: the transaction also checks that the fence's
    /// session still holds its key, so an instance that lost its lock cannot write.
    pub async fn write_fenced(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        self.write_split(policy, expected, new, None, fence).await
    }

    /// [`ConsulKv::write_fenced`]; in sticky mode, given the rollout's `salt`, the salt key is
    /// set in the same transaction (and set alone when the weights are `new` already but the
    /// salt is not).
    pub async fn write_split(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        salt: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        let (blue, green) = Self::keys(policy)?;
        let salt_key = Self::salt_key(policy).filter(|_| salt.is_some());
        let mut last = None;
        for round in 0..CAS_ROUNDS {
            let (b, g, s) = self.read_entries(blue, green, salt_key).await?;
            let found = weights_of(&b, &g)?;
            let salt_live = match &s {
                Some(s) => salt_of(s).ok().flatten().as_deref() == salt,
                None => true,
            };
            if round > 0 && found == new && salt_live {
                // An earlier attempt landed (its answer was lost) or the keys already say so.
                return Ok(());
            }
            if found != expected && !(round > 0 && found == new) {
                return Err(TrafficError::Override { found });
            }
            if found == new && salt_live {
                return Ok(());
            }
            let mut ops = Vec::with_capacity(4);
            if let Some(f) = fence {
                ops.push(f.check());
            }
            let first_cas = ops.len();
            ops.push(TxnOp::cas(
                blue,
                new.blue.to_string().as_bytes(),
                b.modify_index,
            ));
            ops.push(TxnOp::cas(
                green,
                new.green.to_string().as_bytes(),
                g.modify_index,
            ));
            if let (Some(key), Some(salt)) = (salt_key, salt) {
                ops.push(TxnOp::set(key, salt.as_bytes()));
            }
            match self.txn(&ops).await {
                Ok(_) => return Ok(()),
                Err(ConsulError::TxnRolledBack(errors))
                    if fence.is_some_and(|f| f.lost_in(&errors, 0)) =>
                {
                    return Err(TrafficError::LockLost);
                }
                Err(ConsulError::TxnRolledBack(errors))
                    if errors
                        .iter()
                        .all(|(i, what)| *i >= first_cas && is_stale_index(what)) =>
                {
                    tracing::debug!(api = %policy.api, round, "Weight CAS lost a race; re-reading.");
                    last = Some(ConsulError::TxnRolledBack(errors));
                }
                // Neither a lost lock nor a race: report Consul's own reasons at once.
                Err(e @ ConsulError::TxnRolledBack(_)) => return Err(TrafficError::Consul(e)),
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Err(TrafficError::Consul(last.unwrap_or_else(|| {
            ConsulError::Decode("weight CAS did not complete".into())
        })))
    }

    /// Creates both keys with `weights` if neither exists (one transaction of
    /// `check-not-exists` guards and `set`s). Returns false, changing nothing, if either exists.
    pub async fn initialize(
        &self,
        policy: &Policy,
        weights: Weights,
    ) -> Result<bool, TrafficError> {
        let (blue, green) = Self::keys(policy)?;
        let ops = [
            TxnOp::check_not_exists(blue),
            TxnOp::check_not_exists(green),
            TxnOp::set(blue, weights.blue.to_string().as_bytes()),
            TxnOp::set(green, weights.green.to_string().as_bytes()),
        ];
        match self.txn(&ops).await {
            Ok(_) => {
                tracing::info!(api = %policy.api, blue = weights.blue, green = weights.green, "Created weight keys.");
                Ok(true)
            }
            Err(ConsulError::TxnRolledBack(_)) => Ok(false),
            Err(e) => Err(self.map_err(e)),
        }
    }
}

fn weights_of(blue: &KvEntry, green: &KvEntry) -> Result<Weights, TrafficError> {
    Ok(Weights {
        blue: weight_of(blue)?,
        green: weight_of(green)?,
    })
}

/// The salt in its key: `None` when empty, an error when it could not travel in a Runtime API
/// line (1–64 visible characters without `;`, `#`, quotes or backslashes).
fn salt_of(entry: &KvEntry) -> Result<Option<String>, TrafficError> {
    let text = String::from_utf8_lossy(&entry.value);
    let salt = text.trim();
    if salt.is_empty() {
        return Ok(None);
    }
    let ok = salt.len() <= 64
        && salt
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, ';' | '#' | '"' | '\'' | '\\'));
    if ok {
        Ok(Some(salt.to_string()))
    } else {
        Err(TrafficError::BadValue {
            key: entry.key.clone(),
            value: text.into_owned(),
        })
    }
}

fn weight_of(entry: &KvEntry) -> Result<u32, TrafficError> {
    let text = String::from_utf8_lossy(&entry.value);
    text.trim()
        .parse::<u32>()
        .map_err(|_| TrafficError::BadValue {
            key: entry.key.clone(),
            value: text.into_owned(),
        })
}
