//! Turning decisions and daemon events into alert events with their explanation.

use jiff::Timestamp;

use crate::alert::{vmui_link, AlertEvent, EventKind};
use crate::engine::{
    percent, release_suffix, Action, Counts, Decision, Notice, Releases, RolloutState,
};
use crate::metrics::template::render;
use crate::policy::{CheckKind, Colour, GreenMissingAction, Policy, Weights};
use crate::server::sticky_view::who_is_on_green;
use crate::server::telemetry::green_share;
use crate::stats::{format_e, format_e_short};

/// The identity of one rollout, used in alert keys so that re-decisions deduplicate.
fn rollout_id(state: &RolloutState) -> String {
    state
        .rollout_started_at
        .map(|t| t.as_second().to_string())
        .unwrap_or_else(|| "none".into())
}

/// The rendered PromQL queries of a policy for both colours over `window`.
pub fn queries(policy: &Policy, window: std::time::Duration) -> Vec<String> {
    let mut out = Vec::new();
    for check in &policy.checks {
        let templates: Vec<&String> = match &check.kind {
            CheckKind::ErrorRate {
                requests, errors, ..
            } => vec![requests, errors],
            CheckKind::LatencyHistogram { buckets, .. } => vec![buckets],
            CheckKind::Threshold { query, .. } => vec![query],
        };
        let sides = policy.sides(check);
        for t in templates {
            for side in [&sides.blue, &sides.green] {
                out.push(render(t, side, window, &policy.api));
            }
        }
    }
    out
}

/// `bad/requests (rate)`.
fn counts(c: &Counts) -> String {
    format!("{:.0}/{:.0} ({:.4})", c.bad, c.requests, c.rate())
}

fn weights(w: Weights) -> String {
    format!("blue={} green={}", w.blue, w.green)
}

/// Every alert of a rollout says which colour is stable and which is the candidate, with their
/// release ids when known.
fn with_releases(e: AlertEvent, releases: &Releases, release: Option<&str>) -> AlertEvent {
    let side = |c: Colour| match releases.release_of(c) {
        Some(id) => format!("{c} ({id})"),
        None => c.to_string(),
    };
    let e = e
        .with_field("stable", side(releases.stable))
        .with_field("candidate", side(releases.candidate()));
    match release {
        Some(id) => e.with_field("release", id),
        None => e,
    }
}

/// The console page of `api` under the console's public URL.
pub fn console_link(console_url: &str, api: &str) -> String {
    format!("{}/apis/{api}", console_url.trim_end_matches('/'))
}

