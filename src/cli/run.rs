//! `greenlight run`: the daemon.

use std::path::Path;

use clap::Args;

use crate::daemon::{run as run_daemon, RunOptions};
use crate::server::init_logging;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Evaluate every policy once, then exit (for cron and tests).
    #[arg(long)]
    pub once: bool,
    /// Log JSON lines instead of human-readable text.
    #[arg(long)]
    pub log_json: bool,
    /// Log filter, e.g. `info` or `greenlight=debug` (default: $RUST_LOG, else info).
    #[arg(long)]
    pub log: Option<String>,
    /// Name of this instance in the leader lock (default: host name and process id).
    #[arg(long)]
    pub instance: Option<String>,
}

pub fn run(config: Option<&Path>, args: RunArgs) -> i32 {
    if let Err(e) = init_logging(args.log_json, args.log.as_deref()) {
        eprintln!("error: {e}");
        return super::EXIT_CONFIG;
    }
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut opts = RunOptions {
        once: args.once,
        ..RunOptions::default()
    };
    if let Some(name) = args.instance {
        opts.instance = name;
    }
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(run_daemon(config, opts, shutdown_signal()));
    match result {
        Ok(()) => 0,
        Err(e @ crate::daemon::DaemonError::Config(_))
        | Err(e @ crate::daemon::DaemonError::Policies(_)) => {
            tracing::error!(error = %e, "Cannot start.");
            super::EXIT_CONFIG
        }
        Err(e) => {
            tracing::error!(error = %e, "Stopped on an error.");
            super::EXIT_FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("Shutting down: finishing the evaluation in flight, releasing the lock.");
}
