//! `greenlight calibrate POLICY --from T --to T`: estimate the overdispersion φ of each check
//! from history where blue and green run the same version, and recommend the policy value.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::replay::{prepare, windows};
use crate::engine::{CheckData, Observation};
use crate::metrics::{observe_with, ObserveOptions, PromClient};
use crate::policy::{CheckKind, Colour, Policy, Roles};
use crate::stats::{estimate_dispersion, StatsError};

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Policy whose checks to calibrate.
    pub policy: PathBuf,
    /// Start of a range in which blue and green ran the same version (RFC 3339 or `-6h`).
    #[arg(long, allow_hyphen_values = true)]
    pub from: String,
    /// End of the range (RFC 3339, relative or `now`).
    #[arg(long, allow_hyphen_values = true, default_value = "now")]
    pub to: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// φ of one statistical stream (an error check, or one latency edge).
#[derive(Debug, Clone, Serialize)]
pub struct StreamDispersion {
    pub check: String,
    pub edge: Option<f64>,
    /// Intervals that had traffic on both sides and at least one bad event.
    pub intervals: u64,
    pub phi: Option<f64>,
    pub recommended: Option<f64>,
}

/// The recommendation for one check: the largest φ over its streams.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRecommendation {
    pub check: String,
    pub overdispersion: f64,
    pub current: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub windows: usize,
    /// Windows with unusable data (skipped).
    pub unusable_windows: usize,
    pub streams: Vec<StreamDispersion>,
    pub recommendations: Vec<CheckRecommendation>,
}

/// Estimates φ per stream from A/A observations. Pure.
pub fn calibrate(policy: &Policy, observations: &[Observation]) -> Calibration {
    let mut streams = Vec::new();
    let mut unusable = 0;
    for obs in observations {
        if obs.checks.iter().any(|c| c.data.is_err()) {
            unusable += 1;
        }
    }
    let mut recommendations = Vec::new();
    for check in &policy.checks {
        let (edges, current): (Vec<Option<f64>>, f64) = match &check.kind {
            CheckKind::ErrorRate { overdispersion, .. } => (vec![None], *overdispersion),
            CheckKind::LatencyHistogram {
                edges,
                overdispersion,
                ..
            } => (edges.iter().map(|e| Some(*e)).collect(), *overdispersion),
            CheckKind::Threshold { .. } => continue,
        };
        let mut best: Option<f64> = None;
        for edge in edges {
            let intervals = observations.iter().filter_map(|o| {
                let pair = match (o.check(&check.name)?, edge) {
                    (Ok(CheckData::Errors { counts }), None) => *counts,
                    (Ok(CheckData::Latency { edges }), Some(e)) => {
                        edges.iter().find(|x| x.edge == e)?.counts
                    }
                    _ => return None,
                };
                Some((
                    pair.green.requests,
                    pair.blue.requests,
                    pair.green.bad,
                    pair.blue.bad,
                ))
            });
            let (n, phi, rec) = match estimate_dispersion(intervals) {
                Ok(d) => (d.df, Some(d.phi), Some(d.recommended_phi)),
                Err(StatsError::NoUsableIntervals) | Err(_) => (0, None, None),
            };
            if let Some(r) = rec {
                best = Some(best.map_or(r, |b: f64| b.max(r)));
            }
            streams.push(StreamDispersion {
                check: check.name.clone(),
                edge,
                intervals: n,
                phi,
                recommended: rec,
            });
        }
        if let Some(b) = best {
            recommendations.push(CheckRecommendation {
                check: check.name.clone(),
                overdispersion: b,
                current,
            });
        }
    }
    Calibration {
        windows: observations.len(),
        unusable_windows: unusable,
        streams,
        recommendations,
    }
}

async fn fetch(
    client: &PromClient,
    policy: &Policy,
    options: &ObserveOptions,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Vec<Observation> {
    let mut out = Vec::new();
    for w in windows(from, to, policy.interval) {
        out.push(
            observe_with(
                client,
                policy,
                (w.start, w.end),
                Roles::stable(Colour::Blue),
                options,
            )
            .await,
        );
    }
    out
}

pub fn run(config: Option<&Path>, args: CalibrateArgs) -> i32 {
    let (policy, client, options, from, to) =
        match prepare(config, &args.policy, &args.from, &args.to) {
            Ok(v) => v,
            Err(code) => return code,
        };
    let observations = match super::runtime() {
        Ok(rt) => rt.block_on(fetch(&client, &policy, &options, from, to)),
        Err(code) => return code,
    };
    let c = calibrate(&policy, &observations);
    if args.json {
        println!("{}", serde_json::to_value(&c).unwrap_or_default());
    } else {
        println!(
            "Calibrating {} on {} windows from {from} to {to} ({} unusable). Blue and green must run \
             the same version in this range.",
            policy.api, c.windows, c.unusable_windows
        );
        println!(
            "{:<24} {:>10} {:>10} {:>8} {:>12}",
            "check", "edge", "intervals", "φ", "recommended"
        );
        for s in &c.streams {
            let f = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x:.2}"));
            println!(
                "{:<24} {:>10} {:>10} {:>8} {:>12}",
                s.check,
                s.edge.map_or("—".to_string(), |e| e.to_string()),
                s.intervals,
                f(s.phi),
                f(s.recommended)
            );
        }
        for r in &c.recommendations {
            println!(
                "Set `overdispersion = {}` in check {:?} (currently {}).",
                r.overdispersion, r.check, r.current
            );
        }
    }
    if c.recommendations.is_empty() {
        eprintln!("error: no window had traffic and bad events on both sides; nothing to estimate");
        return super::EXIT_FAILURE;
    }
    0
}
