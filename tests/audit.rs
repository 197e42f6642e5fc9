//! The audit trail and approvals through the CLI, against the Consul double and a real HAProxy:
//! who did what is kept in Consul in order and bounded, `approver_must_differ` refuses the
//! starter, and an audit write that fails never blocks the action.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use greenlight::audit::{ActionKind, Actor, AuditEntry, AuditLog, AUDIT_LEN};
use greenlight::consul::ConsulClient;
use greenlight::daemon::store::encode;
use greenlight::engine::{ApprovalGate, Phase, RolloutState};
use greenlight::policy::Policy;
use jiff::Timestamp;
use support::stack::{listen_addr, policy_with, Stack, STATE_KEY};

const GATED: &str = "auto_start = false\napproval_before = [50]\napprover_must_differ = true";

fn setup(top_level: &str) -> (Stack, PathBuf) {
    let stack = Stack::start_with(&policy_with(top_level), false);
    let cfg = stack.config("a", listen_addr(), &Stack::unreachable_url());
    (stack, cfg)
}

fn audit(stack: &Stack) -> AuditLog {
    let client = ConsulClient::new(stack.consul.url(), None, Duration::from_secs(5)).unwrap();
    AuditLog::new(client, "greenlight")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn entries(stack: &Stack) -> Vec<AuditEntry> {
    runtime()
        .block_on(audit(stack).list("checkout", AUDIT_LEN))
        .unwrap()
}

fn policy(stack: &Stack) -> Policy {
    let path = stack.policy_path("checkout");
    let text = std::fs::read_to_string(&path).unwrap();
    Policy::from_toml(&text, &path, None).unwrap()
}

/// Stores a rollout started by `starter`, waiting at 10 % for the approval of 50 %.
fn waiting_for_approval(stack: &Stack, starter: &str) -> RolloutState {
    let p = policy(stack);
    let mut s = RolloutState::started(&p, Timestamp::now());
    s.started_by = Some(starter.into());
    s.awaiting_approval = Some(ApprovalGate {
        step: 1,
        since: Timestamp::now(),
        timed_out: false,
    });
    stack.consul.put(STATE_KEY, &encode(&s).unwrap());
    s
}

fn stored(stack: &Stack) -> RolloutState {
    let bytes = stack.consul.value(STATE_KEY).expect("a stored state");
    greenlight::engine::decode_state(&bytes).unwrap()
}

fn greenlight(stack: &Stack, cfg: &Path, args: &[&str]) -> support::stack::Finished {
    stack.greenlight(cfg, args, &[])
}

#[test]
fn cli_actions_are_audited_in_order_with_who_why_and_the_state_around_them() {
    let (stack, cfg) = setup("auto_start = false");
    greenlight(&stack, &cfg, &["--as", "alice", "start", "checkout"]).expect_code(0);
    greenlight(
        &stack,
        &cfg,
        &["pause", "checkout", "--reason", "dashboards", "--as", "bob"],
    )
    .expect_code(0);
    // Without --as: the OS user.
    let done = stack.greenlight(
        &cfg,
        &["resume", "checkout", "--reason", "all clear"],
        &[("USER", "carol")],
    );
    done.expect_code(0);
    assert!(
        done.stdout.contains("recorded Resume by carol"),
        "{}",
        done.stdout
    );

    let list = entries(&stack);
    let summary: Vec<(ActionKind, &str, &str)> = list
        .iter()
        .map(|e| (e.action, e.user.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (ActionKind::Start, "alice", "requested by an operator"),
            (ActionKind::Pause, "bob", "dashboards"),
            (ActionKind::Resume, "carol", "all clear"),
        ]
    );
    assert!(list.windows(2).all(|w| w[0].at <= w[1].at));
    let pause = &list[1];
    assert_eq!(pause.api, "checkout");
    assert_eq!(pause.source, "cli");
    assert!(pause.request_id.starts_with("cli-"), "{}", pause.request_id);
    assert_eq!(pause.before.phase, Phase::Pending);
    assert!(matches!(
        pause.after.intent,
        Some(greenlight::engine::Intent::Pause { ref reason }) if reason == "dashboards"
    ));
    // The revision is the state's ModifyIndex in Consul as the action wrote it: the last one.
    let last = list.last().unwrap();
    let client = ConsulClient::new(stack.consul.url(), None, Duration::from_secs(5)).unwrap();
    let index = runtime()
        .block_on(client.get(STATE_KEY))
        .unwrap()
        .unwrap()
        .modify_index;
    assert_eq!(last.revision, index);
    // The daemon-side record of who asked: the state names the requester of the intent.
    assert_eq!(stored(&stack).intent_by.as_deref(), Some("carol"));
}

#[test]
fn approve_records_the_approver_and_approver_must_differ_refuses_the_starter() {
    let (stack, cfg) = setup(GATED);
    waiting_for_approval(&stack, "alice");

    let refused = greenlight(&stack, &cfg, &["--as", "alice", "approve", "checkout"]);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains(
            "alice started this rollout of checkout, and its policy requires someone else to approve (approver_must_differ = true). Nothing recorded."
        ),
        "{}",
        refused.stderr
    );
    assert_eq!(stored(&stack).approval, None);
    assert!(
        entries(&stack).is_empty(),
        "a refused action is not audited"
    );

    let done = greenlight(
        &stack,
        &cfg,
        &[
            "--as",
            "bob",
            "approve",
            "checkout",
            "--reason",
            "error budget fine",
        ],
    );
    done.expect_code(0);
    assert!(
        done.stdout
            .contains("checkout: recorded the approval of step 2 (50 %) by bob"),
        "{}",
        done.stdout
    );
    let approval = stored(&stack).approval.expect("an approval");
    assert_eq!((approval.step, approval.by.as_str()), (1, "bob"));
    assert_eq!(approval.reason, "error budget fine");
    let list = entries(&stack);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].action, ActionKind::Approve);
    assert_eq!(list[0].user, "bob");
    assert_eq!(list[0].before.awaiting_approval, Some(1));

    // status shows the gate and who approved it.
    let status = greenlight(&stack, &cfg, &["status"]);
    status.expect_code(0);
    assert!(
        status
            .stdout
            .contains("AWAITING APPROVAL to enter step 2 (50 %), approved by bob"),
        "{}",
        status.stdout
    );
    let json = greenlight(&stack, &cfg, &["status", "--json"]);
    let views: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(views[0]["awaiting_approval"]["step"], 1);
    assert_eq!(views[0]["awaiting_approval"]["approved_by"], "bob");
    assert_eq!(views[0]["started_by"], "alice");
}

