//! Table-driven tests of the rollout state machine.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::policy::{
    Check, CheckKind, MaxStepAction, Policy, Schedule, TimeWindow, Traffic, TrafficTarget, Weights,
};

fn t0() -> Timestamp {
    "2026-01-05T00:00:00Z".parse().unwrap()
}

fn at(minutes: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(minutes)
}

pub(crate) fn policy() -> Policy {
    Policy {
        api: "checkout".into(),
        source: None,
        interval: Duration::from_secs(60),
        steps: vec![5.0, 25.0, 50.0, 100.0],
        min_step_duration: Duration::from_secs(600),
        min_green_requests_per_step: 2000,
        max_step_duration: None,
        on_max_step_duration: MaxStepAction::Hold,
        bake: None,
        release_query: None,
        advance_on_dwell_below: None,
        false_rollback_rate: 0.01,
        false_advance_rate: 0.05,
        warmup_intervals: 1,
        auto_start: true,
        no_data_alert_after: Duration::from_secs(600),
        stuck_alert_after: Duration::from_secs(3 * 3600),
        traffic: Traffic {
            target: TrafficTarget::ConsulKeys {
                blue: "haproxy/checkout/weights/blue".into(),
                green: "haproxy/checkout/weights/green".into(),
            },
            total_weight: 100,
            haproxy_backend: None,
            sticky: None,
        },
        schedule: None,
        checks: vec![
            Check {
                name: "errors".into(),
                kind: CheckKind::ErrorRate {
                    requests: "req{color}[{interval}]".into(),
                    errors: "err{color}[{interval}]".into(),
                    tolerance: 0.2,
                    advance_tolerance: 0.5,
                    overdispersion: 1.0,
                    min_errors: 5,
                    advance_max_rate: None,
                    blue_max_error_rate: Some(0.2),
                },
            },
            Check {
                name: "latency".into(),
                kind: CheckKind::LatencyHistogram {
                    buckets: "sum by (le) (b{color}[{interval}])".into(),
                    edges: vec![0.25, 1.0],
                    tolerance: 0.2,
                    advance_tolerance: 0.5,
                    overdispersion: 1.0,
                    min_errors: 5,
                    advance_max_rate: Some(0.02),
                },
            },
            Check {
                name: "p99".into(),
                kind: CheckKind::Threshold {
                    query: "p99{color}[{interval}]".into(),
                    max: Some(0.5),
                    min: None,
                    failures: 2,
                    min_green_requests: 100,
                    cohort: Default::default(),
                },
            },
        ],
        alerts: vec![],
        alert_routes: Default::default(),
        data_quality: Default::default(),
        access: Default::default(),
        approval: Default::default(),
        labels: Default::default(),
        clusters: Default::default(),
    }
}

/// Per-window traffic for the observation builder.
#[derive(Clone, Copy)]
struct W {
    n_b: f64,
    n_g: f64,
    err_b: f64,
    err_g: f64,
    slow_b: f64,
    slow_g: f64,
    p99_g: f64,
    p99_b: f64,
}

/// A healthy window at a 5 % green share: both colours at 0.5 % errors and 10 % slow.
fn healthy() -> W {
    W {
        n_b: 11400.0,
        n_g: 600.0,
        err_b: 57.0,
        err_g: 3.0,
        slow_b: 1140.0,
        slow_g: 60.0,
        p99_g: 0.3,
        p99_b: 0.3,
    }
}

/// `w` with the same total and per-colour rates, green receiving `green_percent` of requests.
fn at_share(w: W, green_percent: f64) -> W {
    let total = w.n_b + w.n_g;
    let n_g = total * green_percent / 100.0;
    let n_b = total - n_g;
    let scale = |x: f64, from: f64, to: f64| if from > 0.0 { x * to / from } else { 0.0 };
    W {
        n_b,
        n_g,
        err_b: scale(w.err_b, w.n_b, n_b),
        err_g: scale(w.err_g, w.n_g, n_g),
        slow_b: scale(w.slow_b, w.n_b, n_b),
        slow_g: scale(w.slow_g, w.n_g, n_g),
        ..w
    }
}