/// Alert events for one decision (rollback, promotion, pause, notices). `console_url`: the
/// console's public URL (`[console] public_url`), for links to the API's page.
pub fn for_decision(
    policy: &Policy,
    before: &RolloutState,
    d: &Decision,
    metrics_ui: Option<&str>,
    console_url: Option<&str>,
) -> Vec<AlertEvent> {
    let mut events = Vec::new();
    let at = d.explanation.window_end;
    let id = rollout_id(&d.state);
    match d.action {
        Action::Rollback => {
            let x = &d.explanation;
            let qs = queries(policy, policy.interval);
            // After a rollback (or an undone promotion) the candidate is the colour sent back.
            let r = &d.state.releases;
            let (stable, candidate) = (r.stable, r.candidate());
            let mut e = AlertEvent::new(
                &policy.api,
                EventKind::Rollback,
                &id,
                format!(
                    "greenlight rolled back {}{} at {} % {candidate}, all traffic to {stable} (stable): {}",
                    policy.api,
                    release_suffix(r.candidate_release.as_deref()),
                    percent(x.weights_before.percent_of(candidate)),
                    d.reason
                ),
                at,
            )
            .with_field("weights_before", weights(x.weights_before))
            .with_field("weights_after", weights(x.weights_after))
            .with_field("step", format!("{} ({} %)", x.step + 1, x.green_percent))
            .with_field("reason", &d.reason)
            .with_field("window", format!("{} .. {}", x.window_start, x.window_end));
            let mut description = format!(
                "{}\nWeights {} -> {} at step {} ({} % green).\n",
                d.reason,
                weights(x.weights_before),
                weights(x.weights_after),
                x.step + 1,
                x.green_percent
            );
            if let Some(sticky) = &policy.traffic.sticky {
                let who = who_is_on_green(sticky, green_share(x.weights_before));
                description.push_str(&format!("{who} moved back to blue.\n"));
                e = e.with_field("users_moved_back", who);
            }
            for s in &x.streams {
                let key = s.id.replace(['@', '.'], "_");
                if let Some(w) = s.window {
                    e = e
                        .with_field(format!("{key}_window_blue"), counts(&w.blue))
                        .with_field(format!("{key}_window_green"), counts(&w.green));
                }
                e = e
                    .with_field(format!("{key}_step_blue"), counts(&s.step.blue))
                    .with_field(format!("{key}_step_green"), counts(&s.step.green))
                    .with_field(
                        format!("{key}_evidence"),
                        format!(
                            "E={} threshold={:.0}",
                            format_e_short(s.rollback_log_e),
                            s.rollback_threshold
                        ),
                    );
                description.push_str(&format!(
                    "{}: candidate {candidate} {} vs stable {stable} {} over the rollout; {} (threshold {:.0}).\n",
                    s.id,
                    counts(&s.total.of(candidate)),
                    counts(&s.total.of(stable)),
                    format_e(s.rollback_log_e),
                    s.rollback_threshold
                ));
            }
            for g in &x.guards {
                description.push_str(&format!(
                    "{}: green {:?}, blue {:?}, max {:?}, min {:?}, {} of {} failures.\n",
                    g.check,
                    g.green,
                    g.blue,
                    g.max,
                    g.min,
                    g.consecutive_failures,
                    g.failures_to_rollback
                ));
            }
            for q in &qs {
                e = e.with_query(q);
            }
            if let Some(ui) = metrics_ui {
                let start = before.rollout_started_at.unwrap_or(x.window_start);
                e = e.with_link(vmui_link(ui, &qs, start, x.window_end));
            }
            events.push(e.with_description(description));
        }
        Action::Promote => events.push(
            AlertEvent::new(
                &policy.api,
                EventKind::Promoted,
                &id,
                format!(
                    "greenlight promoted {}{}: {} is stable, with 100 % of traffic: {}",
                    policy.api,
                    release_suffix(d.state.releases.stable_release.as_deref()),
                    d.state.releases.stable,
                    d.reason
                ),
                at,
            )
            .with_field("weights_after", weights(d.state.weights)),
        ),
        Action::Pause => events.push(
            AlertEvent::new(
                &policy.api,
                EventKind::Paused,
                &id,
                format!("greenlight paused {}: {}", policy.api, d.reason),
                at,
            )
            .with_field("weights", weights(d.state.weights)),
        ),
        // The condition behind an earlier alert has ended: resolve it.
        Action::Resume => {
            let (kind, what) = if before
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("by hand"))
            {
                (EventKind::ManualOverride, "manual weight change")
            } else {
                (EventKind::Paused, "pause")
            };
            events.push(
                AlertEvent::new(
                    &policy.api,
                    kind,
                    &rollout_id(before),
                    format!("{}: {what} ended, rollout resumed", policy.api),
                    at,
                )
                .resolve(at),
            );
        }
        Action::Start if before.phase == crate::engine::Phase::RolledBack => events.push(
            AlertEvent::new(
                &policy.api,
                EventKind::Rollback,
                &rollout_id(before),
                format!("{}: a new rollout started after the rollback", policy.api),
                at,
            )
            .resolve(at),
        ),
        _ => {}
    }
    for notice in &d.notices {
        match notice {
            Notice::MetricsUnavailable { since, detail } => events.push(
                AlertEvent::new(
                    &policy.api,
                    EventKind::MetricsUnavailable,
                    &format!("{id}-{}", since.as_second()),
                    format!(
                        "No usable metrics for {} since {since}; weights frozen at {}",
                        policy.api,
                        weights(d.state.weights)
                    ),
                    at,
                )
                .with_description(detail.clone()),
            ),
            Notice::GreenDataMissing { since, detail } => events.push(
                AlertEvent::new(
                    &policy.api,
                    EventKind::GreenDataMissing,
                    &format!("{id}-{}", since.as_second()),
                    format!(
                        "{} of {} (the candidate) stopped reporting metrics at {} % while {} (stable) still reports (since {since}); {}",
                        d.state.candidate().capitalised(),
                        policy.api,
                        percent(before.candidate_percent()),
                        before.releases.stable,
                        green_missing_outcome(policy)
                    ),
                    at,
                )
                .with_field("weights", weights(d.state.weights))
                .with_field("since", since.to_string())
                .with_description(format!(
                    "{detail}\nA green that crashes or is no longer scraped looks like this. {}",
                    d.reason
                )),
            ),
            Notice::TrafficSplitMismatch {
                observed_percent,
                configured_percent,
                windows,
            } => events.push(
                AlertEvent::new(
                    &policy.api,
                    EventKind::TrafficSplitMismatch,
                    &format!("{id}-{}", d.state.step),
                    format!(
                        "{} of {} (the candidate) receives {} % of requests, configured {} %; not advancing",
                        d.state.candidate().capitalised(),
                        policy.api,
                        percent(*observed_percent),
                        percent(*configured_percent)
                    ),
                    at,
                )
                .with_field("observed_green_percent", percent(*observed_percent))
                .with_field("configured_green_percent", percent(*configured_percent))
                .with_field("weights", weights(d.state.weights))
                .with_field("windows", windows.to_string())
                .with_description(
                    "The traffic split HAProxy applies is not the one greenlight configured: \
                     weight sync stopped, green ejected by health checks, or a node not updated. \
                     Check the live weights and server states on every HAProxy node.",
                ),
            ),
            Notice::ApprovalNeeded {
                step,
                percent,
                since,
            } => {
                let mut e = AlertEvent::new(
                    &policy.api,
                    EventKind::ApprovalNeeded,
                    &format!("{id}-{step}"),
                    format!(
                        "{}: approval needed to enter step {} ({} % green); waiting at {} %",
                        policy.api,
                        step + 1,
                        percent,
                        d.explanation.green_percent
                    ),
                    at,
                )
                .with_field("step", format!("{} ({} %)", step + 1, percent))
                .with_field("weights", weights(d.state.weights))
                .with_field("since", since.to_string())
                .with_description(format!(
                    "The evidence allows {} to enter step {} ({} % green), which needs a human's approval                      (approval_before). Analysis and automatic rollback go on meanwhile.
                     Approve with `greenlight approve {}`{}.
{}",
                    policy.api,
                    step + 1,
                    percent,
                    policy.api,
                    if console_url.is_some() { " or on the console page" } else { "" },
                    d.reason
                ));
                if let Some(url) = console_url {
                    e = e.with_link(console_link(url, &policy.api));
                }
                events.push(e);
            }
            Notice::ApprovalTimedOut {
                step,
                percent,
                since,
            } => events.push(AlertEvent::new(
                &policy.api,
                EventKind::ApprovalNeeded,
                &format!("{id}-{step}-timeout"),
                format!(
                    "{}: no approval to enter step {} ({} % green) since {since}; still waiting",
                    policy.api,
                    step + 1,
                    percent
                ),
                at,
            )),
            Notice::BakeBreach { detail } => events.push(
                AlertEvent::new(
                    &policy.api,
                    EventKind::BakeBreach,
                    &format!("{id}-bake"),
                    format!(
                        "{}: breach during the bake of {} at 100 %; nothing rolled back (the previous stable colour is not kept warm): {detail}",
                        policy.api,
                        d.state.candidate()
                    ),
                    at,
                )
                .with_field("weights", weights(d.state.weights))
                .with_description(format!(
                    "{detail}\nbake_on_breach = \"alert\": act by hand (redeploy the previous release, then `greenlight start`).\n{}",
                    d.reason
                )),
            ),
            Notice::Stuck { since } => events.push(AlertEvent::new(
                &policy.api,
                EventKind::Stuck,
                &format!("{id}-{}", since.as_second()),
                format!(
                    "{} has made no progress since {since} (step {}): {}",
                    policy.api,
                    d.state.step + 1,
                    d.reason
                ),
                at,
            )),
        }
    }
    // The gate the rollout waited at is behind it (approved, or rolled back): resolve its alert.
    if let Some(gate) = &before.awaiting_approval {
        let waiting_on = d.state.awaiting_approval.as_ref().map(|g| g.step);
        if waiting_on != Some(gate.step) {
            let suffixes: &[&str] = if gate.timed_out {
                &["", "-timeout"]
            } else {
                &[""]
            };
            for suffix in suffixes {
                events.push(
                    AlertEvent::new(
                        &policy.api,
                        EventKind::ApprovalNeeded,
                        &format!("{}-{}{suffix}", rollout_id(before), gate.step),
                        format!("{}: no longer waiting for an approval", policy.api),
                        at,
                    )
                    .resolve(at),
                );
            }
        }
    }
    // Green reports again (or the step changed): resolve its alert.
    let (was, now) = (&before.quality, &d.state.quality);
    if was.green_missing_alerted && !now.green_missing_alerted {
        if let Some(since) = was.green_missing_since {
            events.push(
                AlertEvent::new(
                    &policy.api,
                    EventKind::GreenDataMissing,
                    &format!("{}-{}", rollout_id(before), since.as_second()),
                    format!(
                        "{} of {} reports metrics again",
                        d.state.candidate().capitalised(),
                        policy.api
                    ),
                    at,
                )
                .resolve(at),
            );
        }
    }
    if was.split_mismatch_alerted && !now.split_mismatch_alerted {
        events.push(
            AlertEvent::new(
                &policy.api,
                EventKind::TrafficSplitMismatch,
                &format!("{}-{}", rollout_id(before), before.step),
                format!(
                    "{} of {} receives its configured share again",
                    d.state.candidate().capitalised(),
                    policy.api
                ),
                at,
            )
            .resolve(at),
        );
    }
    // Metrics are back: resolve the outage alert.
    if before.no_data_alerted && !d.state.no_data_alerted {
        let since = before
            .last_good_data_at
            .or(before.step_started_at)
            .unwrap_or(at);
        events.push(
            AlertEvent::new(
                &policy.api,
                EventKind::MetricsUnavailable,
                &format!("{id}-{}", since.as_second()),
                format!("Metrics for {} are usable again", policy.api),
                at,
            )
            .resolve(at),
        );
    }
    // The release a promotion alert is about is the new stable one; every other alert's is the
    // candidate's.
    let r = &d.state.releases;
    let release = match d.action {
        Action::Promote => r.stable_release.as_deref(),
        _ => r.candidate_release.as_deref(),
    };
    events
        .into_iter()
        .map(|e| with_releases(e, r, release))
        .collect()
}

