//! Per-API policies and the daemon configuration: typed, validated values.
//!
//! Files are parsed into raw serde types (`raw`), then validated into the types below; only the
//! validated types travel through the rest of the program. Every problem found in a file is
//! reported at once, each as `file:line:col: message` (see [`PolicyError`]).

mod approval;
pub mod campaign;
mod checks;
pub mod cluster;
pub mod cohort;
mod config;
mod config_breaker;
mod config_console;
mod config_fields;
mod config_raw;
#[cfg(test)]
mod fixture;
mod labels;
pub mod limits;
mod load;
mod located;
mod query;
mod raw;
mod read;
mod secret;
pub mod sticky;
mod validate;
mod values;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use campaign::{load_campaigns, Campaign, CampaignReport, OnRollback};
pub use cluster::Clusters;
pub use cohort::{Cohort, Side, Sides};
pub use config::{
    AlertChannel, AlertChannelKind, Config, ConsulConfig, HaproxyConfig, HaproxyNode, MetricsAuth,
    MetricsBackend, MetricsConfig, SyncConfig,
};
pub use config_breaker::{BreakerSettings, OnTrip};
pub use config_console::{ConsoleConfig, IpNet, ProxyConfig, TokenConfig, TokenHash};
pub use load::{load_dir, load_file, load_paths, load_paths_in, LoadReport};
pub use read::MAX_FILE_BYTES;
pub use secret::{Secret, SecretError};
pub use sticky::Sticky;

/// What a policy is checked against besides itself: what the daemon config declares.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyContext<'a> {
    /// Alert channel names; every name a policy routes to must be one. `None`: not checked.
    pub channels: Option<&'a [String]>,
    /// greenlight's own Consul prefix (`consul.prefix`); weight keys must lie outside it, or
    /// greenlight would write weights over its own state. `None`: not checked.
    pub consul_prefix: Option<&'a str>,
}

/// One validated per-API policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// API name; unique across all loaded policies. Used in Consul keys, alerts and metrics.
    pub api: String,
    /// File this policy was read from (for messages); `None` when built in code.
    pub source: Option<PathBuf>,
    /// Evaluation period; successive windows are disjoint and contiguous.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Green's share of traffic per step, percent, strictly increasing in (0, 100], ending at 100.
    pub steps: Vec<f64>,
    /// Minimum time spent at a step before advancing.
    #[serde(with = "humantime_serde")]
    pub min_step_duration: Duration,
    /// Minimum number of green requests seen at a step (outside warm-up) before advancing.
    pub min_green_requests_per_step: u64,
    /// After this long at one step, `on_max_step_duration` applies. `None`: never.
    #[serde(with = "humantime_serde")]
    pub max_step_duration: Option<Duration>,
    /// What to do once `max_step_duration` has passed without advance evidence.
    pub on_max_step_duration: MaxStepAction,
    /// The watch after the last step; `None`: promoted at the last step.
    pub bake: Option<Bake>,
    /// Where a start without a release id reads the candidate's.
    pub release_query: Option<ReleaseQuery>,
    /// Steps whose share is below this percentage are probe steps: green advances from them once
    /// the minimum dwell and request count are met and no rollback stream shows evidence against
    /// it (E < 10), without waiting for positive evidence. `None`: every step needs evidence.
    pub advance_on_dwell_below: Option<f64>,
    /// α: bound on the probability of ever rolling back a healthy canary during the rollout.
    /// Split evenly (Bonferroni) across the statistical rollback streams.
    pub false_rollback_rate: f64,
    /// Error level of the advance (non-inferiority) evidence.
    pub false_advance_rate: f64,
    /// Intervals discarded after each weight change.
    pub warmup_intervals: u32,
    /// Start the rollout automatically (true) or wait for `greenlight start` (false).
    pub auto_start: bool,
    /// Alert after metrics have been missing or unusable for this long (weights stay frozen).
    #[serde(with = "humantime_serde")]
    pub no_data_alert_after: Duration,
    /// Alert when no step progress was made for this long.
    #[serde(with = "humantime_serde")]
    pub stuck_alert_after: Duration,
    /// Where the traffic split lives.
    pub traffic: Traffic,
    /// Optional progression windows; outside them greenlight never advances (rollback stays on).
    pub schedule: Option<Schedule>,
    /// The checks, in file order. At least one statistical check (error_rate or latency).
    pub checks: Vec<Check>,
    /// Alert channel names (from the daemon config) that receive this API's events.
    pub alerts: Vec<String>,
    /// Per-event channel lists (event kind, e.g. `rollback`, → channels), overriding `alerts`.
    pub alert_routes: std::collections::BTreeMap<String, Vec<String>>,
    /// Plausibility bound and what to do when green's data are missing.
    pub data_quality: DataQuality,
    /// Which groups may see, steer and approve this API in the console.
    pub access: Access,
    /// Steps that wait for a human's approval (`approval_before`, …).
    pub approval: ApprovalPolicy,
    /// `[labels]`: key → value pairs (e.g. `team = "payments"`), for campaigns to select by.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The cluster each colour runs on (`clusters`, `green_cluster`): the cluster breaker pools
    /// the rollouts onto one cluster. Empty: not pooled.
    pub clusters: Clusters,
}