fn obs(minute: i64, w: W) -> Observation {
    let pair = |bb: f64, bg: f64| Pair {
        blue: Counts::new(w.n_b, bb),
        green: Counts::new(w.n_g, bg),
    };
    Observation {
        start: at(minute - 1),
        end: at(minute),
        checks: vec![
            CheckObservation {
                check: "errors".into(),
                data: Ok(CheckData::Errors {
                    counts: pair(w.err_b, w.err_g),
                }),
            },
            CheckObservation {
                check: "latency".into(),
                data: Ok(CheckData::Latency {
                    edges: vec![
                        EdgeCounts {
                            edge: 0.25,
                            counts: pair(w.slow_b, w.slow_g),
                        },
                        EdgeCounts {
                            edge: 1.0,
                            counts: pair(w.slow_b / 10.0, w.slow_g / 10.0),
                        },
                    ],
                }),
            },
            CheckObservation {
                check: "p99".into(),
                data: Ok(CheckData::Value {
                    candidate: w.p99_g,
                    stable: Some(w.p99_b),
                }),
            },
        ],
    }
}

fn with_problem(mut o: Observation, check: &str, p: DataProblem) -> Observation {
    for c in &mut o.checks {
        if c.check == check {
            c.data = Err(p.clone());
        }
    }
    o
}

/// Runs `windows` healthy windows from a started state (minute 1 onwards); returns the state.
fn run(policy: &Policy, mut s: RolloutState, from: i64, windows: i64, w: W) -> RolloutState {
    for m in from..from + windows {
        s = decide(policy, &s, &obs(m, w), at(m)).state;
    }
    s
}

fn started(policy: &Policy) -> RolloutState {
    let mut s = RolloutState::started(policy, t0());
    s.applying_from = None;
    s
}

struct Case {
    name: &'static str,
    state: Box<dyn Fn(&Policy) -> RolloutState>,
    obs: Observation,
    now: Timestamp,
    action: Action,
    reason: &'static str,
    green_weight: u32,
}

