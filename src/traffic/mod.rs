//! Weight actuators: where the blue/green split is read and changed, always by compare-and-set.
//!
//! [`Actuator`] dispatches to Consul KV ([`ConsulKv`], two keys changed in one transaction),
//! the HAProxy Runtime API ([`HaproxyRuntime`], every node checked, written and read back), or
//! memory ([`MemoryTraffic`], for tests and simulation). A write whose `expected` weights no
//! longer match the live ones fails with [`TrafficError::Override`]: someone changed the split
//! by hand, and greenlight never overwrites a human. An HAProxy reload is not a hand edit: it
//! is reported as [`TrafficError::Reloaded`] and the next write sets the weights again.
//!
//! In sticky mode the same weights decide green's share of the users ([`sticky_maps`]): Consul
//! keeps the rollout's salt in a key written with the weights, and the HAProxy target reads and
//! sets each node's share map instead of the server weights (`haproxy_maps.rs`).

mod consul_kv;
mod haproxy;
mod haproxy_maps;
mod haproxy_node;
mod memory;
pub mod sticky;
pub mod sticky_maps;
pub mod sync;

use std::future::Future;
use std::time::Duration;

pub use consul_kv::{ConsulKv, LiveEntries};
pub use haproxy::{HaproxyRuntime, RuntimeAddr, RuntimeIo, Sockets};
pub use haproxy_node::{NodeWeights, Process};
pub use memory::MemoryTraffic;
pub use sync::{SyncSettings, SyncTarget, Syncer};

use crate::policy::{Policy, Weights};

/// Why reading or writing the weights failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrafficError {
    /// The live weights differ from what was expected: changed by hand. Nothing was written.
    #[error("weights were changed outside greenlight (found blue={} green={}); not overwriting", .found.blue, .found.green)]
    Override { found: Weights },
    /// The weight keys do not exist yet (see [`ConsulKv::initialize`]).
    #[error("weight keys are missing: {}", .keys.join(", "))]
    Missing { keys: Vec<String> },
    /// The Consul token may not read or write the weight keys. Not retried.
    #[error("permission denied by Consul (grant the token key:read and key:write on the weight keys): {0}")]
    PermissionDenied(String),
    /// The target stayed unreachable through every retry.
    #[error("{target} unreachable after {attempts} attempts: {reason}")]
    Unreachable {
        target: String,
        attempts: u32,
        reason: String,
    },
    /// A weight key holds something other than an integer.
    #[error("weight key {key} holds {value:?}, not an integer weight")]
    BadValue { key: String, value: String },
    /// HAProxy answered a command with an error.
    #[error("HAProxy {node} rejected {command:?}: {message}")]
    Haproxy {
        node: String,
        command: String,
        message: String,
    },
    /// The weights read back after a write are not the ones written.
    #[error("HAProxy {node} reads back blue={} green={} after writing blue={} green={}", .found.blue, .found.green, .wrote.blue, .wrote.green)]
    ReadBack {
        node: String,
        wrote: Weights,
        found: Weights,
    },
    /// A map entry read back after a write is not the one written (sticky mode).
    #[error("HAProxy {node} map {map} reads back {found} after writing {wrote}")]
    MapReadBack {
        node: String,
        map: String,
        wrote: String,
        found: String,
    },
    /// Sticky mode: the split agrees with `found`, but the rollout's salt is not live at
    /// `places` (HAProxy nodes, or the salt key in Consul), so users there are drawn anew.
    /// Greenlight's own bookkeeping, not a human's split: a write sets it again (see
    /// [`TrafficError::finishable`]).
    #[error("the rollout's salt is not live on {} (the split is blue={} green={}); it must be set again", .places.join(", "), .found.blue, .found.green)]
    StaleSalt { found: Weights, places: Vec<String> },
    /// HAProxy nodes disagree about the current weights; every node's weights.
    #[error("HAProxy nodes disagree about the weights: {}", describe_nodes(.0))]
    Diverged(Vec<(String, Weights)>),
    /// HAProxy `nodes` were restarted (reloaded) since the last read and came back at the
    /// weights of their configuration: the weights greenlight set were lost, not changed by
    /// hand. `found` is every node's weights. A write brings them back (see
    /// [`TrafficError::finishable`]).
    #[error("HAProxy reloaded on {} and came back at its configured weights ({}); the decided weights must be set again", .nodes.join(", "), describe_nodes(.found))]
    Reloaded {
        nodes: Vec<String>,
        found: Vec<(String, Weights)>,
    },
    /// Some HAProxy nodes could not be reached; every node that answered shows `weights`.
    /// A step forward is refused until every node answers; a rollback is written to the nodes
    /// that answer (and comes back as [`TrafficError::Partial`]).
    #[error("HAProxy {} unreachable (the other nodes show blue={} green={}): {}", .down.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "), .weights.blue, .weights.green, .down.iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; "))]
    NodesDown {
        weights: Weights,
        down: Vec<(String, TrafficError)>,
    },
    /// A write reached only some nodes: `applied` have the new weights, `failed` says why each
    /// other node does not (an [`TrafficError::Override`] there is a hand edit on that node).
    #[error("weights applied on {} only; not on {}", list_or_none(.applied), .failed.iter().map(|(n, e)| format!("{n} ({e})")).collect::<Vec<_>>().join(", "))]
    Partial {
        applied: Vec<String>,
        failed: Vec<(String, TrafficError)>,
    },
    /// Several nodes failed; each error in turn.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Nodes(Vec<TrafficError>),
    /// The policy's traffic target is not the kind this actuator drives.
    #[error("policy {api} does not name a {wanted} traffic target")]
    WrongTarget { api: String, wanted: &'static str },
    /// This instance no longer holds the lock that guards its writes; nothing was written.
    #[error("this instance lost its lock; nothing written")]
    LockLost,
    /// Any other Consul failure.
    #[error("{0}")]
    Consul(crate::consul::ConsulError),
}