/// What happens next while green's data stay missing.
fn green_missing_outcome(policy: &Policy) -> String {
    let dq = &policy.data_quality;
    match dq.on_green_data_missing {
        GreenMissingAction::Rollback => format!(
            "greenlight rolls green back once this has lasted {}",
            humantime::format_duration(dq.green_data_missing_for)
        ),
        GreenMissingAction::Hold => {
            "weights stay where they are (on_green_data_missing = \"hold\")".to_string()
        }
    }
}

/// A manual weight change was found: the API is paused.
pub fn manual_override(
    policy: &Policy,
    state: &RolloutState,
    expected: Weights,
    found: Weights,
    at: Timestamp,
) -> AlertEvent {
    AlertEvent::new(
        &policy.api,
        EventKind::ManualOverride,
        &rollout_id(state),
        format!(
            "Weights of {} were changed outside greenlight (expected {}, found {}); rollout paused",
            policy.api,
            weights(expected),
            weights(found)
        ),
        at,
    )
    .with_field("expected", weights(expected))
    .with_field("found", weights(found))
    .with_description(
        "greenlight never overwrites a human. Resume with `greenlight resume API` to continue \
         from the current step, or `greenlight rollback API`.",
    )
}

/// A decided rollback could not be written to the traffic target (critical; resolved when it
/// lands). Routed like a rollback.
pub fn rollback_not_applied(
    policy: &Policy,
    state: &RolloutState,
    error: &str,
    at: Timestamp,
) -> AlertEvent {
    let mut e = AlertEvent::new(
        &policy.api,
        EventKind::Rollback,
        &format!("{}-not-applied", rollout_id(state)),
        format!(
            "Rollback of {} decided but NOT applied: green still receives traffic ({error}); retrying at every tick",
            policy.api
        ),
        at,
    )
    .with_field("target_weights", weights(state.weights))
    .with_description(
        "greenlight keeps retrying the rollback. If the traffic target stays unreachable, set \
         the weights by hand (blue = total, green = 0) or run `greenlight rollback API --now`.",
    );
    if let Some(from) = state.applying_from {
        e = e.with_field("live_weights", weights(from));
    }
    e.severity = crate::alert::Severity::Critical;
    e
}