/// The console's permissions on one API, by group (deny by default: a group named nowhere sees
/// nothing; the config's `console.admin_groups` see and do everything).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Access {
    /// May see the API and act on it (start, pause, resume, rollback, promote, approve).
    pub owners: Vec<String>,
    /// May see it, read-only.
    pub viewers: Vec<String>,
    /// May see it and approve its gates.
    pub approvers: Vec<String>,
}

/// Approval gates of a policy (see README, "Approval gates").
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ApprovalPolicy {
    /// Indices of the steps (never the first) that need a human's approval before the rollout
    /// enters them; sorted, distinct. Written as percent values of the steps.
    pub before_steps: Vec<usize>,
    /// How long a gate waits before `on_timeout` applies. `None`: it waits for ever.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// What happens once `timeout` has passed without an approval.
    pub on_timeout: ApprovalTimeoutAction,
    /// Refuse an approval from whoever started the rollout.
    pub approver_must_differ: bool,
}

/// What a gate does once its `approval_timeout` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalTimeoutAction {
    /// Keep waiting at the step (an approval still advances it).
    #[default]
    Hold,
    /// Send green back to 0 %.
    Rollback,
}

impl ApprovalPolicy {
    /// Whether entering step `index` needs an approval.
    pub fn gates(&self, index: usize) -> bool {
        self.before_steps.contains(&index)
    }
}

/// Data-quality rules of a policy (see README, "How it decides").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataQuality {
    /// Largest plausible request rate of one colour, per second: a window whose count exceeds
    /// it times the window length is out of range (hold). Default 10 000 000.
    pub max_requests_per_second: f64,
    /// What to do once green's data have been missing (while blue's are present) for
    /// `green_data_missing_for`. Default: roll back.
    pub on_green_data_missing: GreenMissingAction,
    /// How long green's data may be missing, blue's present, before `on_green_data_missing`.
    #[serde(with = "humantime_serde")]
    pub green_data_missing_for: Duration,
    /// Compare the observed green share of requests with the configured weights. Default true;
    /// off where the counted requests are not the ones HAProxy splits. `replay` turns it off:
    /// history carries the split of its own time.
    pub check_traffic_split: bool,
}

impl Default for DataQuality {
    fn default() -> Self {
        DataQuality {
            max_requests_per_second: 1e7,
            on_green_data_missing: GreenMissingAction::Rollback,
            green_data_missing_for: Duration::from_secs(300),
            check_traffic_split: true,
        }
    }
}

