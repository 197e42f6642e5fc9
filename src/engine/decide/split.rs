//! The observed traffic split: does green receive the share of requests its weight configures?
//!
//! Every counted window compares green's observed share of requests o = n_g / (n_g + n_b) (from
//! the first error-rate check, else the first latency check) with the configured share
//! c = green weight / total weight. The window mismatches when
//! |o − c| > max(½·min(c, 1 − c), 4·√(c(1 − c)/n)): off by more than half of the smaller share,
//! and by more than four binomial standard errors. After [`SPLIT_MISMATCH_WINDOWS`] mismatching
//! windows in a row greenlight stops advancing (rollback stays armed) and raises a notice with
//! both numbers; one matching window clears it.

use super::{Draft, Notice};
use crate::engine::observation::{CheckData, Observation};
use crate::engine::state::RolloutState;
use crate::policy::{CheckKind, Colour, Policy};

/// Consecutive mismatching windows before holding.
pub const SPLIT_MISMATCH_WINDOWS: u32 = 3;

/// The hold reason when green has persistently not received its configured share.
pub(super) fn mismatch(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    d: &mut Draft,
) -> Option<String> {
    if !policy.data_quality.check_traffic_split {
        return None;
    }
    let candidate = s.candidate();
    let total = s.weights.blue + s.weights.green;
    if total == 0 || s.weights.green == 0 || s.weights.blue == 0 {
        return None;
    }
    let c = s.weights.of(candidate) as f64 / total as f64;
    let (n_g, n_b) = observed(policy, obs, candidate)?;
    let n = n_g + n_b;
    if n.is_nan() || n < 1.0 {
        // No requests: nothing to compare; the window neither counts nor clears.
        return None;
    }
    let o = n_g / n;
    let tolerance = (0.5 * c.min(1.0 - c)).max(4.0 * (c * (1.0 - c) / n).sqrt());
    let q = &mut s.quality;
    if (o - c).abs() <= tolerance {
        q.split_mismatch_windows = 0;
        q.split_mismatch_alerted = false;
        return None;
    }
    q.split_mismatch_windows += 1;
    if q.split_mismatch_windows < SPLIT_MISMATCH_WINDOWS {
        return None;
    }
    let (observed_percent, configured_percent) = (o * 100.0, c * 100.0);
    if !q.split_mismatch_alerted {
        q.split_mismatch_alerted = true;
        d.notices.push(Notice::TrafficSplitMismatch {
            observed_percent,
            configured_percent,
            windows: q.split_mismatch_windows,
        });
    }
    Some(format!(
        "{candidate} receives {} % of requests, configured {} % ({} windows in a row)",
        percent(observed_percent),
        percent(configured_percent),
        q.split_mismatch_windows
    ))
}

/// The candidate's and the stable copy's requests this window, from the first check that counts
/// requests.
fn observed(policy: &Policy, obs: &Observation, candidate: Colour) -> Option<(f64, f64)> {
    let stable = candidate.other();
    let from = |want_latency: bool| {
        policy
            .checks
            .iter()
            .find_map(|c| match (&c.kind, obs.check(&c.name)) {
                (CheckKind::ErrorRate { .. }, Some(Ok(CheckData::Errors { counts })))
                    if !want_latency =>
                {
                    Some((counts.of(candidate).requests, counts.of(stable).requests))
                }
                (CheckKind::LatencyHistogram { .. }, Some(Ok(CheckData::Latency { edges })))
                    if want_latency =>
                {
                    edges.first().map(|e| {
                        (
                            e.counts.of(candidate).requests,
                            e.counts.of(stable).requests,
                        )
                    })
                }
                _ => None,
            })
    };
    from(false).or_else(|| from(true))
}

/// A share in percent, without trailing zeros: two decimals below 1 %, one above (`0.04`,
/// `0.3`, `12.5`, `25`).
pub fn percent(p: f64) -> String {
    let text = if p < 1.0 {
        format!("{p:.2}")
    } else {
        format!("{p:.1}")
    };
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