#[test]
fn approving_a_rollout_that_waits_for_nothing_is_refused() {
    let (stack, cfg) = setup(GATED);
    let refused = greenlight(&stack, &cfg, &["--as", "bob", "approve", "checkout"]);
    refused.expect_code(1);
    assert!(
        refused
            .stderr
            .contains("checkout is not waiting for an approval: it is pending at step 1 of 3"),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_failing_audit_write_does_not_block_the_action() {
    let (stack, cfg) = setup("auto_start = false");
    stack.consul.read_only_under("greenlight/audit/");
    let done = greenlight(
        &stack,
        &cfg,
        &["--as", "alice", "pause", "checkout", "--reason", "incident"],
    );
    done.expect_code(0);
    assert!(done.stdout.contains("recorded Pause"), "{}", done.stdout);
    assert!(
        done.stderr.contains(
            "warning: checkout: the action is recorded, but its audit entry could not be written"
        ) && done.stderr.contains("Permission denied"),
        "{}",
        done.stderr
    );
    assert!(matches!(
        stored(&stack).intent,
        Some(greenlight::engine::Intent::Pause { .. })
    ));
    assert!(entries(&stack).is_empty());
}

#[test]
fn a_break_glass_rollback_is_audited_with_the_weights_it_moved() {
    let (stack, cfg) = setup("auto_start = false");
    waiting_for_approval(&stack, "alice");
    stack.haproxy.runtime("set weight api_checkout/blue 90");
    stack.haproxy.runtime("set weight api_checkout/green 10");
    let done = greenlight(
        &stack,
        &cfg,
        &[
            "--as", "carol", "rollback", "checkout", "--now", "--reason", "outage",
        ],
    );
    done.expect_code(0);
    assert_eq!(stack.green_weight(), 0);
    let list = entries(&stack);
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!(e.action, ActionKind::RollbackNow);
    assert_eq!((e.user.as_str(), e.reason.as_str()), ("carol", "outage"));
    assert_eq!(e.before.phase, Phase::Progressing);
    assert_eq!(e.before.weights.green, 10);
    assert_eq!(e.after.phase, Phase::RolledBack);
    assert_eq!(e.after.weights.green, 0);
    assert_eq!(
        e.after.awaiting_approval, None,
        "the gate is gone with the rollout"
    );
}

#[test]
fn the_trail_keeps_the_newest_entries_per_api_and_drops_the_oldest() {
    let (stack, _cfg) = setup("auto_start = false");
    let p = policy(&stack);
    let log = audit(&stack);
    let actor = Actor {
        user: "script".into(),
        groups: vec!["ci".into()],
        source: "127.0.0.1".into(),
        request_id: String::new(),
    };
    let s = RolloutState::new(&p);
    let t0 = Timestamp::now();
    let rt = runtime();
    let total = AUDIT_LEN + 3;
    for i in 0..total {
        let actor = Actor {
            request_id: format!("req-{i}"),
            ..actor.clone()
        };
        let at = t0 + jiff::SignedDuration::from_millis(i as i64);
        let entry = AuditEntry::new(&p, &actor, ActionKind::Pause, "n", &s, &s, 0, at);
        assert_eq!(rt.block_on(log.record(&p, &entry)), None);
    }
    // Another API's trail is its own.
    let mut other = p.clone();
    other.api = "payments".into();
    let entry = AuditEntry::new(&other, &actor, ActionKind::Start, "n", &s, &s, 0, t0);
    assert_eq!(rt.block_on(log.record(&other, &entry)), None);

    let kept = rt.block_on(log.list("checkout", usize::MAX)).unwrap();
    assert_eq!(kept.len(), AUDIT_LEN);
    let ids: Vec<String> = kept.iter().map(|e| e.request_id.clone()).collect();
    let want: Vec<String> = (3..total).map(|i| format!("req-{i}")).collect();
    assert_eq!(ids, want, "the oldest three are dropped, the rest in order");
    assert_eq!(
        rt.block_on(log.list("checkout", 2)).unwrap()[1].request_id,
        format!("req-{}", total - 1),
        "a short listing is the newest entries"
    );
    assert_eq!(rt.block_on(log.list("payments", 10)).unwrap().len(), 1);
    assert_eq!(log.written(), total as u64 + 1);
    assert_eq!(log.write_failures(), 0);
}

#[test]
fn an_action_on_a_stale_view_is_refused_with_the_current_state_and_writes_nothing() {
    use greenlight::audit::{perform, ActionError, ActionRequest};
    use greenlight::daemon::StateStore;
    let (stack, _cfg) = setup("auto_start = false");
    let p = policy(&stack);
    let client = ConsulClient::new(stack.consul.url(), None, Duration::from_secs(5)).unwrap();
    let store = StateStore::new(client, "greenlight");
    let log = audit(&stack);
    let rt = runtime();
    let alice = Actor {
        user: "alice".into(),
        groups: vec!["payments".into()],
        source: "10.1.2.3".into(),
        request_id: "r1".into(),
    };
    let request = |kind, expected| ActionRequest {
        kind,
        reason: "from the console".into(),
        expected_revision: expected,
        start: Default::default(),
    };
    // alice's page showed the state at revision 0 (none stored yet): her start goes through.
    let started = rt
        .block_on(perform(
            &store,
            &log,
            &p,
            &alice,
            request(ActionKind::Start, Some(0)),
        ))
        .unwrap();
    assert!(started.revision > 0);
    assert_eq!(started.entry.revision, started.revision);
    assert_eq!(started.audit_error, None);
    // bob acts from the same old view: refused, told the current state and its revision.
    let bob = Actor {
        user: "bob".into(),
        ..alice.clone()
    };
    match rt.block_on(perform(
        &store,
        &log,
        &p,
        &bob,
        request(ActionKind::Pause, Some(0)),
    )) {
        Err(ActionError::Stale { current, revision }) => {
            assert_eq!(revision, started.revision);
            assert_eq!(
                current.intent,
                Some(greenlight::engine::Intent::Start {
                    request: Default::default(),
                })
            );
            assert_eq!(current.intent_by.as_deref(), Some("alice"));
        }
        other => panic!("expected a stale view, got {other:?}"),
    }
    assert_eq!(
        stored(&stack).intent,
        Some(greenlight::engine::Intent::Start {
            request: Default::default(),
        })
    );
    // With the current revision it goes through; without one it always does.
    let paused = rt
        .block_on(perform(
            &store,
            &log,
            &p,
            &bob,
            request(ActionKind::Pause, Some(started.revision)),
        ))
        .unwrap();
    assert!(paused.revision > started.revision);
    assert_eq!(
        paused.before.intent,
        Some(greenlight::engine::Intent::Start {
            request: Default::default(),
        })
    );
    rt.block_on(perform(
        &store,
        &log,
        &p,
        &bob,
        request(ActionKind::Promote, None),
    ))
    .unwrap();
    // The break-glass rollback is not an intent: refused, nothing written.
    match rt.block_on(perform(
        &store,
        &log,
        &p,
        &bob,
        request(ActionKind::RollbackNow, None),
    )) {
        Err(ActionError::Refused(why)) => assert!(why.contains("rollback --now"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let users: Vec<(String, ActionKind, Vec<String>, String)> = entries(&stack)
        .into_iter()
        .map(|e| (e.user, e.action, e.groups, e.source))
        .collect();
    let who = |u: &str, k| {
        (
            u.to_string(),
            k,
            vec!["payments".to_string()],
            "10.1.2.3".to_string(),
        )
    };
    assert_eq!(
        users,
        vec![
            who("alice", ActionKind::Start),
            who("bob", ActionKind::Pause),
            who("bob", ActionKind::Promote),
        ]
    );
}

#[test]
fn an_audit_route_sends_each_action_to_its_channel() {
    use support::fake_http::{Behaviour, FakeHttp};
    let policy = format!(
        "auto_start = false\nalerts = [\"oncall\"]\n{}\n[alert_routes]\naudit = [\"audit-log\"]\n",
        support::stack::POLICY
    );
    let stack = Stack::start_with(&policy, false);
    let hook = FakeHttp::start(Behaviour::Answer {
        status: 200,
        content_type: "application/json",
        body: "{}".into(),
    });
    std::fs::write(
        stack.dir.path().join("hook-url"),
        format!("{}/audit", hook.url()),
    )
    .unwrap();
    let channels = "[[alert]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = { file = \"hook-url\" }\n\
                    [[alert]]\nname = \"audit-log\"\nkind = \"webhook\"\nurl = { file = \"hook-url\" }\n";
    let cfg = stack.config_with("a", listen_addr(), &Stack::unreachable_url(), channels);
    greenlight(
        &stack,
        &cfg,
        &["--as", "alice", "pause", "checkout", "--reason", "freeze"],
    )
    .expect_code(0);
    let events: Vec<serde_json::Value> = hook
        .received()
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .map(|v| v["event"].clone())
        .collect();
    assert_eq!(
        events.len(),
        1,
        "only the audit channel hears of it: {events:?}"
    );
    let e = &events[0];
    assert_eq!(e["kind"], "audit");
    assert_eq!(e["severity"], "info");
    assert_eq!(e["summary"], "checkout: pause by alice (freeze)");
    assert_eq!(e["fields"]["user"], "alice");
    assert_eq!(e["fields"]["source"], "cli");
}