#[test]
fn decision_table() {
    let p = policy();
    let bad = W {
        err_g: 40.0,
        ..healthy()
    };
    let cases = vec![
        Case {
            name: "pending with auto_start starts at the first step",
            state: Box::new(RolloutState::new),
            obs: obs(1, healthy()),
            now: at(1),
            action: Action::Start,
            reason: "started",
            green_weight: 5,
        },
        Case {
            name: "pending with auto_start waits for a failing metrics backend",
            state: Box::new(RolloutState::new),
            obs: with_problem(
                obs(1, healthy()),
                "latency",
                DataProblem::Backend("connection refused".into()),
            ),
            now: at(1),
            action: Action::Hold,
            reason: "Waiting for the metrics backend",
            green_weight: 0,
        },
        Case {
            name: "pending with auto_start starts although green has no data yet",
            state: Box::new(RolloutState::new),
            obs: with_problem(obs(1, healthy()), "latency", DataProblem::NoData),
            now: at(1),
            action: Action::Start,
            reason: "started",
            green_weight: 5,
        },
        Case {
            name: "first window after a weight change is warm-up",
            state: Box::new(started),
            obs: obs(1, bad),
            now: at(1),
            action: Action::Hold,
            reason: "Warm-up",
            green_weight: 5,
        },
        Case {
            name: "missing data holds",
            state: Box::new(|p| run(p, started(p), 1, 20, healthy())),
            obs: with_problem(obs(21, bad), "errors", DataProblem::NoData),
            now: at(21),
            action: Action::Hold,
            reason: "unusable metrics",
            green_weight: 5,
        },
        Case {
            name: "stale data holds",
            state: Box::new(|p| run(p, started(p), 1, 20, healthy())),
            obs: with_problem(obs(21, bad), "latency", DataProblem::Stale("5m old".into())),
            now: at(21),
            action: Action::Hold,
            reason: "stale data",
            green_weight: 5,
        },
        Case {
            name: "NaN counts hold",
            state: Box::new(|p| run(p, started(p), 1, 20, healthy())),
            obs: obs(
                21,
                W {
                    err_g: f64::NAN,
                    ..bad
                },
            ),
            now: at(21),
            action: Action::Hold,
            reason: "not a finite count",
            green_weight: 5,
        },
        Case {
            name: "an already counted window is not counted twice",
            state: Box::new(|p| run(p, started(p), 1, 5, healthy())),
            obs: obs(5, bad),
            now: at(6),
            action: Action::Hold,
            reason: "overlaps",
            green_weight: 5,
        },
        Case {
            name: "a gross error regression rolls back",
            state: Box::new(|p| run(p, started(p), 1, 2, healthy())),
            obs: obs(3, bad),
            now: at(3),
            action: Action::Rollback,
            reason: "errors",
            green_weight: 0,
        },
        Case {
            name: "healthy before the minimum step duration holds",
            state: Box::new(|p| run(p, started(p), 1, 4, healthy())),
            obs: obs(5, healthy()),
            now: at(5),
            action: Action::Hold,
            reason: "Minimum step duration",
            green_weight: 5,
        },
        Case {
            name: "too few green requests holds",
            state: Box::new(|p| {
                run(
                    p,
                    started(p),
                    1,
                    11,
                    W {
                        n_g: 100.0,
                        n_b: 1900.0,
                        err_g: 0.0,
                        slow_g: 10.0,
                        ..healthy()
                    },
                )
            }),
            obs: obs(
                12,
                W {
                    n_g: 100.0,
                    n_b: 1900.0,
                    err_g: 0.0,
                    slow_g: 10.0,
                    ..healthy()
                },
            ),
            now: at(12),
            action: Action::Hold,
            reason: "Minimum green requests",
            green_weight: 5,
        },
        Case {
            name: "healthy with evidence advances one step",
            state: Box::new(|p| run(p, started(p), 1, 20, healthy())),
            obs: obs(21, healthy()),
            now: at(21),
            action: Action::Advance,
            reason: "no worse",
            green_weight: 25,
        },
        Case {
            name: "blue unhealthy holds instead of rolling back",
            state: Box::new(|p| run(p, started(p), 1, 20, healthy())),
            obs: obs(
                21,
                W {
                    err_b: 3000.0,
                    err_g: 300.0,
                    ..healthy()
                },
            ),
            now: at(21),
            action: Action::Hold,
            reason: "Blue (stable) is unhealthy",
            green_weight: 5,
        },
        Case {
            name: "a guard failing on green alone rolls back after its failure count",
            state: Box::new(|p| {
                run(
                    p,
                    started(p),
                    1,
                    2,
                    W {
                        p99_g: 0.9,
                        ..healthy()
                    },
                )
            }),
            obs: obs(
                3,
                W {
                    p99_g: 0.9,
                    ..healthy()
                },
            ),
            now: at(3),
            action: Action::Rollback,
            reason: "p99 guard failed 2 windows",
            green_weight: 0,
        },
        Case {
            name: "a guard breached on a handful of green requests is noise, not a failure",
            state: Box::new(|p| {
                run(
                    p,
                    started(p),
                    1,
                    4,
                    W {
                        n_g: 40.0,
                        err_g: 0.0,
                        slow_g: 4.0,
                        p99_g: 0.9,
                        ..healthy()
                    },
                )
            }),
            obs: obs(
                5,
                W {
                    n_g: 40.0,
                    err_g: 0.0,
                    slow_g: 4.0,
                    p99_g: 0.9,
                    ..healthy()
                },
            ),
            now: at(5),
            action: Action::Hold,
            reason: "",
            green_weight: 5,
        },
        Case {
            name: "a guard failing on both colours is an environment problem",
            state: Box::new(|p| {
                run(
                    p,
                    started(p),
                    1,
                    5,
                    W {
                        p99_g: 0.9,
                        p99_b: 0.9,
                        ..healthy()
                    },
                )
            }),
            obs: obs(
                6,
                W {
                    p99_g: 0.9,
                    p99_b: 0.9,
                    ..healthy()
                },
            ),
            now: at(6),
            action: Action::Hold,
            reason: "Blue (stable) is unhealthy",
            green_weight: 5,
        },
    ];
    for case in cases {
        let state = (case.state)(&p);
        let d = decide(&p, &state, &case.obs, case.now);
        assert_eq!(d.action, case.action, "{}: {}", case.name, d.reason);
        assert!(
            d.reason.contains(case.reason),
            "{}: reason {:?} lacks {:?}",
            case.name,
            d.reason,
            case.reason
        );
        assert_eq!(d.state.weights.green, case.green_weight, "{}", case.name);
        assert_eq!(
            d.set_weights.is_some(),
            state.weights != d.state.weights,
            "{}",
            case.name
        );
    }
}

#[test]
fn holds_count_nothing_and_advance_the_window() {
    let p = policy();
    let s = run(&p, started(&p), 1, 20, healthy());
    let d = decide(
        &p,
        &s,
        &with_problem(obs(21, healthy()), "errors", DataProblem::NoData),
        at(21),
    );
    assert_eq!(
        d.state.streams, s.streams,
        "evidence changed on a data problem"
    );
    assert_eq!(d.state.last_window_end, Some(at(21)));
}

