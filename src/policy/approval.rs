//! Validation of a policy's approval gates: `approval_before`, `approval_timeout`,
//! `on_approval_timeout`, `approver_must_differ`.

use super::limits::{self, duration_in};
use super::located::{number, Errors};
use super::raw::{RawApprovalTimeoutAction, RawPolicy};
use super::{ApprovalPolicy, ApprovalTimeoutAction};

impl RawPolicy {
    /// The approval gates, checked against the policy's validated `steps` (empty when the steps
    /// themselves are wrong: then only the gates' own form is checked).
    pub(super) fn approval(&self, steps: &[f64], errors: &mut Errors<'_>) -> ApprovalPolicy {
        let mut before_steps = Vec::new();
        if let Some(list) = &self.approval_before {
            for value in list.get_ref() {
                let v = *value.get_ref();
                let found = steps.iter().position(|s| (s - v).abs() < 1e-9);
                match found {
                    _ if !(v > 0.0 && v <= 100.0) => errors.at(
                        value.span(),
                        format!("approval_before value {} must be a step, a percentage in (0, 100]", number(v)),
                    ),
                    None if !steps.is_empty() => errors.at(
                        value.span(),
                        format!(
                            "approval_before value {} is not one of the steps [{}]",
                            number(v),
                            steps.iter().map(|s| number(*s)).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    None => {}
                    Some(0) => errors.at(
                        value.span(),
                        format!(
                            "approval_before cannot name the first step ({} %): a rollout enters it when it starts (use auto_start = false to wait for `greenlight start`)",
                            number(v)
                        ),
                    ),
                    Some(i) if before_steps.contains(&i) => errors.at(
                        value.span(),
                        format!("approval_before names step {} % twice", number(v)),
                    ),
                    Some(i) => before_steps.push(i),
                }
            }
        }
        before_steps.sort_unstable();
        let timeout = self
            .approval_timeout
            .as_ref()
            .map(|t| duration_in(t, "approval_timeout", limits::APPROVAL_TIMEOUT, errors));
        let gated = self
            .approval_before
            .as_ref()
            .is_some_and(|l| !l.get_ref().is_empty());
        if let (Some(t), false) = (&self.approval_timeout, gated) {
            errors.at(
                t.span(),
                "approval_timeout has no effect without approval_before (the steps that wait for an approval)",
            );
        }
        if let (Some(action), None) = (&self.on_approval_timeout, &self.approval_timeout) {
            errors.at(
                action.span(),
                "on_approval_timeout needs approval_timeout (how long a gate waits)",
            );
        }
        ApprovalPolicy {
            before_steps,
            timeout,
            on_timeout: match self.on_approval_timeout.as_ref().map(|a| *a.get_ref()) {
                None | Some(RawApprovalTimeoutAction::Hold) => ApprovalTimeoutAction::Hold,
                Some(RawApprovalTimeoutAction::Rollback) => ApprovalTimeoutAction::Rollback,
            },
            approver_must_differ: self.approver_must_differ.unwrap_or(false),
        }
    }
}
