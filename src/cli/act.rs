//! The actions people take from the command line (`start`, `pause`, `resume`, `rollback`,
//! `promote`, `approve`): each goes through [`crate::audit::perform`], the one compare-and-set
//! path the console uses too, and is recorded in the audit trail as the `--as` user (or the OS
//! user).

use std::path::Path;

use super::ops::{policy_of, store, IntentArgs, StartArgs};
use crate::alert::Notifier;
use crate::audit::{perform, ActionError, ActionKind, ActionRequest, Actor, AuditLog};
use crate::daemon::StateStore;
use crate::engine::StartRequest;
use crate::policy::{Config, Policy};

pub fn intent(config: Option<&Path>, actor: &Actor, kind: ActionKind, args: IntentArgs) -> i32 {
    act(config, actor, (kind, StartRequest::default()), args)
}

/// `greenlight start API [--release ID] [--to blue|green]`.
pub fn start(config: Option<&Path>, actor: &Actor, args: StartArgs) -> i32 {
    let request = StartRequest {
        to: args.to.as_deref().and_then(|c| c.parse().ok()),
        release: args.release,
    };
    act(config, actor, (ActionKind::Start, request), args.intent)
}

fn act(
    config: Option<&Path>,
    actor: &Actor,
    action: (ActionKind, StartRequest),
    args: IntentArgs,
) -> i32 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = match policy_of(&config, &args.api) {
        Ok(p) => p,
        Err(code) => return code,
    };
    record(&config, &policy, actor, action, &args.reason, "")
}

/// The audit trail of `config`'s Consul prefix, alerting through the durable outbox when it can
/// be opened (the CLI goes on without the alert otherwise).
pub(super) fn audit_log(config: &Config, store: &StateStore) -> AuditLog {
    let audit = AuditLog::new(store.client().clone(), &config.consul.prefix);
    let notifier = crate::alert::channels_from_config(config)
        .ok()
        .and_then(|channels| {
            Notifier::new(
                channels,
                config.state_dir.join("outbox"),
                std::time::Duration::from_secs(5),
            )
            .ok()
        });
    match notifier {
        Some(n) => audit.with_notifier(std::sync::Arc::new(n)),
        None => audit,
    }
}

/// Carries out `kind` as `actor` and says so, with `what` (what the daemon will do) when given.
pub(super) fn record(
    config: &Config,
    policy: &Policy,
    actor: &Actor,
    (kind, start): (ActionKind, StartRequest),
    reason: &str,
    what: &str,
) -> i32 {
    let store = match store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let audit = audit_log(config, &store);
    let request = ActionRequest {
        kind,
        reason: reason.to_string(),
        expected_revision: None,
        start,
    };
    match runtime.block_on(perform(&store, &audit, policy, actor, request)) {
        Ok(outcome) => {
            let what = if what.is_empty() {
                "The daemon applies it at its next evaluation.".to_string()
            } else {
                format!("At its next evaluation the daemon {what}.")
            };
            let recorded = match (&outcome.after.intent, &outcome.after.approval) {
                (Some(intent), _) if kind != ActionKind::Approve => format!("{intent:?}"),
                (_, Some(a)) => format!(
                    "the approval of step {} ({} %)",
                    a.step + 1,
                    policy.steps.get(a.step).copied().unwrap_or(100.0)
                ),
                _ => kind.as_str().to_string(),
            };
            println!(
                "{}: recorded {recorded} by {}; currently {} at step {}. {what}",
                policy.api,
                actor.user,
                outcome.after.phase.as_str(),
                outcome.after.step + 1
            );
            if let Some(e) = &outcome.audit_error {
                eprintln!(
                    "warning: {}: the action is recorded, but its audit entry could not be written: {e}",
                    policy.api
                );
            }
            0
        }
        Err(ActionError::Refused(why)) => {
            eprintln!("error: {why}. Nothing recorded.");
            super::EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("error: {}: {e}", policy.api);
            super::EXIT_FAILURE
        }
    }
}
