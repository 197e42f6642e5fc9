//! `greenlight check [PATH...]`: validate policies.

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files or directories (default: the configured policies directory).
    pub paths: Vec<PathBuf>,
}

pub fn run(_config: Option<&Path>, _args: CheckArgs) -> i32 {
    0
}
