//! Threshold guards (absolute limits on the candidate) and the stable copy's own health.

use super::{limit_text, Draft, GuardReport};
use crate::engine::observation::{CheckData, Observation};
use crate::engine::state::RolloutState;
use crate::policy::{CheckKind, Cohort, Colour, Policy};

/// What the threshold guards say about this window.
pub(super) struct Guards {
    /// The first guard that failed its `failures` windows in a row: the rollback reason.
    pub breach: Option<String>,
    /// Whether any guard breached in this window (no advance then).
    pub failing: bool,
}

/// Updates the consecutive-failure counters of the threshold guards and reports them.
pub(super) fn evaluate(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    d: &mut Draft,
) -> Guards {
    // The candidate's requests this window, from the first error-rate check.
    let candidate_colour = s.candidate();
    let window_green_requests =
        policy
            .checks
            .iter()
            .find_map(|c| match (&c.kind, obs.check(&c.name)) {
                (CheckKind::ErrorRate { .. }, Some(Ok(CheckData::Errors { counts }))) => {
                    Some(counts.of(candidate_colour).requests)
                }
                _ => None,
            });
    let mut out = Guards {
        breach: None,
        failing: false,
    };
    for check in &policy.checks {
        let CheckKind::Threshold {
            max,
            min,
            failures,
            min_green_requests,
            cohort,
            ..
        } = &check.kind
        else {
            continue;
        };
        let Some(Ok(CheckData::Value {
            candidate: green,
            stable: blue,
        })) = obs.check(&check.name)
        else {
            continue;
        };
        let breaches = |v: f64| max.is_some_and(|m| v > m) || min.is_some_and(|m| v < m);
        let count = s.threshold_failures.entry(check.name.clone()).or_insert(0);
        // Those requests are the random cohort's: they say nothing about a pinned cohort's.
        let pinned = *cohort == Cohort::Pinned;
        let enough_traffic =
            pinned || window_green_requests.is_none_or(|n| n >= *min_green_requests as f64);
        if !enough_traffic {
            // Too few green requests for the value to mean anything: the window neither counts
            // as a failure nor clears earlier ones.
        } else if breaches(*green) && !blue.is_some_and(breaches) {
            *count += 1;
            out.failing = true;
            if *count >= *failures && out.breach.is_none() {
                let (whose, side) = if pinned {
                    (
                        " on the pinned cohort",
                        format!("pinned {candidate_colour}"),
                    )
                } else {
                    ("", s.releases.role(candidate_colour))
                };
                out.breach = Some(format!(
                    "{} guard{whose} failed {} windows in a row ({side} {:.4}, limit {})",
                    check.name,
                    count,
                    green,
                    limit_text(*max, *min)
                ));
            }
        } else {
            *count = 0;
        }
        let (green, blue) = match candidate_colour {
            crate::policy::Colour::Green => (Some(*green), *blue),
            crate::policy::Colour::Blue => (*blue, Some(*green)),
        };
        d.guards.push(GuardReport {
            check: check.name.clone(),
            green,
            blue,
            max: *max,
            min: *min,
            consecutive_failures: *count,
            failures_to_rollback: *failures,
        });
    }
    out
}

/// Why the stable copy itself is unhealthy this window (an environment problem, not the
/// candidate's fault), if it is.
pub(super) fn blue_unhealthy(policy: &Policy, obs: &Observation, stable: Colour) -> Option<String> {
    for check in &policy.checks {
        match (&check.kind, obs.check(&check.name)) {
            (
                CheckKind::ErrorRate {
                    blue_max_error_rate: Some(max),
                    ..
                },
                Some(Ok(CheckData::Errors { counts })),
            ) if counts.of(stable).requests > 0.0 && counts.of(stable).rate() > *max => {
                return Some(format!(
                    "{}: {stable}'s error rate {:.4} > {}",
                    check.name,
                    counts.of(stable).rate(),
                    max
                ));
            }
            (
                CheckKind::Threshold { max, min, .. },
                Some(Ok(CheckData::Value {
                    candidate,
                    stable: Some(value),
                })),
            ) => {
                let breaches = |v: f64| max.is_some_and(|m| v > m) || min.is_some_and(|m| v < m);
                if breaches(*value) && breaches(*candidate) {
                    return Some(format!(
                        "{}: {stable} (stable) {:.4} breaches {} too",
                        check.name,
                        value,
                        limit_text(*max, *min)
                    ));
                }
            }
            _ => {}
        }
    }
    None
}
