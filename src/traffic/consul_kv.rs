//! Weights in two Consul KV keys, read in one transaction and changed by one two-key CAS txn.

use super::{Retry, TrafficError};
use crate::consul::lock::Fence;
use crate::consul::{is_stale_index, ConsulClient, ConsulError, KvEntry, TxnOp};
use crate::policy::{Policy, TrafficTarget, Weights};

/// Rounds of read → compare → CAS before giving up on a key that keeps changing to the same
/// values under us.
const CAS_ROUNDS: u32 = 3;

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

    /// Both entries, read atomically.
    async fn read_entries(
        &self,
        blue: &str,
        green: &str,
    ) -> Result<(KvEntry, KvEntry), TrafficError> {
        let ops = [TxnOp::get(blue), TxnOp::get(green)];
        match self.txn(&ops).await {
            Ok(entries) => match <[KvEntry; 2]>::try_from(entries) {
                Ok([b, g]) => Ok((b, g)),
                // A `get` of a missing key fails the transaction, so a committed read that lacks
                // an entry had it filtered out by ACLs (agent/consul/txn_endpoint.go
                // `FilterTxnResults`): the token may not read that key.
                Err(entries) => {
                    let hidden: Vec<&str> = [blue, green]
                        .into_iter()
                        .filter(|k| !entries.iter().any(|e| e.key == *k))
                        .collect();
                    Err(TrafficError::PermissionDenied(format!(
                        "Permission denied: Consul filtered {} out of a transaction read (the token lacks key:read)",
                        hidden.join(", ")
                    )))
                }
            },
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
        let (blue, green) = Self::keys(policy)?;
        let (b, g) = self.read_entries(blue, green).await?;
        weights_of(&b, &g)
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
        let (blue, green) = Self::keys(policy)?;
        let mut last = None;
        for round in 0..CAS_ROUNDS {
            let (b, g) = self.read_entries(blue, green).await?;
            let found = weights_of(&b, &g)?;
            if round > 0 && found == new {
                // An earlier attempt landed (its answer was lost) or the keys already say so.
                return Ok(());
            }
            if found != expected {
                return Err(TrafficError::Override { found });
            }
            if found == new {
                return Ok(());
            }
            let mut ops = Vec::with_capacity(3);
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

fn weight_of(entry: &KvEntry) -> Result<u32, TrafficError> {
    let text = String::from_utf8_lossy(&entry.value);
    text.trim()
        .parse::<u32>()
        .map_err(|_| TrafficError::BadValue {
            key: entry.key.clone(),
            value: text.into_owned(),
        })
}
