//! The invariants of a simulated night, checked after every simulated interval against what
//! the world holds (the stored state, the live weights, the writes that landed, the alerts).

use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::lock;
use super::world::{MetricsMode, WorldState};
use crate::engine::{Phase, RolloutState};
use crate::policy::{Policy, Weights};

/// What the invariants compare from one step to the next.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    state: Option<RolloutState>,
    live: Option<Weights>,
    landed: usize,
    overrides: u64,
}

/// The invariants, with what they remember across steps.
#[derive(Debug, Default)]
pub(super) struct Checker {
    pub(super) last: Option<RolloutState>,
    pub(super) human_since: Option<Timestamp>,
    /// Steps a decided rollback has been unapplied with no "not applied" alert.
    unapplied_steps: u32,
    /// The current rollout's recorded start and the step at which it was first seen.
    rollout: Option<(Timestamp, u64)>,
    /// Whether a stored state was ever seen baking.
    pub(super) baked: bool,
}

pub(super) type Broken = (&'static str, String);

impl Checker {
    pub(super) fn snapshot(
        &self,
        world: &Arc<Mutex<WorldState>>,
        key: &str,
        api: &str,
    ) -> Snapshot {
        let mut w = lock(world);
        Snapshot {
            state: w.checked_state(api, key).and_then(|c| c.state.ok()),
            live: w.weights.get(api).copied(),
            landed: w.landed.len(),
            overrides: w.overrides,
        }
    }

    pub(super) fn check(
        &mut self,
        world: &Arc<Mutex<WorldState>>,
        policy: &Policy,
        key: &str,
        before: &Snapshot,
        intent_this_step: bool,
    ) -> Result<(), Broken> {
        let mut w = lock(world);
        let api = policy.api.as_str();
        let Some(checked) = w.checked_state(api, key) else {
            return Ok(());
        };
        // Nothing non-finite in what is stored.
        if let Some(path) = checked.null_at {
            return Err(("nothing non-finite is stored", format!("null at {path}")));
        }
        // The stored state always decodes.
        let state = match checked.state {
            Err(e) => return Err(("the stored state always decodes", e)),
            Ok(s) => s,
        };
        let live = w
            .weights
            .get(api)
            .copied()
            .unwrap_or(Weights { blue: 0, green: 0 });
        let total = policy.traffic.total_weight;
        // Blue + green = total, never a half-applied split.
        if live.blue + live.green != total {
            return Err((
                "blue + green = total",
                format!("blue={} green={} total={total}", live.blue, live.green),
            ));
        }
        // On every HAProxy node that answers too.
        let now = w.now;
        if let Some((i, n)) = w
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.reachable(now) && n.weights.blue + n.weights.green != total)
        {
            return Err((
                "blue + green = total",
                format!(
                    "HAProxy node {i}: blue={} green={} total={total}",
                    n.weights.blue, n.weights.green
                ),
            ));
        }
        // The state is never older than a confirmed weight change.
        let human = w.human.get(api).copied();
        let released = w.released_human.get(api).copied();
        if live != state.weights
            && Some(live) != state.applying_from
            && Some(live) != human
            && Some(live) != released
        {
            return Err((
                "the stored state knows the live weights",
                format!(
                    "live blue={} green={}, state blue={} green={} (applying from {:?})",
                    live.blue,
                    live.green,
                    state.weights.blue,
                    state.weights.green,
                    state.applying_from
                ),
            ));
        }
        let new_writes = &w.landed[before.landed..];
        // Only the lock holder writes.
        if let Some(l) = new_writes.iter().find(|l| l.session != l.holder) {
            return Err((
                "only the lock holder writes",
                format!(
                    "instance {} wrote {} with session {:?} while {:?} held the lock",
                    l.instance, l.what, l.session, l.holder
                ),
            ));
        }
        // Writing back the split greenlight already had (onto an HAProxy node that restarted)
        // changes no weight.
        let had = before.state.as_ref().map(|s| s.weights);
        let weight_writes = new_writes
            .iter()
            .filter(|l| l.what.starts_with("weights") && (l.weights.is_none() || l.weights != had))
            .count();
        // Writing a human's own split back onto a node that restarted overwrites nothing.
        let overwrites = new_writes
            .iter()
            .filter(|l| {
                l.what.starts_with("weights") && (l.weights.is_none() || l.weights != human)
            })
            .count();
        // A weight set by a human is never overwritten.
        if before.live.is_some() && human.is_some() && overwrites > 0 {
            return Err((
                "a weight set by a human is never overwritten",
                format!(
                    "greenlight wrote weights while a human's blue={} green={} stood",
                    live.blue, live.green
                ),
            ));
        }
        // No weight change and no rollback on unusable data.
        let prior_pending = before
            .state
            .as_ref()
            .is_some_and(|s| s.applying_from.is_some());
        let prior_intent = before.state.as_ref().is_some_and(|s| s.intent.is_some());
        // Green has no series before its rollout starts: an automatic start may not wait for them.
        let starting = before
            .state
            .as_ref()
            .is_none_or(|s| s.phase == Phase::Pending)
            && w.metrics == MetricsMode::GreenMissing;
        if !w.metrics.usable() && !intent_this_step && !prior_intent && !prior_pending && !starting
        {
            if weight_writes > 0 {
                return Err((
                    "no weight change while the data are unusable",
                    format!(
                        "metrics {:?}, weights now blue={} green={}",
                        w.metrics, live.blue, live.green
                    ),
                ));
            }
            let was = before.state.as_ref().map(|s| s.phase);
            if state.phase == Phase::RolledBack && was != Some(Phase::RolledBack) {
                return Err((
                    "no rollback on unusable data",
                    format!(
                        "metrics {:?}: {}",
                        w.metrics,
                        state.reason.clone().unwrap_or_default()
                    ),
                ));
            }
        }
        // A decided rollback is applied, or a critical "not applied" alert is outstanding.
        let rollback_weights = policy.traffic.weights_for(0.0);
        // On HAProxy: on every node that answers, whatever a node down meanwhile missed.
        let green_on_a_node = w
            .nodes
            .iter()
            .any(|n| n.reachable(now) && n.weights.green > 0);
        let no_human = human.is_none() && released.is_none();
        if state.phase == Phase::RolledBack
            && ((state.applying_from.is_some() && live != rollback_weights)
                || (no_human && state.weights == rollback_weights && green_on_a_node))
        {
            let alerted = state.rollback_unapplied
                && w.produced
                    .iter()
                    .any(|(k, r)| !r && k.ends_with("-not-applied"));
            if alerted {
                self.unapplied_steps = 0;
            } else {
                self.unapplied_steps += 1;
                if self.unapplied_steps >= 3 {
                    return Err((
                        "a decided rollback is applied or alerted as not applied",
                        format!(
                            "live blue={} green={} for {} steps",
                            live.blue, live.green, self.unapplied_steps
                        ),
                    ));
                }
            }
        } else {
            self.unapplied_steps = 0;
        }
        // An HAProxy node that restarted at its configured weights is re-applied, never taken
        // for a human edit: no override alert, no pause.
        let human_involved = !no_human || self.human_since.is_some();
        let paused_now = state.phase == Phase::Paused
            && before
                .state
                .as_ref()
                .is_none_or(|s| s.phase != Phase::Paused);
        if !human_involved && (w.overrides > before.overrides || paused_now) {
            return Err((
                "a reload is re-applied, never taken for a human edit",
                format!(
                    "{} override alerts, phase {:?}: {}",
                    w.overrides - before.overrides,
                    state.phase,
                    state.reason.clone().unwrap_or_default()
                ),
            ));
        }
        // No window counted twice; evidence never reset by a crash or failover.
        if let Some(prev) = &self.last {
            let same_rollout = prev.rollout_started_at == state.rollout_started_at;
            if same_rollout {
                // Windows consumed without data may be given back (a corrected forward clock
                // jump); windows whose data counted never are.
                if state.last_good_data_at < prev.last_good_data_at {
                    return Err((
                        "no window is counted twice",
                        format!(
                            "the end of the last counted window went back from {:?} to {:?}",
                            prev.last_good_data_at, state.last_good_data_at
                        ),
                    ));
                }
                // The rollback evidence runs over the whole rollout; the advance evidence over
                // the current step (it restarts when a step is entered, by design).
                for (a, b) in prev.streams.iter().zip(&state.streams) {
                    if a.id != b.id {
                        continue;
                    }
                    let (before, after) = (rollout_windows(a), rollout_windows(b));
                    let same_step = a.advance_step.is_some() && a.advance_step == b.advance_step;
                    if after < before || (same_step && b.advance.intervals < a.advance.intervals) {
                        return Err((
                            "evidence is never reset by a crash or failover",
                            format!(
                                "{}: {before} counted windows ({} at the step), then {after} ({})",
                                a.id, a.advance.intervals, b.advance.intervals
                            ),
                        ));
                    }
                }
            }
        }
        // Counted windows never exceed the intervals of true time since the rollout began (its
        // recorded start comes from an instance's clock, which may be off).
        if self.rollout.map(|(t, _)| t) != state.rollout_started_at {
            self.rollout = state.rollout_started_at.map(|t| (t, w.step));
        }
        if let Some((_, first_step)) = self.rollout {
            let windows = (w.step - first_step) as i64;
            for s in &state.streams {
                if rollout_windows(s) as i64 > windows + 1 {
                    return Err((
                        "no window is counted twice",
                        format!(
                            "{}: {} windows counted in {} intervals",
                            s.id,
                            rollout_windows(s),
                            windows
                        ),
                    ));
                }
            }
        }
        drop(w);
        self.baked |= state.phase == Phase::Baking;
        self.last = Some(state);
        Ok(())
    }
}

/// Windows a stream counted since the rollout began: those of its rollback evidence's first
/// component, which runs over the whole rollout (the advance evidence restarts at each step).
fn rollout_windows(s: &crate::engine::Stream) -> u64 {
    s.rollback
        .started
        .first()
        .and_then(Option::as_ref)
        .map_or(0, |c| c.intervals)
}
