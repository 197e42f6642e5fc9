//! One evaluation of one API: read the state and live weights, reconcile, observe, decide,
//! persist with its alerts, write the weights.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::Mutex;

use super::env::{self, Env, RealEnv};
use super::plan::{self, LivePlan, WindowKind, WindowPlan};
use super::status::LiveStatus;
use super::store::StoreError;
use super::{alerts, real_env, DaemonError};
use crate::alert::{AlertEvent, OutboxEntry};
use crate::consul::Fence;
use crate::engine::{decide, with_discovered_release, Intent, Observation, Phase, RolloutState};
use crate::metrics::window::aligned_end;
use crate::policy::{Config, Policy, Weights};
use crate::server::logging::log_decision;
use crate::server::telemetry::Telemetry;
use crate::traffic::{ConsulKv, LiveEntries, TrafficError};

/// The shell: evaluates one API at a time through its [`Env`], keeping only telemetry and the
/// alerts it raised in memory (everything that matters is in the store).
pub struct Shell<E: Env = RealEnv> {
    pub env: E,
    /// Windows end this long before the evaluation time (the backend's ingestion delay).
    pub(super) latency_offset: Duration,
    pub telemetry: Arc<Telemetry>,
    pub status: Arc<LiveStatus>,
    /// The cluster breakers' view of every API, and which clusters are tripped.
    pub breaker: Arc<super::breakers::BreakerBook>,
    /// Internal-error alerts already raised by this process (api, what).
    raised: Mutex<HashSet<(String, String)>>,
    /// The console's public URL (`[console] public_url`), for links in alerts.
    pub(super) console_url: Option<String>,
}

impl Shell<RealEnv> {
    /// The audit trail for actions taken through this daemon (the console): its Consul prefix,
    /// its alert outbox, its `/metrics`.
    pub fn audit_log(&self) -> crate::audit::AuditLog {
        self.env.audit_log().with_telemetry(self.telemetry.clone())
    }

