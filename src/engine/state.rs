//! Per-API rollout state: phase, step, evidence and counters. Serialisable (it lives in Consul KV).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::observation::Pair;
use crate::policy::{CheckKind, Colour, Policy, Weights};
use crate::stats::{log_sum_exp, RatioEProcess, SloEProcess, StagedEProcess};

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
    /// The candidate serves all traffic after the last step, watched for the policy's `bake`
    /// before it becomes stable.
    Baking,
    /// The candidate reached 100 % and became the stable colour.
    Promoted,
    /// Green at 0 % after a rollback.
    RolledBack,
}

impl Phase {
    /// Whether every window is evaluated in this phase (the steps and the bake), not only
    /// operator intents.
    pub fn evaluates_windows(self) -> bool {
        matches!(self, Phase::Progressing | Phase::Baking)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Baking => "baking",
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
    /// Start a rollout (onto the colour not stable, with an optional release id).
    Start {
        #[serde(default)]
        request: super::StartRequest,
    },
    Pause {
        reason: String,
    },
    /// Continue a paused rollout at its step, with the step's weights.
    Resume,
    /// Continue a paused rollout keeping the live weights (set by hand): the step becomes the
    /// highest one at or below the live green share.
    ResumeAdoptLive,
    Rollback {
        reason: String,
    },
    Promote,
}

/// An outside hold on a rollout (the cluster breaker): weights frozen, the rollout's own
/// rollback armed; with `roll_back`, the rollout rolls back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Who holds it (`breaker:<cluster>`).
    pub by: String,
    pub reason: String,
    #[serde(default)]
    pub roll_back: bool,
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
    /// Advance e-process (H0: green at least 1 + advance_tolerance times worse than blue),
    /// restarted at each step entry: it holds the evidence gathered at the current step only.
    pub advance: RatioEProcess,
    /// Optional absolute advance evidence (H0: green's rate ≥ the check's `advance_max_rate`),
    /// restarted with [`Stream::advance`].
    pub slo: Option<SloEProcess>,
    /// The step whose entry started the advance evidence. Absent in states written before the
    /// advance evidence was kept per step (it then ran since the rollout began, and is restarted
    /// at the current step when such a state is read back while the rollout goes on).
    #[serde(default)]
    pub advance_step: Option<usize>,
    /// During the bake: evidence that the candidate's rate exceeds its own rate over the
    /// rollout (times 1 + tolerance), and the candidate's counts since the bake began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<SloEProcess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_counts: Option<super::Counts>,
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
    /// When the current phase began (the rollback, the promotion, the pause…). Absent in states
    /// written before it was recorded.
    #[serde(default)]
    pub phase_since: Option<Timestamp>,
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
    /// The newest decision (what `status` and the overview show). The whole history is not
    /// part of the state: each decision is stored once, under its own key, by the store (see
    /// `daemon::store`), so that writing a state costs the same however long the rollout runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<super::DecisionRecord>,
    /// Decisions taken since this state was loaded and not yet stored: the store writes them
    /// with the state, then the caller clears them. Never part of the stored document.
    #[serde(skip)]
    pub new_records: Vec<super::DecisionRecord>,
    /// The history as states written before it moved to its own keys held it; read only, and
    /// moved by the store to the history keys at the next write.
    #[serde(default, rename = "history", skip_serializing)]
    pub legacy_history: Vec<super::DecisionRecord>,
    /// What the data-quality rules remember between windows (recent counts, streaks).
    #[serde(default)]
    pub quality: super::QualityState,
    /// Who recorded the pending [`RolloutState::intent`] (absent: greenlight, or a state written
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_by: Option<String>,
    /// Who started the current rollout (absent: started automatically, or not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// Set while the rollout waits at its step for a human to approve the next (gated) one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<ApprovalGate>,
    /// An approval recorded for the gated step the rollout waits before; consumed by the advance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Which colour is stable and which releases run where (absent in states written before
    /// rollouts had a direction: blue stable, repaired on decode for promoted ones).
    #[serde(default)]
    pub releases: super::Releases,
    /// Set by the daemon before each decision while the cluster the candidate runs on has its
    /// breaker tripped: the rollout holds (or rolls back); kept in the stored state for status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// Who asked for the current rollback (a person, or `breaker:<cluster>`); absent when
    /// greenlight rolled back on its own evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_by: Option<String>,
    /// While baking: when the bake ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until: Option<Timestamp>,
    /// Whether a breach during the bake has been alerted (`bake_on_breach = "alert"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bake_breach_alerted: bool,
}

