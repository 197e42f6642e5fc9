//! The cluster breakers in the daemon: every evaluation leaves its API's [`Contribution`] in
//! the [`BreakerBook`]; once per tick the leader looks at the breaker of every cluster the
//! policies name ([`look_all`]): it reads the stored breaker, [`plan`]s, and writes a trip or a
//! reset (compare-and-set, fenced, with its alert in the shared outbox, in one transaction).
//! Every evaluation then asks the book whether its rollout is held ([`BreakerBook::hold_for`]),
//! and every campaign look whether a campaign must stop; both are standing rules, recomputed
//! each time, so a crash between a trip and its effects loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::docs::BreakerStore;
use super::env::{AlertIo, Clock, RealEnv};
use super::shell::Shell;
use super::store::StoreError;
use crate::alert::{AlertEvent, EventKind};
use crate::consul::Fence;
use crate::engine::breaker::{
    contribution, hold_for, plan, with_unsaved_trip, BreakerAction, BreakerPlan, BreakerSettings,
    BreakerState, Contribution, TripRecord,
};
use crate::engine::{Held, RolloutState};
use crate::policy::{Colour, OnTrip, Policy};
use crate::server::BreakerView;

/// What the breakers know in memory: each API's latest contribution, the tripped clusters as
/// last read from Consul, and the trips decided here whose write failed (they hold all the same,
/// fail closed, and are written at the next look that succeeds).
#[derive(Debug, Default)]
pub struct BreakerBook {
    contributions: Mutex<BTreeMap<String, Contribution>>,
    tripped: Mutex<BTreeMap<String, TripRecord>>,
    unsaved: Mutex<BTreeMap<String, TripRecord>>,
    on_trip: OnTrip,
}

impl BreakerBook {
    pub fn new(on_trip: OnTrip) -> Self {
        BreakerBook {
            on_trip,
            ..Default::default()
        }
    }

    /// Notes `state` as `policy`'s API's latest.
    pub fn record(&self, policy: &Policy, state: &RolloutState) {
        let mut book = lock(&self.contributions);
        match contribution(policy, state) {
            Some(c) => book.insert(policy.api.clone(), c),
            None => book.remove(&policy.api),
        };
    }

    /// Drops a removed policy's API.
    pub fn forget(&self, api: &str) {
        lock(&self.contributions).remove(api);
    }

    /// Whether `state`'s rollout is held by a tripped breaker, and why.
    pub fn hold_for(&self, policy: &Policy, state: &RolloutState) -> Option<Held> {
        if policy.clusters.is_empty() {
            return None;
        }
        hold_for(policy, state, &lock(&self.tripped), self.on_trip)
    }

    /// The tripped cluster among those `policy` names, if any.
    pub fn tripped_cluster_of(&self, policy: &Policy) -> Option<(String, TripRecord)> {
        let tripped = lock(&self.tripped);
        [Colour::Blue, Colour::Green]
            .into_iter()
            .filter_map(|c| policy.clusters.of(c))
            .find_map(|c| tripped.get(c).map(|t| (c.to_string(), t.clone())))
    }

    fn contributions(&self) -> Vec<Contribution> {
        lock(&self.contributions).values().cloned().collect()
    }

    fn set_tripped(&self, cluster: &str, trip: Option<TripRecord>) {
        let mut tripped = lock(&self.tripped);
        match trip {
            Some(t) => tripped.insert(cluster.to_string(), t),
            None => tripped.remove(cluster),
        };
    }

    fn retain_clusters(&self, clusters: &BTreeSet<String>) {
        lock(&self.tripped).retain(|c, _| clusters.contains(c));
        lock(&self.unsaved).retain(|c, _| clusters.contains(c));
    }

    fn unsaved(&self, cluster: &str) -> Option<TripRecord> {
        lock(&self.unsaved).get(cluster).cloned()
    }

