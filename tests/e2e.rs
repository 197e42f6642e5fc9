//! End to end, as users run it: HAProxy in front of a blue and a green demo service for two APIs,
//! VictoriaMetrics scraping HAProxy's exporter and the services every second, the weights in
//! Consul KV (the Consul double), `greenlight run` deciding, `greenlight sync` pushing the weights
//! into HAProxy, rollback alerts to a real Alertmanager. Intervals are compressed to 2 s.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenlight::demo::{generate_load, serve_demo, DemoSettings, LoadSettings};
use serde_json::Value;
use support::alertmanager::Alertmanager;
use support::consul_double::ConsulDouble;
use support::haproxy_apis::{ApiServers, HaproxyApis};
use support::scraping::ScrapingVictoria;
use support::{eventually, free_port, wait_ready, Proc};

/// Load per API through HAProxy, requests per second.
const RPS: u32 = 100;
/// The load generator stops by itself after this, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(240);

/// One policy per API: HAProxy's 5xx counters and the service's latency histogram.
fn policy(api: &str) -> String {
    format!(
        r#"api = "{api}"
interval = "2s"
steps = [5, 25, 50, 100]
min_step_duration = "4s"
min_green_requests_per_step = 20
false_rollback_rate = 0.01
warmup_intervals = 1
no_data_alert_after = "30s"
alerts = ["oncall"]

[traffic]
consul_keys = {{ blue = "haproxy/{api}/weights/blue", green = "haproxy/{api}/weights/green" }}
haproxy_backend = {{ backend = "api_{api}", blue = "blue", green = "green" }}

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(haproxy_server_http_responses_total{{proxy="api_{api}",server="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(haproxy_server_http_responses_total{{proxy="api_{api}",server="{{color}}",code="5xx"}}[{{interval}}]))'
min_errors = 3
advance_max_rate = 0.05

[[check]]
name = "latency"
kind = "latency_histogram"
buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{{service="{api}",cluster="{{color}}"}}[{{interval}}]))'
edges = ["0.25"]
min_errors = 3
advance_max_rate = 0.05
"#
    )
}

/// The four demo services and the load, on one runtime; everything stops on drop.
struct Services {
    runtime: Option<tokio::runtime::Runtime>,
    stop: tokio::sync::watch::Sender<bool>,
    /// (api, colour) → address.
    addrs: BTreeMap<(String, String), SocketAddr>,
}

impl Services {
    /// checkout: green as good as blue. search: green with 8 % errors and 3× slower.
    fn start() -> Services {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime for the demo services");
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut addrs = BTreeMap::new();
        let specs = [
            ("checkout", "blue", 0.002, 1.0, 1),
            ("checkout", "green", 0.002, 1.0, 2),
            ("search", "blue", 0.002, 1.0, 3),
            ("search", "green", 0.08, 3.0, 4),
        ];
        for (api, color, error_rate, slow_factor, seed) in specs {
            let settings = DemoSettings {
                service: api.into(),
                color: color.into(),
                error_rate,
                latency_median: 0.04,
                latency_sigma: 0.4,
                slow_factor,
                seed,
            };
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a service");
            listener.set_nonblocking(true).unwrap();
            addrs.insert(
                (api.to_string(), color.to_string()),
                listener.local_addr().unwrap(),
            );
            let mut rx = stop.subscribe();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let shutdown = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                serve_demo(listener, settings, shutdown)
                    .await
                    .expect("demo service");
            });
        }
        Services {
            runtime: Some(runtime),
            stop,
            addrs,
        }
    }

    fn addr(&self, api: &str, color: &str) -> SocketAddr {
        self.addrs[&(api.to_string(), color.to_string())]
    }

    /// Bounded load through `frontend` (it ends by itself after [`LOAD_LIMIT`]).
    fn load(&self, frontend: SocketAddr) {
        let settings = LoadSettings::new(&format!("http://{frontend}/"), RPS, LOAD_LIMIT)
            .expect("valid load settings");
        if let Some(rt) = &self.runtime {
            rt.spawn(async move {
                generate_load(&settings).await;
            });
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Records every distinct green weight HAProxy reports per API, and keeps VictoriaMetrics'
/// newest samples searchable, until dropped.
struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, Vec<u32>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(admin: SocketAddr, vm: SocketAddr) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                for api in ["checkout", "search"] {
                    let line = format!("get weight api_{api}/green");
                    let Ok(reply) = support::haproxy_apis::runtime(admin, &line) else {
                        continue;
                    };
                    let Some(w) = reply.split_whitespace().next().and_then(|w| w.parse().ok())
                    else {
                        continue;
                    };
                    let mut seen = seen2.lock().unwrap();
                    let list = seen.entry(api.to_string()).or_default();
                    if list.last() != Some(&w) {
                        list.push(w);
                    }
                }
                let _ = support::http(vm, "GET", "/internal/force_flush", b"");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watcher {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self, api: &str) -> Vec<u32> {
        self.seen
            .lock()
            .unwrap()
            .get(api)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes the policies and the daemon/sync configuration into `dir`.
fn write_config(
    dir: &Path,
    listen: SocketAddr,
    sync_listen: SocketAddr,
    vm: &ScrapingVictoria,
    consul: &ConsulDouble,
    haproxy: &HaproxyApis,
    am: &Alertmanager,
) -> PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    for api in ["checkout", "search"] {
        std::fs::write(dir.join(format!("policies/{api}.toml")), policy(api)).unwrap();
    }
    // VictoriaMetrics runs with -search.latencyOffset=0s; scraped samples take 1–2 s to become
    // searchable, so windows end 3 s in the past.
    let text = format!(
        r#"policies_dir = "policies"
listen = "{listen}"
state_dir = "state"

[metrics]
url = "{vm}"
kind = "victoriametrics"
timeout = "2s"
latency_offset = "3s"
max_staleness = "30s"

[consul]
url = "{consul}"
session_ttl = "10s"
lock_delay = "1s"

[haproxy]
nodes = ["{haproxy}"]

[sync]
listen = "{sync_listen}"
repair_interval = "1s"

[[alert]]
name = "oncall"
kind = "alertmanager"
url = "{am}"
"#,
        vm = vm.url(),
        consul = consul.url(),
        haproxy = haproxy.tcp_url(),
        am = am.url(),
    );
    let path = dir.join("greenlight.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn greenlight(dir: &Path, config: &Path, name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenlight"));
    cmd.current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("CONSUL_HTTP_TOKEN");
    Proc::spawn(name, cmd, dir)
}

fn state(consul: &ConsulDouble, api: &str) -> Option<Value> {
    consul.rollout_json(api)
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// (action, step) of every decision in the state's history, oldest first.
fn history(s: &Value) -> Vec<(String, u64)> {
    s["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|r| {
                    (
                        r["action"].as_str().unwrap_or("").to_string(),
                        r["step"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Green requests counted by greenlight so far (warm-up windows excluded).
fn counted_green(s: &Value) -> f64 {
    s["streams"][0]["total"]["green"]["requests"]
        .as_f64()
        .unwrap_or(0.0)
}

#[test]
fn healthy_api_is_promoted_and_faulty_api_rolled_back_through_a_real_stack_despite_a_crash() {
    let services = Services::start();
    let apis: Vec<ApiServers> = ["checkout", "search"]
        .iter()
        .map(|api| ApiServers {
            name: api.to_string(),
            blue: services.addr(api, "blue"),
            green: services.addr(api, "green"),
        })
        .collect();
    let haproxy = HaproxyApis::start(&apis);
    let vm = ScrapingVictoria::start(&[
        ("haproxy", vec![haproxy.exporter]),
        (
            "demo",
            apis.iter().flat_map(|a| [a.blue, a.green]).collect(),
        ),
    ]);
    let consul = ConsulDouble::start();
    let am = Alertmanager::start(None);
    let watcher = Watcher::start(haproxy.admin, vm.addr);
    for api in ["checkout", "search"] {
        services.load(haproxy.frontend(api));
    }

    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sync_listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(dir.path(), listen, sync_listen, &vm, &consul, &haproxy, &am);
    let mut daemon = greenlight(
        dir.path(),
        &config,
        "greenlight-a",
        &["run", "--instance", "a"],
    );
    let mut sync = greenlight(dir.path(), &config, "sync-a", &["sync"]);
    wait_ready(&mut sync, sync_listen, "/healthz", Duration::from_secs(20));

    // Mid-way: checkout is progressing and has counted real traffic from VictoriaMetrics.
    let before = eventually(
        "checkout to count a window",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            sync.assert_running();
            state(&consul, "checkout")
                .filter(|s| phase(s) == "progressing" && counted_green(s) > 0.0)
        },
    );
    daemon.kill();
    sync.kill();
    let killed = state(&consul, "checkout").unwrap();
    let search_when_killed = state(&consul, "search").map(|s| phase(&s).to_string());
    assert!(killed["revision"].as_u64() >= before["revision"].as_u64());

    // The dead instance's session expires after 2×TTL, then its lock-delay passes.
    consul.advance_clock(Duration::from_secs(25));
    let mut daemon = greenlight(
        dir.path(),
        &config,
        "greenlight-b",
        &["run", "--instance", "b"],
    );
    let mut sync = greenlight(dir.path(), &config, "sync-b", &["sync"]);

    let done = |api: &str, want: &str| {
        state(&consul, api).filter(|s| phase(s) == want && s["applying_from"].is_null())
    };
    let search = eventually("search to be rolled back", Duration::from_secs(90), || {
        daemon.assert_running();
        sync.assert_running();
        done("search", "rolled_back")
    });
    let checkout = eventually("checkout to be promoted", Duration::from_secs(90), || {
        daemon.assert_running();
        sync.assert_running();
        done("checkout", "promoted")
    });
    let checkout_green = || haproxy.weight("checkout", "green");
    let search_green = || haproxy.weight("search", "green");
    eventually(
        "sync to bring HAProxy in line",
        Duration::from_secs(20),
        || (checkout_green() == Some(100) && search_green() == Some(0)).then_some(()),
    );
    eventually(
        "the watcher to see the final weights",
        Duration::from_secs(5),
        || {
            let last = |api| watcher.seen(api).last().copied();
            (last("checkout") == Some(100) && last("search") == Some(0)).then_some(())
        },
    );

    // checkout: one start, an advance through every step, one promotion, nothing repeated —
    // the restarted instance continued the same rollout.
    assert_eq!(
        checkout["rollout_started_at"], killed["rollout_started_at"],
        "the rollout was restarted"
    );
    let moves: Vec<(String, u64)> = history(&checkout)
        .into_iter()
        .filter(|(a, _)| a != "hold")
        .collect();
    let expected: Vec<(String, u64)> =
        [("start", 0), ("advance", 1), ("advance", 2), ("promote", 3)]
            .iter()
            .map(|(a, s)| (a.to_string(), *s))
            .collect();
    assert_eq!(moves, expected, "checkout decisions");
    // HAProxy went through every step in order, read back from its Runtime API.
    assert_eq!(watcher.seen("checkout"), vec![0, 5, 25, 50, 100]);
    assert_eq!(haproxy.weight("checkout", "blue"), Some(0));
    for _ in 0..20 {
        let served = haproxy.request("checkout").expect("checkout answers");
        assert_eq!(served.server, "green", "{served:?}");
    }

    // search: rolled back within a bounded number of intervals after it started.
    let decisions = history(&search);
    let started = decisions
        .iter()
        .position(|(a, _)| a == "start")
        .expect("search started");
    let rolled = decisions
        .iter()
        .position(|(a, _)| a == "rollback")
        .expect("search rolled back");
    assert!(
        rolled - started <= 12,
        "rollback took {} decisions: {decisions:?}",
        rolled - started
    );
    let reason = search["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("errors") || reason.contains("latency"),
        "{reason}"
    );
    assert_eq!(watcher.seen("search"), vec![0, 5, 0]);
    // Every new request to search reaches blue.
    for _ in 0..30 {
        let served = haproxy.request("search").expect("search answers");
        assert_eq!(served.server, "blue", "{served:?}");
    }

    // The rollback alert reached Alertmanager, with its labels.
    let alerts = eventually("the rollback alert", Duration::from_secs(20), || {
        let alerts = am.alerts(&["api=\"search\""], "");
        alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == "GreenlightRollback")
            .then_some(alerts)
    });
    assert!(
        am.alerts(
            &["api=\"checkout\"", "alertname=\"GreenlightRollback\""],
            ""
        )
        .is_empty(),
        "checkout was never rolled back"
    );
    eprintln!(
        "search was {search_when_killed:?} when greenlight and sync were killed, rolled back \
         {} decisions after its start; {} search alerts",
        rolled - started,
        alerts.len()
    );

    let status = daemon.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.output());
    let status = sync.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", sync.output());
}
