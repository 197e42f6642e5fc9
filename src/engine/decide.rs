//! `decide()`: one evaluation of one API, from (policy, state, observation, now) to a decision.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::observation::{CheckData, DataProblem, Observation, Pair};
use crate::engine::state::{EvidenceRecord, Intent, Phase, RolloutState, HISTORY_LEN};
use crate::policy::{CheckKind, MaxStepAction, Policy, Weights};
use crate::stats::format_e;

/// Rollback streams must all be below this for an advance (statistics reference §4).
pub const ADVANCE_MAX_ROLLBACK_E: f64 = 10.0;

/// What the decision does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing changes (see the reason).
    Hold,
    /// The rollout starts: green goes to the first step.
    Start,
    /// Green moves up one step.
    Advance,
    /// Green reaches 100 %.
    Promote,
    /// Green goes back to 0 %.
    Rollback,
    /// The rollout is frozen (operator request).
    Pause,
    /// A paused rollout continues at its step.
    Resume,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Hold => "hold",
            Action::Start => "start",
            Action::Advance => "advance",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// Something the operator should hear about, raised once per occurrence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// No usable metrics since `since` (weights frozen).
    MetricsUnavailable { since: Timestamp, detail: String },
    /// No step progress since `since`.
    Stuck { since: Timestamp },
}

/// Evidence and counts of one statistical stream, as reported with a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub id: String,
    pub check: String,
    pub edge: Option<f64>,
    /// This window's counts (absent when the window was not counted).
    pub window: Option<Pair>,
    pub step: Pair,
    pub total: Pair,
    /// ln of the rollback e-value (finite however strong the evidence; see
    /// [`crate::stats::format_e`] to show it).
    pub rollback_log_e: f64,
    /// The rollback e-value's threshold 1/α (an e-value, not its logarithm).
    pub rollback_threshold: f64,
    /// ln of the advance e-value.
    pub advance_log_e: f64,
    /// The advance e-value's threshold (an e-value, not its logarithm).
    pub advance_threshold: f64,
}

/// A threshold guard as seen in this window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardReport {
    pub check: String,
    pub green: Option<f64>,
    pub blue: Option<f64>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub consecutive_failures: u32,
    pub failures_to_rollback: u32,
}

/// Everything needed to understand a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    /// Step index and green percent before the decision.
    pub step: usize,
    pub green_percent: f64,
    pub weights_before: Weights,
    pub weights_after: Weights,
    pub streams: Vec<StreamReport>,
    pub guards: Vec<GuardReport>,
    /// Data problems of this window, as `check: problem`.
    pub problems: Vec<String>,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// One sentence saying why.
    pub reason: String,
    /// Weights to write, when they change.
    pub set_weights: Option<Weights>,
    /// The state after this decision (to persist once the weights are applied).
    pub state: RolloutState,
    pub explanation: Explanation,
    pub notices: Vec<Notice>,
}

/// A compact record of a past decision, kept in the state's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at: Timestamp,
    pub window_end: Timestamp,
    pub action: Action,
    pub reason: String,
    pub step: usize,
    pub weights: Weights,
    /// Each stream's evidence after the decision, in log space. States written by the previous
    /// version (`[stream, E, E]`) are read too.
    pub evidence: Vec<EvidenceRecord>,
}

/// Decides what to do with one API for one window. Pure: no I/O, no clock; `now` is given.
///
/// Order of rules: operator intents; phase; already-counted windows; data quality (any problem →
/// hold, nothing counted); warm-up after a weight change; blue's own health; evidence update;
/// rollback (any stream crossing 1/α, or a threshold guard failing on green alone); advance
/// (schedule, dwell, requests, all rollback E < 10, advance evidence or the maximum dwell).
pub fn decide(
    policy: &Policy,
    state: &RolloutState,
    obs: &Observation,
    now: Timestamp,
) -> Decision {
    let mut s = state.clone();
    s.reconcile(policy);
    let before = Snapshot::of(&s, policy);
    let mut d = Draft::default();
    evaluate(policy, &mut s, obs, now, &mut d);
    finish(policy, s, obs, now, before, d)
}

