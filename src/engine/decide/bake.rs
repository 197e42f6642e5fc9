//! The bake: after the last step the candidate serves all traffic, watched for the policy's
//! `bake` before it becomes the stable colour.
//!
//! With no stable traffic left to compare against, two things are watched:
//! - the absolute guards (threshold checks), as during the steps;
//! - each statistical stream against the candidate's own earlier windows: its rate over the
//!   rollout gives a baseline p̂ (n requests, x bad), and a one-sample e-process
//!   ([`SloEProcess::exceeding`]) tests H0: q ≤ q0 with q0 = (1 + tolerance) · UCB(p̂), the
//!   baseline's 99 % upper bound (x + 2.58·√(φx) + 2.58²·φ) / n. Under H0 the e-process is a test
//!   supermartingale, so a healthy candidate crosses 1/α with probability at most α (up to the
//!   small chance that the baseline itself was lower than the upper bound says).
//!
//! A breach rolls back to the previous stable colour (`bake_on_breach = "rollback"`: it was
//! kept warm), or raises one critical notice and lets the bake go on (`"alert"`). No breach for
//! the whole bake: promoted.

use jiff::{SignedDuration, Timestamp};

use super::{describe_stream, stream_counts, Action, Draft, Notice};
use crate::engine::observation::{Counts, Observation};
use crate::engine::release::release_suffix;
use crate::engine::state::{Phase, RolloutState};
use crate::policy::{BakeBreach, CheckKind, Policy};
use crate::stats::{format_e, SloEProcess};

/// z of the baseline's one-sided 99 % upper bound.
const BASELINE_Z: f64 = 2.58;

/// Enters the bake at 100 %: the baseline of every stream is the candidate's counts so far.
pub(super) fn begin(policy: &Policy, s: &mut RolloutState, now: Timestamp) -> Option<String> {
    let bake = policy.bake?;
    let candidate = s.candidate();
    for stream in &mut s.streams {
        let (tolerance, phi) = tolerance_of(policy, &stream.check);
        let base = stream.total.of(candidate);
        let q0 = baseline_bound(base, phi) * (1.0 + tolerance);
        stream.bake = Some(SloEProcess::exceeding(q0, phi));
        stream.bake_counts = Some(Counts::default());
    }
    s.phase = Phase::Baking;
    let until = now + SignedDuration::try_from(bake.duration).unwrap_or(SignedDuration::MAX);
    s.bake_until = Some(until);
    s.bake_breach_alerted = false;
    Some(format!(
        "{candidate} serves all traffic; baking until {until} before it becomes stable."
    ))
}

/// The baseline rate's upper bound: (x + z·√(φx) + z²φ) / n, at most 1 (and 1 with no data).
fn baseline_bound(base: Counts, phi: f64) -> f64 {
    if base.requests <= 0.0 {
        return 1.0;
    }
    let z = BASELINE_Z;
    ((base.bad + z * (phi * base.bad).sqrt() + z * z * phi) / base.requests).min(1.0)
}

/// A statistical check's tolerance and overdispersion.
fn tolerance_of(policy: &Policy, check: &str) -> (f64, f64) {
    policy
        .checks
        .iter()
        .find(|c| c.name == check)
        .and_then(|c| match &c.kind {
            CheckKind::ErrorRate {
                tolerance,
                overdispersion,
                ..
            }
            | CheckKind::LatencyHistogram {
                tolerance,
                overdispersion,
                ..
            } => Some((*tolerance, *overdispersion)),
            CheckKind::Threshold { .. } => None,
        })
        .unwrap_or((0.0, 1.0))
}

/// One counted window of the bake: the candidate's counts feed its own-baseline e-processes.
pub(super) fn count(s: &mut RolloutState, obs: &Observation, d: &mut Draft) {
    let candidate = s.candidate();
    for stream in &mut s.streams {
        let Some(pair) = stream_counts(obs, &stream.check, stream.edge) else {
            continue;
        };
        let c = pair.of(candidate);
        if let Some(e) = &mut stream.bake {
            e.update(c.requests, c.bad);
        }
        let counts = stream.bake_counts.get_or_insert_with(Counts::default);
        counts.requests += c.requests;
        counts.bad += c.bad;
        d.counted.push((stream.id.clone(), pair));
    }
}

/// Why the bake failed this window, if it did: a guard's breach or a stream's evidence.
fn breach(policy: &Policy, s: &RolloutState, guard_breach: Option<String>) -> Option<String> {
    if let Some(g) = guard_breach {
        return Some(g);
    }
    let alpha = policy.alpha_per_stream();
    s.streams.iter().find_map(|st| {
        let e = st.bake.as_ref()?;
        let counts = st.bake_counts.unwrap_or_default();
        (e.e_value() >= 1.0 / alpha && counts.bad >= super::rollback::min_errors_of(policy, &st.check) as f64).then(|| {
            format!(
                "{}: the candidate's rate {:.4} during the bake exceeds its own rate over the rollout (tested against {:.4}); evidence {} ≥ 1/α = {:.0}",
                describe_stream(&st.check, st.edge),
                counts.rate(),
                e.q_max,
                format_e(e.log_e()),
                1.0 / alpha
            )
        })
    })
}

/// The decision of one counted bake window.
pub(super) fn decide(
    policy: &Policy,
    s: &mut RolloutState,
    now: Timestamp,
    guard_breach: Option<String>,
    d: &mut Draft,
) {
    let candidate = s.candidate();
    let Some(bake) = policy.bake else {
        // The policy lost its bake while one ran: what was watched so far is enough.
        s.promote("promoted (the policy no longer bakes)".into());
        d.set(
            Action::Promote,
            format!("The policy no longer has a bake: {candidate} is promoted."),
        );
        return;
    };
    if let Some(why) = breach(policy, s, guard_breach) {
        match bake.on_breach {
            BakeBreach::Rollback => {
                super::rollback::roll_back(policy, s, format!("Breach during the bake: {why}"), d);
                return;
            }
            BakeBreach::Alert if !s.bake_breach_alerted => {
                s.bake_breach_alerted = true;
                d.notices.push(Notice::BakeBreach {
                    detail: why.clone(),
                });
                d.set(
                    Action::Hold,
                    format!(
                        "Breach during the bake ({why}); bake_on_breach = \"alert\": the previous stable colour is not kept warm, so the bake goes on."
                    ),
                );
                return;
            }
            BakeBreach::Alert => {}
        }
    }
    let until = s.bake_until.unwrap_or(now);
    if let Some(held) = s.held.as_ref().filter(|_| now >= until) {
        d.set(
            Action::Hold,
            format!(
                "The bake is over, but held: {}; not promoting.",
                held.reason
            ),
        );
        return;
    }
    if now >= until {
        let release = release_suffix(s.releases.candidate_release.as_deref());
        let clean = if s.bake_breach_alerted {
            "with a breach alerted during it"
        } else {
            "without a breach"
        };
        s.promote(format!("promoted after a bake {clean}"));
        d.set(
            Action::Promote,
            format!(
                "Bake of {} ended {clean}: {candidate}{release} is stable.",
                humantime::format_duration(bake.duration)
            ),
        );
    } else {
        let left = until.duration_since(now).unsigned_abs();
        d.set(
            Action::Hold,
            format!(
                "Baking: {candidate} serves all traffic, {} left; guards and its own earlier rates hold.",
                humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
            ),
        );
    }
}
