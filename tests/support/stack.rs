//! The stack `greenlight run` works against in integration tests: the Consul double, a real
//! HAProxy, optionally a real VictoriaMetrics fed by a [`Feeder`] that routes real requests
//! through HAProxy, a temp dir with policies and daemon configs, and helpers to run the binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::consul_double::ConsulDouble;
use super::haproxy::Haproxy;
use super::victoria::{ImportSeries, Victoria};
use super::{eventually, free_port, http, Proc};

/// The state key of the `checkout` API.
pub const STATE_KEY: &str = "greenlight/state/checkout";

/// Evaluation interval of the policies below, and the latency offset of [`Stack::config`].
pub const INTERVAL: Duration = Duration::from_secs(2);
pub const LATENCY_OFFSET: Duration = Duration::from_secs(1);

/// A 2 s policy for `checkout` on the HAProxy backend, one error-rate check on the feeder's
/// counters.
pub const POLICY: &str = r#"
api = "checkout"
interval = "2s"
steps = [10, 50, 100]
min_step_duration = "2s"
min_green_requests_per_step = 20
false_rollback_rate = 0.01
warmup_intervals = 1
no_data_alert_after = "6s"

[traffic]
haproxy = { backend = "api_checkout", blue = "blue", green = "green" }

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{cluster="{color}"}[{interval}]))'
errors = 'sum(increase(http_requests_total{cluster="{color}",code="500"}[{interval}]))'
advance_max_rate = 0.05
min_errors = 3
"#;

/// [`POLICY`] with extra top-level lines (e.g. `alerts = ["oncall"]`, `auto_start = false`).
pub fn policy_with(top_level: &str) -> String {
    format!("{top_level}\n{POLICY}")
}

/// Error probability per colour used by the feeder; changeable during a test.
#[derive(Clone, Copy)]
pub struct ErrorRates {
    pub blue: f64,
    pub green: f64,
}

/// Sends requests through HAProxy and imports the per-colour counts into VictoriaMetrics.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    rates: Arc<Mutex<ErrorRates>>,
    served: Arc<Mutex<HashMap<String, u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    pub fn start(haproxy: &Haproxy, vm: &Victoria, rates: ErrorRates, seed: u64) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let rates = Arc::new(Mutex::new(rates));
        let served = Arc::new(Mutex::new(HashMap::new()));
        let app = haproxy.app;
        let vm_addr = vm.addr;
        let (stop2, rates2, served2) = (stop.clone(), rates.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            // Cumulative counters: (cluster, code) → count.
            let mut counters: HashMap<(String, &str), f64> = HashMap::new();
            for c in ["blue", "green"] {
                for code in ["200", "500"] {
                    counters.insert((c.to_string(), code), 0.0);
                }
            }
            let mut round = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let r = *rates2.lock().unwrap();
                for _ in 0..12 {
                    let Some(colour) = served_by(app) else {
                        continue;
                    };
                    *served2.lock().unwrap().entry(colour.clone()).or_insert(0) += 1;
                    let p = if colour == "green" { r.green } else { r.blue };
                    let code = if rng.random::<f64>() < p {
                        "500"
                    } else {
                        "200"
                    };
                    *counters.entry((colour, code)).or_insert(0.0) += 1.0;
                }
                round += 1;
                if round % 2 == 0 {
                    let now = jiff::Timestamp::now().as_millisecond();
                    let series: Vec<ImportSeries> = counters
                        .iter()
                        .map(|((c, code), v)| {
                            ImportSeries::new(
                                "http_requests_total",
                                &[("cluster", c.as_str()), ("code", code)],
                                vec![(now, *v)],
                            )
                        })
                        .collect();
                    import(vm_addr, &series);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Feeder {
            stop,
            rates,
            served,
            thread: Some(thread),
        }
    }

    /// Changes the error probability per colour from the next request on.
    pub fn set_rates(&self, rates: ErrorRates) {
        *self.rates.lock().unwrap() = rates;
    }

    pub fn reset_served(&self) {
        self.served.lock().unwrap().clear();
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn served_by(app: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&app, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: checkout\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-served-by")
            .then(|| value.trim().to_string())
    })
}

