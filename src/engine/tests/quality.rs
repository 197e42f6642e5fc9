//! Data-quality rules: plausibility bounds, green's data missing, the observed traffic split.

use super::*;
use crate::policy::GreenMissingAction;

/// `obs(minute, w)` with the error-rate check's counts replaced.
fn with_errors(minute: i64, w: W, counts: Pair) -> Observation {
    let mut o = obs(minute, w);
    for c in &mut o.checks {
        if c.check == "errors" {
            c.data = Ok(CheckData::Errors { counts });
        }
    }
    o
}

fn pair(n_b: f64, e_b: f64, n_g: f64, e_g: f64) -> Pair {
    Pair {
        blue: Counts::new(n_b, e_b),
        green: Counts::new(n_g, e_g),
    }
}

fn all_finite(s: &RolloutState) -> bool {
    s.streams.iter().all(|st| {
        let counts = [st.total.blue, st.total.green, st.step.blue, st.step.green];
        st.rollback.e_value().is_finite()
            && st.advance_e().is_finite()
            && counts
                .iter()
                .all(|c| c.requests.is_finite() && c.bad.is_finite())
    })
}

#[test]
fn absurd_green_request_counts_are_out_of_range_and_never_promote() {
    let p = policy();
    let mut s = run(&p, started(&p), 1, 3, healthy());
    let counted = s.streams[0].total;
    for m in 4..40 {
        let o = with_errors(m, healthy(), pair(11400.0, 57.0, 1e300, 3.0));
        let d = decide(&p, &s, &o, at(m));
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert!(d.reason.contains("implausible counts"), "{}", d.reason);
        assert!(d.reason.contains("max_requests_per_second"), "{}", d.reason);
        s = d.state;
    }
    assert_eq!(s.step, 0);
    assert_eq!(
        s.streams[0].total, counted,
        "nothing of those windows counted"
    );
    assert!(all_finite(&s));
}

#[test]
fn absurd_green_error_counts_hold_instead_of_rolling_back_on_infinite_evidence() {
    let p = policy();
    let mut s = run(&p, started(&p), 1, 3, healthy());
    for m in 4..10 {
        let o = with_errors(m, healthy(), pair(11400.0, 57.0, 1e300, 5e299));
        let d = decide(&p, &s, &o, at(m));
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert!(!d.reason.contains("inf"), "{}", d.reason);
        s = d.state;
    }
    assert_eq!(s.phase, Phase::Progressing);
    assert!(all_finite(&s));
    assert!(s
        .new_records
        .iter()
        .flat_map(|r| r.evidence.iter())
        .all(|e| e.rollback_log_e.is_finite() && e.advance_log_e.is_finite()));
}

#[test]
fn a_hundredfold_jump_over_the_recent_windows_holds_then_normal_traffic_counts() {
    let p = policy();
    let s = run(&p, started(&p), 1, 5, healthy());
    let before = s.streams[0].total;
    // 600 green requests per window so far; 200× that is below the absolute cap (6e8).
    let jump = with_errors(6, healthy(), pair(11400.0, 57.0, 120_000.0, 3.0));
    let d = decide(&p, &s, &jump, at(6));
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
    assert!(
        d.reason
            .contains("100× the largest of the recent windows (600)"),
        "{}",
        d.reason
    );
    assert_eq!(d.state.streams[0].total, before);
    // A 50× rise is plausible (a quiet hour ending) and counts.
    let rise = with_errors(7, healthy(), pair(11400.0, 57.0, 30_000.0, 150.0));
    let d = decide(&p, &d.state, &rise, at(7));
    assert!(!d.reason.contains("implausible"), "{}", d.reason);
    assert_eq!(
        d.state.streams[0].total.green.requests,
        before.green.requests + 30_000.0
    );
}

