//! The release lifecycle: rollouts in both directions, release ids, refusals.

use super::*;
use crate::engine::{Releases, StartRequest};
use crate::policy::Colour;

/// A window of a world where blue's and green's error rates are `rate_b`, `rate_g` and each
/// colour receives its share of the live weights (12,000 requests a minute in all).
fn world(minute: i64, live: Weights, rate_b: f64, rate_g: f64) -> Observation {
    let total = 12_000.0;
    let g = total * f64::from(live.green) / f64::from((live.blue + live.green).max(1));
    let b = total - g;
    obs(
        minute,
        W {
            n_b: b,
            n_g: g,
            err_b: b * rate_b,
            err_g: g * rate_g,
            slow_b: b * 0.1,
            slow_g: g * 0.1,
            p99_g: 0.3,
            p99_b: 0.3,
        },
    )
}

/// A rollout promoted onto green with release `a` (blue still runs `previous`, when given).
fn green_stable(p: &Policy, previous: Option<&str>) -> RolloutState {
    let mut s = RolloutState::new(p);
    s.releases = Releases {
        stable: Colour::Green,
        stable_release: Some("a".into()),
        candidate_release: previous.map(String::from),
        rolled_back: vec![],
    };
    s.weights = Weights {
        blue: 0,
        green: 100,
    };
    s.phase = Phase::Promoted;
    s
}

fn start(s: &mut RolloutState, release: &str, by: &str) {
    s.intent = Some(Intent::Start {
        request: StartRequest {
            to: None,
            release: Some(release.into()),
        },
    });
    s.intent_by = Some(by.into());
}

/// Decides minute after minute from `from` until the rollout ends (or `limit` minutes pass);
/// returns the state and the minute after the last decision.
fn until_done(
    p: &Policy,
    mut s: RolloutState,
    from: i64,
    rates: (f64, f64),
) -> (RolloutState, i64, Vec<Decision>) {
    let mut decisions = Vec::new();
    for m in from..from + 600 {
        let d = decide(p, &s, &world(m, s.weights, rates.0, rates.1), at(m));
        s = d.state.clone();
        decisions.push(d);
        if m > from && matches!(s.phase, Phase::Promoted | Phase::RolledBack) {
            return (s, m + 1, decisions);
        }
    }
    panic!("the rollout did not end in 600 minutes: {:?}", s.phase);
}

#[test]
fn three_releases_alternate_colours_and_compare_the_candidate_against_the_stable_copy() {
    let mut p = policy();
    p.auto_start = false;
    let mut s = RolloutState::new(&p);
    assert_eq!(s.releases.stable, Colour::Blue);

    // Release A onto green, healthy: promoted, green stable.
    start(&mut s, "a", "alice");
    let (s, next, ds) = until_done(&p, s, 1, (0.005, 0.005));
    assert_eq!(ds[0].action, Action::Start);
    assert!(ds[0]
        .reason
        .contains("release a onto green (candidate) from blue (stable)"));
    assert_eq!(ds[0].set_weights, Some(Weights { blue: 95, green: 5 }));
    assert_eq!(s.phase, Phase::Promoted);
    assert_eq!(
        s.weights,
        Weights {
            blue: 0,
            green: 100
        }
    );
    assert_eq!(s.releases.stable, Colour::Green);
    assert_eq!(s.releases.stable_release.as_deref(), Some("a"));

    // Release B onto blue: blue receives the step shares, and is promoted when healthy.
    let mut s = s;
    start(&mut s, "b", "alice");
    let (s, next, ds) = until_done(&p, s, next, (0.005, 0.005));
    assert_eq!(ds[0].set_weights, Some(Weights { blue: 5, green: 95 }));
    let shares: Vec<u32> = ds
        .iter()
        .filter_map(|d| d.set_weights)
        .map(|w| w.blue)
        .collect();
    assert_eq!(shares, vec![5, 25, 50, 100], "blue climbs the steps");
    assert_eq!(s.phase, Phase::Promoted);
    assert_eq!(
        s.weights,
        Weights {
            blue: 100,
            green: 0
        }
    );
    assert_eq!(s.releases.stable, Colour::Blue);
    assert_eq!(s.releases.stable_release.as_deref(), Some("b"));
    assert_eq!(s.releases.release_of(Colour::Green), Some("a"));

    // Release C onto green with five times blue's error rate: rolled back to blue.
    let mut s = s;
    start(&mut s, "c", "alice");
    let (s, _, ds) = until_done(&p, s, next, (0.005, 0.025));
    let last = ds.last().unwrap();
    assert_eq!(last.action, Action::Rollback);
    assert!(
        last.reason.contains("the candidate (green)'s rate"),
        "{}",
        last.reason
    );
    assert_eq!(
        s.weights,
        Weights {
            blue: 100,
            green: 0
        }
    );
    assert_eq!(s.releases.stable, Colour::Blue);
    assert_eq!(s.releases.stable_release.as_deref(), Some("b"));
    assert_eq!(s.releases.rolled_back, vec!["c".to_string()]);
}

