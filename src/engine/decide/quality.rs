//! Data quality: every check must have clean, plausible data, or nothing of the window counts.
//!
//! Plausibility (pure, so `simulate` and `replay` apply it too): counts are finite and
//! non-negative, errors ≤ requests, latency exceedances non-increasing in `le` over one request
//! total, and a colour's requests within the policy's absolute cap
//! (`max_requests_per_second` × window) and within [`MAGNITUDE_FACTOR`] times the largest of the
//! last [`RECENT_WINDOWS`] usable windows of the same series at this step. Anything else is
//! [`DataProblem::OutOfRange`]: hold, nothing counted.
//!
//! Green's data missing or stale while blue's are present is not a metrics outage but a sign
//! that green stopped reporting: a critical notice after [`GREEN_MISSING_NOTICE_WINDOWS`]
//! windows, then `on_green_data_missing` once it has lasted `green_data_missing_for`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{check_stuck, elapsed, fmt_dur, rollback, Action, Draft, Notice};
use crate::engine::observation::{CheckData, DataProblem, Observation, Pair};
use crate::engine::state::RolloutState;
use crate::policy::{CheckKind, GreenMissingAction, Policy};

/// A window may hold at most this many times the largest recent count of the same series.
pub const MAGNITUDE_FACTOR: f64 = 100.0;
/// Recent counts below this are taken as this for the magnitude bound (a quiet series may wake).
pub const MAGNITUDE_FLOOR: f64 = 10.0;
/// Usable windows remembered per series for the magnitude bound.
pub const RECENT_WINDOWS: usize = 10;
/// Windows of green's data missing (blue's present) before the critical notice.
pub const GREEN_MISSING_NOTICE_WINDOWS: u32 = 2;

/// What the data-quality rules remember between windows. Small and finite; it is persisted with
/// the state and starts afresh at every step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityState {
    /// Start of the step these memories belong to.
    pub step_started_at: Option<Timestamp>,
    /// Requests of the last usable windows per series (`check/colour`), newest last.
    pub recent_requests: BTreeMap<String, Vec<f64>>,
    /// Start of the first window of the current run of "green missing, blue present".
    pub green_missing_since: Option<Timestamp>,
    /// Windows in that run.
    pub green_missing_windows: u32,
    /// Whether the notice for that run has been raised.
    pub green_missing_alerted: bool,
    /// Consecutive counted windows whose green share is far from the configured one.
    pub split_mismatch_windows: u32,
    /// Whether the notice for that mismatch has been raised.
    pub split_mismatch_alerted: bool,
}

/// Whether the window's data can be used. Otherwise the decision is settled here: a hold saying
/// why (with the "metrics unavailable" notice once an outage lasted `no_data_alert_after`), or,
/// when only green's data are missing, the green-missing rule.
pub(super) fn usable(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    now: Timestamp,
    d: &mut Draft,
) -> bool {
    if s.quality.step_started_at != s.step_started_at {
        s.quality = QualityState {
            step_started_at: s.step_started_at,
            ..QualityState::default()
        };
    }
    let problems = data_problems(policy, &s.quality, obs);
    d.problems = problems.iter().map(|(c, p)| format!("{c}: {p}")).collect();
    if problems.is_empty() {
        s.last_good_data_at = Some(obs.end);
        s.no_data_alerted = false;
        let q = &mut s.quality;
        q.green_missing_since = None;
        q.green_missing_windows = 0;
        q.green_missing_alerted = false;
        remember(policy, q, obs);
        return true;
    }
    if only_green_missing(policy, &problems) {
        green_missing(policy, s, obs, now, d);
        return false;
    }
    let since = s
        .last_good_data_at
        .or(s.step_started_at)
        .unwrap_or(obs.start);
    if !s.no_data_alerted && elapsed(since, now) >= policy.no_data_alert_after {
        s.no_data_alerted = true;
        d.notices.push(Notice::MetricsUnavailable {
            since,
            detail: d.problems.join("; "),
        });
    }
    d.set(
        Action::Hold,
        format!("Holding on unusable metrics: {}.", d.problems.join("; ")),
    );
    check_stuck(policy, s, now, d);
    false
}

/// Whether the window's problems say that green stopped reporting and nothing else: a
/// statistical check has green's data missing with blue's present, no other statistical check
/// has another problem, and the backend answered. A threshold guard's problem does not count
/// against it (a guard on green stops answering when green does).
fn only_green_missing(policy: &Policy, problems: &[(String, DataProblem)]) -> bool {
    let statistical = |name: &str| {
        policy
            .checks
            .iter()
            .any(|c| c.name == name && !matches!(c.kind, CheckKind::Threshold { .. }))
    };
    problems
        .iter()
        .any(|(_, p)| matches!(p, DataProblem::GreenMissing(_)))
        && problems.iter().all(|(check, p)| match p {
            DataProblem::GreenMissing(_) => true,
            DataProblem::Backend(_) => false,
            _ => !statistical(check),
        })
}

