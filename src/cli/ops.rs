//! Operator commands: `status`, `start`, `pause`, `resume`, `rollback`, `promote`. They read and
//! write the rollout state in Consul (compare-and-set), with or without a daemon running; the
//! daemon obeys a recorded intent at its next evaluation. `rollback --now` is the exception: it
//! moves the weights itself (see [`super::breakglass`]).

use std::io::{self, Write};
use std::path::Path;

use clap::Args;
use serde_json::json;

use crate::audit::{ActionKind, Actor};
use crate::daemon::{consul_client, StateStore, StoreError};
use crate::engine::{adopted_step, Intent, Phase, RolloutState};
use crate::policy::{load_dir, Config, Policy, TrafficTarget, Weights};
use crate::server::RolloutView;
use crate::stats::format_e;
use crate::traffic::{Actuator, ConsulKv, HaproxyRuntime};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this API.
    pub api: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IntentArgs {
    /// The API (its policy's `api`).
    pub api: String,
    /// Why (recorded in the state and shown by `status`).
    #[arg(long, default_value = "requested by an operator")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub intent: IntentArgs,
    /// The candidate's release id (shown in `status`, alerts, /metrics and the history).
    #[arg(long)]
    pub release: Option<String>,
    /// The colour to move traffic onto (default: the one not stable).
    #[arg(long, value_parser = ["blue", "green"])]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The API (its policy's `api`).
    pub api: String,
    /// Continue from the paused step with that step's weights, replacing weights set by hand.
    #[arg(long, conflicts_with = "adopt_live")]
    pub from_step: bool,
    /// Keep the live weights (set by hand) and continue as if they were the current step: the
    /// highest step at or below the live green share.
    #[arg(long)]
    pub adopt_live: bool,
    /// Why (recorded in the audit trail).
    #[arg(long, default_value = "requested by an operator")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The API (its policy's `api`).
    pub api: String,
    /// Why (recorded in the state and shown by `status`).
    #[arg(long, default_value = "requested by an operator")]
    pub reason: String,
    /// Break glass: send all traffic to the stable colour now, by compare-and-set on the
    /// traffic target, without waiting for the daemon and even when the stored state cannot be
    /// read (then `--to` says which colour); then record the rollback in the state and alert.
    #[arg(long)]
    pub now: bool,
    /// With `--now`: the colour to send all traffic to (default: the state's stable colour).
    /// After a promotion, `--to` the previous stable colour undoes the promotion.
    #[arg(long, requires = "now", value_parser = ["blue", "green"])]
    pub to: Option<String>,
}

pub(super) fn policies(config: &Config) -> Result<Vec<Policy>, i32> {
    let report = load_dir(&config.policies_dir, Some(&config.channel_names()));
    for e in &report.errors {
        eprintln!("{e}");
    }
    if report.policies.is_empty() {
        eprintln!(
            "error: no valid policy in {}",
            config.policies_dir.display()
        );
        return Err(super::EXIT_CONFIG);
    }
    Ok(report.policies)
}

/// The policy of `api`, or exit code 2 after saying so.
pub(super) fn policy_of(config: &Config, api: &str) -> Result<Policy, i32> {
    let policies = policies(config)?;
    match policies.into_iter().find(|p| p.api == api) {
        Some(p) => Ok(p),
        None => {
            eprintln!(
                "error: no policy for API {api:?} in {}",
                config.policies_dir.display()
            );
            Err(super::EXIT_CONFIG)
        }
    }
}

pub(super) fn store(config: &Config) -> Result<StateStore, i32> {
    let client = consul_client(config).map_err(|e| {
        eprintln!("error: {e}");
        super::EXIT_CONFIG
    })?;
    Ok(StateStore::new(client, &config.consul.prefix))
}

/// What moves `policy`'s weights: its Consul keys or the configured HAProxy nodes.
pub(super) fn actuator(
    config: &Config,
    store: &StateStore,
    policy: &Policy,
) -> Result<Actuator, String> {
    match &policy.traffic.target {
        TrafficTarget::ConsulKeys { .. } => {
            Ok(Actuator::ConsulKv(ConsulKv::new(store.client().clone())))
        }
        TrafficTarget::Haproxy { .. } => {
            if config.haproxy.nodes.is_empty() {
                return Err(format!(
                    "policy {} targets HAProxy, but the configuration names no [haproxy] nodes",
                    policy.api
                ));
            }
            let urls: Vec<String> = config.haproxy.nodes.iter().map(|n| n.to_string()).collect();
            HaproxyRuntime::from_urls(&urls).map(Actuator::Haproxy)
        }
    }
}

