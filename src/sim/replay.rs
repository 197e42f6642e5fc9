//! Backtesting: the engine's decisions on a sequence of recorded windows, as if greenlight had
//! been running from the first one. Pure; the caller fetches the observations.
//!
//! History cannot be changed: the traffic split in the recorded windows is whatever it was,
//! whatever the replayed decisions say. A replay answers "when would greenlight have rolled
//! back (or advanced)", not "what would green have served".

use jiff::Timestamp;
use serde::Serialize;

use super::Outcome;
use crate::engine::{decide, Action, Observation, Phase, RolloutState};
use crate::policy::Policy;

/// One replayed window and the decision taken on it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayWindow {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Step index and green percent the replayed rollout was at when the window ended.
    pub step: usize,
    pub green_percent: f64,
    pub action: Action,
    pub reason: String,
    /// Each stream's evidence after the decision, in log space.
    pub evidence: Vec<crate::engine::EvidenceRecord>,
}

/// A replay in progress.
pub struct Replay<'a> {
    policy: &'a Policy,
    state: RolloutState,
    timeline: Vec<ReplayWindow>,
    decided_at: Option<Timestamp>,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub api: String,
    pub from: Timestamp,
    pub to: Timestamp,
    pub outcome: Outcome,
    /// End of the window whose decision promoted or rolled back.
    pub decided_at: Option<Timestamp>,
    pub final_reason: String,
    pub timeline: Vec<ReplayWindow>,
}

impl<'a> Replay<'a> {
    /// A rollout that starts at step 0 at `from`.
    pub fn new(policy: &'a Policy, from: Timestamp) -> Self {
        Replay {
            policy,
            state: RolloutState::started(policy, from),
            timeline: Vec::new(),
            decided_at: None,
        }
    }

    /// Whether the replayed rollout has promoted or rolled back (later windows change nothing).
    pub fn done(&self) -> bool {
        matches!(self.state.phase, Phase::Promoted | Phase::RolledBack)
    }

    /// Decides on the next window (evaluated at its end).
    pub fn push(&mut self, obs: &Observation) -> &ReplayWindow {
        let d = decide(self.policy, &self.state, obs, obs.end);
        self.state = d.state;
        // The timeline keeps what a replay shows; nothing stores the records.
        self.state.new_records.clear();
        if self.decided_at.is_none() && self.done() {
            self.decided_at = Some(obs.end);
        }
        let green_percent = match self.state.phase {
            Phase::Promoted => 100.0,
            Phase::RolledBack | Phase::Pending => 0.0,
            _ => self.policy.steps[self.state.step],
        };
        self.timeline.push(ReplayWindow {
            start: obs.start,
            end: obs.end,
            step: self.state.step,
            green_percent,
            action: d.action,
            reason: d.reason,
            evidence: self
                .state
                .last_decision
                .as_ref()
                .map(|h| h.evidence.clone())
                .unwrap_or_default(),
        });
        self.timeline.last().expect("just pushed")
    }

    pub fn finish(self, from: Timestamp, to: Timestamp) -> ReplayReport {
        let outcome = match self.state.phase {
            Phase::Promoted => Outcome::Promoted,
            Phase::RolledBack => Outcome::RolledBack,
            _ => Outcome::Held,
        };
        ReplayReport {
            api: self.policy.api.clone(),
            from,
            to,
            outcome,
            decided_at: self.decided_at,
            final_reason: self
                .timeline
                .last()
                .map(|w| w.reason.clone())
                .unwrap_or_else(|| "No complete window in the range.".into()),
            timeline: self.timeline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{default_start, Scenario, World};
    use jiff::SignedDuration;

    fn replay(scenario: &str) -> ReplayReport {
        let policy = crate::engine::tests::policy();
        let scenario: Scenario = scenario.parse().unwrap();
        // Recorded history at a fixed 5 % split: weights in history do not follow the replay.
        let mut world = World::new(&policy, &scenario, 7);
        let from = default_start(&policy);
        let mut r = Replay::new(&policy, from);
        let mut t = from;
        for _ in 0..180 {
            let end = t + SignedDuration::from_mins(1);
            let obs = world.observe(t, end, 0.05, 0);
            r.push(&obs);
            t = end;
            if r.done() {
                break;
            }
        }
        r.finish(from, t)
    }

    #[test]
    fn a_recorded_regression_is_rolled_back() {
        let r = replay("errors=4x");
        assert_eq!(r.outcome, Outcome::RolledBack, "{}", r.final_reason);
        assert_eq!(r.timeline.last().unwrap().action, Action::Rollback);
        assert_eq!(r.decided_at, Some(r.timeline.last().unwrap().end));
    }

    #[test]
    fn a_healthy_history_is_not_rolled_back() {
        let r = replay("healthy");
        assert_ne!(r.outcome, Outcome::RolledBack, "{}", r.final_reason);
        assert!(r.timeline.iter().all(|w| w.action != Action::Rollback));
    }
}
