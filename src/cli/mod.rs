//! The command-line front: argument parsing and one function per subcommand.

mod act;
mod breaker;
mod breakglass;
mod calibrate;
mod campaign;
mod check;
mod haproxy_config;
mod ops;
mod replay;
mod run;
mod simulate;
mod sync;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::audit::ActionKind;

/// Exit code for bad configuration or usage.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "greenlight",
    version,
    about = "Metrics-driven automatic canary progressor"
)]
pub struct Cli {
    /// Daemon configuration file (built-in defaults when absent).
    #[arg(long, global = true, env = "GREENLIGHT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Who acts, for the audit trail of `start`, `pause`, `resume`, `rollback`, `promote` and
    /// `approve` (default: the OS user from `USER` or `LOGNAME`).
    #[arg(long = "as", global = true, value_name = "NAME")]
    pub as_user: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files or directories; prints every error as file:line:col.
    Check(check::CheckArgs),
    /// Run the real engine against a synthetic blue/green pair in accelerated time.
    Simulate(simulate::SimulateArgs),
    /// Run the daemon: evaluate every policy on its interval and move the weights.
    Run(run::RunArgs),
    /// Show each API's rollout: phase, step, weights, evidence, last decision.
    Status(ops::StatusArgs),
    /// Start a rollout (or restart one after a rollback) at the first step, onto the colour not
    /// stable (`--to`), optionally naming the release (`--release`).
    Start(ops::StartArgs),
    /// Freeze an API's rollout; weights stay as they are.
    Pause(ops::IntentArgs),
    /// Continue a paused rollout: at its step (`--from-step`) or keeping hand-set weights
    /// (`--adopt-live`); after a manual weight change one of them is required.
    Resume(ops::ResumeArgs),
    /// Send all traffic back to blue (at the daemon's next evaluation; with `--now`, at once).
    Rollback(ops::RollbackArgs),
    /// Send all traffic to green.
    Promote(ops::IntentArgs),
    /// Let a rollout waiting at an approval gate (`approval_before`) enter the gated step.
    Approve(ops::IntentArgs),
    /// Mirror the weights in Consul KV into every HAProxy node (watch, apply, verify, repair).
    Sync(sync::SyncArgs),
    /// Backtest a policy on recorded metrics: the decisions greenlight would have taken.
    Replay(replay::ReplayArgs),
    /// Estimate each check's overdispersion φ from history where blue and green are the same.
    Calibrate(calibrate::CalibrateArgs),
    /// Print the HAProxy rules (and with --maps write the map files) of sticky-mode policies.
    HaproxyConfig(haproxy_config::HaproxyConfigArgs),
    /// Migration campaigns: `status|start|pause|resume|stop NAME`.
    Campaign(campaign::CampaignArgs),
    /// Cluster breakers: `status`, `reset CLUSTER`.
    Breaker(breaker::BreakerArgs),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let actor = crate::audit::Actor::cli(cli.as_user.as_deref());
    let actor = &actor;
    match cli.command {
        Command::Check(args) => check::run(cli.config.as_deref(), args),
        Command::Simulate(args) => simulate::run(args),
        Command::Run(args) => match named_secrets_readable(cli.config.as_deref()) {
            Ok(()) => run::run(cli.config.as_deref(), args),
            Err(code) => code,
        },
        Command::Status(args) => ops::status(cli.config.as_deref(), args),
        Command::Start(args) => act::start(cli.config.as_deref(), actor, args),
        Command::Pause(args) => act::intent(cli.config.as_deref(), actor, ActionKind::Pause, args),
        Command::Resume(args) => ops::resume(cli.config.as_deref(), actor, args),
        Command::Rollback(args) if args.now => {
            breakglass::rollback_now(cli.config.as_deref(), actor, &args)
        }
        Command::Rollback(args) => act::intent(
            cli.config.as_deref(),
            actor,
            ActionKind::Rollback,
            ops::IntentArgs {
                api: args.api,
                reason: args.reason,
            },
        ),
        Command::Promote(args) => {
            act::intent(cli.config.as_deref(), actor, ActionKind::Promote, args)
        }
        Command::Approve(args) => {
            act::intent(cli.config.as_deref(), actor, ActionKind::Approve, args)
        }
        Command::Sync(args) => match named_secrets_readable(cli.config.as_deref()) {
            Ok(()) => sync::run(cli.config.as_deref(), args),
            Err(code) => code,
        },
        Command::Replay(args) => replay::run(cli.config.as_deref(), args),
        Command::Calibrate(args) => calibrate::run(cli.config.as_deref(), args),
        Command::HaproxyConfig(args) => haproxy_config::run(args),
        Command::Campaign(args) => campaign::run(cli.config.as_deref(), actor, args),
        Command::Breaker(args) => breaker::run(cli.config.as_deref(), actor, args),
    }
}

/// The config at `path`, or the built-in defaults; prints every error and returns exit code 2.
pub(crate) fn load_config(path: Option<&Path>) -> Result<crate::policy::Config, i32> {
    match path {
        None => Ok(crate::policy::Config::default()),
        Some(p) => crate::policy::Config::load(p).map_err(|errors| {
            for e in errors {
                eprintln!("{e}");
            }
            EXIT_CONFIG
        }),
    }
}

/// For the long-running commands: every secret the config at `path` names can be read (a missing
/// one is a configuration error at start, not "no credentials"); prints each problem and returns
/// exit code 2. A config that does not load is left to the command, which reports it.
fn named_secrets_readable(path: Option<&Path>) -> Result<(), i32> {
    let Some(Ok(config)) = path.map(crate::policy::Config::load) else {
        return Ok(());
    };
    let errors = config.check_secrets();
    for e in &errors {
        eprintln!("{e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EXIT_CONFIG)
    }
}

/// A tokio runtime for the commands that talk to servers.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            EXIT_FAILURE
        })
}