/// One API as `status` shows it: its rollout, or why its stored state cannot be read.
enum Shown {
    View(Box<RolloutView>),
    Undecodable {
        api: String,
        key: String,
        index: u64,
        reason: String,
        kept_at: String,
    },
}

pub fn status(config: Option<&Path>, args: StatusArgs) -> i32 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policies = match policies(&config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let selected: Vec<&Policy> = policies
        .iter()
        .filter(|p| args.api.as_ref().is_none_or(|a| *a == p.api))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "error: no policy for API {:?}",
            args.api.unwrap_or_default()
        );
        return super::EXIT_CONFIG;
    }
    let store = match store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut shown = Vec::new();
    for policy in selected {
        match runtime.block_on(store.load(policy)) {
            Ok((state, _)) => {
                let mut view = RolloutView::from_state(policy, &state);
                // One API asked for: its decision history too (its own keys, one more read).
                if args.api.is_some() {
                    match runtime.block_on(store.history(&policy.api)) {
                        Ok(history) => view.history = history,
                        Err(e) => {
                            eprintln!(
                                "error: {}: cannot read the decision history: {e}",
                                policy.api
                            );
                            return super::EXIT_FAILURE;
                        }
                    }
                }
                shown.push(Shown::View(Box::new(view)));
            }
            // That API only: the others are shown as usual.
            Err(StoreError::Corrupt {
                api,
                key,
                index,
                reason,
            }) => shown.push(Shown::Undecodable {
                kept_at: store.undecodable_key(&api, index),
                api,
                key,
                index,
                reason,
            }),
            Err(e) => {
                eprintln!("error: {}: {e}", policy.api);
                return super::EXIT_FAILURE;
            }
        }
    }
    let mut out = io::stdout().lock();
    let written = if args.json {
        print_json(&mut out, &shown)
    } else {
        let campaigns = crate::daemon::CampaignStore::new(store.client().clone(), store.prefix());
        let lines = if args.api.is_none() {
            let breakers = crate::daemon::BreakerStore::new(store.client().clone(), store.prefix());
            let mut lines = super::campaign::status_lines(&config, &policies, &runtime, &campaigns);
            lines.extend(super::breaker::status_lines(
                &config, &policies, &runtime, &breakers,
            ));
            lines
        } else {
            Vec::new()
        };
        shown
            .iter()
            .try_for_each(|s| match s {
                Shown::View(v) => print_view(&mut out, v),
                Shown::Undecodable {
                    api,
                    key,
                    index,
                    reason,
                    kept_at,
                } => print_undecodable(&mut out, api, key, *index, reason, kept_at),
            })
            .and_then(|()| lines.iter().try_for_each(|l| writeln!(out, "{l}")))
    };
    finish_output(written.and_then(|()| out.flush()))
}

/// Exit code after writing to stdout: a reader that went away (`status | head`) is not an
/// error; anything else is.
pub(super) fn finish_output(written: io::Result<()>) -> i32 {
    match written {
        Ok(()) => 0,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            super::EXIT_FAILURE
        }
    }
}

fn print_json(out: &mut impl Write, shown: &[Shown]) -> io::Result<()> {
    let values: Vec<serde_json::Value> = shown
        .iter()
        .map(|s| match s {
            Shown::View(v) => serde_json::to_value(v).unwrap_or_else(|e| {
                json!({ "api": v.api, "error": format!("cannot encode the view: {e}") })
            }),
            Shown::Undecodable {
                api,
                key,
                index,
                reason,
                kept_at,
            } => json!({
                "api": api,
                "state_undecodable": {
                    "key": key,
                    "index": index,
                    "reason": reason,
                    "repair": format!("greenlight rollback {api} --now (keeps these bytes at {kept_at})"),
                },
            }),
        })
        .collect();
    let text = serde_json::to_string_pretty(&values).map_err(io::Error::other)?;
    writeln!(out, "{text}")
}

fn print_undecodable(
    out: &mut impl Write,
    api: &str,
    key: &str,
    index: u64,
    reason: &str,
    kept_at: &str,
) -> io::Result<()> {
    writeln!(
        out,
        "{api}: STATE CANNOT BE READ; greenlight does not act on this API"
    )?;
    writeln!(out, "  state:    {key} (index {index})")?;
    writeln!(out, "  reason:   {reason}")?;
    writeln!(
        out,
        "  repair:   `greenlight rollback {api} --now` sends all traffic to the stable colour (`--to blue|green` when the bytes do not say it), keeps these bytes at {kept_at} and writes a fresh rolled-back state"
    )
}

