//! `greenlight run` against real components: HAProxy routes real requests, a feeder turns what
//! HAProxy served into counters in a real VictoriaMetrics, the state lives in the Consul double.
//! Intervals are compressed to 2 s.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::stack::{actions, phase, step, ErrorRates, Feeder, Stack};
use support::{eventually, free_port, http, Proc};

/// A stack with traffic flowing (error rates per colour) and one daemon ("a") running. Fields
/// drop in order: the daemon first, then the feeder, then the servers.
struct Running {
    daemon: Proc,
    feeder: Feeder,
    listen: SocketAddr,
    cfg: PathBuf,
    stack: Stack,
}

fn running(blue: f64, green: f64, seed: u64) -> Running {
    let stack = Stack::start();
    let feeder = Feeder::start(&stack.haproxy, stack.vm(), ErrorRates { blue, green }, seed);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = stack.config("a", listen, &stack.vm().url());
    let daemon = stack.daemon("a", &cfg, &[]);
    Running {
        daemon,
        feeder,
        listen,
        cfg,
        stack,
    }
}

#[test]
fn healthy_green_advances_through_every_step_and_is_promoted() {
    let mut r = running(0.0, 0.0, 1);

    let mut greens_seen = vec![];
    let state = eventually("promotion", Duration::from_secs(90), || {
        r.daemon.assert_running();
        let g = r.stack.green_weight();
        if greens_seen.last() != Some(&g) {
            greens_seen.push(g);
        }
        r.stack
            .state()
            .filter(|s| phase(s) == "promoted" && s["applying_from"].is_null())
    });
    assert_eq!(r.stack.green_weight(), 100);
    if greens_seen.last() != Some(&100) {
        greens_seen.push(100);
    }
    let history = actions(&state);
    assert_eq!(
        history.iter().filter(|a| *a == "advance").count(),
        1,
        "{history:?}"
    );
    assert_eq!(history.iter().filter(|a| *a == "promote").count(), 1);
    // HAProxy went through every step, in order, as read back from its Runtime API.
    assert_eq!(
        greens_seen,
        vec![0, 10, 50, 100],
        "weights seen {greens_seen:?}"
    );
    // All new traffic now reaches green.
    r.feeder.reset_served();
    let split = r.stack.haproxy.split(40);
    assert_eq!(split.get("green"), Some(&40), "{split:?}");
    // The daemon's own /metrics shows the rollout.
    let (code, body) = http(r.listen, "GET", "/metrics", b"").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("greenlight_green_weight{api=\"checkout\"} 100"),
        "{body}"
    );
    // The API's detail shows the whole decision history, oldest first, as stored under its own
    // keys (the state document holds only the last decision).
    let (code, body) = http(r.listen, "GET", "/api/v1/rollouts/checkout", b"").unwrap();
    assert_eq!(code, 200, "{body}");
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(actions(&detail), history);
    assert_eq!(detail["history"], state["history"]);
    assert!(state["last_decision"]["action"] == "promote", "{state}");
    let raw = r.stack.consul.value(support::stack::STATE_KEY).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("\"history\""));
    // So does `status API --json`.
    let shown = r
        .stack
        .greenlight(&r.cfg, &["status", "checkout", "--json"], &[]);
    let views: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(views[0]["history"], state["history"], "{}", shown.stderr);
    // SIGTERM: a clean exit.
    let status = r
        .daemon
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", r.daemon.output());
}

#[test]
fn bad_green_is_rolled_back_and_stops_receiving_traffic() {
    let r = running(0.01, 0.4, 2);
    let state = r
        .stack
        .wait_state("rollback", Duration::from_secs(60), |s| {
            phase(s) == "rolled_back" && s["applying_from"].is_null()
        });
    assert!(
        state["reason"].as_str().unwrap().contains("errors"),
        "{state}"
    );
    assert_eq!(r.stack.green_weight(), 0);
    r.feeder.reset_served();
    let split = r.stack.haproxy.split(30);
    assert_eq!(split.get("blue"), Some(&30), "{split:?}");
}