/// Green stopped reporting while blue still does: notice, then hold or roll back.
fn green_missing(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    now: Timestamp,
    d: &mut Draft,
) {
    let detail = d.problems.join("; ");
    // Named by colour: the candidate is green onto green, blue onto blue.
    let (c, b) = (s.candidate().capitalised(), s.releases.stable.as_str());
    let q = &mut s.quality;
    let since = *q.green_missing_since.get_or_insert(obs.start);
    q.green_missing_windows += 1;
    if q.green_missing_windows >= GREEN_MISSING_NOTICE_WINDOWS && !q.green_missing_alerted {
        q.green_missing_alerted = true;
        d.notices.push(Notice::GreenDataMissing {
            since,
            detail: detail.clone(),
        });
    }
    let lasted = elapsed(since, now);
    let limit = policy.data_quality.green_data_missing_for;
    match policy.data_quality.on_green_data_missing {
        GreenMissingAction::Rollback if lasted >= limit => {
            let reason = format!(
                "{c}'s metrics have been missing for {} while {b}'s are present: {detail}",
                fmt_dur(lasted)
            );
            rollback::roll_back(policy, s, reason, d);
        }
        action => {
            let then = match action {
                GreenMissingAction::Rollback => format!("rolling back after {}", fmt_dur(limit)),
                GreenMissingAction::Hold => "on_green_data_missing = \"hold\"".to_string(),
            };
            d.set(
                Action::Hold,
                format!(
                    "{c}'s metrics are missing while {b}'s are present, for {} ({then}): {detail}.",
                    fmt_dur(lasted)
                ),
            );
            check_stuck(policy, s, now, d);
        }
    }
}

