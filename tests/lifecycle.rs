//! Three consecutive releases of one API through the real daemon, real HAProxy and a real
//! VictoriaMetrics (state in the Consul double): release A is promoted onto green, release B
//! rolls onto blue and is promoted (the daemon killed half-way through), release C rolls onto
//! green and is rolled back to blue. Weights, stable colour, release ids, alerts, `status` and
//! /metrics are checked at every stage.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{listen_addr, phase, policy_with, ErrorRates, Feeder, Stack};
use support::{eventually, http, Proc};

const DEADLINE: Duration = Duration::from_secs(120);

fn start(stack: &Stack, cfg: &Path, env: &[(&str, &str)], release: &str) {
    stack
        .greenlight(cfg, &["start", "checkout", "--release", release], env)
        .expect_code(0);
}

/// Waits for the rollout to settle in `want` with every weight change applied; returns it.
fn settled(stack: &Stack, daemon: &mut Proc, want: &str, release: &str) -> Value {
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        daemon.assert_running();
        let state = stack.state();
        if let Some(s) = state
            .as_ref()
            .filter(|s| phase(s) == want && s["applying_from"].is_null() && s["intent"].is_null())
        {
            return s.clone();
        }
        if std::time::Instant::now() > until {
            let last = state.as_ref().map(support::stack::last_record);
            panic!("release {release} not {want} within {DEADLINE:?}; last decision: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn releases(state: &Value) -> (&str, &str, &str) {
    let r = &state["releases"];
    (
        r["stable"].as_str().unwrap_or(""),
        r["stable_release"].as_str().unwrap_or(""),
        r["candidate_release"].as_str().unwrap_or(""),
    )
}

/// The webhook events received so far that are neither resolutions nor audit entries.
fn events(hook: &FakeHttp) -> Vec<Value> {
    hook.received()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .map(|v| v["event"].clone())
        .filter(|e| e["resolved"] != true && e["kind"] != "audit")
        .collect()
}

fn metrics(listen: SocketAddr) -> String {
    let (code, body) = http(listen, "GET", "/metrics", b"").unwrap();
    assert_eq!(code, 200);
    body
}

/// A stack with healthy traffic flowing, alerts to a webhook and one daemon running, for
/// `checkout` with `top_level` policy lines. Fields drop in order: the daemon first.
struct Running {
    daemon: Proc,
    feeder: Feeder,
    hook: FakeHttp,
    listen: SocketAddr,
    cfg: std::path::PathBuf,
    url: String,
    stack: Stack,
}

impl Running {
    fn start(top_level: &str, seed: u64) -> Running {
        let stack = Stack::start_with(
            &policy_with(&format!(
                "auto_start = false\nalerts = [\"oncall\"]\n{top_level}"
            )),
            true,
        );
        let feeder = Feeder::start(
            &stack.haproxy,
            stack.vm(),
            ErrorRates {
                blue: 0.0,
                green: 0.0,
            },
            seed,
        );
        let hook = FakeHttp::start(Behaviour::Answer {
            status: 200,
            content_type: "application/json",
            body: "{}".into(),
        });
        let listen = listen_addr();
        let cfg = stack.config_with(
            "a",
            listen,
            &stack.vm().url(),
            "[[alert]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = { env = \"HOOK_URL\" }\n",
        );
        let url = hook.url();
        let daemon = stack.daemon_with_env("a", &cfg, &[("HOOK_URL", url.as_str())]);
        Running {
            daemon,
            feeder,
            hook,
            listen,
            cfg,
            url,
            stack,
        }
    }

    /// `greenlight start checkout --release ID`, with the alert channel's URL set.
    fn start_release(&self, release: &str) {
        start(
            &self.stack,
            &self.cfg,
            &[("HOOK_URL", self.url.as_str())],
            release,
        );
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("HOOK_URL", self.url.as_str())]
    }

    /// A new daemon in place of a killed one.
    fn restart(&mut self) {
        self.daemon.kill();
        self.daemon =
            self.stack
                .daemon_with_env("a", &self.cfg, &[("HOOK_URL", self.url.as_str())]);
    }

    fn settled(&mut self, want: &str, release: &str) -> Value {
        settled(&self.stack, &mut self.daemon, want, release)
    }
}

#[test]
fn three_releases_alternate_colours_across_a_daemon_kill_and_the_last_is_rolled_back() {
    let mut r = Running::start("", 15);

    // Release A onto green: promoted, green stable.
    r.start_release("a");
    let s = r.settled("promoted", "a");
    assert_eq!(releases(&s).0, "green", "{s}");
    assert_eq!(releases(&s).1, "a", "{s}");
    assert_eq!((r.stack.weight("blue"), r.stack.weight("green")), (0, 100));

    // Starting A again is refused: it is the stable release.
    let again = r
        .stack
        .greenlight(&r.cfg, &["start", "checkout", "--release", "a"], &r.env());
    assert_ne!(again.code(), 0, "{}", again.stdout);
    assert!(
        again
            .stderr
            .contains("release a is already stable on green"),
        "{}",
        again.stderr
    );

    // Release B onto blue (the default direction now); the daemon is killed once blue has its
    // first step, and a new one finishes the rollout.
    r.start_release("b");
    eventually("blue at its first step", DEADLINE, || {
        r.daemon.assert_running();
        (r.stack.weight("blue") == 10 && r.stack.weight("green") == 90).then_some(())
    });
    r.restart();
    let s = r.settled("promoted", "b");
    assert_eq!(releases(&s).0, "blue", "{s}");
    assert_eq!(releases(&s).1, "b", "{s}");
    assert_eq!((r.stack.weight("blue"), r.stack.weight("green")), (100, 0));
    // Blue climbed the steps: 10, 50, 100.
    let blue_steps: Vec<u64> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["release"] == "b" && matches!(r["action"].as_str(), Some("start" | "advance"))
        })
        .map(|r| r["weights"]["blue"].as_u64().unwrap())
        .collect();
    assert_eq!(blue_steps, vec![10, 50], "{s}");

    // Release C onto green, which fails: rolled back to blue.
    r.feeder.set_rates(ErrorRates {
        blue: 0.0,
        green: 0.4,
    });
    r.start_release("c");
    let s = r.settled("rolled_back", "c");
    assert_eq!(releases(&s), ("blue", "b", "c"), "{s}");
    assert_eq!(s["releases"]["rolled_back"], serde_json::json!(["c"]));
    assert_eq!((r.stack.weight("blue"), r.stack.weight("green")), (100, 0));

    // The alerts: two promotions naming their release and new stable colour, one rollback.
    let seen = eventually("three alerts", DEADLINE, || {
        let e = events(&r.hook);
        let kinds: Vec<&str> = e.iter().filter_map(|e| e["kind"].as_str()).collect();
        (kinds.iter().filter(|k| **k == "promoted").count() == 2 && kinds.contains(&"rollback"))
            .then_some(e)
    });
    let promoted: Vec<(&str, &str)> = seen
        .iter()
        .filter(|e| e["kind"] == "promoted")
        .map(|e| {
            (
                e["fields"]["release"].as_str().unwrap_or(""),
                e["fields"]["stable"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(promoted, vec![("a", "green (a)"), ("b", "blue (b)")]);
    let rollback = seen.iter().find(|e| e["kind"] == "rollback").unwrap();
    assert_eq!(rollback["fields"]["release"], "c");
    assert_eq!(rollback["fields"]["stable"], "blue (b)");
    assert!(
        rollback["summary"]
            .as_str()
            .unwrap()
            .contains("(release c) at 10 % green, all traffic to blue (stable)"),
        "{rollback}"
    );

    // `status` and /metrics say the same.
    let status = r.stack.greenlight(&r.cfg, &["status"], &r.env());
    status.expect_code(0);
    assert!(
        status
            .stdout
            .contains("release:  stable blue (release b), candidate green (release c)"),
        "{}",
        status.stdout
    );
    let text = eventually("the release series", DEADLINE, || {
        let m = metrics(r.listen);
        m.contains(
            r#"greenlight_release{api="checkout",stable="blue",candidate="green",release="c"} 1"#,
        )
        .then_some(m)
    });
    let series = text
        .lines()
        .filter(|l| l.starts_with("greenlight_release{"))
        .count();
    assert_eq!(series, 1, "one release series per API:\n{text}");
}

#[test]
fn a_clean_bake_promotes_with_its_release_and_a_breaching_one_rolls_back_to_the_old_colour() {
    let mut r = Running::start("bake = \"8s\"", 16);

    // Release A onto green bakes at 100 %, green not stable yet, then is promoted.
    r.start_release("a");
    let baking = eventually("release a baking", DEADLINE, || {
        r.daemon.assert_running();
        r.stack.state().filter(|s| phase(s) == "baking")
    });
    assert_eq!(releases(&baking).0, "blue", "{baking}");
    eventually("green at 100 % while baking", DEADLINE, || {
        (r.stack.weight("green") == 100).then_some(())
    });
    let s = r.settled("promoted", "a");
    assert_eq!(releases(&s).0, "green", "{s}");
    let promoted = eventually("the promoted alert", DEADLINE, || {
        events(&r.hook)
            .into_iter()
            .find(|e| e["kind"] == "promoted")
    });
    assert_eq!(promoted["fields"]["release"], "a");
    assert_eq!(promoted["fields"]["stable"], "green (a)");

    // Release B onto blue starts failing once it serves everything: back to green.
    r.start_release("b");
    eventually("release b baking", DEADLINE, || {
        r.daemon.assert_running();
        r.stack.state().filter(|s| phase(s) == "baking")
    });
    r.feeder.set_rates(ErrorRates {
        blue: 0.4,
        green: 0.0,
    });
    let s = r.settled("rolled_back", "b");
    assert_eq!(releases(&s), ("green", "a", "b"), "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .starts_with("Breach during the bake"),
        "{s}"
    );
    assert_eq!((r.stack.weight("blue"), r.stack.weight("green")), (0, 100));
    let rollback = eventually("the rollback alert", DEADLINE, || {
        events(&r.hook)
            .into_iter()
            .find(|e| e["kind"] == "rollback")
    });
    assert_eq!(rollback["fields"]["release"], "b");
}

#[test]
fn a_start_without_a_release_id_reads_the_candidates_from_the_release_query() {
    let stack = Stack::start_with(
        &policy_with(
            "auto_start = false\nrelease_query = 'max by (version) (app_build_info{cluster=\"{color}\"})'",
        ),
        true,
    );
    let now = jiff::Timestamp::now().as_millisecond();
    let body = format!(
        "app_build_info{{cluster=\"blue\",version=\"v6\"}} 1 {now}\napp_build_info{{cluster=\"green\",version=\"v7\"}} 1 {now}\n"
    );
    let vm = stack.vm().addr;
    http(vm, "POST", "/api/v1/import/prometheus", body.as_bytes()).unwrap();
    http(vm, "GET", "/internal/force_flush", b"").unwrap();
    let cfg = stack.config("a", listen_addr(), &stack.vm().url());
    eventually("the build info in VictoriaMetrics", DEADLINE, || {
        let (code, body) = http(vm, "GET", "/api/v1/query?query=app_build_info", b"").ok()?;
        (code == 200 && body.contains("v7")).then_some(())
    });
    stack
        .greenlight(&cfg, &["start", "checkout"], &[])
        .expect_code(0);
    stack.run_once(&cfg);
    let s = stack.state().unwrap();
    assert_eq!(phase(&s), "progressing", "{s}");
    assert_eq!(
        releases(&s),
        ("blue", "", "v7"),
        "green (the candidate) runs v7: {s}"
    );
    assert!(
        support::stack::last_record(&s)["reason"]
            .as_str()
            .unwrap()
            .contains("release v7 onto green"),
        "{s}"
    );
}
