//! Structured log setup (human or JSON lines on stderr) and the one-line decision log event.

use std::fmt::Write as _;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::engine::{Action, Decision};
use crate::stats::format_e_short;

/// Filter used when neither an explicit filter nor `RUST_LOG` is given.
pub const DEFAULT_FILTER: &str = "info";

/// Log target of [`log_decision`], for filters such as `info,greenlight::decision=warn`.
pub const DECISION_TARGET: &str = "greenlight::decision";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogInitError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("a global log subscriber is already installed")]
    AlreadySet,
}

/// Installs the global log subscriber writing to stderr: human-readable lines by default, one
/// JSON object per line with `json`. The filter uses `RUST_LOG` syntax
/// (`info,greenlight::metrics=debug`); `filter` wins over the `RUST_LOG` variable, which wins
/// over [`DEFAULT_FILTER`].
pub fn init_logging(json: bool, filter: Option<&str>) -> Result<(), LogInitError> {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let directives = filter.map(str::to_string).or(env);
    let dispatch = subscriber(json, directives.as_deref(), std::io::stderr)?;
    tracing::dispatcher::set_global_default(dispatch).map_err(|_| LogInitError::AlreadySet)
}

/// A subscriber writing to `writer` (stderr in production, a buffer in tests).
pub(crate) fn subscriber<W>(
    json: bool,
    filter: Option<&str>,
    writer: W,
) -> Result<tracing::Dispatch, LogInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let directives = filter.unwrap_or(DEFAULT_FILTER);
    let filter = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LogInitError::Filter {
            filter: directives.to_string(),
            reason: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    Ok(if json {
        tracing::Dispatch::new(builder.json().flatten_event(true).finish())
    } else {
        tracing::Dispatch::new(builder.with_ansi(false).finish())
    })
}

/// Logs one decision as one line: fields (api, action, step, green weight, reason, evidence)
/// then a sentence. Rollbacks are warnings; everything else is informational. Never an error:
/// a rollback is the progressor doing its job, and its alert goes to the on-call channel.
///
/// `evidence` is compact: `stream:R=<rollback E>,A=<advance E>` per stream, space-separated.
pub fn log_decision(api: &str, decision: &Decision) {
    let action = decision.action.as_str();
    let step = decision.state.step;
    let green_weight = decision.state.weights.green;
    let reason = decision.reason.as_str();
    let evidence = compact_evidence(decision);
    macro_rules! emit {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                target: DECISION_TARGET,
                %api,
                action = %action,
                step,
                green_weight,
                reason,
                evidence = evidence.as_str(),
                $message
            )
        };
    }
    match decision.action {
        Action::Hold => emit!(info, "Holding the canary weight."),
        Action::Start => emit!(info, "Started the rollout."),
        Action::Advance => emit!(info, "Advanced the canary one step."),
        Action::Promote => emit!(info, "Promoted the canary to all traffic."),
        Action::Rollback => emit!(warn, "Rolled back the canary."),
        Action::Pause => emit!(info, "Paused the rollout."),
        Action::Resume => emit!(info, "Resumed the rollout."),
    }
}

/// `errors:R=0.52,A=3.1 latency@0.25:R=1.2,A=0.98` from the decision's stream reports; an
/// e-value beyond 1e300 shows as `e^812` (from ln E), never `inf`.
fn compact_evidence(decision: &Decision) -> String {
    let mut out = String::new();
    for s in &decision.explanation.streams {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(
            out,
            "{}:R={},A={}",
            s.id,
            format_e_short(s.rollback_log_e),
            format_e_short(s.advance_log_e)
        );
    }
    out
}

/// Log target of the audit events ([`log_audit`] and its failures).
pub const AUDIT_TARGET: &str = "greenlight::audit";