fn list_or_none(nodes: &[String]) -> String {
    if nodes.is_empty() {
        "no node".to_string()
    } else {
        nodes.join(", ")
    }
}

impl TrafficError {
    /// Whether the live split differs from the decided one only in ways a write from `from`
    /// to `to` repairs without overwriting a human: nodes reloaded back to their configured
    /// weights, or an earlier write from `from` to `to` that reached only some nodes (every
    /// other node is at `from` or `to`). The caller then writes `from` → `to` (with
    /// `from == to` when no change was pending) instead of pausing.
    pub fn finishable(&self, from: Weights, to: Weights) -> bool {
        let between = |w: &Weights| *w == from || *w == to;
        match self {
            TrafficError::Diverged(found) => found.iter().all(|(_, w)| between(w)),
            TrafficError::Reloaded { nodes, found } => found
                .iter()
                .filter(|(n, _)| !nodes.contains(n))
                .all(|(_, w)| between(w)),
            TrafficError::StaleSalt { found, .. } => between(found),
            _ => false,
        }
    }
}

fn describe_nodes(nodes: &[(String, Weights)]) -> String {
    nodes
        .iter()
        .map(|(n, w)| format!("{n}: blue={} green={}", w.blue, w.green))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bounded exponential backoff for transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Total attempts, first included (at least 1).
    pub attempts: u32,
    /// Pause after the first failure; doubled after each further one.
    pub initial: Duration,
    /// Upper bound of a single pause.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
        }
    }
}

impl Retry {
    /// Runs `op` until it succeeds, fails permanently (`transient` says false), or attempts run
    /// out. Returns the last error and the number of attempts made.
    pub(crate) async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        transient: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, (E, u32)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut pause = self.initial;
        let attempts = self.attempts.max(1);
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < attempts && transient(&e) => {
                    tracing::warn!(target_name = what, attempt, error = %e, "Transient failure; retrying.");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.max);
                    attempt += 1;
                }
                Err(e) => return Err((e, attempt)),
            }
        }
    }
}

/// Reads and changes one API's blue/green weights.
#[derive(Debug, Clone)]
pub enum Actuator {
    ConsulKv(ConsulKv),
    Haproxy(HaproxyRuntime),
    Memory(MemoryTraffic),
}

