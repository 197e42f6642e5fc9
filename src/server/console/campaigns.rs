//! The console's read-only campaign panel (`/campaigns`): each campaign's status and reason, and
//! where each API the viewer may see stands, wave by wave, as the leader last planned them.

use std::fmt::Write;

use super::auth::Identity;
use super::pages::{esc, page};
use crate::server::CampaignView;

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

/// The panel: one section per campaign (only the viewer's APIs in `views`).
pub(super) fn campaigns_page(who: &Identity, csrf: Option<&str>, views: &[CampaignView]) -> String {
    let mut main = String::from(r#"<h1>Campaigns</h1><p><a href="/">Rollouts</a></p>"#);
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
        let html = campaigns_page(&who, None, &[view]);
        assert!(html.contains(r#"data-campaign="cni""#), "{html}");
        assert!(html.contains(">stopped</span>"), "{html}");
        assert!(html.contains("a1 &lt;rolled&gt; back."), "{html}");
        assert!(html.contains(r#"<a href="/apis/a2">a2</a>"#), "{html}");
        assert!(html.contains(r#"data-api="a2">waiting</span>"#), "{html}");
        let none = campaigns_page(&who, None, &[]);
        assert!(none.contains("No campaign that you may see."), "{none}");
    }
}