/// The checks whose answers show the metrics backend failing or answering garbage (NaN,
/// negative or absurd counts), as `check: problem`: an automatic start waits for them.
pub(super) fn backend_problems(policy: &Policy, obs: &Observation) -> Vec<String> {
    policy
        .checks
        .iter()
        .filter_map(|check| match obs.check(&check.name) {
            Some(Err(
                p @ (DataProblem::Backend(_)
                | DataProblem::NotFinite(_)
                | DataProblem::OutOfRange(_)),
            )) => Some(format!("{}: {p}", check.name)),
            // Garbage in an answer (NaN, negative or absurd counts) is a backend answering
            // nonsense, not green's missing traffic.
            Some(Ok(data)) => {
                let cap = policy.data_quality.max_requests_per_second * window_seconds(policy, obs);
                match shape_matches(&check.kind, data)
                    .and_then(|()| magnitude(&check.name, data, &QualityState::default(), cap))
                {
                    Err(p @ (DataProblem::NotFinite(_) | DataProblem::OutOfRange(_))) => {
                        Some(format!("{}: {p}", check.name))
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// Every reason this window's data cannot be used, by check (empty when clean).
fn data_problems(
    policy: &Policy,
    q: &QualityState,
    obs: &Observation,
) -> Vec<(String, DataProblem)> {
    let cap = policy.data_quality.max_requests_per_second * window_seconds(policy, obs);
    let mut problems = Vec::new();
    for check in &policy.checks {
        let problem = match obs.check(&check.name) {
            None => Some(DataProblem::NoData),
            Some(Err(p)) => Some(p.clone()),
            Some(Ok(data)) => shape_matches(&check.kind, data)
                .and_then(|()| magnitude(&check.name, data, q, cap))
                .err(),
        };
        if let Some(p) = problem {
            problems.push((check.name.clone(), p));
        }
    }
    problems
}

/// The window's length in seconds (at least one).
fn window_seconds(policy: &Policy, obs: &Observation) -> f64 {
    let w = obs.start.duration_until(obs.end).as_secs_f64();
    if w >= 1.0 {
        w
    } else {
        policy.interval.as_secs_f64().max(1.0)
    }
}

/// Whether the observation's data has the shape the check expects, with finite, non-negative
/// counts, errors ≤ requests and latency exceedances non-increasing in `le`.
fn shape_matches(kind: &CheckKind, data: &CheckData) -> Result<(), DataProblem> {
    match (kind, data) {
        (CheckKind::ErrorRate { .. }, CheckData::Errors { counts }) => plausible_pair(counts),
        (CheckKind::LatencyHistogram { edges, .. }, CheckData::Latency { edges: got }) => {
            let mut seen = Vec::with_capacity(edges.len());
            for edge in edges {
                match got.iter().find(|e| e.edge == *edge) {
                    None => return Err(DataProblem::Partial(format!("no bucket le=\"{edge}\""))),
                    Some(e) => {
                        plausible_pair(&e.counts)?;
                        seen.push(*e);
                    }
                }
            }
            seen.sort_by(|a, b| a.edge.total_cmp(&b.edge));
            for w in seen.windows(2) {
                let (lo, hi) = (&w[0], &w[1]);
                for (colour, a, b) in [
                    ("blue", lo.counts.blue, hi.counts.blue),
                    ("green", lo.counts.green, hi.counts.green),
                ] {
                    if a.requests != b.requests {
                        return Err(DataProblem::OutOfRange(format!(
                            "{colour} requests differ between le=\"{}\" ({}) and le=\"{}\" ({})",
                            lo.edge, a.requests, hi.edge, b.requests
                        )));
                    }
                    if b.bad > a.bad {
                        return Err(DataProblem::OutOfRange(format!(
                            "{colour}: more requests slower than {}s ({}) than slower than {}s ({}); buckets must be cumulative",
                            hi.edge, b.bad, lo.edge, a.bad
                        )));
                    }
                }
            }
            Ok(())
        }
        (CheckKind::Threshold { .. }, CheckData::Value { candidate, stable }) => {
            if candidate.is_finite() && stable.is_none_or(f64::is_finite) {
                Ok(())
            } else {
                Err(DataProblem::NotFinite(format!(
                    "candidate {candidate}, stable {stable:?}"
                )))
            }
        }
        _ => Err(DataProblem::Partial(
            "data of another kind than the check".into(),
        )),
    }
}

/// Finite, non-negative counts with at most as many bad requests as requests.
fn plausible_pair(p: &Pair) -> Result<(), DataProblem> {
    let finite = [p.blue.requests, p.blue.bad, p.green.requests, p.green.bad]
        .iter()
        .all(|x| x.is_finite() && *x >= 0.0);
    if !finite {
        return Err(DataProblem::NotFinite(format!("{p:?}")));
    }
    for (colour, c) in [("blue", p.blue), ("green", p.green)] {
        if c.bad > c.requests {
            return Err(DataProblem::OutOfRange(format!(
                "{colour}: {} bad of {} requests",
                c.bad, c.requests
            )));
        }
    }
    Ok(())
}

/// Each colour's request count of a statistical check, by series key.
fn requests_of(check: &str, data: &CheckData) -> Vec<(String, f64)> {
    let pair = match data {
        CheckData::Errors { counts } => *counts,
        CheckData::Latency { edges } => match edges.first() {
            Some(e) => e.counts,
            None => return Vec::new(),
        },
        CheckData::Value { .. } => return Vec::new(),
    };
    vec![
        (format!("{check}/blue"), pair.blue.requests),
        (format!("{check}/green"), pair.green.requests),
    ]
}

/// The absolute cap and the bound relative to the recent windows of the same series.
fn magnitude(check: &str, data: &CheckData, q: &QualityState, cap: f64) -> Result<(), DataProblem> {
    for (series, n) in requests_of(check, data) {
        let colour = series.rsplit('/').next().unwrap_or_default();
        if n > cap {
            return Err(DataProblem::OutOfRange(format!(
                "{colour} requests {n:e} exceed the cap of {cap:e} per window (max_requests_per_second)"
            )));
        }
        let recent = q
            .recent_requests
            .get(&series)
            .and_then(|v| v.iter().copied().reduce(f64::max));
        if let Some(largest) = recent {
            let bound = MAGNITUDE_FACTOR * largest.max(MAGNITUDE_FLOOR);
            if n > bound {
                return Err(DataProblem::OutOfRange(format!(
                    "{colour} requests {n:e} exceed {MAGNITUDE_FACTOR}× the largest of the recent windows ({largest})"
                )));
            }
        }
    }
    Ok(())
}

/// Remembers this (usable) window's request counts for the magnitude bound.
fn remember(policy: &Policy, q: &mut QualityState, obs: &Observation) {
    for check in &policy.checks {
        let Some(Ok(data)) = obs.check(&check.name) else {
            continue;
        };
        for (series, n) in requests_of(&check.name, data) {
            let v = q.recent_requests.entry(series).or_default();
            v.push(n);
            if v.len() > RECENT_WINDOWS {
                v.remove(0);
            }
        }
    }
    q.recent_requests.retain(|k, _| {
        k.rsplit_once('/')
            .is_some_and(|(name, _)| policy.checks.iter().any(|c| c.name == name))
    });
}
