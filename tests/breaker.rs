//! The cluster breaker run by the real daemon against a real VictoriaMetrics and a real
//! Alertmanager (state in the Consul double): rollouts onto one cluster that fail one after
//! another trip it; the rollout still running holds with its weights frozen, the campaign
//! stops, nothing starts onto the cluster, one critical alert goes out; all of it survives a
//! daemon kill; an operator's reset lets the held rollout finish. And APIs each too weakly worse
//! to be called alone trip it together, before any of them rolls back.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::alertmanager::Alertmanager;
use support::kv_traffic::{weight, KvTraffic, Rates};
use support::stack::{listen_addr, phase, revision, Stack};
use support::{eventually, http, Proc};

const BREAKER_KEY: &str = "greenlight/breaker/cilium";
const DEADLINE: Duration = Duration::from_secs(120);

/// A policy onto the cluster `cilium` (blue runs on `calico`).
fn policy(api: &str, steps: &str, min_step: &str, alpha: f64) -> String {
    format!(
        r#"api = "{api}"
auto_start = false
interval = "2s"
steps = {steps}
min_step_duration = "{min_step}"
min_green_requests_per_step = 20
false_rollback_rate = {alpha}
warmup_intervals = 1
no_data_alert_after = "6s"
clusters = {{ blue = "calico", green = "cilium" }}

[traffic]
consul_keys = {{ blue = "w/{api}/blue", green = "w/{api}/green" }}

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(breaker_requests_total{{api="{api}",cluster="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(breaker_requests_total{{api="{api}",cluster="{{color}}",code="500"}}[{{interval}}]))'
advance_max_rate = 0.05
min_errors = 3
"#
    )
}

fn stack_with(policies: &[(&str, String)], campaign: Option<&str>) -> (Stack, Alertmanager) {
    let stack = Stack::start_with("", true);
    let am = Alertmanager::start(None);
    for (api, text) in policies {
        stack.write_policy(api, text);
        stack.consul.put(&format!("w/{api}/blue"), b"100");
        stack.consul.put(&format!("w/{api}/green"), b"0");
    }
    if let Some(c) = campaign {
        std::fs::create_dir_all(stack.dir.path().join("campaigns")).unwrap();
        std::fs::write(stack.dir.path().join("campaigns/cni.toml"), c).unwrap();
    }
    (stack, am)
}

fn start_daemon(stack: &Stack, name: &str, am: &Alertmanager, breaker: &str) -> (Proc, SocketAddr) {
    let listen = listen_addr();
    let extra = format!(
        "[[alert]]\nname = \"oncall\"\nkind = \"alertmanager\"\nurl = \"{}\"\n{breaker}",
        am.url()
    );
    let cfg = stack.config_with(name, listen, &stack.vm().url(), &extra);
    let mut daemon = stack.daemon(name, &cfg, &[]);
    support::wait_ready(&mut daemon, listen, "/healthz", Duration::from_secs(30));
    (daemon, listen)
}

fn breaker(stack: &Stack) -> Option<Value> {
    serde_json::from_slice(&stack.consul.value(BREAKER_KEY)?).ok()
}

fn breaker_alerts(am: &Alertmanager) -> Vec<Value> {
    am.alerts(&["alertname=\"GreenlightClusterBreaker\""], "")
}

const FAILING: [&str; 3] = ["f1", "f2", "f3"];

const CAMPAIGN: &str = r#"name = "cni"
max_concurrent = 4
on_rollback = "skip"
alerts = ["oncall"]

[[wave]]
name = "one"
apis = ["h1", "f1", "f2", "f3"]

[[wave]]
name = "two"
apis = ["h2"]
"#;

/// The three rollbacks' evidence alone would trip it at the default min_apis = 3; at 4 it is
/// the rollback count that trips it.
const ROLLBACK_RULES: &str =
    "[breaker]\nmin_apis = 4\nmax_rollbacks = 3\nrollback_window = \"1h\"\n";

/// Three APIs whose green fails outright and the healthy h1 (and h2), all onto `cilium`, with
/// their traffic.
fn three_failing_and_healthy(campaign: Option<&str>) -> (Stack, Alertmanager, KvTraffic) {
    let mut policies: Vec<(&str, String)> = FAILING
        .iter()
        .map(|api| (*api, policy(api, "[50, 100]", "2s", 0.01)))
        .collect();
    // The healthy rollout dwells long enough at each step to be under way when the breaker trips.
    policies.push(("h1", policy("h1", "[10, 50, 100]", "20s", 0.01)));
    policies.push(("h2", policy("h2", "[50, 100]", "2s", 0.01)));
    let (stack, am) = stack_with(&policies, campaign);
    let mut rates: Rates = BTreeMap::new();
    for api in FAILING {
        rates.insert(api.into(), (0.0, 0.4));
    }
    rates.insert("h1".into(), (0.0, 0.0));
    rates.insert("h2".into(), (0.0, 0.0));
    let traffic = KvTraffic::start(
        stack.consul.addr(),
        stack.vm().addr,
        "breaker_requests_total",
        rates,
    );
    (stack, am, traffic)
}

/// Waits until h1 is held by `cilium`'s breaker, then for 12 more decisions (longer than its
/// 20 s dwell: unheld, it would have moved a step); its step and weight never move. Returns its
/// green weight.
fn h1_held_with_weights_frozen(stack: &Stack) -> Option<f64> {
    let held = stack.wait_state_of("h1 held", DEADLINE, "h1", |s| {
        s["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("Held: the cluster breaker of cilium tripped"))
    });
    assert_eq!(phase(&held), "progressing", "{held}");
    let green = weight(stack.consul.addr(), "h1", "green");
    let from = revision(&held);
    let later = stack.wait_state_of("h1 decided on for 25 s more", DEADLINE, "h1", |s| {
        revision(s) >= from + 12
    });
    assert_eq!(phase(&later), "progressing", "{later}");
    assert_eq!(later["step"], held["step"], "{later}");
    assert_eq!(weight(stack.consul.addr(), "h1", "green"), green);
    green
}

#[test]
fn three_rollbacks_onto_a_cluster_trip_its_breaker_which_holds_across_a_kill_until_a_reset() {
    let (stack, am, _traffic) = three_failing_and_healthy(Some(CAMPAIGN));
    let rules = ROLLBACK_RULES;
    let (mut first, listen) = start_daemon(&stack, "a", &am, rules);
    let cfg = stack.dir.path().join("a.toml");
    stack
        .greenlight(&cfg, &["--as", "alice", "campaign", "start", "cni"], &[])
        .expect_code(0);

    // The three failing greens roll back one after another; the third trips the breaker.
    let tripped = eventually("the breaker to trip", DEADLINE, || {
        first.assert_running();
        breaker(&stack).filter(|b| !b["tripped"].is_null())
    });
    let trip = &tripped["tripped"];
    assert_eq!(trip["reason"], "3 rollbacks within 1h", "{tripped}");
    let mut apis: Vec<&str> = trip["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    apis.sort();
    assert_eq!(apis, FAILING, "{tripped}");
    for api in FAILING {
        assert_eq!(phase(&stack.state_of(api).unwrap()), "rolled_back", "{api}");
    }

    // h1 is held: it is still under way, windows are decided, its weights do not move.
    let green = h1_held_with_weights_frozen(&stack);

    // The campaign stopped, h2 of wave two never started, and a start onto cilium is refused.
    let campaign = eventually("the campaign to stop", DEADLINE, || {
        let c: Value =
            serde_json::from_slice(&stack.consul.value("greenlight/campaign/cni")?).ok()?;
        (c["status"] == "stopped").then_some(c)
    });
    assert!(
        campaign["reason"]
            .as_str()
            .unwrap()
            .starts_with("Stopped by the cluster breaker of cilium (3 rollbacks within 1h)"),
        "{campaign}"
    );
    assert!(campaign["apis"].get("h2").is_none(), "{campaign}");
    let refused = stack.greenlight(&cfg, &["start", "h2"], &[]);
    assert_ne!(refused.code(), 0, "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("the cluster breaker of cilium is tripped"),
        "{}",
        refused.stderr
    );
    assert!(stack.state_of("h2").is_none_or(|s| s["intent"].is_null()));

    // One critical alert naming the cluster; /metrics, `status` and the HTTP API show it.
    let alerts = eventually("the breaker alert", DEADLINE, || {
        let a = breaker_alerts(&am);
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["severity"], "critical", "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["api"], "cluster:cilium", "{alerts:?}");
    assert_eq!(alerts[0]["annotations"]["cluster"], "cilium", "{alerts:?}");
    let (_, metrics) = http(listen, "GET", "/metrics", b"").unwrap();
    assert!(
        metrics.contains("greenlight_breaker_tripped{cluster=\"cilium\"} 1"),
        "{metrics}"
    );
    let (code, body) = http(listen, "GET", "/api/v1/breakers", b"").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"tripped\""), "{body}");
    let status = stack.greenlight(&cfg, &["status"], &[]);
    assert!(
        status.stdout.contains("breaker cilium: TRIPPED at"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("breaker calico: closed"),
        "{}",
        status.stdout
    );

    // Killed and replaced, the next leader keeps holding h1 and sends no second alert.
    first.kill();
    stack.consul.advance_clock(Duration::from_secs(25));
    let (mut second, _) = start_daemon(&stack, "b", &am, rules);
    let at_restart = revision(&stack.state_of("h1").unwrap());
    let after = stack.wait_state_of("the new leader to decide on h1", DEADLINE, "h1", |s| {
        revision(s) >= at_restart + 3
    });
    assert!(
        after["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("Held: the cluster breaker of cilium"),
        "{after}"
    );
    assert_eq!(weight(stack.consul.addr(), "h1", "green"), green);
    assert_eq!(breaker_alerts(&am).len(), 1);

    // An operator resets it: h1 goes on and is promoted; the alert is resolved.
    let reset = stack.greenlight(&cfg, &["--as", "bob", "breaker", "reset", "cilium"], &[]);
    reset.expect_code(0);
    assert!(
        reset.stdout.contains("reset requested by bob"),
        "{}",
        reset.stdout
    );
    let closed = eventually("the breaker to close", DEADLINE, || {
        second.assert_running();
        breaker(&stack).filter(|b| b["tripped"].is_null())
    });
    assert_eq!(closed["last_reset"]["by"], "bob", "{closed}");
    stack.wait_state_of("h1 promoted", DEADLINE * 2, "h1", |s| {
        phase(s) == "promoted"
    });
    eventually("the breaker alert resolved", DEADLINE, || {
        breaker_alerts(&am).is_empty().then_some(())
    });
    second.assert_running();
}

#[test]
fn a_trip_whose_state_write_fails_still_holds_the_rollouts_and_alerts_at_once() {
    // The instance's token may read the breaker's keys but not write them (an ACL gap): the trip
    // cannot be stored, yet it must take effect, and be stored once the ACL is mended.
    let (stack, am, _traffic) = three_failing_and_healthy(None);
    stack.consul.read_only_under("greenlight/breaker/");
    let (mut daemon, listen) = start_daemon(&stack, "a", &am, ROLLBACK_RULES);
    let cfg = stack.dir.path().join("a.toml");
    for api in FAILING.iter().chain(&["h1"]) {
        stack.greenlight(&cfg, &["start", api], &[]).expect_code(0);
    }
    let alerts = eventually(
        "the breaker alert, through the local outbox",
        DEADLINE,
        || {
            daemon.assert_running();
            let a = breaker_alerts(&am);
            (!a.is_empty()).then_some(a)
        },
    );
    assert_eq!(alerts[0]["labels"]["api"], "cluster:cilium", "{alerts:?}");
    assert!(breaker(&stack).is_none(), "nothing could be written");
    h1_held_with_weights_frozen(&stack);
    let (_, metrics) = http(listen, "GET", "/metrics", b"").unwrap();
    assert!(
        metrics.contains("greenlight_breaker_tripped{cluster=\"cilium\"} 1"),
        "{metrics}"
    );

    // Writable again: the trip is stored as it was decided, and not announced a second time.
    stack.consul.writable_everywhere();
    let stored = eventually("the trip stored", DEADLINE, || {
        daemon.assert_running();
        breaker(&stack).filter(|b| !b["tripped"].is_null())
    });
    assert_eq!(
        stored["tripped"]["reason"], "3 rollbacks within 1h",
        "{stored}"
    );
    // The alert already sent carries the trip's time: the stored trip is that same one.
    let at: jiff::Timestamp = stored["tripped"]["at"].as_str().unwrap().parse().unwrap();
    let key = alerts[0]["labels"]["greenlight_key"].as_str().unwrap();
    assert!(
        key.ends_with(&format!("tripped-{}", at.as_second())),
        "{key} vs {stored}"
    );
    let from = revision(&stack.state_of("h1").unwrap());
    let after = stack.wait_state_of("h1 decided on after the write", DEADLINE, "h1", |s| {
        revision(s) >= from + 2
    });
    assert!(
        after["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("Held: the cluster breaker of cilium"),
        "{after}"
    );
    let alerts = breaker_alerts(&am);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    daemon.assert_running();
}

#[test]
fn apis_each_too_weakly_worse_to_be_called_alone_trip_the_breaker_together_first() {
    // Four APIs whose green fails at 3 % against blue's 1 %, each with α = 0.0005 (a rollback
    // at E ≥ 2000): the breaker, at α = 0.05 (E ≥ 20), pools them and trips first.
    let apis = ["p1", "p2", "p3", "p4"];
    let policies: Vec<(&str, String)> = apis
        .iter()
        .map(|api| (*api, policy(api, "[50, 100]", "10m", 0.0005)))
        .collect();
    let (stack, am) = stack_with(&policies, None);
    let rates: Rates = apis
        .iter()
        .map(|api| (api.to_string(), (0.01, 0.03)))
        .collect();
    let _traffic = KvTraffic::start(
        stack.consul.addr(),
        stack.vm().addr,
        "breaker_requests_total",
        rates,
    );
    let rules = "[breaker]\nalpha = 0.05\nmax_rollbacks = 0\non_trip = \"rollback\"\n";
    let (mut daemon, _) = start_daemon(&stack, "a", &am, rules);
    let cfg = stack.dir.path().join("a.toml");
    for api in apis {
        stack.greenlight(&cfg, &["start", api], &[]).expect_code(0);
    }
    let tripped = eventually("the breaker to trip", DEADLINE * 2, || {
        daemon.assert_running();
        breaker(&stack).filter(|b| !b["tripped"].is_null())
    });
    let reason = tripped["tripped"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("pooled evidence of 4 APIs"), "{tripped}");
    // None had rolled back on its own when it tripped; then the breaker rolls them all back.
    for api in apis {
        // The rollback is stored with its weight change pending, then applied: wait for both.
        let s = stack.wait_state_of("rolled back by the breaker", DEADLINE, api, |s| {
            phase(s) == "rolled_back" && s["applying_from"].is_null()
        });
        assert_eq!(s["rollback_by"], "breaker:cilium", "{api}: {s}");
        assert!(
            s["reason"]
                .as_str()
                .unwrap()
                .starts_with("Rolled back: the cluster breaker of cilium tripped"),
            "{api}: {s}"
        );
        assert_eq!(weight(stack.consul.addr(), api, "green"), Some(0.0));
    }
    assert_eq!(breaker_alerts(&am).len(), 1);
}
