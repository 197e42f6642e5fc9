//! `greenlight sync`: mirrors the blue/green weights held in Consul KV into every HAProxy node.
//!
//! For each policy whose traffic target is `consul_keys` (with `haproxy_backend` naming the
//! servers), two blocking-query watchers wake a worker whenever either key changes. The worker
//! reads both keys in one Consul transaction and, only when both hold integer weights within
//! HAProxy's 0–256, sets both absolute weights on every node in one Runtime API command line and
//! reads them back. A key that is missing or not an integer changes nothing: the two colours
//! always move together. Every `repair_interval` the worker compares each node with Consul again
//! and re-applies where they differ (a restarted HAProxy comes back with its configured weights).
//! Failures (Consul or a node unreachable) are retried with a bounded exponential backoff.
//!
//! A sticky-mode policy ([`sticky`]) reads its salt key in the same transaction and sets green's
//! share and the salt in each node's map instead of the server weights, and keeps the subset
//! maps equal to the policy's members.

mod metrics;
mod sticky;

pub use metrics::SyncMetrics;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::prometheus_text;
use tokio::sync::{watch, Notify};

use super::{ConsulKv, HaproxyRuntime, Retry, RuntimeAddr, TrafficError};
use crate::consul::ConsulClient;
use crate::policy::{HaproxyServers, Policy, TrafficTarget, Weights};

/// Largest absolute weight HAProxy accepts.
pub const MAX_HAPROXY_WEIGHT: u32 = 256;

// Exported metric names. Counters end in `_total` as exposed; the encoder appends it.
pub const APPLIED_WEIGHT: &str = "greenlight_sync_applied_weight";
pub const APPLIED_SHARE: &str = "greenlight_sync_applied_share";
pub const APPLY_ERRORS_TOTAL: &str = "greenlight_sync_apply_errors_total";
pub const READ_ERRORS_TOTAL: &str = "greenlight_sync_read_errors_total";
pub const DRIFT_REPAIRS_TOTAL: &str = "greenlight_sync_drift_repairs_total";
pub const LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "greenlight_sync_last_success_timestamp_seconds";

/// One API to mirror: its Consul keys (from the policy) and its HAProxy servers.
#[derive(Debug, Clone)]
pub struct SyncTarget {
    pub policy: Policy,
    pub servers: HaproxyServers,
}

impl SyncTarget {
    pub fn api(&self) -> &str {
        &self.policy.api
    }

    /// The targets of every `consul_keys` policy. Policies with an `haproxy` target are not
    /// sync's business and are left out; a `consul_keys` policy without `haproxy_backend` cannot
    /// be mirrored, and its API name is returned in the error (with every other such policy).
    pub fn from_policies(policies: &[Policy]) -> Result<Vec<SyncTarget>, Vec<String>> {
        let mut targets = Vec::new();
        let mut unmapped = Vec::new();
        for policy in policies {
            if !matches!(policy.traffic.target, TrafficTarget::ConsulKeys { .. }) {
                continue;
            }
            match &policy.traffic.haproxy_backend {
                Some(servers) => targets.push(SyncTarget {
                    policy: policy.clone(),
                    servers: servers.clone(),
                }),
                None => unmapped.push(policy.api.clone()),
            }
        }
        if unmapped.is_empty() {
            Ok(targets)
        } else {
            Err(unmapped)
        }
    }
}

/// Timing of the sync loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSettings {
    /// How often every node is compared with Consul (drift repair).
    pub repair_interval: Duration,
    /// Wait time of each blocking query.
    pub watch_wait: Duration,
    /// Pause after the first failed pass; doubled after each further failure up to
    /// `backoff_max` (and never beyond `repair_interval`).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Bounds one Runtime API exchange with a node.
    pub node_timeout: Duration,
    /// Passes tried by [`Syncer::once`] before it gives up.
    pub once_attempts: u32,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            repair_interval: Duration::from_secs(10),
            watch_wait: Duration::from_secs(300),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            node_timeout: Duration::from_secs(5),
            once_attempts: 4,
        }
    }
}

/// Why one API could not be brought in line with Consul.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The weights could not be read from Consul, or a key is missing or not an integer.
    /// Nothing was applied.
    #[error("{api}: {source}; nothing applied")]
    Consul { api: String, source: TrafficError },
    /// A weight beyond what HAProxy accepts. Nothing was applied.
    #[error("{api}: weights blue={} green={} exceed HAProxy's maximum of {MAX_HAPROXY_WEIGHT}; nothing applied", .weights.blue, .weights.green)]
    OutOfRange { api: String, weights: Weights },
    /// One node could not be set or did not read back the weights.
    #[error("{api}: {source}")]
    Node {
        api: String,
        node: String,
        source: TrafficError,
    },
}

