//! The daemon loop: the leader lock, policy reloads, and one evaluation task per due API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{watch, Semaphore};

use super::breakers::BreakerBook;
use super::campaigns::{look_all, LoadedCampaign};
use super::env::{AlertIo, Clock};
use super::health::Probe;
use super::shell::{EvalError, Shell};
use super::status::LiveStatus;
use super::store::StoreError;
use super::{DaemonError, RunOptions};
use crate::consul::{Fence, Lock, LockOptions};
use crate::metrics::window::aligned_end;
use crate::policy::{Config, Policy};
use crate::server::telemetry::Telemetry;
use crate::traffic::TrafficError;

/// The loaded policies, keeping the last good version of a file that broke.
#[derive(Default)]
struct Policies {
    by_api: BTreeMap<String, Arc<Policy>>,
    errors: usize,
    /// (number of policy files, newest modification time) when last loaded.
    stamp: Option<(usize, Option<std::time::SystemTime>)>,
    /// The campaigns that resolve against the loaded policies.
    campaigns: Vec<LoadedCampaign>,
    /// The campaigns directory's stamp when last loaded.
    campaign_stamp: Option<(usize, Option<std::time::SystemTime>)>,
}

impl Policies {
    fn reload(
        &mut self,
        config: &Config,
        telemetry: &Telemetry,
        status: &LiveStatus,
        breaker: &BreakerBook,
    ) {
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
                breaker.forget(api);
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
        status.set_loaded(self.by_api.values().cloned().collect());
        self.reload_campaigns(config, status);
    }

    /// Loads the campaign files against the loaded policies; a campaign file that is broken or
    /// does not resolve is not run (its state waits in Consul) until it is fixed.
    fn reload_campaigns(&mut self, config: &Config, status: &LiveStatus) {
        self.campaign_stamp = dir_stamp(&config.campaigns_dir);
        let policies: Vec<&Policy> = self.by_api.values().map(|p| p.as_ref()).collect();
        let report = config.load_campaigns(&policies);
        for e in &report.errors {
            tracing::error!(error = %e, "Campaign file rejected; the campaign is not run until it is fixed.");
        }
        self.campaigns = report
            .campaigns
            .into_iter()
            .filter_map(|c| {
                let waves = c.resolve(policies.iter().copied()).ok()?;
                Some(LoadedCampaign {
                    campaign: Arc::new(c),
                    waves,
                })
            })
            .collect();
        let names: Vec<String> = self
            .campaigns
            .iter()
            .map(|c| c.campaign.name.clone())
            .collect();
        status.retain_campaigns(&names);
    }
}

/// How long one look at every campaign may take before the loop goes on without it.
const CAMPAIGN_LOOK_BOUND: Duration = Duration::from_secs(10);

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
    let mut shell = Shell::new(&config)?;
    let fresh_for = health_fresh_for(opts.tick);
    shell.status = Arc::new(LiveStatus::new(shell.env.backend, fresh_for));
    let shell = Arc::new(shell);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let mut policies = Policies::default();
    policies.reload(&config, &shell.telemetry, &shell.status, &shell.breaker);
    if opts.once && policies.by_api.is_empty() && policies.errors > 0 {
        let report = config.load_policies();
        return Err(DaemonError::Policies(report.errors));
    }

    if opts.serve && !opts.once {
        let console = super::console::console(
            &config,
            shell.env.store.clone(),
            shell.audit_log(),
            shell.status.clone(),
        )
        .map_err(DaemonError::Config)?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        tracing::info!(
            listen = %config.listen,
            sign_in = console.auth.configured(),
            "Serving /metrics, /healthz, /readyz, the console and /api/v1."
        );
        let status: Arc<dyn crate::server::StatusSource> = shell.status.clone();
        let router = crate::server::router_with(shell.telemetry.clone(), status, Arc::new(console));
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::server::serve_router(listener, router, stop).await {
                tracing::error!(error = %e, "HTTP server failed.");
            }
        });
    }

    if !opts.once {
        let leader_key = shell.env.store.leader_key();
        spawn_health(shell.clone(), leader_key, opts.tick, stop_rx.clone());
    }

    // Deliver whatever a previous run left in the local outbox (the shared one waits for the
    // lock).
    shell.env.flush(None).await;

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
                        shell.status.set_consul(Probe::failed(Instant::now(), e.to_string()));
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                },
            }
        };
        shell.telemetry.leader(true);
        shell
            .status
            .set_leading(Some(&lock.fence().session), Instant::now());
        tracing::info!(instance = %opts.instance, "Leading: evaluating policies.");
        let fence = lock.fence().clone();
        let mut evals = Evaluations::new(shell.clone(), fence.clone(), concurrency.clone());
        // One tick per `opts.tick` however often evaluations finish (a sleep made anew in each
        // turn of the loop would be put off by every finished evaluation).
        let mut tick = tokio::time::interval(opts.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        // The breakers first: a restarted leader holds what a tripped breaker holds before it
        // evaluates anything.
        look_breakers(&shell, &fence, &config, &policies).await;
        look_all(&shell, &fence, &policies.campaigns, &policies.by_api).await;
        let outcome = loop {
            if !lock.is_held() {
                break Ok(());
            }
            evals.start_due(&policies, opts.once);
            if opts.once {
                while evals.in_flight() > 0 {
                    evals.finished().await;
                }
                flush_alerts(&shell, &fence).await;
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
                    policies.reload(&config, &shell.telemetry, &shell.status, &shell.breaker);
                }
                _ = tick.tick() => {
                    if dir_stamp(&config.policies_dir) != policies.stamp {
                        policies.reload(&config, &shell.telemetry, &shell.status, &shell.breaker);
                    } else if dir_stamp(&config.campaigns_dir) != policies.campaign_stamp {
                        policies.reload_campaigns(&config, &shell.status);
                    }
                    look_breakers(&shell, &fence, &config, &policies).await;
                    if tokio::time::timeout(
                        CAMPAIGN_LOOK_BOUND,
                        look_all(&shell, &fence, &policies.campaigns, &policies.by_api),
                    )
                    .await
                    .is_err()
                    {
                        tracing::warn!("Looking at the campaigns did not finish in time; trying again next tick.");
                    }
                    flush_alerts(&shell, &fence).await;
                    shell.telemetry.outbox_depth(shell.env.outbox_depth());
                }
            }
        };
        // Evaluations still running were started under the lock that is gone: stop them (a
        // stopped evaluation is a crash the next leader recovers from).
        evals.abort();
        shell.telemetry.leader(false);
        shell.status.set_leading(None, Instant::now());
        if let Err(e) = lock.release().await {
            tracing::debug!(error = %e, "Releasing the leader lock failed (it expires with its session).");
        }
        if opts.once || *stop_rx.borrow() || outcome.is_err() {
            tracing::info!("Stopped.");
            return outcome;
        }
    }
}

