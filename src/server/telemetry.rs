//! greenlight's own Prometheus metrics: names, bounded label sets, one function per event.
//!
//! Labels are limited to values bounded by configuration (API names from the policy set, stream
//! ids from the checks, backend kinds, channel names) or by the code (phases, actions, error
//! kinds). Reason texts, query texts and windows are never labels.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{Action, Decision, Phase, RolloutState};
use crate::policy::Weights;

/// `Content-Type` of [`Telemetry::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

// Exported metric names. Counters end in `_total` as exposed; they are registered without it
// because the encoder appends it.
pub const GREEN_WEIGHT: &str = "greenlight_green_weight";
pub const GREEN_PERCENT: &str = "greenlight_green_percent";
pub const PHASE: &str = "greenlight_phase";
pub const STEP: &str = "greenlight_step";
pub const DECISIONS_TOTAL: &str = "greenlight_decisions_total";
pub const EVIDENCE: &str = "greenlight_log_evidence";
pub const QUERY_DURATION_SECONDS: &str = "greenlight_query_duration_seconds";
pub const QUERY_ERRORS_TOTAL: &str = "greenlight_query_errors_total";
pub const LAST_EVALUATION_TIMESTAMP_SECONDS: &str =
    "greenlight_last_successful_evaluation_timestamp_seconds";
pub const ALERT_DELIVERIES_TOTAL: &str = "greenlight_alert_deliveries_total";
pub const ALERT_FAILURES_TOTAL: &str = "greenlight_alert_failures_total";
pub const OUTBOX_DEPTH: &str = "greenlight_alert_outbox_depth";
pub const LEADER: &str = "greenlight_leader";
pub const READY: &str = "greenlight_ready";
pub const BACKEND_UP: &str = "greenlight_backend_up";
pub const WEIGHT_WRITES_TOTAL: &str = "greenlight_weight_writes_total";
pub const MANUAL_OVERRIDES_TOTAL: &str = "greenlight_manual_overrides_total";
pub const POLICIES_LOADED: &str = "greenlight_policies_loaded";
pub const POLICY_LOAD_ERRORS: &str = "greenlight_policy_load_errors";
pub const SHELL_EVENTS_TOTAL: &str = "greenlight_shell_events_total";
pub const AWAITING_APPROVAL: &str = "greenlight_awaiting_approval";
pub const AUDIT_ENTRIES_TOTAL: &str = "greenlight_audit_entries_total";
pub const RELEASE: &str = "greenlight_release";

/// Upper bounds of the query duration histogram, seconds.
const QUERY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every phase, so that exactly one of an API's phase series is 1.
const PHASES: [Phase; 6] = [
    Phase::Pending,
    Phase::Progressing,
    Phase::Paused,
    Phase::Baking,
    Phase::Promoted,
    Phase::RolledBack,
];

/// Every action, so that [`Telemetry::forget`] can remove an API's decision counters.
const ACTIONS: [Action; 7] = [
    Action::Hold,
    Action::Start,
    Action::Advance,
    Action::Promote,
    Action::Rollback,
    Action::Pause,
    Action::Resume,
];

const WRITE_RESULTS: [&str; 2] = ["ok", "error"];

/// Why a metrics query failed, as a bounded label value (`kind` of [`QUERY_ERRORS_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryErrorKind {
    /// The backend rejected the query text.
    Syntax,
    /// Any other non-success HTTP answer.
    Http,
    /// No complete answer in time.
    Timeout,
    /// No connection could be made.
    Unreachable,
    /// The answer could not be decoded.
    Malformed,
    /// The answer exceeded the size cap.
    TooLarge,
}

impl QueryErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryErrorKind::Syntax => "syntax",
            QueryErrorKind::Http => "http",
            QueryErrorKind::Timeout => "timeout",
            QueryErrorKind::Unreachable => "unreachable",
            QueryErrorKind::Malformed => "malformed",
            QueryErrorKind::TooLarge => "too_large",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

