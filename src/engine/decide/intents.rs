//! Operator intents and the phases in which there is nothing to evaluate.

use jiff::Timestamp;

use super::{in_schedule, quality, rollback, Action, Draft};
use crate::engine::observation::Observation;
use crate::engine::release::{check_start, release_suffix, StartRequest};
use crate::engine::state::{Intent, Phase, RolloutState};
use crate::policy::{Colour, Policy, Weights};

/// The highest step whose share is at or below `live`'s share for `candidate` (the first step
/// below it), never the last step, which is a promotion.
pub fn adopted_step(policy: &Policy, live: Weights, candidate: Colour) -> usize {
    let share = live.percent_of(candidate);
    let below_last = policy.steps.len().saturating_sub(1).max(1);
    policy.steps[..below_last]
        .iter()
        .rposition(|p| *p <= share + 1e-9)
        .unwrap_or(0)
}

/// Obeys an operator's request, recorded by `by` (absent: not recorded).
pub(super) fn apply(
    policy: &Policy,
    s: &mut RolloutState,
    intent: Intent,
    by: Option<String>,
    now: Timestamp,
    d: &mut Draft,
) {
    let who = by.as_deref().unwrap_or("an operator").to_string();
    match intent {
        Intent::Start { request } => match s.phase {
            Phase::Pending | Phase::RolledBack | Phase::Promoted => {
                // A campaign's start is nobody's typing: it never re-runs a rolled-back release.
                let automatic = by.as_deref().is_some_and(|b| b.starts_with("campaign:"));
                let checked = match &s.held {
                    Some(held) => Err(held.reason.clone()),
                    None => check_start(policy, &s.releases, &request, automatic),
                };
                match checked {
                    Ok(candidate) => {
                        s.releases.candidate_release = request.release.clone();
                        s.begin_rollout(policy, now);
                        s.quality = Default::default();
                        s.started_by = by;
                        d.set(
                            Action::Start,
                            format!(
                                "Rollout started by {who}: {}{candidate} (candidate) from {} (stable).",
                                request
                                    .release
                                    .as_deref()
                                    .map(|r| format!("release {r} onto "))
                                    .unwrap_or_default(),
                                s.releases.stable
                            ),
                        );
                    }
                    Err(why) => d.set(Action::Hold, format!("Start refused: {why}.")),
                }
            }
            Phase::Progressing | Phase::Paused | Phase::Baking => d.set(
                Action::Hold,
                "Start ignored: the rollout is already running.",
            ),
        },
        Intent::Pause { reason } => match s.phase {
            Phase::Progressing | Phase::Pending => {
                s.phase = Phase::Paused;
                s.reason = Some(reason.clone());
                d.set(Action::Pause, format!("Paused by {who}: {reason}"));
            }
            Phase::Baking => d.set(
                Action::Hold,
                "Pause ignored: the candidate is baking at 100 %; `rollback` or `promote` ends the bake.",
            ),
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
                        "Resumed by {who} at step {} with its weights (blue={} green={}).",
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
                let step = adopted_step(policy, live, s.candidate());
                s.phase = Phase::Progressing;
                s.reason = None;
                s.enter_step(policy, step, now);
                s.weights = live;
                s.applying_from = pending;
                d.set(
                    Action::Resume,
                    format!(
                        "Resumed by {who} keeping the live weights (blue={} green={}) as step {} ({} %).",
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
            Phase::Promoted => {
                // Undo the promotion: the previous stable colour (still running its release
                // unless it was redeployed) takes all traffic back.
                s.releases.swap();
                s.rollback_by = Some(who.clone());
                rollback::roll_back(
                    policy,
                    s,
                    match &by {
                        Some(user) => {
                            format!("Operator rollback of the promotion by {user}: {reason}")
                        }
                        None => format!("Operator rollback of the promotion: {reason}"),
                    },
                    d,
                )
            }
            _ => {
                s.rollback_by = Some(who.clone());
                rollback::roll_back(
                policy,
                s,
                match &by {
                    Some(user) => format!("Operator rollback by {user}: {reason}"),
                    None => format!("Operator rollback: {reason}"),
                },
                d,
            );
            }
        },
        Intent::Promote => match s.phase {
            Phase::Promoted => d.set(Action::Hold, "Promote ignored: already promoted."),
            _ => {
                let last = policy.steps.len() - 1;
                let candidate = s.candidate();
                s.enter_step(policy, last, now);
                s.promote(format!("promoted by {who}"));
                d.set(
                    Action::Promote,
                    format!("Promoted {candidate} to 100 % by {who}."),
                );
            }
        },
    }
}

/// Whether the rollout is progressing (the window is to be evaluated). Otherwise the decision
/// is settled here: an automatic start, or a hold saying why nothing happens.
pub(super) fn progressing(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    now: Timestamp,
    d: &mut Draft,
) -> bool {
    match s.phase {
        Phase::Pending => {
            if !policy.auto_start {
                d.set(Action::Hold, "Waiting for `greenlight start`.");
            } else if !in_schedule(policy, now) {
                d.set(Action::Hold, "Waiting for a schedule window to start.");
            } else if let problems @ [_, ..] = quality::backend_problems(policy, obs).as_slice() {
                // Green has no traffic (and often no series) yet, so only a failing metrics
                // backend holds the start back.
                d.set(
                    Action::Hold,
                    format!(
                        "Waiting for the metrics backend before starting: {}.",
                        problems.join("; ")
                    ),
                );
            } else if let Some(held) = &s.held {
                d.set(
                    Action::Hold,
                    format!("Not starting automatically: {}.", held.reason),
                );
            } else if let Err(why) =
                check_start(policy, &s.releases, &StartRequest::default(), true)
            {
                d.set(Action::Hold, format!("Not starting automatically: {why}."));
            } else {
                s.begin_rollout(policy, now);
                s.quality = Default::default();
                s.last_window_end = Some(obs.end);
                d.set(
                    Action::Start,
                    format!("Rollout onto {} started automatically.", s.candidate()),
                );
            }
            false
        }
        Phase::Paused => {
            let why = s.reason.clone().unwrap_or_else(|| "paused".into());
            d.set(Action::Hold, format!("Paused: {why}"));
            false
        }
        Phase::Promoted => {
            let stable = s.releases.stable;
            let release = release_suffix(s.releases.stable_release.as_deref());
            d.set(
                Action::Hold,
                format!("Promoted: {stable}{release} serves all traffic."),
            );
            false
        }
        Phase::RolledBack => {
            let why = s.reason.clone().unwrap_or_default();
            d.set(Action::Hold, format!("Rolled back: {why}"));
            false
        }
        Phase::Progressing | Phase::Baking => true,
    }
}
