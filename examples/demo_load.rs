//! Bounded load generator for the demo: `rps × duration` GET requests to a loopback URL, then a
//! summary by status code.
//!
//! `cargo run --release --example demo_load -- --target http://127.0.0.1:8080 --rps 50 --duration 10m`
//!
//! With `--users N` every request is sent as one of N users (`X-User-Id: user-<i>`, drawn at
//! random with `--seed`), and the colour that served each user (HAProxy's `X-Served-By`) is
//! tracked; `--stats FILE` keeps the per-user stickiness in FILE, updated every second.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use greenlight::demo::{generate_load, LoadSettings, UserLoad};

#[derive(Debug, Parser)]
#[command(about = "Send a bounded, steady stream of requests to a loopback HTTP target")]
struct Args {
    /// Loopback http:// URL (127.0.0.1, ::1 or localhost); anything else is refused.
    #[arg(long)]
    target: String,
    /// Requests per second.
    #[arg(long, default_value_t = 20)]
    rps: u32,
    /// How long to send, e.g. `30s`, `10m` (at most 1h).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
    duration: Duration,
    /// Send each request as one of this many users.
    #[arg(long)]
    users: Option<u32>,
    /// The header carrying the user id.
    #[arg(long, default_value = "X-User-Id")]
    user_header: String,
    /// Seed of the user draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// With `--users`: write the per-user stickiness (JSON) here every second.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let settings =
        LoadSettings::new(&args.target, args.rps, args.duration).and_then(|s| match args.users {
            Some(users) => s.with_users(UserLoad {
                users,
                header: args.user_header.clone(),
                seed: args.seed,
                stats: args.stats.clone(),
            }),
            None => Ok(s),
        });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let report = generate_load(&settings).await;
    let codes: Vec<String> = report
        .statuses
        .iter()
        .map(|(code, n)| format!("{code}={n}"))
        .collect();
    println!(
        "sent={} {} failed={} skipped={}",
        report.sent,
        codes.join(" "),
        report.failed,
        report.skipped
    );
    if let Some(s) = &report.stickiness {
        println!("{}", s.describe());
    }
    if report.sent > 0 && report.failed == report.sent {
        std::process::exit(1);
    }
}
