//! Approval gates: a rollout whose evidence would take it into a gated step waits at the step
//! before it until a human approves (or `approval_timeout` passes); analysis and automatic
//! rollback go on meanwhile.

use jiff::Timestamp;

use crate::engine::state::{Approval, Phase, RolloutState};
use crate::policy::Policy;

/// Checks that `approver` may approve the gate `state` waits at, and returns the approval to
/// record in the state (the next evaluation then enters the gated step). The error says why not,
/// in one sentence.
pub fn approve(
    policy: &Policy,
    state: &RolloutState,
    approver: &str,
    reason: &str,
    now: Timestamp,
) -> Result<Approval, String> {
    let api = &policy.api;
    let gate = match (&state.awaiting_approval, state.phase) {
        (Some(gate), Phase::Progressing) => gate,
        _ => {
            return Err(format!(
                "{api} is not waiting for an approval: it is {} at step {} of {}",
                state.phase.as_str(),
                state.step + 1,
                policy.steps.len()
            ))
        }
    };
    let percent = policy.steps.get(gate.step).copied().unwrap_or(100.0);
    if let Some(given) = state.approval.as_ref().filter(|a| a.step == gate.step) {
        return Err(format!(
            "step {} ({percent} %) of {api} is already approved by {}; it is entered at the next evaluation",
            gate.step + 1,
            given.by
        ));
    }
    if policy.approval.approver_must_differ && state.started_by.as_deref() == Some(approver) {
        return Err(format!(
            "{approver} started this rollout of {api}, and its policy requires someone else to approve (approver_must_differ = true)"
        ));
    }
    Ok(Approval {
        step: gate.step,
        by: approver.to_string(),
        at: now,
        reason: reason.to_string(),
    })
}
