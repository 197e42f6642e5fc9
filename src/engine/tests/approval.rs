//! Approval gates: the rollout waits before a gated step, keeps its rollback armed, and enters
//! the step at the next evaluation after an approval.

use super::*;
use crate::policy::{ApprovalPolicy, ApprovalTimeoutAction};

/// The tests' policy with 50 % (step index 2) gated.
fn gated(timeout: Option<Duration>, on_timeout: ApprovalTimeoutAction) -> Policy {
    let mut p = policy();
    p.approval = ApprovalPolicy {
        before_steps: vec![2],
        timeout,
        on_timeout,
        approver_must_differ: true,
    };
    p
}

/// Healthy windows from minute `*m` until the rollout waits at the gate; returns that decision.
fn to_gate(p: &Policy, mut s: RolloutState, m: &mut i64) -> Decision {
    while *m < 500 {
        let d = decide(
            p,
            &s,
            &obs(*m, at_share(healthy(), p.steps[s.step])),
            at(*m),
        );
        *m += 1;
        if d.state.awaiting_approval.is_some() {
            return d;
        }
        assert_ne!(
            d.state.step, 2,
            "entered the gated step without an approval"
        );
        s = d.state;
    }
    panic!("never reached the gate");
}

fn needed(d: &Decision) -> usize {
    d.notices
        .iter()
        .filter(|n| matches!(n, Notice::ApprovalNeeded { .. }))
        .count()
}

#[test]
fn a_gated_step_waits_for_an_approval_then_is_entered_at_the_next_evaluation() {
    let p = gated(None, ApprovalTimeoutAction::Hold);
    let mut m = 1;
    let d = to_gate(&p, started(&p), &mut m);
    assert_eq!(d.action, Action::Hold, "{}", d.reason);
    assert!(
        d.reason
            .starts_with("Waiting for an approval to enter step 3 (50 %)"),
        "{}",
        d.reason
    );
    assert!(d.reason.contains("Green is no worse"), "{}", d.reason);
    assert_eq!(d.state.step, 1, "waits at 25 %");
    assert_eq!(d.set_weights, None);
    assert_eq!(
        d.notices,
        vec![Notice::ApprovalNeeded {
            step: 2,
            percent: 50.0,
            since: at(m - 1)
        }]
    );
    // It keeps waiting, weights unchanged, and asks only once.
    let mut s = d.state;
    for _ in 0..30 {
        let d = decide(&p, &s, &obs(m, at_share(healthy(), 25.0)), at(m));
        m += 1;
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert_eq!(d.set_weights, None);
        assert_eq!(needed(&d), 0);
        s = d.state;
    }
    assert_eq!(
        s.awaiting_approval.as_ref().map(|g| g.since),
        Some(at(m - 31))
    );

    let approval = approve(&p, &s, "alice", "dashboards look fine", at(m)).unwrap();
    assert_eq!(approval.step, 2);
    s.approval = Some(approval);
    let d = decide(&p, &s, &obs(m, at_share(healthy(), 25.0)), at(m));
    assert_eq!(d.action, Action::Advance, "{}", d.reason);
    assert_eq!(d.state.step, 2);
    assert_eq!(d.set_weights, Some(p.weights_at(2)));
    assert!(
        d.reason
            .ends_with("Approved by alice: dashboards look fine"),
        "{}",
        d.reason
    );
    let last = d.state.last_decision.as_ref().unwrap();
    assert_eq!(last.approved_by.as_deref(), Some("alice"));
    assert_eq!(d.state.awaiting_approval, None);
    assert_eq!(d.state.approval, None, "an approval is used once");
}

#[test]
fn automatic_rollback_stays_armed_while_waiting_for_an_approval() {
    let p = gated(None, ApprovalTimeoutAction::Hold);
    let mut m = 1;
    let mut s = to_gate(&p, started(&p), &mut m).state;
    let share = at_share(healthy(), 25.0);
    // Green at 4 % errors, eight times blue's 0.5 %.
    let bad = W {
        err_g: share.n_g * 0.04,
        ..share
    };
    for _ in 0..60 {
        let d = decide(&p, &s, &obs(m, bad), at(m));
        m += 1;
        s = d.state;
        if d.action == Action::Rollback {
            assert_eq!(s.awaiting_approval, None);
            assert_eq!(s.weights, p.traffic.weights_for(0.0));
            return;
        }
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
    }
    panic!("a green with 8 times blue's errors was not rolled back while waiting");
}

#[test]
fn approver_must_differ_refuses_whoever_started_the_rollout() {
    let p = gated(None, ApprovalTimeoutAction::Hold);
    let mut s = RolloutState::new(&p);
    s.intent = Some(Intent::Start {
        request: Default::default(),
    });
    s.intent_by = Some("bob".into());
    let d = decide(&p, &s, &obs(0, healthy()), at(0));
    assert_eq!(
        d.reason,
        "Rollout started by bob: green (candidate) from blue (stable)."
    );
    assert_eq!(d.state.started_by.as_deref(), Some("bob"));
    let mut start = d.state;
    start.applying_from = None;
    let mut m = 1;
    let s = to_gate(&p, start, &mut m).state;
    let err = approve(&p, &s, "bob", "ok", at(m)).unwrap_err();
    assert!(
        err.contains("bob started this rollout of checkout")
            && err.contains("approver_must_differ = true"),
        "{err}"
    );
    assert!(approve(&p, &s, "carol", "ok", at(m)).is_ok());
    // Without the rule the starter may approve.
    let mut lenient = p.clone();
    lenient.approval.approver_must_differ = false;
    assert!(approve(&lenient, &s, "bob", "ok", at(m)).is_ok());
}

