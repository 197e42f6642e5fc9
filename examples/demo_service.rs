//! Demo service for the real-stack demo: `GET /` answers 200 or 500 after a log-normal latency;
//! `GET /metrics` exports `http_requests_total` and `http_request_duration_seconds`.
//!
//! `cargo run --release --example demo_service -- --listen 127.0.0.1:8081 --color green
//!  --error-rate 0.05 --latency-median 0.08 --latency-sigma 0.6 [--slow-factor 2]`

use std::net::SocketAddr;

use clap::Parser;
use greenlight::demo::{serve_demo, DemoSettings};

#[derive(Debug, Parser)]
#[command(about = "A blue or green demo service with configurable errors and latency")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// `cluster` label: blue or green.
    #[arg(long)]
    color: String,
    /// `service` label.
    #[arg(long, default_value = "checkout")]
    service: String,
    /// Probability that a request answers 500.
    #[arg(long, default_value_t = 0.01)]
    error_rate: f64,
    /// Median latency, seconds.
    #[arg(long, default_value_t = 0.05)]
    latency_median: f64,
    /// σ of the latency's logarithm.
    #[arg(long, default_value_t = 0.5)]
    latency_sigma: f64,
    /// Multiplies every latency (a slow release).
    #[arg(long, default_value_t = 1.0)]
    slow_factor: f64,
    /// Seed of the error and latency draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = greenlight::server::init_logging(false, None);
    let settings = DemoSettings {
        service: args.service,
        color: args.color,
        error_rate: args.error_rate,
        latency_median: args.latency_median,
        latency_sigma: args.latency_sigma,
        slow_factor: args.slow_factor,
        seed: args.seed,
    };
    let problems = settings.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("error: {p}");
        }
        std::process::exit(2);
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    if let Err(e) = serve_demo(listener, settings, shutdown()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
