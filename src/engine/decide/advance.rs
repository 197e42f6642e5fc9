//! Advance: schedule, dwell, requests, no evidence against green, and evidence for it gathered at
//! this step (or the policy's probe steps and maximum dwell).

use jiff::Timestamp;

use super::approval::{self, Gate};
use super::bake;
use super::{
    check_stuck, describe_stream, elapsed, fmt_dur, in_schedule, Action, Draft,
    ADVANCE_MAX_ROLLBACK_E,
};
use crate::engine::state::RolloutState;
use crate::policy::{MaxStepAction, Policy};
use crate::stats::format_e;

/// Advances when every condition is met; otherwise holds with the first one lacking.
pub(super) fn advance_or_hold(
    policy: &Policy,
    s: &mut RolloutState,
    now: Timestamp,
    guard_failing: bool,
    d: &mut Draft,
) {
    if approval::timed_out(policy, s, now, d) {
        return;
    }
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
    // Messages name the colours: the candidate is green onto green, blue onto blue.
    let (c, b) = (s.candidate(), s.releases.stable);
    let green_requests = s.step_green_requests();
    if green_requests < policy.min_green_requests_per_step as f64 {
        d.set(
            Action::Hold,
            format!(
                "Minimum {c} requests: {:.0} of {} at this step.",
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
                "{} shows some evidence against {c} ({} ≥ {}); not advancing.",
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
    // Every stream's advance evidence was gathered at this step (it restarts at each step
    // entry), against a threshold that keeps the false-advance level over the whole rollout
    // (`Policy::advance_alpha_per_step`).
    let adv_threshold = 1.0 / policy.advance_alpha_per_step();
    let share = policy.steps[s.step];
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
                    "Probe step ({} % < advance_on_dwell_below): dwell and requests met with no evidence against {c}.",
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
                    "Maximum step duration reached with no evidence against {c} (still lacking at {} %: {}).",
                    share,
                    lacking.join(", ")
                ),
                d,
            );
        } else {
            d.set(
                Action::Hold,
                format!(
                    "Collecting evidence at this step ({} %) that {c} is no worse (need E ≥ {:.0}): {}.",
                    share,
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
            "{} is no worse than {b} on every check at this step ({share} %; advance evidence ≥ {adv_threshold:.0}).",
            c.capitalised()
        ),
        d,
    );
}

/// Moves the candidate up one step (promoting at the last), unless that step waits for an approval.
fn advance(policy: &Policy, s: &mut RolloutState, now: Timestamp, reason: String, d: &mut Draft) {
    let next = s.step + 1;
    let reason = match approval::gate(policy, s, next, now, &reason, d) {
        Gate::Closed => return,
        Gate::Open(None) => reason,
        Gate::Open(Some(a)) => {
            let why = format!("{reason} Approved by {}: {}", a.by, a.reason);
            d.approved_by = Some(a.by);
            why
        }
    };
    s.enter_step(policy, next, now);
    if next + 1 == policy.steps.len() {
        if let Some(baking) = bake::begin(policy, s, now) {
            d.set(Action::Advance, format!("{reason} {baking}"));
            return;
        }
        s.promote("promoted".into());
        d.set(Action::Promote, reason);
    } else {
        d.set(Action::Advance, reason);
    }
}