/// Logs one human action as one line: who (user, groups, source, request id), what (action,
/// API, reason), and the rollout's phase, step and weights before and after.
pub fn log_audit(entry: &crate::audit::AuditEntry) {
    let weights = |w: crate::policy::Weights| format!("blue={} green={}", w.blue, w.green);
    tracing::info!(
        target: AUDIT_TARGET,
        api = %entry.api,
        user = %entry.user,
        groups = %entry.groups.join(","),
        action = entry.action.as_str(),
        reason = %entry.reason,
        source = %entry.source,
        request_id = %entry.request_id,
        phase_before = entry.before.phase.as_str(),
        step_before = entry.before.step,
        weights_before = %weights(entry.before.weights),
        phase_after = entry.after.phase.as_str(),
        step_after = entry.after.step,
        weights_after = %weights(entry.after.weights),
        revision = entry.revision,
        "Recorded a human action."
    );
}

/// The audit entry of an action on `api` could not be written to Consul (the action stands).
pub fn audit_write_failed(api: &str, reason: &str) {
    tracing::warn!(
        target: AUDIT_TARGET,
        %api,
        reason,
        "Could not write the audit entry to Consul; the action was carried out."
    );
}

/// An audit entry of `api` stored at `key` cannot be decoded; it is left out of listings.
pub fn audit_entry_undecodable(api: &str, key: &str, reason: &str) {
    tracing::warn!(target: AUDIT_TARGET, %api, key, reason, "Skipped an undecodable audit entry.");
}

