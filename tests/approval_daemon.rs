//! Approval gates in a running `greenlight run` against real HAProxy and VictoriaMetrics: a
//! healthy rollout waits before its gated step, alerts once with a link to the console page,
//! shows the wait in `/metrics`, and enters the step once someone approves.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{phase, policy_with, revision, step, ErrorRates, Feeder, Stack};
use support::{eventually, free_port, http};

const DEADLINE: Duration = Duration::from_secs(90);

/// Unresolved approval alerts the webhook received.
fn approval_alerts(hook: &FakeHttp) -> Vec<Value> {
    hook.received()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .map(|v| v["event"].clone())
        .filter(|e| e["kind"] == "approval_needed")
        .collect()
}

#[test]
fn a_gated_rollout_waits_alerts_once_and_advances_after_an_approval() {
    let stack = Stack::start_with(
        &policy_with("alerts = [\"oncall\"]\napproval_before = [50]"),
        true,
    );
    let _feeder = Feeder::start(
        &stack.haproxy,
        stack.vm(),
        ErrorRates {
            blue: 0.0,
            green: 0.0,
        },
        7,
    );
    let hook = FakeHttp::start(Behaviour::Answer {
        status: 200,
        content_type: "application/json",
        body: "{}".into(),
    });
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        stack.dir.path().join("hook-url"),
        format!("{}/hook", hook.url()),
    )
    .unwrap();
    let extra = "[[alert]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = { file = \"hook-url\" }\n\
                 [console]\npublic_url = \"https://greenlight.example.com/\"\n";
    let cfg = stack.config_with("a", listen, &stack.vm().url(), extra);
    let mut daemon = stack.daemon("a", &cfg, &[]);

    // The evidence allows 50 %, which waits for an approval: the rollout stays at 10 %.
    let waiting = eventually("the wait for an approval", DEADLINE, || {
        daemon.assert_running();
        stack
            .state()
            .filter(|s| !s["awaiting_approval"].is_null() && s["applying_from"].is_null())
    });
    assert_eq!(phase(&waiting), "progressing");
    assert_eq!(step(&waiting), 0);
    assert_eq!(waiting["awaiting_approval"]["step"], 1);
    // Three more evaluations later it still waits, still at 10 %, having asked once.
    let later = stack.wait_state("three more decisions", DEADLINE, |s| {
        revision(s) >= revision(&waiting) + 3
    });
    assert_eq!(step(&later), 0, "{later}");
    assert!(!later["awaiting_approval"].is_null());
    assert_eq!(stack.green_weight(), 10);
    let reason = later["history"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.starts_with("Waiting for an approval to enter step 2 (50 %)"),
        "{reason}"
    );
    let alerts = eventually("the approval alert", DEADLINE, || {
        let a = approval_alerts(&hook);
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["resolved"], false);
    assert_eq!(
        alerts[0]["link"],
        "https://greenlight.example.com/apis/checkout"
    );
    assert!(
        alerts[0]["summary"]
            .as_str()
            .unwrap()
            .contains("approval needed to enter step 2 (50 % green)"),
        "{}",
        alerts[0]
    );
    let (code, body) = http(listen, "GET", "/metrics", b"").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("greenlight_awaiting_approval{api=\"checkout\"} 1"),
        "{body}"
    );

    // Someone approves: the next evaluation enters 50 %, recording who.
    let done = stack.greenlight(&cfg, &["--as", "bob", "approve", "checkout"], &[]);
    done.expect_code(0);
    let advanced = eventually("the approved advance", DEADLINE, || {
        daemon.assert_running();
        stack.state().filter(|s| step(s) >= 1)
    });
    let record = advanced["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["step"] == 1)
        .cloned()
        .expect("the advance in the history");
    assert_eq!(record["action"], "advance");
    assert_eq!(record["approved_by"], "bob");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("Approved by bob: requested by an operator"),
        "{record}"
    );
    eventually("green at 50 % on HAProxy", DEADLINE, || {
        (stack.green_weight() == 50).then_some(())
    });
    // The approval alert is resolved, and was never sent twice.
    let resolved = eventually("the resolved approval alert", DEADLINE, || {
        let a: Vec<Value> = approval_alerts(&hook)
            .into_iter()
            .filter(|e| e["resolved"] == true)
            .collect();
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(resolved[0]["key"], alerts[0]["key"]);
    let fired = approval_alerts(&hook)
        .into_iter()
        .filter(|e| e["resolved"] == false)
        .count();
    assert_eq!(fired, 1);
}
