//! Migration campaigns: the stored state of a campaign and the pure [`plan`] that, from a
//! campaign file, its state and the phases of its APIs' rollouts, decides what happens next
//! (start an API, a wave done, the campaign stopped or finished). No I/O: the daemon runs it as
//! the leader, writes the state by compare-and-set and starts APIs through the operator's start
//! intent.

mod plan;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use plan::{plan, ApiView, CampaignAction, Plan};

/// Where a campaign is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    /// Never started: waits for `greenlight campaign start`.
    Idle,
    /// Starting APIs as slots free up.
    Running,
    /// Paused by an operator: no API is started (running rollouts go on).
    Paused,
    /// Stopped by an operator or by a rollback (`on_rollback = "stop"`).
    Stopped,
    /// Every API of every wave is done.
    Finished,
}

impl CampaignStatus {
    pub const ALL: [CampaignStatus; 5] = [
        CampaignStatus::Idle,
        CampaignStatus::Running,
        CampaignStatus::Paused,
        CampaignStatus::Stopped,
        CampaignStatus::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Idle => "idle",
            CampaignStatus::Running => "running",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Stopped => "stopped",
            CampaignStatus::Finished => "finished",
        }
    }
}

/// An operator's request, written by `greenlight campaign start|pause|resume|stop` and obeyed
/// by the leader's next plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignIntent {
    /// Start (or start afresh after it stopped or finished).
    Start,
    Pause,
    /// Continue a paused campaign, or a stopped one (an API whose rollback stopped it then
    /// counts as skipped).
    Resume,
    Stop,
}

impl CampaignIntent {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignIntent::Start => "start",
            CampaignIntent::Pause => "pause",
            CampaignIntent::Resume => "resume",
            CampaignIntent::Stop => "stop",
        }
    }
}

/// How an API of the campaign ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiOutcome {
    /// Green reached 100 %.
    Promoted,
    /// Already at 100 % when its turn came; not started again.
    AlreadyPromoted,
    /// Rolled back; the campaign went on without it (`on_rollback = "skip"`, or a resume after
    /// a stop).
    Skipped,
}

impl ApiOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiOutcome::Promoted => "promoted",
            ApiOutcome::AlreadyPromoted => "already_promoted",
            ApiOutcome::Skipped => "skipped",
        }
    }
}

/// An API the campaign started (or adopted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedApi {
    /// Index of its wave.
    pub wave: usize,
    pub at: Timestamp,
    /// The rollout's `rollout_started_at` before the campaign started it: a different value
    /// means the start landed (a new rollout began), so its outcome is this campaign's.
    pub previous_rollout: Option<Timestamp>,
    /// Set once it is done.
    #[serde(default)]
    pub outcome: Option<ApiOutcome>,
}

/// The stored state of one campaign (`<prefix>/campaign/<name>` in Consul KV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignState {
    pub name: String,
    pub status: CampaignStatus,
    /// Why it stopped (or paused), for `status`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The wave whose APIs are being started (index; equal to the number of waves once
    /// finished).
    pub wave: usize,
    /// When the current run of the campaign started (identifies its alerts).
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub started_by: Option<String>,
    /// The APIs started (or found done) in this run, by name.
    #[serde(default)]
    pub apis: BTreeMap<String, StartedApi>,
    /// The pending operator request and who made it.
    #[serde(default)]
    pub intent: Option<CampaignIntent>,
    #[serde(default)]
    pub intent_by: Option<String>,
    /// Plans that changed the state; increases by one per change.
    pub revision: u64,
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
}

impl CampaignState {
    /// The state of a campaign never started.
    pub fn new(name: &str) -> CampaignState {
        CampaignState {
            name: name.to_string(),
            status: CampaignStatus::Idle,
            reason: None,
            wave: 0,
            started_at: None,
            started_by: None,
            apis: BTreeMap::new(),
            intent: None,
            intent_by: None,
            revision: 0,
            updated_at: None,
        }
    }

    /// APIs started and not done yet.
    pub fn running(&self) -> impl Iterator<Item = (&String, &StartedApi)> {
        self.apis.iter().filter(|(_, a)| a.outcome.is_none())
    }

    /// APIs that ended with `outcome`.
    pub fn count(&self, outcome: ApiOutcome) -> usize {
        self.apis
            .values()
            .filter(|a| a.outcome == Some(outcome))
            .count()
    }
}
