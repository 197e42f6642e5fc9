//! `greenlight check [PATH...]`: validate the daemon config and policies, print every error.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::policy::{load_paths, Config, PolicyError};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files or directories (default: the configured policies directory). Alert channel
    /// names are checked against the config given with --config; without one they are not.
    pub paths: Vec<PathBuf>,
}

/// Prints each error as `file:line:col: message` on stderr and `ok: N policies (names)` on
/// stdout; returns 2 when anything is wrong, 0 otherwise.
pub fn run(config: Option<&Path>, args: CheckArgs) -> i32 {
    let mut errors: Vec<PolicyError> = Vec::new();
    let (config, channels) = match config {
        Some(path) => match Config::load(path) {
            Ok(config) => {
                let names = config.channel_names();
                (config, Some(names))
            }
            Err(config_errors) => {
                errors.extend(config_errors);
                (Config::default(), None)
            }
        },
        None => (Config::default(), None),
    };
    let paths = if args.paths.is_empty() {
        vec![config.policies_dir.clone()]
    } else {
        args.paths
    };

    let report = load_paths(&paths, channels.as_deref());
    errors.extend(report.errors);
    if report.policies.is_empty() && errors.is_empty() {
        for path in &paths {
            errors.push(PolicyError {
                file: path.clone(),
                line: 0,
                col: 0,
                message: "no policy files (*.toml) found".into(),
            });
        }
    }

    let mut stderr = std::io::stderr().lock();
    for error in &errors {
        let _ = writeln!(stderr, "{error}");
    }
    let names: Vec<&str> = report.policies.iter().map(|p| p.api.as_str()).collect();
    let noun = if names.len() == 1 {
        "policy"
    } else {
        "policies"
    };
    let listed = if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    };
    let _ = writeln!(
        std::io::stdout().lock(),
        "ok: {} {noun}{listed}",
        names.len()
    );

    if errors.is_empty() {
        0
    } else {
        crate::cli::EXIT_CONFIG
    }
}
