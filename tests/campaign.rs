//! A migration campaign run by the real daemon against a real VictoriaMetrics and a real
//! Alertmanager (state in the Consul double): eight APIs in two waves, at most two rollouts at
//! once, one API whose green fails. The order, the cap and the rollback rule hold across a
//! daemon killed in the middle; no API is started twice and none is lost.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::alertmanager::Alertmanager;
use support::kv_traffic::KvTraffic;
use support::stack::{listen_addr, phase, Stack};
use support::{eventually, http, Proc};

const WAVE_ONE: [&str; 4] = ["a1", "a2", "a3", "a4"];
/// Selected by their `team` label, in name order.
const WAVE_TWO: [&str; 4] = ["b1", "b2", "b3", "b4"];
/// Its green answers 40 % errors; every other green and every blue none.
const FAILING: &str = "a3";
const CAMPAIGN_KEY: &str = "greenlight/campaign/cni";
/// Eight rollouts of about ten seconds each, two at a time, and a restart.
const DEADLINE: Duration = Duration::from_secs(240);

fn policy(api: &str) -> String {
    let labels = if api.starts_with('b') {
        "[labels]\nteam = \"payments\"\n"
    } else {
        "[labels]\nteam = \"search\"\n"
    };
    format!(
        r#"api = "{api}"
auto_start = false
interval = "2s"
steps = [50, 100]
min_step_duration = "2s"
min_green_requests_per_step = 20
false_rollback_rate = 0.01
warmup_intervals = 1
no_data_alert_after = "6s"

[traffic]
consul_keys = {{ blue = "w/{api}/blue", green = "w/{api}/green" }}

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(campaign_requests_total{{api="{api}",cluster="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(campaign_requests_total{{api="{api}",cluster="{{color}}",code="500"}}[{{interval}}]))'
advance_max_rate = 0.05
min_errors = 3

{labels}"#
    )
}

const CAMPAIGN: &str = r#"name = "cni"
max_concurrent = 2
on_rollback = "skip"
alerts = ["oncall"]

[[wave]]
name = "one"
apis = ["a1", "a2", "a3", "a4"]

[[wave]]
name = "two"
labels = { team = "payments" }
"#;

/// Every API's traffic: no errors, but [`FAILING`]'s green answers 40 % of them.
fn traffic(stack: &Stack) -> KvTraffic {
    let rates = WAVE_ONE
        .iter()
        .chain(&WAVE_TWO)
        .map(|api| {
            let green = if *api == FAILING { 0.4 } else { 0.0 };
            (api.to_string(), (0.0, green))
        })
        .collect();
    KvTraffic::start(
        stack.consul.addr(),
        stack.vm().addr,
        "campaign_requests_total",
        rates,
    )
}

/// The campaign's stored state.
fn campaign(stack: &Stack) -> Option<Value> {
    serde_json::from_slice(&stack.consul.value(CAMPAIGN_KEY)?).ok()
}

/// How many audit entries (human or campaign actions) `api` has: at most one per start here.
fn audit_entries(stack: &Stack, api: &str) -> usize {
    let path = format!("/v1/kv/greenlight/audit/{api}/?keys");
    match http(stack.consul.addr(), "GET", &path, b"") {
        Ok((200, body)) => serde_json::from_str::<Vec<String>>(&body)
            .map(|k| k.len())
            .unwrap_or(0),
        _ => 0,
    }
}

fn running(phase: &str) -> bool {
    matches!(phase, "progressing" | "paused")
}

/// What the observer saw of the rollouts while the campaign ran.
#[derive(Default)]
struct Seen {
    /// Most rollouts running at once.
    most_at_once: usize,
    /// APIs in the order they were first seen running.
    order: Vec<String>,
    /// Every `rollout_started_at` seen per API: two mean it was started twice.
    rollouts: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Seen {
    /// Looks at every API's rollout; panics when the cap or the wave order is broken (seen in
    /// two looks in a row: one look reads the states one after another, and may see one API
    /// before it was promoted and the next after it started).
    fn look(&mut self, stack: &Stack) {
        let mut phases = phases_of(stack);
        if broken(&phases).is_some() {
            phases = phases_of(stack);
        }
        if let Some(problem) = broken(&phases) {
            panic!("{problem}: {phases:?}");
        }
        let now: Vec<&str> = phases
            .iter()
            .filter(|(_, p)| running(p))
            .map(|(a, _)| *a)
            .collect();
        self.most_at_once = self.most_at_once.max(now.len());
        for api in &now {
            if !self.order.iter().any(|a| a == api) {
                self.order.push(api.to_string());
            }
        }
        for api in WAVE_ONE.iter().chain(&WAVE_TWO) {
            let started = stack
                .state_of(api)
                .and_then(|s| s["rollout_started_at"].as_str().map(String::from));
            if let Some(at) = started {
                self.rollouts.entry(api).or_default().insert(at);
            }
        }
    }
}

/// Every API's phase.
fn phases_of(stack: &Stack) -> BTreeMap<&'static str, String> {
    WAVE_ONE
        .iter()
        .chain(&WAVE_TWO)
        .map(|api| {
            let p = stack
                .state_of(api)
                .map(|s| phase(&s).to_string())
                .unwrap_or_default();
            (*api, p)
        })
        .collect()
}

/// What is wrong with these phases for the campaign: more than two rollouts at once, or wave
/// two running before wave one is done.
fn broken(phases: &BTreeMap<&'static str, String>) -> Option<String> {
    let at_once = phases.values().filter(|p| running(p)).count();
    if at_once > 2 {
        return Some(format!("{at_once} rollouts at once"));
    }
    let wave_two_runs = WAVE_TWO.iter().any(|a| running(&phases[a]));
    let wave_one_left = WAVE_ONE
        .iter()
        .find(|a| !matches!(phases[*a].as_str(), "promoted" | "rolled_back"));
    match (wave_two_runs, wave_one_left) {
        (true, Some(a)) => Some(format!("wave two runs while {a} of wave one is not done")),
        _ => None,
    }
}

fn start_daemon(stack: &Stack, name: &str, am: &Alertmanager) -> (Proc, SocketAddr) {
    let listen = listen_addr();
    let alerts = format!(
        "[[alert]]\nname = \"oncall\"\nkind = \"alertmanager\"\nurl = \"{}\"\n",
        am.url()
    );
    let cfg = stack.config_with(name, listen, &stack.vm().url(), &alerts);
    let mut daemon = stack.daemon(name, &cfg, &[]);
    support::wait_ready(&mut daemon, listen, "/healthz", Duration::from_secs(30));
    (daemon, listen)
}

/// The stack with the eight policies (green at 0), `campaign` as `campaigns/cni.toml`, and an
/// Alertmanager.
fn campaign_stack(campaign: &str) -> (Stack, Alertmanager) {
    let stack = Stack::start_with("", true);
    let am = Alertmanager::start(None);
    for api in WAVE_ONE.iter().chain(&WAVE_TWO) {
        stack.write_policy(api, &policy(api));
        stack.consul.put(&format!("w/{api}/blue"), b"100");
        stack.consul.put(&format!("w/{api}/green"), b"0");
    }
    std::fs::create_dir_all(stack.dir.path().join("campaigns")).unwrap();
    std::fs::write(stack.dir.path().join("campaigns/cni.toml"), campaign).unwrap();
    (stack, am)
}

#[test]
fn eight_apis_in_two_waves_two_at_a_time_skip_the_failing_one_across_a_daemon_kill() {
    let (stack, am) = campaign_stack(CAMPAIGN);
    let _traffic = traffic(&stack);

    let (mut first, _) = start_daemon(&stack, "a", &am);
    let cfg = stack.dir.path().join("a.toml");
    let check = stack.greenlight(&cfg, &["check"], &[]);
    check.expect_code(0);
    assert!(
        check.stdout.contains("ok: 1 campaign (cni)"),
        "{}",
        check.stdout
    );
    let started = stack.greenlight(&cfg, &["--as", "alice", "campaign", "start", "cni"], &[]);
    started.expect_code(0);
    assert!(
        started.stdout.contains("start requested by alice"),
        "{}",
        started.stdout
    );

    // Kill the daemon once two APIs are done and others run: in the middle of wave one.
    let mut seen = Seen::default();
    let done = |c: &Value| {
        c["apis"]
            .as_object()
            .map(|apis| apis.values().filter(|a| !a["outcome"].is_null()).count())
            .unwrap_or(0)
    };
    eventually("two APIs of the campaign done", DEADLINE, || {
        first.assert_running();
        seen.look(&stack);
        campaign(&stack).filter(|c| done(c) >= 2)
    });
    first.kill();
    let killed = campaign(&stack).unwrap();
    assert_eq!(killed["status"], "running", "{killed}");
    // Its session expires after 2×TTL, then the lock-delay passes; a second daemon leads.
    stack.consul.advance_clock(Duration::from_secs(25));
    let (mut second, listen) = start_daemon(&stack, "b", &am);
    let finished = eventually("the campaign to finish", DEADLINE, || {
        second.assert_running();
        seen.look(&stack);
        campaign(&stack).filter(|c| c["status"] == "finished")
    });

    // Every API once, the failing one skipped, the seven others promoted by the campaign.
    let outcomes: BTreeMap<String, String> = finished["apis"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(api, a)| (api.clone(), a["outcome"].as_str().unwrap_or("").to_string()))
        .collect();
    let expected: BTreeMap<String, String> = WAVE_ONE
        .iter()
        .chain(&WAVE_TWO)
        .map(|a| {
            let o = if *a == FAILING { "skipped" } else { "promoted" };
            (a.to_string(), o.to_string())
        })
        .collect();
    assert_eq!(outcomes, expected, "{finished}");
    for api in WAVE_ONE.iter().chain(&WAVE_TWO) {
        let state = stack.state_of(api).unwrap();
        let want = if *api == FAILING {
            "rolled_back"
        } else {
            "promoted"
        };
        assert_eq!(phase(&state), want, "{api}: {state}");
        assert_eq!(state["started_by"], "campaign:cni", "{api}: {state}");
        let rollouts = &seen.rollouts[api];
        assert_eq!(
            rollouts.len(),
            1,
            "{api} was started more than once: {rollouts:?}"
        );
        // The audit entry follows the start in a second write: a daemon killed between the
        // two leaves the start without one.
        assert!(
            audit_entries(&stack, api) <= 1,
            "{api} was started more than once"
        );
    }

    // Two at once, never more; in the file's order within a wave, wave two after wave one.
    assert_eq!(seen.most_at_once, 2, "order seen: {:?}", seen.order);
    let at = |api: &str| -> jiff::Timestamp {
        finished["apis"][api]["at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    for wave in [&WAVE_ONE, &WAVE_TWO] {
        for pair in wave.windows(2) {
            assert!(
                at(pair[0]) <= at(pair[1]),
                "{} started after {}",
                pair[0],
                pair[1]
            );
        }
    }
    assert!(at("a1") == at("a2") && at("a2") < at("a3"), "{finished}");
    assert!(WAVE_ONE.iter().all(|a| at(a) < at("b1")), "{finished}");
    let first_two: BTreeSet<&str> = seen.order.iter().take(2).map(String::as_str).collect();
    assert_eq!(first_two, BTreeSet::from(["a1", "a2"]), "{:?}", seen.order);

    // The second daemon shows it: HTTP API, console panel, /metrics, `campaign status`, and the
    // alerts.
    let (code, body) = http(listen, "GET", "/api/v1/campaigns", b"").unwrap();
    assert_eq!(code, 200, "{body}");
    let views: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(views[0]["name"], "cni", "{body}");
    assert_eq!(views[0]["status"], "finished", "{body}");
    assert_eq!(
        views[0]["waves"][0]["apis"][2]["state"], "skipped",
        "{body}"
    );
    let (code, panel) = http(listen, "GET", "/campaigns", b"").unwrap();
    assert_eq!(code, 200, "{panel}");
    assert!(panel.contains(r#"data-campaign="cni""#), "{panel}");
    assert!(panel.contains(r#"data-api="a3">skipped</span>"#), "{panel}");
    let (_, metrics) = http(listen, "GET", "/metrics", b"").unwrap();
    for line in [
        "greenlight_campaign_status{campaign=\"cni\",status=\"finished\"} 1",
        "greenlight_campaign_apis{campaign=\"cni\",state=\"promoted\"} 7",
        "greenlight_campaign_apis{campaign=\"cni\",state=\"skipped\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let status = stack.greenlight(&cfg, &["campaign", "status", "cni"], &[]);
    status.expect_code(0);
    assert!(
        status
            .stdout
            .contains("campaign cni: finished wave 2/2 promoted=7 running=0 skipped=1"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("a3=skipped"), "{}", status.stdout);
    let events: BTreeSet<String> = eventually("the campaign's alerts", DEADLINE, || {
        let events: BTreeSet<String> = am
            .alerts(&["alertname=\"GreenlightCampaign\""], "")
            .iter()
            .filter_map(|a| a["annotations"]["event"].as_str().map(String::from))
            .collect();
        events.contains("finished").then_some(events)
    });
    assert_eq!(
        events,
        BTreeSet::from(["started", "wave_done", "finished"].map(String::from)),
    );
    second.assert_running();
}

#[test]
fn a_rollback_stops_the_campaign_until_a_resume_skips_the_api() {
    let one_at_a_time = CAMPAIGN
        .replace("max_concurrent = 2", "max_concurrent = 1")
        .replace("on_rollback = \"skip\"", "on_rollback = \"stop\"");
    let (stack, am) = campaign_stack(&one_at_a_time);
    let _traffic = traffic(&stack);
    let (mut daemon, _) = start_daemon(&stack, "a", &am);
    let cfg = stack.dir.path().join("a.toml");
    stack
        .greenlight(&cfg, &["campaign", "start", "cni"], &[])
        .expect_code(0);

    let stopped = eventually("the campaign to stop", DEADLINE, || {
        daemon.assert_running();
        campaign(&stack).filter(|c| c["status"] == "stopped" || c["status"] == "finished")
    });
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(stopped["reason"], "a3 rolled back.", "{stopped}");
    for api in ["a1", "a2"] {
        assert_eq!(stopped["apis"][api]["outcome"], "promoted", "{stopped}");
    }
    assert!(stopped["apis"]["a3"]["outcome"].is_null(), "{stopped}");
    assert!(stopped["apis"].get("a4").is_none(), "{stopped}");
    let status = stack.greenlight(&cfg, &["status"], &[]);
    assert!(
        status
            .stdout
            .contains("campaign cni: stopped wave 1/2 promoted=2 running=1 skipped=0 waiting=5 of 8 (a3 rolled back.)"),
        "{}",
        status.stdout
    );
    eventually("the stop alert", DEADLINE, || {
        am.alerts(&["alertname=\"GreenlightCampaign\""], "")
            .iter()
            .any(|a| a["annotations"]["event"] == "stopped")
            .then_some(())
    });

    // A resume skips a3 and goes on with a4, then wave two; nothing started while stopped.
    stack
        .greenlight(&cfg, &["--as", "bob", "campaign", "resume", "cni"], &[])
        .expect_code(0);
    let finished = eventually("the campaign to finish", DEADLINE, || {
        daemon.assert_running();
        campaign(&stack).filter(|c| c["status"] == "finished")
    });
    assert_eq!(finished["apis"]["a3"]["outcome"], "skipped", "{finished}");
    let stopped_at: jiff::Timestamp = stopped["updated_at"].as_str().unwrap().parse().unwrap();
    let a4_at: jiff::Timestamp = finished["apis"]["a4"]["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(a4_at > stopped_at, "{finished}");
    for api in WAVE_ONE.iter().chain(&WAVE_TWO).filter(|a| **a != FAILING) {
        assert_eq!(finished["apis"][api]["outcome"], "promoted", "{finished}");
        assert_eq!(
            audit_entries(&stack, api),
            1,
            "{api} was started more than once"
        );
    }
}
