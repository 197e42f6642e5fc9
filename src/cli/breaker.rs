//! `greenlight breaker status|reset`: show the cluster breakers, or ask the leader to reset one
//! (compare-and-set in Consul, obeyed at its next look).

use std::io::{self, Write};
use std::path::Path;

use clap::{Args, Subcommand};

use super::ops::store;
use crate::audit::Actor;
use crate::daemon::BreakerStore;
use crate::policy::cluster::cluster_name_problem;
use crate::policy::{Config, Policy};
use crate::server::BreakerView;

#[derive(Debug, Args)]
pub struct BreakerArgs {
    #[command(subcommand)]
    pub command: BreakerCommand,
}

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Show every cluster's breaker: closed or tripped, the pooled evidence, the rollbacks.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a tripped breaker: rollouts onto the cluster go on, campaigns may be resumed; the
    /// evidence and rollbacks count afresh from now.
    Reset { cluster: String },
}

/// Runs one `breaker` subcommand; returns the exit code.
pub fn run(config: Option<&Path>, actor: &Actor, args: BreakerArgs) -> i32 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let breakers = match store(&config) {
        Ok(s) => BreakerStore::new(s.client().clone(), &config.consul.prefix),
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match args.command {
        BreakerCommand::Reset { cluster } => {
            if let Some(problem) = cluster_name_problem("the cluster", &cluster) {
                eprintln!("error: {problem}");
                return super::EXIT_CONFIG;
            }
            let known = runtime
                .block_on(breakers.names())
                .is_ok_and(|names| names.contains(&cluster));
            if !known {
                eprintln!("error: no breaker for cluster {cluster:?}: no policy names it, or the daemon has not looked at it yet");
                return super::EXIT_CONFIG;
            }
            match runtime.block_on(breakers.request_reset(&cluster, &actor.user)) {
                Ok(state) => {
                    match &state.tripped {
                        Some(t) => println!(
                            "breaker {cluster}: reset requested by {} (tripped at {}: {}); the daemon resets it at its next look",
                            actor.user, t.at, t.reason
                        ),
                        None => println!(
                            "breaker {cluster}: not tripped; reset requested by {} all the same (the evidence counts afresh from the daemon's next look)",
                            actor.user
                        ),
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: breaker {cluster}: {e}");
                    super::EXIT_FAILURE
                }
            }
        }
        BreakerCommand::Status { json } => {
            let views = match runtime.block_on(views(&config, &breakers)) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return super::EXIT_FAILURE;
                }
            };
            let mut out = io::stdout().lock();
            let written = if json {
                serde_json::to_writer_pretty(&mut out, &views)
                    .map_err(io::Error::other)
                    .and_then(|()| writeln!(out))
            } else if views.is_empty() {
                writeln!(out, "no cluster breaker yet: no policy names a cluster (`clusters` / `green_cluster`), or the daemon has not looked")
            } else {
                views.iter().try_for_each(|v| writeln!(out, "{}", v.line()))
            };
            super::ops::finish_output(written.and_then(|()| out.flush()))
        }
    }
}

/// Every stored breaker, as the leader last wrote it.
async fn views(
    config: &Config,
    breakers: &BreakerStore,
) -> Result<Vec<BreakerView>, crate::daemon::StoreError> {
    let mut views = Vec::new();
    for name in breakers.names().await? {
        let (state, _) = breakers.load(&name).await?;
        views.push(BreakerView::new(&state, &config.breaker));
    }
    Ok(views)
}

/// The breaker lines of `greenlight status`: the clusters the policies name.
pub(super) fn status_lines(
    config: &Config,
    policies: &[Policy],
    runtime: &tokio::runtime::Runtime,
    breakers: &BreakerStore,
) -> Vec<String> {
    let named: std::collections::BTreeSet<&str> = policies
        .iter()
        .flat_map(|p| [p.clusters.blue.as_deref(), p.clusters.green.as_deref()])
        .flatten()
        .collect();
    let Ok(views) = runtime.block_on(views(config, breakers)) else {
        return vec!["breakers: cannot be read from Consul".into()];
    };
    views
        .into_iter()
        .filter(|v| named.contains(v.cluster.as_str()))
        .map(|v| v.line())
        .collect()
}