#[test]
fn the_recent_windows_start_afresh_at_each_step() {
    let p = policy();
    let s = run(&p, started(&p), 1, 5, healthy());
    assert_eq!(s.quality.recent_requests["errors/green"], vec![600.0; 5]);
    let mut next = s.clone();
    next.enter_step(&p, 1, at(5));
    // At 25 % green serves 5× more; the memories of the 5 % step do not bound it.
    let w = at_share(healthy(), 25.0);
    let d = decide(&p, &next, &obs(6, w), at(6));
    assert!(
        d.explanation.problems.is_empty(),
        "{:?}",
        d.explanation.problems
    );
    assert_eq!(
        d.state.quality.recent_requests["errors/green"],
        vec![3000.0]
    );
}

#[test]
fn the_request_cap_is_per_second_and_a_policy_can_raise_it() {
    let mut p = policy();
    // 1.2e9 requests per minute is 2e7 per second: above the default cap of 1e7.
    let big = W {
        n_b: 1.14e9,
        n_g: 6e7,
        err_b: 5.7e6,
        err_g: 3e5,
        slow_b: 1.14e8,
        slow_g: 6e6,
        ..healthy()
    };
    let s = started(&p);
    let d = decide(&p, &s, &obs(1, big), at(1));
    assert!(d.reason.contains("exceed the cap"), "{}", d.reason);
    p.data_quality.max_requests_per_second = 1e8;
    let d = decide(&p, &s, &obs(1, big), at(1));
    assert!(d.reason.contains("Warm-up"), "{}", d.reason);
}

#[test]
fn latency_buckets_not_cumulative_in_le_are_out_of_range() {
    let p = policy();
    let s = run(&p, started(&p), 1, 3, healthy());
    let mut o = obs(4, healthy());
    for c in &mut o.checks {
        if let Ok(CheckData::Latency { edges }) = &mut c.data {
            // More green requests slower than 1 s than slower than 0.25 s.
            edges[1].counts.green.bad = edges[0].counts.green.bad + 1.0;
        }
    }
    let d = decide(&p, &s, &o, at(4));
    assert_eq!(d.action, Action::Hold);
    assert!(
        d.reason.contains("latency: implausible counts"),
        "{}",
        d.reason
    );
    assert!(d.reason.contains("cumulative"), "{}", d.reason);
    // The request totals of one colour must agree across edges.
    let mut o = obs(4, healthy());
    for c in &mut o.checks {
        if let Ok(CheckData::Latency { edges }) = &mut c.data {
            edges[1].counts.blue.requests += 5.0;
        }
    }
    let d = decide(&p, &s, &o, at(4));
    assert!(d.reason.contains("blue requests differ"), "{}", d.reason);
}

#[test]
fn more_errors_than_requests_are_out_of_range() {
    let p = policy();
    let s = run(&p, started(&p), 1, 3, healthy());
    let d = decide(
        &p,
        &s,
        &with_errors(4, healthy(), pair(100.0, 101.0, 600.0, 3.0)),
        at(4),
    );
    assert_eq!(d.action, Action::Hold);
    assert!(
        d.reason
            .contains("errors: implausible counts: blue: 101 bad of 100 requests"),
        "{}",
        d.reason
    );
}

fn green_missing(minute: i64) -> Observation {
    with_problem(
        obs(minute, healthy()),
        "errors",
        DataProblem::GreenMissing("green requests: no data".into()),
    )
}

#[test]
fn green_data_missing_pages_after_two_windows_and_rolls_back_after_the_duration() {
    let p = policy();
    assert_eq!(
        p.data_quality.on_green_data_missing,
        GreenMissingAction::Rollback
    );
    assert_eq!(
        p.data_quality.green_data_missing_for,
        Duration::from_secs(300)
    );
    let mut s = run(&p, started(&p), 1, 12, healthy());
    let mut pages = Vec::new();
    let mut rolled_back_at = None;
    for m in 13..30 {
        let d = decide(&p, &s, &green_missing(m), at(m));
        for n in &d.notices {
            assert!(
                !matches!(n, Notice::MetricsUnavailable { .. }),
                "not a metrics outage"
            );
            if let Notice::GreenDataMissing { since, detail } = n {
                assert_eq!(*since, at(12));
                assert!(detail.contains("green requests: no data"), "{detail}");
                pages.push(m);
            }
        }
        if d.action == Action::Rollback {
            assert!(
                d.reason
                    .contains("Green's metrics have been missing for 5m"),
                "{}",
                d.reason
            );
            assert_eq!(d.set_weights.unwrap().green, 0);
            rolled_back_at = Some(m);
            break;
        }
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert!(d.reason.contains("rolling back after 5m"), "{}", d.reason);
        s = d.state;
    }
    assert_eq!(pages, vec![14], "one page, at the second window");
    // Missing since the start of minute 13's window (12:00): 5 minutes at 17:00.
    assert_eq!(rolled_back_at, Some(17));
}

