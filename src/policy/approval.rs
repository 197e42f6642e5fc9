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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::fixture::{errors_of, variant};
    use super::super::Policy;
    use super::*;

    fn with(keys: &str) -> String {
        variant("alerts = [", &format!("{keys}\nalerts = ["))
    }

    fn parsed(keys: &str) -> Policy {
        Policy::from_toml(&with(keys), Path::new("p.toml"), Some(&["oncall".into()])).unwrap()
    }

    #[test]
    fn gates_name_steps_by_their_percentage() {
        // Default steps: 1, 5, 10, 25, 50, 100.
        let p = parsed("approval_before = [100, 50]\napproval_timeout = \"2h\"\non_approval_timeout = \"rollback\"\napprover_must_differ = true");
        assert_eq!(p.approval.before_steps, vec![4, 5]);
        assert!(p.approval.gates(4) && p.approval.gates(5) && !p.approval.gates(3));
        assert_eq!(p.approval.timeout, Some(Duration::from_secs(7200)));
        assert_eq!(p.approval.on_timeout, ApprovalTimeoutAction::Rollback);
        assert!(p.approval.approver_must_differ);
        // Nothing said: no gate, waiting for ever, holding, anyone may approve.
        let p = parsed("");
        assert_eq!(p.approval, ApprovalPolicy::default());
        assert_eq!(p.approval.on_timeout, ApprovalTimeoutAction::Hold);
    }

    #[test]
    fn every_gate_error_is_located() {
        let e = errors_of(&with(
            "approval_before = [30, 1, 50, 50, 0]\napproval_timeout = \"10s\"",
        ));
        assert_eq!(
            e,
            vec![
                "p.toml:3:20: approval_before value 30 is not one of the steps [1, 5, 10, 25, 50, 100]",
                "p.toml:3:24: approval_before cannot name the first step (1 %): a rollout enters it when it starts (use auto_start = false to wait for `greenlight start`)",
                "p.toml:3:31: approval_before names step 50 % twice",
                "p.toml:3:35: approval_before value 0 must be a step, a percentage in (0, 100]",
                "p.toml:4:20: approval_timeout must be between 1m and 30days, got 10s",
            ]
        );
    }

    #[test]
    fn timeout_settings_need_what_they_act_on() {
        let e = errors_of(&with("approval_timeout = \"2h\""));
        assert_eq!(
            e,
            vec!["p.toml:3:20: approval_timeout has no effect without approval_before (the steps that wait for an approval)"]
        );
        let e = errors_of(&with(
            "approval_before = [50]\non_approval_timeout = \"rollback\"",
        ));
        assert_eq!(
            e,
            vec!["p.toml:4:23: on_approval_timeout needs approval_timeout (how long a gate waits)"]
        );
        let e = errors_of(&with(
            "approval_before = [50]\napproval_timeout = \"2h\"\non_approval_timeout = \"later\"",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:5:23: unknown variant `later`"),
            "{e:?}"
        );
    }

    #[test]
    fn audit_events_go_only_where_routed_and_routes_name_known_channels() {
        let p = parsed("");
        assert!(
            p.alert_channels("audit").is_empty(),
            "not sent unless routed"
        );
        assert_eq!(p.alert_channels("approval_needed"), ["oncall"]);
        let routed = variant(
            "alerts = [\"oncall\"]\n",
            "alerts = [\"oncall\"]\n\n[alert_routes]\naudit = [\"oncall\"]\n",
        );
        let p = Policy::from_toml(&routed, Path::new("p.toml"), Some(&["oncall".into()])).unwrap();
        assert_eq!(p.alert_channels("audit"), ["oncall"]);
        let e = errors_of(&routed.replace("audit = [\"oncall\"]", "audit = [\"audit-log\"]"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:6:10: ")
                && e[0].contains("unknown alert channel \"audit-log\""),
            "{e:?}"
        );
    }
}