/// The parts of a decision under construction.
#[derive(Default)]
struct Draft {
    action: Option<Action>,
    reason: String,
    counted: Vec<(String, Pair)>,
    guards: Vec<GuardReport>,
    problems: Vec<String>,
    notices: Vec<Notice>,
}

impl Draft {
    fn set(&mut self, action: Action, reason: impl Into<String>) {
        self.action = Some(action);
        self.reason = reason.into();
    }
}

struct Snapshot {
    step: usize,
    green_percent: f64,
    weights: Weights,
}

impl Snapshot {
    fn of(s: &RolloutState, policy: &Policy) -> Self {
        let green_percent = match s.phase {
            Phase::Progressing | Phase::Paused => policy.steps[s.step],
            Phase::Promoted => 100.0,
            Phase::Pending | Phase::RolledBack => 0.0,
        };
        Snapshot {
            step: s.step,
            green_percent,
            weights: s.weights,
        }
    }
}

fn evaluate(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    now: Timestamp,
    d: &mut Draft,
) {
    if let Some(intent) = s.intent.take() {
        apply_intent(policy, s, intent, now, d);
        return;
    }
    match s.phase {
        Phase::Pending => {
            if !policy.auto_start {
                d.set(Action::Hold, "Waiting for `greenlight start`.");
            } else if !in_schedule(policy, now) {
                d.set(Action::Hold, "Waiting for a schedule window to start.");
            } else if let problems @ [_, ..] = backend_problems(policy, obs).as_slice() {
                // Green has no traffic (and often no series) yet, so only a failing metrics
                // backend holds the start back.
                d.set(
                    Action::Hold,
                    format!(
                        "Waiting for the metrics backend before starting: {}.",
                        problems.join("; ")
                    ),
                );
            } else {
                s.begin_rollout(policy, now);
                s.last_window_end = Some(obs.end);
                d.set(Action::Start, "Rollout started automatically.");
            }
            return;
        }
        Phase::Paused => {
            let why = s.reason.clone().unwrap_or_else(|| "paused".into());
            d.set(Action::Hold, format!("Paused: {why}"));
            return;
        }
        Phase::Promoted => {
            d.set(Action::Hold, "Promoted: green serves all traffic.");
            return;
        }
        Phase::RolledBack => {
            let why = s.reason.clone().unwrap_or_default();
            d.set(Action::Hold, format!("Rolled back: {why}"));
            return;
        }
        Phase::Progressing => {}
    }

    if let Some(last) = s.last_window_end {
        if obs.start < last {
            d.set(
                Action::Hold,
                format!(
                    "Window {}..{} overlaps one already counted (up to {last}).",
                    obs.start, obs.end
                ),
            );
            return;
        }
    }
    s.last_window_end = Some(obs.end);
    s.intervals_at_step += 1;

    // Data quality: every check must have clean data, or nothing of this window counts.
    d.problems = data_problems(policy, obs);
    if !d.problems.is_empty() {
        let since = s
            .last_good_data_at
            .or(s.step_started_at)
            .unwrap_or(obs.start);
        if !s.no_data_alerted && elapsed(since, now) >= policy.no_data_alert_after {
            s.no_data_alerted = true;
            d.notices.push(Notice::MetricsUnavailable {
                since,
                detail: d.problems.join("; "),
            });
        }
        d.set(
            Action::Hold,
            format!("Holding on unusable metrics: {}.", d.problems.join("; ")),
        );
        check_stuck(policy, s, now, d);
        return;
    }
    s.last_good_data_at = Some(obs.end);
    s.no_data_alerted = false;

    if s.intervals_at_step <= policy.warmup_intervals {
        d.set(
            Action::Hold,
            format!(
                "Warm-up window {} of {} after the weight change; not counted.",
                s.intervals_at_step, policy.warmup_intervals
            ),
        );
        return;
    }

    // Blue's own health: an environment problem is not green's fault.
    if let Some(why) = blue_unhealthy(policy, obs) {
        d.set(Action::Hold, format!("Blue is unhealthy ({why}); holding."));
        check_stuck(policy, s, now, d);
        return;
    }

    // Count the window.
    for stream in &mut s.streams {
        let Some(pair) = stream_counts(obs, &stream.check, stream.edge) else {
            continue;
        };
        stream.rollback.update(
            pair.green.requests,
            pair.blue.requests,
            pair.green.bad,
            pair.blue.bad,
        );
        stream.advance.update(
            pair.green.requests,
            pair.blue.requests,
            pair.green.bad,
            pair.blue.bad,
        );
        if let Some(slo) = &mut stream.slo {
            slo.update(pair.green.requests, pair.green.bad);
        }
        add(&mut stream.step, &pair);
        add(&mut stream.total, &pair);
        d.counted.push((stream.id.clone(), pair));
    }

    // Threshold guards. Green's requests this window, from the first error-rate check.
    let window_green_requests =
        policy
            .checks
            .iter()
            .find_map(|c| match (&c.kind, obs.check(&c.name)) {
                (CheckKind::ErrorRate { .. }, Some(Ok(CheckData::Errors { counts }))) => {
                    Some(counts.green.requests)
                }
                _ => None,
            });
    let mut guard_breach = None;
    let mut guard_failing = false;
    for check in &policy.checks {
        let CheckKind::Threshold {
            max,
            min,
            failures,
            min_green_requests,
            ..
        } = &check.kind
        else {
            continue;
        };
        let Some(Ok(CheckData::Value { green, blue })) = obs.check(&check.name) else {
            continue;
        };
        let breaches = |v: f64| max.is_some_and(|m| v > m) || min.is_some_and(|m| v < m);
        let count = s.threshold_failures.entry(check.name.clone()).or_insert(0);
        let enough_traffic = window_green_requests.is_none_or(|n| n >= *min_green_requests as f64);
        if !enough_traffic {
            // Too few green requests for the value to mean anything: the window neither counts
            // as a failure nor clears earlier ones.
        } else if breaches(*green) && !blue.is_some_and(breaches) {
            *count += 1;
            guard_failing = true;
            if *count >= *failures && guard_breach.is_none() {
                guard_breach = Some(format!(
                    "{} guard failed {} windows in a row (green {:.4}, limit {})",
                    check.name,
                    count,
                    green,
                    limit_text(*max, *min)
                ));
            }
        } else {
            *count = 0;
        }
        d.guards.push(GuardReport {
            check: check.name.clone(),
            green: Some(*green),
            blue: *blue,
            max: *max,
            min: *min,
            consecutive_failures: *count,
            failures_to_rollback: *failures,
        });
    }

    // Rollback.
    let alpha = policy.alpha_per_stream();
    for stream in &s.streams {
        let min_errors = min_errors_of(policy, &stream.check);
        if stream.rollback.crossed(alpha) && stream.total.green.bad >= min_errors as f64 {
            let reason = format!(
                "{}: green's rate {:.4} vs blue's {:.4}; evidence {} ≥ 1/α = {:.0}",
                describe_stream(stream.check.as_str(), stream.edge),
                stream.total.green.rate(),
                stream.total.blue.rate(),
                format_e(stream.rollback.log_e()),
                1.0 / alpha
            );
            rollback(policy, s, reason, d);
            return;
        }
    }
    if let Some(reason) = guard_breach {
        rollback(policy, s, reason, d);
        return;
    }

    // Advance.
    if !in_schedule(policy, now) {
        d.set(
            Action::Hold,
            "Outside the schedule windows; not advancing.".to_string(),
        );
        return;
    }
    let at_step = elapsed(s.step_started_at.unwrap_or(now), now);
    if at_step < policy.min_step_duration {
        d.set(
            Action::Hold,
            format!(
                "Minimum step duration: {} of {} elapsed.",
                fmt_dur(at_step),
                fmt_dur(policy.min_step_duration)
            ),
        );
        check_stuck(policy, s, now, d);
        return;
    }
    let green_requests = s.step_green_requests();
    if green_requests < policy.min_green_requests_per_step as f64 {
        d.set(
            Action::Hold,
            format!(
                "Minimum green requests: {:.0} of {} at this step.",
                green_requests, policy.min_green_requests_per_step
            ),
        );
        check_stuck(policy, s, now, d);
        return;
    }
    if let Some(stream) = s
        .streams
        .iter()
        .find(|st| st.rollback.e_value() >= ADVANCE_MAX_ROLLBACK_E)
    {
        d.set(
            Action::Hold,
            format!(
                "{} shows some evidence against green ({} ≥ {}); not advancing.",
                describe_stream(&stream.check, stream.edge),
                format_e(stream.rollback.log_e()),
                ADVANCE_MAX_ROLLBACK_E
            ),
        );
        check_stuck(policy, s, now, d);
        return;
    }
    if guard_failing {
        d.set(Action::Hold, "A threshold guard is failing; not advancing.");
        check_stuck(policy, s, now, d);
        return;
    }
    let adv_threshold = 1.0 / policy.advance_alpha_per_stream();
    let lacking: Vec<String> = s
        .streams
        .iter()
        .filter(|st| st.advance_e() < adv_threshold)
        .map(|st| {
            format!(
                "{} {}",
                describe_stream(&st.check, st.edge),
                format_e(st.advance_log_e())
            )
        })
        .collect();
    let max_dwell_over = policy.max_step_duration.is_some_and(|m| at_step >= m);
    if !lacking.is_empty() {
        if policy.is_probe_step(s.step) {
            // A probe step exposes few users; the rollback evidence keeps accumulating across
            // steps, so moving on does not raise the harm a bad green does before it is caught,
            // and it reaches the traffic that catches it sooner.
            advance(
                policy,
                s,
                now,
                format!(
                    "Probe step ({} % < advance_on_dwell_below): dwell and requests met with no evidence against green.",
                    policy.steps[s.step]
                ),
                d,
            );
        } else if max_dwell_over && policy.on_max_step_duration == MaxStepAction::Advance {
            advance(
                policy,
                s,
                now,
                format!(
                    "Maximum step duration reached with no evidence against green (still lacking: {}).",
                    lacking.join(", ")
                ),
                d,
            );
        } else {
            d.set(
                Action::Hold,
                format!(
                    "Collecting evidence that green is no worse (need E ≥ {:.0}): {}.",
                    adv_threshold,
                    lacking.join(", ")
                ),
            );
            check_stuck(policy, s, now, d);
        }
        return;
    }
    advance(
        policy,
        s,
        now,
        format!(
            "Green is no worse than blue on every check (advance evidence ≥ {adv_threshold:.0})."
        ),
        d,
    );
}