/// The release of an API's current rollout: one series per API, replaced when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReleaseLabels {
    api: String,
    stable: &'static str,
    candidate: &'static str,
    release: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabels {
    api: String,
    phase: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    api: String,
    action: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EvidenceLabels {
    api: String,
    stream: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueryErrorLabels {
    backend: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    api: String,
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WriteLabels {
    api: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The progressor's metrics registry and its event functions. Shared (`Arc`) between the
/// daemon, which records events, and the HTTP server, which encodes them.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    green_weight: Family<ApiLabels, Gauge>,
    green_percent: Family<ApiLabels, FloatGauge>,
    phase: Family<PhaseLabels, Gauge>,
    step: Family<ApiLabels, Gauge>,
    decisions: Family<ActionLabels, Counter>,
    evidence: Family<EvidenceLabels, FloatGauge>,
    query_duration: Family<BackendLabels, Histogram, fn() -> Histogram>,
    query_errors: Family<QueryErrorLabels, Counter>,
    last_evaluation: Family<ApiLabels, FloatGauge>,
    alert_deliveries: Family<ChannelLabels, Counter>,
    alert_failures: Family<ChannelLabels, Counter>,
    outbox_depth: Gauge,
    leader: Gauge,
    ready: Gauge,
    backend_up: Family<BackendLabels, Gauge>,
    weight_writes: Family<WriteLabels, Counter>,
    overrides: Family<ApiLabels, Counter>,
    policies_loaded: Gauge,
    policy_errors: Gauge,
    shell_events: Family<EventLabels, Counter>,
    awaiting_approval: Family<ApiLabels, Gauge>,
    release: Family<ReleaseLabels, Gauge>,
    /// The release series exported per API, to replace it when the rollout changes.
    releases: Mutex<BTreeMap<String, ReleaseLabels>>,
    audit_entries: Family<ResultLabels, Counter>,
    campaigns: super::campaign_metrics::CampaignMetrics,
    breakers: super::breaker_view::BreakerMetrics,
    /// Evidence stream ids exported per API, to drop the series of vanished streams.
    streams: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// A registry with every metric registered and no series yet.
    pub fn new() -> Telemetry {
        let t = Telemetry {
            registry: Registry::default(),
            green_weight: Family::default(),
            green_percent: Family::default(),
            phase: Family::default(),
            step: Family::default(),
            decisions: Family::default(),
            evidence: Family::default(),
            query_duration: Family::new_with_constructor(query_histogram),
            query_errors: Family::default(),
            last_evaluation: Family::default(),
            alert_deliveries: Family::default(),
            alert_failures: Family::default(),
            outbox_depth: Gauge::default(),
            leader: Gauge::default(),
            ready: Gauge::default(),
            backend_up: Family::default(),
            weight_writes: Family::default(),
            overrides: Family::default(),
            policies_loaded: Gauge::default(),
            policy_errors: Gauge::default(),
            shell_events: Family::default(),
            awaiting_approval: Family::default(),
            release: Family::default(),
            releases: Mutex::new(BTreeMap::new()),
            audit_entries: Family::default(),
            campaigns: Default::default(),
            breakers: Default::default(),
            streams: Mutex::new(BTreeMap::new()),
        };
        let mut r = Registry::default();
        r.register(
            GREEN_WEIGHT,
            "Green weight greenlight last decided on, per API",
            t.green_weight.clone(),
        );
        r.register(
            GREEN_PERCENT,
            "Green's share of the traffic weights, percent, per API",
            t.green_percent.clone(),
        );
        r.register(
            PHASE,
            "Rollout phase per API: 1 for the current phase, 0 for the others",
            t.phase.clone(),
        );
        r.register(
            STEP,
            "Index of the current step in the policy's steps, per API",
            t.step.clone(),
        );
        r.register(
            AWAITING_APPROVAL,
            "1 while the rollout waits for a human to approve its next step, per API",
            t.awaiting_approval.clone(),
        );
        r.register(
            RELEASE,
            "1 for the stable and candidate colours of an API's current rollout and its release \
             (the candidate's while it runs or was rolled back, the new stable one's once promoted; \
             empty when not given)",
            t.release.clone(),
        );
        r.register(
            counter_base(AUDIT_ENTRIES_TOTAL),
            "Audit entries of human actions, by whether writing them to Consul succeeded (ok or error)",
            t.audit_entries.clone(),
        );
        r.register(
            counter_base(DECISIONS_TOTAL),
            "Decisions taken, per API and action",
            t.decisions.clone(),
        );
        r.register(
            EVIDENCE,
            "Natural logarithm of the current e-value (ln E, finite however strong the evidence) per API, evidence stream and kind (rollback or advance)",
            t.evidence.clone(),
        );
        r.register(
            QUERY_DURATION_SECONDS,
            "Duration of metrics backend queries, seconds",
            t.query_duration.clone(),
        );
        r.register(
            counter_base(QUERY_ERRORS_TOTAL),
            "Failed metrics backend queries, per backend and error kind",
            t.query_errors.clone(),
        );
        r.register(
            LAST_EVALUATION_TIMESTAMP_SECONDS,
            "Unix time of the last evaluation with usable metrics, per API",
            t.last_evaluation.clone(),
        );
        r.register(
            counter_base(ALERT_DELIVERIES_TOTAL),
            "Alerts delivered, per channel",
            t.alert_deliveries.clone(),
        );
        r.register(
            counter_base(ALERT_FAILURES_TOTAL),
            "Failed alert delivery attempts, per channel",
            t.alert_failures.clone(),
        );
        r.register(
            OUTBOX_DEPTH,
            "Alerts waiting in the outbox",
            t.outbox_depth.clone(),
        );
        r.register(
            LEADER,
            "1 while this instance holds the leader lock and Consul confirmed it recently, else 0",
            t.leader.clone(),
        );
        r.register(
            READY,
            "1 while /readyz answers 200: policies loaded, Consul and the metrics backend answering, leadership (if any) confirmed",
            t.ready.clone(),
        );
        r.register(
            BACKEND_UP,
            "1 while the backend (consul, or the metrics backend's kind) answered its last probe recently, else 0",
            t.backend_up.clone(),
        );
        r.register(
            counter_base(WEIGHT_WRITES_TOTAL),
            "Weight writes to the traffic target, per API and result (ok or error)",
            t.weight_writes.clone(),
        );
        r.register(
            counter_base(MANUAL_OVERRIDES_TOTAL),
            "Manual weight changes detected (the API is paused), per API",
            t.overrides.clone(),
        );
        r.register(
            POLICIES_LOADED,
            "Policies loaded and valid",
            t.policies_loaded.clone(),
        );
        r.register(
            POLICY_LOAD_ERRORS,
            "Errors found in policy files at the last load",
            t.policy_errors.clone(),
        );
        r.register(
            counter_base(SHELL_EVENTS_TOTAL),
            "Shell events an operator should see, per API and event (clock_behind, \
             windows_skipped, rollback_not_applied, state_unreadable, evaluation_timed_out, \
             evaluation_panicked)",
            t.shell_events.clone(),
        );
        t.campaigns.register(&mut r);
        t.breakers.register(&mut r);
        Telemetry { registry: r, ..t }
    }

    /// Records one decision for `api`: counts it by action, and updates the API's weight, green
    /// percent, phase, step and evidence from the decision's new state. The last-evaluation time
    /// moves to the decision's time when the window's metrics were usable.
    pub fn decision(&self, api: &str, decision: &Decision) {
        self.decisions
            .get_or_create(&ActionLabels {
                api: api.to_string(),
                action: decision.action.as_str(),
            })
            .inc();
        self.rollout(api, &decision.state);
        if decision.explanation.problems.is_empty() {
            let at = decision
                .state
                .last_decision
                .as_ref()
                .map_or(decision.explanation.window_end, |r| r.at);
            self.last_evaluation
                .get_or_create(&api_labels(api))
                .set(unix_seconds(at));
        }
    }

    /// Sets `api`'s weight, green percent, phase, step and evidence gauges from a state (e.g. one
    /// loaded from the store at start, before any decision).
    pub fn rollout(&self, api: &str, state: &RolloutState) {
        let labels = api_labels(api);
        self.green_weight
            .get_or_create(&labels)
            .set(i64::from(state.weights.green));
        self.green_percent
            .get_or_create(&labels)
            .set(green_share(state.weights));
        self.step
            .get_or_create(&labels)
            .set(i64::try_from(state.step).unwrap_or(i64::MAX));
        self.awaiting_approval
            .get_or_create(&labels)
            .set(i64::from(state.awaiting_approval.is_some()));
        self.set_release(api, state);
        for phase in PHASES {
            self.phase
                .get_or_create(&PhaseLabels {
                    api: api.to_string(),
                    phase: phase.as_str(),
                })
                .set(i64::from(phase == state.phase));
        }
        let now: BTreeSet<String> = state.streams.iter().map(|s| s.id.clone()).collect();
        for s in &state.streams {
            self.evidence
                .get_or_create(&evidence_labels(api, &s.id, "rollback"))
                .set(s.rollback_log_e());
            self.evidence
                .get_or_create(&evidence_labels(api, &s.id, "advance"))
                .set(s.advance_log_e());
        }
        let mut known = lock(&self.streams);
        let before = known.insert(api.to_string(), now.clone());
        for gone in before.iter().flatten().filter(|id| !now.contains(*id)) {
            self.remove_evidence(api, gone);
        }
    }

    /// The release series of `api`: the one of its current rollout only.
    fn set_release(&self, api: &str, state: &RolloutState) {
        let r = &state.releases;
        let release = match state.phase {
            Phase::Promoted => r.stable_release.clone(),
            _ => r.candidate_release.clone(),
        };
        let labels = ReleaseLabels {
            api: api.to_string(),
            stable: r.stable.as_str(),
            candidate: r.candidate().as_str(),
            release: release.unwrap_or_default(),
        };
        let mut known = lock(&self.releases);
        if let Some(old) = known.insert(api.to_string(), labels.clone()) {
            if old != labels {
                self.release.remove(&old);
            }
        }
        self.release.get_or_create(&labels).set(1);
    }

    /// Records one metrics query against `backend` (e.g. `victoriametrics`) and its outcome.
    pub fn query(&self, backend: &str, duration: Duration, outcome: Result<(), QueryErrorKind>) {
        self.query_duration
            .get_or_create(&BackendLabels {
                backend: backend.to_string(),
            })
            .observe(duration.as_secs_f64());
        if let Err(kind) = outcome {
            self.query_errors
                .get_or_create(&QueryErrorLabels {
                    backend: backend.to_string(),
                    kind: kind.as_str(),
                })
                .inc();
        }
    }

    /// Records one write of `api`'s weights to its traffic target.
    pub fn weight_write(&self, api: &str, ok: bool) {
        self.weight_writes
            .get_or_create(&WriteLabels {
                api: api.to_string(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Counts one shell event of `api` (`event` is one of a fixed set of names).
    pub fn shell_event(&self, api: &str, event: &'static str) {
        self.shell_events
            .get_or_create(&EventLabels {
                api: api.to_string(),
                event,
            })
            .inc();
    }

    /// Counts one audit entry, written to Consul (`ok`) or not.
    pub fn audit_entry(&self, ok: bool) {
        self.audit_entries
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Records a manual weight change found on `api`.
    pub fn override_detected(&self, api: &str) {
        self.overrides.get_or_create(&api_labels(api)).inc();
    }

    /// Records one alert delivery attempt to `channel`.
    pub fn alert_delivery(&self, channel: &str, ok: bool) {
        let labels = ChannelLabels {
            channel: channel.to_string(),
        };
        if ok {
            self.alert_deliveries.get_or_create(&labels).inc();
        } else {
            self.alert_failures.get_or_create(&labels).inc();
        }
    }

    /// Sets the number of alerts waiting in the outbox.
    pub fn outbox_depth(&self, depth: u64) {
        self.outbox_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Sets whether this instance is the leader.
    pub fn leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records a health assessment: readiness, leadership, and each probed backend's health.
    pub fn health(&self, metrics_backend: &'static str, a: &crate::daemon::health::Assessment) {
        self.leader(a.leader);
        self.ready.set(i64::from(a.ready));
        for (backend, up) in [("consul", a.consul_up), (metrics_backend, a.metrics_up)] {
            if let Some(up) = up {
                self.backend_up
                    .get_or_create(&BackendLabels {
                        backend: backend.to_string(),
                    })
                    .set(i64::from(up));
            }
        }
    }

    /// Sets a campaign's status, wave and API counts.
    pub fn campaign(&self, view: &super::CampaignView) {
        self.campaigns.set(view);
    }

    /// Sets a cluster breaker's series.
    pub fn breaker(&self, view: &super::BreakerView) {
        self.breakers.set(view);
    }

    /// Counts a rollout a campaign started.
    pub fn campaign_started_api(&self, campaign: &str) {
        self.campaigns.started(campaign);
    }

    /// Sets the outcome of the last policy load: valid policies and errors found.
    pub fn policies(&self, loaded: usize, errors: usize) {
        self.policies_loaded
            .set(i64::try_from(loaded).unwrap_or(i64::MAX));
        self.policy_errors
            .set(i64::try_from(errors).unwrap_or(i64::MAX));
    }

    /// Removes every series of `api` (its policy was deleted).
    pub fn forget(&self, api: &str) {
        let labels = api_labels(api);
        self.green_weight.remove(&labels);
        self.green_percent.remove(&labels);
        self.step.remove(&labels);
        self.awaiting_approval.remove(&labels);
        if let Some(old) = lock(&self.releases).remove(api) {
            self.release.remove(&old);
        }
        self.last_evaluation.remove(&labels);
        self.overrides.remove(&labels);
        for phase in PHASES {
            self.phase.remove(&PhaseLabels {
                api: api.to_string(),
                phase: phase.as_str(),
            });
        }
        for action in ACTIONS {
            self.decisions.remove(&ActionLabels {
                api: api.to_string(),
                action: action.as_str(),
            });
        }
        for result in WRITE_RESULTS {
            self.weight_writes.remove(&WriteLabels {
                api: api.to_string(),
                result,
            });
        }
        let streams = lock(&self.streams).remove(api);
        for id in streams.iter().flatten() {
            self.remove_evidence(api, id);
        }
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4, see
    /// [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "Could not encode the metrics registry.");
        }
        out
    }

    fn remove_evidence(&self, api: &str, stream: &str) {
        for kind in ["rollback", "advance"] {
            self.evidence.remove(&evidence_labels(api, stream, kind));
        }
    }
}

fn query_histogram() -> Histogram {
    Histogram::new(QUERY_BUCKETS)
}

pub(super) fn counter_base(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}

fn api_labels(api: &str) -> ApiLabels {
    ApiLabels {
        api: api.to_string(),
    }
}

fn evidence_labels(api: &str, stream: &str, kind: &'static str) -> EvidenceLabels {
    EvidenceLabels {
        api: api.to_string(),
        stream: stream.to_string(),
        kind,
    }
}

/// Green's share of the weights, percent (0 when both are 0).
pub fn green_share(w: Weights) -> f64 {
    let total = f64::from(w.blue) + f64::from(w.green);
    if total > 0.0 {
        100.0 * f64::from(w.green) / total
    } else {
        0.0
    }
}

fn unix_seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{decide, Observation, RolloutState};
    use crate::engine::{CheckData, CheckObservation, Counts, EdgeCounts, Pair};

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_767_571_200 + minute * 60).unwrap()
    }

    /// A healthy window for the engine's test policy (checks `errors`, `latency`, `p99`).
    fn window(minute: i64) -> Observation {
        let pair = |b: f64, g: f64| Pair {
            blue: Counts::new(11400.0, b),
            green: Counts::new(600.0, g),
        };
        Observation {
            start: t(minute - 1),
            end: t(minute),
            checks: vec![
                CheckObservation {
                    check: "errors".into(),
                    data: Ok(CheckData::Errors {
                        counts: pair(57.0, 3.0),
                    }),
                },
                CheckObservation {
                    check: "latency".into(),
                    data: Ok(CheckData::Latency {
                        edges: vec![
                            EdgeCounts {
                                edge: 0.25,
                                counts: pair(1140.0, 60.0),
                            },
                            EdgeCounts {
                                edge: 1.0,
                                counts: pair(114.0, 6.0),
                            },
                        ],
                    }),
                },
                CheckObservation {
                    check: "p99".into(),
                    data: Ok(CheckData::Value {
                        candidate: 0.3,
                        stable: Some(0.3),
                    }),
                },
            ],
        }
    }

    /// Lines of the exposition that are samples (not comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// The value of the sample whose name and labels are exactly `series`.
    fn value(text: &str, series: &str) -> Option<f64> {
        samples(text).into_iter().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().ok())?
        })
    }

    fn has(text: &str, line: &str) -> bool {
        samples(text).contains(&line)
    }

    #[test]
    fn decisions_set_weight_phase_step_evidence_and_counts() {
        let policy = crate::engine::tests::policy();
        let tel = Telemetry::new();
        let mut state = RolloutState::new(&policy);
        let mut last = None;
        for m in 1..=3 {
            let d = decide(&policy, &state, &window(m), t(m));
            tel.decision("checkout", &d);
            state = d.state.clone();
            last = Some(d);
        }
        let last = last.unwrap();
        let text = tel.encode();
        // Start, then warm-up hold, then a hold while collecting evidence.
        assert!(has(
            &text,
            r#"greenlight_decisions_total{api="checkout",action="start"} 1"#
        ));
        assert!(has(
            &text,
            r#"greenlight_decisions_total{api="checkout",action="hold"} 2"#
        ));
        assert!(has(&text, r#"greenlight_green_weight{api="checkout"} 5"#));
        assert!(has(
            &text,
            r#"greenlight_green_percent{api="checkout"} 5.0"#
        ));
        assert!(has(&text, r#"greenlight_step{api="checkout"} 0"#));
        assert!(has(
            &text,
            r#"greenlight_phase{api="checkout",phase="progressing"} 1"#
        ));
        assert!(has(
            &text,
            r#"greenlight_phase{api="checkout",phase="pending"} 0"#
        ));
        assert!(has(
            &text,
            r#"greenlight_last_successful_evaluation_timestamp_seconds{api="checkout"} 1767571380.0"#
        ));
        for s in &last.explanation.streams {
            let rb = format!(
                r#"greenlight_log_evidence{{api="checkout",stream="{}",kind="rollback"}}"#,
                s.id
            );
            let adv = format!(
                r#"greenlight_log_evidence{{api="checkout",stream="{}",kind="advance"}}"#,
                s.id
            );
            assert_eq!(value(&text, &rb), Some(s.rollback_log_e), "{rb} in\n{text}");
            assert_eq!(
                value(&text, &adv),
                Some(s.advance_log_e),
                "{adv} in\n{text}"
            );
        }
        assert_eq!(last.explanation.streams.len(), 3);
    }

    #[test]
    fn forget_removes_every_series_of_the_api() {
        let policy = crate::engine::tests::policy();
        let tel = Telemetry::new();
        let mut state = RolloutState::new(&policy);
        for m in 1..=2 {
            let d = decide(&policy, &state, &window(m), t(m));
            tel.decision("checkout", &d);
            tel.decision("payments", &d);
            state = d.state;
        }
        tel.weight_write("checkout", true);
        tel.weight_write("checkout", false);
        tel.override_detected("checkout");
        tel.forget("checkout");
        let text = tel.encode();
        let left: Vec<&str> = samples(&text)
            .into_iter()
            .filter(|l| l.contains(r#"api="checkout""#))
            .collect();
        assert!(left.is_empty(), "series left after forget: {left:?}");
        assert!(has(&text, r#"greenlight_green_weight{api="payments"} 5"#));
        assert!(has(
            &text,
            r#"greenlight_decisions_total{api="payments",action="start"} 1"#
        ));
    }

    #[test]
    fn the_release_series_follows_the_current_rollout_only() {
        let policy = crate::engine::tests::policy();
        let tel = Telemetry::new();
        let mut state = RolloutState::new(&policy);
        state.releases.candidate_release = Some("v1".into());
        tel.rollout("checkout", &state);
        let v1 =
            r#"greenlight_release{api="checkout",stable="blue",candidate="green",release="v1"} 1"#;
        assert!(has(&tel.encode(), v1), "{}", tel.encode());
        // Promoted: green is stable with v1; then v2 rolls onto blue.
        state.phase = Phase::Promoted;
        state.releases.stable = crate::policy::Colour::Green;
        state.releases.stable_release = Some("v1".into());
        state.releases.candidate_release = None;
        tel.rollout("checkout", &state);
        state.phase = Phase::Progressing;
        state.releases.candidate_release = Some("v2".into());
        tel.rollout("checkout", &state);
        let text = tel.encode();
        let series: Vec<&str> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("greenlight_release{"))
            .collect();
        assert_eq!(
            series,
            vec![
                r#"greenlight_release{api="checkout",stable="green",candidate="blue",release="v2"} 1"#
            ]
        );
        tel.forget("checkout");
        assert!(!tel.encode().contains("greenlight_release{"));
    }

    #[test]
    fn streams_dropped_from_the_policy_lose_their_series() {
        let mut policy = crate::engine::tests::policy();
        let tel = Telemetry::new();
        let d = decide(&policy, &RolloutState::new(&policy), &window(1), t(1));
        tel.decision("checkout", &d);
        assert!(tel.encode().contains(r#"stream="latency@0.25""#));
        policy.checks.retain(|c| c.name != "latency");
        let d = decide(&policy, &d.state, &window(2), t(2));
        tel.decision("checkout", &d);
        let text = tel.encode();
        assert!(!text.contains("latency@"), "{text}");
        assert!(text.contains(r#"stream="errors",kind="rollback""#));
    }

    #[test]
    fn unusable_metrics_do_not_move_the_last_evaluation_time() {
        let policy = crate::engine::tests::policy();
        let tel = Telemetry::new();
        let d = decide(&policy, &RolloutState::new(&policy), &window(1), t(1));
        tel.decision("checkout", &d);
        let mut broken = window(2);
        broken.checks[0].data = Err(crate::engine::DataProblem::NoData);
        let d = decide(&policy, &d.state, &broken, t(2));
        assert!(!d.explanation.problems.is_empty());
        tel.decision("checkout", &d);
        assert!(has(
            &tel.encode(),
            r#"greenlight_last_successful_evaluation_timestamp_seconds{api="checkout"} 1767571260.0"#
        ));
    }

    #[test]
    fn infrastructure_events_are_exported_with_exact_values() {
        let tel = Telemetry::new();
        tel.query("victoriametrics", Duration::from_millis(20), Ok(()));
        tel.query(
            "victoriametrics",
            Duration::from_millis(300),
            Err(QueryErrorKind::Timeout),
        );
        tel.alert_delivery("oncall", true);
        tel.alert_delivery("oncall", true);
        tel.alert_delivery("oncall", false);
        tel.outbox_depth(3);
        tel.leader(true);
        tel.policies(4, 1);
        tel.weight_write("checkout", true);
        tel.weight_write("checkout", true);
        tel.weight_write("checkout", false);
        tel.override_detected("checkout");
        let text = tel.encode();
        for line in [
            r#"greenlight_query_duration_seconds_count{backend="victoriametrics"} 2"#,
            r#"greenlight_query_duration_seconds_sum{backend="victoriametrics"} 0.32"#,
            r#"greenlight_query_duration_seconds_bucket{backend="victoriametrics",le="0.025"} 1"#,
            r#"greenlight_query_duration_seconds_bucket{backend="victoriametrics",le="0.5"} 2"#,
            r#"greenlight_query_errors_total{backend="victoriametrics",kind="timeout"} 1"#,
            r#"greenlight_alert_deliveries_total{channel="oncall"} 2"#,
            r#"greenlight_alert_failures_total{channel="oncall"} 1"#,
            "greenlight_alert_outbox_depth 3",
            "greenlight_leader 1",
            "greenlight_policies_loaded 4",
            "greenlight_policy_load_errors 1",
            r#"greenlight_weight_writes_total{api="checkout",result="ok"} 2"#,
            r#"greenlight_weight_writes_total{api="checkout",result="error"} 1"#,
            r#"greenlight_manual_overrides_total{api="checkout"} 1"#,
        ] {
            assert!(has(&text, line), "missing {line:?} in\n{text}");
        }
        tel.leader(false);
        assert!(has(&tel.encode(), "greenlight_leader 0"));
    }

    #[test]
    fn green_share_is_a_percentage_of_the_weights() {
        assert_eq!(green_share(Weights { blue: 95, green: 5 }), 5.0);
        assert_eq!(
            green_share(Weights {
                blue: 192,
                green: 64
            }),
            25.0
        );
        assert_eq!(green_share(Weights { blue: 0, green: 0 }), 0.0);
    }
}
