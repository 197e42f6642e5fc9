//! The console's read-only campaign panel (`/campaigns`): each campaign's status and reason, and
//! where each API the viewer may see stands, wave by wave, as the leader last planned them.

use std::fmt::Write;

use super::auth::Identity;
use super::pages::{esc, page};
use crate::server::{BreakerView, CampaignView};

/// The badge class of an API's state in a campaign (the rollout phase colours).
fn state_class(state: &str) -> &'static str {
    match state {
        "running" => "phase-progressing",
        "promoted" | "already_promoted" => "phase-promoted",
        "skipped" => "phase-rolled_back",
        _ => "phase-pending",
    }
}

/// The badge class of a campaign's status.
fn status_class(view: &CampaignView) -> &'static str {
    match view.status.as_str() {
        "running" => "phase-progressing",
        "paused" => "phase-paused",
        "finished" => "phase-promoted",
        "stopped" => "phase-rolled_back",
        _ => "phase-pending",
    }
}

/// The panel: the cluster breakers, then one section per campaign (only the viewer's APIs in
/// `views` and in the breakers' trips).
pub(super) fn campaigns_page(
    who: &Identity,
    csrf: Option<&str>,
    views: &[CampaignView],
    breakers: &[BreakerView],
) -> String {
    let mut main = String::from(r#"<h1>Campaigns</h1><p><a href="/">Rollouts</a></p>"#);
    if !breakers.is_empty() {
        main.push_str(r#"<h2>Cluster breakers</h2><table class="breakers"><thead><tr><th>Cluster</th><th>Status</th><th>Evidence</th></tr></thead><tbody>"#);
        for b in breakers {
            let (class, status) = match &b.tripped {
                Some(_) => ("phase-rolled_back", "tripped"),
                None => ("phase-promoted", "closed"),
            };
            let detail = match &b.tripped {
                Some(t) => format!(
                    "tripped at {}: {}; rollouts onto it {}{}",
                    t.at,
                    t.reason,
                    if b.on_trip == "rollback" {
                        "roll back"
                    } else {
                        "hold"
                    },
                    if t.apis.is_empty() && t.more_apis == 0 {
                        String::new()
                    } else {
                        format!(" (APIs: {})", t.apis_text())
                    }
                ),
                None => b.line(),
            };
            let _ = write!(
                main,
                r#"<tr data-cluster="{cluster}"><td>{cluster}</td><td><span class="phase {class}">{status}</span></td><td>{detail}</td></tr>"#,
                cluster = esc(&b.cluster),
                detail = esc(&detail),
            );
        }
        main.push_str("</tbody></table>");
    }
    if views.is_empty() {
        main.push_str(r#"<p class="muted">No campaign that you may see.</p>"#);
    }
    for v in views {
        let name = esc(&v.name);
        let _ = write!(
            main,
            r#"<section class="campaign" data-campaign="{name}"><h2>{name} <span class="phase {class}">{status}</span></h2><p>wave {wave} of {waves} · at most {cap} at once · on rollback: {rule}{reason}</p><table class="apis"><thead><tr><th>Wave</th><th>APIs</th></tr></thead><tbody>"#,
            class = status_class(v),
            status = v.status.as_str(),
            wave = v.wave,
            waves = v.waves.len(),
            cap = v.max_concurrent,
            rule = match v.on_rollback {
                crate::policy::OnRollback::Stop => "stop",
                crate::policy::OnRollback::Skip => "skip",
            },
            reason = v
                .reason
                .as_deref()
                .map(|r| format!(r#" · <span class="reason">{}</span>"#, esc(r)))
                .unwrap_or_default(),
        );
        for (i, w) in v.waves.iter().enumerate() {
            let apis: Vec<String> = w
                .apis
                .iter()
                .map(|a| {
                    format!(
                        r#"<a href="/apis/{api}">{api}</a> <span class="phase {class}" data-api="{api}">{state}</span>"#,
                        api = esc(&a.api),
                        class = state_class(&a.state),
                        state = esc(&a.state.replace('_', " ")),
                    )
                })
                .collect();
            let _ = write!(
                main,
                "<tr><td>{} ({})</td><td>{}</td></tr>",
                i + 1,
                esc(&w.name),
                apis.join(" ")
            );
        }
        main.push_str("</tbody></table></section>");
    }
    page("Campaigns", Some(who), csrf, &main)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::campaign::{CampaignState, CampaignStatus};
    use crate::policy::Campaign;

    #[test]
    fn the_panel_shows_each_campaign_its_reason_and_where_each_api_stands() {
        let text = "name = \"cni\"\napis = [\"a1\", \"a2\"]\n";
        let c = Campaign::from_toml(text, Path::new("c.toml"), None).unwrap();
        let mut s = CampaignState::new("cni");
        s.status = CampaignStatus::Stopped;
        s.reason = Some("a1 <rolled> back.".into());
        let view = CampaignView::new(&c, &[vec!["a1".into(), "a2".into()]], &s, 3);
        let who = Identity {
            user: "anonymous".into(),
            groups: Vec::new(),
            via: super::super::auth::Via::Anonymous,
        };
        let html = campaigns_page(&who, None, &[view], &[]);
        assert!(html.contains(r#"data-campaign="cni""#), "{html}");
        assert!(html.contains(">stopped</span>"), "{html}");
        assert!(html.contains("a1 &lt;rolled&gt; back."), "{html}");
        assert!(html.contains(r#"<a href="/apis/a2">a2</a>"#), "{html}");
        assert!(html.contains(r#"data-api="a2">waiting</span>"#), "{html}");
        let none = campaigns_page(&who, None, &[], &[]);
        assert!(none.contains("No campaign that you may see."), "{none}");
        assert!(!none.contains("Cluster breakers"), "{none}");
        let mut b = crate::engine::breaker::BreakerState::new("cilium");
        b.tripped = Some(crate::engine::breaker::TripRecord {
            at: "2026-01-15T11:00:00Z".parse().unwrap(),
            reason: "3 rollbacks within 1h".into(),
            apis: vec!["a1".into()],
            more_apis: 0,
            log_e: 0.0,
        });
        let view = BreakerView::new(&b, &Default::default());
        let html = campaigns_page(&who, None, &[], &[view]);
        assert!(html.contains(r#"<tr data-cluster="cilium">"#), "{html}");
        assert!(html.contains(">tripped</span>"), "{html}");
        assert!(
            html.contains("3 rollbacks within 1h; rollouts onto it hold (APIs: a1)"),
            "{html}"
        );
    }
}