/// A gate the rollout waits at: the evidence would advance it to `step`, which needs approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalGate {
    /// Index of the gated step (the one after the current step).
    pub step: usize,
    /// When the rollout began to wait.
    pub since: Timestamp,
    /// Whether `approval_timeout` has passed (then `on_approval_timeout` applied once).
    #[serde(default)]
    pub timed_out: bool,
}

/// A human's approval of one gated step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Index of the approved step.
    pub step: usize,
    pub by: String,
    pub at: Timestamp,
    pub reason: String,
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
            phase_since: None,
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
            last_decision: None,
            new_records: Vec::new(),
            legacy_history: Vec::new(),
            quality: Default::default(),
            intent_by: None,
            started_by: None,
            awaiting_approval: None,
            approval: None,
            releases: Default::default(),
            bake_until: None,
            bake_breach_alerted: false,
            held: None,
            rollback_by: None,
        };
        s.reconcile(policy);
        s
    }

    /// What observing this rollout's windows needs to know of it.
    pub fn roles(&self) -> crate::policy::Roles {
        crate::policy::Roles {
            stable: self.releases.stable,
            stable_optional: self.phase == Phase::Baking,
        }
    }

    /// The colour this rollout moves traffic onto.
    pub fn candidate(&self) -> Colour {
        self.releases.candidate()
    }

    /// The weights sending all traffic to the stable colour.
    pub fn stable_weights(&self, policy: &Policy) -> Weights {
        policy.traffic.weights_toward(self.candidate(), 0.0)
    }

    /// The candidate's share of the weights, in percent.
    pub fn candidate_percent(&self) -> f64 {
        self.weights.percent_of(self.candidate())
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
        self.started_by = None;
        self.rollout_started_at = Some(now);
        self.rollback_by = None;
        self.enter_step(policy, 0, now);
    }

    /// Moves to step `index` (weights change; evidence is kept, step counters reset).
    pub(crate) fn enter_step(&mut self, policy: &Policy, index: usize, now: Timestamp) {
        self.step = index;
        self.set_weights(policy.weights_at_toward(self.candidate(), index));
        self.step_started_at = Some(now);
        self.last_progress_at = Some(now);
        self.intervals_at_step = 0;
        self.stuck_alerted = false;
        // A gate and its approval belong to the step they were met at.
        self.awaiting_approval = None;
        self.approval = None;
        for s in &mut self.streams {
            s.step = Pair::default();
            s.rollback.start_stage(index);
            s.restart_advance(index);
        }
    }

    /// The candidate reached 100 % (and its bake, if any, ended): it becomes the stable colour.
    pub(crate) fn promote(&mut self, reason: String) {
        self.phase = Phase::Promoted;
        self.reason = Some(reason);
        self.releases.swap();
        self.end_bake();
    }

    /// Forgets the bake's evidence (it ended, or the rollout left it).
    pub(crate) fn end_bake(&mut self) {
        self.bake_until = None;
        self.bake_breach_alerted = false;
        for s in &mut self.streams {
            s.bake = None;
            s.bake_counts = None;
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
                    advance_step: Some(self.step),
                    bake: None,
                    bake_counts: None,
                    step: Pair::default(),
                    total: Pair::default(),
                }),
            }
        }
        // Advance evidence from another step (or, in a state written before it was kept per
        // step, from the whole rollout) is no evidence at this one: it starts again here.
        if matches!(self.phase, Phase::Progressing | Phase::Paused) {
            let step = self.step;
            for s in &mut self.streams {
                if s.advance_step != Some(step) {
                    s.restart_advance(step);
                }
            }
        }
        self.threshold_failures
            .retain(|name, _| policy.checks.iter().any(|c| &c.name == name));
        if self.step >= policy.steps.len() {
            self.step = policy.steps.len() - 1;
        }
        // A gate the (reloaded) policy no longer has, or not the next step: nothing waits.
        if self
            .awaiting_approval
            .as_ref()
            .is_some_and(|g| g.step != self.step + 1 || !policy.approval.gates(g.step))
        {
            self.awaiting_approval = None;
            self.approval = None;
        }
    }

    /// Records a rollback done outside the daemon (`greenlight rollback --now`) that sent all
    /// traffic to `to`: rolled back, nothing pending, `reason` kept and one history record added.
    /// `to` other than the stable colour undoes a promotion (or, with a state that could not be
    /// read, says which colour is stable).
    pub fn record_break_glass(
        &mut self,
        policy: &Policy,
        reason: &str,
        to: Colour,
        now: Timestamp,
    ) {
        // The candidate's release is rolled back when a rollout was under way, or when the
        // promotion of it is undone; not when traffic already was on the stable colour.
        let mut rolls_back_candidate = matches!(
            self.phase,
            Phase::Progressing | Phase::Paused | Phase::Baking
        );
        if to != self.releases.stable {
            if self.phase == Phase::Promoted {
                self.releases.swap();
                rolls_back_candidate = true;
            } else {
                self.releases.stable = to;
            }
        }
        self.phase = Phase::RolledBack;
        self.weights = self.stable_weights(policy);
        if rolls_back_candidate {
            self.releases.roll_back();
        }
        self.end_bake();
        self.applying_from = None;
        self.intent = None;
        self.intent_by = None;
        self.awaiting_approval = None;
        self.approval = None;
        self.reason = Some(reason.to_string());
        self.rollback_by = Some("break-glass".into());
        self.phase_since = Some(now);
        self.revision += 1;
        let (candidate, release) = super::DecisionRecord::release_of(super::Action::Rollback, self);
        self.record(super::DecisionRecord {
            candidate,
            release,
            revision: 0,
            at: now,
            window_end: self.last_window_end.unwrap_or(now),
            action: super::Action::Rollback,
            reason: reason.to_string(),
            step: self.step,
            weights: self.weights,
            evidence: self
                .streams
                .iter()
                .map(|s| EvidenceRecord {
                    stream: s.id.clone(),
                    rollback_log_e: s.rollback_log_e(),
                    advance_log_e: s.advance_log_e(),
                })
                .collect(),
            counted: Vec::new(),
            approved_by: None,
        });
    }

    /// Records the decision just taken (at [`RolloutState::revision`]): it becomes the last
    /// decision and waits in [`RolloutState::new_records`] for the store.
    pub fn record(&mut self, mut record: super::DecisionRecord) {
        record.revision = self.revision;
        self.last_decision = Some(record.clone());
        self.new_records.push(record);
        if self.new_records.len() > HISTORY_LEN {
            let extra = self.new_records.len() - HISTORY_LEN;
            self.new_records.drain(..extra);
        }
    }

    /// The history a state written by an older version carried, numbered by revision (the
    /// newest at the state's revision), with the last decision taken from it. Called on decode.
    fn adopt_legacy_history(&mut self) {
        let n = self.legacy_history.len() as u64;
        for (i, r) in self.legacy_history.iter_mut().enumerate() {
            if r.revision == 0 {
                r.revision = self.revision.saturating_sub(n - 1 - i as u64);
            }
        }
        if self.last_decision.is_none() {
            self.last_decision = self.legacy_history.last().cloned();
        }
    }

    /// Candidate requests counted at the current step (largest over the streams, warm-up
    /// excluded).
    pub fn step_green_requests(&self) -> f64 {
        let candidate = self.candidate();
        self.streams
            .iter()
            .filter(|s| s.edge.is_none())
            .map(|s| s.step.of(candidate).requests)
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            })
            .or_else(|| self.streams.first().map(|s| s.step.of(candidate).requests))
            .unwrap_or(0.0)
    }
}

