//! The I/O shell: for every policy, fetch → decide → apply → persist → alert, on its own
//! interval, while holding the leader lock.
//!
//! Per API and window: read the state (Consul KV) and the live weights; finish a weight change a
//! crashed predecessor left half done, or pause on a manual change; query the window's metrics;
//! `decide()`; record alerts in the durable outbox; persist the new state (compare-and-set,
//! fenced by the lock) with the pending weight change marked; write the weights
//! (compare-and-set); clear the mark. Killed at any point, the next instance finds either the old
//! state (and re-decides the same window) or the marked one (and finishes the change).

mod alerts;
pub mod env;
pub mod plan;
mod status;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{watch, Mutex, Semaphore};

pub use status::LiveStatus;
pub use store::{StateStore, StoreError};

pub use env::{AlertIo, Clock, Env, MetricsIo, RealEnv, StateIo, WeightIo};

use crate::alert::{AlertEvent, ChannelKind, ChannelSettings, Notifier};
use crate::consul::{ConsulClient, ConsulError, Fence, Lock, LockOptions};
use crate::engine::{decide, Observation, Phase, RolloutState};
use crate::metrics::window::aligned_end;
use crate::metrics::{ObserveOptions, PromClient};
use crate::policy::{AlertChannelKind, Config, Policy, PolicyError, Weights};
use crate::server::logging::log_decision;
use crate::server::telemetry::Telemetry;
use crate::traffic::{ConsulKv, HaproxyRuntime, TrafficError};
use plan::{LivePlan, WindowKind, WindowPlan};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("policies: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Policies(Vec<PolicyError>),
    #[error("another instance holds the leader lock {0}")]
    NotLeader(String),
    #[error("Consul: {0}")]
    Consul(#[from] ConsulError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{failed} of {total} evaluations failed")]
    Evaluations { failed: usize, total: usize },
}

/// Options of `greenlight run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Evaluate every policy once, then exit.
    pub once: bool,
    /// Name of this instance (lock holder description, session name).
    pub instance: String,
    /// How often the loop wakes up to look for due windows and reloaded policies.
    pub tick: Duration,
    /// Serve the HTTP endpoints (not with `--once`).
    pub serve: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            once: false,
            instance: default_instance(),
            tick: Duration::from_secs(1),
            serve: true,
        }
    }
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "greenlight".into());
    format!("{host}-{}", std::process::id())
}

/// The shell: evaluates one API at a time through its [`Env`], keeping only telemetry and the
/// alerts it raised in memory (everything that matters is in the store).
pub struct Shell<E: Env = RealEnv> {
    pub env: E,
    /// Windows end this long before the evaluation time (the backend's ingestion delay).
    latency_offset: Duration,
    pub telemetry: Arc<Telemetry>,
    pub status: Arc<LiveStatus>,
    /// Internal-error alerts already raised by this process (api, what).
    raised: Mutex<HashSet<(String, String)>>,
}

/// Builds the Consul client from the config (token from its file or environment variable).
pub fn consul_client(config: &Config) -> Result<ConsulClient, DaemonError> {
    let token = config
        .consul
        .token
        .resolve_optional()
        .map_err(|e| DaemonError::Config(format!("consul token: {e}")))?;
    Ok(ConsulClient::new(
        &config.consul.url,
        token,
        Duration::from_secs(10),
    )?)
}