fn import(vm: SocketAddr, series: &[ImportSeries]) {
    let body: String = series
        .iter()
        .map(|s| {
            let labels: Vec<String> = s.labels[1..]
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            format!(
                "{}{{{}}} {} {}\n",
                s.labels[0].1,
                labels.join(","),
                s.samples[0].1,
                s.samples[0].0
            )
        })
        .collect();
    let _ = http(vm, "POST", "/api/v1/import/prometheus", body.as_bytes());
    let _ = http(vm, "GET", "/internal/force_flush", b"");
}

/// What one finished `greenlight` command did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics with both outputs unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Finished {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The servers of one test and the daemon's files.
pub struct Stack {
    pub consul: ConsulDouble,
    pub vm: Option<Victoria>,
    pub haproxy: Haproxy,
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Consul, VictoriaMetrics and HAProxy, with [`POLICY`] as `policies/checkout.toml`.
    pub fn start() -> Stack {
        Stack::start_with(POLICY, true)
    }

    /// Consul and HAProxy, VictoriaMetrics only with `vm`, and `policy` as
    /// `policies/checkout.toml` (none when empty).
    pub fn start_with(policy: &str, vm: bool) -> Stack {
        let consul = ConsulDouble::start();
        let vm = vm.then(Victoria::start);
        let haproxy = Haproxy::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        let stack = Stack {
            consul,
            vm,
            haproxy,
            dir,
        };
        if !policy.is_empty() {
            stack.write_policy("checkout", policy);
        }
        stack
    }

    /// The VictoriaMetrics of a stack started with one.
    pub fn vm(&self) -> &Victoria {
        self.vm
            .as_ref()
            .expect("stack started without VictoriaMetrics")
    }

    pub fn vm_mut(&mut self) -> &mut Victoria {
        self.vm
            .as_mut()
            .expect("stack started without VictoriaMetrics")
    }

