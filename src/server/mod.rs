//! The progressor's own read-only HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and the
//! rollout status API (`/api/v1/rollouts`).
//!
//! The server owns no data. The daemon records events in a shared [`Telemetry`] and exposes its
//! rollouts through a [`StatusSource`]; [`StaticStatus`] is the in-memory source used by tests.
//! Status views are built from a policy and a rollout state only ([`RolloutView::from_state`]),
//! never from the daemon configuration, so no credential can reach a response.

pub mod breaker_view;
mod campaign_metrics;
pub mod campaign_view;
pub mod console;
pub mod logging;
pub mod sticky_view;
pub mod telemetry;

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::{Action, DecisionRecord, Intent, Pair, Phase, Releases, RolloutState};
use crate::policy::{Policy, Weights};

pub use breaker_view::BreakerView;
pub use campaign_view::CampaignView;
pub use console::Console;
pub use logging::{init_logging, log_decision, LogInitError};
pub use sticky_view::{sticky_view, StickyView, SubsetView};
pub use telemetry::{QueryErrorKind, Telemetry};

/// Where the server reads rollouts and readiness from (implemented by the daemon).
pub trait StatusSource: Send + Sync + 'static {
    /// Every rollout the source knows about, in a stable order.
    fn rollouts(&self) -> Vec<RolloutView>;
    /// `Ok` when the progressor is ready to act (policies loaded, stores reachable); otherwise
    /// why not, in one sentence.
    fn ready(&self) -> Result<(), String>;
    /// Every rollout without its decision history (what the console's overview shows).
    fn summaries(&self) -> Vec<RolloutView> {
        self.rollouts()
            .into_iter()
            .map(|mut v| {
                v.history.clear();
                v
            })
            .collect()
    }
    /// One API's rollout.
    fn rollout(&self, api: &str) -> Option<RolloutView> {
        self.rollouts().into_iter().find(|v| v.api == api)
    }
    /// The loaded policies (their `owners`, `viewers` and `approvers` decide who sees what).
    fn policies(&self) -> Vec<Arc<Policy>> {
        Vec::new()
    }
    /// The campaigns, as the leader last planned them.
    fn campaigns(&self) -> Vec<CampaignView> {
        Vec::new()
    }
    /// The cluster breakers, as the leader last looked at them.
    fn breakers(&self) -> Vec<BreakerView> {
        Vec::new()
    }
}

/// One API's rollout as shown by the status API and `greenlight status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub api: String,
    pub phase: Phase,
    /// Index into `steps`.
    pub step: usize,
    /// The policy's steps, percent of traffic to green.
    pub steps: Vec<f64>,
    /// Green's share of `weights`, percent.
    pub green_percent: f64,
    /// Weights greenlight last decided on.
    pub weights: Weights,
    /// Set while a weight change is decided but not yet confirmed: the weights before it.
    pub applying_from: Option<Weights>,
    /// Why the rollout is paused or rolled back.
    pub reason: Option<String>,
    pub last_decision: Option<LastDecision>,
    /// Evidence per statistical stream.
    pub evidence: Vec<StreamEvidence>,
    /// Operator request waiting for the next evaluation.
    pub intent_pending: Option<Intent>,
    /// Since when the rollout is where it is: the start of the current step while progressing,
    /// otherwise when it was rolled back, promoted, paused or (pending) last changed.
    pub since: Option<Timestamp>,
    pub rollout_started_at: Option<Timestamp>,
    /// End of the last window whose metrics were all usable.
    pub last_good_data_at: Option<Timestamp>,
    /// Set while paused (by an operator or after a manual weight change).
    pub paused: Option<PauseInfo>,
    /// Number of decisions taken so far.
    pub revision: u64,
    /// Most recent decisions, newest last.
    pub history: Vec<DecisionRecord>,
    /// Alerts raised and not resolved yet (metrics unavailable, stuck, rollback not applied).
    #[serde(default)]
    pub open_alerts: Vec<String>,
    /// The ModifyIndex of the stored state this view shows, when read from Consul: send it as
    /// `expected_revision` with an action, so that a stale view changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_index: Option<u64>,
    /// Set while the rollout waits for a human to approve its next step.
    #[serde(default)]
    pub awaiting_approval: Option<ApprovalView>,
    /// Who started the rollout (absent: started automatically, or not recorded).
    #[serde(default)]
    pub started_by: Option<String>,
    /// Sticky mode: green's share of users and the named subsets (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyView>,
    /// Which colour is stable, which is the candidate, and their releases.
    #[serde(default)]
    pub releases: Releases,
}

/// A gate the rollout waits at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Index of the gated step (the one after the current step) and its share of green.
    pub step: usize,
    pub percent: f64,
    pub since: Timestamp,
    /// `approval_timeout` has passed (the rollout waits on: `on_approval_timeout = "hold"`).
    pub timed_out: bool,
    /// The approval recorded for it, applied at the next evaluation.
    pub approved_by: Option<String>,
}

