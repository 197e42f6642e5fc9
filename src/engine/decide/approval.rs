//! Approval gates: a rollout whose evidence would take it into a gated step waits at the step
//! before it until a human approves (or `approval_timeout` passes); analysis and automatic
//! rollback go on meanwhile.

use jiff::Timestamp;

use super::{elapsed, fmt_dur, rollback, Action, Draft, Notice};
use crate::engine::state::{Approval, ApprovalGate, Phase, RolloutState};
use crate::policy::{ApprovalTimeoutAction, Policy};

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

/// Whether the rollout may enter step `next` now.
pub(super) enum Gate {
    /// Not gated, or approved (by this approval).
    Open(Option<Approval>),
    /// Waiting for an approval; the decision is settled (a hold).
    Closed,
}

/// Called where the evidence would take the rollout into step `next` (`why`: the evidence's
/// reason). A gated step without its approval holds, raising [`Notice::ApprovalNeeded`] when
/// the wait begins.
pub(super) fn gate(
    policy: &Policy,
    s: &mut RolloutState,
    next: usize,
    now: Timestamp,
    why: &str,
    d: &mut Draft,
) -> Gate {
    if !policy.approval.gates(next) {
        return Gate::Open(None);
    }
    if let Some(approval) = s.approval.take_if(|a| a.step == next) {
        s.awaiting_approval = None;
        return Gate::Open(Some(approval));
    }
    let percent = policy.steps[next];
    let gate = match &mut s.awaiting_approval {
        Some(gate) if gate.step == next => gate,
        waiting => {
            d.notices.push(Notice::ApprovalNeeded {
                step: next,
                percent,
                since: now,
            });
            waiting.insert(ApprovalGate {
                step: next,
                since: now,
                timed_out: false,
            })
        }
    };
    let waited = elapsed(gate.since, now);
    let timed_out = if gate.timed_out {
        " (approval_timeout has passed; waiting on)"
    } else {
        ""
    };
    d.set(
        Action::Hold,
        format!(
            "Waiting for an approval to enter step {} ({percent} %), for {}{timed_out}; the evidence allows it: {why}",
            next + 1,
            fmt_dur(waited),
        ),
    );
    Gate::Closed
}

/// Applies `approval_timeout` to a rollout waiting at a gate: a rollback (the decision is
/// settled: returns true), or, holding, one [`Notice::ApprovalTimedOut`].
pub(super) fn timed_out(
    policy: &Policy,
    s: &mut RolloutState,
    now: Timestamp,
    d: &mut Draft,
) -> bool {
    let (Some(timeout), Some(gate)) = (policy.approval.timeout, &mut s.awaiting_approval) else {
        return false;
    };
    if gate.timed_out || elapsed(gate.since, now) < timeout {
        return false;
    }
    let (step, since) = (gate.step, gate.since);
    let percent = policy.steps.get(step).copied().unwrap_or(100.0);
    match policy.approval.on_timeout {
        ApprovalTimeoutAction::Hold => {
            gate.timed_out = true;
            d.notices.push(Notice::ApprovalTimedOut {
                step,
                percent,
                since,
            });
            false
        }
        ApprovalTimeoutAction::Rollback => {
            rollback::roll_back(
                policy,
                s,
                format!(
                    "No approval to enter step {} ({percent} %) within approval_timeout ({}); rolled back (on_approval_timeout = \"rollback\").",
                    step + 1,
                    fmt_dur(timeout)
                ),
                d,
            );
            true
        }
    }
}