    fn set_unsaved(&self, cluster: &str, trip: Option<TripRecord>) {
        let mut unsaved = lock(&self.unsaved);
        match trip {
            Some(t) => unsaved.insert(cluster.to_string(), t),
            None => unsaved.remove(cluster),
        };
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every cluster any loaded policy names.
pub(super) fn clusters_of(policies: &BTreeMap<String, Arc<Policy>>) -> BTreeSet<String> {
    policies
        .values()
        .flat_map(|p| [p.clusters.blue.clone(), p.clusters.green.clone()])
        .flatten()
        .collect()
}

/// Looks at the breaker of every cluster the policies name; a failure keeps what the book
/// knew (a tripped breaker stays tripped) and is retried at the next look.
pub(super) async fn look_all(
    shell: &Shell<RealEnv>,
    fence: &Fence,
    settings: &BreakerSettings,
    channels: &[String],
    policies: &BTreeMap<String, Arc<Policy>>,
) {
    let clusters = clusters_of(policies);
    shell.breaker.retain_clusters(&clusters);
    if clusters.is_empty() {
        return;
    }
    let store = BreakerStore::new(shell.env.store.client().clone(), shell.env.store.prefix());
    let contributions = shell.breaker.contributions();
    let mut views = Vec::new();
    for cluster in &clusters {
        match look(
            shell,
            &store,
            fence,
            settings,
            channels,
            cluster,
            &contributions,
        )
        .await
        {
            Ok(state) => {
                let view = BreakerView::new(&state, settings);
                shell.telemetry.breaker(&view);
                views.push(view);
            }
            Err(StoreError::Conflict { .. }) => {
                tracing::info!(%cluster, "Breaker state changed meanwhile (a reset request); looking again next tick.");
            }
            Err(error) => {
                tracing::warn!(%cluster, %error, "Could not look at the cluster breaker; keeping what was known, retrying next tick.");
            }
        }
    }
    shell.status.set_breakers(views);
}

async fn look(
    shell: &Shell<RealEnv>,
    store: &BreakerStore,
    fence: &Fence,
    settings: &BreakerSettings,
    channels: &[String],
    cluster: &str,
    contributions: &[Contribution],
) -> Result<BreakerState, StoreError> {
    let (stored, index) = store.load(cluster).await?;
    let unsaved = shell.breaker.unsaved(cluster);
    let state = with_unsaved_trip(&stored, unsaved.as_ref());
    let now = shell.env.now();
    let planned = plan(settings, &state, contributions, now);
    if planned.changed(&stored) || index == 0 {
        let events: Vec<AlertEvent> = planned
            .actions
            .iter()
            .filter_map(|a| event(cluster, settings, a, now))
            .collect();
        let saved = store
            .save_alerting(
                &planned.state,
                index,
                fence,
                (&events, channels),
                now,
                &shell.env,
            )
            .await;
        if let Err(error) = saved {
            return match fail_closed(shell, cluster, channels, &stored, &planned, &events, &error)
                .await
            {
                true => Ok(planned.state),
                false => Err(error),
            };
        }
        for a in &planned.actions {
            match a {
                BreakerAction::Tripped(t) => {
                    tracing::error!(%cluster, reason = %t.reason, apis = %t.apis_text(), on_trip = settings.on_trip.as_str(), "Cluster breaker tripped: rollouts onto the cluster stop moving forward.")
                }
                BreakerAction::Reset(r) => {
                    tracing::warn!(%cluster, by = %r.by, "Cluster breaker reset.")
                }
            }
        }
    }
    let state = planned.state;
    shell.breaker.set_unsaved(cluster, None);
    shell.breaker.set_tripped(cluster, state.tripped.clone());
    Ok(state)
}

/// A trip whose write failed still stands: the rollouts onto the cluster hold from now on (the
/// book keeps the trip until a write succeeds) and its alert goes out through the local outbox
/// at once, not after the write (it is not sent again when the trip is written). Returns whether
/// there was such a trip.
async fn fail_closed(
    shell: &Shell<RealEnv>,
    cluster: &str,
    channels: &[String],
    stored: &BreakerState,
    planned: &BreakerPlan,
    events: &[AlertEvent],
    error: &StoreError,
) -> bool {
    let Some(trip) = planned
        .state
        .tripped
        .as_ref()
        .filter(|_| stored.tripped.is_none())
    else {
        return false;
    };
    tracing::error!(%cluster, reason = %trip.reason, apis = %trip.apis_text(), %error, "Cluster breaker tripped but its state could not be written: holding the rollouts onto it all the same, writing it again next tick.");
    shell.breaker.set_unsaved(cluster, Some(trip.clone()));
    shell.breaker.set_tripped(cluster, Some(trip.clone()));
    for e in events {
        if let Err(e) = shell.env.notify(e, channels).await {
            tracing::error!(%cluster, error = %e, "Could not record the breaker's alert.");
        }
    }
    true
}

/// The alert of a trip (critical), or of a reset (the trip's resolution; none when nothing
/// was tripped).
fn event(
    cluster: &str,
    settings: &BreakerSettings,
    action: &BreakerAction,
    now: Timestamp,
) -> Option<AlertEvent> {
    match action {
        BreakerAction::Tripped(t) => Some(trip_event(cluster, settings, t, now)),
        BreakerAction::Reset(r) => {
            let trip = r.cleared.as_ref()?;
            let mut e = trip_event(cluster, settings, trip, now).resolve(now);
            e.summary = format!("Cluster breaker of {cluster} reset by {}", r.by);
            Some(e.with_field("reset_by", &r.by))
        }
    }
}

fn trip_event(
    cluster: &str,
    settings: &BreakerSettings,
    t: &TripRecord,
    now: Timestamp,
) -> AlertEvent {
    let effect = match settings.on_trip {
        OnTrip::Hold => "Every rollout onto it holds its weights (its own rollback stays armed)",
        OnTrip::Rollback => "Every rollout onto it rolls back",
    };
    AlertEvent::new(
        format!("cluster:{cluster}"),
        EventKind::Breaker,
        &format!("tripped-{}", t.at.as_second()),
        format!("Cluster breaker of {cluster} tripped: {}", t.reason),
        now,
    )
    .with_description(format!(
        "The cluster {cluster} looks worse than the stable side for the APIs rolling onto it: {}.\n\
         APIs: {}\n\
         {effect}; campaigns touching it stop; nothing starts onto it until an operator runs \
         `greenlight breaker reset {cluster}`.",
        t.reason,
        t.apis_text()
    ))
    .with_field("cluster", cluster)
    .with_field("reason", &t.reason)
    .with_field("apis", t.apis_text())
    .with_field("on_trip", settings.on_trip.as_str())
}