/// Connects the production parts described by `config` (no network traffic yet).
pub fn real_env(config: &Config) -> Result<RealEnv, DaemonError> {
    let consul = consul_client(config)?;
    let settings = crate::metrics::MetricsSettings::from_config(&config.metrics)
        .map_err(DaemonError::Config)?;
    let kind = settings.kind;
    let metrics =
        PromClient::new(settings).map_err(|e| DaemonError::Config(format!("metrics: {e}")))?;
    let haproxy = if config.haproxy.nodes.is_empty() {
        None
    } else {
        let urls: Vec<String> = config.haproxy.nodes.iter().map(|n| n.to_string()).collect();
        Some(HaproxyRuntime::from_urls(&urls).map_err(DaemonError::Config)?)
    };
    let mut channels = Vec::new();
    for c in &config.alerts {
        let secret = |r: Result<String, String>| {
            r.map_err(|e| DaemonError::Config(format!("alert channel {}: {e}", c.name)))
        };
        let kind = match &c.kind {
            AlertChannelKind::Alertmanager { url } => ChannelKind::AlertmanagerUrl(url.clone()),
            AlertChannelKind::Slack { webhook_url } => ChannelKind::Slack {
                webhook_url: secret(webhook_url.resolve().map_err(|e| e.to_string()))?,
            },
            AlertChannelKind::Webhook { url, hmac_secret } => ChannelKind::Webhook {
                url: secret(url.resolve().map_err(|e| e.to_string()))?,
                hmac_secret: match hmac_secret {
                    Some(s) => Some(secret(s.resolve().map_err(|e| e.to_string()))?),
                    None => None,
                },
            },
        };
        channels.push(ChannelSettings {
            name: c.name.clone(),
            kind,
        });
    }
    let notifier = Notifier::new(
        channels,
        config.state_dir.join("outbox"),
        Duration::from_secs(5),
    )
    .map_err(|e| DaemonError::Config(format!("alert outbox: {e}")))?;
    let backend = match kind {
        crate::metrics::Backend::VictoriaMetrics => "victoriametrics",
        crate::metrics::Backend::Prometheus => "prometheus",
    };
    Ok(RealEnv {
        store: StateStore::new(consul.clone(), &config.consul.prefix),
        consul_kv: ConsulKv::new(consul),
        haproxy,
        metrics,
        observe: ObserveOptions {
            max_sample_age: Some(config.metrics.max_staleness),
            ..ObserveOptions::default()
        },
        backend,
        metrics_url: config.metrics.url.clone(),
        notifier,
    })
}

impl Shell<RealEnv> {
    /// Connects the parts described by `config` (no network traffic yet).
    pub fn new(config: &Config) -> Result<Self, DaemonError> {
        Ok(Shell::with_env(
            real_env(config)?,
            config.metrics.latency_offset,
        ))
    }
}

impl<E: Env> Shell<E> {
    /// A shell over `env`; windows end `latency_offset` before the evaluation time.
    pub fn with_env(env: E, latency_offset: Duration) -> Self {
        Shell {
            env,
            latency_offset,
            telemetry: Arc::new(Telemetry::new()),
            status: Arc::new(LiveStatus::default()),
            raised: Mutex::new(HashSet::new()),
        }
    }

    async fn alert(&self, policy: &Policy, event: &AlertEvent) {
        let channels = policy.alert_channels(event.kind.as_str());
        if channels.is_empty() {
            return;
        }
        match self.env.notify(event, channels).await {
            Ok(report) => {
                for name in channels {
                    self.telemetry
                        .alert_delivery(name, report.retrying == 0 && report.rejected == 0);
                }
            }
            Err(e) => {
                tracing::error!(api = %policy.api, error = %e, "Could not record an alert in the outbox.")
            }
        }
        self.telemetry.outbox_depth(self.env.outbox_depth());
    }

    /// Raises `event` once per process and occurrence `what` (until the API evaluates cleanly).
    async fn raise_once(&self, policy: &Policy, what: &str, event: AlertEvent) -> bool {
        let first = self
            .raised
            .lock()
            .await
            .insert((policy.api.clone(), what.to_string()));
        if first {
            self.alert(policy, &event).await;
        }
        first
    }

    pub async fn internal_error(&self, policy: &Policy, what: &str, detail: &str) {
        let e = alerts::internal_error(&policy.api, what, detail, self.env.now());
        self.raise_once(policy, what, e).await;
    }

    async fn clear_internal_errors(&self, api: &str) {
        self.raised.lock().await.retain(|(a, _)| a != api);
    }