#[test]
fn a_bad_candidate_on_blue_is_rolled_back_to_green() {
    let p = policy();
    let mut s = green_stable(&p, None);
    start(&mut s, "b", "alice");
    // Blue, the candidate, fails five times as often as green.
    let (s, _, ds) = until_done(&p, s, 1, (0.025, 0.005));
    assert_eq!(ds.last().unwrap().action, Action::Rollback);
    assert!(ds
        .last()
        .unwrap()
        .reason
        .contains("the candidate (blue)'s rate"));
    assert_eq!(
        s.weights,
        Weights {
            blue: 0,
            green: 100
        }
    );
    assert_eq!(s.releases.stable, Colour::Green);
    assert_eq!(s.releases.rolled_back, vec!["b".to_string()]);
}

#[test]
fn a_sick_stable_green_holds_a_rollout_onto_blue_instead_of_blaming_blue() {
    let p = policy();
    let mut s = green_stable(&p, None);
    start(&mut s, "b", "alice");
    let mut s = decide(&p, &s, &world(1, s.weights, 0.005, 0.005), at(1)).state;
    for m in 2..40 {
        // Green (stable) fails at 30 %, over the policy's blue_max_error_rate of 20 %.
        let d = decide(&p, &s, &world(m, s.weights, 0.005, 0.3), at(m));
        assert_ne!(d.action, Action::Rollback, "minute {m}: {}", d.reason);
        s = d.state;
    }
    let last = s.last_decision.unwrap();
    assert!(
        last.reason.contains("Green (stable) is unhealthy"),
        "{}",
        last.reason
    );
}

#[test]
fn start_refuses_the_stable_colour_the_stable_release_and_a_campaign_rerunning_a_rolled_back_one() {
    let p = policy();
    let mut s = RolloutState::new(&p);
    s.phase = Phase::RolledBack;
    s.releases = Releases {
        stable: Colour::Blue,
        stable_release: Some("a".into()),
        candidate_release: Some("b".into()),
        rolled_back: vec!["b".into()],
    };
    let refused = |request: StartRequest, by: &str| {
        let mut s = s.clone();
        s.intent = Some(Intent::Start { request });
        s.intent_by = Some(by.into());
        let d = decide(&p, &s, &obs(1, healthy()), at(1));
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert_eq!(d.state.phase, Phase::RolledBack);
        assert_eq!(d.set_weights, None);
        d.reason
    };
    let why = refused(
        StartRequest {
            to: Some(Colour::Blue),
            release: None,
        },
        "alice",
    );
    assert!(why.contains("blue is the stable colour"), "{why}");
    let why = refused(
        StartRequest {
            to: None,
            release: Some("a".into()),
        },
        "alice",
    );
    assert!(why.contains("release a is already stable on blue"), "{why}");
    let why = refused(
        StartRequest {
            to: None,
            release: Some("b".into()),
        },
        "campaign:cni",
    );
    assert!(why.contains("release b was rolled back"), "{why}");
    // A person may start it again.
    let mut again = s.clone();
    start(&mut again, "b", "alice");
    let d = decide(&p, &again, &obs(1, healthy()), at(1));
    assert_eq!(d.action, Action::Start);
}

