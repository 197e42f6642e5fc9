//! Operator commands: `status`, `start`, `pause`, `resume`, `rollback`, `promote`. They read and
//! write the rollout state in Consul (compare-and-set), with or without a daemon running; the
//! daemon obeys a recorded intent at its next evaluation.

use std::path::Path;

use clap::Args;

use crate::daemon::{consul_client, StateStore};
use crate::engine::Intent;
use crate::policy::{load_dir, Config, Policy};
use crate::server::RolloutView;
use crate::stats::format_e;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this API.
    pub api: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IntentArgs {
    /// The API (its policy's `api`).
    pub api: String,
    /// Why (recorded in the state and shown by `status`).
    #[arg(long, default_value = "requested by an operator")]
    pub reason: String,
}

/// Which intent an [`IntentArgs`] command records.
#[derive(Debug, Clone, Copy)]
pub enum IntentKind {
    Start,
    Pause,
    Resume,
    Rollback,
    Promote,
}

fn policies(config: &Config) -> Result<Vec<Policy>, i32> {
    let report = load_dir(&config.policies_dir, Some(&config.channel_names()));
    for e in &report.errors {
        eprintln!("{e}");
    }
    if report.policies.is_empty() {
        eprintln!(
            "error: no valid policy in {}",
            config.policies_dir.display()
        );
        return Err(super::EXIT_CONFIG);
    }
    Ok(report.policies)
}

fn store(config: &Config) -> Result<StateStore, i32> {
    let client = consul_client(config).map_err(|e| {
        eprintln!("error: {e}");
        super::EXIT_CONFIG
    })?;
    Ok(StateStore::new(client, &config.consul.prefix))
}

pub fn status(config: Option<&Path>, args: StatusArgs) -> i32 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policies = match policies(&config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let selected: Vec<&Policy> = policies
        .iter()
        .filter(|p| args.api.as_ref().is_none_or(|a| *a == p.api))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "error: no policy for API {:?}",
            args.api.unwrap_or_default()
        );
        return super::EXIT_CONFIG;
    }
    let store = match store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut views = Vec::new();
    for policy in selected {
        match runtime.block_on(store.load(policy)) {
            Ok((state, _)) => views.push(RolloutView::from_state(policy, &state)),
            Err(e) => {
                eprintln!("error: {}: {e}", policy.api);
                return super::EXIT_FAILURE;
            }
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&views) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return super::EXIT_FAILURE;
            }
        }
        return 0;
    }
    for v in &views {
        print_view(v);
    }
    0
}

fn print_view(v: &RolloutView) {
    println!(
        "{}: {} at step {}/{} ({:.1} % green; weights blue={} green={})",
        v.api,
        v.phase.as_str(),
        v.step + 1,
        v.steps.len(),
        v.green_percent,
        v.weights.blue,
        v.weights.green
    );
    if let Some(since) = v.since {
        println!("  since:    {since}");
    }
    if let Some(reason) = &v.reason {
        println!("  reason:   {reason}");
    }
    if let Some(intent) = &v.intent_pending {
        println!("  pending:  {intent:?} (applied at the next evaluation)");
    }
    if let Some(from) = v.applying_from {
        println!(
            "  applying: weight change from blue={} green={} not yet confirmed",
            from.blue, from.green
        );
    }
    if let Some(d) = &v.last_decision {
        println!(
            "  last:     {} at {}: {}",
            d.action.as_str(),
            d.at,
            d.reason
        );
    }
    for e in &v.evidence {
        println!(
            "  evidence: {:<24} against green {:<24} (rollback at {:.0})  for green {:<24} (advance at {:.0})",
            e.stream,
            format_e(e.rollback_log_e),
            e.rollback_threshold,
            format_e(e.advance_log_e),
            e.advance_threshold
        );
    }
}

pub fn intent(config: Option<&Path>, kind: IntentKind, args: IntentArgs) -> i32 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policies = match policies(&config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(policy) = policies.iter().find(|p| p.api == args.api) else {
        eprintln!(
            "error: no policy for API {:?} in {}",
            args.api,
            config.policies_dir.display()
        );
        return super::EXIT_CONFIG;
    };
    let intent = match kind {
        IntentKind::Start => Intent::Start,
        IntentKind::Pause => Intent::Pause {
            reason: args.reason.clone(),
        },
        IntentKind::Resume => Intent::Resume,
        IntentKind::Rollback => Intent::Rollback {
            reason: args.reason.clone(),
        },
        IntentKind::Promote => Intent::Promote,
    };
    let store = match store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(store.set_intent(policy, intent.clone())) {
        Ok(state) => {
            println!(
                "{}: recorded {:?}; currently {} at step {}. The daemon applies it at its next evaluation.",
                policy.api,
                intent,
                state.phase.as_str(),
                state.step + 1
            );
            0
        }
        Err(e) => {
            eprintln!("error: {}: {e}", policy.api);
            super::EXIT_FAILURE
        }
    }
}