/// The most recent decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastDecision {
    pub action: Action,
    pub reason: String,
    pub at: Timestamp,
}

/// Evidence of one stream against its thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEvidence {
    /// `check` or `check@edge`.
    pub stream: String,
    pub check: String,
    pub edge: Option<f64>,
    /// ln of the evidence that green is worse (finite however strong it gets); a rollback once
    /// it reaches ln(`rollback_threshold`).
    pub rollback_log_e: f64,
    /// 1/α, an e-value (not its logarithm).
    pub rollback_threshold: f64,
    /// ln of the evidence gathered at the current step that green is no worse (it restarts at
    /// every step); advancing needs ln(`advance_threshold`).
    pub advance_log_e: f64,
    /// An e-value (not its logarithm).
    pub advance_threshold: f64,
    /// Counts at the current step and over the rollout (warm-up excluded).
    pub step: Pair,
    pub total: Pair,
}

/// Why and since when a rollout is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseInfo {
    pub reason: Option<String>,
    /// Time of the pause decision, when it is still in the history.
    pub since: Option<Timestamp>,
}

impl RolloutView {
    /// The colour the rollout moves traffic onto.
    pub fn candidate(&self) -> crate::policy::Colour {
        self.releases.candidate()
    }

    /// `stable blue (release a), candidate green (release b)`, for status lines and pages.
    pub fn releases_text(&self) -> String {
        let r = &self.releases;
        let of = |c| crate::engine::release_suffix(r.release_of(c));
        format!(
            "stable {}{}, candidate {}{}",
            r.stable,
            of(r.stable),
            r.candidate(),
            of(r.candidate())
        )
    }

    /// This view without its decision history, cloned without copying the history.
    pub fn summary(&self) -> RolloutView {
        RolloutView {
            api: self.api.clone(),
            phase: self.phase,
            step: self.step,
            steps: self.steps.clone(),
            green_percent: self.green_percent,
            weights: self.weights,
            applying_from: self.applying_from,
            reason: self.reason.clone(),
            last_decision: self.last_decision.clone(),
            evidence: self.evidence.clone(),
            intent_pending: self.intent_pending.clone(),
            since: self.since,
            rollout_started_at: self.rollout_started_at,
            last_good_data_at: self.last_good_data_at,
            paused: self.paused.clone(),
            revision: self.revision,
            history: Vec::new(),
            open_alerts: self.open_alerts.clone(),
            state_index: self.state_index,
            awaiting_approval: self.awaiting_approval.clone(),
            started_by: self.started_by.clone(),
            sticky: self.sticky.clone(),
            releases: self.releases.clone(),
        }
    }

    /// The view of `state` under `policy`. Takes nothing else: queries, traffic keys, channel
    /// settings and credentials are not part of a view.
    pub fn from_state(policy: &Policy, state: &RolloutState) -> RolloutView {
        let rollback_threshold = 1.0 / policy.alpha_per_stream();
        let advance_threshold = 1.0 / policy.advance_alpha_per_step();
        let evidence = state
            .streams
            .iter()
            .map(|s| StreamEvidence {
                stream: s.id.clone(),
                check: s.check.clone(),
                edge: s.edge,
                rollback_log_e: s.rollback_log_e(),
                rollback_threshold,
                advance_log_e: s.advance_log_e(),
                advance_threshold,
                step: s.step,
                total: s.total,
            })
            .collect();
        let paused = (state.phase == Phase::Paused).then(|| PauseInfo {
            reason: state.reason.clone(),
            since: state.phase_since.or_else(|| {
                state
                    .last_decision
                    .as_ref()
                    .filter(|r| r.action == Action::Pause)
                    .map(|r| r.at)
            }),
        });
        RolloutView {
            api: state.api.clone(),
            phase: state.phase,
            step: state.step,
            steps: policy.steps.clone(),
            green_percent: telemetry::green_share(state.weights),
            weights: state.weights,
            applying_from: state.applying_from,
            reason: state.reason.clone(),
            last_decision: state.last_decision.as_ref().map(|r| LastDecision {
                action: r.action,
                reason: r.reason.clone(),
                at: r.at,
            }),
            evidence,
            intent_pending: state.intent.clone(),
            since: since(state),
            rollout_started_at: state.rollout_started_at,
            last_good_data_at: state.last_good_data_at,
            paused,
            revision: state.revision,
            // Read from the store on demand (see `ConsoleBackend::history`).
            history: Vec::new(),
            open_alerts: open_alerts(state),
            state_index: None,
            awaiting_approval: state.awaiting_approval.as_ref().map(|g| ApprovalView {
                step: g.step,
                percent: policy.steps.get(g.step).copied().unwrap_or(100.0),
                since: g.since,
                timed_out: g.timed_out,
                approved_by: state
                    .approval
                    .as_ref()
                    .filter(|a| a.step == g.step)
                    .map(|a| a.by.clone()),
            }),
            started_by: state.started_by.clone(),
            sticky: sticky_view(policy, state.weights),
            releases: state.releases.clone(),
        }
    }
}

