//! Rollouts onto a cluster whose breaker tripped: held (weights frozen, rollback armed), or
//! rolled back when the breaker says so; no start onto it.

use super::*;
use crate::engine::Held;

fn held(roll_back: bool) -> Held {
    Held {
        by: "breaker:cilium-eu1".into(),
        reason: "the cluster breaker of cilium-eu1 tripped".into(),
        roll_back,
    }
}

#[test]
fn a_held_rollout_never_advances_but_still_rolls_back_on_its_own_evidence() {
    let p = policy();
    let mut s = started(&p);
    s.held = Some(held(false));
    // An hour of healthy windows would have advanced it several steps.
    let s = run(&p, s, 1, 60, healthy());
    assert_eq!(s.phase, Phase::Progressing);
    assert_eq!(s.step, 0);
    assert_eq!(s.weights, p.weights_at_toward(s.candidate(), 0));
    let d = decide(&p, &s, &obs(61, healthy()), at(61));
    assert_eq!(d.action, Action::Hold);
    assert!(
        d.reason
            .starts_with("Held: the cluster breaker of cilium-eu1 tripped; weights frozen"),
        "{}",
        d.reason
    );
    // The evidence kept counting: the hour is in the streams.
    assert!(s
        .streams
        .iter()
        .all(|st| st.total.green.requests > 30_000.0));
    // A bad green is rolled back all the same, and the rollback is greenlight's own.
    let bad = W {
        err_g: 60.0,
        ..healthy()
    };
    let mut s = s;
    for m in 61..200 {
        s = decide(&p, &s, &obs(m, bad), at(m)).state;
        if s.phase == Phase::RolledBack {
            break;
        }
    }
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(s.rollback_by, None);
    // Once the hold is lifted (the daemon stops setting it), the rollout goes on.
    let mut s = run(&p, started(&p), 1, 60, healthy());
    assert!(s.step > 0, "without a hold the hour advances it");
    s.held = Some(held(false));
    let step = s.step;
    let s = run(&p, s, 61, 60, healthy());
    assert_eq!(s.step, step);
}

#[test]
fn a_breaker_that_rolls_back_rolls_back_every_rollout_under_way_even_paused_ones() {
    let p = policy();
    for phase in [Phase::Progressing, Phase::Paused] {
        let mut s = started(&p);
        s.phase = phase;
        s.held = Some(held(true));
        let d = decide(&p, &s, &obs(1, healthy()), at(1));
        assert_eq!(d.action, Action::Rollback, "{phase:?}");
        assert_eq!(
            d.reason,
            "Rolled back: the cluster breaker of cilium-eu1 tripped"
        );
        assert_eq!(d.state.rollback_by.as_deref(), Some("breaker:cilium-eu1"));
        assert_eq!(d.set_weights, Some(p.traffic.weights_for(0.0)));
    }
    // At rest there is nothing to roll back.
    let mut s = RolloutState::new(&p);
    s.held = Some(held(true));
    s.phase = Phase::Promoted;
    assert_eq!(
        decide(&p, &s, &obs(1, healthy()), at(1)).action,
        Action::Hold
    );
}

#[test]
fn nothing_starts_onto_a_held_cluster_automatically_or_by_request() {
    let p = policy();
    let mut s = RolloutState::new(&p);
    s.held = Some(held(false));
    let d = decide(&p, &s, &obs(1, healthy()), at(1));
    assert_eq!(d.action, Action::Hold);
    assert_eq!(
        d.reason,
        "Not starting automatically: the cluster breaker of cilium-eu1 tripped."
    );
    s.intent = Some(Intent::Start {
        request: Default::default(),
    });
    s.intent_by = Some("campaign:cni".into());
    let d = decide(&p, &s, &obs(1, healthy()), at(1));
    assert_eq!(d.action, Action::Hold);
    assert_eq!(
        d.reason,
        "Start refused: the cluster breaker of cilium-eu1 tripped."
    );
    assert_eq!(d.state.phase, Phase::Pending);
    // An operator's rollback is recorded as theirs.
    let mut s = started(&p);
    s.intent = Some(Intent::Rollback {
        reason: "looks wrong".into(),
    });
    s.intent_by = Some("alice".into());
    let d = decide(&p, &s, &obs(1, healthy()), at(1));
    assert_eq!(d.state.rollback_by.as_deref(), Some("alice"));
}
