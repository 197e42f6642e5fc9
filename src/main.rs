//! The `greenlight` binary: parse the command line, run, map errors to exit codes.

use clap::Parser;

fn main() {
    let cli = greenlight::cli::Cli::parse();
    std::process::exit(greenlight::cli::run(cli));
}