fn since_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Progressing => "step since",
        Phase::Baking => "baking since",
        Phase::RolledBack => "rolled back",
        Phase::Promoted => "promoted",
        Phase::Paused => "paused",
        Phase::Pending => "since",
    }
}

fn print_view(out: &mut impl Write, v: &RolloutView) -> io::Result<()> {
    writeln!(
        out,
        "{}: {} at step {}/{} ({:.1} % green; weights blue={} green={})",
        v.api,
        v.phase.as_str(),
        v.step + 1,
        v.steps.len(),
        v.green_percent,
        v.weights.blue,
        v.weights.green
    )?;
    writeln!(out, "  release:  {}", v.releases_text())?;
    if let Some(since) = v.since {
        writeln!(out, "  {}: {since}", since_label(v.phase))?;
    }
    if let Some(s) = &v.sticky {
        writeln!(out, "  users:    {} on green", s.on_green)?;
        writeln!(out, "  subsets:  {}", s.subsets_text())?;
    }
    if let Some(reason) = &v.reason {
        writeln!(out, "  reason:   {reason}")?;
    }
    if let Some(intent) = &v.intent_pending {
        writeln!(
            out,
            "  pending:  {intent:?} (applied at the next evaluation)"
        )?;
    }
    if let Some(gate) = &v.awaiting_approval {
        let state = match &gate.approved_by {
            Some(by) => format!("approved by {by}; entered at the next evaluation"),
            None if gate.timed_out => format!("since {}, approval_timeout passed", gate.since),
            None => format!("since {}", gate.since),
        };
        writeln!(
            out,
            "  approval: AWAITING APPROVAL to enter step {} ({} %), {state}; `greenlight approve {}`",
            gate.step + 1,
            gate.percent,
            v.api
        )?;
    }
    if let Some(from) = v.applying_from {
        writeln!(
            out,
            "  applying: weight change from blue={} green={} not yet confirmed",
            from.blue, from.green
        )?;
    }
    if let Some(d) = &v.last_decision {
        writeln!(
            out,
            "  last:     {} at {}: {}",
            d.action.as_str(),
            d.at,
            d.reason
        )?;
    }
    let c = v.candidate();
    for e in &v.evidence {
        writeln!(
            out,
            "  evidence: {:<13} against {c} {} (rollback at {:.0}); for {c} at this step {} (advance at {:.0})",
            e.stream,
            format_e(e.rollback_log_e),
            e.rollback_threshold,
            format_e(e.advance_log_e),
            e.advance_threshold
        )?;
    }
    Ok(())
}

/// `resume`: says what it will do; after a manual weight change, refuses unless the operator
/// chose between the step's weights (`--from-step`) and the live ones (`--adopt-live`).
pub fn resume(config: Option<&Path>, actor: &Actor, args: ResumeArgs) -> i32 {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = match policy_of(&config, &args.api) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = match store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let state = match runtime.block_on(store.load(&policy)) {
        Ok((state, _)) => state,
        Err(e) => {
            eprintln!("error: {}: {e}", policy.api);
            return super::EXIT_FAILURE;
        }
    };
    // The live split; the paused state follows it, so it stands in when the target is down.
    let live = match actuator(&config, &store, &policy) {
        Ok(a) => runtime.block_on(a.read(&policy)).unwrap_or_else(|e| {
            eprintln!(
                "warning: {}: cannot read the live weights ({e}); using the last known ones",
                policy.api
            );
            state.weights
        }),
        Err(e) => {
            eprintln!("warning: {e}; using the last known weights");
            state.weights
        }
    };
    let plan = ResumePlan::new(&policy, &state, live);
    if plan.overridden && !args.from_step && !args.adopt_live {
        eprintln!("{}", plan.refusal(&policy.api));
        return super::EXIT_CONFIG;
    }
    let (kind, what) = if args.adopt_live {
        (ActionKind::ResumeAdoptLive, plan.adopt_text())
    } else {
        (ActionKind::Resume, plan.step_text())
    };
    let what = if state.phase == Phase::Paused || matches!(state.intent, Some(Intent::Pause { .. }))
    {
        what
    } else {
        format!(
            "ignores it: the rollout is {}, not paused",
            state.phase.as_str()
        )
    };
    super::act::record(
        &config,
        &policy,
        actor,
        (kind, Default::default()),
        &args.reason,
        &what,
    )
}

/// What each way of resuming does to a paused rollout.
struct ResumePlan {
    step: usize,
    step_percent: f64,
    step_weights: Weights,
    live: Weights,
    adopted: usize,
    adopted_percent: f64,
    /// The live weights are not the step's: someone set them by hand.
    overridden: bool,
    reason: Option<String>,
}