    /// The stored state cannot be decoded: a critical alert, once; the API holds.
    async fn state_unreadable(&self, policy: &Policy, error: &StoreError) {
        self.telemetry.shell_event(&policy.api, "state_unreadable");
        let e = alerts::state_unreadable(&policy.api, &error.to_string(), self.env.now());
        if self.raise_once(policy, "state_unreadable", e).await {
            tracing::error!(api = %policy.api, %error, "The stored state cannot be decoded; holding. `greenlight rollback API --now` moves all traffic to blue without it.");
        }
    }

    /// One evaluation of one API at `now`. Returns the end of the last window it is done with
    /// (`None`: come back at the next tick).
    pub async fn evaluate(
        &self,
        policy: &Policy,
        fence: Option<&Fence>,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, EvalError> {
        let (mut state, mut index) = match self.env.load(policy).await {
            Ok(loaded) => loaded,
            Err(e @ StoreError::Corrupt { .. }) => {
                self.state_unreadable(policy, &e).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        state.reconcile(policy);
        let end = aligned_end(now, policy.interval, self.latency_offset);

        // The live split.
        let from = state.applying_from.unwrap_or(state.weights);
        let live = match self
            .env
            .read_weights(policy, state.weights_confirmed_at)
            .await
        {
            Ok(w) => w,
            Err(TrafficError::Missing { keys }) => {
                tracing::info!(api = %policy.api, keys = ?keys, "Creating the missing weight keys.");
                self.env.init_weights(policy, state.weights).await?;
                self.env.read_weights(policy, None).await?
            }
            // HAProxy nodes reloaded at their configured weights, or a write that reached only
            // some nodes: finish greenlight's own change on every node.
            Err(e) if e.finishable(from, state.weights) => {
                tracing::warn!(api = %policy.api, error = %e, "Re-applying greenlight's weights (HAProxy reload or partial write).");
                self.telemetry.shell_event(&policy.api, "weights_reapplied");
                self.apply(policy, &mut state, &mut index, from, fence, now)
                    .await?;
                if state.applying_from.is_some() || state.phase == Phase::Paused {
                    return Ok(None);
                }
                state.weights
            }
            // Some nodes are down, the others agree: decide on what they show (a rollback
            // still lands on them; a step forward is refused until all answer).
            Err(TrafficError::NodesDown { weights, down }) => {
                tracing::warn!(api = %policy.api, down = ?down, "Some HAProxy nodes are unreachable; deciding on the others.");
                weights
            }
            // Nodes disagree beyond greenlight's own change: someone edited one by hand.
            Err(TrafficError::Diverged(found)) | Err(TrafficError::Reloaded { found, .. }) => {
                let odd = found
                    .iter()
                    .map(|(_, w)| *w)
                    .find(|w| *w != from && *w != state.weights)
                    .unwrap_or(from);
                let expected = state.weights;
                self.overridden(policy, &mut state, &mut index, expected, odd, fence, now)
                    .await?;
                return Ok(Some(end));
            }
            Err(e) => return Err(e.into()),
        };
        match plan::reconcile_live(&state, live) {
            LivePlan::InSync => {}
            LivePlan::Confirmed => {
                state.applying_from = None;
                state.weights_confirmed_at = Some(now);
                index = self.env.save(&state, index, fence).await?;
                self.rollback_landed(policy, &mut state, &mut index, fence)
                    .await?;
            }
            LivePlan::Finish { from } => {
                self.apply(policy, &mut state, &mut index, from, fence, now)
                    .await?;
                if state.applying_from.is_some() {
                    return Ok(None);
                }
            }
            LivePlan::Override { expected, found } => {
                self.overridden(policy, &mut state, &mut index, expected, found, fence, now)
                    .await?;
                return Ok(Some(end));
            }
            LivePlan::Adopt { live } => {
                tracing::info!(api = %policy.api, blue = live.blue, green = live.green, phase = state.phase.as_str(), "Adopted weights set outside greenlight.");
                state.weights = live;
                index = self.env.save(&state, index, fence).await?;
            }
        }

        // A progressing rollout needs the window's data, and so does an automatic start (it
        // waits for usable metrics); an operator intent is decided without it. Anything else
        // (paused, promoted, rolled back, waiting for `start`) has nothing to decide until an
        // intent arrives.
        let needs_data = state.intent.is_none()
            && (state.phase == Phase::Progressing
                || (state.phase == Phase::Pending && policy.auto_start));
        let wants_decision = state.intent.is_some() || needs_data;
        if !wants_decision {
            self.status.update(policy, &state);
            return Ok(Some(end));
        }
        let interval =
            SignedDuration::try_from(policy.interval).unwrap_or(SignedDuration::from_mins(1));
        let window = plan::choose_window(
            state.last_window_end,
            state.last_good_data_at,
            end,
            interval,
        );
        if needs_data {
            self.window_anomaly(policy, &window).await;
            if let WindowKind::Reanchored { from, .. } = window.kind {
                // Nothing was counted beyond `from`: the windows consumed ahead of the clock
                // are given up, so that the decision engine accepts the current one.
                state.last_window_end = from;
            }
            if !window.is_new() {
                self.status.update(policy, &state);
                return Ok(Some(end));
            }
        }
        let obs = if needs_data {
            let t = Instant::now();
            let obs = self.env.observe(policy, window.start, window.end).await;
            let outcome = if env::backend_failed(&obs) {
                Err(crate::server::telemetry::QueryErrorKind::Unreachable)
            } else {
                Ok(())
            };
            self.telemetry
                .query(self.env.backend(), t.elapsed(), outcome);
            obs
        } else {
            Observation {
                start: end,
                end,
                checks: Vec::new(),
            }
        };

        let d = decide(policy, &state, &obs, now);
        // Alerts first: an alert recorded for a decision that is then not persisted is
        // re-decided and deduplicated; a persisted decision never loses its alert.
        for event in alerts::for_decision(policy, &state, &d, self.env.ui()) {
            self.alert(policy, &event).await;
        }
        let before = state.weights;
        let mut next = d.state.clone();
        index = self.env.save(&next, index, fence).await?;
        log_decision(&policy.api, &d);
        self.telemetry.decision(&policy.api, &d);
        if d.set_weights.is_some() {
            self.apply(policy, &mut next, &mut index, before, fence, now)
                .await?;
        }
        self.status.update(policy, &next);
        self.clear_internal_errors(&policy.api).await;
        // After an intent the window is still to be counted: come back at the next tick.
        Ok(
            if obs.checks.is_empty() && next.phase == Phase::Progressing {
                None
            } else {
                Some(end)
            },
        )
    }

    /// Says (once per occurrence) that the clock went backwards or that windows are skipped.
    async fn window_anomaly(&self, policy: &Policy, window: &WindowPlan) {
        let (what, detail) = match window.kind {
            WindowKind::ClockBehind { last } => (
                "clock_behind",
                format!(
                    "the clock is behind the last counted window (window end {}, last counted {last}); nothing is counted until it catches up",
                    window.end
                ),
            ),
            WindowKind::Reanchored { ahead, .. } => (
                "clock_behind",
                format!(
                    "windows up to {ahead} were consumed while the clock was ahead (none had data); evaluation goes on from the window ending {}",
                    window.end
                ),
            ),
            WindowKind::Gap { last, skipped } => (
                "windows_skipped",
                format!(
                    "{skipped} windows since {last} were not evaluated (clock jump or a long stop); they are skipped, not counted"
                ),
            ),
            _ => return,
        };
        self.telemetry.shell_event(&policy.api, what);
        let e = alerts::internal_error(&policy.api, what, &detail, self.env.now());
        if self.raise_once(policy, what, e).await {
            tracing::warn!(api = %policy.api, %detail, "Evaluation windows out of order.");
        }
    }

    /// Moves the live weights from `from` to `state.weights` and clears the pending mark; on a
    /// manual change pauses instead. Leaves the mark in place on other failures; a rollback that
    /// cannot be written raises a critical alert, retried at every tick until it lands.
    async fn apply(
        &self,
        policy: &Policy,
        state: &mut RolloutState,
        index: &mut u64,
        from: Weights,
        fence: Option<&Fence>,
        now: Timestamp,
    ) -> Result<(), EvalError> {
        let to = state.weights;
        match self.env.write_weights(policy, from, to, fence).await {
            Ok(()) => {
                self.telemetry.weight_write(&policy.api, true);
                state.applying_from = None;
                state.weights_confirmed_at = Some(now);
                *index = self.env.save(state, *index, fence).await?;
                self.rollback_landed(policy, state, index, fence).await?;
                self.telemetry.rollout(&policy.api, state);
                Ok(())
            }
            Err(TrafficError::Override { found }) => {
                self.telemetry.weight_write(&policy.api, false);
                self.overridden(policy, state, index, from, found, fence, now)
                    .await
            }
            Err(e) => {
                self.telemetry.weight_write(&policy.api, false);
                if state.phase == Phase::RolledBack {
                    self.rollback_not_applied(policy, state, index, &e, fence)
                        .await;
                }
                Err(e.into())
            }
        }
    }

    /// A decided rollback could not be written: critical alert (once per rollback), marked in
    /// the state so that its resolution follows wherever the rollback finally lands.
    async fn rollback_not_applied(
        &self,
        policy: &Policy,
        state: &mut RolloutState,
        index: &mut u64,
        error: &TrafficError,
        fence: Option<&Fence>,
    ) {
        self.telemetry
            .shell_event(&policy.api, "rollback_not_applied");
        tracing::error!(api = %policy.api, %error, "Rollback decided but not applied; retrying at every tick.");
        if state.rollback_unapplied {
            return;
        }
        let e = alerts::rollback_not_applied(policy, state, &error.to_string(), self.env.now());
        self.alert(policy, &e).await;
        state.rollback_unapplied = true;
        match self.env.save(state, *index, fence).await {
            Ok(i) => *index = i,
            Err(e) => {
                tracing::warn!(api = %policy.api, error = %e, "Could not mark the rollback as not applied.")
            }
        }
    }

    /// Resolves the "rollback not applied" alert once the rollback is live.
    async fn rollback_landed(
        &self,
        policy: &Policy,
        state: &mut RolloutState,
        index: &mut u64,
        fence: Option<&Fence>,
    ) -> Result<(), EvalError> {
        if !state.rollback_unapplied || state.applying_from.is_some() {
            return Ok(());
        }
        let e =
            alerts::rollback_not_applied(policy, state, "", self.env.now()).resolve(self.env.now());
        self.alert(policy, &e).await;
        state.rollback_unapplied = false;
        *index = self.env.save(state, *index, fence).await?;
        tracing::info!(api = %policy.api, "The rollback is applied now.");
        Ok(())
    }

    /// Someone changed the weights by hand: never overwrite them. A progressing rollout pauses;
    /// a rolled-back one stays rolled back (a resume must never return to the bad step).
    #[allow(clippy::too_many_arguments)]
    async fn overridden(
        &self,
        policy: &Policy,
        state: &mut RolloutState,
        index: &mut u64,
        expected: Weights,
        found: Weights,
        fence: Option<&Fence>,
        now: Timestamp,
    ) -> Result<(), EvalError> {
        self.telemetry.override_detected(&policy.api);
        let event = alerts::manual_override(policy, state, expected, found, now);
        self.alert(policy, &event).await;
        let by_hand = format!(
            "weights changed by hand (expected blue={} green={}, found blue={} green={})",
            expected.blue, expected.green, found.blue, found.green
        );
        if state.phase == Phase::RolledBack {
            let why = state.reason.take().unwrap_or_default();
            state.reason = Some(format!("{why}; then {by_hand}"));
        } else {
            state.phase = Phase::Paused;
            state.reason = Some(by_hand);
        }
        state.weights = found;
        state.applying_from = None;
        state.rollback_unapplied = false;
        state.revision += 1;
        *index = self.env.save(state, *index, fence).await?;
        self.status.update(policy, state);
        self.telemetry.rollout(&policy.api, state);
        Ok(())
    }
}

/// Why one evaluation did not complete (the API holds; the next tick tries again).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("traffic: {0}")]
    Traffic(#[from] TrafficError),
    #[error("evaluation did not finish within {0:?}")]
    TimedOut(Duration),
}

impl EvalError {
    fn lock_lost(&self) -> bool {
        matches!(
            self,
            EvalError::Store(StoreError::LockLost { .. })
                | EvalError::Traffic(TrafficError::LockLost)
        )
    }
}

/// The loaded policies, keeping the last good version of a file that broke.
#[derive(Default)]
struct Policies {
    by_api: BTreeMap<String, Arc<Policy>>,
    errors: usize,
    /// (number of policy files, newest modification time) when last loaded.
    stamp: Option<(usize, Option<std::time::SystemTime>)>,
}

impl Policies {
    fn reload(&mut self, config: &Config, telemetry: &Telemetry, status: &LiveStatus) {
        // Stamp before reading: a file changed while loading is seen at the next look.
        self.stamp = dir_stamp(&config.policies_dir);
        // Validated against the config too (channels, weight keys outside greenlight's prefix).
        let report = config.load_policies();
        for e in &report.errors {
            tracing::error!(error = %e, "Policy file rejected; its last good version keeps running.");
        }
        let broken: HashSet<PathBuf> = report.errors.iter().map(|e| e.file.clone()).collect();
        let mut next: BTreeMap<String, Arc<Policy>> = BTreeMap::new();
        for p in report.policies {
            let same = self.by_api.get(&p.api).filter(|old| ***old == p).cloned();
            next.insert(p.api.clone(), same.unwrap_or_else(|| Arc::new(p)));
        }
        // Keep the previous version of a policy whose file is now broken.
        for (api, old) in &self.by_api {
            if !next.contains_key(api) && old.source.as_ref().is_some_and(|s| broken.contains(s)) {
                next.insert(api.clone(), old.clone());
            }
        }
        for api in self.by_api.keys() {
            if !next.contains_key(api) {
                tracing::info!(api = %api, "Policy removed; no longer evaluated.");
                telemetry.forget(api);
                status.forget(api);
            }
        }
        for api in next.keys() {
            if !self.by_api.contains_key(api) {
                tracing::info!(api = %api, "Policy loaded.");
            }
        }
        self.by_api = next;
        self.errors = report.errors.len();
        telemetry.policies(self.by_api.len(), self.errors);
        status.set_policies(self.by_api.len(), self.errors);
    }
}

/// Runs the daemon until `shutdown` completes (or once, with `opts.once`).
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // A secret the config names must be readable before anything starts.
    let missing = config.check_secrets();
    if !missing.is_empty() {
        return Err(DaemonError::Policies(missing));
    }
    let shell = Arc::new(Shell::new(&config)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let mut policies = Policies::default();
    policies.reload(&config, &shell.telemetry, &shell.status);
    if opts.once && policies.by_api.is_empty() && policies.errors > 0 {
        let report = config.load_policies();
        return Err(DaemonError::Policies(report.errors));
    }

    if opts.serve && !opts.once {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        tracing::info!(listen = %config.listen, "Serving /metrics, /healthz, /readyz and /api/v1/rollouts.");
        let telemetry = shell.telemetry.clone();
        let status: Arc<dyn crate::server::StatusSource> = shell.status.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::server::serve(listener, telemetry, status, stop).await {
                tracing::error!(error = %e, "HTTP server failed.");
            }
        });
    }

    // Deliver whatever a previous run left in the outbox.
    shell.env.flush().await;

    let lock_opts = LockOptions {
        lock_delay: config.consul.lock_delay,
        retry_after: Duration::from_secs(1),
        watch_wait: Duration::from_secs(10),
        ..LockOptions::new(opts.instance.clone(), config.consul.session_ttl)
    }
    .value(opts.instance.clone().into_bytes());
    let store = shell.env.store.clone();
    let leader_key = store.leader_key();
    let concurrency = Arc::new(Semaphore::new(config.max_concurrency.max(1)));

    let mut hup = signal_hup();
    loop {
        if *stop_rx.borrow() {
            return Ok(());
        }
        // Followers are ready too, as long as Consul answers.
        let probe = store.client().get(&leader_key).await;
        shell
            .status
            .set_consul(probe.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        // Become the leader.
        let lock = if opts.once {
            match Lock::try_acquire(store.client(), &leader_key, &lock_opts).await? {
                Some(lock) => lock,
                None => return Err(DaemonError::NotLeader(leader_key)),
            }
        } else {
            let mut rx = stop_rx.clone();
            tokio::select! {
                _ = rx.wait_for(|s| *s) => return Ok(()),
                acquired = Lock::acquire(store.client(), &leader_key, &lock_opts) => match acquired {
                    Ok(lock) => lock,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot reach Consul for the leader lock; retrying.");
                        shell.status.set_consul(Err(e.to_string()));
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                },
            }
        };
        shell.telemetry.leader(true);
        shell.status.set_leader(true);
        shell.status.set_consul(Ok(()));
        tracing::info!(instance = %opts.instance, "Leading: evaluating policies.");
        let fence = lock.fence().clone();
        let mut evals = Evaluations::new(shell.clone(), fence, concurrency.clone());
        let outcome = loop {
            if !lock.is_held() {
                break Ok(());
            }
            evals.start_due(&policies, opts.once);
            if opts.once {
                while evals.in_flight() > 0 {
                    evals.finished().await;
                }
                shell.env.flush().await;
                let (failed, total) = (evals.failed, evals.total);
                break if evals.lost {
                    Ok(())
                } else if failed > 0 {
                    Err(DaemonError::Evaluations { failed, total })
                } else {
                    Ok(())
                };
            }
            if evals.lost {
                tracing::warn!("Lost the leader lock; stopping evaluations.");
                break Ok(());
            }
            let mut rx = stop_rx.clone();
            tokio::select! {
                _ = rx.wait_for(|s| *s) => break Ok(()),
                _ = lock.lost() => {
                    tracing::warn!("Lost the leader lock; stopping evaluations.");
                    break Ok(());
                }
                _ = evals.finished(), if evals.in_flight() > 0 => {}
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading policies.");
                    policies.reload(&config, &shell.telemetry, &shell.status);
                }
                _ = tokio::time::sleep(opts.tick) => {
                    shell.env.flush().await;
                    shell.telemetry.outbox_depth(shell.env.outbox_depth());
                    if dir_stamp(&config.policies_dir) != policies.stamp {
                        policies.reload(&config, &shell.telemetry, &shell.status);
                    }
                }
            }
        };
        // Evaluations still running were started under the lock that is gone: stop them (a
        // stopped evaluation is a crash the next leader recovers from).
        evals.abort();
        shell.telemetry.leader(false);
        shell.status.set_leader(false);
        if let Err(e) = lock.release().await {
            tracing::debug!(error = %e, "Releasing the leader lock failed (it expires with its session).");
        }
        if opts.once || *stop_rx.borrow() || outcome.is_err() {
            tracing::info!("Stopped.");
            return outcome;
        }
    }
}

/// The evaluations under way, one task per API: each API runs on its own schedule, and one
/// slow or hanging API never delays another (no barrier per tick). Every evaluation is bounded
/// in time, and a panic in one is caught, alerted and counted.
struct Evaluations {
    shell: Arc<Shell>,
    fence: Fence,
    concurrency: Arc<Semaphore>,
    tasks: tokio::task::JoinSet<(String, Result<Option<Timestamp>, EvalError>)>,
    /// The API and policy of each running task.
    running: HashMap<tokio::task::Id, Arc<Policy>>,
    /// End of the last window each API is done with.
    last_end: HashMap<String, Timestamp>,
    failed: usize,
    total: usize,
    lost: bool,
}

impl Evaluations {
    fn new(shell: Arc<Shell>, fence: Fence, concurrency: Arc<Semaphore>) -> Self {
        Evaluations {
            shell,
            fence,
            concurrency,
            tasks: tokio::task::JoinSet::new(),
            running: HashMap::new(),
            last_end: HashMap::new(),
            failed: 0,
            total: 0,
            lost: false,
        }
    }

    fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Starts an evaluation of every due API that is not being evaluated already.
    fn start_due(&mut self, policies: &Policies, all: bool) {
        let now = self.shell.env.now();
        for (api, policy) in &policies.by_api {
            if self.running.values().any(|p| &p.api == api) {
                continue;
            }
            let end = aligned_end(now, policy.interval, self.shell.latency_offset);
            // Due at every new window end; an end before the last one (the clock went back)
            // is looked at too, so that the shell can say so.
            let due = all || self.last_end.get(api).is_none_or(|last| *last != end);
            if !due {
                continue;
            }
            let shell = self.shell.clone();
            let task_policy = policy.clone();
            let fence = self.fence.clone();
            let sem = self.concurrency.clone();
            let bound = evaluation_bound(policy);
            let handle = self.tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let result = match tokio::time::timeout(
                    bound,
                    shell.evaluate(&task_policy, Some(&fence), now),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(EvalError::TimedOut(bound)),
                };
                (task_policy.api.clone(), result)
            });
            self.running.insert(handle.id(), policy.clone());
        }
    }

    /// Waits for the next evaluation to finish and records its outcome.
    async fn finished(&mut self) {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return;
        };
        self.total += 1;
        let (policy, result) = match joined {
            Ok((id, (_, result))) => (self.running.remove(&id), result),
            Err(e) => {
                let policy = self.running.remove(&e.id());
                self.failed += 1;
                if e.is_panic() {
                    if let Some(policy) = policy {
                        let detail = panic_message(e.into_panic());
                        tracing::error!(api = %policy.api, panic = %detail, "Evaluation panicked; the other APIs go on.");
                        self.shell
                            .telemetry
                            .shell_event(&policy.api, "evaluation_panicked");
                        self.shell
                            .internal_error(
                                &policy,
                                "panic",
                                &format!("evaluation panicked: {detail}"),
                            )
                            .await;
                    }
                }
                return;
            }
        };
        let Some(policy) = policy else { return };
        match result {
            Ok(end) => {
                if let Some(end) = end {
                    self.last_end.insert(policy.api.clone(), end);
                }
            }
            Err(e) => {
                self.failed += 1;
                self.lost |= e.lock_lost();
                self.report(&policy, &e).await;
            }
        }
    }

    async fn report(&self, policy: &Policy, e: &EvalError) {
        match e {
            EvalError::Store(StoreError::Conflict { .. }) => {
                tracing::info!(api = %policy.api, "State changed meanwhile (operator command); evaluating again next tick.");
            }
            EvalError::Store(StoreError::Corrupt { .. }) => {}
            EvalError::TimedOut(_) => {
                tracing::warn!(api = %policy.api, error = %e, "Evaluation did not finish in time; holding and retrying.");
                self.shell
                    .telemetry
                    .shell_event(&policy.api, "evaluation_timed_out");
            }
            EvalError::Traffic(TrafficError::Unreachable { .. })
            | EvalError::Store(StoreError::Consul(_)) => {
                tracing::warn!(api = %policy.api, error = %e, "Evaluation failed; holding and retrying.");
            }
            _ if e.lock_lost() => {}
            _ => {
                tracing::error!(api = %policy.api, error = %e, "Evaluation failed; an operator must look.");
                self.shell
                    .internal_error(policy, "evaluation", &e.to_string())
                    .await;
            }
        }
    }

    fn abort(&mut self) {
        self.tasks.abort_all();
        self.running.clear();
    }
}

/// How long one evaluation of `policy` may take: its interval, at least 30 s.
fn evaluation_bound(policy: &Policy) -> Duration {
    policy.interval.max(Duration::from_secs(30))
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// (number of policy files, newest modification time) of `dir`; `None` if it cannot be read.
/// A policy file added, removed or written changes it.
fn dir_stamp(dir: &std::path::Path) -> Option<(usize, Option<std::time::SystemTime>)> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut count = 0;
    let mut newest = None;
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "toml") {
            count += 1;
            if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(m));
            }
        }
    }
    Some((count, newest))
}

#[cfg(unix)]
fn signal_hup() -> HupSignal {
    HupSignal(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
}

struct HupSignal(Option<tokio::signal::unix::Signal>);

impl HupSignal {
    async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
}
