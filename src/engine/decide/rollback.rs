//! Rollback: a stream's evidence crossing 1/α, or a threshold guard failing on green alone.

use super::{describe_stream, Action, Draft};
use crate::engine::state::{Phase, RolloutState};
use crate::policy::{CheckKind, Policy};
use crate::stats::format_e;

/// Rolls back when the evidence or a guard says so; returns whether it did.
pub(super) fn due(
    policy: &Policy,
    s: &mut RolloutState,
    guard_breach: Option<String>,
    d: &mut Draft,
) -> bool {
    let alpha = policy.alpha_per_stream();
    let (stable, candidate) = (s.releases.stable, s.candidate());
    for stream in &s.streams {
        let min_errors = min_errors_of(policy, &stream.check);
        let (c, b) = (stream.total.of(candidate), stream.total.of(stable));
        if stream.rollback.crossed(alpha) && c.bad >= min_errors as f64 {
            let reason = format!(
                "{}: the candidate ({candidate})'s rate {:.4} vs the stable ({stable})'s {:.4}; evidence {} ≥ 1/α = {:.0}",
                describe_stream(stream.check.as_str(), stream.edge),
                c.rate(),
                b.rate(),
                format_e(stream.rollback.log_e()),
                1.0 / alpha
            );
            roll_back(policy, s, reason, d);
            return true;
        }
    }
    if let Some(reason) = guard_breach {
        roll_back(policy, s, reason, d);
        return true;
    }
    false
}

/// Sends the candidate back to 0 %: all traffic to the stable colour. The data-quality streaks
/// end with it (their alerts resolve; the rollback alert says what happened).
pub(super) fn roll_back(policy: &Policy, s: &mut RolloutState, reason: String, d: &mut Draft) {
    s.quality = Default::default();
    s.awaiting_approval = None;
    s.approval = None;
    s.phase = Phase::RolledBack;
    s.set_weights(s.stable_weights(policy));
    s.releases.roll_back();
    s.end_bake();
    s.reason = Some(reason.clone());
    d.set(Action::Rollback, reason);
}

pub(super) fn min_errors_of(policy: &Policy, check: &str) -> u64 {
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
