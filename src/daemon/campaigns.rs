//! The leader's look at each campaign, once per tick: read the campaign state and its APIs'
//! rollouts, [`plan`], write the planned state (compare-and-set, fenced, with its alerts in the
//! shared outbox), then start the APIs the plan names through the operator's start intent
//! (audited, actor `campaign:<name>`). Killed between the two writes, the next look plans the
//! same starts again; an API whose start landed is never started twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;

use super::docs::CampaignStore;
use super::env::{Clock, RealEnv};
use super::shell::Shell;
use super::store::StoreError;
use crate::alert::{AlertEvent, EventKind, Severity};
use crate::audit::{perform, ActionError, ActionKind, ActionRequest, Actor};
use crate::campaign::{
    plan, ApiView, CampaignAction, CampaignIntent, CampaignState, CampaignStatus,
};
use crate::consul::Fence;
use crate::engine::Intent;
use crate::policy::{Campaign, Policy};
use crate::server::CampaignView;

/// A loaded campaign with its waves resolved against the loaded policies.
#[derive(Debug, Clone)]
pub(super) struct LoadedCampaign {
    pub(super) campaign: Arc<Campaign>,
    pub(super) waves: Vec<Vec<String>>,
}

/// Looks at every campaign once; a failure is logged and retried at the next look.
pub(super) async fn look_all(
    shell: &Shell<RealEnv>,
    fence: &Fence,
    campaigns: &[LoadedCampaign],
    policies: &BTreeMap<String, Arc<Policy>>,
) {
    let store = CampaignStore::new(shell.env.store.client().clone(), shell.env.store.prefix());
    for c in campaigns {
        if let Err(error) = look(shell, &store, fence, c, policies).await {
            match error {
                StoreError::Conflict { .. } => {
                    tracing::info!(campaign = %c.campaign.name, "Campaign state changed meanwhile; planning again next tick.");
                }
                _ => {
                    tracing::warn!(campaign = %c.campaign.name, %error, "Could not plan the campaign; retrying next tick.");
                }
            }
        }
    }
}

