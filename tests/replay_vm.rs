//! `greenlight replay` against a real VictoriaMetrics holding synthetic blue/green history.

mod support;

use std::path::Path;
use std::process::Command;

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution};
use support::victoria::{ImportSeries, Victoria};

const TICK_MS: i64 = 15_000;

const POLICY: &str = r#"
api = "shop"
interval = "1m"
steps = [5, 25, 50, 100]
min_step_duration = "10m"
min_green_requests_per_step = 1000
false_rollback_rate = 0.01

[traffic]
consul_keys = { blue = "w/blue", green = "w/green" }

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{app="shop",color="{color}"}[{interval}]))'
errors = 'sum(increase(http_errors_total{app="shop",color="{color}"}[{interval}]))'
tolerance = 0.2
min_errors = 5
"#;

/// Requests and errors counters of one colour, every 15 s over `[from, to]`; `error_rate(t)`
/// gives the error probability of the requests in the tick ending at t.
fn colour(
    color: &str,
    from: Timestamp,
    to: Timestamp,
    per_tick: u64,
    seed: u64,
    error_rate: impl Fn(i64) -> f64,
) -> Vec<ImportSeries> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut req, mut err) = (Vec::new(), Vec::new());
    let (mut r, mut e) = (0.0, 0.0);
    let mut t = from.as_millisecond() / TICK_MS * TICK_MS;
    while t <= to.as_millisecond() {
        req.push((t, r));
        err.push((t, e));
        r += per_tick as f64;
        e += Binomial::new(per_tick, error_rate(t + TICK_MS))
            .unwrap()
            .sample(&mut rng) as f64;
        t += TICK_MS;
    }
    let labels = [("app", "shop"), ("color", color)];
    vec![
        ImportSeries::new("http_requests_total", &labels, req),
        ImportSeries::new("http_errors_total", &labels, err),
    ]
}

struct History {
    vm: Victoria,
    dir: tempfile::TempDir,
    from: Timestamp,
    to: Timestamp,
}

/// Three hours of history at a 20 % green split; green's error rate jumps from 0.5 % to 5 %
/// at `regression` when given.
fn history(regression: Option<SignedDuration>) -> History {
    let vm = Victoria::start();
    let now = Timestamp::now();
    let to = Timestamp::from_second(now.as_second() / 60 * 60 - 120).unwrap();
    let from = to - SignedDuration::from_hours(3);
    let data_from = from - SignedDuration::from_mins(5);
    let bad_from = regression.map(|d| (from + d).as_millisecond());
    let mut series = colour("blue", data_from, to, 600, 1, |_| 0.005);
    series.extend(colour("green", data_from, to, 150, 2, |t| {
        if bad_from.is_some_and(|b| t > b) {
            0.05
        } else {
            0.005
        }
    }));
    vm.import(&series);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.toml"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("greenlight.toml"),
        format!(
            "[metrics]\nurl = \"{}\"\nkind = \"victoriametrics\"\nlatency_offset = \"0s\"\n",
            vm.url()
        ),
    )
    .unwrap();
    History { vm, dir, from, to }
}

fn replay(h: &History) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .arg("--config")
        .arg(h.dir.path().join("greenlight.toml"))
        .arg("replay")
        .arg(h.dir.path().join("shop.toml"))
        .args([
            "--from",
            &h.from.to_string(),
            "--to",
            &h.to.to_string(),
            "--json",
        ])
        .output()
        .expect("run greenlight replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("replay prints JSON")
}

fn ts(v: &serde_json::Value) -> Timestamp {
    v.as_str().expect("a timestamp").parse().unwrap()
}

#[test]
fn a_regression_in_history_is_rolled_back_soon_after_it_starts() {
    let start = SignedDuration::from_mins(60);
    let h = history(Some(start));
    let r = replay(&h);
    assert_eq!(r["outcome"], "rolled_back", "{r:#}");
    let at = ts(&r["decided_at"]);
    let regression = h.from + start;
    assert!(
        at > regression,
        "rolled back at {at}, before the regression at {regression}"
    );
    // Green's errors go from 0.75 to 7.5 per minute: a few windows suffice.
    assert!(
        at <= regression + SignedDuration::from_mins(10),
        "rolled back at {at}, regression at {regression}"
    );
    assert!(
        r["final_reason"].as_str().unwrap().contains("errors"),
        "{r:#}"
    );
    assert!(r["note"]
        .as_str()
        .unwrap()
        .contains("recorded traffic split"));
    assert!(h.vm.url().starts_with("http://127.0.0.1"));
}

#[test]
fn a_healthy_history_is_not_rolled_back() {
    let h = history(None);
    let r = replay(&h);
    assert_ne!(r["outcome"], "rolled_back", "{r:#}");
    let timeline = r["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
    assert!(timeline.iter().all(|w| w["action"] != "rollback"));
    // Every window was read from VictoriaMetrics, not held on missing data.
    assert!(
        timeline
            .iter()
            .all(|w| !w["reason"].as_str().unwrap().contains("unusable metrics")),
        "{r:#}"
    );
    assert!(Path::new(&h.dir.path().join("shop.toml")).exists());
}