#[test]
fn walks_every_step_to_promotion_carrying_rollback_evidence_and_restarting_advance_evidence() {
    let p = policy();
    let mut s = started(&p);
    let mut greens = vec![s.weights.green];
    let mut m = 1;
    while s.phase == Phase::Progressing && m < 500 {
        let w = at_share(healthy(), p.steps[s.step]);
        let d = decide(&p, &s, &obs(m, w), at(m));
        if d.action == Action::Advance || d.action == Action::Promote {
            greens.push(d.state.weights.green);
            let step = format!("at this step ({} %", p.steps[s.step]);
            assert!(d.reason.contains(&step), "{}", d.reason);
            let errors = &d.state.streams[0];
            // The rollback evidence carries over into the next step (its first stage ran from
            // the start); the advance evidence starts there afresh, as do the step's counts.
            let first = errors.rollback.started[0].as_ref().unwrap();
            let warm_ups = greens.len() as i64 - 1;
            assert_eq!(first.intervals as i64, m - warm_ups, "minute {m}");
            assert_eq!(errors.advance.log_lr, vec![0.0; 4]);
            assert_eq!(errors.advance.intervals, 0);
            assert_eq!(errors.advance_step, Some(d.state.step));
            assert_eq!(errors.step, Pair::default());
        }
        s = d.state;
        m += 1;
    }
    assert_eq!(s.phase, Phase::Promoted);
    assert_eq!(greens, vec![5, 25, 50, 100]);
    assert_eq!(
        s.weights,
        Weights {
            blue: 0,
            green: 100
        }
    );
}

#[test]
fn rollback_needs_min_errors() {
    let mut p = policy();
    if let CheckKind::ErrorRate { min_errors, .. } = &mut p.checks[0].kind {
        *min_errors = 50;
    }
    let s = run(&p, started(&p), 1, 2, healthy());
    let bad = W {
        err_g: 40.0,
        ..healthy()
    };
    let d = decide(&p, &s, &obs(3, bad), at(3));
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
    let d = decide(&p, &d.state, &obs(4, bad), at(4));
    assert_eq!(d.action, Action::Rollback, "{}", d.reason);
}

#[test]
fn schedule_blocks_advance_but_not_rollback() {
    let mut p = policy();
    p.schedule = Some(Schedule {
        timezone: "UTC".into(),
        tz: jiff::tz::TimeZone::UTC,
        windows: vec![TimeWindow {
            start_minute: 22 * 60,
            end_minute: 23 * 60,
        }],
    });
    // t0 is midnight UTC: outside 22:00-23:00.
    let s = run(&p, started(&p), 1, 30, healthy());
    let d = decide(&p, &s, &obs(31, healthy()), at(31));
    assert_eq!(d.action, Action::Hold);
    assert!(d.reason.contains("schedule"), "{}", d.reason);
    let bad = W {
        err_g: 40.0,
        ..healthy()
    };
    let mut s = d.state;
    let mut rolled_back_at = None;
    for m in 32..45 {
        let d = decide(&p, &s, &obs(m, bad), at(m));
        s = d.state;
        if d.action == Action::Rollback {
            rolled_back_at = Some(m);
            break;
        }
    }
    assert!(rolled_back_at.is_some(), "no rollback outside the schedule");
    // A pending rollout waits for the window to start.
    let d = decide(&p, &RolloutState::new(&p), &obs(1, healthy()), at(1));
    assert_eq!(d.action, Action::Hold);
    assert!(d.reason.contains("schedule window"), "{}", d.reason);
}

#[test]
fn max_step_duration_advances_or_holds_as_the_policy_says() {
    let mut p = policy();
    // Too few errors anywhere for non-inferiority evidence on the error stream.
    let quiet = W {
        err_b: 0.0,
        err_g: 0.0,
        ..healthy()
    };
    p.max_step_duration = Some(Duration::from_secs(3600));
    p.on_max_step_duration = MaxStepAction::Advance;
    let s = run(&p, started(&p), 1, 59, quiet);
    let d = decide(&p, &s, &obs(60, quiet), at(60));
    assert_eq!(d.action, Action::Advance, "{}", d.reason);
    assert!(d.reason.contains("Maximum step duration"));
    p.on_max_step_duration = MaxStepAction::Hold;
    let d = decide(&p, &s, &obs(60, quiet), at(60));
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
    assert!(d.reason.contains("Collecting evidence"), "{}", d.reason);
}

