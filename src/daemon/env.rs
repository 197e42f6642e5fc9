//! The shell's I/O, behind small traits: the stored states, the live weights, the metrics
//! backend, alert delivery and the clock. [`RealEnv`] talks to Consul, HAProxy, the metrics
//! backend and the alert receivers; the world simulator (`sim::night`) implements the same
//! traits in memory, so the very same [`super::Shell`] runs in both.

use std::future::Future;
use std::time::Instant;

use jiff::Timestamp;

use super::outbox::SharedOutbox;
use super::store::{Saved, StateStore, StoreError};
use crate::alert::{AlertEvent, DeliveryReport, Notifier, OutboxEntry};
use crate::consul::Fence;
use crate::engine::{DataProblem, Observation, RolloutState};
use crate::metrics::{observe_with, ObserveOptions, PromClient};
use crate::policy::{Colour, Policy, Roles, TrafficTarget, Weights};
use crate::traffic::{Actuator, ConsulKv, HaproxyRuntime, LiveEntries, TrafficError};

/// Where rollout states are kept (Consul KV in production).
pub trait StateIo: Send + Sync {
    /// The stored state of `policy`'s API and its modify index (a fresh state and 0 if none).
    fn load(
        &self,
        policy: &Policy,
    ) -> impl Future<Output = Result<(RolloutState, u64), StoreError>> + Send;
    /// Compare-and-set on the modify index, fenced by the lock when given; the new index.
    fn save(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// [`StateIo::save`] with `alerts` written to the shared outbox in the same transaction
    /// (both or neither); alerts that do not fit come back in [`Saved::spilled`].
    fn save_with_alerts(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
        alerts: Vec<OutboxEntry>,
    ) -> impl Future<Output = Result<Saved, StoreError>> + Send;
    /// [`StateIo::load`] with the live weight entries read in the same round trip, where both
    /// live in one store (one Consul transaction for `consul_keys` targets); `None` for the
    /// entries: read the split apart ([`WeightIo::read_weights`]).
    fn load_live(
        &self,
        policy: &Policy,
    ) -> impl Future<Output = Result<(RolloutState, u64, Option<LiveEntries>), StoreError>> + Send
    {
        async move {
            let (state, index) = self.load(policy).await?;
            Ok((state, index, None))
        }
    }
}

/// Where the blue/green split lives (Consul KV keys or HAProxy's Runtime API).
pub trait WeightIo: Send + Sync {
    /// The live weights. `confirmed` is when greenlight last knew its weights to be live
    /// everywhere: an HAProxy node restarted since then at its configured weights is a reload,
    /// not a hand edit ([`TrafficError::Reloaded`]).
    fn read_weights(
        &self,
        policy: &Policy,
        confirmed: Option<Timestamp>,
    ) -> impl Future<Output = Result<Weights, TrafficError>> + Send;
    /// Creates missing weight keys with `weights` (a no-op for targets without keys).
    fn init_weights(
        &self,
        policy: &Policy,
        weights: Weights,
    ) -> impl Future<Output = Result<(), TrafficError>> + Send;
    /// Compare-and-set from `expected` to `new`, fenced by the lock when given.
    fn write_weights(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<(), TrafficError>> + Send;
    /// [`WeightIo::read_weights`] for a sticky-mode policy, told the rollout's salt: where it
    /// is not live while it matters, [`TrafficError::StaleSalt`]. Targets without a salt of
    /// their own read the weights alone.
    fn read_split(
        &self,
        policy: &Policy,
        confirmed: Option<Timestamp>,
        salt: &str,
    ) -> impl Future<Output = Result<Weights, TrafficError>> + Send {
        let _ = salt;
        self.read_weights(policy, confirmed)
    }
    /// [`WeightIo::write_weights`] for a sticky-mode policy, writing the rollout's salt with
    /// the split. Targets without a salt of their own write the weights alone.
    fn write_split(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        salt: &str,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<(), TrafficError>> + Send {
        let _ = salt;
        self.write_weights(policy, expected, new, fence)
    }
}

/// The metrics backend: one observation of one window.
pub trait MetricsIo: Send + Sync {
    /// One window `(start, end)`, with the rollout's stable colour.
    fn observe(
        &self,
        policy: &Policy,
        window: (Timestamp, Timestamp),
        roles: Roles,
    ) -> impl Future<Output = Observation> + Send;
    /// The release `candidate` reports through the policy's `release_query` at `at` (`None`:
    /// no query, or no series), or why it cannot be read.
    fn candidate_release(
        &self,
        policy: &Policy,
        candidate: Colour,
        at: Timestamp,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// Name of the backend for /metrics labels.
    fn backend(&self) -> &'static str;
    /// Base URL of the metrics UI for alert links, if it has one.
    fn ui(&self) -> Option<&str>;
}

/// Durable alert delivery. Alerts raised by a state change travel with it
/// ([`StateIo::save_with_alerts`], the shared outbox in Consul); `notify` is for the others
/// (the daemon's own failures, Consul unreachable, a lock lost), kept in this instance's local
/// outbox.
pub trait AlertIo: Send + Sync {
    /// Records `event` durably in the local outbox for `channels` and tries to deliver it once.
    fn notify(
        &self,
        event: &AlertEvent,
        channels: &[String],
    ) -> impl Future<Output = Result<DeliveryReport, String>> + Send;
    /// Delivers whatever is due in the local outbox and, for the holder of `fence`, in the
    /// shared one; reports the shared outbox's delivery attempts.
    fn flush(&self, fence: Option<&Fence>) -> impl Future<Output = DeliveryReport> + Send;
    /// Entries waiting in both outboxes (the shared one as of the last delivery pass).
    fn outbox_depth(&self) -> u64;
}

/// Wall-clock time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// Everything the shell needs from the outside world.
pub trait Env: StateIo + WeightIo + MetricsIo + AlertIo + Clock + 'static {}

impl<T: StateIo + WeightIo + MetricsIo + AlertIo + Clock + 'static> Env for T {}

/// The production world: Consul, HAProxy, the metrics backend, the alert receivers.
pub struct RealEnv {
    pub store: StateStore,
    pub(super) metrics: PromClient,
    pub(super) observe: ObserveOptions,
    pub(super) backend: &'static str,
    pub(super) metrics_url: String,
    pub(super) consul_kv: ConsulKv,
    pub(super) haproxy: Option<HaproxyRuntime>,
    pub(super) notifier: std::sync::Arc<Notifier>,
    pub(super) shared: SharedOutbox,
}

impl RealEnv {
    /// The audit trail under the state's Consul prefix, alerting through this daemon's outbox
    /// (the one notifier, so that no entry is delivered twice).
    pub fn audit_log(&self) -> crate::audit::AuditLog {
        crate::audit::AuditLog::new(self.store.client().clone(), self.store.prefix())
            .with_notifier(self.notifier.clone())
    }

    fn actuator(&self, policy: &Policy) -> Result<Actuator, TrafficError> {
        match &policy.traffic.target {
            TrafficTarget::ConsulKeys { .. } => Ok(Actuator::ConsulKv(self.consul_kv.clone())),
            TrafficTarget::Haproxy { .. } => match &self.haproxy {
                Some(h) => Ok(Actuator::Haproxy(h.clone())),
                None => Err(TrafficError::WrongTarget {
                    api: policy.api.clone(),
                    wanted: "haproxy (no [haproxy] nodes configured)",
                }),
            },
        }
    }
}

impl StateIo for RealEnv {
    async fn load(&self, policy: &Policy) -> Result<(RolloutState, u64), StoreError> {
        self.store.load(policy).await
    }

    async fn load_live(
        &self,
        policy: &Policy,
    ) -> Result<(RolloutState, u64, Option<LiveEntries>), StoreError> {
        let key = self.store.key(&policy.api);
        match self.consul_kv.read_along(policy, &key).await? {
            Some((entry, live)) => {
                let (state, index) = self.store.state_of(policy, Some(&entry))?;
                Ok((state, index, Some(live)))
            }
            None => {
                let (state, index) = self.store.load(policy).await?;
                Ok((state, index, None))
            }
        }
    }

    async fn save(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        self.store.save(state, index, fence).await
    }

    async fn save_with_alerts(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
        alerts: Vec<OutboxEntry>,
    ) -> Result<Saved, StoreError> {
        self.store
            .save_with_alerts(state, index, fence, alerts)
            .await
    }
}

impl WeightIo for RealEnv {
    async fn read_weights(
        &self,
        policy: &Policy,
        confirmed: Option<Timestamp>,
    ) -> Result<Weights, TrafficError> {
        self.actuator(policy)?.read_since(policy, confirmed).await
    }

    async fn init_weights(&self, policy: &Policy, weights: Weights) -> Result<(), TrafficError> {
        match self.actuator(policy)? {
            Actuator::ConsulKv(kv) => kv.initialize(policy, weights).await.map(drop),
            _ => Ok(()),
        }
    }

    async fn write_weights(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        self.actuator(policy)?
            .write_fenced(policy, expected, new, fence)
            .await
    }

    async fn read_split(
        &self,
        policy: &Policy,
        confirmed: Option<Timestamp>,
        salt: &str,
    ) -> Result<Weights, TrafficError> {
        self.actuator(policy)?
            .read_split(policy, confirmed, Some(salt))
            .await
    }

    async fn write_split(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        salt: &str,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        self.actuator(policy)?
            .write_split(policy, expected, new, Some(salt), fence)
            .await
    }
}

impl MetricsIo for RealEnv {
    async fn observe(
        &self,
        policy: &Policy,
        (start, end): (Timestamp, Timestamp),
        roles: Roles,
    ) -> Observation {
        let t = Instant::now();
        let obs = observe_with(&self.metrics, policy, (start, end), roles, &self.observe).await;
        tracing::trace!(api = %policy.api, elapsed_ms = t.elapsed().as_millis() as u64, "Observed a window.");
        obs
    }

    async fn candidate_release(
        &self,
        policy: &Policy,
        candidate: Colour,
        at: Timestamp,
    ) -> Result<Option<String>, String> {
        let Some(rq) = &policy.release_query else {
            return Ok(None);
        };
        let side = crate::policy::Side {
            color: candidate.as_str().to_string(),
            cohort: "",
        };
        let query =
            crate::metrics::template::render(&rq.query, &side, policy.interval, &policy.api);
        match self.metrics.instant(&query, at).await {
            Ok(crate::metrics::client::QueryResult::Vector(samples)) => {
                crate::engine::release_from_answer(&rq.label, samples.iter().map(|s| &s.labels))
            }
            Ok(_) => Err("release_query must answer an instant vector".into()),
            Err(e) => Err(format!("release_query failed: {e}")),
        }
    }

    fn backend(&self) -> &'static str {
        self.backend
    }

    fn ui(&self) -> Option<&str> {
        (self.backend == "victoriametrics").then_some(self.metrics_url.as_str())
    }
}

impl AlertIo for RealEnv {
    async fn notify(
        &self,
        event: &AlertEvent,
        channels: &[String],
    ) -> Result<DeliveryReport, String> {
        self.notifier
            .notify(event, channels)
            .await
            .map_err(|e| e.to_string())
    }

    async fn flush(&self, fence: Option<&Fence>) -> DeliveryReport {
        self.notifier.flush().await;
        let Some(fence) = fence.filter(|f| f.is_held()) else {
            return DeliveryReport::default();
        };
        match self
            .shared
            .deliver(&self.notifier, fence, Timestamp::now())
            .await
        {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(%error, "Could not read the shared alert outbox; retrying at the next tick.");
                DeliveryReport::default()
            }
        }
    }

    fn outbox_depth(&self) -> u64 {
        self.notifier.outbox_depth() + self.shared.depth()
    }
}

impl Clock for RealEnv {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Whether a query failed in the metrics backend itself (unreachable, error answer), as opposed
/// to answering with unusable data.
pub fn backend_failed(obs: &Observation) -> bool {
    obs.checks
        .iter()
        .any(|c| matches!(&c.data, Err(DataProblem::Backend(_))))
}