#[test]
fn an_operator_rollback_after_promotion_returns_traffic_to_the_previous_stable_colour() {
    let p = policy();
    // Green runs a, promoted over blue's previous release z.
    let mut s = green_stable(&p, Some("z"));
    s.intent = Some(Intent::Rollback {
        reason: "a breaks checkout".into(),
    });
    let d = decide(&p, &s, &obs(1, healthy()), at(1));
    assert_eq!(d.action, Action::Rollback);
    assert_eq!(
        d.set_weights,
        Some(Weights {
            blue: 100,
            green: 0
        })
    );
    assert_eq!(d.state.releases.stable, Colour::Blue);
    assert_eq!(d.state.releases.stable_release.as_deref(), Some("z"));
    assert_eq!(d.state.releases.rolled_back, vec!["a".to_string()]);
}

#[test]
fn a_state_promoted_before_directions_existed_decodes_with_green_stable() {
    let p = policy();
    let mut s = RolloutState::new(&p);
    s.phase = Phase::Promoted;
    s.weights = Weights {
        blue: 0,
        green: 100,
    };
    let mut json: serde_json::Value = serde_json::from_slice(&encode_state(&s).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("releases");
    let old = decode_state(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(old.releases.stable, Colour::Green);
    // So the next start moves onto blue instead of back to green's first step.
    let mut next = old;
    next.intent = Some(Intent::Start {
        request: Default::default(),
    });
    let d = decide(&p, &next, &obs(1, healthy()), at(1));
    assert_eq!(d.set_weights, Some(Weights { blue: 5, green: 95 }));
}

fn baking_policy(on_breach: crate::policy::BakeBreach) -> Policy {
    let mut p = policy();
    p.auto_start = false;
    p.bake = Some(crate::policy::Bake {
        duration: Duration::from_secs(30 * 60),
        on_breach,
    });
    p
}

/// Runs healthy windows from a release-`r` start until the bake begins; returns the state and
/// the next minute.
fn into_bake(p: &Policy, r: &str) -> (RolloutState, i64) {
    let mut s = RolloutState::new(p);
    start(&mut s, r, "alice");
    for m in 1..400 {
        let d = decide(p, &s, &world(m, s.weights, 0.005, 0.005), at(m));
        s = d.state;
        if s.phase == Phase::Baking {
            assert_eq!(d.action, Action::Advance);
            assert!(d.reason.contains("baking until"), "{}", d.reason);
            return (s, m + 1);
        }
        assert_ne!(s.phase, Phase::Promoted, "promoted without a bake");
    }
    panic!("never reached the bake");
}

#[test]
fn a_breach_ten_minutes_into_the_bake_rolls_back_to_the_previous_stable_colour() {
    let p = baking_policy(crate::policy::BakeBreach::Rollback);
    let (mut s, from) = into_bake(&p, "r1");
    assert_eq!(
        s.weights,
        Weights {
            blue: 0,
            green: 100
        }
    );
    assert_eq!(
        s.releases.stable,
        Colour::Blue,
        "not stable before the bake ends"
    );
    // Ten clean minutes at 100 %, then green fails five times as often as during the rollout.
    for m in from..from + 10 {
        let d = decide(&p, &s, &world(m, s.weights, 0.005, 0.005), at(m));
        assert_eq!(d.action, Action::Hold, "minute {m}: {}", d.reason);
        s = d.state;
    }
    let mut rolled = None;
    for m in from + 10..from + 25 {
        let d = decide(&p, &s, &world(m, s.weights, 0.005, 0.025), at(m));
        s = d.state.clone();
        if d.action == Action::Rollback {
            rolled = Some((m - from, d));
            break;
        }
    }
    let (after, d) = rolled.expect("the breach rolls back within 15 minutes");
    assert!(after >= 10, "{after}");
    assert!(
        d.reason.starts_with("Breach during the bake"),
        "{}",
        d.reason
    );
    assert_eq!(
        d.set_weights,
        Some(Weights {
            blue: 100,
            green: 0
        })
    );
    assert_eq!(d.state.phase, Phase::RolledBack);
    assert_eq!(d.state.releases.stable, Colour::Blue);
    assert_eq!(d.state.releases.rolled_back, vec!["r1".to_string()]);
    assert_eq!(d.state.bake_until, None);
}

#[test]
fn a_clean_bake_ends_in_promotion_and_makes_the_candidate_stable() {
    let p = baking_policy(crate::policy::BakeBreach::Rollback);
    let (mut s, from) = into_bake(&p, "r1");
    let mut promoted = None;
    for m in from..from + 40 {
        let d = decide(&p, &s, &world(m, s.weights, 0.005, 0.005), at(m));
        s = d.state.clone();
        if d.action == Action::Promote {
            promoted = Some((m - from, d));
            break;
        }
        assert_eq!(d.action, Action::Hold, "minute {m}: {}", d.reason);
    }
    let (after, d) = promoted.expect("promoted at the end of the bake");
    assert!(
        (29..=31).contains(&after),
        "promoted {after} minutes into a 30m bake"
    );
    assert!(
        d.reason.contains("green (release r1) is stable"),
        "{}",
        d.reason
    );
    assert_eq!(d.state.phase, Phase::Promoted);
    assert_eq!(d.state.releases.stable, Colour::Green);
    assert_eq!(d.state.releases.stable_release.as_deref(), Some("r1"));
    assert_eq!(d.set_weights, None, "the weights were already at 100 %");
    assert!(d.state.streams.iter().all(|s| s.bake.is_none()));
}

#[test]
fn with_the_old_colour_not_kept_warm_a_bake_breach_alerts_once_and_nothing_rolls_back() {
    let p = baking_policy(crate::policy::BakeBreach::Alert);
    let (mut s, from) = into_bake(&p, "r1");
    let mut notices = 0;
    let mut last = None;
    for m in from..from + 40 {
        let d = decide(&p, &s, &world(m, s.weights, 0.005, 0.025), at(m));
        assert_ne!(d.action, Action::Rollback, "minute {m}");
        notices += d
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::BakeBreach { .. }))
            .count();
        s = d.state.clone();
        last = Some(d);
        if s.phase == Phase::Promoted {
            break;
        }
    }
    assert_eq!(notices, 1);
    let last = last.unwrap();
    assert_eq!(last.action, Action::Promote);
    assert!(
        last.reason.contains("with a breach alerted"),
        "{}",
        last.reason
    );
}