/// What to do when green stops reporting while blue still does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GreenMissingAction {
    /// Keep the weights (the critical alert has been raised).
    Hold,
    /// Send green back to 0 %.
    Rollback,
}

/// Where the candidate's release id is read when a start does not give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseQuery {
    /// PromQL with `{color}`; evaluated for the candidate's colour.
    pub query: String,
    /// The answer's label holding the release id.
    pub label: String,
}

/// The watch after the last step (`bake`, `bake_on_breach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bake {
    /// How long the candidate serves all traffic under watch before it becomes stable.
    pub duration: Duration,
    pub on_breach: BakeBreach,
}

/// What a breach during the bake does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BakeBreach {
    /// The old stable colour is kept warm: all traffic goes back to it (a rollback).
    Rollback,
    /// It is not: a critical alert, and the bake goes on.
    Alert,
}

/// Policy for a step that outlives `max_step_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxStepAction {
    /// Advance on absence of evidence against green (rollback streams all below 10).
    Advance,
    /// Keep holding (and alert as stuck after `stuck_alert_after`).
    Hold,
}

/// Where the two weights live and their scale.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Traffic {
    pub target: TrafficTarget,
    /// Sum of blue and green weights (HAProxy weights are 0–256). Default 100.
    pub total_weight: u32,
    /// With [`TrafficTarget::ConsulKeys`]: the HAProxy servers `greenlight sync` mirrors the
    /// keys to. `None` otherwise.
    pub haproxy_backend: Option<HaproxyServers>,
    /// `mode = "sticky"`: per-user buckets instead of weighted balancing.
    pub sticky: Option<Sticky>,
}

impl Traffic {
    /// The HAProxy backend and servers the split is applied to (directly or by `sync`).
    pub fn haproxy_servers(&self) -> Option<HaproxyServers> {
        match &self.target {
            TrafficTarget::Haproxy {
                backend,
                blue,
                green,
            } => Some(HaproxyServers {
                backend: backend.clone(),
                blue: blue.clone(),
                green: green.clone(),
            }),
            TrafficTarget::ConsulKeys { .. } => self.haproxy_backend.clone(),
        }
    }
}

/// One backend's blue and green servers in HAProxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaproxyServers {
    pub backend: String,
    pub blue: String,
    pub green: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficTarget {
    /// Two Consul KV keys holding the integer weights (pushed to HAProxy by `greenlight sync`).
    ConsulKeys { blue: String, green: String },
    /// HAProxy Runtime API directly; servers in one backend, on every configured node.
    Haproxy {
        backend: String,
        blue: String,
        green: String,
    },
}

/// One of the two copies of an API. Which one is stable (serves all traffic at rest) and which
/// one is the candidate is the rollout's business (`RolloutState::stable`), not the colour's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Colour {
    #[default]
    Blue,
    Green,
}

impl Colour {
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }

    /// `Blue` or `Green`, to begin a sentence.
    pub fn capitalised(self) -> &'static str {
        match self {
            Colour::Blue => "Blue",
            Colour::Green => "Green",
        }
    }

    /// The other colour.
    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }
}

impl std::fmt::Display for Colour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Colour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Colour::Blue),
            "green" => Ok(Colour::Green),
            other => Err(format!("unknown colour `{other}` (expected blue or green)")),
        }
    }
}

/// What an observation needs to know of the rollout: the stable colour, and whether the stable
/// copy's data may be missing (during the bake it serves nothing and may be scaled down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    pub stable: Colour,
    pub stable_optional: bool,
}

impl Roles {
    /// `stable` is stable and its data are needed.
    pub fn stable(stable: Colour) -> Roles {
        Roles {
            stable,
            stable_optional: false,
        }
    }
}

/// Blue and green weights as written to the traffic target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Weights {
    pub blue: u32,
    pub green: u32,
}

