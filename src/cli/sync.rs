//! `greenlight sync [--once]`: mirror the Consul weight keys into every HAProxy node (sticky mode:
//! green's share and the rollout's salt into each node's map, and the subset maps).

use std::io::Write;
use std::path::Path;

use clap::Args;

use crate::consul::ConsulClient;
use crate::policy::{load_dir, Config, HaproxyNode, PolicyError};
use crate::traffic::sync::serve_metrics;
use crate::traffic::{RuntimeAddr, SyncSettings, SyncTarget, Syncer};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// One pass: read the keys, apply them to every node and read them back; exit 0 when every
    /// node matches Consul, 1 otherwise.
    #[arg(long)]
    pub once: bool,
    /// Log one JSON object per line instead of human-readable lines.
    #[arg(long)]
    pub log_json: bool,
}

/// Runs sync until SIGINT/SIGTERM (or one pass with `--once`); returns the exit code.
pub fn run(config: Option<&Path>, args: SyncArgs) -> i32 {
    if let Err(e) = crate::server::init_logging(args.log_json, None) {
        eprintln!("warning: {e}");
    }
    let (config, syncer) = match prepare(config) {
        Ok(ready) => ready,
        Err(errors) => {
            let mut stderr = std::io::stderr().lock();
            for error in errors {
                let _ = writeln!(stderr, "{error}");
            }
            return crate::cli::EXIT_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return crate::cli::EXIT_FAILURE;
        }
    };
    if args.once {
        return runtime.block_on(once(&syncer));
    }
    runtime.block_on(daemon(config, syncer))
}

async fn once(syncer: &Syncer) -> i32 {
    match syncer.once().await {
        Ok(()) => {
            let apis: Vec<&str> = syncer.targets().iter().map(|t| t.api()).collect();
            println!("ok: HAProxy matches Consul for {}", apis.join(", "));
            0
        }
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            crate::cli::EXIT_FAILURE
        }
    }
}

async fn daemon(config: Config, syncer: Syncer) -> i32 {
    let listener = match tokio::net::TcpListener::bind(config.sync.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {} (sync.listen): {e}",
                config.sync.listen
            );
            return crate::cli::EXIT_FAILURE;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(serve_metrics(
        listener,
        syncer.metrics(),
        stopped(stop_rx.clone()),
    ));
    let sync = tokio::spawn(syncer.run(stopped(stop_rx)));
    let signal = shutdown_signal().await;
    tracing::info!(signal, "Shutting down.");
    let _ = stop_tx.send(true);
    let mut code = 0;
    if let Ok(Err(e)) = server.await {
        tracing::error!(error = %e, "The metrics server failed.");
        code = crate::cli::EXIT_FAILURE;
    }
    let _ = sync.await;
    code
}

/// Waits for SIGINT or SIGTERM; returns the signal's name.
async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGTERM; only SIGINT stops sync.");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Loads the config and policies and builds the syncer; every problem is returned at once.
fn prepare(config: Option<&Path>) -> Result<(Config, Syncer), Vec<String>> {
    let show = |errors: Vec<PolicyError>| errors.iter().map(|e| e.to_string()).collect();
    let config = match config {
        Some(path) => Config::load(path).map_err(show)?,
        None => Config::default(),
    };
    let report = load_dir(&config.policies_dir, Some(&config.channel_names()));
    if !report.is_ok() {
        return Err(show(report.errors));
    }
    let targets = match SyncTarget::from_policies(&report.policies) {
        Ok(t) => t,
        Err(unmapped) => {
            return Err(report
                .policies
                .iter()
                .filter(|p| unmapped.contains(&p.api))
                .map(|p| {
                    let file = p
                        .source
                        .as_ref()
                        .map_or_else(|| p.api.clone(), |s| s.display().to_string());
                    format!(
                        "{file}: policy {:?} keeps its weights in traffic.consul_keys but has no \
                         traffic.haproxy_backend = {{ backend, blue, green }}; sync cannot mirror it",
                        p.api
                    )
                })
                .collect());
        }
    };
    if targets.is_empty() {
        return Err(vec![format!(
            "{}: no policy keeps its weights in traffic.consul_keys; nothing to sync",
            config.policies_dir.display()
        )]);
    }
    let token = config
        .consul
        .token
        .resolve_optional()
        .map_err(|e| vec![format!("consul.token: {e}")])?;
    let consul = ConsulClient::new(
        config.consul.url.clone(),
        token,
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| vec![e.to_string()])?;
    let nodes = config
        .haproxy
        .nodes
        .iter()
        .map(|n| match n {
            HaproxyNode::Tcp(addr) => RuntimeAddr::Tcp(addr.clone()),
            HaproxyNode::Unix(path) => RuntimeAddr::Unix(path.clone()),
        })
        .collect();
    let settings = SyncSettings {
        repair_interval: config.sync.repair_interval,
        ..SyncSettings::default()
    };
    let syncer = Syncer::new(consul, nodes, targets, settings);
    Ok((config, syncer))
}
