//! [`plan`]: one look at a campaign. Pure: the same inputs give the same plan, so a leader that
//! crashed between writing the campaign state and starting an API recovers by planning again
//! (an API already started is never started twice; one recorded but whose start never landed is
//! started again).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::{ApiOutcome, CampaignIntent, CampaignState, CampaignStatus, StartedApi};
use crate::engine::Phase;
use crate::policy::{Campaign, OnRollback};

/// What the plan needs to know of one API's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiView {
    pub phase: Phase,
    /// A start intent waits for the API's next evaluation.
    pub start_pending: bool,
    /// When its current (or last) rollout started.
    pub rollout_started_at: Option<Timestamp>,
}

/// What the executor does, in order, after writing the planned state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignAction {
    /// Write a start intent on this API (actor `campaign:<name>`).
    StartApi {
        api: String,
        wave: usize,
    },
    /// The campaign (re)started.
    Started,
    Paused {
        by: String,
    },
    Resumed {
        by: String,
    },
    /// Every API of this wave is done.
    WaveDone {
        wave: usize,
    },
    Stopped {
        reason: String,
    },
    /// Every API of every wave is done.
    Finished,
}

/// The next state and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub state: CampaignState,
    pub actions: Vec<CampaignAction>,
}

impl Plan {
    /// Whether the state must be written (it differs from the one planned from).
    pub fn changed(&self, from: &CampaignState) -> bool {
        self.state != *from
    }
}

/// Plans one look at `campaign` (its `waves` resolved against the policies), given its stored
/// `state` and the rollouts of its APIs (an API missing from `apis` is held: never started,
/// never judged).
pub fn plan(
    campaign: &Campaign,
    waves: &[Vec<String>],
    state: &CampaignState,
    apis: &BTreeMap<String, ApiView>,
    now: Timestamp,
) -> Plan {
    let mut s = state.clone();
    let mut actions = Vec::new();
    if let Some(intent) = s.intent.take() {
        let by = s.intent_by.take().unwrap_or_else(|| "an operator".into());
        obey(&mut s, intent, by, apis, now, &mut actions);
    }
    judge_running(campaign, &mut s, apis, &mut actions);
    if s.status == CampaignStatus::Running {
        advance(campaign, waves, &mut s, apis, now, &mut actions);
    }
    if s != *state {
        s.revision = state.revision + 1;
        s.updated_at = Some(now);
    }
    Plan { state: s, actions }
}

fn obey(
    s: &mut CampaignState,
    intent: CampaignIntent,
    by: String,
    apis: &BTreeMap<String, ApiView>,
    now: Timestamp,
    actions: &mut Vec<CampaignAction>,
) {
    use CampaignStatus::*;
    match (intent, s.status) {
        (CampaignIntent::Start, Idle | Stopped | Finished) => {
            s.status = Running;
            s.reason = None;
            s.wave = 0;
            s.apis.clear();
            s.started_at = Some(now);
            s.started_by = Some(by);
            actions.push(CampaignAction::Started);
        }
        (CampaignIntent::Pause, Running) => {
            s.status = Paused;
            s.reason = Some(format!("Paused by {by}."));
            actions.push(CampaignAction::Paused { by });
        }
        (CampaignIntent::Resume, Paused | Stopped) => {
            // An API whose rollback stopped the campaign is skipped from now on.
            for (api, started) in s.apis.iter_mut() {
                let rolled_back = apis.get(api).is_some_and(|v| {
                    v.phase == Phase::RolledBack && !v.start_pending && landed(started, v)
                });
                if started.outcome.is_none() && rolled_back {
                    started.outcome = Some(ApiOutcome::Skipped);
                }
            }
            s.status = Running;
            s.reason = None;
            actions.push(CampaignAction::Resumed { by });
        }
        (CampaignIntent::Stop, Running | Paused) => {
            let reason = format!("Stopped by {by}.");
            s.status = Stopped;
            s.reason = Some(reason.clone());
            actions.push(CampaignAction::Stopped { reason });
        }
        // Anything else does not apply (e.g. pausing a finished campaign): dropped.
        _ => {}
    }
}

/// Whether the campaign's start of this API has landed: a rollout began since.
fn landed(started: &StartedApi, view: &ApiView) -> bool {
    view.rollout_started_at.is_some() && view.rollout_started_at != started.previous_rollout
}