    /// Connects the parts described by `config` (no network traffic yet).
    pub fn new(config: &Config) -> Result<Self, DaemonError> {
        let mut shell = Shell::with_env(real_env(config)?, config.metrics.latency_offset)
            .with_console_url(config.console.public_url.clone());
        shell.breaker = Arc::new(super::breakers::BreakerBook::new(config.breaker.on_trip));
        Ok(shell)
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
            breaker: Arc::new(Default::default()),
            raised: Mutex::new(HashSet::new()),
            console_url: None,
        }
    }

    /// Links alerts to the console pages under `url` (its public URL).
    pub fn with_console_url(mut self, url: Option<String>) -> Self {
        self.console_url = url;
        self
    }

    /// Publishes `state` as `policy`'s API's latest: for status and for the cluster breakers.
    fn observed(&self, policy: &Policy, state: &RolloutState) {
        self.status.update(policy, state);
        self.breaker.record(policy, state);
    }

    /// Sends `event` through the local outbox (alerts not tied to a state write).
    async fn alert(&self, policy: &Policy, event: &AlertEvent) {
        self.notify_local(policy, event, policy.alert_channels(event.kind.as_str()))
            .await;
    }

    async fn notify_local(&self, policy: &Policy, event: &AlertEvent, channels: &[String]) {
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

    /// Saves `state` with the alerts it raises in one transaction (the shared outbox): the
    /// alerts exist if and only if the state was written. Alerts that do not fit the
    /// transaction go to the local outbox; waiting alerts dropped to make room are logged and
    /// counted.
    async fn save_alerting(
        &self,
        policy: &Policy,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
        events: &[AlertEvent],
    ) -> Result<u64, StoreError> {
        let now = self.env.now();
        let entries: Vec<OutboxEntry> = events
            .iter()
            .flat_map(|event| {
                policy
                    .alert_channels(event.kind.as_str())
                    .iter()
                    .map(move |channel| OutboxEntry::new(channel, event, now))
            })
            .collect();
        let saved = self
            .env
            .save_with_alerts(state, index, fence, entries)
            .await?;
        for key in &saved.dropped {
            self.telemetry.shell_event(&policy.api, "alert_dropped");
            tracing::warn!(api = %policy.api, %key, "The shared alert outbox is full; dropped its oldest alert.");
        }
        for entry in saved.spilled {
            tracing::warn!(api = %policy.api, key = %entry.event.key, channel = %entry.channel, "An alert does not fit the state transaction; keeping it in the local outbox.");
            self.notify_local(policy, &entry.event, std::slice::from_ref(&entry.channel))
                .await;
        }
        Ok(saved.index)
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
        let (mut state, mut index, prefetched) = match self.env.load_live(policy).await {
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
        let mut nodes_down = false;
        let live = match self.read_live(policy, &state, prefetched).await {
            Ok(w) => w,
            Err(TrafficError::Missing { keys }) => {
                tracing::info!(api = %policy.api, keys = ?keys, "Creating the missing weight keys.");
                self.env.init_weights(policy, state.weights).await?;
                self.env.read_weights(policy, None).await?
            }
            // Sticky mode: the rollout's salt is not live somewhere, and the split is not
            // greenlight's either: reconcile decides on the split (a hand edit pauses). When
            // the split is greenlight's, the salt is set again below.
            Err(TrafficError::StaleSalt { found, places })
                if found != from && found != state.weights =>
            {
                tracing::warn!(api = %policy.api, places = ?places, "The rollout's salt is not live, and the split is not greenlight's; deciding on what is live.");
                found
            }
            // HAProxy nodes reloaded at their configured weights, a write that reached only
            // some nodes, or (sticky mode) the rollout's salt not live: finish greenlight's own
            // change everywhere.
            Err(e) if e.finishable(from, state.weights) => {
                tracing::warn!(api = %policy.api, error = %e, "Re-applying greenlight's weights (HAProxy reload, partial write, or the rollout's salt not live).");
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
                nodes_down = true;
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
        match plan::reconcile_live_partial(&state, live, nodes_down) {
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

        // A progressing (or baking) rollout needs the window's data, and so does an automatic start (it
        // waits for usable metrics); an operator intent is decided without it. Anything else
        // (paused, promoted, rolled back, waiting for `start`) has nothing to decide until an
        // intent arrives.
        let needs_data = state.intent.is_none()
            && (state.phase.evaluates_windows()
                || (state.phase == Phase::Pending && policy.auto_start));
        let wants_decision = state.intent.is_some() || needs_data;
        if !wants_decision {
            self.observed(policy, &state);
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
                self.observed(policy, &state);
                return Ok(Some(end));
            }
        }
        let obs = if needs_data {
            let t = Instant::now();
            let obs = self
                .env
                .observe(policy, (window.start, window.end), state.roles())
                .await;
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

        // A start without a release id takes the one the candidate reports, when the policy
        // says where to read it.
        if let (Some(Intent::Start { request }), Some(_)) = (&state.intent, &policy.release_query) {
            if request.release.is_none() {
                let found = self
                    .env
                    .candidate_release(policy, state.candidate(), now)
                    .await;
                let (request, problem) = with_discovered_release(request.clone(), found);
                if let Some(why) = problem {
                    tracing::warn!(api = %policy.api, %why, "Starting without a release id: the candidate's could not be read.");
                }
                state.intent = Some(Intent::Start { request });
            }
        }
        // A tripped cluster breaker holds (or rolls back) every rollout onto its cluster.
        state.held = self.breaker.hold_for(policy, &state);
        let d = decide(policy, &state, &obs, now);
        // The decision and its alerts are written together: a decision that is not persisted
        // raises nothing (it is decided again), a persisted one never loses its alert, whatever
        // becomes of this instance.
        let events = alerts::for_decision(
            policy,
            &state,
            &d,
            self.env.ui(),
            self.console_url.as_deref(),
        );
        let before = state.weights;
        let mut next = d.state.clone();
        index = self
            .save_alerting(policy, &next, index, fence, &events)
            .await?;
        // Stored with it: later writes of this state do not write them again.
        next.new_records.clear();
        next.legacy_history.clear();
        log_decision(&policy.api, &d);
        self.telemetry.decision(&policy.api, &d);
        if d.set_weights.is_some() {
            self.apply(policy, &mut next, &mut index, before, fence, now)
                .await?;
        }
        self.observed(policy, &next);
        self.clear_internal_errors(&policy.api).await;
        // After an intent the window is still to be counted: come back at the next tick.
        Ok(if obs.checks.is_empty() && next.phase.evaluates_windows() {
            None
        } else {
            Some(end)
        })
    }

    /// The live split, from the entries read with the state when there are some; in sticky
    /// mode checked against the rollout's salt too.
    async fn read_live(
        &self,
        policy: &Policy,
        state: &RolloutState,
        prefetched: Option<LiveEntries>,
    ) -> Result<Weights, TrafficError> {
        let salt = rollout_salt(policy, state);
        if let Some(live) = prefetched {
            return ConsulKv::split_of(policy, &live, salt.as_deref());
        }
        match salt {
            Some(salt) => {
                self.env
                    .read_split(policy, state.weights_confirmed_at, &salt)
                    .await
            }
            None => {
                self.env
                    .read_weights(policy, state.weights_confirmed_at)
                    .await
            }
        }
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
        let written = match rollout_salt(policy, state) {
            Some(salt) => self.env.write_split(policy, from, to, &salt, fence).await,
            None => self.env.write_weights(policy, from, to, fence).await,
        };
        match written {
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
        state.rollback_unapplied = true;
        match self
            .save_alerting(policy, state, *index, fence, std::slice::from_ref(&e))
            .await
        {
            Ok(i) => *index = i,
            Err(error) => {
                // The alert must get out all the same: through the local outbox.
                tracing::warn!(api = %policy.api, %error, "Could not mark the rollback as not applied; alerting from this instance.");
                state.rollback_unapplied = false;
                self.alert(policy, &e).await;
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
        state.rollback_unapplied = false;
        *index = self
            .save_alerting(policy, state, *index, fence, std::slice::from_ref(&e))
            .await?;
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
        *index = self
            .save_alerting(policy, state, *index, fence, std::slice::from_ref(&event))
            .await?;
        self.observed(policy, state);
        self.telemetry.rollout(&policy.api, state);
        Ok(())
    }
}

/// The salt of the current rollout of a sticky-mode policy (`None` in weighted mode).
fn rollout_salt(policy: &Policy, state: &RolloutState) -> Option<String> {
    policy
        .traffic
        .sticky
        .as_ref()
        .map(|_| crate::traffic::sticky_maps::rollout_salt(&policy.api, state.rollout_started_at))
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
    pub(super) fn lock_lost(&self) -> bool {
        matches!(
            self,
            EvalError::Store(StoreError::LockLost { .. })
                | EvalError::Traffic(TrafficError::LockLost)
        )
    }
}