async fn look(
    shell: &Shell<RealEnv>,
    store: &CampaignStore,
    fence: &Fence,
    c: &LoadedCampaign,
    policies: &BTreeMap<String, Arc<Policy>>,
) -> Result<(), StoreError> {
    let name = &c.campaign.name;
    let (mut state, index) = store.load(name).await?;
    // A tripped breaker on a cluster any of its APIs runs on stops the campaign (a standing
    // rule: looked at every time, so a crash after the trip loses nothing).
    if matches!(
        state.status,
        CampaignStatus::Running | CampaignStatus::Paused
    ) && state.intent.is_none()
    {
        let tripped = c
            .waves
            .iter()
            .flatten()
            .filter_map(|api| policies.get(api))
            .find_map(|p| shell.breaker.tripped_cluster_of(p));
        if let Some((cluster, trip)) = tripped {
            state.intent = Some(CampaignIntent::Stop);
            state.intent_by = Some(format!(
                "the cluster breaker of {cluster} ({})",
                trip.reason
            ));
        }
    }
    // A campaign never started (or over) with nothing asked costs one read.
    let idle = matches!(
        state.status,
        CampaignStatus::Idle | CampaignStatus::Finished
    ) && state.intent.is_none();
    if idle {
        publish(shell, c, &state, index);
        return Ok(());
    }
    let mut views = BTreeMap::new();
    // The ModifyIndex of each rollout state planned from: a start is written only onto that
    // state, so a rollout that began (or changed) since is never started on a stale plan.
    let mut revisions: BTreeMap<&str, u64> = BTreeMap::new();
    for api in c.waves.iter().flatten() {
        let Some(policy) = policies.get(api) else {
            continue;
        };
        let (rollout, revision) = shell.env.store.load(policy).await?;
        revisions.insert(api.as_str(), revision);
        views.insert(
            api.clone(),
            ApiView {
                phase: rollout.phase,
                start_pending: matches!(rollout.intent, Some(Intent::Start { .. })),
                rollout_started_at: rollout.rollout_started_at,
            },
        );
    }
    let now = shell.env.now();
    let planned = plan(&c.campaign, &c.waves, &state, &views, now);
    let mut index = index;
    if planned.changed(&state) {
        let events: Vec<AlertEvent> = planned
            .actions
            .iter()
            .filter_map(|a| event(&c.campaign, &planned.state, a, now))
            .collect();
        index = store
            .save_alerting(
                &planned.state,
                index,
                fence,
                (&events, &c.campaign.alerts),
                now,
                &shell.env,
            )
            .await?;
        for a in &planned.actions {
            log_action(name, a);
        }
    }
    let audit = shell.audit_log();
    for a in &planned.actions {
        let CampaignAction::StartApi { api, wave } = a else {
            continue;
        };
        let Some(policy) = policies.get(api) else {
            continue;
        };
        let actor = Actor {
            user: format!("campaign:{name}"),
            groups: Vec::new(),
            source: "campaign".into(),
            request_id: format!("campaign-{name}-{}", now.as_millisecond()),
        };
        let wave_name = c
            .campaign
            .waves
            .get(*wave)
            .map(|w| w.name.as_str())
            .unwrap_or("");
        let request = ActionRequest {
            kind: ActionKind::Start,
            reason: format!("campaign {name}, wave {} ({wave_name})", wave + 1),
            expected_revision: revisions.get(api.as_str()).copied(),
            start: Default::default(),
        };
        match perform(&shell.env.store, &audit, policy, &actor, request).await {
            Ok(_) => {
                shell.telemetry.campaign_started_api(name);
                tracing::info!(campaign = %name, api = %api, wave = wave + 1, "Campaign started a rollout.");
            }
            Err(ActionError::Stale { .. }) => {
                tracing::info!(campaign = %name, api = %api, "Rollout changed since the campaign planned its start; planning again next tick.");
            }
            Err(error) => {
                tracing::warn!(campaign = %name, api = %api, %error, "Could not start a campaign's rollout; trying again next tick.");
            }
        }
    }
    publish(shell, c, &planned.state, index);
    Ok(())
}

fn publish(shell: &Shell<RealEnv>, c: &LoadedCampaign, state: &CampaignState, index: u64) {
    let view = CampaignView::new(&c.campaign, &c.waves, state, index);
    shell.telemetry.campaign(&view);
    shell.status.set_campaign(view);
}

fn log_action(name: &str, a: &CampaignAction) {
    match a {
        CampaignAction::StartApi { .. } => {}
        CampaignAction::Started => tracing::info!(campaign = %name, "Campaign started."),
        CampaignAction::Paused { by } => tracing::info!(campaign = %name, %by, "Campaign paused."),
        CampaignAction::Resumed { by } => {
            tracing::info!(campaign = %name, %by, "Campaign resumed.")
        }
        CampaignAction::WaveDone { wave } => {
            tracing::info!(campaign = %name, wave = wave + 1, "Campaign wave done.")
        }
        CampaignAction::Stopped { reason } => {
            tracing::warn!(campaign = %name, %reason, "Campaign stopped.")
        }
        CampaignAction::Finished => tracing::info!(campaign = %name, "Campaign finished."),
    }
}

