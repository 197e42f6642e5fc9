//! `decide()`: one evaluation of one API, from (policy, state, observation, now) to a decision.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::observation::{CheckData, Observation, Pair};
use crate::engine::state::{EvidenceRecord, Phase, RolloutState};
use crate::policy::{Colour, Policy, Weights};

mod advance;
mod approval;
mod bake;
mod guards;
mod intents;
mod quality;
mod rollback;
mod split;

pub use approval::approve;
pub use intents::adopted_step;
pub use quality::{
    QualityState, GREEN_MISSING_NOTICE_WINDOWS, MAGNITUDE_FACTOR, MAGNITUDE_FLOOR, RECENT_WINDOWS,
};
pub use split::{percent, SPLIT_MISMATCH_WINDOWS};

/// Rollback streams must all be below this for an advance (docs/statistics.md §6).
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// No usable metrics since `since` (weights frozen).
    MetricsUnavailable { since: Timestamp, detail: String },
    /// Green's data have been missing since `since` while blue's are present.
    GreenDataMissing { since: Timestamp, detail: String },
    /// Green has not received its configured share of requests for `windows` windows.
    TrafficSplitMismatch {
        observed_percent: f64,
        configured_percent: f64,
        windows: u32,
    },
    /// No step progress since `since`.
    Stuck { since: Timestamp },
    /// A breach during the bake, with the previous stable colour not kept warm
    /// (`bake_on_breach = "alert"`): nothing rolls back; people must act.
    BakeBreach { detail: String },
    /// The evidence would take the rollout into step `step` (index; `percent` % green), which
    /// needs a human's approval; it waits since `since`.
    ApprovalNeeded {
        step: usize,
        percent: f64,
        since: Timestamp,
    },
    /// No approval came within `approval_timeout` for step `step`; the rollout goes on waiting
    /// (`on_approval_timeout = "hold"`). A rollback instead is its own decision.
    ApprovalTimedOut {
        step: usize,
        percent: f64,
        since: Timestamp,
    },
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

/// A compact record of a past decision, kept in the API's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The state's revision this decision produced (absent in records written before it was
    /// kept: numbered when read).
    #[serde(default)]
    pub revision: u64,
    pub at: Timestamp,
    pub window_end: Timestamp,
    pub action: Action,
    pub reason: String,
    pub step: usize,
    pub weights: Weights,
    /// Each stream's evidence after the decision, in log space. States written by the previous
    /// version (`[stream, E, E]`) are read too.
    pub evidence: Vec<EvidenceRecord>,
    /// Who approved the gated step this decision entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The window's counts per stream, when it was counted (for the console's charts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted: Vec<CountRecord>,
    /// The colour the rollout moved traffic onto and its release id, when given (absent in
    /// records written before rollouts had a direction: green).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Colour>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

impl DecisionRecord {
    /// The rollout's colour and release as a decision on `s` records them: the candidate's, or
    /// after a promotion the colour and release that just became stable.
    pub(crate) fn release_of(action: Action, s: &RolloutState) -> (Option<Colour>, Option<String>) {
        let r = &s.releases;
        match action {
            Action::Promote => (Some(r.stable), r.stable_release.clone()),
            _ => (Some(r.candidate()), r.candidate_release.clone()),
        }
    }
}

/// One stream's counts in one counted window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountRecord {
    pub stream: String,
    pub counts: Pair,
}

/// Decides what to do with one API for one window. Pure: no I/O, no clock; `now` is given.
///
/// Order of rules: operator intents; phase; already-counted windows; data quality (any problem or
/// implausible count → hold, nothing counted; green's data alone missing → notice, then hold or
/// rollback); warm-up after a weight change; blue's own health; the observed traffic split;
/// evidence update; rollback (any stream crossing 1/α, or a threshold guard failing on green
/// alone); a persistent split mismatch holds; advance (schedule, dwell, requests, all rollback
/// E < 10, advance evidence or the maximum dwell).
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
    approved_by: Option<String>,
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
        // The candidate's share while a rollout runs; at rest the stable colour has it all.
        let candidate_percent = match s.phase {
            Phase::Progressing | Phase::Paused => policy.steps[s.step],
            Phase::Baking => 100.0,
            Phase::Promoted | Phase::Pending | Phase::RolledBack => 0.0,
        };
        let green_percent = match s.candidate() {
            Colour::Green => candidate_percent,
            Colour::Blue => 100.0 - candidate_percent,
        };
        Snapshot {
            step: s.step,
            green_percent,
            weights: s.weights,
        }
    }
}

