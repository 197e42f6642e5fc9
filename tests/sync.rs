//! `greenlight sync` against the Consul API double and real HAProxy nodes: weights written to
//! Consul reach every node, drift is repaired, outages are retried, invalid keys change nothing.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenlight::consul::{ConsulClient, TxnOp};
use greenlight::policy::Policy;
use greenlight::traffic::sync::{serve_metrics, SyncMetrics};
use greenlight::traffic::{RuntimeAddr, SyncSettings, SyncTarget, Syncer};
use support::consul_double::ConsulDouble;
use support::haproxy::{Haproxy, BACKEND};
use support::{eventually, free_port, http, Proc};

const BLUE: &str = "haproxy/checkout/weights/blue";
const GREEN: &str = "haproxy/checkout/weights/green";
const DEADLINE: Duration = Duration::from_secs(20);

fn policy_text(with_backend: bool) -> String {
    let backend = if with_backend {
        format!(
            "haproxy_backend = {{ backend = \"{BACKEND}\", blue = \"blue\", green = \"green\" }}\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"api = "checkout"

[traffic]
consul_keys = {{ blue = "{BLUE}", green = "{GREEN}" }}
{backend}
[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(haproxy_server_http_responses_total{{proxy="{BACKEND}",server="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(haproxy_server_http_responses_total{{proxy="{BACKEND}",server="{{color}}",code="5xx"}}[{{interval}}]))'
"#
    )
}

fn targets() -> Vec<SyncTarget> {
    let policy = Policy::from_toml(&policy_text(true), Path::new("checkout.toml"), None)
        .expect("valid test policy");
    SyncTarget::from_policies(&[policy]).expect("policy maps to HAProxy")
}

fn settings() -> SyncSettings {
    SyncSettings {
        repair_interval: Duration::from_millis(300),
        watch_wait: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        node_timeout: Duration::from_secs(2),
        once_attempts: 2,
    }
}

fn client(d: &ConsulDouble) -> ConsulClient {
    ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap()
}

/// Sync running as a library task; stops (and is awaited) on drop of the returned guard.
struct Running {
    metrics: Arc<SyncMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(d: &ConsulDouble, nodes: &[&Haproxy]) -> Running {
        let nodes = nodes
            .iter()
            .map(|h| h.tcp_url().parse::<RuntimeAddr>().unwrap())
            .collect();
        let syncer = Syncer::new(client(d), nodes, targets(), settings());
        let metrics = syncer.metrics();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(syncer.run(async move {
            let _ = rx.await;
        }));
        Running {
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The value of one sample, 0 when absent.
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.metrics.encode(), name, labels)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("sync stops after shutdown")
                .unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// `(blue, green)` current weights read from HAProxy with `get weight`.
fn live(h: &Haproxy) -> (u32, u32) {
    let get = |server: &str| -> u32 {
        let reply = h.runtime(&format!("get weight {BACKEND}/{server}"));
        reply
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("unexpected get weight reply {reply:?}"))
    };
    (get("blue"), get("green"))
}

/// Blocks (off the async workers) until every node shows `want`.
fn wait_weights(nodes: &[&Haproxy], want: (u32, u32)) {
    tokio::task::block_in_place(|| {
        eventually(&format!("HAProxy weights {want:?}"), DEADLINE, || {
            nodes.iter().all(|h| live(h) == want).then_some(())
        })
    })
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    tokio::task::block_in_place(|| wait_until_blocking(what, f))
}

fn wait_until_blocking(what: &str, mut f: impl FnMut() -> bool) {
    eventually(what, DEADLINE, || f().then_some(()))
}

fn split(h: &Haproxy, n: usize) -> (usize, usize) {
    let counts = tokio::task::block_in_place(|| h.split(n));
    (
        counts.get("blue").copied().unwrap_or(0),
        counts.get("green").copied().unwrap_or(0),
    )
}

async fn set_both(d: &ConsulDouble, ops: &[TxnOp]) {
    client(d).txn(ops).await.expect("txn on the weight keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_written_to_consul_reach_every_node_and_split_the_traffic() {
    let d = ConsulDouble::start();
    let a = Haproxy::start();
    let b = Haproxy::start();
    d.put(BLUE, b"90");
    d.put(GREEN, b"10");
    let sync = Running::start(&d, &[&a, &b]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_metrics(listener, sync.metrics.clone(), async move {
        let _ = stopped.await;
    }));

    wait_weights(&[&a, &b], (90, 10));
    let (blue, green) = split(&a, 200);
    assert!(
        (15..=25).contains(&green) && blue + green == 200,
        "node a split {blue}/{green} for weights 90/10"
    );

    // Both colours move together in one transaction, as the progressor writes them.
    set_both(&d, &[TxnOp::set(BLUE, b"0"), TxnOp::set(GREEN, b"100")]).await;
    wait_weights(&[&a, &b], (0, 100));
    assert_eq!(split(&a, 20), (0, 20));
    assert_eq!(split(&b, 20), (0, 20));

    let (status, text) =
        tokio::task::block_in_place(|| http(metrics_addr, "GET", "/metrics", b"")).unwrap();
    assert_eq!(status, 200);
    for h in [&a, &b] {
        let node = h.tcp_url();
        let labels = |color| {
            [
                ("api", "checkout"),
                ("node", node.as_str()),
                ("color", color),
            ]
        };
        assert_eq!(
            sample(&text, "greenlight_sync_applied_weight", &labels("green")),
            100.0
        );
        assert_eq!(
            sample(&text, "greenlight_sync_applied_weight", &labels("blue")),
            0.0
        );
    }
    let last = sample(
        &text,
        "greenlight_sync_last_success_timestamp_seconds",
        &[("api", "checkout")],
    );
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        now - last < 600.0 && last <= now + 1.0,
        "last success {last}, now {now}"
    );
    assert_eq!(
        sample(&text, "greenlight_sync_apply_errors_total", &[]),
        0.0
    );

    sync.stop().await;
    let _ = stop_http.send(());
    server.await.unwrap().unwrap();
}

/// Kills HAProxy and starts it again with the same configuration and ports.
fn restart(h: &mut Haproxy, while_down: impl FnOnce()) {
    h.proc.kill();
    while_down();
    let mut cmd = Command::new(support::binary("haproxy"));
    cmd.arg("-db")
        .arg("-f")
        .arg(h.dir.path().join("haproxy.cfg"));
    h.proc = Proc::spawn("haproxy", cmd, h.dir.path());
    let until = Instant::now() + DEADLINE;
    loop {
        h.proc.assert_running();
        let up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.runtime("show info")))
            .is_ok_and(|r| r.contains("Name: HAProxy"));
        if up {
            return;
        }
        assert!(Instant::now() < until, "restarted HAProxy not ready");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_haproxy_gets_the_consul_weights_back() {
    let d = ConsulDouble::start();
    let mut h = Haproxy::start();
    d.put(BLUE, b"80");
    d.put(GREEN, b"20");
    let sync = Running::start(&d, &[&h]);
    wait_weights(&[&h], (80, 20));

    // Down long enough for sync to notice (a failed pass), then back with its configured
    // weights.
    tokio::task::block_in_place(|| {
        restart(&mut h, || {
            wait_until_blocking("sync notices the node is down", || {
                sync.sample("greenlight_sync_apply_errors_total", &[("api", "checkout")]) >= 1.0
            })
        })
    });
    wait_weights(&[&h], (80, 20));
    let node = h.tcp_url();
    wait_until("a drift repair is counted", || {
        sync.sample(
            "greenlight_sync_drift_repairs_total",
            &[("api", "checkout"), ("node", node.as_str())],
        ) >= 1.0
    });
    let (blue, green) = split(&h, 100);
    assert!(
        (10..=30).contains(&green),
        "split {blue}/{green} after repair"
    );
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_retries_while_consul_is_down_and_catches_up() {
    let d = ConsulDouble::start();
    let h = Haproxy::start();
    d.put(BLUE, b"90");
    d.put(GREEN, b"10");
    let sync = Running::start(&d, &[&h]);
    wait_weights(&[&h], (90, 10));

    d.set_reachable(false);
    // Changed while sync cannot see Consul (as another agent would have replicated it).
    d.put(BLUE, b"50");
    d.put(GREEN, b"50");
    wait_until("sync fails to read Consul and keeps trying", || {
        sync.sample(
            "greenlight_sync_read_errors_total",
            &[("api", "checkout"), ("kind", "unreachable")],
        ) >= 2.0
    });
    assert!(d.refused_connections() > 0);
    assert_eq!(live(&h), (90, 10), "HAProxy changed while Consul was down");

    d.set_reachable(true);
    wait_weights(&[&h], (50, 50));
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_garbage_key_changes_neither_colour() {
    let d = ConsulDouble::start();
    let h = Haproxy::start();
    d.put(BLUE, b"90");
    d.put(GREEN, b"10");
    let sync = Running::start(&d, &[&h]);
    wait_weights(&[&h], (90, 10));
    let errors = |kind: &str| {
        sync.sample(
            "greenlight_sync_read_errors_total",
            &[("api", "checkout"), ("kind", kind)],
        )
    };

    // A valid blue next to a garbage green: blue must not move alone.
    set_both(&d, &[TxnOp::set(BLUE, b"50"), TxnOp::set(GREEN, b"ten")]).await;
    wait_until("sync sees the garbage green key", || {
        errors("invalid") >= 1.0
    });
    assert_eq!(live(&h), (90, 10));

    // Green deleted.
    set_both(&d, &[TxnOp::set(BLUE, b"40"), TxnOp::delete(GREEN)]).await;
    wait_until("sync sees the missing green key", || {
        errors("missing") >= 1.0
    });
    assert_eq!(live(&h), (90, 10));

    // Beyond HAProxy's range: setting blue first would leave green behind.
    let invalid = errors("invalid");
    set_both(&d, &[TxnOp::set(BLUE, b"40"), TxnOp::set(GREEN, b"300")]).await;
    wait_until("sync refuses a weight above 256", || {
        errors("invalid") > invalid
    });
    assert_eq!(live(&h), (90, 10));

    set_both(&d, &[TxnOp::set(GREEN, b"60")]).await;
    wait_weights(&[&h], (40, 60));
    sync.stop().await;
}

/// A config file and policy directory for the binary.
fn write_config(dir: &Path, d: &ConsulDouble, nodes: &[String], with_backend: bool) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("checkout.toml"), policy_text(with_backend)).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let nodes: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    let config = dir.join("greenlight.toml");
    std::fs::write(
        &config,
        format!(
            "policies_dir = \"policies\"\n\n[consul]\nurl = \"{}\"\n\n[haproxy]\nnodes = [{}]\n\n\
             [sync]\nlisten = \"{listen}\"\nrepair_interval = \"500ms\"\n",
            d.url(),
            nodes.join(", ")
        ),
    )
    .unwrap();
    config
}

fn sync_once(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args(["sync", "--once", "--config"])
        .arg(config)
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .expect("run greenlight sync --once");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_0_when_every_node_matches_and_1_otherwise() {
    let d = ConsulDouble::start();
    let h = Haproxy::start();
    let dir = tempfile::tempdir().unwrap();
    d.put(BLUE, b"70");
    d.put(GREEN, b"30");

    let config = write_config(dir.path(), &d, &[h.tcp_url(), h.unix_url()], true);
    let (code, text) = tokio::task::block_in_place(|| sync_once(&config));
    assert_eq!(code, 0, "{text}");
    assert_eq!(live(&h), (70, 30));

    d.put(GREEN, b"thirty-five");
    d.put(BLUE, b"65");
    let (code, text) = tokio::task::block_in_place(|| sync_once(&config));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not an integer weight"), "{text}");
    assert_eq!(live(&h), (70, 30), "a partial split was applied");

    d.put(GREEN, b"35");
    let down = format!("tcp://127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), &d, &[h.tcp_url(), down.clone()], true);
    let (code, text) = tokio::task::block_in_place(|| sync_once(&config));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&down), "{text}");
    // The reachable node was still brought in line.
    assert_eq!(live(&h), (65, 35));

    let config = write_config(dir.path(), &d, &[h.tcp_url()], false);
    let (code, text) = tokio::task::block_in_place(|| sync_once(&config));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("traffic.haproxy_backend"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_metrics_and_stops_on_sigterm() {
    let d = ConsulDouble::start();
    let h = Haproxy::start();
    let dir = tempfile::tempdir().unwrap();
    d.put(BLUE, b"75");
    d.put(GREEN, b"25");
    let config = write_config(dir.path(), &d, &[h.tcp_url()], true);
    let text = std::fs::read_to_string(&config).unwrap();
    let listen: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .map(|v| v.trim_matches('"').parse().unwrap())
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenlight"));
    cmd.args(["sync", "--config"])
        .arg(&config)
        .env_remove("CONSUL_HTTP_TOKEN");
    let mut proc = Proc::spawn("greenlight-sync", cmd, dir.path());
    tokio::task::block_in_place(|| support::wait_ready(&mut proc, listen, "/healthz", DEADLINE));
    wait_weights(&[&h], (75, 25));
    let node = h.tcp_url();
    wait_until("the applied weight is exported", || {
        let Ok((200, text)) = http(listen, "GET", "/metrics", b"") else {
            return false;
        };
        sample(
            &text,
            "greenlight_sync_applied_weight",
            &[("node", node.as_str()), ("color", "green")],
        ) == 25.0
    });
    let status = tokio::task::block_in_place(|| proc.terminate(Duration::from_secs(10)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", proc.output());
}

/// A relay in front of one HAProxy's Runtime API that, once armed, forwards the next `set
/// weight` command and then holds the answer past sync's node timeout: the write lands, the
/// writer sees a failure.
struct LossyRelay {
    addr: SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

impl LossyRelay {
    fn start(upstream: SocketAddr, hold: Duration) -> LossyRelay {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, d) = (armed.clone(), dropped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (a, d) = (a.clone(), d.clone());
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let Ok(mut up) = std::net::TcpStream::connect(upstream) else {
                        return;
                    };
                    let _ = up.write_all(line.as_bytes());
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer);
                    if line.contains("set weight") && a.swap(false, Ordering::SeqCst) {
                        std::thread::sleep(hold);
                        d.store(true, Ordering::SeqCst);
                        return;
                    }
                    let mut client = client;
                    let _ = client.write_all(&answer);
                });
            }
        });
        LossyRelay {
            addr,
            armed,
            dropped,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_repair_whose_answer_is_lost_is_still_counted() {
    use std::sync::atomic::Ordering;
    let d = ConsulDouble::start();
    let h = Haproxy::start();
    d.put(BLUE, b"80");
    d.put(GREEN, b"20");
    // Held longer than the node timeout (2 s): the repair's write fails for sync.
    let relay = LossyRelay::start(h.admin, Duration::from_secs(3));
    let node: RuntimeAddr = format!("tcp://{}", relay.addr).parse().unwrap();
    let syncer = Syncer::new(client(&d), vec![node.clone()], targets(), settings());
    let metrics = syncer.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(syncer.run(async move {
        let _ = stopped.await;
    }));
    wait_weights(&[&h], (80, 20));

    // The node drifts (as after a reload) and the repair's answer is lost.
    relay.armed.store(true, Ordering::SeqCst);
    h.runtime(&format!("set weight {BACKEND}/blue 100"));
    h.runtime(&format!("set weight {BACKEND}/green 0"));
    wait_until("the repair's answer is held", || {
        relay.dropped.load(Ordering::SeqCst)
    });
    wait_weights(&[&h], (80, 20));
    let label = node.to_string();
    wait_until("the repair is counted once a pass confirms it", || {
        sample(
            &metrics.encode(),
            "greenlight_sync_drift_repairs_total",
            &[("api", "checkout"), ("node", label.as_str())],
        ) >= 1.0
    });
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("sync stops after shutdown")
        .unwrap();
}