fn open_alerts(state: &RolloutState) -> Vec<String> {
    let mut alerts = Vec::new();
    if state.rollback_unapplied {
        alerts.push("rollback not applied".to_string());
    }
    if state.no_data_alerted {
        alerts.push("metrics unavailable".to_string());
    }
    if state.stuck_alerted {
        alerts.push("stuck at its step".to_string());
    }
    alerts
}

/// When `state` got where it is (see [`RolloutView::since`]). States written before the phase
/// change was recorded fall back to the decision that made it, while it is in the history.
fn since(state: &RolloutState) -> Option<Timestamp> {
    let action = match state.phase {
        Phase::Progressing | Phase::Baking => return state.step_started_at,
        Phase::Pending => return state.phase_since,
        Phase::RolledBack => Action::Rollback,
        Phase::Promoted => Action::Promote,
        Phase::Paused => Action::Pause,
    };
    state.phase_since.or_else(|| {
        state
            .last_decision
            .as_ref()
            .filter(|r| r.action == action)
            .map(|r| r.at)
    })
}

/// An in-memory [`StatusSource`]: a fixed list of views and a readiness answer, both settable.
#[derive(Debug)]
pub struct StaticStatus {
    views: Mutex<Vec<RolloutView>>,
    ready: Mutex<Result<(), String>>,
    policies: Mutex<Vec<Arc<Policy>>>,
}

impl StaticStatus {
    /// A source serving `views`, not ready until [`StaticStatus::set_ready`] says so.
    pub fn new(views: Vec<RolloutView>) -> StaticStatus {
        StaticStatus {
            views: Mutex::new(views),
            ready: Mutex::new(Err("starting".into())),
            policies: Mutex::new(Vec::new()),
        }
    }

    pub fn set_views(&self, views: Vec<RolloutView>) {
        *lock(&self.views) = views;
    }

    pub fn set_ready(&self, ready: Result<(), String>) {
        *lock(&self.ready) = ready;
    }

    pub fn set_policies(&self, policies: Vec<Arc<Policy>>) {
        *lock(&self.policies) = policies;
    }
}

impl StatusSource for StaticStatus {
    fn rollouts(&self) -> Vec<RolloutView> {
        lock(&self.views).clone()
    }

    fn ready(&self) -> Result<(), String> {
        lock(&self.ready).clone()
    }

    fn rollout(&self, api: &str) -> Option<RolloutView> {
        lock(&self.views).iter().find(|v| v.api == api).cloned()
    }

    fn summaries(&self) -> Vec<RolloutView> {
        lock(&self.views).iter().map(RolloutView::summary).collect()
    }

    fn policies(&self) -> Vec<Arc<Policy>> {
        lock(&self.policies).clone()
    }
}

#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    status: Arc<dyn StatusSource>,
    console: Arc<Console>,
}

/// Body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The routes of a read-only console without sign-in, for embedding or testing without a
/// socket.
pub fn router(telemetry: Arc<Telemetry>, status: Arc<dyn StatusSource>) -> Router {
    router_with(telemetry, status, Arc::new(Console::read_only()))
}

/// Every route: metrics, health, the JSON API and the console pages.
pub fn router_with(
    telemetry: Arc<Telemetry>,
    status: Arc<dyn StatusSource>,
    console: Arc<Console>,
) -> Router {
    let state = AppState {
        telemetry,
        status,
        console,
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(console::openapi))
        .route("/api/v1/me", get(console::me))
        .route("/api/v1/rollouts", get(console::rollouts))
        .route("/api/v1/rollouts/{api}", get(console::rollout))
        .route("/api/v1/rollouts/{api}/audit", get(console::audit))
        .route(
            "/api/v1/rollouts/{api}/actions",
            post(console::act).layer(DefaultBodyLimit::max(console::MAX_BODY_BYTES)),
        )
        .route("/api/v1/campaigns", get(console::campaigns))
        .route("/api/v1/breakers", get(console::breakers))
        .route("/campaigns", get(console::campaigns_html))
        .route("/", get(console::overview))
        .route("/apis/{api}", get(console::api_html))
        .route("/assets/{name}", get(console::asset))
        .route(
            "/signin",
            get(console::signin_page)
                .post(console::signin)
                .layer(DefaultBodyLimit::max(console::MAX_BODY_BYTES)),
        )
        .route(
            "/signout",
            post(console::signout).layer(DefaultBodyLimit::max(console::MAX_BODY_BYTES)),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            console::identify,
        ))
        .with_state(state)
}