/// The alert for an audit entry of `api` could not be recorded.
pub fn audit_alert_failed(api: &str, reason: &str) {
    tracing::warn!(target: AUDIT_TARGET, %api, reason, "Could not record the audit alert.");
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use jiff::Timestamp;

    use super::*;
    use crate::engine::{decide, Observation, RolloutState};
    use crate::engine::{CheckData, CheckObservation, Counts, Pair};

    /// A cloneable in-memory writer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_767_571_200 + minute * 60).unwrap()
    }

    fn window(minute: i64, green_errors: f64) -> Observation {
        let pair = |b: f64, g: f64| Pair {
            blue: Counts::new(11400.0, b),
            green: Counts::new(600.0, g),
        };
        let mut checks = vec![CheckObservation {
            check: "errors".into(),
            data: Ok(CheckData::Errors {
                counts: pair(57.0, green_errors),
            }),
        }];
        checks.push(CheckObservation {
            check: "latency".into(),
            data: Ok(CheckData::Latency {
                edges: [0.25, 1.0]
                    .into_iter()
                    .map(|edge| crate::engine::EdgeCounts {
                        edge,
                        counts: pair(114.0, 6.0),
                    })
                    .collect(),
            }),
        });
        checks.push(CheckObservation {
            check: "p99".into(),
            data: Ok(CheckData::Value {
                candidate: 0.3,
                stable: Some(0.3),
            }),
        });
        Observation {
            start: t(minute - 1),
            end: t(minute),
            checks,
        }
    }

    /// Decisions of a rollout that starts, warms up, then rolls back on a gross error regression.
    fn decisions() -> Vec<Decision> {
        let policy = crate::engine::tests::policy();
        let mut state = RolloutState::new(&policy);
        let mut out = Vec::new();
        for (m, errors) in [(1, 3.0), (2, 3.0), (3, 3.0), (4, 60.0)] {
            let d = decide(&policy, &state, &window(m, errors), t(m));
            state = d.state.clone();
            out.push(d);
        }
        assert_eq!(out.last().unwrap().action, Action::Rollback);
        out
    }

    fn capture(json: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let dispatch = subscriber(json, None, buf.clone()).unwrap();
        tracing::dispatcher::with_default(&dispatch, f);
        buf.text()
    }

    #[test]
    fn one_line_per_decision_with_fields_then_a_sentence() {
        let ds = decisions();
        let text = capture(false, || {
            for d in &ds {
                log_decision("checkout", d);
            }
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ds.len(), "{text}");
        assert!(
            lines[0].contains(" INFO greenlight::decision: "),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("Started the rollout."));
        assert!(lines[0].contains("api=checkout action=start step=0 green_weight=5"));
        let rollback = lines[3];
        assert!(rollback.contains(" WARN "), "{rollback}");
        assert!(rollback.contains("Rolled back the canary."));
        assert!(rollback.contains("green_weight=0"));
        assert!(rollback.contains("evidence=\"errors:R="), "{rollback}");
        assert!(rollback.contains(" latency@0.25:R="), "{rollback}");
        assert!(!text.contains("ERROR"));
    }

    #[test]
    fn an_audit_entry_is_one_json_line_with_who_what_and_the_state_before_and_after() {
        use crate::audit::{ActionKind, Actor, AuditEntry};
        let policy = crate::engine::tests::policy();
        let before = RolloutState::started(&policy, t(0));
        let mut after = before.clone();
        after.intent = Some(crate::engine::Intent::Pause {
            reason: "checking dashboards".into(),
        });
        let actor = Actor {
            user: "alice".into(),
            groups: vec!["payments".into(), "oncall".into()],
            source: "10.0.0.7".into(),
            request_id: "req-42".into(),
        };
        let entry = AuditEntry::new(
            &policy,
            &actor,
            ActionKind::Pause,
            "checking dashboards",
            &before,
            &after,
            17,
            t(1),
        );
        let text = capture(true, || log_audit(&entry));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["target"], AUDIT_TARGET);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "Recorded a human action.");
        for (field, want) in [
            ("api", "checkout"),
            ("user", "alice"),
            ("groups", "payments,oncall"),
            ("action", "pause"),
            ("reason", "checking dashboards"),
            ("source", "10.0.0.7"),
            ("request_id", "req-42"),
            ("phase_before", "progressing"),
            ("weights_before", "blue=95 green=5"),
            ("phase_after", "progressing"),
        ] {
            assert_eq!(v[field], want, "{field}: {v}");
        }
        assert_eq!(v["step_before"], 0);
        assert_eq!(v["revision"], 17);
    }

    #[test]
    fn json_lines_carry_the_fields_and_the_message() {
        let ds = decisions();
        let text = capture(true, || log_decision("checkout", &ds[3]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["api"], "checkout");
        assert_eq!(v["action"], "rollback");
        assert_eq!(v["green_weight"], 0);
        assert_eq!(v["step"], 0);
        assert_eq!(v["reason"], ds[3].reason.as_str());
        assert_eq!(v["message"], "Rolled back the canary.");
        let evidence = v["evidence"].as_str().unwrap();
        assert_eq!(evidence.split(' ').count(), 3, "{evidence}");
    }

    #[test]
    fn the_filter_silences_info_and_rejects_nonsense() {
        let buf = Buf::default();
        let dispatch = subscriber(false, Some("warn"), buf.clone()).unwrap();
        let ds = decisions();
        tracing::dispatcher::with_default(&dispatch, || {
            for d in &ds {
                log_decision("checkout", d);
            }
        });
        assert_eq!(buf.text().lines().count(), 1);
        assert!(matches!(
            subscriber(false, Some("info,=[="), Buf::default()),
            Err(LogInitError::Filter { .. })
        ));
    }

    #[test]
    fn overwhelming_evidence_logs_its_logarithm_not_inf() {
        let mut d = decisions().pop().unwrap();
        d.explanation.streams[0].rollback_log_e = 812.3;
        d.explanation.streams[1].rollback_log_e = 12.34f64.ln();
        let text = capture(true, || log_decision("checkout", &d));
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let evidence = v["evidence"].as_str().unwrap();
        assert!(evidence.starts_with("errors:R=e^812,A="), "{evidence}");
        assert!(evidence.contains("latency@0.25:R=12.3,A="), "{evidence}");
        assert!(!text.contains("inf"), "{text}");
    }
}