#[test]
fn an_operator_rollback_during_the_bake_returns_traffic_to_the_stable_colour() {
    let p = baking_policy(crate::policy::BakeBreach::Rollback);
    let (mut s, from) = into_bake(&p, "r1");
    s.intent = Some(Intent::Rollback {
        reason: "looks wrong".into(),
    });
    let d = decide(&p, &s, &world(from, s.weights, 0.005, 0.005), at(from));
    assert_eq!(d.action, Action::Rollback);
    assert_eq!(
        d.set_weights,
        Some(Weights {
            blue: 100,
            green: 0
        })
    );
    assert_eq!(d.state.releases.stable, Colour::Blue);
}

#[test]
fn a_candidate_on_blue_that_stops_reporting_is_named_blue() {
    let p = policy();
    let mut s = green_stable(&p, None);
    start(&mut s, "b", "alice");
    let mut s = decide(&p, &s, &world(1, s.weights, 0.005, 0.005), at(1)).state;
    let mut last = String::new();
    for m in 2..6 {
        let mut o = world(m, s.weights, 0.005, 0.005);
        for check in ["errors", "latency"] {
            o = with_problem(o, check, DataProblem::GreenMissing("blue: no data".into()));
        }
        let d = decide(&p, &s, &o, at(m));
        last = d.reason.clone();
        s = d.state;
    }
    assert!(
        last.contains("Blue's metrics are missing while green's are present"),
        "{last}"
    );
}

#[test]
fn a_break_glass_rollback_during_the_bake_ends_it_and_rolls_the_release_back() {
    let p = baking_policy(crate::policy::BakeBreach::Rollback);
    let (mut s, from) = into_bake(&p, "r1");
    s.record_break_glass(&p, "pager", Colour::Blue, at(from));
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(
        s.weights,
        Weights {
            blue: 100,
            green: 0
        }
    );
    assert_eq!(s.releases.rolled_back, vec!["r1".to_string()]);
    assert_eq!(s.bake_until, None);
    assert!(s.streams.iter().all(|st| st.bake.is_none()));
}
