//! Benchmark of one daemon evaluation cycle: `greenlight run --once` over 1,000 policies against a
//! real VictoriaMetrics and the Consul double; wall time, CPU time and peak RSS of the daemon
//! process, and the PromQL queries and Consul requests it made. Then the lower bound, in the
//! same run: one more cycle through a recording proxy, whose queries a tight client sends again
//! at the same concurrency (`cycle/lower_bound.rs`).
//!
//! Knobs (environment): `GREENLIGHT_BENCH_APIS` (default 1000), `GREENLIGHT_BENCH_STEADY` (steady
//! cycles at the default concurrency, default 3), `GREENLIGHT_BENCH_CONCURRENCY` (extra
//! `max_concurrency` values, comma-separated, default `8,128`; empty for none),
//! `GREENLIGHT_BENCH_KEEP=1` (keep the working directory with the daemon's logs),
//! `GREENLIGHT_BENCH_LOG` (the daemon's log filter, default `info`).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "cycle/lower_bound.rs"]
mod lower_bound;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenlight::metrics::aligned_end;
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, Poisson};
use serde_json::Value;
use support::consul_double::ConsulDouble;
use support::victoria::{encode, Victoria};
use support::{eventually, http};

/// The policies' evaluation interval.
const INTERVAL: Duration = Duration::from_secs(30);
/// The daemon's default `latency_offset` for VictoriaMetrics.
const LATENCY_OFFSET: Duration = Duration::from_secs(30);
/// Spacing of the synthetic samples (a usual scrape interval).
const SCRAPE_SECS: i64 = 15;
/// History imported before the bench starts.
const HISTORY_SECS: i64 = 3600;
/// Samples also cover this long after the start, so that every cycle finds fresh data without
/// a writer competing with the daemon for the CPU.
const AHEAD_SECS: i64 = 1500;
/// Histogram bucket bounds and the share of requests at or under each.
const BUCKETS: [(&str, f64); 5] = [
    ("0.1", 0.6),
    ("0.25", 0.9),
    ("0.5", 0.97),
    ("1", 0.995),
    ("+Inf", 1.0),
];
/// APIs per import request.
const IMPORT_BATCH: usize = 50;
/// A cycle still running after this is killed (the bench reports it as failed).
const CYCLE_DEADLINE: Duration = Duration::from_secs(300);
/// The default of `max_concurrency` (left out of the config for the default runs).
const DEFAULT_CONCURRENCY: usize = 32;

const POLICY: &str = r#"
api = "@API@"
interval = "30s"
min_step_duration = "10m"

[traffic]
consul_keys = { blue = "haproxy/@API@/weights/blue", green = "haproxy/@API@/weights/green" }

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{api="{api}",cluster="{color}"}[{interval}]))'
errors = 'sum(increase(http_requests_total{api="{api}",cluster="{color}",code="500"}[{interval}]))'
tolerance = 0.2
min_errors = 5

[[check]]
name = "latency"
kind = "latency_histogram"
buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{api="{api}",cluster="{color}"}[{interval}]))'
edges = ["0.25", "1"]
tolerance = 0.2

[[check]]
name = "p99-guard"
kind = "threshold"
query = 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{api="{api}",cluster="{color}"}[{interval}])))'
max = 1.5
failures = 3
"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn api_name(i: usize) -> String {
    format!("api{i:04}")
}