#[test]
fn approve_refuses_a_rollout_that_waits_for_no_approval() {
    let p = gated(None, ApprovalTimeoutAction::Hold);
    let s = started(&p);
    let err = approve(&p, &s, "alice", "ok", at(1)).unwrap_err();
    assert_eq!(
        err,
        "checkout is not waiting for an approval: it is progressing at step 1 of 4"
    );
    let mut m = 1;
    let mut s = to_gate(&p, started(&p), &mut m).state;
    s.approval = Some(approve(&p, &s, "alice", "ok", at(m)).unwrap());
    let err = approve(&p, &s, "carol", "ok", at(m)).unwrap_err();
    assert!(err.contains("already approved by alice"), "{err}");
}

#[test]
fn approval_timeout_rolls_back_when_the_policy_says_so() {
    let p = gated(
        Some(Duration::from_secs(1800)),
        ApprovalTimeoutAction::Rollback,
    );
    let mut m = 1;
    let d = to_gate(&p, started(&p), &mut m);
    let since = d.state.awaiting_approval.as_ref().unwrap().since;
    let mut s = d.state;
    loop {
        let d = decide(&p, &s, &obs(m, at_share(healthy(), 25.0)), at(m));
        s = d.state;
        if at(m).duration_since(since) < jiff::SignedDuration::from_mins(30) {
            assert_eq!(d.action, Action::Hold, "minute {m}: {}", d.reason);
        } else {
            assert_eq!(d.action, Action::Rollback, "minute {m}: {}", d.reason);
            assert!(
                d.reason.starts_with(
                    "No approval to enter step 3 (50 %) within approval_timeout (30m)"
                ),
                "{}",
                d.reason
            );
            break;
        }
        m += 1;
    }
    assert_eq!(s.phase, Phase::RolledBack);
}

#[test]
fn approval_timeout_holding_tells_once_and_an_approval_still_advances() {
    let p = gated(Some(Duration::from_secs(1800)), ApprovalTimeoutAction::Hold);
    let mut m = 1;
    let mut s = to_gate(&p, started(&p), &mut m).state;
    let mut timed_out = 0;
    for _ in 0..90 {
        let d = decide(&p, &s, &obs(m, at_share(healthy(), 25.0)), at(m));
        m += 1;
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        timed_out += d
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::ApprovalTimedOut { step: 2, .. }))
            .count();
        s = d.state;
    }
    assert_eq!(timed_out, 1);
    assert!(s.awaiting_approval.as_ref().unwrap().timed_out);
    s.approval = Some(approve(&p, &s, "carol", "late but fine", at(m)).unwrap());
    let d = decide(&p, &s, &obs(m, at_share(healthy(), 25.0)), at(m));
    assert_eq!(d.action, Action::Advance, "{}", d.reason);
}

#[test]
fn an_operator_promotion_does_not_wait_at_a_gate() {
    let p = gated(None, ApprovalTimeoutAction::Hold);
    let mut m = 1;
    let mut s = to_gate(&p, started(&p), &mut m).state;
    s.intent = Some(Intent::Promote);
    s.intent_by = Some("dana".into());
    let d = decide(&p, &s, &obs(m, at_share(healthy(), 25.0)), at(m));
    assert_eq!(d.action, Action::Promote);
    assert_eq!(d.reason, "Promoted green to 100 % by dana.");
    assert_eq!(d.state.awaiting_approval, None);
}

#[test]
fn a_reloaded_policy_without_the_gate_lets_the_rollout_advance() {
    let p = gated(None, ApprovalTimeoutAction::Hold);
    let mut m = 1;
    let s = to_gate(&p, started(&p), &mut m).state;
    let mut ungated = p.clone();
    ungated.approval.before_steps.clear();
    let d = decide(&ungated, &s, &obs(m, at_share(healthy(), 25.0)), at(m));
    assert_eq!(d.action, Action::Advance, "{}", d.reason);
    assert_eq!(d.state.awaiting_approval, None);
    // Nor does the stored state, as read before any evaluation, wait for an approval.
    let err = approve(&ungated, &s, "alice", "ok", at(m)).unwrap_err();
    assert!(err.contains("is not waiting for an approval"), "{err}");
    assert!(approve(&p, &s, "alice", "ok", at(m)).is_ok());
}

#[test]
fn states_written_before_gates_existed_still_decode() {
    let text = include_str!("../testdata/state_previous_version.json");
    let state = decode_state(text.as_bytes()).unwrap();
    assert_eq!(state.awaiting_approval, None);
    assert_eq!(state.approval, None);
    assert_eq!(state.started_by, None);
    assert_eq!(state.intent_by, None);
    assert!(state.legacy_history.iter().all(|r| r.approved_by.is_none()));
}