/// Serves the read-only endpoints on `listener` until `shutdown` completes, then finishes the
/// requests in flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
    status: Arc<dyn StatusSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_router(listener, router(telemetry, status), shutdown).await
}

/// Serves `router` on `listener` (with each connection's peer address, which decides whether
/// sign-in proxy headers count) until `shutdown` completes.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::ListenerExt;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "Serving metrics, status and the console over HTTP.");
    // Without TCP_NODELAY a page sent in several writes waits for delayed ACKs (40 ms each).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    tracing::info!(%addr, "Stopped the HTTP server.");
    Ok(())
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        app.telemetry.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(app): State<AppState>) -> Response {
    match app.status.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint".to_string())
}

fn error(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{decide, Observation};

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_767_571_200 + minute * 60).unwrap()
    }

    fn empty(minute: i64) -> Observation {
        Observation {
            start: t(minute - 1),
            end: t(minute),
            checks: Vec::new(),
        }
    }

    #[test]
    fn a_pending_pause_shows_as_intent_then_as_paused() {
        let policy = crate::engine::tests::policy();
        let started = decide(&policy, &RolloutState::new(&policy), &empty(1), t(1)).state;
        let view = RolloutView::from_state(&policy, &started);
        assert_eq!(view.phase, Phase::Progressing);
        assert_eq!(view.green_percent, 5.0);
        assert_eq!(view.since, Some(t(1)));
        assert!(view.paused.is_none());

        let mut asked = started.clone();
        asked.intent = Some(Intent::Pause {
            reason: "weights changed by hand".into(),
        });
        let view = RolloutView::from_state(&policy, &asked);
        assert_eq!(view.intent_pending, asked.intent);
        assert!(view.paused.is_none());

        let paused = decide(&policy, &asked, &empty(2), t(2)).state;
        let view = RolloutView::from_state(&policy, &paused);
        assert_eq!(view.phase, Phase::Paused);
        assert_eq!(view.intent_pending, None);
        let info = view.paused.unwrap();
        assert_eq!(info.reason.as_deref(), Some("weights changed by hand"));
        assert_eq!(info.since, Some(t(2)));
        assert_eq!(view.green_percent, 5.0);
        let last = view.last_decision.unwrap();
        assert_eq!((last.action, last.at), (Action::Pause, t(2)));
    }

    #[test]
    fn a_fresh_rollout_has_no_green_traffic_and_neutral_evidence() {
        let policy = crate::engine::tests::policy();
        let view = RolloutView::from_state(&policy, &RolloutState::new(&policy));
        assert_eq!(view.phase, Phase::Pending);
        assert_eq!(view.green_percent, 0.0);
        assert!(view.last_decision.is_none());
        let ids: Vec<&str> = view.evidence.iter().map(|e| e.stream.as_str()).collect();
        assert_eq!(ids, ["errors", "latency@0.25", "latency@1"]);
        for e in &view.evidence {
            // E = 1: ln E = 0, up to rounding.
            assert!(e.rollback_log_e.abs() < 1e-12 && e.advance_log_e.abs() < 1e-12);
            // α = 0.01 and 0.05 split over three streams.
            assert!((e.rollback_threshold - 300.0).abs() < 1e-9);
            assert!((e.advance_threshold - 60.0).abs() < 1e-9);
        }
    }

    #[test]
    fn since_of_a_rolled_back_api_is_when_it_was_rolled_back() {
        let policy = crate::engine::tests::policy();
        let mut state = decide(&policy, &RolloutState::new(&policy), &empty(1), t(1)).state;
        state.intent = Some(Intent::Rollback {
            reason: "bad deploy".into(),
        });
        state = decide(&policy, &state, &empty(5), t(5)).state;
        assert_eq!(state.phase, Phase::RolledBack);
        // Long after: the rollback has left the history, the time stays.
        for m in 6..200 {
            state = decide(&policy, &state, &empty(m), t(m)).state;
        }
        assert!(state
            .last_decision
            .as_ref()
            .is_some_and(|r| r.action != Action::Rollback));
        let view = RolloutView::from_state(&policy, &state);
        assert_eq!(view.since, Some(t(5)));
        assert_eq!(view.rollout_started_at, Some(t(1)));
        // A state written before the phase time was kept: the rollback record, while there.
        let mut old = decide(&policy, &RolloutState::new(&policy), &empty(1), t(1)).state;
        old.intent = Some(Intent::Rollback {
            reason: "bad deploy".into(),
        });
        old = decide(&policy, &old, &empty(7), t(7)).state;
        old.phase_since = None;
        assert_eq!(RolloutView::from_state(&policy, &old).since, Some(t(7)));
    }
}
