//! Per-API rollout state: phase, step, evidence and counters. Serialisable (it lives in Consul KV).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::observation::Pair;
use crate::policy::{CheckKind, Policy, Weights};
use crate::stats::{RatioEProcess, SloEProcess, StagedEProcess};

/// How many past decisions the state keeps.
pub const HISTORY_LEN: usize = 60;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Green at 0 %, waiting for `start` (or `auto_start`).
    Pending,
    /// Green at `steps[step]`, collecting evidence.
    Progressing,
    /// Frozen by an operator or by a manual weight change; weights are left alone.
    Paused,
    /// Green at 100 %.
    Promoted,
    /// Green at 0 % after a rollback.
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        }
    }
}

/// An operator's request, written to the state by `greenlight start|pause|...` and obeyed at the
/// next evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "intent", rename_all = "snake_case")]
pub enum Intent {
    Start,
    Pause { reason: String },
    Resume,
    Rollback { reason: String },
    Promote,
}

/// Evidence of one statistical stream (an error-rate check, or one latency edge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// `check` for error rates, `check@edge` for latency edges.
    pub id: String,
    pub check: String,
    pub edge: Option<f64>,
    /// Rollback e-process (H0: green no worse than 1 + tolerance times blue), restarted as a
    /// mixture component at each step entry.
    pub rollback: StagedEProcess,
    /// Advance e-process (H0: green at least 1 + advance_tolerance times worse than blue).
    pub advance: RatioEProcess,
    /// Optional absolute advance evidence (H0: green's rate ≥ the check's `advance_max_rate`).
    pub slo: Option<SloEProcess>,
    /// Counts at the current step (warm-up excluded).
    pub step: Pair,
    /// Counts over the whole rollout (warm-up excluded).
    pub total: Pair,
}

/// The complete state of one API's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub api: String,
    pub phase: Phase,
    /// Why the rollout is paused, rolled back or holding; for `status`.
    pub reason: Option<String>,
    /// Index into the policy's steps (meaningful while progressing or paused).
    pub step: usize,
    /// Weights greenlight last decided on; the live weights should equal them.
    pub weights: Weights,
    /// Set while a weight change is decided but not yet confirmed applied: the weights before it.
    /// A restarted daemon finishes (or recognises) the change instead of calling it an override.
    pub applying_from: Option<Weights>,
    pub rollout_started_at: Option<Timestamp>,
    pub step_started_at: Option<Timestamp>,
    /// When the rollout last changed step (or started), for the "stuck" alert.
    pub last_progress_at: Option<Timestamp>,
    /// Windows evaluated at the current step, warm-up included.
    pub intervals_at_step: u32,
    /// End of the last window consumed; a window starting before it is never counted again.
    pub last_window_end: Option<Timestamp>,
    /// End of the last window whose data were all usable.
    pub last_good_data_at: Option<Timestamp>,
    /// Whether the "metrics unavailable" alert for the current outage has been raised.
    pub no_data_alerted: bool,
    /// Whether the "stuck" alert for the current step has been raised.
    pub stuck_alerted: bool,
    /// Whether the critical "rollback not applied" alert is outstanding (resolved when the
    /// rollback lands).
    #[serde(default)]
    pub rollback_unapplied: bool,
    /// When greenlight last confirmed its weights live on the traffic target (tells an HAProxy
    /// reload since then from a hand edit).
    #[serde(default)]
    pub weights_confirmed_at: Option<Timestamp>,
    pub streams: Vec<Stream>,
    /// Consecutive breaching windows per threshold check.
    pub threshold_failures: BTreeMap<String, u32>,
    /// Pending operator request.
    pub intent: Option<Intent>,
    /// Number of decisions taken; increases by one per decision.
    pub revision: u64,
    /// The most recent decisions, newest last.
    pub history: Vec<super::DecisionRecord>,
    /// What the data-quality rules remember between windows (recent counts, streaks).
    #[serde(default)]
    pub quality: super::QualityState,
}

impl RolloutState {
    /// A fresh state for `policy`: pending, green at 0.
    pub fn new(policy: &Policy) -> Self {
        let mut s = RolloutState {
            api: policy.api.clone(),
            phase: Phase::Pending,
            reason: None,
            step: 0,
            weights: policy.traffic.weights_for(0.0),
            applying_from: None,
            rollout_started_at: None,
            step_started_at: None,
            last_progress_at: None,
            intervals_at_step: 0,
            last_window_end: None,
            last_good_data_at: None,
            no_data_alerted: false,
            stuck_alerted: false,
            rollback_unapplied: false,
            weights_confirmed_at: None,
            streams: Vec::new(),
            threshold_failures: BTreeMap::new(),
            intent: None,
            revision: 0,
            history: Vec::new(),
            quality: Default::default(),
        };
        s.reconcile(policy);
        s
    }

