//! The cluster breaker's evidence: is the green cluster itself worse than blue, for every API
//! rolling onto it? Pure: it reads rollout states and returns a verdict.
//!
//! Each API's rollback e-processes test "green no worse than 1 + tolerance times blue" (one per
//! stream: an error-rate check or a latency edge). Across APIs the traffic is independent
//! (different requests, different backends), so for each kind of stream the APIs' e-values
//! **multiply**: under the null that no API's green is worse than its tolerance, a product of
//! independent test supermartingales is a test supermartingale in the joint filtration. The kinds
//! share requests, so they are combined by their **mean**, an e-value whatever their dependence.
//! By Ville's inequality P(the pooled value ever reaches 1/α) ≤ α. A rollout that has ended keeps
//! its last value (a stopped supermartingale is one too). So a regression shared by every API,
//! each too weak to be called alone, is caught by the product with the same α.
//!
//! A product tests "no API is worse": one API far worse than its tolerance (an API rolled back
//! at E = 10⁴) would reject it alone, though that is the API's problem, not the cluster's. So
//! each API's e-value is **capped** at C = (1/α)^(1/min_apis) before the product: min(E, C) of
//! a test supermartingale is one too (a concave nondecreasing function of it), so the guarantee
//! stands, and tripping takes at least `min_apis` APIs at full strength (or more, weaker ones).
//!
//! The guarantee needs independence across APIs; a shared cause that makes blue and green noisier
//! together (one overloaded database) is not a violation of the null for the e-processes, whose
//! variance allowance (φ) is per API. The second rule, K rollbacks on one cluster within a
//! window, needs no such assumption.

mod episode;

use std::time::Duration;

use jiff::Timestamp;

use crate::engine::state::RolloutState;
pub use crate::policy::BreakerSettings;
use crate::stats::log_sum_exp;
pub use episode::{
    contribution, hold_for, plan, with_unsaved_trip, BreakerAction, BreakerPlan, BreakerState,
    Contribution, ResetRecord, RollbackRecord, TripRecord, MAX_TRIP_APIS,
};

/// Why the breaker tripped.
#[derive(Debug, Clone, PartialEq)]
pub enum Trip {
    /// The pooled evidence reached 1/α.
    Evidence {
        log_e: f64,
        threshold: f64,
        apis: usize,
    },
    /// `count` rollbacks within the window.
    Rollbacks { count: usize, window: Duration },
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trip::Evidence {
                log_e,
                threshold,
                apis,
            } => write!(
                f,
                "pooled evidence of {apis} APIs {} ≥ 1/α = {threshold:.0}",
                crate::stats::format_e(*log_e)
            ),
            Trip::Rollbacks { count, window } => write!(
                f,
                "{count} rollbacks within {}",
                humantime::format_duration(*window)
            ),
        }
    }
}

/// The pooled evidence of the rollouts onto one cluster: ln E and how many APIs spoke.
///
/// For each kind of stream (its id: `errors`, `latency@0.325`, …) the APIs' rollback e-values
/// multiply (independent APIs); the kinds are then combined by their mean (they share requests).
/// Taking the mean once, over kinds, instead of once per API, pays the ln(number of streams)
/// of that mean once instead of once per API: with 20 APIs and three streams that is ln 3 rather
/// than 20 ln 3 in evidence, the difference between tripping and not. Each API's value is its
/// own staged rollback e-process (components restarted at each step): measured in `cargo bench
/// --bench breaker`, its from-start component alone trips later (72 % vs 98 % of ×1.25 error
/// clusters within 12 h, 50 seeds).
pub fn pooled<'a>(
    settings: &BreakerSettings,
    states: impl IntoIterator<Item = &'a RolloutState>,
) -> (f64, usize) {
    let per_api: Vec<Vec<(String, f64)>> = states
        .into_iter()
        .map(|state| {
            state
                .streams
                .iter()
                .map(|s| (s.id.clone(), s.rollback_log_e()))
                .collect()
        })
        .collect();
    pooled_streams(settings, per_api.iter().map(Vec::as_slice))
}

/// [`pooled`] over each API's (stream id, ln E) pairs; a NaN value is left out.
pub fn pooled_streams<'a>(
    settings: &BreakerSettings,
    apis: impl IntoIterator<Item = &'a [(String, f64)]>,
) -> (f64, usize) {
    let cap = settings.cap_log_e();
    let mut by_kind: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut count = 0;
    for streams in apis {
        let mut spoke = false;
        for (id, l) in streams {
            if l.is_nan() {
                continue;
            }
            *by_kind.entry(id.as_str()).or_default() += l.min(cap);
            spoke = true;
        }
        count += usize::from(spoke);
    }
    if by_kind.is_empty() {
        return (0.0, 0);
    }
    let logs: Vec<f64> = by_kind.into_values().collect();
    (log_sum_exp(&logs) - (logs.len() as f64).ln(), count)
}