impl Stream {
    /// Starts the advance evidence afresh for step `step` (the rollback evidence carries on).
    pub(crate) fn restart_advance(&mut self, step: usize) {
        self.advance.restart();
        if let Some(slo) = &mut self.slo {
            slo.restart();
        }
        self.advance_step = Some(step);
    }

    /// The advance e-value: non-inferiority alone, or its mean with the SLO e-value. For
    /// comparisons only: it overflows to infinity where [`Stream::advance_log_e`] does not.
    pub fn advance_e(&self) -> f64 {
        self.advance_log_e().exp()
    }

    /// ln of [`Stream::advance_e`], finite however strong the evidence.
    pub fn advance_log_e(&self) -> f64 {
        match &self.slo {
            Some(slo) => log_sum_exp(&[self.advance.log_e(), slo.log_e()]) - std::f64::consts::LN_2,
            None => self.advance.log_e(),
        }
    }

    /// ln of the rollback e-value.
    pub fn rollback_log_e(&self) -> f64 {
        self.rollback.log_e()
    }
}

/// One stream's evidence as recorded with a past decision, in log space (an e-value can exceed
/// the floating-point range; its logarithm does not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceRecord {
    pub stream: String,
    /// ln of the rollback e-value.
    pub rollback_log_e: f64,
    /// ln of the advance e-value.
    pub advance_log_e: f64,
}