/// One series as a line of VictoriaMetrics' JSON import format.
fn json_line(name: &str, labels: &[(&str, &str)], timestamps: &[i64], values: &[f64]) -> String {
    let mut s = String::with_capacity(32 + timestamps.len() * 24);
    let _ = write!(s, r#"{{"metric":{{"__name__":"{name}""#);
    for (k, v) in labels {
        let _ = write!(s, r#","{k}":"{v}""#);
    }
    s.push_str(r#"},"values":["#);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{v}");
    }
    s.push_str(r#"],"timestamps":["#);
    for (i, t) in timestamps.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{t}");
    }
    s.push_str("]}\n");
    s
}

/// The series of one API and colour: requests by code (200, 500) and the latency histogram.
/// Per scrape: Poisson requests, binomial errors (0.5 %), multinomial latency buckets, the same
/// for both colours (a healthy canary).
fn api_series(api: &str, index: usize, colour: &str, seed: u64, timestamps: &[i64]) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let per_scrape = (20.0 + (index % 30) as f64 * 5.0) * SCRAPE_SECS as f64;
    let arrivals = Poisson::new(per_scrape).expect("positive rate");
    let (mut ok, mut bad) = (0u64, 0u64);
    let mut ok_values = Vec::with_capacity(timestamps.len());
    let mut bad_values = Vec::with_capacity(timestamps.len());
    // Requests so far whose latency falls in each bucket (not cumulative over `le`).
    let mut in_bucket = [0u64; BUCKETS.len()];
    let mut buckets: Vec<Vec<f64>> = vec![Vec::with_capacity(timestamps.len()); BUCKETS.len()];
    for _ in timestamps {
        let n = arrivals.sample(&mut rng) as u64;
        let errors = Binomial::new(n, 0.005)
            .expect("p in [0, 1]")
            .sample(&mut rng);
        ok += n - errors;
        bad += errors;
        ok_values.push(ok as f64);
        bad_values.push(bad as f64);
        // Split the scrape's requests over the buckets: each bucket takes a binomial share of
        // the requests not in a lower one.
        let (mut left, mut below) = (n, 0.0);
        for (b, (_, share)) in BUCKETS.iter().enumerate() {
            let here = if b + 1 == BUCKETS.len() {
                left
            } else {
                let p = ((share - below) / (1.0 - below)).clamp(0.0, 1.0);
                Binomial::new(left, p)
                    .expect("p in [0, 1]")
                    .sample(&mut rng)
            };
            left -= here;
            below = *share;
            in_bucket[b] += here;
        }
        // A histogram bucket counts every request at or under its bound.
        let mut at_or_under = 0;
        for (b, values) in buckets.iter_mut().enumerate() {
            at_or_under += in_bucket[b];
            values.push(at_or_under as f64);
        }
    }
    let mut out = String::new();
    out += &json_line(
        "http_requests_total",
        &[("api", api), ("cluster", colour), ("code", "200")],
        timestamps,
        &ok_values,
    );
    out += &json_line(
        "http_requests_total",
        &[("api", api), ("cluster", colour), ("code", "500")],
        timestamps,
        &bad_values,
    );
    for (b, (le, _)) in BUCKETS.iter().enumerate() {
        out += &json_line(
            "http_request_duration_seconds_bucket",
            &[("api", api), ("cluster", colour), ("le", le)],
            timestamps,
            &buckets[b],
        );
    }
    out
}

/// `GET /api/v1/query` at `time`; the single value of the answer.
fn query_value(vm: &Victoria, query: &str, time: i64) -> Option<f64> {
    let path = format!(
        "/api/v1/query?query={}&time={time}&nocache=1",
        encode(query)
    );
    let (status, body) = http(vm.addr, "GET", &path, b"").ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Imports `HISTORY_SECS` of samples before `t0` and `AHEAD_SECS` after it for `apis` APIs, then
/// waits until every sample is searchable. Returns the number of samples.
fn import(vm: &Victoria, apis: usize, t0: i64) -> usize {
    let timestamps: Vec<i64> = (-HISTORY_SECS..=AHEAD_SECS)
        .step_by(SCRAPE_SECS as usize)
        .map(|s| (t0 + s) * 1000)
        .collect();
    let mut first = 0;
    while first < apis {
        let last = (first + IMPORT_BATCH).min(apis);
        let mut body = String::new();
        for i in first..last {
            let api = api_name(i);
            for (c, colour) in ["blue", "green"].iter().enumerate() {
                body += &api_series(&api, i, colour, (i * 2 + c) as u64, &timestamps);
            }
        }
        let (status, text) =
            http(vm.addr, "POST", "/api/v1/import", body.as_bytes()).expect("import");
        assert_eq!(status, 204, "import answered {status}: {text}");
        first = last;
    }
    let series = apis * 2 * (2 + BUCKETS.len());
    let samples = series * timestamps.len();
    let end = t0 + AHEAD_SECS;
    let window = HISTORY_SECS + AHEAD_SECS + 60;
    eventually(
        "every imported sample to be searchable",
        Duration::from_secs(120),
        || {
            vm.force_flush();
            let n = query_value(
                vm,
                &format!(
                    r#"sum(count_over_time({{__name__=~"http_requests_total|http_request_duration_seconds_bucket"}}[{window}s]))"#
                ),
                end,
            )?;
            (n as usize == samples).then_some(())
        },
    );
    samples
}

/// A counter of VictoriaMetrics' own `/metrics`.
fn vm_counter(vm: &Victoria, line_prefix: &str) -> f64 {
    let (_, body) = http(vm.addr, "GET", "/metrics", b"").expect("VictoriaMetrics /metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Instant queries answered so far. VictoriaMetrics refreshes `/metrics` about once a second,
/// so this reads until two reads 1.1 s apart agree.
fn vm_queries(vm: &Victoria) -> u64 {
    let read = || vm_counter(vm, r#"vm_http_requests_total{path="/api/v1/query"} "#) as u64;
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(1100));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// User + system CPU time of a process so far, from `/proc/<pid>/stat`.
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command: state is index 0, utime 11, stime 12.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// User + system CPU time of this process (the Consul double runs in one of its threads).
fn self_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// What one `greenlight run --once` cost.
struct Cycle {
    label: String,
    concurrency: usize,
    wall: Duration,
    user: Duration,
    sys: Duration,
    max_rss_kib: u64,
    queries: u64,
    consul_requests: u64,
    vm_cpu: Duration,
    consul_cpu: Duration,
    exit: String,
    /// From the start of the process to the leader lock (policies loaded), and from there to
    /// the lock's release (every policy evaluated), from the daemon's log.
    startup: Option<Duration>,
    evaluation: Option<Duration>,
    /// The machine's 1-minute load average when the cycle started.
    load: f64,
    /// Last decision of each API, by action.
    actions: BTreeMap<String, usize>,
    /// APIs whose last decision held on unusable metrics.
    unusable: usize,
}

/// Runs `greenlight --config config run --once` and measures it with `wait4`.
fn run_once(
    dir: &Path,
    config: &Path,
    label: &str,
    concurrency: usize,
    vm: &Victoria,
    consul: &ConsulDouble,
) -> Cycle {
    let queries_before = vm_queries(vm);
    let consul_before = consul.requests();
    let vm_cpu_before = proc_cpu(vm.proc.pid());
    let self_before = self_cpu();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let log = std::fs::File::create(dir.join(format!("{label}.log"))).expect("daemon log");
    let started = Instant::now();
    let spawned_at = Timestamp::now();
    let child = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(["run", "--once", "--instance", "bench"])
        .env(
            "RUST_LOG",
            std::env::var("GREENLIGHT_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("start greenlight");
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + CYCLE_DEADLINE;
            while !done.load(Ordering::SeqCst) {
                if Instant::now() > until {
                    // Not reaped yet, so the PID is still this child's.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut status: libc::c_int = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4 failed: {err}"
        );
    }
    let wall = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    // Reaped by wait4 above; the handle must not wait again.
    std::mem::forget(child);
    let exit = if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else {
        format!("signal {}", libc::WTERMSIG(status))
    };
    let log = std::fs::read_to_string(dir.join(format!("{label}.log"))).unwrap_or_default();
    let logged = |what: &str| -> Option<Timestamp> {
        let line = log.lines().find(|l| l.contains(what))?;
        line.split_whitespace().next()?.parse().ok()
    };
    let leading = logged("Leading: evaluating policies.");
    let released = logged("Released lock.");
    let span = |from: Option<Timestamp>, to: Option<Timestamp>| {
        Duration::try_from(from?.duration_until(to?)).ok()
    };
    let consul_cpu = self_cpu().saturating_sub(self_before);
    let vm_cpu = proc_cpu(vm.proc.pid()).saturating_sub(vm_cpu_before);
    let queries = vm_queries(vm) - queries_before;
    let consul_requests = consul.requests() - consul_before;
    Cycle {
        label: label.to_string(),
        concurrency,
        wall,
        user: tv(usage.ru_utime),
        sys: tv(usage.ru_stime),
        // Linux reports kibibytes.
        max_rss_kib: usage.ru_maxrss as u64,
        queries,
        consul_requests,
        vm_cpu,
        consul_cpu,
        exit,
        startup: span(Some(spawned_at), leading),
        evaluation: span(leading, released),
        load,
        actions: BTreeMap::new(),
        unusable: 0,
    }
}

/// The stored states: last decision by action, APIs held on unusable data, newest window end.
fn states(consul: &ConsulDouble, apis: usize) -> (BTreeMap<String, usize>, usize, Option<i64>) {
    let mut actions = BTreeMap::new();
    let mut unusable = 0;
    let mut newest: Option<i64> = None;
    for i in 0..apis {
        let Some(raw) = consul.value(&format!("greenlight/state/{}", api_name(i))) else {
            *actions.entry("no state".to_string()).or_insert(0) += 1;
            continue;
        };
        let state: Value = serde_json::from_slice(&raw).expect("state is JSON");
        let last = &Some(state["last_decision"].clone()).filter(|r| !r.is_null());
        let action = last
            .as_ref()
            .and_then(|r| r["action"].as_str())
            .unwrap_or("none")
            .to_string();
        if last
            .as_ref()
            .and_then(|r| r["reason"].as_str())
            .is_some_and(|r| r.contains("unusable") || r.contains("no data"))
        {
            unusable += 1;
        }
        *actions.entry(action).or_insert(0) += 1;
        let end = state["last_window_end"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| t.as_second());
        newest = newest.max(end);
    }
    (actions, unusable, newest)
}

/// Sleeps until the daemon's aligned window end moves past `last` (seconds).
fn wait_for_window_after(last: Option<i64>) {
    let Some(last) = last else { return };
    loop {
        let end = aligned_end(Timestamp::now(), INTERVAL, LATENCY_OFFSET).as_second();
        if end > last {
            return;
        }
        let next = last + INTERVAL.as_secs() as i64 + LATENCY_OFFSET.as_secs() as i64;
        let wait_ms = (next * 1000 - Timestamp::now().as_millisecond()).clamp(0, 60_000) + 200;
        std::thread::sleep(Duration::from_millis(wait_ms as u64));
    }
}

/// A daemon config: `c` APIs evaluated at once, `batch` queries per batched query (default
/// when `None`; 1 sends each query alone).
fn write_config(
    dir: &Path,
    name: &str,
    metrics: &str,
    consul: &ConsulDouble,
    c: Option<usize>,
    batch: Option<usize>,
) {
    let concurrency = c.map_or(String::new(), |c| format!("max_concurrency = {c}\n"));
    let batch = batch.map_or(String::new(), |b| format!("batch_max = {b}\n"));
    let text = format!(
        r#"policies_dir = "policies"
listen = "127.0.0.1:{port}"
state_dir = "state"
{concurrency}
[metrics]
url = "{vm}"
kind = "victoriametrics"
{batch}
[consul]
url = "{consul}"

[haproxy]
nodes = []
"#,
        port = support::free_port(),
        vm = metrics,
        consul = consul.url(),
    );
    std::fs::write(dir.join(name), text).expect("write config");
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn table(cycles: &[Cycle]) -> String {
    let mut out = String::new();
    out.push_str(
        "| cycle | max_concurrency | wall s | startup s | evaluation s | CPU s (user+sys) | peak RSS MiB | PromQL queries | Consul requests | VictoriaMetrics CPU s | Consul double CPU s | load before | exit | last decisions | held on unusable data |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cycles {
        let actions: Vec<String> = c.actions.iter().map(|(a, n)| format!("{a} {n}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({} + {}) | {:.1} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
            c.label,
            c.concurrency,
            secs(c.wall),
            c.startup.map_or("?".into(), secs),
            c.evaluation.map_or("?".into(), secs),
            secs(c.user + c.sys),
            secs(c.user),
            secs(c.sys),
            c.max_rss_kib as f64 / 1024.0,
            c.queries,
            c.consul_requests,
            secs(c.vm_cpu),
            secs(c.consul_cpu),
            c.load,
            c.exit,
            actions.join(", "),
            c.unusable,
        );
    }
    out
}

/// `batch_max` of the batched cycles.
const BATCH: usize = 256;

fn main() {
    let apis: usize = env_or("GREENLIGHT_BENCH_APIS", 1000);
    let steady: usize = env_or("GREENLIGHT_BENCH_STEADY", 3);
    let extra: Vec<usize> = std::env::var("GREENLIGHT_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "8,128".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let keep = std::env::var("GREENLIGHT_BENCH_KEEP").is_ok_and(|v| v == "1");
    let vm = Victoria::start();
    let consul = ConsulDouble::start();

    let t0 = Timestamp::now().as_second() / SCRAPE_SECS * SCRAPE_SECS;
    let t = Instant::now();
    let samples = import(&vm, apis, t0);
    eprintln!(
        "Imported {samples} samples ({} series) in {:.1} s.",
        apis * 2 * (2 + BUCKETS.len()),
        t.elapsed().as_secs_f64()
    );

    std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
    for i in 0..apis {
        let api = api_name(i);
        std::fs::write(
            dir.path().join(format!("policies/{api}.toml")),
            POLICY.replace("@API@", &api),
        )
        .expect("write policy");
        consul.put(&format!("haproxy/{api}/weights/blue"), b"100");
        consul.put(&format!("haproxy/{api}/weights/green"), b"0");
    }
    write_config(
        dir.path(),
        "default.toml",
        &vm.url(),
        &consul,
        None,
        Some(BATCH),
    );
    write_config(
        dir.path(),
        "unbatched.toml",
        &vm.url(),
        &consul,
        None,
        Some(1),
    );

    let mut plan: Vec<(String, String, usize)> = vec![(
        "1 (creates states)".into(),
        "default.toml".into(),
        DEFAULT_CONCURRENCY,
    )];
    for k in 0..steady {
        plan.push((
            format!("{} (steady)", k + 2),
            "default.toml".into(),
            DEFAULT_CONCURRENCY,
        ));
    }
    for k in 0..2 {
        plan.push((
            format!("unbatched-{} (steady)", k + 1),
            "unbatched.toml".into(),
            DEFAULT_CONCURRENCY,
        ));
    }
    for c in &extra {
        let name = format!("c{c}.toml");
        write_config(dir.path(), &name, &vm.url(), &consul, Some(*c), Some(BATCH));
        for k in 0..2 {
            plan.push((format!("c{c}-{} (steady)", k + 1), name.clone(), *c));
        }
    }

    let mut cycles = Vec::new();
    let mut last_end = None;
    for (label, config, concurrency) in plan {
        wait_for_window_after(last_end);
        let window = aligned_end(Timestamp::now(), INTERVAL, LATENCY_OFFSET).as_second();
        if window > t0 + AHEAD_SECS - 60 {
            eprintln!("Warning: past the imported samples; later cycles see stale data.");
        }
        let config = dir.path().join(config);
        let mut cycle = run_once(dir.path(), &config, &label, concurrency, &vm, &consul);
        let (actions, unusable, newest) = states(&consul, apis);
        cycle.actions = actions;
        cycle.unusable = unusable;
        last_end = newest.max(Some(window));
        eprintln!(
            "cycle {label}: {} s wall, {} s CPU, {:.1} MiB, {} queries, {}",
            secs(cycle.wall),
            secs(cycle.user + cycle.sys),
            cycle.max_rss_kib as f64 / 1024.0,
            cycle.queries,
            cycle.exit
        );
        cycles.push(cycle);
    }

    // The lower bounds: one more cycle through a recording proxy (not timed), then its queries
    // again from a tight client at the default concurrency; once with every query alone (the
    // bound of the per-API queries), once batched (the bound of the queries the daemon sends).
    let mut bounds = Vec::new();
    for (what, batch) in [("per-API", Some(1)), ("batched", Some(BATCH))] {
        let recorder = lower_bound::Recorder::start(&vm.url());
        let name = format!("recorded-{what}.toml");
        write_config(dir.path(), &name, &recorder.url, &consul, None, batch);
        wait_for_window_after(last_end);
        let recorded_cycle = run_once(
            dir.path(),
            &dir.path().join(&name),
            &format!("recorded {what}"),
            DEFAULT_CONCURRENCY,
            &vm,
            &consul,
        );
        let (_, _, newest) = states(&consul, apis);
        last_end = newest.max(last_end);
        let recorded = recorder.take();
        let vm_before = proc_cpu(vm.proc.pid());
        let bound = lower_bound::replay(&vm.url(), &recorded, DEFAULT_CONCURRENCY);
        vm_queries(&vm);
        let bound_vm_cpu = proc_cpu(vm.proc.pid()).saturating_sub(vm_before);
        bounds.push((what, bound, bound_vm_cpu, recorded_cycle.exit));
    }
    let median = |batched: bool| {
        let mut eval: Vec<f64> = cycles
            .iter()
            .filter(|c| {
                c.label.starts_with("unbatched") != batched
                    && c.label.ends_with("(steady)")
                    && c.concurrency == DEFAULT_CONCURRENCY
            })
            .filter_map(|c| c.evaluation.map(|e| e.as_secs_f64()))
            .collect();
        eval.sort_by(f64::total_cmp);
        eval.get(eval.len() / 2).copied()
    };
    let ratio = |m: Option<f64>, bound: &lower_bound::Bound| {
        m.map_or("?".into(), |m| {
            format!("{m:.2} s, {:.2}×", m / bound.wall.as_secs_f64().max(1e-9))
        })
    };
    let (batched_median, unbatched_median) = (median(true), median(false));
    let mut bound_line = String::from(
        "Lower bounds, measured in the same run: the PromQL requests of one steady cycle \
         (recorded by a pass-through proxy in a cycle of its own) sent again by a tight client, \
         {DEFAULT_CONCURRENCY} groups at once and every request of a group at once.",
    )
    .replace("{DEFAULT_CONCURRENCY}", &DEFAULT_CONCURRENCY.to_string());
    for (what, bound, vm_cpu, exit) in &bounds {
        let median = if *what == "batched" {
            batched_median
        } else {
            unbatched_median
        };
        let _ =
            write!(
            bound_line,
            " {what}: {queries} requests ({exit}), {wall} s wall, {vm_cpu} s of VictoriaMetrics \
             CPU, {failed} failed; median steady evaluation {how} at the default concurrency: \
             {ratio} the bound.",
            queries = bound.queries,
            wall = secs(bound.wall),
            vm_cpu = secs(*vm_cpu),
            failed = bound.failed,
            how = if *what == "batched" { "batched" } else { "unbatched" },
            ratio = ratio(median, bound),
        );
    }
    eprintln!("{bound_line}");

    let table = table(&cycles);
    println!("\n{table}\n{bound_line}");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let report = format!(
        "# One evaluation cycle: {apis} policies\n\n\
         `cargo bench --bench cycle` at {date}; {cores} cores ({cpu}).\n\n\
         Each policy: consul_keys target, three checks (error_rate, latency_histogram with two \
         edges, threshold on p99), interval 30 s. VictoriaMetrics holds {samples} samples \
         ({series} series, one hour of history at 15 s). Each cycle is one \
         `greenlight run --once` in a new window; CPU time and peak RSS are the daemon \
         process's own (wait4), queries are VictoriaMetrics' `/api/v1/query` count. \
         Startup is process start to the leader lock (policies loaded), evaluation is the lock \
         held (every policy evaluated), both from the daemon's log. VictoriaMetrics, the Consul \
         double (a thread of the bench process) and the daemon share the machine's cores, so \
         their CPU columns together bound the wall time; `load before` is the 1-minute load \
         average as the cycle started (other work on the machine).\n\n\
         Cycles `unbatched-…` send every query alone (`batch_max = 1`), the others batch \
         (`batch_max = 256`; batching is off by default). Targets: evaluation < 5 s at the default concurrency \
         ({DEFAULT_CONCURRENCY}) and ≤ 1.3× the lower bound; RSS ≤ 128 MiB at 10,000 APIs.\n\n\
         {table}\n{bound_line}\n",
        date = Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        series = apis * 2 * (2 + BUCKETS.len()),
    );
    // The default size keeps its file; other sizes get their own.
    let name = if apis == 1000 {
        "cycle.md".to_string()
    } else {
        format!("cycle-{apis}.md")
    };
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench/results")
        .join(name);
    std::fs::create_dir_all(out.parent().expect("parent")).expect("results dir");
    std::fs::write(&out, report).expect("write results");
    eprintln!("Wrote {}.", out.display());
    if keep {
        eprintln!("Daemon logs kept in {}.", dir.keep().display());
    }
}