/// Whether the breaker trips at `now`, given the pooled evidence and the times of the rollbacks
/// onto the cluster. Evidence first: it is the earlier and the more informative signal.
pub fn check(
    settings: &BreakerSettings,
    pooled: (f64, usize),
    rollbacks: &[Timestamp],
    now: Timestamp,
) -> Option<Trip> {
    let (log_e, apis) = pooled;
    let threshold = 1.0 / settings.alpha;
    // At exactly `min_apis` capped APIs the sum meets ln(1/α) up to rounding.
    if apis > 0 && log_e.is_finite() && log_e >= threshold.ln() - 1e-9 {
        return Some(Trip::Evidence {
            log_e,
            threshold,
            apis,
        });
    }
    if settings.max_rollbacks > 0 {
        let window = settings.rollback_window.as_secs() as i64;
        let count = rollbacks
            .iter()
            .filter(|t| {
                let age = now.as_second() - t.as_second();
                (0..=window).contains(&age)
            })
            .count();
        if count >= settings.max_rollbacks {
            return Some(Trip::Rollbacks {
                count,
                window: settings.rollback_window,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::policy;

    fn settings() -> BreakerSettings {
        BreakerSettings::at_level(0.05)
    }

    /// A started state whose every rollback stream has been fed windows where green's error
    /// rate is `ratio` times blue's (1 % for blue, 1,000 requests per colour): `windows` of them,
    /// or with `None` until the API's evidence first reaches 2.
    fn state_with(ratio: f64, windows: Option<usize>) -> RolloutState {
        let p = policy();
        let mut s = RolloutState::started(&p, Timestamp::from_second(1_700_000_000).unwrap());
        assert!(!s.streams.is_empty());
        for _ in 0..windows.unwrap_or(10_000) {
            for st in &mut s.streams {
                st.rollback.update(1000.0, 1000.0, 10.0 * ratio, 10.0);
            }
            if windows.is_none() && pooled(&settings(), [&s]).0 >= 2f64.ln() {
                break;
            }
        }
        s
    }

    #[test]
    fn an_api_without_streams_does_not_count() {
        let p = policy();
        let mut s = RolloutState::new(&p);
        s.streams.clear();
        assert_eq!(pooled(&settings(), [&s]), (0.0, 0));
    }

    #[test]
    fn apis_each_too_weak_alone_trip_the_breaker_together() {
        let s = state_with(1.5, None);
        let (one, apis) = pooled(&settings(), [&s]);
        assert_eq!(apis, 1);
        let t = Timestamp::from_second(1_700_003_600).unwrap();
        // One API alone is below 1/α = 20 ...
        assert!(one < 20f64.ln(), "one API's ln E = {one}");
        assert_eq!(check(&settings(), pooled(&settings(), [&s]), &[], t), None);
        // ... eight of them together are not.
        let many = vec![s.clone(); 8];
        let trip = check(&settings(), pooled(&settings(), &many), &[], t).expect("trips");
        assert!(matches!(trip, Trip::Evidence { apis: 8, .. }), "{trip:?}");
        assert!(trip.to_string().contains("8 APIs"), "{trip}");
    }

    #[test]
    fn one_rolled_back_api_alone_never_trips_the_cluster_breaker() {
        // An API rolled back at E far beyond 1/α: its own problem, not the cluster's.
        let mut bad = state_with(3.0, Some(200));
        let (one, _) = pooled(&settings(), [&bad]);
        assert!((one - settings().cap_log_e()).abs() < 1e-9, "capped: {one}");
        let t = Timestamp::from_second(1_700_003_600).unwrap();
        let two = vec![bad.clone(); 2];
        assert_eq!(check(&settings(), pooled(&settings(), &two), &[], t), None);
        // min_apis of them at full strength do trip it.
        bad.api = "other".into();
        let three = vec![bad; 3];
        assert!(check(&settings(), pooled(&settings(), &three), &[], t).is_some());
    }

    #[test]
    fn healthy_apis_pull_the_pooled_evidence_down() {
        let bad = state_with(1.5, None);
        let healthy = state_with(1.0, Some(60));
        let mut apis = vec![bad; 8];
        apis.extend(std::iter::repeat_n(healthy, 8));
        let t = Timestamp::from_second(1_700_003_600).unwrap();
        assert_eq!(check(&settings(), pooled(&settings(), &apis), &[], t), None);
    }

    #[test]
    fn three_rollbacks_within_the_window_trip_and_older_ones_do_not_count() {
        let now = Timestamp::from_second(1_700_010_000).unwrap();
        let ago = |m: i64| Timestamp::from_second(now.as_second() - m * 60).unwrap();
        let s = settings();
        assert_eq!(check(&s, (0.0, 0), &[ago(5), ago(30), ago(61)], now), None);
        let trip = check(&s, (0.0, 0), &[ago(5), ago(30), ago(59)], now).expect("trips");
        assert_eq!(
            trip,
            Trip::Rollbacks {
                count: 3,
                window: Duration::from_secs(3600)
            }
        );
        assert_eq!(trip.to_string(), "3 rollbacks within 1h");
        let off = BreakerSettings {
            max_rollbacks: 0,
            ..s
        };
        assert_eq!(check(&off, (0.0, 0), &[ago(1), ago(2), ago(3)], now), None);
    }
}
