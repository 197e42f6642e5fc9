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
mod status;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{watch, Mutex, Semaphore};

pub use status::LiveStatus;
pub use store::{StateStore, StoreError};

use crate::alert::{AlertEvent, ChannelKind, ChannelSettings, Notifier};
use crate::consul::{ConsulClient, ConsulError, Fence, Lock, LockOptions};
use crate::engine::{decide, Observation, Phase, RolloutState};
use crate::metrics::window::aligned_end;
use crate::metrics::{observe_with, ObserveOptions, PromClient};
use crate::policy::{load_dir, AlertChannelKind, Config, Policy, PolicyError, TrafficTarget};
use crate::server::logging::log_decision;
use crate::server::telemetry::Telemetry;
use crate::traffic::{Actuator, ConsulKv, HaproxyRuntime, TrafficError};

/// A gap longer than this many intervals since the last counted window is skipped, not
/// evaluated as one long window.
const MAX_CATCH_UP_INTERVALS: i64 = 10;

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

/// Everything the loop needs, shared by the evaluation tasks.
pub struct Shell {
    pub config: Config,
    pub store: StateStore,
    metrics: PromClient,
    consul_kv: ConsulKv,
    haproxy: Option<HaproxyRuntime>,
    notifier: Notifier,
    pub telemetry: Arc<Telemetry>,
    pub status: Arc<LiveStatus>,
    observe: ObserveOptions,
    backend: &'static str,
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

impl Shell {
    /// Connects the parts described by `config` (no network traffic yet).
    pub fn new(config: Config) -> Result<Shell, DaemonError> {
        let consul = consul_client(&config)?;
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
            let kind = match &c.kind {
                AlertChannelKind::Alertmanager { url } => ChannelKind::AlertmanagerUrl(url.clone()),
                AlertChannelKind::Slack { webhook_url } => ChannelKind::Slack {
                    webhook_url: webhook_url.resolve().map_err(|e| {
                        DaemonError::Config(format!("alert channel {}: {e}", c.name))
                    })?,
                },
                AlertChannelKind::Webhook { url, hmac_secret } => ChannelKind::Webhook {
                    url: url.resolve().map_err(|e| {
                        DaemonError::Config(format!("alert channel {}: {e}", c.name))
                    })?,
                    hmac_secret: match hmac_secret {
                        Some(s) => Some(s.resolve().map_err(|e| {
                            DaemonError::Config(format!("alert channel {}: {e}", c.name))
                        })?),
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
        Ok(Shell {
            store: StateStore::new(consul.clone(), &config.consul.prefix),
            consul_kv: ConsulKv::new(consul),
            haproxy,
            metrics,
            notifier,
            telemetry: Arc::new(Telemetry::new()),
            status: Arc::new(LiveStatus::default()),
            observe: ObserveOptions {
                max_sample_age: Some(config.metrics.max_staleness),
                ..ObserveOptions::default()
            },
            backend,
            raised: Mutex::new(HashSet::new()),
            config,
        })
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

    /// Base URL of the metrics UI for alert links (VictoriaMetrics only).
    fn metrics_ui(&self) -> Option<&str> {
        (self.backend == "victoriametrics").then_some(self.config.metrics.url.as_str())
    }

    async fn alert(&self, policy: &Policy, event: &AlertEvent) {
        let channels = policy.alert_channels(event.kind.as_str());
        if channels.is_empty() {
            return;
        }
        match self.notifier.notify(event, channels).await {
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
        self.telemetry.outbox_depth(self.notifier.outbox_depth());
    }

    async fn internal_error(&self, policy: &Policy, what: &str, detail: &str) {
        let first = self
            .raised
            .lock()
            .await
            .insert((policy.api.clone(), what.to_string()));
        if first {
            let e = alerts::internal_error(&policy.api, what, detail, Timestamp::now());
            self.alert(policy, &e).await;
        }
    }

    async fn clear_internal_errors(&self, api: &str) {
        self.raised.lock().await.retain(|(a, _)| a != api);
    }

    async fn save(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        self.store.save(state, index, fence).await
    }

    /// One evaluation of one API at `now`. Returns the end of the last counted window.
    pub async fn evaluate(
        &self,
        policy: &Policy,
        fence: Option<&Fence>,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, EvalError> {
        let (mut state, mut index) = self.store.load(policy).await?;
        state.reconcile(policy);
        let end = aligned_end(now, policy.interval, self.config.metrics.latency_offset);
        let actuator = self.actuator(policy)?;

        // The live split.
        let live = match actuator.read(policy).await {
            Ok(w) => w,
            Err(TrafficError::Missing { keys }) => {
                if let Actuator::ConsulKv(kv) = &actuator {
                    tracing::info!(api = %policy.api, keys = ?keys, "Creating the missing weight keys.");
                    kv.initialize(policy, state.weights).await?;
                }
                actuator.read(policy).await?
            }
            Err(e) => return Err(e.into()),
        };

        // A change decided earlier but not confirmed applied (crash, failed write).
        if let Some(from) = state.applying_from {
            if live == state.weights {
                state.applying_from = None;
                index = self.save(&state, index, fence).await?;
            } else if live == from {
                self.apply(policy, &actuator, &mut state, &mut index, from, fence, now)
                    .await?;
                if state.applying_from.is_some() {
                    return Ok(None);
                }
            } else {
                let expected = state.weights;
                self.paused_by_hand(policy, &mut state, &mut index, expected, live, fence, now)
                    .await?;
                return Ok(Some(end));
            }
        } else if live != state.weights {
            match state.phase {
                Phase::Progressing | Phase::Pending => {
                    let expected = state.weights;
                    self.paused_by_hand(policy, &mut state, &mut index, expected, live, fence, now)
                        .await?;
                    return Ok(Some(end));
                }
                // Paused, promoted or rolled back: people own the weights; follow them quietly.
                _ => {
                    tracing::info!(api = %policy.api, blue = live.blue, green = live.green, phase = state.phase.as_str(), "Adopted weights set outside greenlight.");
                    state.weights = live;
                    index = self.save(&state, index, fence).await?;
                }
            }
        }

        // The window to evaluate.
        let interval =
            SignedDuration::try_from(policy.interval).unwrap_or(SignedDuration::from_mins(1));
        let mut start = end - interval;
        let mut new_window = true;
        if let Some(last) = state.last_window_end {
            if last >= end {
                new_window = false;
            } else if last >= end - interval * MAX_CATCH_UP_INTERVALS as i32 {
                start = last;
            } else {
                tracing::warn!(api = %policy.api, last = %last, end = %end, "Skipping a gap in evaluation; those windows are not counted.");
            }
        }
        // A progressing rollout needs the window's data, and so does an automatic start (it
        // waits for usable metrics); an operator intent is decided without it. Anything else
        // (paused, promoted, rolled back, waiting for `start`) has nothing to decide until an
        // intent arrives.
        let needs_data = state.intent.is_none()
            && (state.phase == Phase::Progressing
                || (state.phase == Phase::Pending && policy.auto_start));
        let wants_decision = state.intent.is_some()
            || state.phase == Phase::Progressing
            || (state.phase == Phase::Pending && policy.auto_start);
        if !wants_decision || (needs_data && !new_window) {
            self.status.update(policy, &state);
            return Ok(Some(end));
        }
        let obs = if needs_data {
            let t = Instant::now();
            let obs = observe_with(&self.metrics, policy, start, end, &self.observe).await;
            let outcome = if obs
                .checks
                .iter()
                .any(|c| matches!(&c.data, Err(crate::engine::DataProblem::Backend(_))))
            {
                Err(crate::server::telemetry::QueryErrorKind::Unreachable)
            } else {
                Ok(())
            };
            self.telemetry.query(self.backend, t.elapsed(), outcome);
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
        for event in alerts::for_decision(policy, &state, &d, self.metrics_ui()) {
            self.alert(policy, &event).await;
        }
        let before = state.weights;
        let mut next = d.state.clone();
        index = self.save(&next, index, fence).await?;
        log_decision(&policy.api, &d);
        self.telemetry.decision(&policy.api, &d);
        if d.set_weights.is_some() {
            self.apply(policy, &actuator, &mut next, &mut index, before, fence, now)
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

    /// Moves the live weights from `from` to `state.weights` and clears the pending mark; on a
    /// manual change pauses instead. Leaves the mark in place on other failures.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        policy: &Policy,
        actuator: &Actuator,
        state: &mut RolloutState,
        index: &mut u64,
        from: crate::policy::Weights,
        fence: Option<&Fence>,
        now: Timestamp,
    ) -> Result<(), EvalError> {
        let to = state.weights;
        match actuator.write_fenced(policy, from, to, fence).await {
            Ok(()) => {
                self.telemetry.weight_write(&policy.api, true);
                state.applying_from = None;
                *index = self.save(state, *index, fence).await?;
                self.telemetry.rollout(&policy.api, state);
                Ok(())
            }
            Err(TrafficError::Override { found }) => {
                self.telemetry.weight_write(&policy.api, false);
                self.paused_by_hand(policy, state, index, from, found, fence, now)
                    .await
            }
            Err(e) => {
                self.telemetry.weight_write(&policy.api, false);
                Err(e.into())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn paused_by_hand(
        &self,
        policy: &Policy,
        state: &mut RolloutState,
        index: &mut u64,
        expected: crate::policy::Weights,
        found: crate::policy::Weights,
        fence: Option<&Fence>,
        now: Timestamp,
    ) -> Result<(), EvalError> {
        self.telemetry.override_detected(&policy.api);
        let event = alerts::manual_override(policy, state, expected, found, now);
        self.alert(policy, &event).await;
        state.phase = Phase::Paused;
        state.reason = Some(format!(
            "weights changed by hand (expected blue={} green={}, found blue={} green={})",
            expected.blue, expected.green, found.blue, found.green
        ));
        state.weights = found;
        state.applying_from = None;
        state.revision += 1;
        *index = self.save(state, *index, fence).await?;
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
    fn reload(
        &mut self,
        dir: &std::path::Path,
        channels: &[String],
        telemetry: &Telemetry,
        status: &LiveStatus,
    ) {
        // Stamp before reading: a file changed while loading is seen at the next look.
        self.stamp = dir_stamp(dir);
        let report = load_dir(dir, Some(channels));
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
    let shell = Arc::new(Shell::new(config)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let mut policies = Policies::default();
    let channels = shell.config.channel_names();
    policies.reload(
        &shell.config.policies_dir,
        &channels,
        &shell.telemetry,
        &shell.status,
    );
    if opts.once && policies.by_api.is_empty() && policies.errors > 0 {
        let report = load_dir(&shell.config.policies_dir, Some(&channels));
        return Err(DaemonError::Policies(report.errors));
    }

    if opts.serve && !opts.once {
        let listener = tokio::net::TcpListener::bind(shell.config.listen).await?;
        tracing::info!(listen = %shell.config.listen, "Serving /metrics, /healthz, /readyz and /api/v1/rollouts.");
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
    shell.notifier.flush().await;

    let lock_opts = LockOptions {
        lock_delay: shell.config.consul.lock_delay,
        retry_after: Duration::from_secs(1),
        watch_wait: Duration::from_secs(10),
        ..LockOptions::new(opts.instance.clone(), shell.config.consul.session_ttl)
    }
    .value(opts.instance.clone().into_bytes());
    let leader_key = shell.store.leader_key();

    let mut hup = signal_hup();
    loop {
        if *stop_rx.borrow() {
            return Ok(());
        }
        // Followers are ready too, as long as Consul answers.
        let probe = shell.store.client().get(&leader_key).await;
        shell
            .status
            .set_consul(probe.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        // Become the leader.
        let lock = if opts.once {
            match Lock::try_acquire(shell.store.client(), &leader_key, &lock_opts).await? {
                Some(lock) => lock,
                None => return Err(DaemonError::NotLeader(leader_key)),
            }
        } else {
            let mut rx = stop_rx.clone();
            tokio::select! {
                _ = rx.wait_for(|s| *s) => return Ok(()),
                acquired = Lock::acquire(shell.store.client(), &leader_key, &lock_opts) => match acquired {
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
        let mut last_end: HashMap<String, Timestamp> = HashMap::new();
        let outcome = loop {
            if !lock.is_held() {
                break Ok(());
            }
            let (failed, total, lost) = tick(
                &shell,
                &policies,
                &fence,
                &mut last_end,
                opts.once,
                shell.config.max_concurrency,
            )
            .await;
            shell.notifier.flush().await;
            shell.telemetry.outbox_depth(shell.notifier.outbox_depth());
            if lost {
                tracing::warn!("Lost the leader lock; stopping evaluations.");
                break Ok(());
            }
            if opts.once {
                break if failed > 0 {
                    Err(DaemonError::Evaluations { failed, total })
                } else {
                    Ok(())
                };
            }
            let mut rx = stop_rx.clone();
            tokio::select! {
                _ = rx.wait_for(|s| *s) => break Ok(()),
                _ = lock.lost() => {
                    tracing::warn!("Lost the leader lock; stopping evaluations.");
                    break Ok(());
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading policies.");
                    policies.reload(&shell.config.policies_dir, &channels, &shell.telemetry, &shell.status);
                }
                _ = tokio::time::sleep(opts.tick) => {
                    if dir_stamp(&shell.config.policies_dir) != policies.stamp {
                        policies.reload(&shell.config.policies_dir, &channels, &shell.telemetry, &shell.status);
                    }
                }
            }
        };
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

/// Evaluates every due policy, at most `concurrency` at once. Returns (failed, total, lock lost).
async fn tick(
    shell: &Arc<Shell>,
    policies: &Policies,
    fence: &Fence,
    last_end: &mut HashMap<String, Timestamp>,
    all: bool,
    concurrency: usize,
) -> (usize, usize, bool) {
    let now = Timestamp::now();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (api, policy) in &policies.by_api {
        let end = aligned_end(now, policy.interval, shell.config.metrics.latency_offset);
        let due = all || last_end.get(api).is_none_or(|last| *last < end);
        if !due {
            continue;
        }
        let shell = shell.clone();
        let policy = policy.clone();
        let fence = fence.clone();
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let result = shell.evaluate(&policy, Some(&fence), now).await;
            (policy, result)
        });
    }
    let (mut failed, mut total, mut lost) = (0, 0, false);
    while let Some(joined) = tasks.join_next().await {
        total += 1;
        let Ok((policy, result)) = joined else {
            failed += 1;
            continue;
        };
        match result {
            Ok(end) => {
                if let Some(end) = end {
                    last_end.insert(policy.api.clone(), end);
                }
            }
            Err(e) => {
                failed += 1;
                lost |= e.lock_lost();
                match &e {
                    EvalError::Store(StoreError::Conflict { .. }) => {
                        tracing::info!(api = %policy.api, "State changed meanwhile (operator command); evaluating again next tick.");
                    }
                    EvalError::Traffic(TrafficError::Unreachable { .. })
                    | EvalError::Store(StoreError::Consul(_)) => {
                        tracing::warn!(api = %policy.api, error = %e, "Evaluation failed; holding and retrying.");
                    }
                    _ if e.lock_lost() => {}
                    _ => {
                        tracing::error!(api = %policy.api, error = %e, "Evaluation failed; an operator must look.");
                        shell
                            .internal_error(&policy, "evaluation", &e.to_string())
                            .await;
                    }
                }
            }
        }
    }
    (failed, total, lost)
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