impl Weights {
    /// The weight of `colour`.
    pub fn of(&self, colour: Colour) -> u32 {
        match colour {
            Colour::Blue => self.blue,
            Colour::Green => self.green,
        }
    }

    /// `colour`'s share of the total weight in percent (0 when both are 0).
    pub fn percent_of(&self, colour: Colour) -> f64 {
        let total = f64::from(self.blue) + f64::from(self.green);
        if total > 0.0 {
            100.0 * f64::from(self.of(colour)) / total
        } else {
            0.0
        }
    }
}

impl Traffic {
    /// Weights for green at `percent` of the traffic (0 = all blue).
    pub fn weights_for(&self, percent: f64) -> Weights {
        self.weights_toward(Colour::Green, percent)
    }

    /// Weights giving `candidate` `percent` of the traffic and the other colour the rest.
    pub fn weights_toward(&self, candidate: Colour, percent: f64) -> Weights {
        let share = ((self.total_weight as f64) * percent / 100.0).round() as u32;
        let share = share.min(self.total_weight);
        let rest = self.total_weight - share;
        match candidate {
            Colour::Green => Weights {
                blue: rest,
                green: share,
            },
            Colour::Blue => Weights {
                blue: share,
                green: rest,
            },
        }
    }
}

/// Daily progression windows in one time zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    /// IANA name, e.g. `Europe/Paris`.
    pub timezone: String,
    #[serde(skip)]
    pub tz: jiff::tz::TimeZone,
    pub windows: Vec<TimeWindow>,
}

/// `HH:MM-HH:MM` local time; may wrap midnight (`22:00-06:00`). Minutes since local midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeWindow {
    pub start_minute: u16,
    pub end_minute: u16,
}

impl TimeWindow {
    /// Whether `minute` (since local midnight) lies in the window; start inclusive, end exclusive.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_minute <= self.end_minute {
            minute >= self.start_minute && minute < self.end_minute
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
}

impl Schedule {
    /// Whether progression is allowed at `now`.
    pub fn allows(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned_datetime(self.tz.clone());
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        self.windows.iter().any(|w| w.contains(minute))
    }
}

/// One named check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckKind {
    /// Compare green's error rate with blue's (rollback and advance e-processes).
    ErrorRate {
        /// PromQL: requests in the window for `{color}`.
        requests: String,
        /// PromQL: errors in the window for `{color}`.
        errors: String,
        /// Green may be up to this much worse (relative) before it counts as a regression: r0 = 1 + tolerance.
        tolerance: f64,
        /// Advance evidence: green's error rate is below (1 + advance_tolerance) × blue's.
        advance_tolerance: f64,
        /// Overdispersion φ ≥ 1: each interval's log-likelihood ratio is divided by φ.
        overdispersion: f64,
        /// A rollback also needs at least this many green errors in the rollout so far.
        min_errors: u64,
        /// Optional absolute advance evidence: green's error rate is below this. With it, a
        /// stream's advance e-value is the mean of the non-inferiority and the SLO e-values.
        advance_max_rate: Option<f64>,
        /// Blue's own error rate above this (per window) means an environment problem: hold.
        blue_max_error_rate: Option<f64>,
    },
    /// Compare the share of requests slower than bucket edges (one e-process per edge).
    LatencyHistogram {
        /// PromQL: `sum by (le) (increase(..._bucket{...}[{interval}]))` for `{color}`.
        buckets: String,
        /// Bucket upper bounds (`le` values) to compare at, ascending.
        edges: Vec<f64>,
        tolerance: f64,
        advance_tolerance: f64,
        overdispersion: f64,
        min_errors: u64,
        /// Optional absolute advance evidence: green's share slower than each edge is below this
        /// (useful for edges so far in the tail that non-inferiority never sees enough events).
        advance_max_rate: Option<f64>,
    },
    /// Absolute guard on green alone (Flagger-style); also evaluated for blue to tell an
    /// environment problem (both breach → hold) from a green regression.
    Threshold {
        query: String,
        max: Option<f64>,
        min: Option<f64>,
        /// Consecutive breaching intervals (green only) before it rolls back.
        failures: u32,
        /// A window counts for this guard only when green served at least this many requests in
        /// it (as measured by the policy's first error_rate check; without one, every window
        /// counts): a p99 or an error ratio of a handful of requests is noise. A pinned guard is
        /// not held to it: those requests are the random cohort's, not its own.
        min_green_requests: u64,
        /// Sticky mode: the cohort of green it guards (see [`cohort`]). Default random.
        cohort: Cohort,
    },
}