    /// `policies/<name>.toml`.
    pub fn policy_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("policies/{name}.toml"))
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        std::fs::write(self.policy_path(name), text).unwrap();
    }

    /// Writes a daemon config whose HTTP server listens on `listen`; returns its path.
    pub fn config(&self, name: &str, listen: SocketAddr, metrics_url: &str) -> PathBuf {
        self.config_with(name, listen, metrics_url, "")
    }

    /// [`Stack::config`] followed by `extra` TOML (e.g. `[[alert]]` tables).
    pub fn config_with(
        &self,
        name: &str,
        listen: SocketAddr,
        metrics_url: &str,
        extra: &str,
    ) -> PathBuf {
        self.config_full(name, listen, metrics_url, &self.consul.url(), extra)
    }

    /// A config with every address given.
    pub fn config_full(
        &self,
        name: &str,
        listen: SocketAddr,
        metrics_url: &str,
        consul_url: &str,
        extra: &str,
    ) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        let text = format!(
            r#"
policies_dir = "policies"
listen = "{listen}"
state_dir = "state-{name}"
[metrics]
url = "{metrics_url}"
kind = "victoriametrics"
timeout = "1s"
latency_offset = "{offset}s"
max_staleness = "1m"
[consul]
url = "{consul_url}"
session_ttl = "10s"
lock_delay = "1s"
[haproxy]
nodes = ["{haproxy}"]
{extra}
"#,
            haproxy = self.haproxy.tcp_url(),
            offset = LATENCY_OFFSET.as_secs(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Changes one setting of a config [`Stack::config_full`] wrote: `from` (a whole `key =
    /// value` line of it) becomes `to`.
    pub fn edit_config(&self, config: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(config).unwrap();
        assert!(text.contains(from), "{from:?} not in {}", config.display());
        std::fs::write(config, text.replacen(from, to, 1)).unwrap();
    }

    /// Starts `greenlight --config <config> run --instance <name> <extra>` in the background.
    pub fn daemon(&self, name: &str, config: &Path, extra: &[&str]) -> Proc {
        self.spawn_daemon(name, config, extra, &[])
    }

    /// [`Stack::daemon`] with environment variables set (e.g. an alert channel's URL).
    pub fn daemon_with_env(&self, name: &str, config: &Path, env: &[(&str, &str)]) -> Proc {
        self.spawn_daemon(name, config, &[], env)
    }

    fn spawn_daemon(
        &self,
        name: &str,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenlight"));
        cmd.current_dir(self.dir.path())
            .arg("--config")
            .arg(config)
            .arg("run")
            .args(["--instance", name])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("CONSUL_HTTP_TOKEN")
            .envs(env.iter().copied());
        Proc::spawn(name, cmd, self.dir.path())
    }

    /// Runs `greenlight --config <config> <args>` to completion (killed and failing after
    /// 60 s), with `env` set and `CONSUL_HTTP_TOKEN` only if `env` sets it.
    pub fn greenlight(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Finished {
        let out = self.dir.path().join(format!("cli-{}.out", free_port()));
        let err = out.with_extension("err");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenlight"));
        cmd.current_dir(self.dir.path())
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("CONSUL_HTTP_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let mut child = cmd.spawn().expect("start greenlight");
        let until = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "greenlight {args:?} did not finish within 60 s; stderr:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Finished {
            status,
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// `greenlight run --once`, expected to succeed.
    pub fn run_once(&self, config: &Path) -> Finished {
        let done = self.greenlight(config, &["run", "--once"], &[]);
        done.expect_code(0);
        done
    }

    /// The stored state of `checkout`.
    pub fn state(&self) -> Option<Value> {
        self.state_of("checkout")
    }

    pub fn state_of(&self, api: &str) -> Option<Value> {
        self.consul.rollout_json(api)
    }

    pub fn wait_state(&self, what: &str, deadline: Duration, f: impl Fn(&Value) -> bool) -> Value {
        eventually(what, deadline, || self.state().filter(|s| f(s)))
    }

    /// Waits until `api`'s stored state satisfies `f`; returns it.
    pub fn wait_state_of(
        &self,
        what: &str,
        deadline: Duration,
        api: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, deadline, || self.state_of(api).filter(|s| f(s)))
    }

    /// Green's weight as HAProxy's Runtime API reports it.
    pub fn green_weight(&self) -> u32 {
        self.weight("green")
    }

    /// `colour`'s weight as HAProxy's Runtime API reports it.
    pub fn weight(&self, colour: &str) -> u32 {
        let reply = self
            .haproxy
            .runtime(&format!("get weight api_checkout/{colour}"));
        reply.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// A URL nothing listens on.
    pub fn unreachable_url() -> String {
        format!("http://127.0.0.1:{}", free_port())
    }
}

/// Waits until a `run --once` would evaluate a window after the last counted one in `state`.
pub fn wait_for_next_window(state: &Value) {
    let Some(last) = state["last_window_end"].as_str() else {
        return;
    };
    let last: jiff::Timestamp = last.parse().expect("last_window_end");
    let due = last + INTERVAL + LATENCY_OFFSET + Duration::from_millis(100);
    eventually(
        "the next evaluation window",
        Duration::from_secs(10),
        || (jiff::Timestamp::now() >= due).then_some(()),
    );
}

pub fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

pub fn step(s: &Value) -> u64 {
    s["step"].as_u64().unwrap_or(0)
}

pub fn revision(s: &Value) -> u64 {
    s["revision"].as_u64().unwrap_or(0)
}

/// The newest history record.
pub fn last_record(s: &Value) -> Value {
    s["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or(Value::Null)
}

pub fn actions(s: &Value) -> Vec<String> {
    s["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|r| r["action"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A listen address on a free port.
pub fn listen_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}