/// The alert of a campaign action (started, wave done, stopped, finished); `None` for the
/// others.
fn event(
    campaign: &Campaign,
    state: &CampaignState,
    action: &CampaignAction,
    now: Timestamp,
) -> Option<AlertEvent> {
    let name = &campaign.name;
    let run = state.started_at.map(|t| t.as_millisecond()).unwrap_or(0);
    let (what, instance, summary, severity) = match action {
        CampaignAction::Started => (
            "started",
            format!("{run}-started"),
            format!(
                "Campaign {name} started by {}",
                state.started_by.as_deref().unwrap_or("an operator")
            ),
            Severity::Info,
        ),
        CampaignAction::WaveDone { wave } => {
            let wave_name = campaign
                .waves
                .get(*wave)
                .map(|w| w.name.as_str())
                .unwrap_or("");
            (
                "wave_done",
                format!("{run}-wave-{}", wave + 1),
                format!("Campaign {name}: wave {} ({wave_name}) done", wave + 1),
                Severity::Info,
            )
        }
        CampaignAction::Stopped { reason } => (
            "stopped",
            format!("{run}-stopped-{}", state.revision),
            format!("Campaign {name} stopped: {reason}"),
            Severity::Warning,
        ),
        CampaignAction::Finished => (
            "finished",
            format!("{run}-finished"),
            format!("Campaign {name} finished"),
            Severity::Info,
        ),
        _ => return None,
    };
    let promoted = state
        .apis
        .iter()
        .filter(|(_, a)| {
            a.outcome
                .is_some_and(|o| o != crate::campaign::ApiOutcome::Skipped)
        })
        .map(|(api, _)| api.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let skipped = state
        .apis
        .iter()
        .filter(|(_, a)| a.outcome == Some(crate::campaign::ApiOutcome::Skipped))
        .map(|(api, _)| api.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut e = AlertEvent::new(
        format!("campaign:{name}"),
        EventKind::Campaign,
        &instance,
        summary.clone(),
        now,
    )
    .with_description(format!(
        "{summary}.\nDone: {promoted}\nSkipped: {skipped}\n"
    ))
    .with_field("campaign", name)
    .with_field("event", what)
    .with_field(
        "wave",
        (state.wave + 1).min(campaign.waves.len()).to_string(),
    )
    .with_field("done", promoted)
    .with_field("skipped", skipped);
    e.severity = severity;
    Some(e)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::campaign::{ApiOutcome, StartedApi};

    fn field<'a>(e: &'a AlertEvent, name: &str) -> Option<&'a str> {
        e.fields.get(name).map(String::as_str)
    }

    #[test]
    fn a_stop_alert_is_a_warning_naming_the_reason_and_what_is_done_and_skipped() {
        let text = "name = \"cni\"\n[[wave]]\napis = [\"a1\", \"a2\", \"a3\"]\n";
        let c = Campaign::from_toml(text, Path::new("c.toml"), None).unwrap();
        let now: Timestamp = "2026-01-15T11:00:00Z".parse().unwrap();
        let mut s = CampaignState::new("cni");
        s.started_at = Some(now);
        s.status = CampaignStatus::Stopped;
        for (api, outcome) in [
            ("a1", Some(ApiOutcome::Promoted)),
            ("a2", Some(ApiOutcome::Skipped)),
            ("a3", None),
        ] {
            let started = StartedApi {
                wave: 0,
                at: now,
                previous_rollout: None,
                outcome,
            };
            s.apis.insert(api.into(), started);
        }
        let stop = CampaignAction::Stopped {
            reason: "a3 rolled back.".into(),
        };
        let e = event(&c, &s, &stop, now).unwrap();
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(e.summary, "Campaign cni stopped: a3 rolled back.");
        assert_eq!(field(&e, "event"), Some("stopped"));
        assert_eq!(field(&e, "done"), Some("a1"));
        assert_eq!(field(&e, "skipped"), Some("a2"));
        // One alert per event of a run: the same event planned again has the same key.
        assert_eq!(e.key, event(&c, &s, &stop, now).unwrap().key);
        let done = CampaignAction::WaveDone { wave: 0 };
        assert_eq!(event(&c, &s, &done, now).unwrap().severity, Severity::Info);
        assert!(event(&c, &s, &CampaignAction::Started, now).unwrap().key != e.key);
        let start = CampaignAction::StartApi {
            api: "a1".into(),
            wave: 0,
        };
        assert!(event(&c, &s, &start, now).is_none());
    }
}
