//! The console's HTML, rendered on the server. The live part of each page (`<section
//! id="live">`) is also served alone (`?fragment=1`) for the page's own updates.

use std::fmt::Write;

use jiff::Timestamp;

use super::auth::{Identity, Via};
use super::{allowed, MetricsUi, Visible, BUTTONS};
use crate::audit::{ActionKind, AuditEntry};
use crate::engine::{Action, Phase};
use crate::policy::CheckKind;

/// HTML-escapes text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `3h 12m`, `4m 05s`, `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub(super) fn since(now: Timestamp, t: Timestamp) -> f64 {
    now.duration_since(t).as_secs_f64()
}

fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn phase_badge(phase: Phase) -> String {
    format!(
        r#"<span class="phase phase-{p}">{}</span>"#,
        phase.as_str().replace('_', " "),
        p = phase.as_str()
    )
}

/// A whole page around `main`.
pub(super) fn page(title: &str, who: Option<&Identity>, csrf: Option<&str>, main: &str) -> String {
    let user = match who {
        Some(w) if w.via == Via::Anonymous => {
            r#"<span class="who">read-only (no sign-in configured)</span>"#.to_string()
        }
        Some(w) => {
            // A token session signs out here; a proxy's session belongs to the proxy.
            let signout = match csrf {
                Some(t) if w.via == Via::Session => format!(
                    r#" <form class="signout" method="post" action="/signout"><input type="hidden" name="csrf" value="{}"><button type="submit" id="signout">Sign out</button></form>"#,
                    esc(t)
                ),
                _ => String::new(),
            };
            format!(
                r#"<span class="who">{} <small>{} · via {}</small>{signout}</span>"#,
                esc(&w.user),
                esc(&w.groups.join(", ")),
                w.via.as_str()
            )
        }
        None => String::new(),
    };
    let csrf = csrf
        .map(|t| format!(r#"<meta name="csrf-token" content="{}">"#, esc(t)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">{csrf}<title>{} · greenlight</title><link rel="stylesheet" href="/assets/console.css"><script src="/assets/console.js" defer></script></head><body><header class="top"><a class="brand" href="/">greenlight</a>{user}</header><main>{main}</main></body></html>"#,
        esc(title)
    )
}

/// A page with one message (sign-in required, no such API).
pub fn message_page(title: &str, message: &str) -> String {
    page(
        title,
        None,
        None,
        &format!(
            r#"<h1>{}</h1><p class="notice">{}</p>"#,
            esc(title),
            esc(message)
        ),
    )
}

/// The overview's request.
pub struct Overview<'a> {
    pub who: &'a Identity,
    pub csrf: Option<String>,
    pub team: Option<&'a str>,
    pub phase: Option<&'a str>,
    pub now: Timestamp,
}

/// One overview row (re-exported for the benchmark).
pub type OverviewRow = Visible;

fn teams(v: &Visible) -> Vec<String> {
    v.policy
        .as_ref()
        .map(|p| p.access.owners.clone())
        .unwrap_or_default()
}