fn apply_intent(
    policy: &Policy,
    s: &mut RolloutState,
    intent: Intent,
    now: Timestamp,
    d: &mut Draft,
) {
    match intent {
        Intent::Start => match s.phase {
            Phase::Pending | Phase::RolledBack | Phase::Promoted => {
                s.begin_rollout(policy, now);
                d.set(Action::Start, "Rollout started by an operator.");
            }
            Phase::Progressing | Phase::Paused => d.set(
                Action::Hold,
                "Start ignored: the rollout is already running.",
            ),
        },
        Intent::Pause { reason } => match s.phase {
            Phase::Progressing | Phase::Pending => {
                s.phase = Phase::Paused;
                s.reason = Some(reason.clone());
                d.set(Action::Pause, format!("Paused by an operator: {reason}"));
            }
            _ => d.set(Action::Hold, "Pause ignored: nothing is progressing."),
        },
        Intent::Resume => match s.phase {
            Phase::Paused => {
                s.phase = Phase::Progressing;
                s.reason = None;
                let step = s.step;
                // Back to the step's weights; a fresh warm-up follows.
                s.enter_step(policy, step, now);
                d.set(
                    Action::Resume,
                    format!(
                        "Resumed by an operator at step {} with its weights (blue={} green={}).",
                        step + 1,
                        s.weights.blue,
                        s.weights.green
                    ),
                );
            }
            _ => d.set(Action::Hold, "Resume ignored: the rollout is not paused."),
        },
        Intent::ResumeAdoptLive => match s.phase {
            Phase::Paused => {
                // The live split (the paused state follows it) becomes the current step.
                let live = s.weights;
                let pending = s.applying_from;
                let step = adopted_step(policy, live);
                s.phase = Phase::Progressing;
                s.reason = None;
                s.enter_step(policy, step, now);
                s.weights = live;
                s.applying_from = pending;
                d.set(
                    Action::Resume,
                    format!(
                        "Resumed by an operator keeping the live weights (blue={} green={}) as step {} ({} %).",
                        live.blue,
                        live.green,
                        step + 1,
                        policy.steps[step]
                    ),
                );
            }
            _ => d.set(Action::Hold, "Resume ignored: the rollout is not paused."),
        },
        Intent::Rollback { reason } => match s.phase {
            Phase::RolledBack => d.set(Action::Hold, "Rollback ignored: already rolled back."),
            _ => rollback(policy, s, format!("Operator rollback: {reason}"), d),
        },
        Intent::Promote => match s.phase {
            Phase::Promoted => d.set(Action::Hold, "Promote ignored: already promoted."),
            _ => {
                let last = policy.steps.len() - 1;
                s.enter_step(policy, last, now);
                s.phase = Phase::Promoted;
                s.reason = Some("promoted by an operator".into());
                d.set(Action::Promote, "Promoted to 100 % by an operator.");
            }
        },
    }
}