impl SyncError {
    fn read_kind(&self) -> Option<&'static str> {
        match self {
            SyncError::OutOfRange { .. } => Some("invalid"),
            SyncError::Consul { source, .. } => Some(match source {
                TrafficError::Missing { .. } => "missing",
                TrafficError::BadValue { .. } => "invalid",
                TrafficError::PermissionDenied(_) => "denied",
                TrafficError::Unreachable { .. } => "unreachable",
                _ => "error",
            }),
            SyncError::Node { .. } => None,
        }
    }
}

/// What one worker remembers between passes: the weights last verified on each node (sticky
/// mode: the API map's entries, and the nodes whose subset maps were verified).
#[derive(Debug, Default)]
struct NodeMemory {
    verified: HashMap<String, Weights>,
    shares: HashMap<String, Vec<super::sticky_maps::Entry>>,
    subsets: std::collections::HashSet<String>,
    /// Nodes found drifted from their verified weights whose repair is not confirmed yet.
    drifted: std::collections::HashSet<String>,
}

/// Mirrors Consul weight keys into HAProxy nodes.
#[derive(Debug, Clone)]
pub struct Syncer {
    consul: ConsulClient,
    kv: ConsulKv,
    nodes: Vec<(RuntimeAddr, HaproxyRuntime)>,
    targets: Vec<SyncTarget>,
    settings: SyncSettings,
    metrics: Arc<SyncMetrics>,
}

