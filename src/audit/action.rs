//! [`perform`]: the one path by which a human changes a rollout, from the CLI or the console.

use jiff::Timestamp;

use crate::daemon::{StateStore, StoreError};
use crate::engine::{approve, check_start, Intent, RolloutState, StartRequest};
use crate::policy::Policy;

use super::{ActionKind, Actor, AuditEntry, AuditLog};

/// How often a compare-and-set that lost a race is tried again (without an expected revision).
const ROUNDS: usize = 5;

/// What to do, why, and (from a page or script that showed a state) which revision it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRequest {
    pub kind: ActionKind,
    /// Why; recorded in the audit entry (and, for pause and rollback, in the state).
    pub reason: String,
    /// The ModifyIndex of the state the requester saw (a [`RolloutState`]'s revision in Consul).
    /// When given and the state has changed since, nothing is written: [`ActionError::Stale`].
    pub expected_revision: Option<u64>,
    /// For a start: the colour to move onto and the release id (both optional).
    pub start: StartRequest,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    /// The state before the action.
    pub before: RolloutState,
    /// The state as the action wrote it (the intent pending until the next evaluation).
    pub after: RolloutState,
    /// The ModifyIndex of `after` in Consul.
    pub revision: u64,
    /// The audit entry recorded for the action.
    pub entry: AuditEntry,
    /// Why the audit entry could not be written to Consul, if it could not (the action stands).
    pub audit_error: Option<String>,
}

/// Why an action was not carried out; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The state changed since the requester saw it: `current` is the state now, at ModifyIndex
    /// `revision`.
    #[error("the state changed since it was read (now at revision {revision})")]
    Stale {
        current: Box<RolloutState>,
        revision: u64,
    },
    /// The action does not apply (e.g. approving a rollout that waits for no approval).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Carries out `actor`'s `request` on `policy`'s API: writes the intent (or the approval) to the
/// state by compare-and-set, then records the audit entry (never failing the action for it).
pub async fn perform(
    store: &StateStore,
    audit: &AuditLog,
    policy: &Policy,
    actor: &Actor,
    request: ActionRequest,
) -> Result<ActionOutcome, ActionError> {
    for _ in 0..ROUNDS {
        let (before, index) = store.load(policy).await?;
        if request.kind == ActionKind::Start {
            refuse_onto_tripped_cluster(store, policy, &before, &request).await?;
        }
        if let Some(expected) = request.expected_revision {
            if expected != index {
                return Err(ActionError::Stale {
                    current: Box::new(before),
                    revision: index,
                });
            }
        }
        let now = Timestamp::now();
        let after = apply(policy, &before, actor, &request, now)?;
        match store.save(&after, index, None).await {
            Ok(revision) => {
                let entry = AuditEntry::new(
                    policy,
                    actor,
                    request.kind,
                    &request.reason,
                    &before,
                    &after,
                    revision,
                    now,
                );
                let audit_error = audit.record(policy, &entry).await;
                return Ok(ActionOutcome {
                    before,
                    after,
                    revision,
                    entry,
                    audit_error,
                });
            }
            Err(StoreError::Conflict { .. }) if request.expected_revision.is_some() => {
                let (current, revision) = store.load(policy).await?;
                return Err(ActionError::Stale {
                    current: Box::new(current),
                    revision,
                });
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        api: policy.api.clone(),
    }
    .into())
}

/// A start onto a cluster whose breaker is tripped is refused, with nothing written.
async fn refuse_onto_tripped_cluster(
    store: &StateStore,
    policy: &Policy,
    state: &RolloutState,
    request: &ActionRequest,
) -> Result<(), ActionError> {
    let candidate = request.start.to.unwrap_or_else(|| state.candidate());
    let Some(cluster) = policy.clusters.of(candidate) else {
        return Ok(());
    };
    let breakers = crate::daemon::BreakerStore::new(store.client().clone(), store.prefix());
    let (breaker, _) = breakers.load(cluster).await?;
    match breaker.tripped {
        Some(t) => Err(ActionError::Refused(format!(
            "the cluster breaker of {cluster} is tripped ({}); nothing starts onto it until `greenlight breaker reset {cluster}`",
            t.reason
        ))),
        None => Ok(()),
    }
}

/// The state with `request` recorded on it: an intent for the next evaluation, or an approval.
fn apply(
    policy: &Policy,
    state: &RolloutState,
    actor: &Actor,
    request: &ActionRequest,
    now: Timestamp,
) -> Result<RolloutState, ActionError> {
    let mut after = state.clone();
    let reason = request.reason.clone();
    let intent =
        match request.kind {
            ActionKind::Start => {
                let automatic = actor.user.starts_with("campaign:");
                check_start(policy, &state.releases, &request.start, automatic)
                    .map_err(ActionError::Refused)?;
                Intent::Start {
                    request: request.start.clone(),
                }
            }
            ActionKind::Pause => Intent::Pause { reason },
            ActionKind::Resume => Intent::Resume,
            ActionKind::ResumeAdoptLive => Intent::ResumeAdoptLive,
            ActionKind::Rollback => Intent::Rollback { reason },
            ActionKind::Promote => Intent::Promote,
            ActionKind::Approve => {
                let approval = approve(policy, state, &actor.user, &request.reason, now)
                    .map_err(ActionError::Refused)?;
                after.approval = Some(approval);
                return Ok(after);
            }
            ActionKind::RollbackNow => return Err(ActionError::Refused(
                "a break-glass rollback moves the weights itself: use `greenlight rollback --now`"
                    .into(),
            )),
        };
    after.intent = Some(intent);
    after.intent_by = Some(actor.user.clone());
    Ok(after)
}