/// The highest step whose share is at or below `live`'s green share (the first step below it),
/// never the last step, which is a promotion.
pub fn adopted_step(policy: &Policy, live: Weights) -> usize {
    let total = f64::from(live.blue) + f64::from(live.green);
    let share = if total > 0.0 {
        100.0 * f64::from(live.green) / total
    } else {
        0.0
    };
    let below_last = policy.steps.len().saturating_sub(1).max(1);
    policy.steps[..below_last]
        .iter()
        .rposition(|p| *p <= share + 1e-9)
        .unwrap_or(0)
}

fn rollback(policy: &Policy, s: &mut RolloutState, reason: String, d: &mut Draft) {
    s.phase = Phase::RolledBack;
    s.set_weights(policy.traffic.weights_for(0.0));
    s.reason = Some(reason.clone());
    d.set(Action::Rollback, reason);
}

fn advance(policy: &Policy, s: &mut RolloutState, now: Timestamp, reason: String, d: &mut Draft) {
    let next = s.step + 1;
    s.enter_step(policy, next, now);
    if next + 1 == policy.steps.len() {
        s.phase = Phase::Promoted;
        s.reason = Some("promoted".into());
        d.set(Action::Promote, reason);
    } else {
        d.set(Action::Advance, reason);
    }
}

