//! A campaign as `status`, `/api/v1/campaigns` and the console show it: its status, its waves
//! and where each API stands. Built from the campaign file and its stored state only.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::campaign::{CampaignState, CampaignStatus};
use crate::policy::{Campaign, OnRollback};

/// One API of a campaign: `waiting`, `running`, `promoted`, `already_promoted` or `skipped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignApiView {
    pub api: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveView {
    pub name: String,
    pub apis: Vec<CampaignApiView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignView {
    pub name: String,
    pub status: CampaignStatus,
    pub reason: Option<String>,
    /// The wave being worked on, 1-based (0 before the start).
    pub wave: usize,
    pub max_concurrent: usize,
    pub on_rollback: OnRollback,
    pub started_at: Option<Timestamp>,
    pub started_by: Option<String>,
    /// A pending operator request (start, pause, resume, stop).
    pub intent: Option<String>,
    pub waves: Vec<WaveView>,
    /// The ModifyIndex of the stored state (0: never written).
    pub revision: u64,
}

impl CampaignView {
    pub fn new(
        campaign: &Campaign,
        waves: &[Vec<String>],
        state: &CampaignState,
        index: u64,
    ) -> CampaignView {
        let waves = campaign
            .waves
            .iter()
            .zip(waves)
            .map(|(w, apis)| WaveView {
                name: w.name.clone(),
                apis: apis
                    .iter()
                    .map(|api| CampaignApiView {
                        api: api.clone(),
                        state: match state.apis.get(api) {
                            None => "waiting".into(),
                            Some(s) => s.outcome.map(|o| o.as_str()).unwrap_or("running").into(),
                        },
                    })
                    .collect(),
            })
            .collect();
        CampaignView {
            name: campaign.name.clone(),
            status: state.status,
            reason: state.reason.clone(),
            wave: if state.status == CampaignStatus::Idle {
                0
            } else {
                (state.wave + 1).min(campaign.waves.len())
            },
            max_concurrent: campaign.max_concurrent,
            on_rollback: campaign.on_rollback,
            started_at: state.started_at,
            started_by: state.started_by.clone(),
            intent: state.intent.map(|i| i.as_str().to_string()),
            waves,
            revision: index,
        }
    }

    /// Counts of the campaign's APIs per state.
    pub fn count(&self, state: &str) -> usize {
        self.waves
            .iter()
            .flat_map(|w| &w.apis)
            .filter(|a| a.state == state)
            .count()
    }

    /// The view with only the APIs in `visible` (a campaign none of whose APIs is visible is
    /// `None`).
    pub fn restricted(&self, visible: &BTreeSet<String>) -> Option<CampaignView> {
        let mut v = self.clone();
        for w in &mut v.waves {
            w.apis.retain(|a| visible.contains(&a.api));
        }
        v.waves.iter().any(|w| !w.apis.is_empty()).then_some(v)
    }

    /// One line for `greenlight status`.
    pub fn line(&self) -> String {
        let total: usize = self.waves.iter().map(|w| w.apis.len()).sum();
        let mut line = format!(
            "campaign {}: {} wave {}/{} promoted={} running={} skipped={} waiting={} of {total}",
            self.name,
            self.status.as_str(),
            self.wave,
            self.waves.len(),
            self.count("promoted") + self.count("already_promoted"),
            self.count("running"),
            self.count("skipped"),
            self.count("waiting"),
        );
        if let Some(r) = &self.reason {
            line.push_str(&format!(" ({r})"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jiff::Timestamp;

    use super::*;
    use crate::campaign::{ApiOutcome, StartedApi};

    fn campaign() -> (Campaign, Vec<Vec<String>>) {
        let text = "name = \"cni\"\nmax_concurrent = 2\n\
                    [[wave]]\nname = \"one\"\napis = [\"a1\", \"a2\", \"a3\"]\n\
                    [[wave]]\nname = \"two\"\napis = [\"b1\"]\n";
        let c = Campaign::from_toml(text, Path::new("c.toml"), None).unwrap();
        let waves = vec![
            vec!["a1".to_string(), "a2".into(), "a3".into()],
            vec!["b1".to_string()],
        ];
        (c, waves)
    }

    fn started(outcome: Option<ApiOutcome>) -> StartedApi {
        StartedApi {
            wave: 0,
            at: Timestamp::UNIX_EPOCH,
            previous_rollout: None,
            outcome,
        }
    }

    #[test]
    fn each_api_shows_where_it_stands_and_status_prints_one_line() {
        let (c, waves) = campaign();
        let mut s = CampaignState::new("cni");
        assert_eq!(
            CampaignView::new(&c, &waves, &s, 0).line(),
            "campaign cni: idle wave 0/2 promoted=0 running=0 skipped=0 waiting=4 of 4"
        );
        s.status = CampaignStatus::Stopped;
        s.reason = Some("a2 rolled back.".into());
        s.apis
            .insert("a1".into(), started(Some(ApiOutcome::AlreadyPromoted)));
        s.apis.insert("a2".into(), started(None));
        s.apis
            .insert("a3".into(), started(Some(ApiOutcome::Skipped)));
        let v = CampaignView::new(&c, &waves, &s, 7);
        let states: Vec<&str> = v.waves[0].apis.iter().map(|a| a.state.as_str()).collect();
        assert_eq!(states, ["already_promoted", "running", "skipped"]);
        assert_eq!(v.waves[1].apis[0].state, "waiting");
        assert_eq!(v.wave, 1);
        assert_eq!(v.revision, 7);
        assert_eq!(
            v.line(),
            "campaign cni: stopped wave 1/2 promoted=1 running=1 skipped=1 waiting=1 of 4 \
             (a2 rolled back.)"
        );
    }

    #[test]
    fn a_caller_sees_only_the_apis_it_may_view() {
        let (c, waves) = campaign();
        let v = CampaignView::new(&c, &waves, &CampaignState::new("cni"), 0);
        let only_b1 = v.restricted(&BTreeSet::from(["b1".to_string()])).unwrap();
        assert!(only_b1.waves[0].apis.is_empty());
        assert_eq!(only_b1.waves[1].apis[0].api, "b1");
        assert!(v
            .restricted(&BTreeSet::from(["other".to_string()]))
            .is_none());
    }
}