impl CheckKind {
    /// Number of statistical rollback streams this check contributes to the α split.
    pub fn rollback_streams(&self) -> usize {
        match self {
            CheckKind::ErrorRate { .. } => 1,
            CheckKind::LatencyHistogram { edges, .. } => edges.len(),
            CheckKind::Threshold { .. } => 0,
        }
    }
}

impl Policy {
    /// α for each statistical rollback stream (even split of `false_rollback_rate`).
    pub fn alpha_per_stream(&self) -> f64 {
        let streams: usize = self.checks.iter().map(|c| c.kind.rollback_streams()).sum();
        self.false_rollback_rate / streams.max(1) as f64
    }

    /// α of every stream's advance evidence at one step: `false_advance_rate` split evenly over
    /// the [`Policy::evidence_steps`] (docs/statistics.md §5).
    ///
    /// Each step's advance e-process starts afresh when the step is entered, so the event "an
    /// evidence step is advanced while green is worse there than `advance_tolerance`" is the
    /// union over the evidence steps of "that step's e-process crossed under its null": by
    /// Ville's inequality and the union bound its chance is ≤ Σ_j α/J = α over the rollout.
    /// No split over the streams is needed: an advance needs *every* stream to cross, so when
    /// green is worse on some stream the advance needs that stream to cross, which has chance
    /// ≤ α/J at the step (an intersection–union test, Berger 1982).
    pub fn advance_alpha_per_step(&self) -> f64 {
        self.false_advance_rate / self.evidence_steps().max(1) as f64
    }

    /// The steps an advance leaves on evidence: every step but the last (100 %) that is not a
    /// probe step (probe steps advance on dwell; they are not counted in the advance level).
    pub fn evidence_steps(&self) -> usize {
        (0..self.steps.len().saturating_sub(1))
            .filter(|i| !self.is_probe_step(*i))
            .count()
    }

    /// The channels that receive events of kind `event` (`rollback`, `manual_override`,
    /// `paused`, `metrics_unavailable`, `stuck`, `promoted`, `internal_error`,
    /// `green_data_missing`, `traffic_split_mismatch`, `approval_needed`). `audit` events go
    /// only where `[alert_routes] audit` sends them.
    pub fn alert_channels(&self, event: &str) -> &[String] {
        match self.alert_routes.get(event) {
            Some(routed) => routed,
            None if event == "audit" => &[],
            None => &self.alerts,
        }
    }

    /// Whether step `index` is a probe step (see `advance_on_dwell_below`).
    pub fn is_probe_step(&self, index: usize) -> bool {
        match (self.advance_on_dwell_below, self.steps.get(index)) {
            (Some(below), Some(share)) => *share < below,
            _ => false,
        }
    }

    /// Weights at step `index` (0-based) of a rollout onto green.
    pub fn weights_at(&self, index: usize) -> Weights {
        self.traffic.weights_for(self.steps[index])
    }

    /// Weights at step `index` (0-based) of a rollout onto `candidate`.
    pub fn weights_at_toward(&self, candidate: Colour, index: usize) -> Weights {
        self.traffic.weights_toward(candidate, self.steps[index])
    }
}

/// One problem in a policy or config file, located to `file:line:col` where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no location (e.g. the file cannot be read).
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl std::error::Error for PolicyError {}