#[test]
fn probe_steps_advance_on_dwell_but_never_against_evidence() {
    let mut p = policy();
    p.advance_on_dwell_below = Some(25.0);
    // Too few errors anywhere for non-inferiority evidence on the error stream.
    let quiet = W {
        err_b: 0.0,
        err_g: 0.0,
        ..healthy()
    };
    // Step 0 (5 %) is a probe step: minimum dwell and requests met → advance.
    let s = run(&p, started(&p), 1, 9, quiet);
    let d = decide(&p, &s, &obs(10, quiet), at(10));
    assert_eq!(d.action, Action::Advance, "{}", d.reason);
    assert!(d.reason.contains("Probe step"), "{}", d.reason);
    assert_eq!(d.state.step, 1);
    // Step 1 (25 %) is not a probe step: it needs evidence.
    let s = run(&p, d.state, 11, 20, at_share(quiet, 25.0));
    assert_eq!(s.step, 1);
    let d = decide(&p, &s, &obs(31, at_share(quiet, 25.0)), at(31));
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
    assert!(d.reason.contains("Collecting evidence"), "{}", d.reason);
    // Not before the minimum dwell.
    let early = run(&p, started(&p), 1, 4, quiet);
    let d = decide(&p, &early, &obs(5, quiet), at(5));
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
    assert!(d.reason.contains("Minimum step duration"), "{}", d.reason);
    // Some evidence against green (E ≥ 10, below 1/α) stops a probe step from advancing.
    let worse = W {
        err_g: 6.0,
        ..healthy()
    };
    let s = run(&p, started(&p), 1, 9, worse);
    let d = decide(&p, &s, &obs(10, worse), at(10));
    let e = d.state.streams[0].rollback.e_value();
    assert!((10.0..1.0 / p.alpha_per_stream()).contains(&e), "E = {e}");
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
    assert!(d.reason.contains("evidence against green"), "{}", d.reason);
    // Without the option the same quiet probe step holds.
    p.advance_on_dwell_below = None;
    let s = run(&p, started(&p), 1, 9, quiet);
    let d = decide(&p, &s, &obs(10, quiet), at(10));
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
}

#[test]
fn operator_intents() {
    let p = policy();
    let s = run(&p, started(&p), 1, 3, healthy());

    let mut paused = s.clone();
    paused.intent = Some(Intent::Pause {
        reason: "investigating".into(),
    });
    let d = decide(&p, &paused, &obs(4, healthy()), at(4));
    assert_eq!(d.action, Action::Pause);
    assert_eq!(d.state.phase, Phase::Paused);
    assert_eq!(d.set_weights, None, "pausing must not touch the weights");
    // Paused: even a terrible window changes nothing.
    let bad = W {
        err_g: 400.0,
        ..healthy()
    };
    let d2 = decide(&p, &d.state, &obs(5, bad), at(5));
    assert_eq!(d2.action, Action::Hold);
    assert!(d2.reason.contains("investigating"));

    let mut resumed = d2.state.clone();
    resumed.intent = Some(Intent::Resume);
    let d3 = decide(&p, &resumed, &obs(6, healthy()), at(6));
    assert_eq!(d3.action, Action::Resume);
    assert_eq!(d3.state.phase, Phase::Progressing);
    assert_eq!(d3.state.weights.green, 5);

    let mut rb = s.clone();
    rb.intent = Some(Intent::Rollback {
        reason: "bad deploy".into(),
    });
    let d = decide(&p, &rb, &obs(4, healthy()), at(4));
    assert_eq!(d.action, Action::Rollback);
    assert_eq!(
        d.set_weights,
        Some(Weights {
            blue: 100,
            green: 0
        })
    );

    let mut pr = s.clone();
    pr.intent = Some(Intent::Promote);
    let d = decide(&p, &pr, &obs(4, healthy()), at(4));
    assert_eq!(d.action, Action::Promote);
    assert_eq!(
        d.set_weights,
        Some(Weights {
            blue: 0,
            green: 100
        })
    );
    assert_eq!(d.state.phase, Phase::Promoted);

    // The promotion made green stable: the next start is a new rollout onto blue, with fresh
    // evidence.
    assert_eq!(d.state.releases.stable, crate::policy::Colour::Green);
    let mut again = d.state.clone();
    again.intent = Some(Intent::Start {
        request: Default::default(),
    });
    let d = decide(&p, &again, &obs(5, healthy()), at(5));
    assert_eq!(d.action, Action::Start);
    assert_eq!(d.state.weights, Weights { blue: 5, green: 95 });
    assert!(d.state.streams.iter().all(|s| s.total == Pair::default()));

    let mut waiting = RolloutState::new(&p);
    let mut manual = p.clone();
    manual.auto_start = false;
    let d = decide(&manual, &waiting, &obs(1, healthy()), at(1));
    assert_eq!(d.action, Action::Hold);
    waiting.intent = Some(Intent::Start {
        request: Default::default(),
    });
    let d = decide(&manual, &waiting, &obs(1, healthy()), at(1));
    assert_eq!(d.action, Action::Start);
}