#[test]
fn killed_mid_rollout_and_restarted_continues_with_the_same_step_and_evidence() {
    // Enough errors on both colours for evidence to accumulate, green no worse.
    let mut r = running(0.02, 0.02, 3);
    // Wait until the rollout is at step 1 with evidence counted there.
    let before = r
        .stack
        .wait_state("counted windows", Duration::from_secs(60), |s| {
            phase(s) == "progressing"
                && s["streams"][0]["total"]["green"]["requests"].as_f64() > Some(0.0)
        });
    r.daemon.kill();
    let killed = r.stack.state().unwrap();
    assert!(killed["revision"].as_u64() >= before["revision"].as_u64());

    // The dead instance's session expires after 2×TTL; then its lock-delay passes.
    r.stack.consul.advance_clock(Duration::from_secs(25));
    let mut second = r.stack.daemon("b", &r.cfg, &[]);
    let after = r.stack.wait_state(
        "the restarted daemon to decide",
        Duration::from_secs(30),
        |s| s["revision"].as_u64() > killed["revision"].as_u64(),
    );
    second.assert_running();
    // Same rollout, same or later step, and the evidence carried over (not reset).
    assert_eq!(after["rollout_started_at"], killed["rollout_started_at"]);
    assert!(step(&after) >= step(&killed));
    let total = |s: &Value| {
        s["streams"][0]["total"]["green"]["requests"]
            .as_f64()
            .unwrap()
    };
    assert!(total(&after) >= total(&killed), "evidence was reset");
    // No step was applied twice: each step index appears in one contiguous run of the history.
    let steps: Vec<u64> = after["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    let mut sorted = steps.clone();
    sorted.sort();
    assert_eq!(steps, sorted, "a step was revisited: {steps:?}");
}

#[test]
fn two_daemons_only_one_acts_and_the_other_takes_over() {
    let stack = Stack::start();
    let _feeder = Feeder::start(
        &stack.haproxy,
        stack.vm(),
        ErrorRates {
            blue: 0.02,
            green: 0.02,
        },
        4,
    );
    let la: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ca = stack.config("a", la, &stack.vm().url());
    let cb = stack.config("b", lb, &stack.vm().url());
    let mut a = stack.daemon("a", &ca, &[]);
    let mut b = stack.daemon("b", &cb, &[]);
    let leader = |addr: SocketAddr| -> Option<bool> {
        let (_, body) = http(addr, "GET", "/metrics", b"").ok()?;
        let line = body.lines().find(|l| l.starts_with("greenlight_leader "))?;
        Some(line.ends_with(" 1"))
    };
    let (la_leads, lb_leads) = eventually("one leader", Duration::from_secs(30), || {
        let (x, y) = (leader(la)?, leader(lb)?);
        (x != y).then_some((x, y))
    });
    assert!(la_leads ^ lb_leads);
    stack.wait_state("decisions", Duration::from_secs(30), |s| {
        s["revision"].as_u64() > Some(2)
    });
    // Kill the leader; the follower takes over once the session has expired.
    let (dead_name, follower) = if la_leads { ("a", lb) } else { ("b", la) };
    if la_leads {
        a.kill();
    } else {
        b.kill();
    }
    let rev = stack.state().unwrap()["revision"].as_u64().unwrap();
    stack.consul.advance_clock(Duration::from_secs(25));
    eventually("the follower to lead", Duration::from_secs(30), || {
        leader(follower).filter(|l| *l)
    });
    stack.wait_state(
        "decisions by the new leader",
        Duration::from_secs(30),
        |s| s["revision"].as_u64() > Some(rev),
    );
    let survivor = if dead_name == "a" { &mut b } else { &mut a };
    survivor.assert_running();
}

#[test]
fn a_weight_changed_by_hand_pauses_the_rollout_and_is_never_overwritten() {
    let r = running(0.0, 0.0, 5);
    r.stack
        .wait_state("the first step", Duration::from_secs(30), |s| {
            phase(s) == "progressing" && s["applying_from"].is_null()
        });
    assert_eq!(r.stack.green_weight(), 10);
    // An operator moves green by hand.
    assert_eq!(
        r.stack.haproxy.runtime("set weight api_checkout/green 33"),
        "\n"
    );
    let paused = r
        .stack
        .wait_state("pause", Duration::from_secs(20), |s| phase(s) == "paused");
    assert!(
        paused["reason"].as_str().unwrap().contains("by hand"),
        "{paused}"
    );
    // Several more windows pass (2 s each): the hand-set weight stays, nothing is re-decided.
    let rev = paused["revision"].as_u64().unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < until {
        assert_eq!(
            r.stack.green_weight(),
            33,
            "the hand-set weight was overwritten"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(r.stack.state().unwrap()["revision"].as_u64(), Some(rev));
    assert_eq!(r.stack.green_weight(), 33);
}

#[test]
fn a_metrics_outage_holds_the_weights_and_never_rolls_back() {
    let mut r = running(0.0, 0.0, 6);
    r.stack
        .wait_state("the first step", Duration::from_secs(30), |s| {
            phase(s) == "progressing" && s["applying_from"].is_null()
        });
    r.stack.vm_mut().kill();
    let held = r
        .stack
        .wait_state("holds on the outage", Duration::from_secs(20), |s| {
            s["history"]
                .as_array()
                .and_then(|h| h.last())
                .and_then(|r| r["reason"].as_str())
                .is_some_and(|r| r.contains("unusable metrics"))
        });
    let green = r.stack.green_weight();
    let rev = held["revision"].as_u64().unwrap();
    let later = r
        .stack
        .wait_state("more holds", Duration::from_secs(20), |s| {
            s["revision"].as_u64() >= Some(rev + 3)
        });
    assert_eq!(phase(&later), "progressing");
    assert_eq!(
        r.stack.green_weight(),
        green,
        "weights moved during an outage"
    );
}