/// The stored state of an API cannot be decoded (critical): greenlight holds that API.
pub fn state_unreadable(api: &str, detail: &str, at: Timestamp) -> AlertEvent {
    let mut e = AlertEvent::new(
        api,
        EventKind::InternalError,
        "state_unreadable",
        format!("The stored state of {api} cannot be decoded; greenlight holds it: {detail}"),
        at,
    )
    .with_description(
        "Weights stay where they are. `greenlight rollback API --now` moves all traffic to blue \
         without reading the state; `greenlight status` shows the error.",
    );
    e.severity = crate::alert::Severity::Critical;
    e
}

/// The progressor itself failed in a way an operator must look at.
pub fn internal_error(api: &str, what: &str, detail: &str, at: Timestamp) -> AlertEvent {
    AlertEvent::new(
        api,
        EventKind::InternalError,
        what,
        format!("greenlight cannot evaluate {api}: {detail}"),
        at,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{decide, Intent, Observation, Phase};

    fn policy() -> Policy {
        let text = r#"
api = "checkout"
steps = [10, 100]
alerts = ["oncall"]
[traffic]
consul_keys = { blue = "b", green = "g" }
[[check]]
name = "errors"
kind = "error_rate"
requests = 'r{color}[{interval}]'
errors = 'e{color}[{interval}]'
"#;
        Policy::from_toml(text, std::path::Path::new("p.toml"), None).unwrap()
    }

    fn empty(at: Timestamp) -> Observation {
        Observation {
            start: at,
            end: at,
            checks: vec![],
        }
    }

    #[test]
    fn approval_needed_links_to_the_console_page_and_resolves_once_the_gate_is_passed() {
        let p = policy();
        let t0: Timestamp = "2026-01-05T00:00:00Z".parse().unwrap();
        let s = RolloutState::started(&p, t0);
        let mut waiting = decide(&p, &s, &empty(t0), t0);
        waiting.notices = vec![Notice::ApprovalNeeded {
            step: 1,
            percent: 100.0,
            since: t0,
        }];
        waiting.state.awaiting_approval = Some(crate::engine::ApprovalGate {
            step: 1,
            since: t0,
            timed_out: false,
        });
        let fired = for_decision(&p, &s, &waiting, None, Some("https://gl.example.com/"));
        assert_eq!(fired.len(), 1, "{fired:?}");
        let e = &fired[0];
        assert_eq!(e.kind, EventKind::ApprovalNeeded);
        assert!(!e.resolved);
        assert_eq!(
            e.summary,
            "checkout: approval needed to enter step 2 (100 % green); waiting at 10 %"
        );
        assert_eq!(
            e.link.as_deref(),
            Some("https://gl.example.com/apis/checkout")
        );
        assert!(e.description.contains("greenlight approve checkout"));
        // Without a console URL: the same alert, no link.
        let plain = for_decision(&p, &s, &waiting, None, None);
        assert_eq!(plain[0].link, None);
        // Still waiting: nothing more; past the gate: the alert is resolved.
        let mut still = waiting.clone();
        still.notices.clear();
        assert!(for_decision(&p, &waiting.state, &still, None, None).is_empty());
        let mut passed = still.clone();
        passed.state.awaiting_approval = None;
        let resolved = for_decision(&p, &waiting.state, &passed, None, None);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert!(resolved[0].resolved);
        assert_eq!(resolved[0].key, e.key);
    }

    #[test]
    fn a_sticky_rollback_alert_names_the_users_moved_back_to_blue() {
        let members: Vec<String> = (0..250).map(|i| format!("\"u{i}\"")).collect();
        let text = format!(
            r#"api = "checkout"
steps = [12, 100]
[traffic]
haproxy = {{ backend = "api_checkout", blue = "blue", green = "green" }}
mode = "sticky"
[traffic.sticky]
key = {{ header = "X-User-Id" }}
[[traffic.sticky.subset]]
name = "beta"
colour = "green"
members = [{}]
[[check]]
name = "errors"
kind = "error_rate"
requests = 'r{{server="{{color}}"}}[{{interval}}]'
errors = 'e{{server="{{color}}"}}[{{interval}}]'
"#,
            members.join(", ")
        );
        let p = Policy::from_toml(&text, std::path::Path::new("p.toml"), None).unwrap();
        let t0: Timestamp = "2026-01-05T00:00:00Z".parse().unwrap();
        let mut s = RolloutState::started(&p, t0);
        s.intent = Some(Intent::Rollback {
            reason: "bad".into(),
        });
        let rolled = decide(&p, &s, &empty(t0), t0);
        let e = &for_decision(&p, &s, &rolled, None, None)[0];
        assert_eq!(e.kind, EventKind::Rollback);
        let who = "12 % of users (random cohort) + subset beta (250 users)";
        assert_eq!(e.fields["users_moved_back"], who);
        assert!(
            e.description
                .contains(&format!("{who} moved back to blue.")),
            "{}",
            e.description
        );
        // Weighted policies say nothing of users.
        let w = policy();
        let mut s = RolloutState::started(&w, t0);
        s.intent = Some(Intent::Rollback {
            reason: "bad".into(),
        });
        let rolled = decide(&w, &s, &empty(t0), t0);
        let e = &for_decision(&w, &s, &rolled, None, None)[0];
        assert!(!e.fields.contains_key("users_moved_back"));
        assert!(!e.description.contains("moved back"), "{}", e.description);
    }

    #[test]
    fn rollback_and_promotion_alerts_name_the_stable_and_candidate_colours_and_the_release() {
        let p = policy();
        let t0: Timestamp = "2026-01-05T00:00:00Z".parse().unwrap();
        // Green is stable with release a; release b rolls onto blue.
        let mut s = RolloutState::new(&p);
        s.releases.stable = Colour::Green;
        s.releases.stable_release = Some("a".into());
        s.phase = Phase::Promoted;
        s.weights = Weights {
            blue: 0,
            green: 100,
        };
        s.intent = Some(Intent::Start {
            request: crate::engine::StartRequest {
                to: None,
                release: Some("b".into()),
            },
        });
        let started = decide(&p, &s, &empty(t0), t0);
        assert_eq!(
            started.state.weights,
            Weights {
                blue: 10,
                green: 90
            }
        );
        let mut promote = started.state.clone();
        promote.intent = Some(Intent::Promote);
        let promoted = decide(&p, &promote, &empty(t0), t0);
        let e = &for_decision(&p, &promote, &promoted, None, None)[0];
        assert_eq!(e.kind, EventKind::Promoted);
        assert!(
            e.summary
                .starts_with("greenlight promoted checkout (release b): blue is stable"),
            "{}",
            e.summary
        );
        assert_eq!(e.fields["release"], "b");
        assert_eq!(e.fields["stable"], "blue (b)");
        assert_eq!(e.fields["candidate"], "green (a)");

        let mut roll = started.state.clone();
        roll.intent = Some(Intent::Rollback {
            reason: "bad".into(),
        });
        let rolled = decide(&p, &roll, &empty(t0), t0);
        let e = &for_decision(&p, &roll, &rolled, None, None)[0];
        assert_eq!(e.kind, EventKind::Rollback);
        assert!(
            e.summary.starts_with(
                "greenlight rolled back checkout (release b) at 10 % blue, all traffic to green (stable)"
            ),
            "{}",
            e.summary
        );
        assert_eq!(e.fields["release"], "b");
        assert_eq!(e.fields["stable"], "green (a)");
        assert_eq!(e.fields["weights_after"], "blue=0 green=100");
    }

    #[test]
    fn resuming_resolves_the_pause_and_a_new_rollout_resolves_the_rollback() {
        let p = policy();
        let t0: Timestamp = "2026-01-05T00:00:00Z".parse().unwrap();
        let mut s = RolloutState::started(&p, t0);
        s.intent = Some(Intent::Pause {
            reason: "checking".into(),
        });
        let paused = decide(&p, &s, &empty(t0), t0);
        let fired = for_decision(&p, &s, &paused, None, None);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].kind, EventKind::Paused);
        assert!(!fired[0].resolved);

        let mut s = paused.state.clone();
        s.intent = Some(Intent::Resume);
        let resumed = decide(&p, &s, &empty(t0), t0);
        let resolved = for_decision(&p, &s, &resumed, None, None);
        assert_eq!(resolved.len(), 1);
        assert!(resolved[0].resolved);
        assert_eq!(
            resolved[0].key, fired[0].key,
            "the resolve must match the alert"
        );

        let mut s = resumed.state.clone();
        s.intent = Some(Intent::Rollback {
            reason: "bad".into(),
        });
        let rolled = decide(&p, &s, &empty(t0), t0);
        assert_eq!(rolled.state.phase, Phase::RolledBack);
        let rollback = for_decision(&p, &s, &rolled, None, None);
        assert_eq!(rollback[0].kind, EventKind::Rollback);

        let mut s = rolled.state.clone();
        s.intent = Some(Intent::Start {
            request: Default::default(),
        });
        let t1 = t0 + jiff::SignedDuration::from_hours(1);
        let restarted = decide(&p, &s, &empty(t1), t1);
        let resolved = for_decision(&p, &s, &restarted, None, None);
        assert_eq!(resolved.len(), 1);
        assert!(resolved[0].resolved);
        assert_eq!(resolved[0].key, rollback[0].key);
    }

    fn window(at: Timestamp, n_b: f64, n_g: f64) -> Observation {
        use crate::engine::{CheckData, CheckObservation, Counts, Pair};
        Observation {
            start: at - jiff::SignedDuration::from_mins(1),
            end: at,
            checks: vec![CheckObservation {
                check: "errors".into(),
                data: Ok(CheckData::Errors {
                    counts: Pair {
                        blue: Counts::new(n_b, 0.0),
                        green: Counts::new(n_g, 0.0),
                    },
                }),
            }],
        }
    }

    fn minute(m: i64) -> Timestamp {
        "2026-01-05T00:00:00Z".parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_mins(m)
    }

    #[test]
    fn green_data_missing_pages_critical_once_and_resolves_when_green_reports_again() {
        use crate::alert::Severity;
        use crate::engine::{CheckObservation, DataProblem};
        let p = policy();
        let mut s = RolloutState::started(&p, minute(0));
        let mut fired = Vec::new();
        for m in 1..4 {
            let o = Observation {
                checks: vec![CheckObservation {
                    check: "errors".into(),
                    data: Err(DataProblem::GreenMissing("green requests: no data".into())),
                }],
                ..window(minute(m), 900.0, 100.0)
            };
            let d = decide(&p, &s, &o, minute(m));
            fired.extend(for_decision(&p, &s, &d, None, None));
            s = d.state;
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        let page = &fired[0];
        assert_eq!(page.kind, EventKind::GreenDataMissing);
        assert_eq!(page.severity, Severity::Critical);
        assert!(
            page.summary.contains("stopped reporting metrics"),
            "{}",
            page.summary
        );
        assert!(page
            .summary
            .contains("rolls green back once this has lasted 5m"));
        assert!(page.description.contains("green requests: no data"));
        let d = decide(&p, &s, &window(minute(4), 900.0, 100.0), minute(4));
        let resolved = for_decision(&p, &s, &d, None, None);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert!(resolved[0].resolved);
        assert_eq!(resolved[0].key, page.key);
    }

    #[test]
    fn a_rollback_for_missing_green_data_resolves_the_green_data_page() {
        use crate::engine::{CheckObservation, DataProblem};
        let p = policy();
        let mut s = RolloutState::started(&p, minute(0));
        let mut events = Vec::new();
        for m in 1..12 {
            let o = Observation {
                checks: vec![CheckObservation {
                    check: "errors".into(),
                    data: Err(DataProblem::GreenMissing("green requests: no data".into())),
                }],
                ..window(minute(m), 900.0, 100.0)
            };
            let d = decide(&p, &s, &o, minute(m));
            events.extend(for_decision(&p, &s, &d, None, None));
            let done = d.action == Action::Rollback;
            s = d.state;
            if done {
                break;
            }
        }
        let kinds: Vec<(EventKind, bool)> = events.iter().map(|e| (e.kind, e.resolved)).collect();
        assert_eq!(
            kinds,
            vec![
                (EventKind::GreenDataMissing, false),
                (EventKind::Rollback, false),
                (EventKind::GreenDataMissing, true)
            ]
        );
        assert_eq!(events[0].key, events[2].key);
    }

    #[test]
    fn a_traffic_split_mismatch_alerts_with_both_numbers() {
        let p = policy();
        // 10 % configured; green serves 3 of 1000 requests.
        let mut s = RolloutState::started(&p, minute(0));
        let mut fired = Vec::new();
        for m in 1..8 {
            let d = decide(&p, &s, &window(minute(m), 997.0, 3.0), minute(m));
            fired.extend(for_decision(&p, &s, &d, None, None));
            s = d.state;
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        let e = &fired[0];
        assert_eq!(e.kind, EventKind::TrafficSplitMismatch);
        assert!(
            e.summary
                .contains("receives 0.3 % of requests, configured 10 %"),
            "{}",
            e.summary
        );
        assert_eq!(e.fields["observed_green_percent"], "0.3");
        assert_eq!(e.fields["configured_green_percent"], "10");
        let d = decide(&p, &s, &window(minute(8), 900.0, 100.0), minute(8));
        let resolved = for_decision(&p, &s, &d, None, None);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert!(resolved[0].resolved);
        assert_eq!(resolved[0].key, e.key);
    }
}