fn check_stuck(policy: &Policy, s: &mut RolloutState, now: Timestamp, d: &mut Draft) {
    let since = s.last_progress_at.unwrap_or(now);
    if !s.stuck_alerted && elapsed(since, now) >= policy.stuck_alert_after {
        s.stuck_alerted = true;
        d.notices.push(Notice::Stuck { since });
    }
}

fn finish(
    policy: &Policy,
    mut s: RolloutState,
    obs: &Observation,
    now: Timestamp,
    before: Snapshot,
    d: Draft,
) -> Decision {
    let action = d.action.unwrap_or(Action::Hold);
    let set_weights = (s.weights != before.weights).then_some(s.weights);
    let alpha = policy.alpha_per_stream();
    let adv = policy.advance_alpha_per_stream();
    let streams: Vec<StreamReport> = s
        .streams
        .iter()
        .map(|st| StreamReport {
            id: st.id.clone(),
            check: st.check.clone(),
            edge: st.edge,
            window: d
                .counted
                .iter()
                .find(|(id, _)| *id == st.id)
                .map(|(_, p)| *p),
            step: st.step,
            total: st.total,
            rollback_log_e: st.rollback_log_e(),
            rollback_threshold: 1.0 / alpha,
            advance_log_e: st.advance_log_e(),
            advance_threshold: 1.0 / adv,
        })
        .collect();
    s.revision += 1;
    if matches!(
        action,
        Action::Start | Action::Promote | Action::Rollback | Action::Pause | Action::Resume
    ) {
        s.phase_since = Some(now);
    }
    s.history.push(DecisionRecord {
        at: now,
        window_end: obs.end,
        action,
        reason: d.reason.clone(),
        step: s.step,
        weights: s.weights,
        evidence: streams
            .iter()
            .map(|r| EvidenceRecord {
                stream: r.id.clone(),
                rollback_log_e: round4(r.rollback_log_e),
                advance_log_e: round4(r.advance_log_e),
            })
            .collect(),
    });
    if s.history.len() > HISTORY_LEN {
        let extra = s.history.len() - HISTORY_LEN;
        s.history.drain(..extra);
    }
    Decision {
        action,
        reason: d.reason,
        set_weights,
        explanation: Explanation {
            window_start: obs.start,
            window_end: obs.end,
            step: before.step,
            green_percent: before.green_percent,
            weights_before: before.weights,
            weights_after: s.weights,
            streams,
            guards: d.guards,
            problems: d.problems,
        },
        state: s,
        notices: d.notices,
    }
}