impl Actuator {
    /// The live weights of `policy`'s API.
    ///
    /// HAProxy nodes that disagree come back as [`TrafficError::Reloaded`] (some were restarted
    /// at their configured weights) or [`TrafficError::Diverged`], both with every node's
    /// weights. When [`TrafficError::finishable`] says so for the change in hand (`from` =
    /// the pending change's origin, or the decided weights when none is pending; `to` = the
    /// decided weights), writing `from` → `to` brings every node back in line; otherwise the
    /// difference is a hand edit. [`TrafficError::NodesDown`] carries the weights of the nodes
    /// that answered: enough to decide a rollback, which is then written to those nodes.
    pub async fn read(&self, policy: &Policy) -> Result<Weights, TrafficError> {
        self.read_since(policy, None).await
    }

    /// [`Actuator::read`], told when greenlight last knew its weights to be live on every
    /// node (e.g. when its last weight change was confirmed). An HAProxy node first seen by
    /// this process (after a restart of greenlight, another instance taking over, or with
    /// `run --once`) whose process started later and shows its configured weights is then
    /// reported as reloaded instead of changed by hand. The other targets ignore it.
    pub async fn read_since(
        &self,
        policy: &Policy,
        written: Option<jiff::Timestamp>,
    ) -> Result<Weights, TrafficError> {
        self.read_split(policy, written, None).await
    }

    /// [`Actuator::read_since`]; in sticky mode also checks that the rollout's `salt` is live
    /// (in Consul's salt key, or on every HAProxy node) wherever it matters: where it is not,
    /// [`TrafficError::StaleSalt`]. Without a salt nothing about it is checked.
    pub async fn read_split(
        &self,
        policy: &Policy,
        written: Option<jiff::Timestamp>,
        salt: Option<&str>,
    ) -> Result<Weights, TrafficError> {
        match self {
            Actuator::ConsulKv(a) => a.read_split(policy, salt).await,
            Actuator::Haproxy(a) => a.read_split(policy, written, salt).await,
            Actuator::Memory(a) => a.read(policy),
        }
    }

    /// Compare-and-set: changes the weights to `new` only if they are still `expected`;
    /// otherwise [`TrafficError::Override`] with what was found, and nothing changes.
    pub async fn write(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
    ) -> Result<(), TrafficError> {
        self.write_fenced(policy, expected, new, None).await
    }

    /// [`Actuator::write`] guarded by a held lock: Consul KV checks the lock in the same
    /// transaction; the HAProxy and memory targets refuse with [`TrafficError::LockLost`] once
    /// the lock task has seen the lock lost (HAProxy checks again before each node).
    pub async fn write_fenced(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        fence: Option<&crate::consul::lock::Fence>,
    ) -> Result<(), TrafficError> {
        self.write_split(policy, expected, new, None, fence).await
    }

    /// [`Actuator::write_fenced`]; in sticky mode the rollout's `salt` (when given) is written
    /// with the split: in the same Consul transaction as the weights, or into every HAProxy
    /// node's map with green's share. Without a salt the live one is kept (a rollback needs
    /// none: at share 0 everyone is on blue).
    pub async fn write_split(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        salt: Option<&str>,
        fence: Option<&crate::consul::lock::Fence>,
    ) -> Result<(), TrafficError> {
        let result = match self {
            Actuator::ConsulKv(a) => a.write_split(policy, expected, new, salt, fence).await,
            Actuator::Haproxy(a) => a.write_split(policy, expected, new, salt, fence).await,
            Actuator::Memory(_) if fence.is_some_and(|f| !f.is_held()) => {
                Err(TrafficError::LockLost)
            }
            Actuator::Memory(a) => a.write(policy, expected, new),
        };
        match &result {
            Ok(()) => weights_changed(&policy.api, expected, new),
            Err(TrafficError::Override { found }) => {
                weights_overridden(&policy.api, expected, *found)
            }
            Err(_) => {}
        }
        result
    }
}

fn weights_changed(api: &str, from: Weights, to: Weights) {
    tracing::info!(
        api,
        from_blue = from.blue,
        from_green = from.green,
        to_blue = to.blue,
        to_green = to.green,
        "Changed canary weights."
    );
}

fn weights_overridden(api: &str, expected: Weights, found: Weights) {
    tracing::warn!(
        api,
        expected_blue = expected.blue,
        expected_green = expected.green,
        found_blue = found.blue,
        found_green = found.green,
        "Weights were changed by hand; leaving them alone."
    );
}
