//! Policy files added, changed, removed or broken while `greenlight run` runs: picked up by the
//! directory watch and by SIGHUP, reported with file:line:col, the last good version of a broken
//! policy kept running. Weights live in Consul keys; metrics are unreachable (every window holds).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{listen_addr, revision, Stack};
use support::{http, wait_ready, Proc};

const DEADLINE: Duration = Duration::from_secs(30);

fn policy(api: &str, first_step: u32) -> String {
    format!(
        r#"api = "{api}"
interval = "2s"
steps = [{first_step}, 50, 100]
min_step_duration = "1h"
min_green_requests_per_step = 20

[traffic]
consul_keys = {{ blue = "weights/{api}/blue", green = "weights/{api}/green" }}

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{{api="{api}",cluster="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(http_requests_total{{api="{api}",cluster="{{color}}",code="500"}}[{{interval}}]))'
"#
    )
}

/// A daemon over the policies already written, ready to serve, and the metrics backend it
/// asks: one that answers every query with no series (the APIs hold on no data).
fn daemon(stack: &Stack) -> (Proc, SocketAddr, FakeHttp) {
    let metrics = FakeHttp::start(Behaviour::Answer {
        status: 200,
        content_type: "application/json",
        body: r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into(),
    });
    let listen = listen_addr();
    let cfg = stack.config("a", listen, &metrics.url());
    let mut proc = stack.daemon("a", &cfg, &[]);
    wait_ready(&mut proc, listen, "/readyz", DEADLINE);
    (proc, listen, metrics)
}

/// The daemon's `/api/v1/rollouts`, by API.
fn rollouts(listen: SocketAddr) -> Option<Vec<Value>> {
    let (code, body) = http(listen, "GET", "/api/v1/rollouts", b"").ok()?;
    (code == 200).then_some(())?;
    serde_json::from_str::<Value>(&body)
        .ok()?
        .as_array()
        .cloned()
}

fn view(listen: SocketAddr, api: &str) -> Option<Value> {
    rollouts(listen)?.into_iter().find(|v| v["api"] == api)
}

fn first_step(view: &Value) -> f64 {
    view["steps"][0].as_f64().unwrap()
}

/// The value of an unlabelled gauge on `/metrics`.
fn gauge(listen: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http(listen, "GET", "/metrics", b"").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metrics_mention(listen: SocketAddr, api: &str) -> bool {
    let (_, body) = http(listen, "GET", "/metrics", b"").unwrap();
    body.contains(&format!("api=\"{api}\""))
}

/// Waits until `api` has been evaluated `n` more times than in `from`.
fn wait_evaluations(stack: &Stack, daemon: &mut Proc, api: &str, from: u64, n: u64) -> Value {
    support::eventually(&format!("{n} more evaluations of {api}"), DEADLINE, || {
        daemon.assert_running();
        stack.state_of(api).filter(|s| revision(s) >= from + n)
    })
}

#[test]
fn policies_added_changed_and_removed_are_picked_up_by_the_directory_watch() {
    let stack = Stack::start_with("", false);
    stack.write_policy("alpha", &policy("alpha", 10));
    let (mut daemon, listen, _metrics) = daemon(&stack);
    support::eventually("alpha to be evaluated", DEADLINE, || {
        view(listen, "alpha").filter(|v| v["revision"].as_u64() >= Some(1))
    });

    // Added.
    stack.write_policy("beta", &policy("beta", 10));
    support::eventually("beta to be evaluated", DEADLINE, || {
        view(listen, "beta").filter(|v| v["revision"].as_u64() >= Some(1))
    });
    assert!(stack.consul.value("weights/beta/green").is_some());
    assert_eq!(gauge(listen, "greenlight_policies_loaded"), Some(2.0));

    // Changed.
    stack.write_policy("alpha", &policy("alpha", 20));
    support::eventually("alpha's new steps", DEADLINE, || {
        view(listen, "alpha").filter(|v| first_step(v) == 20.0)
    });

    // Removed: no longer shown, exported or evaluated.
    std::fs::remove_file(stack.policy_path("beta")).unwrap();
    support::eventually("beta to be dropped", DEADLINE, || {
        (gauge(listen, "greenlight_policies_loaded") == Some(1.0)
            && view(listen, "beta").is_none()
            && !metrics_mention(listen, "beta"))
        .then_some(())
    });
    let beta = revision(&stack.state_of("beta").unwrap());
    let alpha = revision(&stack.state_of("alpha").unwrap());
    wait_evaluations(&stack, &mut daemon, "alpha", alpha, 2);
    assert_eq!(revision(&stack.state_of("beta").unwrap()), beta);
    assert!(view(listen, "alpha").is_some());
}

#[test]
fn sighup_reloads_a_change_the_directory_watch_cannot_see() {
    let stack = Stack::start_with("", false);
    stack.write_policy("alpha", &policy("alpha", 10));
    let (mut daemon, listen, _metrics) = daemon(&stack);
    let first = support::eventually("alpha to be evaluated", DEADLINE, || {
        stack.state_of("alpha").filter(|s| revision(s) >= 1)
    });

    // Same file count, same modification time: invisible to the watch.
    let path = stack.policy_path("alpha");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    stack.write_policy("alpha", &policy("alpha", 20));
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    wait_evaluations(&stack, &mut daemon, "alpha", revision(&first), 2);
    assert_eq!(first_step(&view(listen, "alpha").unwrap()), 10.0);

    unsafe {
        libc::kill(daemon.pid() as i32, libc::SIGHUP);
    }
    support::eventually("alpha's new steps after SIGHUP", DEADLINE, || {
        daemon.assert_running();
        view(listen, "alpha").filter(|v| first_step(v) == 20.0)
    });
    assert!(daemon.output().contains("SIGHUP: reloading policies."));
}

/// `file:line:col` of the first log line reporting `file`.
fn reported_location(log: &str, file: &str) -> Option<(u32, u32)> {
    log.lines().find_map(|l| {
        let rest = &l[l.find(&format!("{file}:"))? + file.len() + 1..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next()?.parse().ok()?;
        let col = parts.next()?.parse().ok()?;
        Some((line, col))
    })
}

#[test]
fn a_broken_policy_is_reported_and_the_others_keep_running_on_their_last_good_version() {
    let stack = Stack::start_with("", false);
    stack.write_policy("alpha", &policy("alpha", 10));
    stack.write_policy("beta", &policy("beta", 10));
    let (mut daemon, listen, _metrics) = daemon(&stack);
    for api in ["alpha", "beta"] {
        support::eventually(&format!("{api} to be evaluated"), DEADLINE, || {
            view(listen, api).filter(|v| v["revision"].as_u64() >= Some(1))
        });
    }

    // beta breaks (an unknown field on line 3), and a new file is not even TOML.
    let broken = policy("beta", 30).replacen("steps =", "stepz =", 1);
    assert!(broken.lines().nth(2).unwrap().starts_with("stepz"));
    stack.write_policy("beta", &broken);
    stack.write_policy("gamma", "api = \"gamma\"\ninterval = [\n");
    support::eventually("both errors reported", DEADLINE, || {
        (gauge(listen, "greenlight_policy_load_errors") == Some(2.0)).then_some(())
    });
    let log = daemon.output();
    let (line, col) = reported_location(&log, "beta.toml")
        .unwrap_or_else(|| panic!("no beta.toml:line:col in the log:\n{log}"));
    assert_eq!(line, 3, "{log}");
    assert!(col >= 1);
    assert!(reported_location(&log, "gamma.toml").is_some(), "{log}");

    // Both good policies keep running; beta on its last good version.
    let alpha = revision(&stack.state_of("alpha").unwrap());
    let beta = revision(&stack.state_of("beta").unwrap());
    wait_evaluations(&stack, &mut daemon, "alpha", alpha, 2);
    wait_evaluations(&stack, &mut daemon, "beta", beta, 2);
    assert_eq!(first_step(&view(listen, "beta").unwrap()), 10.0);
    assert!(view(listen, "gamma").is_none());
    let (code, _) = http(listen, "GET", "/readyz", b"").unwrap();
    assert_eq!(code, 200);

    // Fixed: the new version runs.
    stack.write_policy("beta", &policy("beta", 30));
    support::eventually("beta's fixed version", DEADLINE, || {
        view(listen, "beta").filter(|v| first_step(v) == 30.0)
    });
    assert_eq!(gauge(listen, "greenlight_policy_load_errors"), Some(1.0));
}