/// The rules of [`decide`], in order; each step either settles the decision or lets the next
/// one look.
fn evaluate(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    now: Timestamp,
    d: &mut Draft,
) {
    if let Some(intent) = s.intent.take() {
        let by = s.intent_by.take();
        intents::apply(policy, s, intent, by, now, d);
        return;
    }
    if held_rolls_back(policy, s, d) {
        return;
    }
    if !intents::progressing(policy, s, obs, now, d) {
        return;
    }
    if !claim_window(s, obs, d) {
        return;
    }
    if !quality::usable(policy, s, obs, now, d) {
        return;
    }
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
    if s.phase == Phase::Baking {
        bake::count(s, obs, d);
        let guards = guards::evaluate(policy, s, obs, d);
        bake::decide(policy, s, now, guards.breach, d);
        return;
    }
    // The stable copy's own health: an environment problem is not the candidate's fault.
    if let Some(why) = guards::blue_unhealthy(policy, obs, s.releases.stable) {
        d.set(
            Action::Hold,
            format!(
                "{} (stable) is unhealthy ({why}); holding.",
                s.releases.stable.capitalised()
            ),
        );
        check_stuck(policy, s, now, d);
        return;
    }
    let split_mismatch = split::mismatch(policy, s, obs, d);
    count_window(s, obs, d);
    let guards = guards::evaluate(policy, s, obs, d);
    if rollback::due(policy, s, guards.breach, d) {
        return;
    }
    if let Some(held) = &s.held {
        // The counts are evidence and the rollout's own rollback stays armed; it only moves
        // no further onto a cluster its breaker has stopped.
        d.set(
            Action::Hold,
            format!("Held: {}; weights frozen.", held.reason),
        );
        return;
    }
    if let Some(why) = split_mismatch {
        // The counts are still evidence (rollback stays armed), but the world is not the one
        // greenlight configured: no advance on it.
        d.set(
            Action::Hold,
            format!("Traffic split mismatch: {why}; not advancing."),
        );
        check_stuck(policy, s, now, d);
        return;
    }
    advance::advance_or_hold(policy, s, now, guards.failing, d);
}

/// A breaker that rolls back on trip (`on_trip = "rollback"`): a rollout under way onto its
/// cluster rolls back, whatever its phase (paused ones too).
fn held_rolls_back(policy: &Policy, s: &mut RolloutState, d: &mut Draft) -> bool {
    let Some(held) = s.held.clone().filter(|h| h.roll_back) else {
        return false;
    };
    if !matches!(s.phase, Phase::Progressing | Phase::Paused | Phase::Baking) {
        return false;
    }
    s.rollback_by = Some(held.by.clone());
    rollback::roll_back(policy, s, format!("Rolled back: {}", held.reason), d);
    true
}

/// Consumes the window, unless it overlaps one already counted (then: hold).
fn claim_window(s: &mut RolloutState, obs: &Observation, d: &mut Draft) -> bool {
    if let Some(last) = s.last_window_end {
        if obs.start < last {
            d.set(
                Action::Hold,
                format!(
                    "Window {}..{} overlaps one already counted (up to {last}).",
                    obs.start, obs.end
                ),
            );
            return false;
        }
    }
    s.last_window_end = Some(obs.end);
    s.intervals_at_step += 1;
    true
}

/// Adds the window's counts to every evidence stream.
/// The statistics compare the candidate against the stable copy, whatever their colours.
fn count_window(s: &mut RolloutState, obs: &Observation, d: &mut Draft) {
    let (stable, candidate) = (s.releases.stable, s.candidate());
    for stream in &mut s.streams {
        let Some(pair) = stream_counts(obs, &stream.check, stream.edge) else {
            continue;
        };
        let (c, b) = (pair.of(candidate), pair.of(stable));
        stream.rollback.update(c.requests, b.requests, c.bad, b.bad);
        stream.advance.update(c.requests, b.requests, c.bad, b.bad);
        if let Some(slo) = &mut stream.slo {
            slo.update(c.requests, c.bad);
        }
        add(&mut stream.step, &pair);
        add(&mut stream.total, &pair);
        d.counted.push((stream.id.clone(), pair));
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
    let adv = policy.advance_alpha_per_step();
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
    let (candidate, release) = DecisionRecord::release_of(action, &s);
    s.record(DecisionRecord {
        candidate,
        release,
        revision: 0,
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
        approved_by: d.approved_by.clone(),
        counted: d
            .counted
            .iter()
            .map(|(stream, counts)| CountRecord {
                stream: stream.clone(),
                counts: *counts,
            })
            .collect(),
    });
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

fn stream_counts(obs: &Observation, check: &str, edge: Option<f64>) -> Option<Pair> {
    match (obs.check(check)?, edge) {
        (Ok(CheckData::Errors { counts }), None) => Some(*counts),
        (Ok(CheckData::Latency { edges }), Some(edge)) => {
            edges.iter().find(|e| e.edge == edge).map(|e| e.counts)
        }
        _ => None,
    }
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
