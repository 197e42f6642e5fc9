//! `greenlight simulate` and the decision quality it shows on the example policies: seeded, so
//! every run of this file sees the same worlds.

use std::path::Path;
use std::process::Command;

use greenlight::policy::Policy;
use greenlight::sim::{simulate, Outcome, Scenario, SimConfig};

fn example(name: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    Policy::from_toml(&text, &path, None).unwrap()
}

fn outcome(policy: &Policy, scenario: &Scenario, seed: u64) -> Outcome {
    simulate(
        policy,
        &SimConfig {
            scenario: scenario.clone(),
            seed,
            ..SimConfig::default()
        },
    )
    .outcome
}

/// The outcome of each seed, in the seeds' order. The worlds are independent, so they are
/// simulated on every core (thread `k` takes every `n`-th seed from the `k`-th).
fn outcomes(policy: &Policy, scenario: &str, seeds: std::ops::Range<u64>) -> Vec<Outcome> {
    let scenario: Scenario = scenario.parse().unwrap();
    let seeds: Vec<u64> = seeds.collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, seeds.len().max(1));
    let mut found: Vec<(usize, Outcome)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                let (seeds, scenario) = (&seeds, &scenario);
                s.spawn(move || {
                    (k..seeds.len())
                        .step_by(threads)
                        .map(|i| (i, outcome(policy, scenario, seeds[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a simulation panicked"))
            .collect()
    });
    found.sort_by_key(|(i, _)| *i);
    found.into_iter().map(|(_, o)| o).collect()
}

fn share(outcomes: &[Outcome], which: Outcome) -> f64 {
    outcomes.iter().filter(|o| **o == which).count() as f64 / outcomes.len() as f64
}

#[test]
fn healthy_canaries_are_rarely_rolled_back() {
    for name in ["checkout.toml", "search.toml"] {
        let policy = example(name);
        assert_eq!(policy.false_rollback_rate, 0.01);
        let runs = outcomes(&policy, "healthy", 0..200);
        let rolled_back = share(&runs, Outcome::RolledBack);
        assert!(
            rolled_back <= 0.02,
            "{name}: {rolled_back} of healthy runs rolled back"
        );
        assert!(
            share(&runs, Outcome::Promoted) >= 0.95,
            "{name}: healthy runs not promoted: {runs:?}"
        );
    }
}

#[test]
fn overdispersed_healthy_canaries_stay_within_alpha_with_tempering() {
    // Bursty errors (per-window gamma noise, CV 0.3) with φ = 2 set in the policy.
    let mut policy = example("search.toml");
    for check in &mut policy.checks {
        if let greenlight::policy::CheckKind::ErrorRate { overdispersion, .. } = &mut check.kind {
            *overdispersion = 2.0;
        }
    }
    let runs = outcomes(&policy, "overdispersion=0.3", 0..200);
    assert!(share(&runs, Outcome::RolledBack) <= 0.02, "{runs:?}");
}

#[test]
fn doubled_error_rates_are_rolled_back() {
    for name in ["checkout.toml", "search.toml"] {
        let policy = example(name);
        let runs = outcomes(&policy, "errors=2x", 1000..1200);
        let rolled_back = share(&runs, Outcome::RolledBack);
        assert!(
            rolled_back >= 0.95,
            "{name}: only {rolled_back} of 2x regressions rolled back"
        );
    }
}

#[test]
fn a_metrics_outage_never_rolls_back() {
    let policy = example("search.toml");
    let runs = outcomes(&policy, "outage=20m+45m", 0..50);
    assert!(runs.iter().all(|o| *o == Outcome::Promoted), "{runs:?}");
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn cli_promotes_healthy_and_rolls_back_3x_on_every_seed() {
    for seed in ["1", "2", "3", "4", "5"] {
        let (code, out, err) = cli(&[
            "simulate",
            "policies/checkout.toml",
            "--seed",
            seed,
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["outcome"], "promoted", "seed {seed}: {v}");
        assert!(v["duration_s"].as_u64().unwrap() > 0);
        assert!(v["green_requests"].as_u64().unwrap() > 0);

        let (code, out, _) = cli(&[
            "simulate",
            "policies/checkout.toml",
            "--scenario",
            "errors=3x",
            "--seed",
            seed,
            "--json",
        ]);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["outcome"], "rolled_back", "seed {seed}: {v}");
        assert!(v["bad_green_requests"].as_u64().unwrap() > 0);
    }
}

#[test]
fn cli_timeline_is_readable() {
    let (code, out, _) = cli(&["simulate", "policies/search.toml", "--seed", "7"]);
    assert_eq!(code, 0);
    assert!(out.contains("Simulating search"), "{out}");
    assert!(out.contains("advance:"), "{out}");
    assert!(out.contains("PROMOTED to 100 %"), "{out}");
    assert!(out.contains("Green served"), "{out}");
}

#[test]
fn cli_rejects_bad_input_with_exit_2() {
    let (code, _, err) = cli(&[
        "simulate",
        "policies/search.toml",
        "--scenario",
        "errors=banana",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("bad multiplier"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let good =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/search.toml"))
            .unwrap();
    let line = good
        .lines()
        .position(|l| l.starts_with("steps"))
        .expect("steps line")
        + 1;
    let broken: Vec<String> = good
        .lines()
        .map(|l| {
            if l.starts_with("steps") {
                "steps = [50, 10, 100]".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&bad, broken.join("\n")).unwrap();
    let (code, _, err) = cli(&["simulate", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("bad.toml:{line}:")), "{err}");
}

#[test]
fn guards_ignore_windows_with_too_few_green_requests() {
    // 5 req/s overnight: at 1–25 % green, a window holds a handful of green requests and their
    // p99 is just their slowest one.
    let mut policy = example("checkout.toml");
    policy.schedule = None;
    policy.min_green_requests_per_step = 200;
    let rollbacks = |policy: &Policy| {
        outcomes(policy, "rps=5", 0..100)
            .into_iter()
            .filter(|o| *o == Outcome::RolledBack)
            .count()
    };
    assert_eq!(
        rollbacks(&policy),
        0,
        "guard noise rolled back healthy canaries"
    );
    // The same worlds with the guard counting every window: noise alone rolls one back (the
    // first such world is enough to show it).
    for check in &mut policy.checks {
        if let greenlight::policy::CheckKind::Threshold {
            min_green_requests, ..
        } = &mut check.kind
        {
            *min_green_requests = 0;
        }
    }
    let batch = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let noisy = (0..100u64).step_by(batch as usize).any(|from| {
        outcomes(&policy, "rps=5", from..(from + batch).min(100)).contains(&Outcome::RolledBack)
    });
    assert!(noisy, "the worlds carry no guard noise");
}

/// Every `null` in a JSON document, by path.
fn nulls(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Null => out.push(path.to_string()),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                nulls(item, &format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                nulls(item, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn overwhelming_evidence_on_healthy_traffic_prints_no_null() {
    // The advance evidence is gathered at each step; within one 10-minute step it passes 1e308
    // at 2000 req/s (ln E about 4,300 at the 50 % step) and at 20,000 req/s with seed 3. Its
    // logarithm is printed instead, and the text timeline shows it briefly.
    for args in [
        &["--scenario", "healthy,rps=2000"][..],
        &["--scenario", "healthy,rps=20000", "--seed", "3"][..],
    ] {
        let mut all = vec!["simulate", "policies/checkout.toml", "--timeline"];
        all.extend_from_slice(args);
        let (code, text, err) = cli(&all);
        assert_eq!(code, 0, "{err}");
        assert!(!text.contains("inf"), "{text}");
        all.push("--json");
        let (code, out, err) = cli(&all);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut found = Vec::new();
        nulls(&v, "", &mut found);
        assert!(found.is_empty(), "{args:?}: null at {found:?}");
        let largest = v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| w["evidence"].as_array().unwrap().iter())
            .map(|e| e["advance_log_e"].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(largest > f64::MAX.ln(), "{args:?}: ln E at most {largest}");
        assert_eq!(v["outcome"], "promoted", "{args:?}");
    }
}
