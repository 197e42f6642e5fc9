//! `greenlight calibrate` against a real VictoriaMetrics holding A/A history (blue and green
//! the same version), with and without overdispersed errors.

mod support;

use std::process::Command;

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, Gamma};
use support::victoria::{ImportSeries, Victoria};

const TICK_MS: i64 = 15_000;

fn policy(app: &str) -> String {
    format!(
        r#"
api = "{app}"
interval = "1m"
steps = [5, 25, 50, 100]

[traffic]
consul_keys = {{ blue = "w/blue", green = "w/green" }}

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{{app="{app}",color="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(http_errors_total{{app="{app}",color="{{color}}"}}[{{interval}}]))'
"#
    )
}

/// Counters of one colour every 15 s; the error rate 1 % is multiplied per minute by a gamma
/// factor with mean 1 and coefficient of variation `cv` (0 = plain binomial errors).
fn colour(
    app: &str,
    color: &str,
    from: Timestamp,
    to: Timestamp,
    cv: f64,
    seed: u64,
) -> Vec<ImportSeries> {
    let mut rng = StdRng::seed_from_u64(seed);
    let gamma = (cv > 0.0).then(|| Gamma::new(1.0 / (cv * cv), cv * cv).unwrap());
    let (mut req, mut err) = (Vec::new(), Vec::new());
    let (mut r, mut e) = (0.0, 0.0);
    let mut factor = 1.0;
    let mut t = from.as_millisecond() / 60_000 * 60_000;
    while t <= to.as_millisecond() {
        req.push((t, r));
        err.push((t, e));
        if t % 60_000 == 0 {
            factor = gamma.as_ref().map_or(1.0, |g| g.sample(&mut rng));
        }
        r += 600.0;
        e += Binomial::new(600, (0.01 * factor).min(1.0))
            .unwrap()
            .sample(&mut rng) as f64;
        t += TICK_MS;
    }
    let labels = [("app", app), ("color", color)];
    vec![
        ImportSeries::new("http_requests_total", &labels, req),
        ImportSeries::new("http_errors_total", &labels, err),
    ]
}

fn calibrate(
    vm: &Victoria,
    dir: &std::path::Path,
    app: &str,
    from: Timestamp,
    to: Timestamp,
) -> serde_json::Value {
    std::fs::write(dir.join(format!("{app}.toml")), policy(app)).unwrap();
    let config = dir.join("greenlight.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nurl = \"{}\"\nlatency_offset = \"0s\"\n",
            vm.url()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .arg("--config")
        .arg(&config)
        .arg("calibrate")
        .arg(dir.join(format!("{app}.toml")))
        .args([
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
            "--json",
        ])
        .output()
        .expect("run greenlight calibrate");
    assert!(
        out.status.success(),
        "calibrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("calibrate prints JSON")
}

#[test]
fn calibrate_recommends_tempering_only_for_overdispersed_errors() {
    let vm = Victoria::start();
    let to = Timestamp::from_second(Timestamp::now().as_second() / 60 * 60 - 120).unwrap();
    let from = to - SignedDuration::from_hours(2);
    let data_from = from - SignedDuration::from_mins(5);
    let mut series = colour("quiet", "blue", data_from, to, 0.0, 1);
    series.extend(colour("quiet", "green", data_from, to, 0.0, 2));
    series.extend(colour("bursty", "blue", data_from, to, 0.5, 3));
    series.extend(colour("bursty", "green", data_from, to, 0.5, 4));
    vm.import(&series);
    let dir = tempfile::tempdir().unwrap();

    let quiet = calibrate(&vm, dir.path(), "quiet", from, to);
    assert_eq!(quiet["windows"], 120, "{quiet:#}");
    assert_eq!(quiet["unusable_windows"], 0, "{quiet:#}");
    assert_eq!(quiet["streams"][0]["intervals"], 120, "{quiet:#}");
    let phi = quiet["recommendations"][0]["overdispersion"]
        .as_f64()
        .unwrap();
    assert!(
        phi <= 1.3,
        "binomial errors need no tempering, got φ = {phi}: {quiet:#}"
    );

    // Per-minute rate noise with CV 0.5 on 24 expected errors per colour inflates the
    // conditional binomial's variance by about 1 + 0.25·24·24/48 = 4.
    let bursty = calibrate(&vm, dir.path(), "bursty", from, to);
    let phi = bursty["recommendations"][0]["overdispersion"]
        .as_f64()
        .unwrap();
    assert!(
        phi >= 2.0,
        "overdispersed errors need tempering, got φ = {phi}: {bursty:#}"
    );
    assert_eq!(bursty["recommendations"][0]["current"], 1.0);
}
