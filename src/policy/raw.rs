//! Raw serde types of a policy file, as written, with their defaults.
//!
//! Every value that validation may complain about is a [`Spanned`], so each error points at the
//! offending value's `line:col`. Defaults are named functions; a defaulted value carries the
//! empty span `0..0`, and errors about it point at a related explicit value instead. Validation
//! lives in `validate` (policy-wide) and `checks` (`[[check]]` tables).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::located::unspanned;
use super::values::{duration, HumanDuration, Table};

/// A policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    /// API name, `[A-Za-z0-9_-]+`; part of Consul keys, alerts and metric labels. Required.
    pub(super) api: Spanned<String>,
    /// Evaluation period (humantime). Default `"1m"`.
    #[serde(default = "default_interval")]
    pub(super) interval: Spanned<HumanDuration>,
    /// Green's share of traffic per step, percent. Default `[1, 5, 10, 25, 50, 100]`.
    #[serde(default = "default_steps")]
    pub(super) steps: Spanned<Vec<Spanned<f64>>>,
    /// Minimum time at a step before advancing. Default `"10m"`.
    #[serde(default = "default_min_step_duration")]
    pub(super) min_step_duration: Spanned<HumanDuration>,
    /// Minimum green requests at a step (outside warm-up) before advancing. Default 2000.
    #[serde(default = "default_min_green_requests_per_step")]
    pub(super) min_green_requests_per_step: Spanned<i64>,
    /// After this long at one step, `on_max_step_duration` applies. Default: never.
    #[serde(default)]
    pub(super) max_step_duration: Option<Spanned<HumanDuration>>,
    /// `"hold"` or `"advance"` once `max_step_duration` has passed. Default `"hold"`.
    #[serde(default = "default_on_max_step_duration")]
    pub(super) on_max_step_duration: RawMaxStepAction,
    /// PromQL whose answer's `release_label` names the release a colour runs (e.g.
    /// `max by (version) (app_build_info{cluster="{color}"})`): a start without `--release`
    /// takes the candidate's. Default: none.
    #[serde(default)]
    pub(super) release_query: Option<Spanned<String>>,
    /// The label of `release_query`'s answer that holds the release id. Default `"version"`.
    #[serde(default)]
    pub(super) release_label: Option<Spanned<String>>,
    /// After the last step, watch the candidate this long before it becomes stable (phase
    /// `baking`). Default: no bake.
    #[serde(default)]
    pub(super) bake: Option<Spanned<HumanDuration>>,
    /// `"rollback"` (the old stable colour is kept warm: traffic goes back to it) or `"alert"`
    /// (it is not: a critical alert only) on a breach during the bake. Default `"rollback"`.
    #[serde(default)]
    pub(super) bake_on_breach: Option<Spanned<RawBakeBreach>>,
    /// Steps with a share below this percentage advance on dwell alone. Default: none.
    #[serde(default)]
    pub(super) advance_on_dwell_below: Option<Spanned<f64>>,
    /// α: probability of ever rolling back a healthy canary, in (0, 0.5). Default 0.01.
    #[serde(default = "default_false_rollback_rate")]
    pub(super) false_rollback_rate: Spanned<f64>,
    /// Error level of the advance evidence, in (0, 0.5). Default 0.05.
    #[serde(default = "default_false_advance_rate")]
    pub(super) false_advance_rate: Spanned<f64>,
    /// Intervals discarded after each weight change. Default 1.
    #[serde(default = "default_warmup_intervals")]
    pub(super) warmup_intervals: Spanned<i64>,
    /// Start the rollout without `greenlight start`. Default true.
    #[serde(default = "default_auto_start")]
    pub(super) auto_start: bool,
    /// Alert after metrics were missing or unusable this long. Default `"10m"`.
    #[serde(default = "default_no_data_alert_after")]
    pub(super) no_data_alert_after: Spanned<HumanDuration>,
    /// Alert when no step progress was made this long. Default `"3h"`.
    #[serde(default = "default_stuck_alert_after")]
    pub(super) stuck_alert_after: Spanned<HumanDuration>,
    /// Where the traffic split lives. Required.
    pub(super) traffic: Spanned<Table<RawTraffic>>,
    /// Optional progression windows.
    #[serde(default)]
    pub(super) schedule: Option<Spanned<Table<RawSchedule>>>,
    /// `[[check]]` tables, in file order.
    #[serde(default, rename = "check")]
    pub(super) checks: Vec<Spanned<Table<RawCheck>>>,
    /// Alert channel names from the daemon config. Default: none.
    #[serde(default)]
    pub(super) alerts: Vec<Spanned<String>>,
    /// Optional per-event channel lists; an event not listed goes to `alerts`.
    #[serde(default)]
    pub(super) alert_routes: Option<Table<RawAlertRoutes>>,
    /// Largest plausible request rate of one colour, per second. Default 10 000 000.
    #[serde(default)]
    pub(super) max_requests_per_second: Option<Spanned<f64>>,
    /// `"hold"` or `"rollback"` once green's data are missing (blue's present) for
    /// `green_data_missing_for`. Default `"rollback"`.
    #[serde(default)]
    pub(super) on_green_data_missing: Option<RawGreenMissingAction>,
    /// Default `"5m"`.
    #[serde(default)]
    pub(super) green_data_missing_for: Option<Spanned<HumanDuration>>,
    /// Compare green's observed share of requests with its weight. Default true.
    #[serde(default)]
    pub(super) check_traffic_split: Option<bool>,
    /// Groups that may act on this API in the console. Default: none (admins only).
    #[serde(default)]
    pub(super) owners: Vec<Spanned<String>>,
    /// Groups that may see it, read-only. Default: none.
    #[serde(default)]
    pub(super) viewers: Vec<Spanned<String>>,
    /// Groups that may approve its gates (besides the owners). Default: none.
    #[serde(default)]
    pub(super) approvers: Vec<Spanned<String>>,
    /// Steps (percent values of `steps`, never the first) entered only after a human approves.
    /// Default: none.
    #[serde(default)]
    pub(super) approval_before: Option<Spanned<Vec<Spanned<f64>>>>,
    /// How long a gate waits for an approval before `on_approval_timeout`. Default: for ever.
    #[serde(default)]
    pub(super) approval_timeout: Option<Spanned<HumanDuration>>,
    /// `"hold"` or `"rollback"` once `approval_timeout` has passed. Default `"hold"`.
    #[serde(default)]
    pub(super) on_approval_timeout: Option<Spanned<RawApprovalTimeoutAction>>,
    /// Refuse an approval from whoever started the rollout. Default false.
    #[serde(default)]
    pub(super) approver_must_differ: Option<bool>,
    /// `[labels]`: free key → value pairs (team, tier…) that campaigns select APIs by.
    /// Default: none.
    #[serde(default)]
    pub(super) labels: Option<super::labels::RawLabels>,
    /// The cluster each colour runs on, for the cluster breaker. Default: none.
    #[serde(default)]
    pub(super) clusters: Option<Spanned<Table<super::cluster::RawClusters>>>,
    /// Shorthand for `clusters = { green = "..." }`. Default: none.
    #[serde(default)]
    pub(super) green_cluster: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawApprovalTimeoutAction {
    Hold,
    Rollback,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawGreenMissingAction {
    Hold,
    Rollback,
}

/// `[alert_routes]`: which channels receive which events (an empty list silences the event).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlertRoutes {
    #[serde(default)]
    pub(super) rollback: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) manual_override: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) paused: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) metrics_unavailable: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) stuck: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) promoted: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) internal_error: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) green_data_missing: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) traffic_split_mismatch: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) approval_needed: Option<Vec<Spanned<String>>>,
    /// Human actions (the audit trail); unlike the others, never sent unless routed here.
    #[serde(default)]
    pub(super) audit: Option<Vec<Spanned<String>>>,
}

