//! Many APIs rolling onto one green cluster at once, each through the real daemon shell
//! ([`ShellRollout`]) in its own world, with the cluster breaker's evidence
//! ([`crate::engine::breaker`]) computed from the stored states after every window. Used by
//! `cargo bench --bench breaker` and its tests.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::engine::breaker::{check, pooled, BreakerSettings, Trip};
use crate::engine::Phase;
use crate::policy::Policy;
use crate::sim::night::ShellRollout;
use crate::sim::{default_start, Scenario, World};

/// What one cluster did in a night: minutes from the start until each event, if it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNight {
    /// The pooled evidence tripped the breaker.
    pub evidence_trip: Option<u64>,
    /// `settings.max_rollbacks` rollbacks within the window tripped it.
    pub rollbacks_trip: Option<u64>,
    /// The first API rolled back on its own.
    pub first_rollback: Option<u64>,
    /// APIs rolled back on their own by the end.
    pub rolled_back: usize,
}

/// Runs `apis` rollouts of `policy` in worlds of `scenario` (API `i` seeded `seed * 1000 + i`),
/// one window of `policy.interval` at a time, for at most `horizon` or until every rollout has
/// ended. The breaker only watches: rollouts go on after it trips, so both rules and the APIs'
/// own rollbacks are timed on the same traffic.
pub fn run_cluster(
    policy: &Policy,
    scenario: &Scenario,
    apis: usize,
    seed: u64,
    settings: &BreakerSettings,
    horizon: Duration,
) -> ClusterNight {
    let start = default_start(policy);
    let interval = policy.interval.max(Duration::from_secs(1));
    let step = SignedDuration::try_from(interval).unwrap_or(SignedDuration::from_mins(1));
    let mut worlds: Vec<World> = (0..apis)
        .map(|i| World::new(policy, scenario, seed * 1000 + i as u64))
        .collect();
    let mut rollouts: Vec<ShellRollout> = (0..apis)
        .map(|_| ShellRollout::started(policy, start))
        .collect();
    let mut rollback_at: Vec<Timestamp> = Vec::new();
    let mut night = ClusterNight {
        evidence_trip: None,
        rollbacks_trip: None,
        first_rollback: None,
        rolled_back: 0,
    };
    // The two rules, each on its own (`check` reports the evidence first when both trip).
    let evidence_only = BreakerSettings {
        max_rollbacks: 0,
        ..settings.clone()
    };
    let windows = horizon.as_secs() / interval.as_secs();
    for w in 0..windows {
        let t = start + step * (w as i32);
        let end = t + step;
        let elapsed = Duration::from_secs(w * interval.as_secs());
        let minute = (elapsed + interval).as_secs() / 60;
        let mut active = 0;
        for (world, rollout) in worlds.iter_mut().zip(rollouts.iter_mut()) {
            if matches!(rollout.state().phase, Phase::Promoted | Phase::RolledBack) {
                continue;
            }
            active += 1;
            let share = rollout.green_share();
            let at_step = rollout.state().step;
            let d = world.draw(t, end, elapsed, share, at_step);
            // Without faults an evaluation does not fail; if one did, the rollout holds.
            let _ = rollout.evaluate(d.observation, end);
            if rollout.state().phase == Phase::RolledBack {
                rollback_at.push(end);
                night.rolled_back += 1;
                night.first_rollback.get_or_insert(minute);
            }
        }
        let evidence = pooled(settings, rollouts.iter().map(|r| r.state()));
        if let Some(Trip::Evidence { .. }) = check(&evidence_only, evidence, &[], end) {
            night.evidence_trip.get_or_insert(minute);
        }
        if let Some(Trip::Rollbacks { .. }) = check(settings, (0.0, 0), &rollback_at, end) {
            night.rollbacks_trip.get_or_insert(minute);
        }
        if active == 0 {
            break;
        }
    }
    night
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench_policy() -> Policy {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/policy.toml");
        let text = std::fs::read_to_string(&path).expect("bench/policy.toml");
        Policy::from_toml(&text, &path, None).expect("a valid bench policy")
    }

    /// Three clusters of 20 APIs in worlds of `scenario`, for `hours`.
    fn nights(scenario: &str, hours: u64) -> Vec<ClusterNight> {
        let policy = bench_policy();
        let scenario: Scenario = scenario.parse().unwrap();
        let settings = BreakerSettings::at_level(policy.false_rollback_rate);
        let horizon = Duration::from_secs(hours * 3600);
        (0..3)
            .map(|seed| run_cluster(&policy, &scenario, 20, seed, &settings, horizon))
            .collect()
    }

    #[test]
    fn a_latency_regression_on_every_api_trips_the_breaker_before_any_api_rolls_back() {
        for (seed, n) in nights("latency=1.2x", 2).iter().enumerate() {
            let (trip, first) = (n.evidence_trip.unwrap(), n.first_rollback.unwrap());
            assert!(trip <= first, "seed {seed}: {n:?}");
            assert!(n.rollbacks_trip.is_some(), "seed {seed}: {n:?}");
        }
    }

    #[test]
    fn a_healthy_cluster_never_trips_the_breaker() {
        for (seed, n) in nights("healthy", 3).iter().enumerate() {
            assert_eq!(n.evidence_trip, None, "seed {seed}: {n:?}");
            assert_eq!(n.rollbacks_trip, None, "seed {seed}: {n:?}");
        }
    }
}
