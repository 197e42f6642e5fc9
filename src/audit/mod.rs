//! Human actions and their audit trail: the one path by which the CLI and the console change a
//! rollout ([`perform`]), and the record of who did what ([`AuditLog`], in Consul KV).
//!
//! An action records an intent (or an approval) on the rollout state by compare-and-set, exactly
//! as `greenlight pause` always has; the daemon obeys it at its next evaluation. Then the audit
//! entry is written under `<prefix>/audit/<api>/`, logged as one structured line and, when the
//! policy routes `audit` events, sent to alert channels. Writing the entry never blocks the
//! action: a failure is logged and counted, and the action stands.

mod action;
mod log;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::{Intent, Phase, RolloutState};
use crate::policy::{Policy, Weights};

pub use action::{perform, ActionError, ActionOutcome, ActionRequest};
pub use log::{AuditLog, AUDIT_LEN};

/// Who acts, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The user's name (from the sign-in proxy, an API token, `--as` or the OS user).
    pub user: String,
    /// The user's groups, as the sign-in proxy or the token configuration gives them.
    pub groups: Vec<String>,
    /// The client's address, or `cli`.
    pub source: String,
    /// Identifies the request in logs (the console's request id; the CLI makes one up).
    pub request_id: String,
}

impl Actor {
    /// The person running a CLI command: `name` (`--as`) or the OS user (`USER`, then
    /// `LOGNAME`), source `cli`.
    pub fn cli(name: Option<&str>) -> Actor {
        let from_env = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
        let user = name
            .map(str::to_string)
            .filter(|n| !n.trim().is_empty())
            .or_else(|| from_env("USER"))
            .or_else(|| from_env("LOGNAME"))
            .unwrap_or_else(|| "unknown".into());
        let now = Timestamp::now();
        Actor {
            user,
            groups: Vec::new(),
            source: "cli".into(),
            request_id: format!("cli-{}-{}", std::process::id(), now.as_millisecond()),
        }
    }
}

/// What a human asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Start (or restart after a rollback or promotion) at the first step.
    Start,
    /// Freeze the rollout; weights stay as they are.
    Pause,
    /// Continue a paused rollout at its step, with the step's weights.
    Resume,
    /// Continue a paused rollout keeping the live (hand-set) weights.
    ResumeAdoptLive,
    /// Send all traffic back to blue at the next evaluation.
    Rollback,
    /// Send all traffic to green at the next evaluation.
    Promote,
    /// Let a rollout waiting at an approval gate enter the gated step.
    Approve,
    /// Break glass: the weights were set to blue at once by `greenlight rollback --now`
    /// (recorded only; [`perform`] refuses it).
    RollbackNow,
}

impl ActionKind {
    /// Every kind [`perform`] carries out, in a stable order.
    pub const PERFORMED: [ActionKind; 7] = [
        ActionKind::Start,
        ActionKind::Pause,
        ActionKind::Resume,
        ActionKind::ResumeAdoptLive,
        ActionKind::Rollback,
        ActionKind::Promote,
        ActionKind::Approve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Start => "start",
            ActionKind::Pause => "pause",
            ActionKind::Resume => "resume",
            ActionKind::ResumeAdoptLive => "resume_adopt_live",
            ActionKind::Rollback => "rollback",
            ActionKind::Promote => "promote",
            ActionKind::Approve => "approve",
            ActionKind::RollbackNow => "rollback_now",
        }
    }

    /// The kind named `name` (as [`ActionKind::as_str`] writes it), if any.
    pub fn parse(name: &str) -> Option<ActionKind> {
        ActionKind::PERFORMED
            .into_iter()
            .chain([ActionKind::RollbackNow])
            .find(|k| k.as_str() == name)
    }
}

/// A rollout's position as an audit entry shows it, before or after an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSummary {
    pub phase: Phase,
    /// Index into the policy's steps.
    pub step: usize,
    /// Green's share of `weights`, percent.
    pub green_percent: f64,
    pub weights: Weights,
    /// The operator request waiting for the next evaluation.
    #[serde(default)]
    pub intent: Option<Intent>,
    /// Index of the gated step the rollout waits before, if it waits for an approval.
    #[serde(default)]
    pub awaiting_approval: Option<usize>,
}

impl StateSummary {
    pub fn of(state: &RolloutState) -> StateSummary {
        let total = f64::from(state.weights.blue) + f64::from(state.weights.green);
        let green_percent = if total > 0.0 {
            100.0 * f64::from(state.weights.green) / total
        } else {
            0.0
        };
        StateSummary {
            phase: state.phase,
            step: state.step,
            green_percent,
            weights: state.weights,
            intent: state.intent.clone(),
            awaiting_approval: state.awaiting_approval.as_ref().map(|g| g.step),
        }
    }
}

/// One human action on one API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub api: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub action: ActionKind,
    pub reason: String,
    /// The client's address, or `cli`.
    pub source: String,
    pub request_id: String,
    pub before: StateSummary,
    pub after: StateSummary,
    /// The ModifyIndex of the state as the action wrote it (0: not written, e.g. a break-glass
    /// rollback whose state could not be recorded).
    #[serde(default)]
    pub revision: u64,
}

impl AuditEntry {
    /// The entry for `actor`'s `action` on `policy`'s API, which took `before` to `after`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: &Policy,
        actor: &Actor,
        action: ActionKind,
        reason: &str,
        before: &RolloutState,
        after: &RolloutState,
        revision: u64,
        at: Timestamp,
    ) -> AuditEntry {
        AuditEntry {
            at,
            api: policy.api.clone(),
            user: actor.user.clone(),
            groups: actor.groups.clone(),
            action,
            reason: reason.to_string(),
            source: actor.source.clone(),
            request_id: actor.request_id.clone(),
            before: StateSummary::of(before),
            after: StateSummary::of(after),
            revision,
        }
    }
}
