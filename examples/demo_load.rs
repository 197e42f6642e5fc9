//! Bounded load generator for the demo: `rps × duration` GET requests to a loopback URL, then a
//! summary by status code.
//!
//! `cargo run --release --example demo_load -- --target http://127.0.0.1:8080 --rps 50 --duration 10m`

use std::time::Duration;

use clap::Parser;
use greenlight::demo::{generate_load, LoadSettings};

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
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let settings = match LoadSettings::new(&args.target, args.rps, args.duration) {
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
    if report.sent > 0 && report.failed == report.sent {
        std::process::exit(1);
    }
}