/// The overview: every visible API, filtered by team and phase.
pub fn overview_page(p: &Overview<'_>, rows: &[Visible], fragment: bool) -> String {
    let mut live = String::with_capacity(512 + rows.len() * 700);
    let shown: Vec<&Visible> = rows
        .iter()
        .filter(|v| p.team.is_none_or(|t| teams(v).iter().any(|o| o == t)))
        .filter(|v| p.phase.is_none_or(|ph| v.view.phase.as_str() == ph))
        .collect();
    let _ = write!(
        live,
        r#"<section id="live" data-live="overview"><p class="count">{} of {} APIs</p><table class="apis"><thead><tr><th>API</th><th>Team</th><th>Phase</th><th>Step</th><th>Green</th><th>At step for</th><th>Last decision</th><th>Alerts</th></tr></thead><tbody>"#,
        shown.len(),
        rows.len()
    );
    for v in &shown {
        let view = &v.view;
        let api = esc(&view.api);
        let last = view
            .last_decision
            .as_ref()
            .map(|d| {
                format!(
                    r#"<b>{}</b> <span class="muted">{} ago</span><br><span class="reason">{}</span>"#,
                    d.action.as_str(),
                    duration(since(p.now, d.at)),
                    esc(&d.reason)
                )
            })
            .unwrap_or_else(|| r#"<span class="muted">none yet</span>"#.into());
        let mut alerts: Vec<String> = view.open_alerts.iter().map(|a| esc(a)).collect();
        if let Some(i) = &view.intent_pending {
            alerts.push(format!("pending: {}", esc(&intent_text(i))));
        }
        let _ = write!(
            live,
            r#"<tr data-api="{api}" data-phase="{ph}"><td><a href="/apis/{api}">{api}</a></td><td>{team}</td><td>{badge}</td><td>{step} / {steps}</td><td><meter min="0" max="100" value="{g:.1}"></meter> {g:.1} %</td><td>{at}</td><td>{last}</td><td class="alerts">{alerts}</td></tr>"#,
            ph = view.phase.as_str(),
            team = esc(&teams(v).join(", ")),
            badge = phase_badge(view.phase),
            step = view.step + 1,
            steps = view.steps.len(),
            g = view.green_percent,
            at = view
                .since
                .map(|s| duration(since(p.now, s)))
                .unwrap_or_else(|| "—".into()),
            alerts = alerts.join("<br>"),
        );
    }
    live.push_str("</tbody></table></section>");
    if fragment {
        return live;
    }
    let mut all_teams: Vec<String> = rows.iter().flat_map(teams).collect();
    all_teams.sort();
    all_teams.dedup();
    let option = |value: &str, selected: bool| {
        format!(
            r#"<option value="{v}"{s}>{label}</option>"#,
            v = esc(value),
            s = if selected { " selected" } else { "" },
            label = if value.is_empty() {
                "all".into()
            } else {
                esc(value)
            }
        )
    };
    let mut filters = String::from(
        r#"<form class="filters" method="get" action="/"><label>Team <select name="team">"#,
    );
    filters.push_str(&option("", p.team.is_none()));
    for t in &all_teams {
        filters.push_str(&option(t, p.team == Some(t.as_str())));
    }
    filters.push_str(r#"</select></label><label>Phase <select name="phase">"#);
    filters.push_str(&option("", p.phase.is_none()));
    for ph in [
        "pending",
        "progressing",
        "paused",
        "promoted",
        "rolled_back",
    ] {
        filters.push_str(&option(ph, p.phase == Some(ph)));
    }
    filters.push_str(r#"</select></label><noscript><button>Filter</button></noscript></form>"#);
    page(
        "Rollouts",
        Some(p.who),
        p.csrf.as_deref(),
        &format!(r#"<h1>Rollouts</h1><p><a href="/campaigns">Campaigns</a></p>{filters}{live}"#),
    )
}

fn intent_text(i: &crate::engine::Intent) -> String {
    use crate::engine::Intent;
    match i {
        Intent::Start { request } => match (&request.release, request.to) {
            (None, None) => "start".into(),
            (release, to) => format!(
                "start{}{}",
                release
                    .as_deref()
                    .map(|r| format!(" release {r}"))
                    .unwrap_or_default(),
                to.map(|c| format!(" onto {c}")).unwrap_or_default()
            ),
        },
        Intent::Pause { reason } => format!("pause ({reason})"),
        Intent::Resume => "resume".into(),
        Intent::ResumeAdoptLive => "resume keeping the live weights".into(),
        Intent::Rollback { reason } => format!("rollback ({reason})"),
        Intent::Promote => "promote".into(),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

/// The one-API page's request.
pub struct ApiPage<'a> {
    pub who: &'a Identity,
    pub csrf: Option<String>,
    pub visible: &'a Visible,
    pub audit: &'a [AuditEntry],
    pub metrics_ui: Option<&'a MetricsUi>,
    /// Actions can be sent at all (a backend, a signed-in user).
    pub can_act: bool,
    pub now: Timestamp,
}

/// The page of one API.
pub fn api_page(p: &ApiPage<'_>, fragment: bool) -> String {
    let v = &p.visible.view;
    let mut live = String::with_capacity(16 * 1024);
    let _ = write!(
        live,
        r#"<section id="live" data-live="api" data-revision="{}" data-phase="{}">"#,
        v.state_index.map(|i| i.to_string()).unwrap_or_default(),
        v.phase.as_str()
    );
    summary(&mut live, p);
    ladder(&mut live, p);
    super::charts::rollout_charts(&mut live, &p.visible.view);
    timeline(&mut live, p);
    live.push_str("</section>");
    if fragment {
        return live;
    }
    let api = esc(&v.api);
    let mut body = format!(
        r#"<nav class="crumbs"><a href="/">Rollouts</a> / {api}</nav><h1>{api} {}</h1>"#,
        phase_badge(v.phase)
    );
    actions(&mut body, p);
    body.push_str(&live);
    queries(&mut body, p);
    if let Some(policy) = &p.visible.policy {
        let text = serde_json::to_string_pretty(&**policy).unwrap_or_default();
        let _ = write!(
            body,
            r#"<section><h2>Policy as loaded</h2><details><summary>{}</summary><pre class="policy">{}</pre></details></section>"#,
            esc(&policy
                .source
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_else(|| "built in".into())),
            esc(&text)
        );
    }
    page(&v.api, Some(p.who), p.csrf.as_deref(), &body)
}

fn summary(out: &mut String, p: &ApiPage<'_>) {
    let v = &p.visible.view;
    let mut cards = vec![
        ("Phase", phase_badge(v.phase)),
        (
            "Step",
            format!(
                "{} of {} ({} %)",
                v.step + 1,
                v.steps.len(),
                v.steps.get(v.step).copied().unwrap_or(0.0)
            ),
        ),
        (
            "Green share",
            format!(
                r#"<meter min="0" max="100" value="{g:.1}"></meter> {g:.1} % <small>blue={} green={}</small>"#,
                v.weights.blue,
                v.weights.green,
                g = v.green_percent
            ),
        ),
        ("Release", esc(&v.releases_text())),
        (
            "Since",
            v.since
                .map(|s| {
                    format!(
                        "{} <small>({} ago)</small>",
                        time(s),
                        duration(since(p.now, s))
                    )
                })
                .unwrap_or_else(|| "—".into()),
        ),
    ];
    if let Some(s) = &v.sticky {
        cards.push((
            "Users on green",
            format!(
                r#"{} <small class="subsets">subsets: {}</small>"#,
                esc(&s.on_green),
                esc(&s.subsets_text())
            ),
        ));
    }
    if let Some(reason) = &v.reason {
        cards.push(("Reason", esc(reason)));
    }
    if let Some(i) = &v.intent_pending {
        cards.push((
            "Pending",
            format!(
                r#"<span class="pending">{}</span> <small>applied at the next evaluation</small>"#,
                esc(&intent_text(i))
            ),
        ));
    }
    if let Some(gate) = &v.awaiting_approval {
        cards.push((
            "Approval",
            format!(
                r#"<span class="pending">waiting for approval to enter step {} ({} %)</span> <small>since {}{}</small>"#,
                gate.step + 1,
                gate.percent,
                time(gate.since),
                match &gate.approved_by {
                    Some(by) => format!("; approved by {}, applied at the next evaluation", esc(by)),
                    None if gate.timed_out => "; the approval timeout has passed".to_string(),
                    None => String::new(),
                }
            ),
        ));
    }
    if !v.open_alerts.is_empty() {
        cards.push((
            "Open alerts",
            v.open_alerts
                .iter()
                .map(|a| esc(a))
                .collect::<Vec<_>>()
                .join("<br>"),
        ));
    }
    if let Some(d) = &v.last_decision {
        cards.push((
            "Last decision",
            format!(
                "<b>{}</b> at {}: {}",
                d.action.as_str(),
                time(d.at),
                esc(&d.reason)
            ),
        ));
    }
    out.push_str(r#"<dl class="cards">"#);
    for (k, val) in cards {
        let _ = write!(out, "<div><dt>{k}</dt><dd>{val}</dd></div>");
    }
    out.push_str("</dl>");
}

/// When each step was last entered, from the history.
fn ladder(out: &mut String, p: &ApiPage<'_>) {
    let v = &p.visible.view;
    out.push_str(r#"<section><h2>Steps</h2><ol class="ladder">"#);
    for (i, pct) in v.steps.iter().enumerate() {
        let entered = v
            .history
            .iter()
            .rev()
            .find(|r| {
                r.step == i && matches!(r.action, Action::Start | Action::Advance | Action::Promote)
            })
            .map(|r| r.at)
            .or_else(|| {
                (i == v.step && v.phase == Phase::Progressing)
                    .then_some(v.since)
                    .flatten()
            });
        let state = if v.phase == Phase::Promoted || i < v.step {
            "done"
        } else if i == v.step && matches!(v.phase, Phase::Progressing | Phase::Paused) {
            "current"
        } else {
            "next"
        };
        let _ = write!(
            out,
            r#"<li class="{state}"><b>{pct} %</b><small>{}</small></li>"#,
            entered
                .map(|t| format!("entered {}", time(t)))
                .unwrap_or_else(|| "not entered".into())
        );
    }
    out.push_str("</ol></section>");
}

/// Decisions and human actions, newest first.
fn timeline(out: &mut String, p: &ApiPage<'_>) {
    let v = &p.visible.view;
    enum Item<'a> {
        Decision(&'a crate::engine::DecisionRecord),
        Human(&'a AuditEntry),
    }
    let mut items: Vec<(Timestamp, Item<'_>)> = v
        .history
        .iter()
        .map(|r| (r.at, Item::Decision(r)))
        .chain(p.audit.iter().map(|a| (a.at, Item::Human(a))))
        .collect();
    items.sort_by_key(|item| std::cmp::Reverse(item.0));
    out.push_str(r#"<section><h2>History</h2><table class="history"><thead><tr><th>When</th><th>Who</th><th>What</th><th>Why</th></tr></thead><tbody>"#);
    for (at, item) in items {
        match item {
            Item::Decision(r) => {
                let _ = write!(
                    out,
                    r#"<tr class="decision action-{a}"><td>{}</td><td>greenlight</td><td><b>{a}</b> <small>step {} · green {}</small></td><td>{}{}</td></tr>"#,
                    time(at),
                    r.step + 1,
                    r.weights.green,
                    esc(&r.reason),
                    r.approved_by
                        .as_ref()
                        .map(|by| format!(
                            r#" <span class="approved">approved by {}</span>"#,
                            esc(by)
                        ))
                        .unwrap_or_default(),
                    a = r.action.as_str()
                );
            }
            Item::Human(a) => {
                let _ = write!(
                    out,
                    r#"<tr class="audit"><td>{}</td><td><b>{}</b> <small>{}</small></td><td><b>{}</b> <small>{}</small></td><td>{}</td></tr>"#,
                    time(at),
                    esc(&a.user),
                    esc(&a.groups.join(", ")),
                    a.action.as_str(),
                    esc(&change(&a.before, &a.after)),
                    esc(&a.reason)
                );
            }
        }
    }
    out.push_str("</tbody></table></section>");
}

/// `paused at step 2 (25 %) → pending pause`: what an action changed.
fn change(before: &crate::audit::StateSummary, after: &crate::audit::StateSummary) -> String {
    let one = |s: &crate::audit::StateSummary| {
        let mut t = format!(
            "{} at step {} ({:.0} %)",
            s.phase.as_str().replace('_', " "),
            s.step + 1,
            s.green_percent
        );
        if let Some(i) = &s.intent {
            t.push_str(&format!(", {} pending", intent_text(i)));
        }
        if let Some(step) = s.awaiting_approval {
            t.push_str(&format!(", waiting for approval of step {}", step + 1));
        }
        t
    };
    format!("{} → {}", one(before), one(after))
}

fn actions(out: &mut String, p: &ApiPage<'_>) {
    let role = p.visible.role;
    let buttons: Vec<ActionKind> = BUTTONS
        .into_iter()
        .filter(|k| p.can_act && allowed(*k, role))
        .collect();
    if buttons.is_empty() {
        let why = if p.who.via == Via::Anonymous {
            "Read-only: no sign-in is configured for this console.".to_string()
        } else if p.can_act {
            format!(
                "Read-only: {} may view this API but not act on it (role {}).",
                p.who.user,
                role.as_str()
            )
        } else {
            "Read-only: actions are not available from this server.".to_string()
        };
        let _ = write!(out, r#"<p class="notice read-only">{}</p>"#, esc(&why));
        return;
    }
    let api = esc(&p.visible.view.api);
    let _ = write!(
        out,
        r#"<section class="actions"><h2>Actions <small>as {} ({})</small></h2><form id="action-form" data-api="{api}"><input name="reason" id="reason" required maxlength="{}" placeholder="Reason (recorded in the audit trail)"><div class="buttons">"#,
        esc(&p.who.user),
        role.as_str(),
        super::MAX_REASON_CHARS
    );
    for k in buttons {
        let confirm = matches!(k, ActionKind::Rollback | ActionKind::Promote);
        let _ = write!(
            out,
            r#"<button type="submit" name="action" value="{a}" class="act act-{a}"{c}>{a}</button>"#,
            a = k.as_str(),
            c = if confirm { r#" data-confirm="1""# } else { "" }
        );
    }
    out.push_str(r#"</div><p id="action-result" role="status"></p></form></section>"#);
}

fn queries(out: &mut String, p: &ApiPage<'_>) {
    let Some(policy) = &p.visible.policy else {
        return;
    };
    out.push_str(r#"<section><h2>Queries</h2><table class="queries"><tbody>"#);
    for check in &policy.checks {
        let templates: Vec<(&str, &String)> = match &check.kind {
            CheckKind::ErrorRate {
                requests, errors, ..
            } => vec![("requests", requests), ("errors", errors)],
            CheckKind::LatencyHistogram { buckets, .. } => vec![("buckets", buckets)],
            CheckKind::Threshold { query, .. } => vec![("value", query)],
            #[allow(unreachable_patterns)]
            _ => vec![],
        };
        let sides = policy.sides(check);
        for (what, t) in templates {
            let mut links = String::new();
            for (color, side) in [("blue", &sides.blue), ("green", &sides.green)] {
                let q = crate::metrics::template::render(t, side, policy.interval, &policy.api);
                if let Some(ui) = p.metrics_ui {
                    let _ = write!(
                        links,
                        r#"<a class="q" href="{}" rel="noreferrer" target="_blank">{color}</a> "#,
                        esc(&ui.link(&q))
                    );
                }
            }
            let _ = write!(
                out,
                r#"<tr><td>{} <small>{what}</small></td><td><code>{}</code></td><td>{links}</td></tr>"#,
                esc(&check.name),
                esc(t)
            );
        }
    }
    out.push_str("</tbody></table></section>");
}