impl RawAlertRoutes {
    pub(super) fn entries(&self) -> [(&'static str, &Option<Vec<Spanned<String>>>); 11] {
        [
            ("rollback", &self.rollback),
            ("manual_override", &self.manual_override),
            ("paused", &self.paused),
            ("metrics_unavailable", &self.metrics_unavailable),
            ("stuck", &self.stuck),
            ("promoted", &self.promoted),
            ("internal_error", &self.internal_error),
            ("green_data_missing", &self.green_data_missing),
            ("traffic_split_mismatch", &self.traffic_split_mismatch),
            ("approval_needed", &self.approval_needed),
            ("audit", &self.audit),
        ]
    }
}

pub(super) fn default_interval() -> Spanned<HumanDuration> {
    duration(60)
}
pub(super) fn default_steps() -> Spanned<Vec<Spanned<f64>>> {
    unspanned(
        [1.0, 5.0, 10.0, 25.0, 50.0, 100.0]
            .into_iter()
            .map(unspanned)
            .collect(),
    )
}
pub(super) fn default_min_step_duration() -> Spanned<HumanDuration> {
    duration(10 * 60)
}
pub(super) fn default_min_green_requests_per_step() -> Spanned<i64> {
    unspanned(2000)
}
pub(super) fn default_on_max_step_duration() -> RawMaxStepAction {
    RawMaxStepAction::Hold
}
pub(super) fn default_false_rollback_rate() -> Spanned<f64> {
    unspanned(0.01)
}
pub(super) fn default_false_advance_rate() -> Spanned<f64> {
    unspanned(0.05)
}
pub(super) fn default_warmup_intervals() -> Spanned<i64> {
    unspanned(1)
}
pub(super) fn default_auto_start() -> bool {
    true
}
pub(super) fn default_no_data_alert_after() -> Spanned<HumanDuration> {
    duration(10 * 60)
}
pub(super) fn default_stuck_alert_after() -> Spanned<HumanDuration> {
    duration(3 * 3600)
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawBakeBreach {
    Rollback,
    Alert,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawMaxStepAction {
    Hold,
    Advance,
}

/// `[traffic]`: exactly one of `consul_keys` and `haproxy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTraffic {
    /// `{ blue = "<key>", green = "<key>" }`: Consul KV keys holding the integer weights.
    #[serde(default)]
    pub(super) consul_keys: Option<Spanned<Table<RawConsulKeys>>>,
    /// `{ backend = "<backend>", blue = "<server>", green = "<server>" }`: HAProxy Runtime API.
    #[serde(default)]
    pub(super) haproxy: Option<Spanned<Table<RawHaproxyTarget>>>,
    /// `{ backend, blue, green }`: with `consul_keys` only, the HAProxy servers `greenlight sync`
    /// mirrors the two keys to.
    #[serde(default)]
    pub(super) haproxy_backend: Option<Spanned<Table<RawHaproxyTarget>>>,
    /// Sum of the blue and green weights, 1..=256. Default 100.
    #[serde(default = "default_total_weight")]
    pub(super) total_weight: Spanned<i64>,
    /// `"weighted"` (default) or `"sticky"` (needs `[traffic.sticky]`).
    #[serde(default)]
    pub(super) mode: Option<Spanned<super::sticky::TrafficMode>>,
    /// `[traffic.sticky]`: the user key, fallback, subsets and map directory.
    #[serde(default)]
    pub(super) sticky: Option<Spanned<Table<super::sticky::RawSticky>>>,
}

pub(super) fn default_total_weight() -> Spanned<i64> {
    unspanned(100)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsulKeys {
    /// Consul key of blue's weight.
    pub(super) blue: Spanned<String>,
    /// Consul key of green's weight.
    pub(super) green: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHaproxyTarget {
    /// HAProxy backend holding both servers.
    pub(super) backend: Spanned<String>,
    /// Server name of blue in that backend.
    pub(super) blue: Spanned<String>,
    /// Server name of green in that backend.
    pub(super) green: Spanned<String>,
}

/// `[schedule]`: progression only inside these daily windows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    /// IANA time zone name, e.g. `"Europe/Paris"`.
    pub(super) timezone: Spanned<String>,
    /// Local-time windows `"HH:MM-HH:MM"`; may wrap midnight (`"22:00-06:00"`).
    pub(super) windows: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawCheckKind {
    ErrorRate,
    LatencyHistogram,
    Threshold,
}

impl RawCheckKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            RawCheckKind::ErrorRate => "error_rate",
            RawCheckKind::LatencyHistogram => "latency_histogram",
            RawCheckKind::Threshold => "threshold",
        }
    }
}

/// One `[[check]]` table. Flat, so that each field keeps its span; which fields a kind accepts is
/// checked during validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    /// Unique name within the policy. Required.
    pub(super) name: Spanned<String>,
    /// `"error_rate"`, `"latency_histogram"` or `"threshold"`. Required.
    pub(super) kind: Spanned<RawCheckKind>,
    /// error_rate: PromQL count of requests for `{color}` over `[{interval}]`.
    #[serde(default)]
    pub(super) requests: Option<Spanned<String>>,
    /// error_rate: PromQL count of errors for `{color}` over `[{interval}]`.
    #[serde(default)]
    pub(super) errors: Option<Spanned<String>>,
    /// latency_histogram: PromQL bucket counts `sum by (le) (increase(...[{interval}]))`.
    #[serde(default)]
    pub(super) buckets: Option<Spanned<String>>,
    /// latency_histogram: bucket edges (`le` values) to compare at, strings or numbers.
    #[serde(default)]
    pub(super) edges: Option<Spanned<Vec<Spanned<RawEdge>>>>,
    /// error_rate, latency_histogram: relative worsening tolerated before rollback. Default 0.2.
    #[serde(default)]
    pub(super) tolerance: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: advance margin (non-inferiority). Default 0.5.
    #[serde(default)]
    pub(super) advance_tolerance: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: overdispersion φ ≥ 1. Default 1.0.
    #[serde(default)]
    pub(super) overdispersion: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: green errors needed before a rollback. Default 5.
    #[serde(default)]
    pub(super) min_errors: Option<Spanned<i64>>,
    /// error_rate: blue's error rate above this means an environment problem (hold).
    #[serde(default)]
    pub(super) blue_max_error_rate: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: optional absolute advance evidence — green's rate of bad
    /// requests (errors, or requests slower than an edge) is below this. In (0, 1).
    #[serde(default)]
    pub(super) advance_max_rate: Option<Spanned<f64>>,
    /// threshold: PromQL value for `{color}`.
    #[serde(default)]
    pub(super) query: Option<Spanned<String>>,
    /// threshold: breach when the value is above this.
    #[serde(default)]
    pub(super) max: Option<Spanned<f64>>,
    /// threshold: breach when the value is below this.
    #[serde(default)]
    pub(super) min: Option<Spanned<f64>>,
    /// threshold: consecutive breaching intervals before rollback. Default 3.
    #[serde(default)]
    pub(super) failures: Option<Spanned<i64>>,
    /// threshold: green requests a window needs to count for the guard. Default 100.
    #[serde(default)]
    pub(super) min_green_requests: Option<Spanned<i64>>,
    /// threshold, sticky mode: `"random"` (default) or `"pinned"`, the cohort of green guarded.
    #[serde(default)]
    pub(super) cohort: Option<Spanned<super::cohort::Cohort>>,
    /// Not a check field: caught to explain that a top-level `alerts` written after a
    /// `[[check]]` header belongs to that check table.
    #[serde(default)]
    pub(super) alerts: Option<Spanned<toml::Value>>,
}

pub(super) fn default_tolerance() -> f64 {
    0.2
}
pub(super) fn default_advance_tolerance() -> f64 {
    0.5
}
pub(super) fn default_overdispersion() -> f64 {
    1.0
}
pub(super) fn default_min_errors() -> u64 {
    5
}
pub(super) fn default_failures() -> u32 {
    3
}
pub(super) fn default_guard_min_green_requests() -> u64 {
    100
}

/// A latency bucket edge as written: a string (`"0.25"`, like Prometheus `le` labels) or a number.
#[derive(Debug, Clone)]
pub(super) struct RawEdge(pub(super) String);

impl<'de> Deserialize<'de> for RawEdge {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawEdge;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bucket edge as a string (\"0.25\") or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEdge, E> {
                Ok(RawEdge(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawEdge, E> {
                Ok(RawEdge(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawEdge, E> {
                Ok(RawEdge(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawEdge, E> {
                Ok(RawEdge(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}