    /// A state already progressing at step 0 since `now` (used by `simulate` and tests).
    pub fn started(policy: &Policy, now: Timestamp) -> Self {
        let mut s = RolloutState::new(policy);
        s.begin_rollout(policy, now);
        s
    }

    /// Resets evidence and enters step 0.
    pub(crate) fn begin_rollout(&mut self, policy: &Policy, now: Timestamp) {
        self.streams.clear();
        self.threshold_failures.clear();
        self.reconcile(policy);
        self.phase = Phase::Progressing;
        self.reason = None;
        self.rollout_started_at = Some(now);
        self.enter_step(policy, 0, now);
    }

    /// Moves to step `index` (weights change; evidence is kept, step counters reset).
    pub(crate) fn enter_step(&mut self, policy: &Policy, index: usize, now: Timestamp) {
        self.step = index;
        self.set_weights(policy.weights_at(index));
        self.step_started_at = Some(now);
        self.last_progress_at = Some(now);
        self.intervals_at_step = 0;
        self.stuck_alerted = false;
        for s in &mut self.streams {
            s.step = Pair::default();
            s.rollback.start_stage(index);
        }
    }

    pub(crate) fn set_weights(&mut self, new: Weights) {
        if new != self.weights {
            self.applying_from = Some(self.applying_from.unwrap_or(self.weights));
            self.weights = new;
        }
    }

    /// Aligns the evidence streams with the policy (checks added, removed or changed by a
    /// reloaded policy): unknown streams are added fresh, vanished ones dropped, the step clamped.
    pub fn reconcile(&mut self, policy: &Policy) {
        let mut wanted = Vec::new();
        for check in &policy.checks {
            match &check.kind {
                CheckKind::ErrorRate {
                    tolerance,
                    advance_tolerance,
                    overdispersion,
                    advance_max_rate,
                    ..
                } => wanted.push((
                    check.name.clone(),
                    None,
                    *tolerance,
                    *advance_tolerance,
                    *overdispersion,
                    *advance_max_rate,
                )),
                CheckKind::LatencyHistogram {
                    edges,
                    tolerance,
                    advance_tolerance,
                    overdispersion,
                    advance_max_rate,
                    ..
                } => {
                    for edge in edges {
                        wanted.push((
                            check.name.clone(),
                            Some(*edge),
                            *tolerance,
                            *advance_tolerance,
                            *overdispersion,
                            *advance_max_rate,
                        ))
                    }
                }
                CheckKind::Threshold { .. } => {}
            }
        }
        // Steps below 100 % compare blue with green; each is a stage of the rollback e-process.
        let stages = policy.steps.len().saturating_sub(1).max(1);
        let mut old = std::mem::take(&mut self.streams);
        for (check, edge, tol, adv, phi, slo) in wanted {
            let id = stream_id(&check, edge);
            let kept = old.iter().position(|s| {
                s.id == id
                    && s.rollback.r0() == 1.0 + tol
                    && s.advance.r0 == 1.0 + adv
                    && s.rollback.phi() == phi.max(1.0)
                    && s.rollback.started.len() == stages
                    && s.slo.as_ref().map(|e| e.q_max) == slo
            });
            match kept {
                Some(i) => self.streams.push(old.swap_remove(i)),
                None => self.streams.push(Stream {
                    id,
                    check,
                    edge,
                    rollback: StagedEProcess::new(RatioEProcess::rollback(tol, phi), stages),
                    advance: RatioEProcess::non_inferiority(adv, phi),
                    slo: slo.map(|q| SloEProcess::new(q, phi)),
                    step: Pair::default(),
                    total: Pair::default(),
                }),
            }
        }
        self.threshold_failures
            .retain(|name, _| policy.checks.iter().any(|c| &c.name == name));
        if self.step >= policy.steps.len() {
            self.step = policy.steps.len() - 1;
        }
    }

    /// Green requests counted at the current step (largest over the streams, warm-up excluded).
    pub fn step_green_requests(&self) -> f64 {
        self.streams
            .iter()
            .filter(|s| s.edge.is_none())
            .map(|s| s.step.green.requests)
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            })
            .or_else(|| self.streams.first().map(|s| s.step.green.requests))
            .unwrap_or(0.0)
    }
}

impl Stream {
    /// The advance e-value: non-inferiority alone, or its mean with the SLO e-value.
    pub fn advance_e(&self) -> f64 {
        match &self.slo {
            Some(slo) => 0.5 * (self.advance.e_value() + slo.e_value()),
            None => self.advance.e_value(),
        }
    }
}

/// Identifier of an evidence stream.
pub fn stream_id(check: &str, edge: Option<f64>) -> String {
    match edge {
        Some(e) => format!("{check}@{e}"),
        None => check.to_string(),
    }
}