impl Syncer {
    pub fn new(
        consul: ConsulClient,
        nodes: Vec<RuntimeAddr>,
        targets: Vec<SyncTarget>,
        settings: SyncSettings,
    ) -> Syncer {
        // One attempt per call: the pass itself is retried with backoff, so a node that is down
        // never holds the others up.
        let once = Retry {
            attempts: 1,
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        let kv = ConsulKv::new(consul.clone()).with_retry(once);
        let nodes = nodes
            .into_iter()
            .map(|addr| {
                let runtime = HaproxyRuntime::new(vec![addr.clone()])
                    .with_timeout(settings.node_timeout)
                    .with_retry(once);
                (addr, runtime)
            })
            .collect();
        Syncer {
            consul,
            kv,
            nodes,
            targets,
            settings,
            metrics: Arc::new(SyncMetrics::new()),
        }
    }

    /// The metrics this syncer records (serve them with [`serve_metrics`]).
    pub fn metrics(&self) -> Arc<SyncMetrics> {
        self.metrics.clone()
    }

    pub fn targets(&self) -> &[SyncTarget] {
        &self.targets
    }

    /// One pass over every target (read both keys, apply to every node, read back), retried
    /// with backoff up to `once_attempts` times per target. Returns every remaining error.
    pub async fn once(&self) -> Result<(), Vec<SyncError>> {
        let mut errors = Vec::new();
        for target in &self.targets {
            let mut memory = NodeMemory::default();
            let mut attempt = 1;
            loop {
                match self.pass(target, &mut memory).await {
                    Ok(()) => break,
                    Err(_) if attempt < self.settings.once_attempts.max(1) => {
                        tokio::time::sleep(self.backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => {
                        errors.extend(e);
                        break;
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Watches and repairs every target until `shutdown` completes, then returns once every
    /// task has stopped.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let me = Arc::new(self);
        for index in 0..me.targets.len() {
            let wake = Arc::new(Notify::new());
            let target = &me.targets[index];
            if let TrafficTarget::ConsulKeys { blue, green } = &target.policy.traffic.target {
                let salt = target
                    .policy
                    .traffic
                    .sticky
                    .as_ref()
                    .and_then(|s| s.salt_key.clone());
                for key in [blue.clone(), green.clone()].into_iter().chain(salt) {
                    tasks.spawn(me.clone().watch_key(key, wake.clone(), stop_rx.clone()));
                }
            }
            tasks.spawn(me.clone().work(index, wake, stop_rx.clone()));
        }
        tracing::info!(
            apis = me.targets.len(),
            nodes = me.nodes.len(),
            consul = %me.consul.url(),
            "Mirroring Consul weights into HAProxy."
        );
        shutdown.await;
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!("Stopped mirroring weights.");
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.settings
            .backoff_initial
            .saturating_mul(factor)
            .min(self.settings.backoff_max)
            .min(self.settings.repair_interval)
    }

    /// Blocking-query loop on one key: wakes the worker after every answer.
    async fn watch_key(
        self: Arc<Self>,
        key: String,
        wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut watch = self.consul.watcher(key.clone(), self.settings.watch_wait);
        let mut failures = 0u32;
        loop {
            let answer = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                answer = watch.next() => answer,
            };
            let pause = match answer {
                Ok(_) => {
                    failures = 0;
                    wake.notify_one();
                    continue;
                }
                Err(error) => {
                    failures += 1;
                    tracing::debug!(%key, %error, failures, "Blocking query on a weight key failed; retrying.");
                    self.backoff(failures)
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One target's worker: a pass at start, on every wake, every repair interval, and after a
    /// backoff while passes fail.
    async fn work(
        self: Arc<Self>,
        index: usize,
        wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let target = &self.targets[index];
        let mut memory = NodeMemory::default();
        let mut failures = 0u32;
        loop {
            let pause = match self.pass(target, &mut memory).await {
                Ok(()) => {
                    failures = 0;
                    self.settings.repair_interval
                }
                Err(_) => {
                    failures += 1;
                    self.backoff(failures)
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Reads both weights and brings every node in line with them. Nothing is applied unless
    /// both keys hold valid weights.
    async fn pass(
        &self,
        target: &SyncTarget,
        memory: &mut NodeMemory,
    ) -> Result<(), Vec<SyncError>> {
        let api = target.api();
        let (desired, salt) = match self.read(target).await {
            Ok(read) => read,
            Err(error) => {
                weights_unreadable(&self.metrics, &error);
                return Err(vec![error]);
            }
        };
        let mut errors = Vec::new();
        for (addr, runtime) in &self.nodes {
            let synced = match &target.policy.traffic.sticky {
                Some(sticky) => {
                    self.sync_share(
                        target,
                        sticky,
                        addr,
                        runtime,
                        desired,
                        salt.as_deref(),
                        memory,
                    )
                    .await
                }
                None => self.sync_node(target, addr, runtime, desired, memory).await,
            };
            match synced {
                Ok(()) => {}
                Err(source) => {
                    let error = SyncError::Node {
                        api: api.to_string(),
                        node: addr.to_string(),
                        source,
                    };
                    node_failed(&self.metrics, &error);
                    errors.push(error);
                }
            }
        }
        if errors.is_empty() {
            self.metrics.success(api);
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The weights and (sticky mode) the salt, read in one transaction.
    async fn read(&self, target: &SyncTarget) -> Result<(Weights, Option<String>), SyncError> {
        let api = target.api().to_string();
        let (weights, salt) = self
            .kv
            .read_with_salt(&target.policy)
            .await
            .map_err(|source| SyncError::Consul {
                api: api.clone(),
                source,
            })?;
        if weights.blue > MAX_HAPROXY_WEIGHT || weights.green > MAX_HAPROXY_WEIGHT {
            return Err(SyncError::OutOfRange { api, weights });
        }
        if let Some(key) = sticky::missing_salt(&target.policy, weights, salt.as_deref()) {
            return Err(SyncError::Consul {
                api,
                source: TrafficError::Missing { keys: vec![key] },
            });
        }
        Ok((weights, salt))
    }

    async fn sync_node(
        &self,
        target: &SyncTarget,
        addr: &RuntimeAddr,
        runtime: &HaproxyRuntime,
        desired: Weights,
        memory: &mut NodeMemory,
    ) -> Result<(), TrafficError> {
        let api = target.api();
        let node = addr.to_string();
        let s = &target.servers;
        let live = runtime
            .node_weights(addr, &s.backend, &s.blue, &s.green)
            .await?;
        if live != desired {
            if memory.verified.get(&node) == Some(&desired) {
                // Remembered until a pass confirms the repair: a write that lands but whose
                // answer is lost leaves the next pass nothing to repair, and it still counts.
                memory.drifted.insert(node.clone());
            }
            runtime
                .apply(&s.backend, &s.blue, &s.green, desired)
                .await?;
        }
        if memory.drifted.remove(&node) {
            self.metrics.drift_repaired(api, &node);
            drift_repaired(api, &node, live, desired);
        } else if live != desired {
            weights_applied(api, &node, live, desired);
        }
        self.metrics.verified(api, &node, desired);
        memory.verified.insert(node, desired);
        Ok(())
    }
}

fn weights_applied(api: &str, node: &str, from: Weights, to: Weights) {
    tracing::info!(
        api,
        node,
        from_blue = from.blue,
        from_green = from.green,
        blue = to.blue,
        green = to.green,
        "Applied Consul weights to HAProxy."
    );
}

fn drift_repaired(api: &str, node: &str, found: Weights, to: Weights) {
    tracing::warn!(
        api,
        node,
        found_blue = found.blue,
        found_green = found.green,
        blue = to.blue,
        green = to.green,
        "HAProxy weights drifted from Consul; set them again."
    );
}

fn weights_unreadable(metrics: &SyncMetrics, error: &SyncError) {
    metrics.error(error);
    match error.read_kind() {
        Some("unreachable") => {
            tracing::warn!(%error, "Could not read the weights from Consul; retrying.")
        }
        // Normal until greenlight's first evaluation creates the keys.
        Some("missing") => {
            tracing::warn!(%error, "Weight keys do not exist yet; HAProxy left unchanged.")
        }
        _ => tracing::error!(%error, "Weight keys are unusable; HAProxy left unchanged."),
    }
}

fn node_failed(metrics: &SyncMetrics, error: &SyncError) {
    metrics.error(error);
    tracing::warn!(%error, "Could not bring an HAProxy node in line with Consul; retrying.");
}

/// The `/metrics` and `/healthz` routes of sync's own HTTP server.
pub fn router(metrics: Arc<SyncMetrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
                        metrics.encode(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Serves [`router`] on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<SyncMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "Serving sync metrics over HTTP.");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Traffic;

    fn policy(api: &str, servers: Option<HaproxyServers>, haproxy_target: bool) -> Policy {
        let mut p = crate::engine::tests::policy();
        p.api = api.into();
        p.traffic = Traffic {
            target: if haproxy_target {
                TrafficTarget::Haproxy {
                    backend: "b".into(),
                    blue: "blue".into(),
                    green: "green".into(),
                }
            } else {
                TrafficTarget::ConsulKeys {
                    blue: format!("w/{api}/blue"),
                    green: format!("w/{api}/green"),
                }
            },
            total_weight: 100,
            haproxy_backend: servers,
            sticky: None,
        };
        p
    }

    fn servers() -> HaproxyServers {
        HaproxyServers {
            backend: "api_checkout".into(),
            blue: "blue".into(),
            green: "green".into(),
        }
    }

    #[test]
    fn targets_come_from_consul_keys_policies_with_servers() {
        let ps = [
            policy("a", Some(servers()), false),
            policy("direct", None, true),
        ];
        let t = SyncTarget::from_policies(&ps).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].api(), &t[0].servers), ("a", &servers()));

        let ps = [
            policy("a", Some(servers()), false),
            policy("b", None, false),
        ];
        assert_eq!(SyncTarget::from_policies(&ps).unwrap_err(), vec!["b"]);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let consul = ConsulClient::new("http://127.0.0.1:1", None, Duration::from_secs(1)).unwrap();
        let s = Syncer::new(
            consul,
            vec![],
            vec![],
            SyncSettings {
                repair_interval: Duration::from_secs(3),
                backoff_initial: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
                ..SyncSettings::default()
            },
        );
        let pauses: Vec<u64> = (1..=6).map(|f| s.backoff(f).as_millis() as u64).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3000, 3000]);
        assert_eq!(s.backoff(u32::MAX), Duration::from_secs(3));
    }

    #[test]
    fn metrics_have_bounded_labels_and_counter_suffixes() {
        let m = SyncMetrics::new();
        m.verified(
            "checkout",
            "tcp://127.0.0.1:9999",
            Weights {
                blue: 90,
                green: 10,
            },
        );
        m.error(&SyncError::Node {
            api: "checkout".into(),
            node: "tcp://127.0.0.1:9999".into(),
            source: TrafficError::Unreachable {
                target: "HAProxy".into(),
                attempts: 1,
                reason: "refused".into(),
            },
        });
        m.error(&SyncError::Consul {
            api: "checkout".into(),
            source: TrafficError::BadValue {
                key: "k".into(),
                value: "abc".into(),
            },
        });
        m.drift_repaired("checkout", "tcp://127.0.0.1:9999");
        let text = m.encode();
        for line in [
            "greenlight_sync_applied_weight{api=\"checkout\",node=\"tcp://127.0.0.1:9999\",color=\"green\"} 10",
            "greenlight_sync_apply_errors_total{api=\"checkout\",node=\"tcp://127.0.0.1:9999\"} 1",
            "greenlight_sync_read_errors_total{api=\"checkout\",kind=\"invalid\"} 1",
            "greenlight_sync_drift_repairs_total{api=\"checkout\",node=\"tcp://127.0.0.1:9999\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