/// Smallest positive e-value the previous format could hold: it rounded E to four decimals.
const LEGACY_ROUNDED_E: f64 = 5e-5;

impl<'de> Deserialize<'de> for EvidenceRecord {
    /// The current form, or the previous `[stream, E, E]` one, where an overflowed E was
    /// written as `null` (read as the largest float) and a tiny one rounded to 0 (read as 5e-5).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, SeqAccess, Visitor};

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EvidenceRecord;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{stream, rollback_log_e, advance_log_e} or [stream, E, E]")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EvidenceRecord, A::Error> {
                let (mut stream, mut rollback, mut advance) = (None, None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "stream" => stream = Some(map.next_value()?),
                        "rollback_log_e" => rollback = Some(map.next_value()?),
                        "advance_log_e" => advance = Some(map.next_value()?),
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(EvidenceRecord {
                    stream: stream.ok_or_else(|| A::Error::missing_field("stream"))?,
                    rollback_log_e: rollback
                        .ok_or_else(|| A::Error::missing_field("rollback_log_e"))?,
                    advance_log_e: advance
                        .ok_or_else(|| A::Error::missing_field("advance_log_e"))?,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EvidenceRecord, A::Error> {
                let legacy = |e: Option<f64>| match e {
                    None => f64::MAX.ln(),
                    Some(e) if e > 0.0 && e.is_finite() => e.ln(),
                    Some(e) if e > 0.0 => f64::MAX.ln(),
                    Some(_) => LEGACY_ROUNDED_E.ln(),
                };
                let stream: String = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let rollback: Option<f64> = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let advance: Option<f64> = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(2, &self))?;
                Ok(EvidenceRecord {
                    stream,
                    rollback_log_e: legacy(rollback),
                    advance_log_e: legacy(advance),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a state could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The state holds a number JSON cannot carry (NaN or infinite); nothing was written.
    #[error("{path} is not a finite number; the state was not written")]
    NotFinite { path: String },
    /// The encoded state does not read back as the same state; nothing was written.
    #[error("the encoded state does not read back as written ({0}); the state was not written")]
    RoundTrip(String),
    /// The stored bytes are not a state this version understands.
    #[error("{0}")]
    Decode(String),
}

/// The stored form of a state: JSON. Refuses any number that is not finite (serde would write
/// it as `null`, which no later read accepts), and checks that the bytes read back as the same
/// state, so whatever is written can always be read back. The decisions waiting for their own
/// keys ([`RolloutState::new_records`]) are not part of it: see [`encode_record`].
pub fn encode_state(state: &RolloutState) -> Result<Vec<u8>, CodecError> {
    encode_checked(state, |back: &mut RolloutState| {
        back.new_records.clone_from(&state.new_records);
        back.legacy_history.clone_from(&state.legacy_history);
    })
}

/// The stored form of one decision record, under the same rules as [`encode_state`].
pub fn encode_record(record: &super::DecisionRecord) -> Result<Vec<u8>, CodecError> {
    encode_checked(record, |_| {})
}

/// JSON that reads back as `value` (after `restore` puts back what the document leaves out).
fn encode_checked<T>(value: &T, restore: impl FnOnce(&mut T)) -> Result<Vec<u8>, CodecError>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq,
{
    let bytes = serde_json::to_vec(value).map_err(|e| CodecError::RoundTrip(e.to_string()))?;
    match serde_json::from_slice::<T>(&bytes) {
        Ok(mut back) => {
            restore(&mut back);
            if back == *value {
                Ok(bytes)
            } else {
                Err(CodecError::RoundTrip(
                    "a field reads back differently".into(),
                ))
            }
        }
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(&bytes);
            Err(match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(e) if e.inner().to_string().starts_with("invalid type: null") => {
                    CodecError::NotFinite {
                        path: e.path().to_string(),
                    }
                }
                Err(e) => CodecError::RoundTrip(format!("at {}: {}", e.path(), e.inner())),
                Ok(_) => CodecError::RoundTrip("it does not read back".into()),
            })
        }
    }
}

/// Reads a stored state, also one written by the previous version. Errors name the field.
pub fn decode_state(bytes: &[u8]) -> Result<RolloutState, CodecError> {
    let mut state: RolloutState = serde_json::from_slice(bytes).map_err(|plain| {
        // Read again, tracking the path, only to say where it failed.
        let mut de = serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize::<_, RolloutState>(&mut de) {
            Err(e) => CodecError::Decode(format!("at {}: {}", e.path(), e.inner())),
            Ok(_) => CodecError::Decode(plain.to_string()),
        }
    })?;
    state.adopt_legacy_history();
    state.releases.repair(state.phase, state.weights);
    Ok(state)
}

/// Identifier of an evidence stream.
pub fn stream_id(check: &str, edge: Option<f64>) -> String {
    match edge {
        Some(e) => format!("{check}@{e}"),
        None => check.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::{
        decide, Action, CheckData, CheckObservation, Counts, Decision, EdgeCounts, Observation,
    };

    /// A state written by the previous version after a metrics answer with counts of 1e300:
    /// its history holds `null` where the rollback E overflowed, and a `resume` intent.
    const PREVIOUS_VERSION: &str = include_str!("testdata/state_previous_version.json");

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_767_571_200 + minute * 60).unwrap()
    }

    /// One window of the engine tests' policy: `n` blue requests, green `share` of them, green
    /// error rate `ratio` times blue's `rate`, the p99 guard at `p99`.
    fn window(minute: i64, n: f64, share: f64, rate: f64, ratio: f64, p99: f64) -> Observation {
        let pair = |rate: f64| {
            let green_n = n * share;
            Pair {
                blue: Counts::new(n, (n * rate).round()),
                green: Counts::new(green_n, (green_n * (rate * ratio).min(1.0)).round()),
            }
        };
        Observation {
            start: t(minute - 1),
            end: t(minute),
            checks: vec![
                CheckObservation {
                    check: "errors".into(),
                    data: Ok(CheckData::Errors { counts: pair(rate) }),
                },
                CheckObservation {
                    check: "latency".into(),
                    data: Ok(CheckData::Latency {
                        edges: vec![
                            EdgeCounts {
                                edge: 0.25,
                                counts: pair((10.0 * rate).min(0.5)),
                            },
                            EdgeCounts {
                                edge: 1.0,
                                counts: pair(rate),
                            },
                        ],
                    }),
                },
                CheckObservation {
                    check: "p99".into(),
                    data: Ok(CheckData::Value {
                        candidate: p99,
                        stable: Some(0.3),
                    }),
                },
            ],
        }
    }

    fn round_trips(state: &RolloutState) -> Result<(), String> {
        let bytes = encode_state(state).map_err(|e| e.to_string())?;
        let back = decode_state(&bytes).map_err(|e| e.to_string())?;
        // The document leaves out the decisions (stored under their own keys, below) and an
        // old version's history (moved to its own key at the first write).
        let mut stored = state.clone();
        stored.new_records.clear();
        stored.legacy_history.clear();
        if back != stored {
            return Err(format!(
                "decoded state differs:\n{}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        for record in state.new_records.iter().chain(&state.legacy_history) {
            let bytes = encode_record(record).map_err(|e| e.to_string())?;
            let back: crate::engine::DecisionRecord =
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            if back != *record {
                return Err(format!(
                    "decoded record differs: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
        }
        Ok(())
    }

    fn served_evidence_is_finite(d: &Decision) -> bool {
        d.explanation
            .streams
            .iter()
            .all(|s| s.rollback_log_e.is_finite() && s.advance_log_e.is_finite())
            && d.state.new_records.iter().all(|h| {
                h.evidence
                    .iter()
                    .all(|e| e.rollback_log_e.is_finite() && e.advance_log_e.is_finite())
            })
    }

    #[test]
    fn a_window_of_1e300_counts_is_stored_and_read_back() {
        let mut policy = crate::engine::tests::policy();
        // Counts far beyond any plausibility cap, to reach the evidence's own limits.
        policy.data_quality.max_requests_per_second = f64::MAX;
        policy.data_quality.check_traffic_split = false;
        let mut state = RolloutState::new(&policy);
        for m in 1..=3 {
            state = decide(
                &policy,
                &state,
                &window(m, 1e300, 0.05, 0.001, 1.0, 0.3),
                t(m),
            )
            .state;
        }
        let d = decide(
            &policy,
            &state,
            &window(4, 1e300, 0.05, 0.001, 50.0, 0.3),
            t(4),
        );
        assert_eq!(d.action, Action::Rollback, "{}", d.reason);
        assert!(d.reason.contains("E ≥ 1e300 (ln E = "), "{}", d.reason);
        assert!(!d.reason.contains("inf"), "{}", d.reason);
        assert!(served_evidence_is_finite(&d));
        round_trips(&d.state).unwrap();
        let json = serde_json::to_string(&d.explanation).unwrap();
        assert!(!json.contains("_log_e\":null"), "{json}");
    }

    #[test]
    fn states_written_by_the_previous_version_still_load() {
        let state = decode_state(PREVIOUS_VERSION.as_bytes()).unwrap();
        assert_eq!(state.phase, Phase::RolledBack);
        assert_eq!(state.intent, Some(Intent::Resume));
        assert_eq!(state.phase_since, None);
        let last = state.legacy_history.last().unwrap();
        assert_eq!(state.last_decision.as_ref(), Some(last));
        assert_eq!(last.revision, state.revision);
        assert_eq!(last.action, Action::Rollback);
        // The overflowed E (written as null) reads as at least the largest float.
        assert_eq!(last.evidence[0].stream, "errors");
        assert_eq!(last.evidence[0].rollback_log_e, f64::MAX.ln());
        // A rounded-to-zero E reads as below 5e-5; ordinary values as their logarithm.
        assert_eq!(last.evidence[0].advance_log_e, 5e-5f64.ln());
        assert!((last.evidence[1].rollback_log_e - 0.32f64.ln()).abs() < 1e-12);
        // And it is written back in the current form, which reads back unchanged.
        round_trips(&state).unwrap();
        let text = String::from_utf8(encode_state(&state).unwrap()).unwrap();
        assert!(text.contains("\"rollback_log_e\""), "{text}");
        assert!(!text.contains("_log_e\":null"), "{text}");
    }

    #[test]
    fn the_encoder_refuses_numbers_that_would_not_read_back() {
        let policy = crate::engine::tests::policy();
        let mut state = RolloutState::started(&policy, t(0));
        state.streams[1].total.green.requests = f64::INFINITY;
        let err = encode_state(&state).unwrap_err();
        assert_eq!(
            err,
            CodecError::NotFinite {
                path: "streams[1].total.green.requests".into()
            }
        );
        assert!(err.to_string().contains("not written"), "{err}");
        let mut state = RolloutState::started(&policy, t(0));
        state.streams[0].edge = Some(f64::NAN);
        assert!(matches!(
            encode_state(&state),
            Err(CodecError::RoundTrip(_))
        ));
    }

    #[test]
    fn decode_errors_name_the_field() {
        let text = PREVIOUS_VERSION.replacen("\"step\": 0", "\"step\": \"zero\"", 1);
        let err = decode_state(text.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("at step: invalid type"), "{err}");
    }

    /// Long runs of the real engine on extreme but valid traffic: every state it produces is
    /// stored and read back exactly, and nothing it serves is infinite.
    #[test]
    fn every_state_the_engine_produces_round_trips() {
        let mut policy = crate::engine::tests::policy();
        policy.advance_on_dwell_below = Some(30.0);
        // Extreme but valid: no plausibility cap or split check holds the windows back.
        policy.data_quality.max_requests_per_second = f64::MAX;
        policy.data_quality.check_traffic_split = false;
        policy.min_step_duration = std::time::Duration::from_secs(120);
        let config = Config {
            // Two long runs of 2 000 windows: each window is encoded and decoded twice, which
            // dominates the test's time in a debug build.
            cases: 2,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[17; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let params = (any::<u64>(), 6.0f64..12.0, 0.0f64..1.0, 0.0f64..6.0);
        runner
            .run(&params, |(seed, max_exp, regress, blue_exp)| {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut state = RolloutState::new(&policy);
                // Green's error ratio for this run: healthy, regressed, or better than blue.
                let ratio = [1.0, 1.5, 4.0, 0.3][(regress * 4.0) as usize % 4];
                for m in 1..=2000i64 {
                    if rng.random_bool(0.02) {
                        state.intent = Some(match rng.random_range(0..6) {
                            0 => Intent::Start {
                                request: Default::default(),
                            },
                            1 => Intent::Pause {
                                reason: "checking".into(),
                            },
                            2 => Intent::Resume,
                            3 => Intent::ResumeAdoptLive,
                            4 => Intent::Rollback {
                                reason: "operator".into(),
                            },
                            _ => Intent::Promote,
                        });
                    }
                    // Requests per window up to 1e12 (and, rarely, 1e300).
                    let n = if rng.random_bool(0.005) {
                        1e300
                    } else {
                        10f64.powf(max_exp) * rng.random_range(0.8..1.25)
                    };
                    let rate = 10f64.powf(-rng.random_range(0.5..(1.5 + blue_exp)));
                    let share = rng.random_range(0.001..1.5);
                    let mut obs = window(m, n, share, rate, ratio, rng.random_range(0.0..0.7));
                    if rng.random_bool(0.03) {
                        obs.checks.remove(rng.random_range(0..obs.checks.len()));
                    }
                    let d = decide(&policy, &state, &obs, t(m) + SignedDuration::from_secs(5));
                    prop_assert!(
                        served_evidence_is_finite(&d),
                        "window {m}: {:?}",
                        d.explanation
                    );
                    if let Err(e) = round_trips(&d.state) {
                        return Err(TestCaseError::fail(format!("window {m}: {e}")));
                    }
                    state = d.state;
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn resume_adopting_live_keeps_the_hand_set_weights_as_the_step() {
        let policy = crate::engine::tests::policy();
        let mut state = RolloutState::started(&policy, t(0));
        state.applying_from = None;
        // Paused after someone set green to 40 of 100 by hand (the paused state follows it).
        state.phase = Phase::Paused;
        state.weights = crate::policy::Weights {
            blue: 60,
            green: 40,
        };
        state.intent = Some(Intent::ResumeAdoptLive);
        let d = decide(
            &policy,
            &state,
            &window(1, 11400.0, 0.05, 0.005, 1.0, 0.3),
            t(1),
        );
        assert_eq!(d.action, Action::Resume, "{}", d.reason);
        assert_eq!(d.set_weights, None, "nothing to write");
        assert_eq!(d.state.phase, Phase::Progressing);
        assert_eq!(d.state.step, 1, "25 % is the highest step at or below 40 %");
        assert_eq!(
            d.state.weights,
            crate::policy::Weights {
                blue: 60,
                green: 40
            }
        );
        assert!(
            d.reason.contains("keeping the live weights"),
            "{}",
            d.reason
        );
        // From the step instead: the step's weights are written.
        state.intent = Some(Intent::Resume);
        let d = decide(
            &policy,
            &state,
            &window(1, 11400.0, 0.05, 0.005, 1.0, 0.3),
            t(1),
        );
        assert_eq!(d.set_weights, Some(policy.weights_at(0)));
    }
}
