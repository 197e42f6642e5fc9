//! `greenlight run --once` on a rollout already at its first step, against a broken metrics
//! backend (unreachable, silent, HTTP 422, garbage) and against weight keys edited by hand: the
//! API holds or pauses, the weights stay where they are, and the run still exits 0.

mod support;

use serde_json::Value;
use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{
    last_record, listen_addr, phase, policy_with, revision, step, wait_for_next_window, Stack,
    POLICY,
};

/// Seeds a rollout: an operator's `start` (an automatic start would wait for usable metrics),
/// then one `run --once` sets green to the first step on HAProxy.
fn seed(stack: &Stack, metrics_url: &str) -> Value {
    let cfg = stack.config("seed", listen_addr(), metrics_url);
    stack
        .greenlight(&cfg, &["start", "checkout"], &[])
        .expect_code(0);
    stack.run_once(&cfg);
    let state = stack.state().expect("a state after the first run");
    assert_eq!(phase(&state), "progressing", "{state}");
    assert_eq!(step(&state), 0);
    assert!(state["applying_from"].is_null(), "{state}");
    assert_eq!(stack.green_weight(), 10);
    state
}

/// One more `run --once` against `metrics_url` in a new window: a hold naming every string of
/// `problem`, nothing else changed, exit code 0.
fn assert_holds(stack: &Stack, before: &Value, metrics_url: &str, problem: &[&str]) {
    wait_for_next_window(before);
    let cfg = stack.config("fault", listen_addr(), metrics_url);
    let run = stack.greenlight(&cfg, &["run", "--once"], &[]);
    run.expect_code(0);
    let after = stack.state().unwrap();
    assert_eq!(
        revision(&after),
        revision(before) + 1,
        "one decision: {after}"
    );
    let record = last_record(&after);
    assert_eq!(record["action"], "hold", "{record}");
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("unusable metrics"), "{reason}");
    for p in problem {
        assert!(reason.contains(p), "reason {reason:?} does not name {p:?}");
    }
    assert_eq!(phase(&after), "progressing");
    assert_eq!(step(&after), step(before));
    assert_eq!(after["weights"], before["weights"]);
    assert!(after["applying_from"].is_null());
    assert_eq!(stack.green_weight(), 10, "HAProxy's weight moved");
    // Nothing of the failed window was counted as evidence.
    assert_eq!(after["streams"], before["streams"]);
}

#[test]
fn killed_metrics_backend_holds() {
    let mut stack = Stack::start_with(POLICY, true);
    let url = stack.vm().url();
    let before = seed(&stack, &url);
    stack.vm_mut().kill();
    assert_holds(&stack, &before, &url, &["unreachable"]);
}

#[test]
fn silent_metrics_backend_times_out_and_holds() {
    let stack = Stack::start_with(POLICY, false);
    let before = seed(&stack, &Stack::unreachable_url());
    let silent = FakeHttp::start(Behaviour::Silent);
    assert_holds(&stack, &before, &silent.url(), &["no answer within 1s"]);
}

#[test]
fn metrics_backend_answering_422_holds_with_its_error() {
    let stack = Stack::start_with(POLICY, false);
    let before = seed(&stack, &Stack::unreachable_url());
    // VictoriaMetrics' answer when a query hits a search limit.
    let vm_error = FakeHttp::start(Behaviour::Answer {
        status: 422,
        content_type: "application/json",
        body: r#"{"status":"error","errorType":"422","error":"cannot execute query: the number of matching timeseries exceeds 300000; either narrow down the search or increase -search.max* command-line flag values"}"#.into(),
    });
    assert_holds(
        &stack,
        &before,
        &vm_error.url(),
        &["the number of matching timeseries exceeds 300000"],
    );
    assert!(
        vm_error
            .received()
            .iter()
            .any(|r| r.path == "/api/v1/query" && r.body.contains("http_requests_total")),
        "the policy's queries were sent"
    );
}

