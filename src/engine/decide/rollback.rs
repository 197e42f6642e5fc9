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

/// Sends green back to 0 %. The data-quality streaks end with it (their alerts resolve; the
/// rollback alert says what happened).
pub(super) fn roll_back(policy: &Policy, s: &mut RolloutState, reason: String, d: &mut Draft) {
    s.quality = Default::default();
    s.awaiting_approval = None;
    s.approval = None;
    s.phase = Phase::RolledBack;
    s.set_weights(policy.traffic.weights_for(0.0));
    s.reason = Some(reason.clone());
    d.set(Action::Rollback, reason);
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
