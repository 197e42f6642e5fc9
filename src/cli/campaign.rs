//! `greenlight campaign status|start|pause|resume|stop NAME`: show a campaign, or record an
//! operator's request on it (compare-and-set in Consul) for the leader's next look.

use std::io::{self, Write};
use std::path::Path;

use clap::{Args, Subcommand};

use super::ops::{policies, store};
use crate::audit::Actor;
use crate::campaign::CampaignIntent;
use crate::daemon::CampaignStore;
use crate::policy::{Campaign, Config, Policy};
use crate::server::CampaignView;

#[derive(Debug, Args)]
pub struct CampaignArgs {
    #[command(subcommand)]
    pub command: CampaignCommand,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Show a campaign: status, current wave, where each API stands.
    Status {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a campaign (or start it afresh after it stopped or finished).
    Start { name: String },
    /// Start no further API until `resume` (running rollouts go on).
    Pause { name: String },
    /// Continue a paused or stopped campaign (a rollback that stopped it counts as skipped).
    Resume { name: String },
    /// Start no further API (running rollouts go on).
    Stop { name: String },
}

/// Runs one `campaign` subcommand; returns the exit code.
pub fn run(config: Option<&Path>, actor: &Actor, args: CampaignArgs) -> i32 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (name, intent, json) = match args.command {
        CampaignCommand::Status { name, json } => (name, None, json),
        CampaignCommand::Start { name } => (name, Some(CampaignIntent::Start), false),
        CampaignCommand::Pause { name } => (name, Some(CampaignIntent::Pause), false),
        CampaignCommand::Resume { name } => (name, Some(CampaignIntent::Resume), false),
        CampaignCommand::Stop { name } => (name, Some(CampaignIntent::Stop), false),
    };
    let policies = match policies(&config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (campaign, waves) = match campaign_of(&config, &policies, &name) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let campaigns = match store(&config) {
        Ok(s) => CampaignStore::new(s.client().clone(), &config.consul.prefix),
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(intent) = intent {
        return match runtime.block_on(campaigns.request(&name, intent, &actor.user)) {
            Ok(_) => {
                println!(
                    "campaign {name}: {} requested by {}; the daemon acts on it at its next look",
                    intent.as_str(),
                    actor.user
                );
                0
            }
            Err(e) => {
                eprintln!("error: campaign {name}: {e}");
                super::EXIT_FAILURE
            }
        };
    }
    match runtime.block_on(campaigns.load(&name)) {
        Ok((state, index)) => {
            let view = CampaignView::new(&campaign, &waves, &state, index);
            let mut out = io::stdout().lock();
            let written = if json {
                serde_json::to_writer_pretty(&mut out, &view)
                    .map_err(io::Error::other)
                    .and_then(|()| writeln!(out))
            } else {
                print_view(&mut out, &view)
            };
            super::ops::finish_output(written.and_then(|()| out.flush()))
        }
        Err(e) => {
            eprintln!("error: campaign {name}: {e}");
            super::EXIT_FAILURE
        }
    }
}

/// The campaign named `name` from the campaigns directory, resolved against `policies`.
fn campaign_of(
    config: &Config,
    policies: &[Policy],
    name: &str,
) -> Result<(Campaign, Vec<Vec<String>>), i32> {
    let refs: Vec<&Policy> = policies.iter().collect();
    let report = config.load_campaigns(&refs);
    for e in &report.errors {
        eprintln!("{e}");
    }
    let Some(campaign) = report.campaigns.into_iter().find(|c| c.name == name) else {
        eprintln!(
            "error: no valid campaign {name:?} in {}",
            config.campaigns_dir.display()
        );
        return Err(super::EXIT_CONFIG);
    };
    let waves = campaign.resolve(refs.iter().copied()).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        super::EXIT_CONFIG
    })?;
    Ok((campaign, waves))
}

/// The campaign lines of `greenlight status`: every valid campaign with a stored state.
pub(super) fn status_lines(
    config: &Config,
    policies: &[Policy],
    runtime: &tokio::runtime::Runtime,
    campaigns: &CampaignStore,
) -> Vec<String> {
    let refs: Vec<&Policy> = policies.iter().collect();
    let report = config.load_campaigns(&refs);
    let mut lines = Vec::new();
    for c in report.campaigns {
        let Ok(waves) = c.resolve(refs.iter().copied()) else {
            continue;
        };
        if let Ok((state, index)) = runtime.block_on(campaigns.load(&c.name)) {
            lines.push(CampaignView::new(&c, &waves, &state, index).line());
        }
    }
    lines
}

fn print_view(out: &mut impl Write, v: &CampaignView) -> io::Result<()> {
    writeln!(out, "{}", v.line())?;
    if let Some(intent) = &v.intent {
        writeln!(out, "  pending request: {intent}")?;
    }
    for (i, w) in v.waves.iter().enumerate() {
        let apis: Vec<String> = w
            .apis
            .iter()
            .map(|a| format!("{}={}", a.api, a.state))
            .collect();
        writeln!(out, "  wave {} ({}): {}", i + 1, w.name, apis.join(" "))?;
    }
    Ok(())
}
