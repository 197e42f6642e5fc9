//! Alerts and telemetry of a running `greenlight run`: a rollback it drives reaches a real
//! Alertmanager with its explanation; an alert recorded while the receiver is down survives a
//! SIGKILL and is delivered exactly once after a restart, and survives the instance's machine
//! (another instance delivers it from the shared outbox in Consul); `/metrics`, `/readyz` and `--log-json`
//! show what the daemon did.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::alertmanager::Alertmanager;
use support::exposition::{scrape, value as sample};
use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{listen_addr, phase, policy_with, revision, ErrorRates, Feeder, Stack};
use support::{eventually, free_port, http};

const DEADLINE: Duration = Duration::from_secs(60);

/// Healthy blue, clearly worse green.
const BAD_GREEN: ErrorRates = ErrorRates {
    blue: 0.01,
    green: 0.4,
};

#[test]
fn a_daemon_driven_rollback_is_explained_in_alertmanager_metrics_and_json_logs() {
    let stack = Stack::start_with(&policy_with(r#"alerts = ["oncall"]"#), true);
    let am = Alertmanager::start(None);
    let _feeder = Feeder::start(&stack.haproxy, stack.vm(), BAD_GREEN, 21);
    let listen = listen_addr();
    let alerts = format!(
        "[[alert]]\nname = \"oncall\"\nkind = \"alertmanager\"\nurl = \"{}\"\n",
        am.url()
    );
    let vm_url = stack.vm().url();
    let cfg = stack.config_with("a", listen, &vm_url, &alerts);
    let mut daemon = stack.daemon("a", &cfg, &["--log-json"]);
    support::wait_ready(&mut daemon, listen, "/readyz", DEADLINE);

    let state = stack.wait_state("the rollback", DEADLINE, |s| {
        phase(s) == "rolled_back" && s["applying_from"].is_null()
    });
    assert_eq!(stack.green_weight(), 0);
    let reason = state["reason"].as_str().unwrap();

    // The alert, as Alertmanager's API returns it.
    let alert = eventually("the rollback alert in Alertmanager", DEADLINE, || {
        am.alerts(&["alertname=\"GreenlightRollback\""], "")
            .into_iter()
            .next()
    });
    let labels = &alert["labels"];
    assert_eq!(labels["alertname"], "GreenlightRollback");
    assert_eq!(labels["api"], "checkout");
    assert_eq!(labels["severity"], "critical");
    let a = &alert["annotations"];
    let text = |name: &str| -> String {
        a[name]
            .as_str()
            .unwrap_or_else(|| panic!("no annotation {name}: {a}"))
            .to_string()
    };
    let before = text("weights_before");
    assert!(
        before.starts_with("blue=") && !before.ends_with("green=0"),
        "{before}"
    );
    assert_eq!(text("weights_after"), "blue=100 green=0");
    assert!(text("step").contains('%'), "{}", text("step"));
    assert_eq!(text("reason"), reason);
    // Requests, errors and rates per colour: "errors/requests (rate)".
    for colour in ["blue", "green"] {
        let counts = text(&format!("errors_step_{colour}"));
        let (errors, rest) = counts.split_once('/').unwrap();
        let (requests, rate) = rest.split_once(" (").unwrap();
        let (errors, requests): (f64, f64) = (errors.parse().unwrap(), requests.parse().unwrap());
        let rate: f64 = rate.trim_end_matches(')').parse().unwrap();
        assert!(requests > 0.0 && errors <= requests, "{counts}");
        assert!((rate - errors / requests).abs() < 1e-3, "{counts}");
    }
    // The statistic and its threshold (1/α, one stream).
    let evidence = text("errors_evidence");
    let e: f64 = evidence
        .strip_prefix("E=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{evidence}"));
    assert!(evidence.ends_with("threshold=100"), "{evidence}");
    assert!(e >= 100.0, "{evidence}");
    let queries = text("queries");
    for needle in [
        r#"http_requests_total{cluster="green"}"#,
        r#"http_requests_total{cluster="blue",code="500"}"#,
    ] {
        assert!(queries.contains(needle), "{queries}");
    }
    let link = text("link");
    assert!(
        link.starts_with(&format!("{vm_url}/vmui/#/?g0.expr=")),
        "{link}"
    );
    assert_eq!(alert["generatorURL"], link);
    assert!(text("description").contains("green"), "{a}");

    // /metrics parses and shows the rollout.
    let m = scrape(listen);
    assert_eq!(
        sample(&m, "greenlight_green_weight", &[("api", "checkout")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "greenlight_decisions_total",
            &[("api", "checkout"), ("action", "rollback")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "greenlight_decisions_total",
            &[("api", "checkout"), ("action", "start")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "greenlight_decisions_total",
            &[("api", "checkout"), ("action", "hold")]
        ) >= Some(1.0)
    );
    let rollback_log_e = sample(
        &m,
        "greenlight_log_evidence",
        &[
            ("api", "checkout"),
            ("stream", "errors"),
            ("kind", "rollback"),
        ],
    )
    .expect("rollback evidence exported");
    assert!(rollback_log_e >= 100f64.ln(), "{rollback_log_e}");
    assert_eq!(sample(&m, "greenlight_leader", &[]), Some(1.0));
    let (code, _) = http(listen, "GET", "/readyz", b"").unwrap();
    assert_eq!(code, 200);

    // --log-json: every line is JSON, one line per decision taken.
    let status = daemon.terminate(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    let decisions = revision(&stack.state().unwrap());
    let log = daemon.output();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let logged: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "greenlight::decision")
        .collect();
    assert_eq!(logged.len() as u64, decisions, "{log}");
    let rollbacks: Vec<&&Value> = logged
        .iter()
        .filter(|l| l["action"] == "rollback")
        .collect();
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0]["api"], "checkout");
    assert_eq!(rollbacks[0]["reason"], reason);
    assert_eq!(rollbacks[0]["level"], "WARN");
}

/// A webhook channel `oncall` whose receiver is down: its port (nothing listens there yet) and
/// the `[[alert]]` table naming it.
fn webhook_down(stack: &Stack) -> (u16, &'static str) {
    let port = free_port();
    std::fs::write(
        stack.dir.path().join("hook-url"),
        format!("http://127.0.0.1:{port}/hook"),
    )
    .unwrap();
    (
        port,
        "[[alert]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = { file = \"hook-url\" }\n",
    )
}

/// Rollback alerts waiting in the shared outbox (Consul KV).
fn waiting_rollbacks(stack: &Stack) -> usize {
    let (code, body) = http(
        stack.consul.addr(),
        "GET",
        "/v1/kv/greenlight/outbox/?keys",
        b"",
    )
    .expect("list the shared outbox");
    if code == 404 {
        return 0;
    }
    assert_eq!(code, 200, "{body}");
    let keys: Vec<String> = serde_json::from_str(&body).unwrap();
    keys.iter()
        .filter_map(|k| stack.consul.value(k))
        .filter_map(|v| serde_json::from_slice::<Value>(&v).ok())
        .filter(|entry| entry["event"]["kind"] == "rollback" && entry["event"]["resolved"] == false)
        .count()
}

/// Rollback events received by the webhook receiver.
fn rollback_events(hook: &FakeHttp) -> Vec<Value> {
    hook.received()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .map(|v| v["event"].clone())
        .filter(|e| e["kind"] == "rollback" && e["resolved"] == false)
        .collect()
}

#[test]
fn a_rollback_alert_survives_a_killed_daemon_and_is_delivered_exactly_once() {
    let stack = Stack::start_with(&policy_with(r#"alerts = ["oncall"]"#), true);
    let _feeder = Feeder::start(&stack.haproxy, stack.vm(), BAD_GREEN, 22);
    let (port, alerts) = webhook_down(&stack);
    let cfg = stack.config_with("a", listen_addr(), &stack.vm().url(), alerts);
    let mut first = stack.daemon("a", &cfg, &[]);
    let rolled = stack.wait_state("the rollback", DEADLINE, |s| {
        phase(s) == "rolled_back" && s["applying_from"].is_null()
    });
    // The alert waits in the shared outbox in Consul, written with the rollback.
    assert_eq!(waiting_rollbacks(&stack), 1, "{}", first.output());
    first.kill();

    // The receiver comes up; the restarted daemon (same state dir) takes over once the dead
    // instance's session has expired.
    let hook = FakeHttp::start_on(
        port,
        Behaviour::Answer {
            status: 200,
            content_type: "application/json",
            body: "{}".into(),
        },
    );
    stack.consul.advance_clock(Duration::from_secs(25));
    let mut second = stack.daemon("b", &cfg, &[]);
    let delivered = eventually("the rollback alert", DEADLINE, || {
        second.assert_running();
        let events = rollback_events(&hook);
        (!events.is_empty()).then_some(events)
    });
    assert_eq!(delivered[0]["api"], "checkout");
    assert_eq!(delivered[0]["fields"]["reason"], rolled["reason"]);
    // Several more windows and outbox flushes later (2 s each; a rolled-back API is not
    // re-decided): still exactly one.
    let until = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < until {
        second.assert_running();
        assert!(rollback_events(&hook).len() <= 1, "{:?}", hook.received());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rollback_events(&hook).len(), 1, "{:?}", hook.received());
    assert_eq!(phase(&stack.state().unwrap()), "rolled_back");
}

#[test]
fn a_rollback_alert_is_not_lost_with_the_machine_that_decided_it_during_a_receiver_outage() {
    let stack = Stack::start_with(&policy_with(r#"alerts = ["oncall"]"#), true);
    let _feeder = Feeder::start(&stack.haproxy, stack.vm(), BAD_GREEN, 23);
    let (port, alerts) = webhook_down(&stack);
    let vm_url = stack.vm().url();
    // Two instances on two machines: each has its own state directory.
    let cfg_a = stack.config_with("a", listen_addr(), &vm_url, alerts);
    let cfg_b = stack.config_with("b", listen_addr(), &vm_url, alerts);
    let mut a = stack.daemon("a", &cfg_a, &[]);
    let rolled = stack.wait_state("the rollback by instance a", DEADLINE, |s| {
        phase(s) == "rolled_back" && s["applying_from"].is_null()
    });
    assert_eq!(waiting_rollbacks(&stack), 1, "{}", a.output());
    // Instance a's machine is gone for good, its disk with it.
    a.kill();
    let _ = std::fs::remove_dir_all(stack.dir.path().join("state-a"));

    // Instance b takes over once a's session has expired; the receiver comes back.
    stack.consul.advance_clock(Duration::from_secs(25));
    let mut b = stack.daemon("b", &cfg_b, &[]);
    let hook = FakeHttp::start_on(
        port,
        Behaviour::Answer {
            status: 200,
            content_type: "application/json",
            body: "{}".into(),
        },
    );
    let delivered = eventually("the rollback alert a decided", DEADLINE, || {
        b.assert_running();
        let events = rollback_events(&hook);
        (!events.is_empty()).then_some(events)
    });
    assert_eq!(delivered[0]["api"], "checkout");
    assert_eq!(delivered[0]["fields"]["reason"], rolled["reason"]);
    // Delivered, so deleted from the shared outbox.
    eventually("the delivered alert deleted", DEADLINE, || {
        (waiting_rollbacks(&stack) == 0).then_some(())
    });
    assert_eq!(phase(&stack.state().unwrap()), "rolled_back");
}