#[test]
fn green_data_missing_holds_when_the_policy_says_hold_and_clears_when_green_is_back() {
    let mut p = policy();
    p.data_quality.on_green_data_missing = GreenMissingAction::Hold;
    let mut s = run(&p, started(&p), 1, 12, healthy());
    let mut pages = 0;
    for m in 13..60 {
        let d = decide(&p, &s, &green_missing(m), at(m));
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert_eq!(d.set_weights, None);
        assert!(
            d.reason.contains("on_green_data_missing = \"hold\""),
            "{}",
            d.reason
        );
        pages += d
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::GreenDataMissing { .. }))
            .count();
        s = d.state;
    }
    assert_eq!(pages, 1);
    assert!(s.quality.green_missing_alerted);
    let d = decide(&p, &s, &obs(60, healthy()), at(60));
    assert!(!d.state.quality.green_missing_alerted);
    assert_eq!(d.state.quality.green_missing_since, None);
}

#[test]
fn green_missing_pages_even_when_its_threshold_guard_has_no_data_either() {
    let p = policy();
    let mut s = run(&p, started(&p), 1, 12, healthy());
    let mut pages = 0;
    for m in 13..15 {
        let o = with_problem(green_missing(m), "p99", DataProblem::NoData);
        let d = decide(&p, &s, &o, at(m));
        pages += d
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::GreenDataMissing { .. }))
            .count();
        s = d.state;
    }
    assert_eq!(pages, 1);
}

#[test]
fn a_guard_without_data_alone_is_not_green_missing() {
    let p = policy();
    let mut s = run(&p, started(&p), 1, 12, healthy());
    for m in 13..30 {
        let o = with_problem(obs(m, healthy()), "p99", DataProblem::NoData);
        let d = decide(&p, &s, &o, at(m));
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert!(d.reason.contains("unusable metrics"), "{}", d.reason);
        assert!(!d
            .notices
            .iter()
            .any(|n| matches!(n, Notice::GreenDataMissing { .. })));
        s = d.state;
    }
}

#[test]
fn green_missing_with_another_problem_is_a_metrics_outage() {
    let p = policy();
    let mut s = run(&p, started(&p), 1, 12, healthy());
    for m in 13..40 {
        let o = with_problem(
            green_missing(m),
            "latency",
            DataProblem::Backend("connection refused".into()),
        );
        let d = decide(&p, &s, &o, at(m));
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert!(d.reason.contains("unusable metrics"), "{}", d.reason);
        s = d.state;
    }
    assert!(s.no_data_alerted);
}

#[test]
fn a_persistent_split_mismatch_holds_and_notices_with_both_numbers() {
    let p = policy();
    // Green at 5 % by weight but served 0.3 % of the requests (e.g. ejected by health checks).
    let starved = at_share(healthy(), 0.3);
    let mut s = run(&p, started(&p), 1, 3, healthy());
    let mut notices = Vec::new();
    for m in 4..40 {
        let d = decide(&p, &s, &obs(m, starved), at(m));
        assert_ne!(d.action, Action::Advance, "{}", d.reason);
        for n in &d.notices {
            if let Notice::TrafficSplitMismatch {
                observed_percent,
                configured_percent,
                windows,
            } = n
            {
                notices.push((m, *observed_percent, *configured_percent, *windows));
            }
        }
        if m >= 6 {
            assert!(
                d.reason
                    .contains("green receives 0.3 % of requests, configured 5 %"),
                "{m}: {}",
                d.reason
            );
        }
        s = d.state;
    }
    assert_eq!(notices.len(), 1, "{notices:?}");
    let (m, observed, configured, windows) = notices[0];
    assert_eq!((m, windows), (6, 3));
    assert!((observed - 0.3).abs() < 1e-9 && (configured - 5.0).abs() < 1e-9);
    assert_eq!(s.step, 0);
    // The requests are still counted (rollback stays armed)...
    assert!(s.streams[0].step.green.requests > 0.0);
    // ...and one window at the configured share clears the mismatch.
    let d = decide(&p, &s, &obs(40, healthy()), at(40));
    assert!(!d.state.quality.split_mismatch_alerted);
    assert!(!d.reason.contains("split"), "{}", d.reason);
}