/// One look at every cluster breaker, bounded like the campaigns' look.
async fn look_breakers(shell: &Shell, fence: &Fence, config: &Config, policies: &Policies) {
    let channels = config
        .breaker
        .alerts
        .clone()
        .unwrap_or_else(|| config.channel_names());
    let look =
        super::breakers::look_all(shell, fence, &config.breaker, &channels, &policies.by_api);
    if tokio::time::timeout(CAMPAIGN_LOOK_BOUND, look)
        .await
        .is_err()
    {
        tracing::warn!(
            "Looking at the cluster breakers did not finish in time; trying again next tick."
        );
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

/// Delivers what is due in both outboxes (the shared one as the holder of `fence`) and counts
/// each delivery attempt of the shared one per channel.
async fn flush_alerts(shell: &Shell, fence: &Fence) {
    let report = shell.env.flush(Some(fence)).await;
    for (channel, ok) in &report.attempts {
        shell.telemetry.alert_delivery(channel, *ok);
    }
}

/// How long a probe or a confirmation of leadership counts: five ticks, at least 5 s.
fn health_fresh_for(tick: Duration) -> Duration {
    (tick * 5).max(Duration::from_secs(5))
}

/// Probes Consul (reading the leader key, which confirms a held lock) and the metrics backend
/// every `tick`, each bounded by half the freshness period, and publishes the assessment to
/// `/readyz` and `/metrics`. Logs when readiness changes.
fn spawn_health(
    shell: Arc<Shell>,
    leader_key: String,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let bound = health_fresh_for(tick) / 2;
        let client = shell.env.store.client().clone();
        let mut was_ready: Option<bool> = None;
        loop {
            let at = shell.env.now();
            let (consul, metrics) = tokio::join!(
                tokio::time::timeout(bound, client.get(&leader_key)),
                tokio::time::timeout(bound, shell.env.metrics.instant("vector(1)", at)),
            );
            let now = Instant::now();
            let no_answer = || format!("no answer within {}s", bound.as_secs_f64());
            match consul {
                Ok(Ok(entry)) => {
                    shell.status.set_consul(Probe::ok(now));
                    let holder = entry.and_then(|e| e.session);
                    if let (Some(mine), Some(holder)) = (shell.status.leading_session(), holder) {
                        if mine == holder {
                            shell.status.confirm_leader(&mine, now);
                        }
                    }
                }
                Ok(Err(e)) => shell.status.set_consul(Probe::failed(now, e.to_string())),
                Err(_) => shell.status.set_consul(Probe::failed(now, no_answer())),
            }
            shell.status.set_metrics(match metrics {
                Ok(Ok(_)) => Probe::ok(now),
                Ok(Err(e)) => Probe::failed(now, e.to_string()),
                Err(_) => Probe::failed(now, no_answer()),
            });
            let a = shell.status.assess(now);
            shell.telemetry.health(shell.env.backend, &a);
            if was_ready != Some(a.ready) {
                if a.ready {
                    tracing::info!("Ready: Consul and the metrics backend answer.");
                } else {
                    tracing::warn!(problems = %a.problems.join("; "), "Not ready.");
                }
                was_ready = Some(a.ready);
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    });
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
