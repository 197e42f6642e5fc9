//! `greenlight status|start|pause|resume|rollback|promote` against the Consul double and a real
//! HAProxy: each records an intent shown by `status --json`, which a `run --once` or a running
//! daemon then obeys; exit codes and messages for unknown APIs, an unreachable Consul and ACLs.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::consul_double::ConsulDouble;
use support::fake_http::{Behaviour, FakeHttp};
use support::stack::{
    last_record, listen_addr, phase, policy_with, revision, step, wait_for_next_window, ErrorRates,
    Feeder, Finished, Stack,
};

/// `status --json` for `checkout`.
fn status_json(stack: &Stack, cfg: &Path, env: &[(&str, &str)]) -> Value {
    let done = stack.greenlight(cfg, &["status", "--json"], env);
    done.expect_code(0);
    let views: Value = serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", done.stdout));
    let views = views.as_array().expect("an array of rollouts");
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(views[0]["api"], "checkout");
    views[0].clone()
}

/// Runs an operator command that must succeed.
fn command(stack: &Stack, cfg: &Path, args: &[&str]) -> Finished {
    let done = stack.greenlight(cfg, args, &[]);
    done.expect_code(0);
    assert!(done.stdout.contains("recorded"), "{}", done.stdout);
    done
}

#[test]
fn intents_recorded_without_a_daemon_are_obeyed_by_the_next_run() {
    let stack = Stack::start_with(&policy_with("auto_start = false"), false);
    let cfg = stack.config("a", listen_addr(), &Stack::unreachable_url());

    // Nothing stored yet: a fresh, pending rollout.
    let view = status_json(&stack, &cfg, &[]);
    assert_eq!(view["phase"], "pending");
    assert!(view["intent_pending"].is_null());
    stack.run_once(&cfg);
    assert_eq!(status_json(&stack, &cfg, &[])["phase"], "pending");
    assert_eq!(stack.green_weight(), 0);

    // start
    command(&stack, &cfg, &["start", "checkout"]);
    assert_eq!(
        status_json(&stack, &cfg, &[])["intent_pending"]["intent"],
        "start"
    );
    assert_eq!(stack.green_weight(), 0, "a command alone moves no weight");
    stack.run_once(&cfg);
    let view = status_json(&stack, &cfg, &[]);
    assert_eq!(view["phase"], "progressing");
    assert!(view["intent_pending"].is_null(), "{view}");
    assert_eq!(stack.green_weight(), 10);

    // pause: recorded with its reason, shown by the text status too.
    command(
        &stack,
        &cfg,
        &["pause", "checkout", "--reason", "checking dashboards"],
    );
    let view = status_json(&stack, &cfg, &[]);
    assert_eq!(view["intent_pending"]["intent"], "pause");
    assert_eq!(view["intent_pending"]["reason"], "checking dashboards");
    stack.run_once(&cfg);
    let text = stack.greenlight(&cfg, &["status"], &[]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("checkout: paused at step 1/3"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("checking dashboards"),
        "{}",
        text.stdout
    );
    // A later window: still paused, weights frozen, nothing re-decided.
    let paused = stack.state().unwrap();
    wait_for_next_window(&paused);
    stack.run_once(&cfg);
    let later = stack.state().unwrap();
    assert_eq!(revision(&later), revision(&paused));
    assert_eq!(phase(&later), "paused");
    assert_eq!(stack.green_weight(), 10);

    // resume
    command(&stack, &cfg, &["resume", "checkout"]);
    assert_eq!(
        status_json(&stack, &cfg, &[])["intent_pending"]["intent"],
        "resume"
    );
    stack.run_once(&cfg);
    let resumed = stack.state().unwrap();
    assert_eq!(phase(&resumed), "progressing");
    assert_eq!(last_record(&resumed)["action"], "resume");
    assert_eq!(stack.green_weight(), 10);

    // rollback: green back to 0 on HAProxy.
    command(
        &stack,
        &cfg,
        &["rollback", "checkout", "--reason", "bad deploy"],
    );
    assert_eq!(
        status_json(&stack, &cfg, &[])["intent_pending"]["intent"],
        "rollback"
    );
    stack.run_once(&cfg);
    let rolled = stack.state().unwrap();
    assert_eq!(phase(&rolled), "rolled_back");
    assert!(
        rolled["reason"].as_str().unwrap().contains("bad deploy"),
        "{rolled}"
    );
    assert_eq!(stack.green_weight(), 0);

    // start again, then promote: green to 100.
    command(&stack, &cfg, &["start", "checkout"]);
    stack.run_once(&cfg);
    assert_eq!(stack.green_weight(), 10);
    command(&stack, &cfg, &["promote", "checkout"]);
    assert_eq!(
        status_json(&stack, &cfg, &[])["intent_pending"]["intent"],
        "promote"
    );
    stack.run_once(&cfg);
    let view = status_json(&stack, &cfg, &[]);
    assert_eq!(view["phase"], "promoted");
    assert!(view["intent_pending"].is_null());
    assert_eq!(stack.green_weight(), 100);
    let split = stack.haproxy.split(20);
    assert_eq!(split.get("green"), Some(&20), "{split:?}");
}

#[test]
fn a_running_daemon_obeys_start_pause_resume_rollback_and_promote() {
    let stack = Stack::start_with(&policy_with("auto_start = false"), true);
    let _feeder = Feeder::start(
        &stack.haproxy,
        stack.vm(),
        ErrorRates {
            blue: 0.0,
            green: 0.0,
        },
        11,
    );
    let listen = listen_addr();
    let cfg = stack.config("a", listen, &stack.vm().url());
    let mut daemon = stack.daemon("a", &cfg, &[]);
    let deadline = Duration::from_secs(45);

    // The daemon sees the pending rollout (and, without auto_start, leaves it alone).
    support::eventually("the daemon to show the pending rollout", deadline, || {
        let (code, body) = support::http(listen, "GET", "/api/v1/rollouts/checkout", b"").ok()?;
        (code == 200 && body.contains("\"phase\":\"pending\"")).then_some(())
    });
    assert_eq!(stack.green_weight(), 0);

    command(&stack, &cfg, &["start", "checkout"]);
    stack.wait_state("the start", deadline, |s| {
        phase(s) == "progressing" && s["applying_from"].is_null()
    });
    assert_eq!(stack.green_weight(), 10);

    // Paused: healthy green would advance, but the weights stay frozen window after window.
    command(&stack, &cfg, &["pause", "checkout"]);
    let paused = stack.wait_state("the pause", deadline, |s| phase(s) == "paused");
    // Three windows (2 s each) later: nothing re-decided, nothing moved.
    let until = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < until {
        daemon.assert_running();
        assert_eq!(stack.green_weight(), 10, "weights moved while paused");
        std::thread::sleep(Duration::from_millis(200));
    }
    let later = stack.state().unwrap();
    assert_eq!(revision(&later), revision(&paused));
    assert_eq!(phase(&later), "paused");
    assert_eq!(step(&later), 0);
    assert_eq!(stack.green_weight(), 10);

    // Resumed: the rollout continues to the next step.
    command(&stack, &cfg, &["resume", "checkout"]);
    stack.wait_state("the next step after resuming", deadline, |s| {
        step(s) >= 1 && s["applying_from"].is_null()
    });
    assert!(stack.green_weight() >= 50);

    command(&stack, &cfg, &["rollback", "checkout"]);
    stack.wait_state("the rollback", deadline, |s| {
        phase(s) == "rolled_back" && s["applying_from"].is_null()
    });
    assert_eq!(stack.green_weight(), 0);

    command(&stack, &cfg, &["promote", "checkout"]);
    stack.wait_state("the promotion", deadline, |s| {
        phase(s) == "promoted" && s["applying_from"].is_null()
    });
    assert_eq!(stack.green_weight(), 100);
    daemon.assert_running();
    let status = daemon.terminate(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn unknown_api_exits_2_and_unreachable_consul_exits_1_with_a_clear_message() {
    let stack = Stack::start_with(&policy_with(""), false);
    let cfg = stack.config("a", listen_addr(), &Stack::unreachable_url());
    for args in [
        &["pause", "nosuch"][..],
        &["promote", "nosuch"],
        &["status", "nosuch"],
    ] {
        let done = stack.greenlight(&cfg, args, &[]);
        done.expect_code(2);
        assert!(done.stderr.contains("nosuch"), "{args:?}: {}", done.stderr);
    }

    let dead_consul = Stack::unreachable_url();
    let cfg = stack.config_full(
        "b",
        listen_addr(),
        &Stack::unreachable_url(),
        &dead_consul,
        "",
    );
    for args in [
        &["pause", "checkout"][..],
        &["status"],
        &["status", "--json"],
    ] {
        let done = stack.greenlight(&cfg, args, &[]);
        done.expect_code(1);
        assert!(
            done.stderr.contains("Consul agent is unreachable"),
            "{args:?}: {}",
            done.stderr
        );
        assert!(done.stdout.is_empty(), "{args:?}: {}", done.stdout);
    }
}

#[test]
fn consul_acl_token_from_the_environment_is_used_and_never_printed() {
    const TOKEN: &str = "7d3f0c2e-acl-token-9b1a";
    let mut stack = Stack::start_with(&policy_with(""), false);
    let open = std::mem::replace(&mut stack.consul, ConsulDouble::start());
    stack.consul = open.with_acl(TOKEN);
    let cfg = stack.config("a", listen_addr(), &Stack::unreachable_url());
    let never_printed = |done: &Finished| {
        assert!(
            !done.stdout.contains(TOKEN) && !done.stderr.contains(TOKEN),
            "the token was printed:\n{}\n{}",
            done.stdout,
            done.stderr
        );
    };

    // Without a token, and with a wrong one: refused, exit 1, saying why.
    let done = stack.greenlight(&cfg, &["status"], &[]);
    done.expect_code(1);
    assert!(done.stderr.contains("ACL token"), "{}", done.stderr);
    let done = stack.greenlight(
        &cfg,
        &["pause", "checkout"],
        &[("CONSUL_HTTP_TOKEN", "wrong-token")],
    );
    done.expect_code(1);
    assert!(done.stderr.contains("ACL not found"), "{}", done.stderr);
    assert!(!done.stderr.contains("wrong-token"), "{}", done.stderr);

    // With the token: commands and the daemon work; the token appears nowhere, even in debug logs.
    let env = [("CONSUL_HTTP_TOKEN", TOKEN), ("RUST_LOG", "debug")];
    let done = stack.greenlight(&cfg, &["pause", "checkout"], &env);
    done.expect_code(0);
    never_printed(&done);
    let done = stack.greenlight(&cfg, &["status", "--json"], &env);
    done.expect_code(0);
    never_printed(&done);
    assert!(
        done.stdout.contains("\"intent\": \"pause\""),
        "{}",
        done.stdout
    );
    let done = stack.greenlight(&cfg, &["run", "--once"], &env);
    done.expect_code(0);
    never_printed(&done);
    assert_eq!(phase(&stack.state().unwrap()), "paused");
}

/// A stack whose policy alerts `oncall`, a webhook receiver answering 200, and a config using it
/// (its URL from `HOOK_URL`).
fn alerting_stack() -> (Stack, std::path::PathBuf, FakeHttp) {
    let stack = Stack::start_with(
        &policy_with("auto_start = false\nalerts = [\"oncall\"]"),
        false,
    );
    let hook = FakeHttp::start(Behaviour::Answer {
        status: 200,
        content_type: "application/json",
        body: "{}".into(),
    });
    let cfg = stack.config_with(
        "a",
        listen_addr(),
        &Stack::unreachable_url(),
        "[[alert]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = { env = \"HOOK_URL\" }\n",
    );
    (stack, cfg, hook)
}

/// Starts `checkout` (green at 10 on HAProxy) with `start` and a `run --once`.
fn started(stack: &Stack, cfg: &Path, env: &[(&str, &str)]) {
    command(stack, cfg, &["start", "checkout"]);
    stack
        .greenlight(cfg, &["run", "--once"], env)
        .expect_code(0);
    assert_eq!(phase(&stack.state().unwrap()), "progressing");
    assert_eq!(stack.green_weight(), 10);
}

fn webhook_events(hook: &FakeHttp) -> Vec<Value> {
    hook.received()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .map(|v| v["event"].clone())
        .collect()
}

#[test]
fn rollback_now_moves_the_weights_itself_records_why_and_alerts() {
    let (stack, cfg, hook) = alerting_stack();
    let env = [("HOOK_URL", hook.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    started(&stack, &cfg, &env);

    // No daemon runs: the command itself sets HAProxy's weights.
    let done = stack.greenlight(
        &cfg,
        &[
            "rollback",
            "checkout",
            "--now",
            "--reason",
            "pager says 5xx",
        ],
        &env,
    );
    done.expect_code(0);
    assert!(
        done.stdout.contains("all traffic on blue now"),
        "{}",
        done.stdout
    );
    assert_eq!(stack.green_weight(), 0);
    let state = stack.state().unwrap();
    assert_eq!(phase(&state), "rolled_back");
    assert!(state["intent"].is_null(), "{state}");
    assert!(state["applying_from"].is_null(), "{state}");
    assert!(
        state["reason"].as_str().unwrap().contains("pager says 5xx"),
        "{state}"
    );
    assert_eq!(last_record(&state)["action"], "rollback");
    let events = webhook_events(&hook);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "rollback");
    assert_eq!(events[0]["severity"], "critical");
    assert!(
        events[0]["summary"]
            .as_str()
            .unwrap()
            .contains("pager says 5xx"),
        "{events:?}"
    );

    // The daemon's next evaluation finds the split it expects and holds; status says when.
    stack
        .greenlight(&cfg, &["run", "--once"], &env)
        .expect_code(0);
    assert_eq!(phase(&stack.state().unwrap()), "rolled_back");
    assert_eq!(stack.green_weight(), 0);
    let text = stack.greenlight(&cfg, &["status"], &env);
    text.expect_code(0);
    let rolled_at = last_record(&state)["at"].as_str().unwrap().to_string();
    assert!(
        text.stdout.contains(&format!("rolled back: {rolled_at}")),
        "{rolled_at} in\n{}",
        text.stdout
    );
}

#[test]
fn rollback_now_works_when_the_state_cannot_be_decoded_and_keeps_its_bytes() {
    let (stack, cfg, hook) = alerting_stack();
    let env = [("HOOK_URL", hook.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    started(&stack, &cfg, &env);
    // What an older version could leave behind: an e-value written as null.
    let raw = stack.consul.value(support::stack::STATE_KEY).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let broken = text.replacen("\"revision\":", "\"revision\":null,\"x\":", 1);
    stack
        .consul
        .put(support::stack::STATE_KEY, broken.as_bytes());

    // status shows it, for that API, instead of failing.
    let done = stack.greenlight(&cfg, &["status"], &env);
    done.expect_code(0);
    assert!(
        done.stdout.contains("checkout: STATE CANNOT BE READ"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("rollback checkout --now"),
        "{}",
        done.stdout
    );
    let done = stack.greenlight(&cfg, &["status", "--json"], &env);
    done.expect_code(0);
    let views: Value = serde_json::from_str(&done.stdout).unwrap();
    let problem = &views[0]["state_undecodable"];
    assert!(
        problem["reason"].as_str().unwrap().contains("revision"),
        "{problem}"
    );
    let index = problem["index"].as_u64().unwrap();

    let done = stack.greenlight(
        &cfg,
        &[
            "rollback",
            "checkout",
            "--now",
            "--reason",
            "state unreadable",
        ],
        &env,
    );
    done.expect_code(0);
    assert_eq!(stack.green_weight(), 0);
    // The undecodable bytes are kept, and a fresh rolled-back state replaces them.
    let kept = stack
        .consul
        .value(&format!("greenlight/undecodable/checkout/{index}"))
        .expect("the old bytes are kept");
    assert_eq!(kept, broken.as_bytes());
    let state = stack.state().expect("a readable state");
    assert_eq!(phase(&state), "rolled_back");
    let reason = state["reason"].as_str().unwrap();
    assert!(reason.contains("state unreadable"), "{reason}");
    assert!(reason.contains("could not be decoded"), "{reason}");
    let events = webhook_events(&hook);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]["fields"]["state"]
            .as_str()
            .unwrap()
            .contains("could not be decoded"),
        "{events:?}"
    );
    // And the API can be started again.
    command(&stack, &cfg, &["start", "checkout"]);
    stack
        .greenlight(&cfg, &["run", "--once"], &env)
        .expect_code(0);
    assert_eq!(stack.green_weight(), 10);
}

#[test]
fn resume_after_a_manual_change_asks_which_weights_to_keep() {
    let stack = Stack::start_with(&policy_with("auto_start = false"), false);
    let cfg = stack.config("a", listen_addr(), &Stack::unreachable_url());
    started(&stack, &cfg, &[]);
    // Someone moves green by hand; the next evaluation pauses the rollout.
    stack.haproxy.runtime("set weight api_checkout/green 30");
    stack.haproxy.runtime("set weight api_checkout/blue 70");
    stack.run_once(&cfg);
    assert_eq!(phase(&stack.state().unwrap()), "paused");

    // A plain resume would overwrite the hand-set weights: refused, saying what each choice does.
    let done = stack.greenlight(&cfg, &["resume", "checkout"], &[]);
    done.expect_code(2);
    for part in [
        "blue=70 green=30",
        "--from-step",
        "sets the weights from blue=70 green=30 back to step 1's blue=90 green=10",
        "--adopt-live",
        "keeps the live weights blue=70 green=30 and continues as step 1 (10 %)",
    ] {
        assert!(done.stderr.contains(part), "{part:?} in\n{}", done.stderr);
    }
    assert!(stack.state().unwrap()["intent"].is_null());

    // --adopt-live: the rollout continues from the hand-set split.
    let done = stack.greenlight(&cfg, &["resume", "checkout", "--adopt-live"], &[]);
    done.expect_code(0);
    assert!(
        done.stdout.contains("keeps the live weights"),
        "{}",
        done.stdout
    );
    stack.run_once(&cfg);
    let state = stack.state().unwrap();
    assert_eq!(phase(&state), "progressing");
    assert_eq!(state["weights"]["green"], 30);
    assert_eq!(stack.green_weight(), 30);

    // Moved by hand again, then --from-step: back to the step's weights.
    stack.haproxy.runtime("set weight api_checkout/green 40");
    stack.haproxy.runtime("set weight api_checkout/blue 60");
    stack.run_once(&cfg);
    assert_eq!(phase(&stack.state().unwrap()), "paused");
    let done = stack.greenlight(&cfg, &["resume", "checkout", "--from-step"], &[]);
    done.expect_code(0);
    assert!(
        done.stdout.contains("back to step 1's blue=90 green=10"),
        "{}",
        done.stdout
    );
    stack.run_once(&cfg);
    assert_eq!(phase(&stack.state().unwrap()), "progressing");
    assert_eq!(stack.green_weight(), 10);
}

#[test]
fn status_piped_into_a_reader_that_stops_exits_quietly() {
    use std::os::fd::FromRawFd;
    let stack = Stack::start_with(&policy_with("auto_start = false"), false);
    let cfg = stack.config("a", listen_addr(), &Stack::unreachable_url());
    // A pipe whose reader is already gone, as after `greenlight status | head -0`.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let writer = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    for args in [&["status"][..], &["status", "--json"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_greenlight"))
            .current_dir(stack.dir.path())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdout(writer.try_clone().unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
