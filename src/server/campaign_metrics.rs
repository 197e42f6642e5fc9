//! The `greenlight_campaign_*` series: each campaign's status, wave and APIs per state, and the
//! starts it wrote. Labels: the campaign's name (one per file) and fixed sets of values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::campaign_view::CampaignView;
use crate::campaign::CampaignStatus;

pub const CAMPAIGN_STATUS: &str = "greenlight_campaign_status";
pub const CAMPAIGN_WAVE: &str = "greenlight_campaign_wave";
pub const CAMPAIGN_APIS: &str = "greenlight_campaign_apis";
pub const CAMPAIGN_STARTS_TOTAL: &str = "greenlight_campaign_starts_total";

/// The states an API of a campaign is counted in.
const API_STATES: [&str; 5] = [
    "waiting",
    "running",
    "promoted",
    "already_promoted",
    "skipped",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CampaignLabels {
    campaign: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    campaign: String,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    campaign: String,
    state: &'static str,
}

#[derive(Debug, Default)]
pub(super) struct CampaignMetrics {
    status: Family<StatusLabels, Gauge>,
    wave: Family<CampaignLabels, Gauge>,
    apis: Family<StateLabels, Gauge>,
    starts: Family<CampaignLabels, Counter>,
}

impl CampaignMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            CAMPAIGN_STATUS,
            "Campaign status (idle, running, paused, stopped, finished): 1 for the current one, 0 for the others",
            self.status.clone(),
        );
        r.register(
            CAMPAIGN_WAVE,
            "The wave a campaign works on, 1-based (0 before its start)",
            self.wave.clone(),
        );
        r.register(
            CAMPAIGN_APIS,
            "APIs of a campaign per state (waiting, running, promoted, already_promoted, skipped)",
            self.apis.clone(),
        );
        r.register(
            CAMPAIGN_STARTS_TOTAL
                .strip_suffix("_total")
                .unwrap_or(CAMPAIGN_STARTS_TOTAL),
            "Rollouts a campaign started",
            self.starts.clone(),
        );
    }

    pub(super) fn set(&self, view: &CampaignView) {
        for status in CampaignStatus::ALL {
            self.status
                .get_or_create(&StatusLabels {
                    campaign: view.name.clone(),
                    status: status.as_str(),
                })
                .set(i64::from(status == view.status));
        }
        self.wave
            .get_or_create(&CampaignLabels {
                campaign: view.name.clone(),
            })
            .set(i64::try_from(view.wave).unwrap_or(i64::MAX));
        for state in API_STATES {
            self.apis
                .get_or_create(&StateLabels {
                    campaign: view.name.clone(),
                    state,
                })
                .set(i64::try_from(view.count(state)).unwrap_or(i64::MAX));
        }
    }

    pub(super) fn started(&self, campaign: &str) {
        self.starts
            .get_or_create(&CampaignLabels {
                campaign: campaign.to_string(),
            })
            .inc();
    }
}
