//! `greenlight simulate POLICY`: run the real engine against a synthetic blue/green pair.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::policy::Policy;
use crate::sim::{simulate, Outcome, Scenario, SimConfig, SimResult, SimWindow};
use crate::stats::format_e_short;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Policy file to simulate.
    pub policy: PathBuf,
    /// World: comma-separated items, e.g. `healthy`, `errors=2x`, `latency=+30%`,
    /// `overdispersion=0.3`, `diurnal`, `outage=30m+10m`, `from-step=2`, `blue-errors=0.5%`.
    #[arg(long, default_value = "healthy")]
    pub scenario: String,
    /// Total requests per second over both colours (overrides the scenario's).
    #[arg(long)]
    pub rps: Option<f64>,
    /// Random seed; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop (outcome `held`) after this much simulated time.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,
    /// Print one JSON object instead of the timeline.
    #[arg(long)]
    pub json: bool,
    /// With --json: include every window.
    #[arg(long)]
    pub timeline: bool,
}

pub fn run(args: SimulateArgs) -> i32 {
    let policy = match load_one(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut scenario: Scenario = match args.scenario.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --scenario: {e}");
            return super::EXIT_CONFIG;
        }
    };
    if let Some(rps) = args.rps {
        if !(rps.is_finite() && rps > 0.0) {
            eprintln!("error: --rps must be a positive number");
            return super::EXIT_CONFIG;
        }
        scenario.rps = rps;
    }
    let cfg = SimConfig {
        scenario: scenario.clone(),
        seed: args.seed,
        start: None,
        max_duration: args.max_duration,
        keep_timeline: !args.json || args.timeline,
    };
    let result = simulate(&policy, &cfg);
    if args.json {
        let out = serde_json::json!({
            "api": policy.api,
            "scenario": args.scenario,
            "seed": args.seed,
            "rps": scenario.rps,
            "outcome": result.outcome,
            "duration_s": result.duration_s,
            "green_requests": result.green_requests,
            "bad_green_requests": result.bad_green_requests,
            "green_errors": result.green_errors,
            "decisions": result.decisions,
            "reason": result.final_reason,
            "timeline": if args.timeline { serde_json::to_value(&result.timeline).unwrap_or_default() } else { serde_json::Value::Null },
        });
        println!("{out}");
    } else {
        print_timeline(&policy, &args, &scenario, &result);
    }
    0
}

/// Reads and validates one policy file, printing every error as `file:line:col: message`.
pub(crate) fn load_one(path: &Path) -> Result<Policy, i32> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return Err(super::EXIT_CONFIG);
        }
    };
    Policy::from_toml(&text, path, None).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        super::EXIT_CONFIG
    })
}

fn print_timeline(policy: &Policy, args: &SimulateArgs, scenario: &Scenario, r: &SimResult) {
    println!(
        "Simulating {} ({}): scenario {}, {} req/s, seed {}, interval {}, steps {:?}",
        policy.api,
        args.policy.display(),
        args.scenario,
        scenario.rps,
        args.seed,
        humantime::format_duration(policy.interval),
        policy.steps
    );
    println!(
        "{:>8}  {:>6}  {:>15}  {:>13}  {:<40}  decision",
        "time", "green", "blue req/err", "green req/err", "evidence: rollback E / advance E"
    );
    let mut last_reason_kind = String::new();
    for (i, w) in r.timeline.iter().enumerate() {
        let kind: String = w.reason.split([':', '(']).next().unwrap_or("").to_string();
        let notable = w.action != crate::engine::Action::Hold
            || kind != last_reason_kind
            || i + 1 == r.timeline.len()
            || i % 15 == 0;
        last_reason_kind = kind;
        if notable {
            println!("{}", line(w));
        }
    }
    let verdict = match r.outcome {
        Outcome::Promoted => format!("PROMOTED to 100 % after {}", hms(r.duration_s)),
        Outcome::RolledBack => format!("ROLLED BACK after {}", hms(r.duration_s)),
        Outcome::Held => format!(
            "HELD: neither promoted nor rolled back within {}",
            hms(r.duration_s)
        ),
    };
    println!();
    println!("{verdict}.");
    println!("Last reason: {}", r.final_reason);
    println!(
        "Green served {} requests; {} bad (errors or slower than the highest latency edge), {} errors. {} decisions.",
        r.green_requests, r.bad_green_requests, r.green_errors, r.decisions
    );
}

fn line(w: &SimWindow) -> String {
    let evidence: Vec<String> = w
        .evidence
        .iter()
        .map(|e| {
            format!(
                "{} {}/{}",
                e.stream,
                format_e_short(e.rollback_log_e),
                format_e_short(e.advance_log_e)
            )
        })
        .collect();
    format!(
        "{:>8}  {:>5.1}%  {:>15}  {:>13}  {:<40}  {}: {}",
        hms(w.elapsed_s),
        w.green_percent,
        format!("{:.0}/{:.0}", w.blue.requests, w.blue.bad),
        format!("{:.0}/{:.0}", w.green.requests, w.green.bad),
        evidence.join(" "),
        w.action.as_str(),
        w.reason
    )
}

fn hms(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