fn round4(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e4).round() / 1e4
    } else {
        x
    }
}

/// The checks whose queries failed in the metrics backend itself, as `check: problem`.
fn backend_problems(policy: &Policy, obs: &Observation) -> Vec<String> {
    policy
        .checks
        .iter()
        .filter_map(|check| match obs.check(&check.name) {
            Some(Err(p @ DataProblem::Backend(_))) => Some(format!("{}: {p}", check.name)),
            _ => None,
        })
        .collect()
}

/// Every reason this window's data cannot be used, as `check: problem` (empty when clean).
fn data_problems(policy: &Policy, obs: &Observation) -> Vec<String> {
    let mut problems = Vec::new();
    for check in &policy.checks {
        match obs.check(&check.name) {
            None => problems.push(format!("{}: {}", check.name, DataProblem::NoData)),
            Some(Err(p)) => problems.push(format!("{}: {p}", check.name)),
            Some(Ok(data)) => {
                if let Err(p) = shape_matches(&check.kind, data) {
                    problems.push(format!("{}: {p}", check.name));
                }
            }
        }
    }
    problems
}

/// Whether the observation's data has the shape the check expects (and finite, non-negative counts).
fn shape_matches(kind: &CheckKind, data: &CheckData) -> Result<(), DataProblem> {
    let finite_pair = |p: &Pair| {
        [p.blue.requests, p.blue.bad, p.green.requests, p.green.bad]
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0)
            && p.blue.bad <= p.blue.requests
            && p.green.bad <= p.green.requests
    };
    match (kind, data) {
        (CheckKind::ErrorRate { .. }, CheckData::Errors { counts }) => {
            if finite_pair(counts) {
                Ok(())
            } else {
                Err(DataProblem::NotFinite(format!("{counts:?}")))
            }
        }
        (CheckKind::LatencyHistogram { edges, .. }, CheckData::Latency { edges: got }) => {
            for edge in edges {
                match got.iter().find(|e| e.edge == *edge) {
                    None => return Err(DataProblem::Partial(format!("no bucket le=\"{edge}\""))),
                    Some(e) if !finite_pair(&e.counts) => {
                        return Err(DataProblem::NotFinite(format!("{:?}", e.counts)))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        (CheckKind::Threshold { .. }, CheckData::Value { green, blue }) => {
            if green.is_finite() && blue.is_none_or(f64::is_finite) {
                Ok(())
            } else {
                Err(DataProblem::NotFinite(format!(
                    "green {green}, blue {blue:?}"
                )))
            }
        }
        _ => Err(DataProblem::Partial(
            "data of another kind than the check".into(),
        )),
    }
}

fn blue_unhealthy(policy: &Policy, obs: &Observation) -> Option<String> {
    for check in &policy.checks {
        match (&check.kind, obs.check(&check.name)) {
            (
                CheckKind::ErrorRate {
                    blue_max_error_rate: Some(max),
                    ..
                },
                Some(Ok(CheckData::Errors { counts })),
            ) if counts.blue.requests > 0.0 && counts.blue.rate() > *max => {
                return Some(format!(
                    "{}: blue's error rate {:.4} > {}",
                    check.name,
                    counts.blue.rate(),
                    max
                ));
            }
            (
                CheckKind::Threshold { max, min, .. },
                Some(Ok(CheckData::Value {
                    green,
                    blue: Some(blue),
                })),
            ) => {
                let breaches = |v: f64| max.is_some_and(|m| v > m) || min.is_some_and(|m| v < m);
                if breaches(*blue) && breaches(*green) {
                    return Some(format!(
                        "{}: blue {:.4} breaches {} too",
                        check.name,
                        blue,
                        limit_text(*max, *min)
                    ));
                }
            }
            _ => {}
        }
    }
    None
}

fn stream_counts(obs: &Observation, check: &str, edge: Option<f64>) -> Option<Pair> {
    match (obs.check(check)?, edge) {
        (Ok(CheckData::Errors { counts }), None) => Some(*counts),
        (Ok(CheckData::Latency { edges }), Some(edge)) => {
            edges.iter().find(|e| e.edge == edge).map(|e| e.counts)
        }
        _ => None,
    }
}

fn min_errors_of(policy: &Policy, check: &str) -> u64 {
    policy
        .checks
        .iter()
        .find(|c| c.name == check)
        .map(|c| match &c.kind {
            CheckKind::ErrorRate { min_errors, .. }
            | CheckKind::LatencyHistogram { min_errors, .. } => *min_errors,
            CheckKind::Threshold { .. } => 0,
        })
        .unwrap_or(0)
}

fn add(into: &mut Pair, p: &Pair) {
    into.blue.requests += p.blue.requests;
    into.blue.bad += p.blue.bad;
    into.green.requests += p.green.requests;
    into.green.bad += p.green.bad;
}

fn in_schedule(policy: &Policy, now: Timestamp) -> bool {
    policy.schedule.as_ref().is_none_or(|s| s.allows(now))
}

fn elapsed(since: Timestamp, now: Timestamp) -> std::time::Duration {
    let secs = now.as_second() - since.as_second();
    std::time::Duration::from_secs(secs.max(0) as u64)
}

fn fmt_dur(d: std::time::Duration) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

fn limit_text(max: Option<f64>, min: Option<f64>) -> String {
    match (max, min) {
        (Some(max), Some(min)) => format!("[{min}, {max}]"),
        (Some(max), None) => format!("max {max}"),
        (None, Some(min)) => format!("min {min}"),
        (None, None) => "none".into(),
    }
}

fn describe_stream(check: &str, edge: Option<f64>) -> String {
    match edge {
        Some(e) => format!("{check} (share slower than {e}s)"),
        None => check.to_string(),
    }
}
