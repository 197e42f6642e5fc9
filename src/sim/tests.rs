//! Simulator tests on the engine's test policy (statistical tests on the example policies live in
//! tests/simulate.rs).

use super::*;
use crate::engine::tests::policy;

fn run(scenario: &str, seed: u64) -> SimResult {
    let cfg = SimConfig {
        scenario: scenario.parse().unwrap(),
        seed,
        keep_timeline: true,
        ..SimConfig::default()
    };
    simulate(&policy(), &cfg)
}

#[test]
fn healthy_promotes_and_bad_rolls_back() {
    let r = run("healthy", 7);
    assert_eq!(r.outcome, Outcome::Promoted, "{}", r.final_reason);
    let r = run("errors=3x", 7);
    assert_eq!(r.outcome, Outcome::RolledBack, "{}", r.final_reason);
    assert!(r.timeline.iter().all(|w| w.green_percent <= 5.0 + 1e-9));
}

#[test]
fn same_seed_same_run() {
    let a = run("errors=1.5x,overdispersion=0.3", 3);
    let b = run("errors=1.5x,overdispersion=0.3", 3);
    assert_eq!(a.duration_s, b.duration_s);
    assert_eq!(a.green_requests, b.green_requests);
    assert_eq!(a.outcome, b.outcome);
}

#[test]
fn an_outage_freezes_the_weights() {
    let r = run("outage=5m+60m", 11);
    let during: Vec<&SimWindow> = r
        .timeline
        .iter()
        .filter(|w| w.elapsed_s > 6 * 60 && w.elapsed_s <= 65 * 60)
        .collect();
    assert!(!during.is_empty());
    assert!(during.iter().all(|w| w.action == Action::Hold));
    assert!(during
        .iter()
        .all(|w| w.green_percent == during[0].green_percent));
    assert_eq!(r.outcome, Outcome::Promoted, "{}", r.final_reason);
}

#[test]
fn a_latency_regression_rolls_back() {
    let r = run("latency=+60%", 5);
    assert_eq!(r.outcome, Outcome::RolledBack, "{}", r.final_reason);
    assert!(r.final_reason.contains("latency"), "{}", r.final_reason);
}

#[test]
fn a_regression_at_a_later_step_is_caught_there() {
    let r = run("errors=3x,from-step=2", 9);
    assert_eq!(r.outcome, Outcome::RolledBack, "{}", r.final_reason);
    let bad_windows = r
        .timeline
        .iter()
        .filter(|w| w.green_percent == 50.0)
        .count();
    assert!(bad_windows <= 15, "took {bad_windows} windows at 50 %");
}

#[test]
fn histogram_quantile_matches_prometheus_interpolation() {
    let w = ColourWindow {
        requests: 100,
        errors: 0,
        cumulative: vec![50, 90, 100],
    };
    let b = [0.1, 0.5, 1.0];
    assert!((w.quantile(&b, 0.5) - 0.1).abs() < 1e-12);
    assert!((w.quantile(&b, 0.7) - 0.3).abs() < 1e-12);
    assert!((w.quantile(&b, 0.95) - 0.75).abs() < 1e-12);
}
