//! `greenlight check [PATH...]`: validate the daemon config (and that its secrets can be read)
//! the policies and the campaign files, print every error.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::policy::{load_campaigns, load_paths, Config, LoadReport, PolicyError};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files or directories (default: the configured policies directory). With --config,
    /// alert channel names and weight keys (outside consul.prefix) are checked against it, and
    /// every secret it names must be readable; without one they are not.
    pub paths: Vec<PathBuf>,
}

/// Prints each error as `file:line:col: message` on stderr and `ok: N policies (names)` on
/// stdout; returns 2 when anything is wrong, 0 otherwise.
pub fn run(config: Option<&Path>, args: CheckArgs) -> i32 {
    let mut errors: Vec<PolicyError> = Vec::new();
    let mut campaigns_dir = None;
    let mut channels = None;
    // Paths given name only some policies: campaign files are then validated but not resolved.
    let explicit = !args.paths.is_empty();
    let (report, paths) = match config.map(Config::load) {
        // A config that does not load names no policies directory: check only the paths given,
        // never a default `./policies` the config may not mean.
        Some(Err(config_errors)) => {
            errors.extend(config_errors);
            if args.paths.is_empty() {
                (LoadReport::default(), Vec::new())
            } else {
                (load_paths(&args.paths, None), args.paths)
            }
        }
        Some(Ok(config)) => {
            errors.extend(config.check_secrets());
            campaigns_dir = Some(config.campaigns_dir.clone());
            channels = Some(config.channel_names());
            let paths = if args.paths.is_empty() {
                vec![config.policies_dir.clone()]
            } else {
                args.paths
            };
            (config.load_policy_paths(&paths), paths)
        }
        None => {
            // Like the default policies directory, the default campaigns directory is checked
            // only when no path is given.
            campaigns_dir = (!explicit).then(|| Config::default().campaigns_dir);
            let paths = if args.paths.is_empty() {
                vec![Config::default().policies_dir]
            } else {
                args.paths
            };
            (load_paths(&paths, None), paths)
        }
    };
    errors.extend(report.errors);
    // Campaign files, resolved against the policies just loaded (an unknown API, an empty
    // wave, an API that starts on its own are errors).
    let policies: Vec<&crate::policy::Policy> = report.policies.iter().collect();
    let resolve = (!explicit).then_some(policies.as_slice());
    let campaigns = campaigns_dir
        .map(|dir| load_campaigns(&dir, channels.as_deref(), resolve))
        .unwrap_or_default();
    errors.extend(campaigns.errors);
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

    if !campaigns.campaigns.is_empty() {
        let names: Vec<&str> = campaigns
            .campaigns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let noun = if names.len() == 1 {
            "campaign"
        } else {
            "campaigns"
        };
        let _ = writeln!(
            std::io::stdout().lock(),
            "ok: {} {noun} ({})",
            names.len(),
            names.join(", ")
        );
    }

    if errors.is_empty() {
        0
    } else {
        crate::cli::EXIT_CONFIG
    }
}