#[test]
fn a_bad_green_is_rolled_back_during_a_split_mismatch() {
    let p = policy();
    let bad = W {
        err_g: 100.0,
        ..at_share(healthy(), 20.0)
    };
    let mut s = run(&p, started(&p), 1, 2, healthy());
    let mut action = Action::Hold;
    for m in 3..30 {
        let d = decide(&p, &s, &obs(m, bad), at(m));
        action = d.action;
        s = d.state;
        if action == Action::Rollback {
            break;
        }
    }
    assert_eq!(action, Action::Rollback);
}

#[test]
fn normal_sampling_noise_in_the_split_is_not_a_mismatch() {
    let p = policy();
    // 4.6 % and 5.4 % of 12 000 requests at a 5 % weight: within four standard errors.
    let mut s = run(&p, started(&p), 1, 2, healthy());
    // Before the minimum dwell (10 windows), so the step stays at 5 %.
    for m in 3..10 {
        let share = if m % 2 == 0 { 4.6 } else { 5.4 };
        let d = decide(&p, &s, &obs(m, at_share(healthy(), share)), at(m));
        assert!(!d.reason.contains("split"), "{}", d.reason);
        s = d.state;
    }
    assert_eq!(s.quality.split_mismatch_windows, 0);
}

#[test]
fn a_state_saved_without_quality_memory_still_loads() {
    let p = policy();
    let s = run(&p, started(&p), 1, 5, healthy());
    let mut json: serde_json::Value = serde_json::to_value(&s).unwrap();
    json.as_object_mut().unwrap().remove("quality");
    let back: RolloutState = serde_json::from_value(json).unwrap();
    assert_eq!(back.quality, QualityState::default());
    let d = decide(&p, &back, &obs(6, healthy()), at(6));
    assert_ne!(d.action, Action::Rollback, "{}", d.reason);
}

#[test]
fn the_split_check_can_be_turned_off() {
    let mut p = policy();
    p.data_quality.check_traffic_split = false;
    let starved = at_share(healthy(), 0.3);
    let mut s = run(&p, started(&p), 1, 3, healthy());
    for m in 4..10 {
        let d = decide(&p, &s, &obs(m, starved), at(m));
        assert!(!d.reason.contains("split"), "{}", d.reason);
        assert!(d.notices.is_empty());
        s = d.state;
    }
}

#[test]
fn automatic_start_waits_while_the_backend_answers_garbage() {
    // Found by the soak: a NaN or 1e300 answer before the rollout started was taken as "green
    // has no traffic yet" and the rollout started on it.
    let mut p = policy();
    p.auto_start = true;
    let pending = RolloutState::new(&p);
    for garbage in [f64::NAN, 1e300] {
        let o = with_errors(1, healthy(), pair(1e4, 10.0, garbage, garbage / 2.0));
        let d = decide(&p, &pending, &o, at(1));
        assert_eq!(d.action, Action::Hold, "{garbage}: {}", d.reason);
        assert_eq!(d.set_weights, None);
        assert!(
            d.reason.contains("Waiting for the metrics backend"),
            "{}",
            d.reason
        );
    }
    // Green without series yet is normal before the start.
    let o = with_problem(obs(1, healthy()), "errors", DataProblem::NoData);
    assert_eq!(decide(&p, &pending, &o, at(1)).action, Action::Start);
}
