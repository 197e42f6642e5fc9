//! Cluster-breaker benchmark: N APIs roll onto one green cluster at once, each through the real
//! daemon shell (`sim::cluster::run_cluster`) in its own world (its own seed), with the same
//! regression on every API. After every window the breaker's pooled evidence
//! (`engine::breaker`) is computed from the stored states; the table compares when it trips with
//! when the first single API rolls back, and how often it trips on healthy or acceptable
//! clusters (its false-trip level is the policy's α).
//!
//! `cargo bench --bench breaker [-- --seeds N] [-- --apis N]` writes `bench/results/breaker.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use greenlight::engine::breaker::BreakerSettings;
use greenlight::policy::Policy;
use greenlight::sim::cluster::{run_cluster, ClusterNight};
use greenlight::sim::Scenario;

/// (name, scenario items); the first two are inside the 10 % tolerance.
const CASES: [(&str, &str); 6] = [
    ("healthy", "healthy"),
    ("acceptable: errors ×1.05", "errors=1.05x"),
    ("errors ×1.15", "errors=1.15x"),
    ("errors ×1.25", "errors=1.25x"),
    ("latency ×1.2", "latency=1.2x"),
    ("errors ×1.25, 5 req/s", "errors=1.25x,rps=5"),
];

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn fmt_min(v: Option<u64>) -> String {
    v.map_or("—".into(), |m| m.to_string())
}

fn main() {
    let mut seeds = 20u64;
    let mut apis = 20usize;
    let mut min_apis = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seeds" => seeds = args.next().and_then(|s| s.parse().ok()).expect("--seeds N"),
            "--apis" => apis = args.next().and_then(|s| s.parse().ok()).expect("--apis N"),
            "--min-apis" => {
                min_apis = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--min-apis N")
            }
            _ => {}
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("bench/policy.toml");
    let text = std::fs::read_to_string(&path).expect("bench/policy.toml");
    let policy = Policy::from_toml(&text, &path, None).expect("a valid bench policy");
    let settings = BreakerSettings {
        min_apis,
        ..BreakerSettings::at_level(policy.false_rollback_rate)
    };
    let horizon = Duration::from_secs(12 * 3600);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let began = Instant::now();
    let mut table = String::new();
    writeln!(
        table,
        "{apis} APIs onto one green cluster, {seeds} clusters (seeds) per row, 12 h, the same \
         regression on every API; bench/policy.toml (tolerance 10 %, α = {}); each API's \
         e-value capped at (1/α)^(1/{min_apis}). Minutes are medians over the clusters where \
         the event happened.\n",
        policy.false_rollback_rate
    )
    .unwrap();
    table.push_str(
        "| scenario | breaker tripped (evidence) | median min | tripped before the first \
         API rollback | first API rollback, median min | APIs rolled back alone (mean) | \
         3 rollbacks in 1 h: tripped, median min |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, items) in CASES {
        let scenario: Scenario = items.parse().expect("valid scenario");
        let t = Instant::now();
        let nights: Vec<ClusterNight> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let (policy, scenario, settings) = (&policy, &scenario, &settings);
                    s.spawn(move || {
                        (0..seeds)
                            .filter(|seed| seed % threads == k)
                            .map(|seed| {
                                (
                                    seed,
                                    run_cluster(policy, scenario, apis, seed, settings, horizon),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all: Vec<(u64, ClusterNight)> = handles
                .into_iter()
                .flat_map(|h| h.join().expect("a night runs"))
                .collect();
            all.sort_by_key(|(seed, _)| *seed);
            all.into_iter().map(|(_, n)| n).collect()
        });
        let n = nights.len().max(1) as f64;
        let tripped: Vec<u64> = nights.iter().filter_map(|x| x.evidence_trip).collect();
        let before = nights
            .iter()
            .filter(|x| match (x.evidence_trip, x.first_rollback) {
                (Some(b), Some(r)) => b <= r,
                (Some(_), None) => true,
                _ => false,
            })
            .count();
        let firsts: Vec<u64> = nights.iter().filter_map(|x| x.first_rollback).collect();
        let by_count: Vec<u64> = nights.iter().filter_map(|x| x.rollbacks_trip).collect();
        let alone = nights.iter().map(|x| x.rolled_back).sum::<usize>() as f64 / n;
        writeln!(
            table,
            "| {name} | {:.0} % | {} | {:.0} % | {} | {alone:.1} | {:.0} %, {} |",
            100.0 * tripped.len() as f64 / n,
            fmt_min(median(tripped.clone())),
            100.0 * before as f64 / n,
            fmt_min(median(firsts)),
            100.0 * by_count.len() as f64 / n,
            fmt_min(median(by_count)),
        )
        .unwrap();
        eprintln!(
            "{name:<28} {seeds} seeds  {:>6.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    writeln!(
        table,
        "\nRun: `cargo bench --bench breaker -- --seeds {seeds} --apis {apis} --min-apis {min_apis}`, {:.0} s.",
        began.elapsed().as_secs_f64()
    )
    .unwrap();
    let out = root.join("bench/results/breaker.md");
    std::fs::write(&out, &table).expect("write bench/results/breaker.md");
    print!("{table}");
}
