//! The command-line front: argument parsing and one function per subcommand.

mod calibrate;
mod check;
mod replay;
mod simulate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files or directories; prints every error as file:line:col.
    Check(check::CheckArgs),
    /// Run the real engine against a synthetic blue/green pair in accelerated time.
    Simulate(simulate::SimulateArgs),
    /// Backtest a policy on recorded metrics: the decisions greenlight would have taken.
    Replay(replay::ReplayArgs),
    /// Estimate each check's overdispersion φ from history where blue and green are the same.
    Calibrate(calibrate::CalibrateArgs),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Check(args) => check::run(cli.config.as_deref(), args),
        Command::Simulate(args) => simulate::run(args),
        Command::Replay(args) => replay::run(cli.config.as_deref(), args),
        Command::Calibrate(args) => calibrate::run(cli.config.as_deref(), args),
    }
}