/// Records how started APIs ended, stops the campaign on a rollback it does not skip, and
/// starts again an API whose start never landed.
fn judge_running(
    campaign: &Campaign,
    s: &mut CampaignState,
    apis: &BTreeMap<String, ApiView>,
    actions: &mut Vec<CampaignAction>,
) {
    let active = matches!(s.status, CampaignStatus::Running | CampaignStatus::Paused);
    let mut stop: Option<String> = None;
    for (api, started) in s.apis.iter_mut() {
        if started.outcome.is_some() {
            continue;
        }
        let Some(view) = apis.get(api) else { continue };
        if view.start_pending {
            continue;
        }
        match view.phase {
            Phase::Promoted if landed(started, view) => {
                started.outcome = Some(ApiOutcome::Promoted)
            }
            Phase::RolledBack if landed(started, view) => match campaign.on_rollback {
                OnRollback::Skip => started.outcome = Some(ApiOutcome::Skipped),
                OnRollback::Stop => {
                    if active && stop.is_none() {
                        stop = Some(format!("{api} rolled back."));
                    }
                }
            },
            Phase::Pending | Phase::RolledBack | Phase::Promoted => {
                // Recorded as started, but the start intent was never written (a crash
                // between the two writes) or was replaced before it landed: write it now.
                if s.status == CampaignStatus::Running {
                    actions.push(CampaignAction::StartApi {
                        api: api.clone(),
                        wave: started.wave,
                    });
                }
            }
            Phase::Progressing | Phase::Paused | Phase::Baking => {}
        }
    }
    if let Some(reason) = stop {
        s.status = CampaignStatus::Stopped;
        s.reason = Some(reason.clone());
        actions.push(CampaignAction::Stopped { reason });
    }
}

/// Marks finished waves done and starts the current wave's next APIs while slots are free.
fn advance(
    campaign: &Campaign,
    waves: &[Vec<String>],
    s: &mut CampaignState,
    apis: &BTreeMap<String, ApiView>,
    now: Timestamp,
    actions: &mut Vec<CampaignAction>,
) {
    let in_campaign: BTreeSet<&str> = waves.iter().flatten().map(String::as_str).collect();
    while s.wave < waves.len() {
        let wave = &waves[s.wave];
        let done = wave
            .iter()
            .all(|a| s.apis.get(a).is_some_and(|x| x.outcome.is_some()));
        if done {
            actions.push(CampaignAction::WaveDone { wave: s.wave });
            s.wave += 1;
            continue;
        }
        if campaign.schedule.as_ref().is_some_and(|sc| !sc.allows(now)) {
            return;
        }
        let cap = campaign.max_concurrent;
        let wave_cap = campaign
            .waves
            .get(s.wave)
            .and_then(|w| w.max_concurrent)
            .unwrap_or(cap)
            .min(cap);
        let mut running = s
            .running()
            .filter(|(a, _)| in_campaign.contains(a.as_str()))
            .count();
        let mut running_here = wave
            .iter()
            .filter(|a| s.apis.get(*a).is_some_and(|x| x.outcome.is_none()))
            .count();
        for api in wave {
            if running >= cap || running_here >= wave_cap {
                break;
            }
            if s.apis.contains_key(api) {
                continue;
            }
            let Some(view) = apis.get(api) else { continue };
            let mut started = StartedApi {
                wave: s.wave,
                at: now,
                previous_rollout: view.rollout_started_at,
                outcome: None,
            };
            match view.phase {
                Phase::Promoted if !view.start_pending => {
                    started.outcome = Some(ApiOutcome::AlreadyPromoted);
                }
                // Started by someone else already: adopted, its outcome counts.
                Phase::Progressing | Phase::Paused | Phase::Baking if !view.start_pending => {
                    started.previous_rollout = None;
                    running += 1;
                    running_here += 1;
                }
                _ => {
                    if !view.start_pending {
                        actions.push(CampaignAction::StartApi {
                            api: api.clone(),
                            wave: s.wave,
                        });
                    }
                    running += 1;
                    running_here += 1;
                }
            }
            s.apis.insert(api.clone(), started);
        }
        // An API found already promoted may have completed the wave.
        let done = wave
            .iter()
            .all(|a| s.apis.get(a).is_some_and(|x| x.outcome.is_some()));
        if !done {
            return;
        }
    }
    s.status = CampaignStatus::Finished;
    s.reason = None;
    actions.push(CampaignAction::Finished);
}

#[cfg(test)]
mod tests;