impl ResumePlan {
    fn new(policy: &Policy, state: &RolloutState, live: Weights) -> ResumePlan {
        let step = state.step.min(policy.steps.len() - 1);
        let step_weights = policy.weights_at_toward(state.candidate(), step);
        let adopted = adopted_step(policy, live, state.candidate());
        ResumePlan {
            step,
            step_percent: policy.steps[step],
            step_weights,
            live,
            adopted,
            adopted_percent: policy.steps[adopted],
            overridden: state.phase == Phase::Paused && live != step_weights,
            reason: state.reason.clone(),
        }
    }

    fn step_text(&self) -> String {
        if self.live == self.step_weights {
            format!(
                "continues at step {} ({} %) with its weights blue={} green={}",
                self.step + 1,
                self.step_percent,
                self.step_weights.blue,
                self.step_weights.green
            )
        } else {
            format!(
                "sets the weights from blue={} green={} back to step {}'s blue={} green={} and continues from there",
                self.live.blue,
                self.live.green,
                self.step + 1,
                self.step_weights.blue,
                self.step_weights.green
            )
        }
    }

    fn adopt_text(&self) -> String {
        format!(
            "keeps the live weights blue={} green={} and continues as step {} ({} %)",
            self.live.blue,
            self.live.green,
            self.adopted + 1,
            self.adopted_percent
        )
    }

    fn refusal(&self, api: &str) -> String {
        let why = self
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        format!(
            "error: {api}: the live weights blue={} green={} are not step {}'s blue={} green={}{why}.\n\
             Nothing recorded. Choose what resuming does:\n  \
             greenlight resume {api} --from-step    {}\n  \
             greenlight resume {api} --adopt-live   {}",
            self.live.blue,
            self.live.green,
            self.step + 1,
            self.step_weights.blue,
            self.step_weights.green,
            self.step_text(),
            self.adopt_text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_who_rides_green_in_sticky_mode() {
        let policy = crate::engine::tests::policy();
        let mut view = RolloutView::from_state(&policy, &RolloutState::new(&policy));
        assert_eq!(view.sticky, None);
        view.sticky = Some(crate::server::StickyView {
            share_percent: 5.0,
            subsets: vec![crate::server::SubsetView {
                name: "beta".into(),
                colour: crate::policy::sticky::SubsetColour::Green,
                members: 250,
                key: None,
            }],
            on_green: "5 % of users (random cohort) + subset beta (250 users)".into(),
        });
        let mut out = Vec::new();
        print_view(&mut out, &view).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "\n  users:    5 % of users (random cohort) + subset beta (250 users) on green\n  subsets:  beta (green, 250 members)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_prints_overwhelming_evidence_briefly() {
        let policy = crate::engine::tests::policy();
        let mut view = RolloutView::from_state(&policy, &RolloutState::new(&policy));
        view.evidence[0].rollback_log_e = 12.34f64.ln();
        view.evidence[0].advance_log_e = 812.3;
        view.evidence[1].advance_log_e = 200.0;
        let mut out = Vec::new();
        print_view(&mut out, &view).unwrap();
        let text = String::from_utf8(out).unwrap();
        let errors = text.lines().find(|l| l.contains("errors")).unwrap();
        assert!(
            errors.contains("against green E = 12.3 (rollback at 300)"),
            "{errors}"
        );
        assert!(
            errors.contains("for green at this step E ≥ 1e300 (ln E = 812) (advance at 60)"),
            "{errors}"
        );
        let latency = text.lines().find(|l| l.contains("latency@0.25")).unwrap();
        assert!(
            latency.contains("for green at this step E = 7.23e86"),
            "{latency}"
        );
        for line in text.lines() {
            assert!(line.chars().count() < 130, "{line}");
            assert!(!line.contains("inf"), "{line}");
        }
    }

    #[test]
    fn resume_plan_explains_both_choices() {
        let policy = crate::engine::tests::policy();
        let mut state = RolloutState::started(&policy, "2026-01-05T00:00:00Z".parse().unwrap());
        state.phase = Phase::Paused;
        state.step = 1;
        let live = Weights {
            blue: 60,
            green: 40,
        };
        let plan = ResumePlan::new(&policy, &state, live);
        assert!(plan.overridden);
        assert_eq!(
            plan.adopt_text(),
            "keeps the live weights blue=60 green=40 and continues as step 2 (25 %)"
        );
        assert!(plan
            .step_text()
            .contains("back to step 2's blue=75 green=25"));
        let same = ResumePlan::new(&policy, &state, policy.weights_at(1));
        assert!(!same.overridden);
    }
}