#[test]
fn metrics_backend_answering_garbage_holds() {
    let stack = Stack::start_with(POLICY, false);
    let before = seed(&stack, &Stack::unreachable_url());
    let garbage = FakeHttp::start(Behaviour::Answer {
        status: 200,
        content_type: "text/html",
        body: "<html><body>Welcome to nginx!</body></html>".into(),
    });
    assert_holds(
        &stack,
        &before,
        &garbage.url(),
        &["malformed response", "Welcome to nginx"],
    );
}

const BLUE_KEY: &str = "haproxy/checkout/weights/blue";
const GREEN_KEY: &str = "haproxy/checkout/weights/green";

fn key(stack: &Stack, key: &str) -> String {
    String::from_utf8(stack.consul.value(key).expect("weight key")).unwrap()
}

/// Webhook events of `kind` received by `hook`.
fn events(hook: &FakeHttp, kind: &str) -> Vec<Value> {
    hook.received()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .map(|v| v["event"].clone())
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[test]
fn consul_weights_edited_by_hand_pause_the_api_keep_the_edit_and_alert() {
    let policy = policy_with(r#"alerts = ["oncall"]"#).replace(
        r#"haproxy = { backend = "api_checkout", blue = "blue", green = "green" }"#,
        &format!(r#"consul_keys = {{ blue = "{BLUE_KEY}", green = "{GREEN_KEY}" }}"#),
    );
    let stack = Stack::start_with(&policy, false);
    let hook = FakeHttp::start(Behaviour::Answer {
        status: 200,
        content_type: "application/json",
        body: "{}".into(),
    });
    std::fs::write(
        stack.dir.path().join("hook-url"),
        format!("{}/hook", hook.url()),
    )
    .unwrap();
    let alerts =
        "[[alert]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = { file = \"hook-url\" }\n";
    let cfg = stack.config_with("a", listen_addr(), &Stack::unreachable_url(), alerts);

    // An operator starts the rollout; the first run creates the keys and moves green to the
    // first step.
    stack
        .greenlight(&cfg, &["start", "checkout"], &[])
        .expect_code(0);
    stack.run_once(&cfg);
    let started = stack.state().unwrap();
    assert_eq!(phase(&started), "progressing");
    let green = started["weights"]["green"].as_u64().unwrap();
    let blue = started["weights"]["blue"].as_u64().unwrap();
    assert!(green > 0);
    assert_eq!(key(&stack, GREEN_KEY), green.to_string());
    assert_eq!(key(&stack, BLUE_KEY), blue.to_string());

    // An operator sets green by hand in Consul.
    stack.consul.put(GREEN_KEY, b"33");
    let run = stack.greenlight(&cfg, &["run", "--once"], &[]);
    run.expect_code(0);
    let paused = stack.state().unwrap();
    assert_eq!(phase(&paused), "paused", "{paused}");
    assert!(
        paused["reason"].as_str().unwrap().contains("by hand"),
        "{paused}"
    );
    assert_eq!(paused["weights"]["green"], 33);
    assert_eq!(key(&stack, GREEN_KEY), "33");
    assert_eq!(key(&stack, BLUE_KEY), blue.to_string());
    let overrides = events(&hook, "manual_override");
    assert_eq!(overrides.len(), 1, "{:?}", hook.received());
    let alert = &overrides[0];
    assert_eq!(alert["api"], "checkout");
    assert_eq!(
        alert["fields"]["expected"],
        format!("blue={blue} green={green}")
    );
    assert_eq!(alert["fields"]["found"], format!("blue={blue} green=33"));

    // Later windows: still paused, the hand-set value stays, no second alert, and a paused API
    // is not re-decided (its state is not rewritten).
    wait_for_next_window(&paused);
    stack.run_once(&cfg);
    let later = stack.state().unwrap();
    assert_eq!(revision(&later), revision(&paused));
    assert_eq!(phase(&later), "paused");
    assert_eq!(key(&stack, GREEN_KEY), "33");
    assert_eq!(events(&hook, "manual_override").len(), 1);
}