#[test]
fn metrics_outage_raises_one_notice_and_never_moves_weights() {
    let p = policy();
    let mut s = run(&p, started(&p), 1, 12, healthy());
    let mut notices = 0;
    for m in 13..60 {
        let d = decide(
            &p,
            &s,
            &with_problem(
                obs(m, healthy()),
                "errors",
                DataProblem::Backend("connection refused".into()),
            ),
            at(m),
        );
        assert_eq!(d.action, Action::Hold);
        assert_eq!(d.set_weights, None);
        notices += d
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::MetricsUnavailable { .. }))
            .count();
        s = d.state;
    }
    assert_eq!(notices, 1);
    // Data back: the flag clears, so the next outage alerts again.
    let d = decide(&p, &s, &obs(60, healthy()), at(60));
    assert!(!d.state.no_data_alerted);
}

#[test]
fn stuck_notice_once_per_step() {
    let mut p = policy();
    p.stuck_alert_after = Duration::from_secs(1800);
    let quiet = W {
        err_b: 0.0,
        err_g: 0.0,
        ..healthy()
    };
    let mut s = started(&p);
    let mut notices = 0;
    for m in 1..120 {
        let d = decide(&p, &s, &obs(m, quiet), at(m));
        notices += d
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::Stuck { .. }))
            .count();
        s = d.state;
    }
    assert_eq!(notices, 1);
}

#[test]
fn explanation_carries_counts_and_thresholds() {
    let p = policy();
    let s = run(&p, started(&p), 1, 2, healthy());
    let bad = W {
        err_g: 40.0,
        ..healthy()
    };
    let d = decide(&p, &s, &obs(3, bad), at(3));
    assert_eq!(d.action, Action::Rollback);
    let errors = &d.explanation.streams[0];
    assert_eq!(errors.id, "errors");
    assert_eq!(errors.window.unwrap().green.bad, 40.0);
    assert_eq!(errors.total.green.bad, 43.0);
    assert!(errors.rollback_log_e >= errors.rollback_threshold.ln());
    assert!((errors.rollback_threshold - 300.0).abs() < 1e-9);
    assert_eq!(d.explanation.weights_before.green, 5);
    assert_eq!(d.explanation.weights_after.green, 0);
    assert_eq!(
        d.state.last_decision.as_ref().unwrap().action,
        Action::Rollback
    );
}

#[test]
fn state_round_trips_through_json() {
    let p = policy();
    let mut s = run(&p, started(&p), 1, 15, healthy());
    // What the stored document holds (the decisions are stored under their own keys).
    s.new_records.clear();
    let json = serde_json::to_string(&s).unwrap();
    let back: RolloutState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    // Continuing from the restored state gives the same decision.
    let a = decide(&p, &s, &obs(16, healthy()), at(16));
    let b = decide(&p, &back, &obs(16, healthy()), at(16));
    assert_eq!(a, b);
}

#[test]
fn reloaded_policy_keeps_matching_evidence() {
    let p = policy();
    let s = run(&p, started(&p), 1, 15, healthy());
    let mut changed = p.clone();
    changed.checks.remove(1); // latency check removed
    let mut r = s.clone();
    r.reconcile(&changed);
    assert_eq!(r.streams.len(), 1);
    assert_eq!(r.streams[0], s.streams[0]);
    // A changed tolerance starts that stream afresh.
    if let CheckKind::ErrorRate { tolerance, .. } = &mut changed.checks[0].kind {
        *tolerance = 0.5;
    }
    r.reconcile(&changed);
    assert_eq!(r.streams[0].total, Pair::default());
}

mod approval;
mod breaker;
mod evidence;
mod lifecycle;
mod quality;
