//! `greenlight haproxy-config POLICY...`: prints the HAProxy backend rules of every sticky-mode
//! policy given, and with `--maps DIR` writes the map files they read.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::policy::load_paths;
use crate::traffic::sticky;

#[derive(Debug, Args)]
pub struct HaproxyConfigArgs {
    /// Policy files or directories; policies not in sticky mode are skipped with a note.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Also write the initial map files (share 0: everyone on blue) into this directory, named as
    /// the rules expect them under the policy's `map_dir`.
    #[arg(long)]
    pub maps: Option<PathBuf>,
    /// Salt of the first rollout written into the maps (greenlight sets a new one per rollout).
    #[arg(long, default_value = "initial")]
    pub salt: String,
}

/// Prints the rules on stdout; returns 2 when a policy is invalid or none is in sticky mode.
pub fn run(args: HaproxyConfigArgs) -> i32 {
    let report = load_paths(&args.paths, None);
    for e in &report.errors {
        eprintln!("{e}");
    }
    if !report.errors.is_empty() {
        return super::EXIT_CONFIG;
    }
    if args.salt.is_empty() || args.salt.chars().any(|c| !c.is_ascii_alphanumeric()) {
        eprintln!("error: --salt must be letters and digits");
        return super::EXIT_CONFIG;
    }
    let mut printed = 0;
    for policy in &report.policies {
        let Some(rules) = sticky::haproxy_config(policy) else {
            eprintln!(
                "note: {}: not in sticky mode (traffic.mode = \"sticky\"); nothing to generate",
                policy.api
            );
            continue;
        };
        println!("{rules}");
        printed += 1;
        if let Some(dir) = &args.maps {
            let maps = sticky::initial_maps(policy, &args.salt).unwrap_or_default();
            for (path, text) in maps {
                let name = Path::new(&path).file_name().unwrap_or_default();
                let target = dir.join(name);
                if let Err(e) = std::fs::write(&target, text) {
                    eprintln!("error: cannot write {}: {e}", target.display());
                    return super::EXIT_FAILURE;
                }
                eprintln!("wrote {} (install as {path})", target.display());
            }
        }
    }
    if printed == 0 {
        eprintln!("error: no policy in sticky mode among the paths given");
        return super::EXIT_CONFIG;
    }
    0
}
