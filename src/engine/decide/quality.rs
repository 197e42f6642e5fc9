//! Data quality: every check must have clean, plausible data, or nothing of the window counts.

use jiff::Timestamp;

use super::{check_stuck, elapsed, Action, Draft, Notice};
use crate::engine::observation::{CheckData, DataProblem, Observation, Pair};
use crate::engine::state::RolloutState;
use crate::policy::{CheckKind, Policy};

/// Whether the window's data can be used. Otherwise the decision is a hold saying why (and the
/// "metrics unavailable" notice once the outage has lasted `no_data_alert_after`).
pub(super) fn usable(
    policy: &Policy,
    s: &mut RolloutState,
    obs: &Observation,
    now: Timestamp,
    d: &mut Draft,
) -> bool {
    d.problems = data_problems(policy, obs);
    if !d.problems.is_empty() {
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
        return false;
    }
    s.last_good_data_at = Some(obs.end);
    s.no_data_alerted = false;
    true
}

/// The checks whose queries failed in the metrics backend itself, as `check: problem`.
pub(super) fn backend_problems(policy: &Policy, obs: &Observation) -> Vec<String> {
    policy
        .checks
        .iter()
        .filter_map(|check| match obs.check(&check.name) {
            Some(Err(p @ DataProblem::Backend(_))) => Some(format!("{}: {p}", check.name)),
            _ => None,
        })
        .collect()
}

/// Every reason this window's data cannot be used, as `check: problem` (empty when clean).
fn data_problems(policy: &Policy, obs: &Observation) -> Vec<String> {
    let mut problems = Vec::new();
    for check in &policy.checks {
        match obs.check(&check.name) {
            None => problems.push(format!("{}: {}", check.name, DataProblem::NoData)),
            Some(Err(p)) => problems.push(format!("{}: {p}", check.name)),
            Some(Ok(data)) => {
                if let Err(p) = shape_matches(&check.kind, data) {
                    problems.push(format!("{}: {p}", check.name));
                }
            }
        }
    }
    problems
}

/// Whether the observation's data has the shape the check expects (and finite, non-negative counts).
fn shape_matches(kind: &CheckKind, data: &CheckData) -> Result<(), DataProblem> {
    let finite_pair = |p: &Pair| {
        [p.blue.requests, p.blue.bad, p.green.requests, p.green.bad]
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0)
            && p.blue.bad <= p.blue.requests
            && p.green.bad <= p.green.requests
    };
    match (kind, data) {
        (CheckKind::ErrorRate { .. }, CheckData::Errors { counts }) => {
            if finite_pair(counts) {
                Ok(())
            } else {
                Err(DataProblem::NotFinite(format!("{counts:?}")))
            }
        }
        (CheckKind::LatencyHistogram { edges, .. }, CheckData::Latency { edges: got }) => {
            for edge in edges {
                match got.iter().find(|e| e.edge == *edge) {
                    None => return Err(DataProblem::Partial(format!("no bucket le=\"{edge}\""))),
                    Some(e) if !finite_pair(&e.counts) => {
                        return Err(DataProblem::NotFinite(format!("{:?}", e.counts)))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        (CheckKind::Threshold { .. }, CheckData::Value { green, blue }) => {
            if green.is_finite() && blue.is_none_or(f64::is_finite) {
                Ok(())
            } else {
                Err(DataProblem::NotFinite(format!(
                    "green {green}, blue {blue:?}"
                )))
            }
        }
        _ => Err(DataProblem::Partial(
            "data of another kind than the check".into(),
        )),
    }
}
