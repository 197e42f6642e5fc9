//! Raw serde types of a policy file, and their validation into [`Policy`] with located errors.
//!
//! Every value that validation may complain about is a [`Spanned`], so each error points at the
//! offending value's `line:col`. Defaults are named functions; a defaulted value carries the
//! empty span `0..0`, and errors about it point at a related explicit value instead.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::{
    Check, CheckKind, HaproxyServers, MaxStepAction, Policy, PolicyError, Schedule, TimeWindow,
    Traffic, TrafficTarget,
};

// ---------------------------------------------------------------------------------------------
// Shared helpers (also used by the daemon config).
// ---------------------------------------------------------------------------------------------

/// Collects located errors for one file.
pub(super) struct Errors<'a> {
    text: &'a str,
    file: &'a Path,
    list: Vec<PolicyError>,
}

impl<'a> Errors<'a> {
    pub(super) fn new(text: &'a str, file: &'a Path) -> Self {
        Errors {
            text,
            file,
            list: Vec::new(),
        }
    }

    /// Records `message` at the start of `span` (an empty default span means line 1, column 1).
    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.at_offset(span.start, message);
    }

    /// Records `message` at byte `offset` of the text.
    pub(super) fn at_offset(&mut self, offset: usize, message: impl Into<String>) {
        let (line, col) = line_col(self.text, offset);
        self.list.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    /// Records a TOML syntax or type error, located by its span.
    pub(super) fn toml(&mut self, error: &toml::de::Error) {
        let offset = error.span().map(|s| s.start).unwrap_or(0);
        let message = error.message().trim_end().to_string();
        self.at_offset(offset, message);
    }

    /// Records `message` at character `index` of the string value `value` found at `span`.
    /// Falls back to the start of the value when the literal holds escapes.
    pub(super) fn in_string(
        &mut self,
        span: Range<usize>,
        value: &str,
        index: usize,
        message: impl Into<String>,
    ) {
        let offset = string_offset(self.text, span, value, index);
        self.at_offset(offset, message);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The errors, in file order.
    pub(super) fn into_sorted(mut self) -> Vec<PolicyError> {
        self.list.sort_by_key(|e| (e.line, e.col));
        self.list
    }

    pub(super) fn location(&self, span: Range<usize>) -> (usize, usize) {
        line_col(self.text, span.start)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Byte offset in `text` of byte `index` of the string `value` whose literal sits at `span`.
fn string_offset(text: &str, span: Range<usize>, value: &str, index: usize) -> usize {
    let Some(literal) = text.get(span.clone()) else {
        return span.start;
    };
    let delim = if literal.starts_with("'''") || literal.starts_with("\"\"\"") {
        3
    } else if literal.starts_with('\'') || literal.starts_with('"') {
        1
    } else {
        return span.start;
    };
    if literal.len() < 2 * delim {
        return span.start;
    }
    let inner = &literal[delim..literal.len() - delim];
    if inner == value {
        span.start + delim + index
    } else {
        span.start
    }
}

/// The first non-default span of `spans` (default values carry `0..0`).
pub(super) fn explicit(spans: &[Range<usize>]) -> Range<usize> {
    spans
        .iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or(0..0)
}

/// A default value: no location in the file.
pub(super) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// A duration written as a humantime string (`"30s"`, `"10m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"10m\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(v)
                    .map(HumanDuration)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
        }
        deserializer.deserialize_str(V)
    }
}

pub(super) fn duration(seconds: u64) -> Spanned<HumanDuration> {
    unspanned(HumanDuration(Duration::from_secs(seconds)))
}

/// Parses `text` as TOML into `T`, turning a syntax or type error into a located error.
pub(super) fn parse_toml<'de, T: Deserialize<'de>>(
    text: &'de str,
    errors: &mut Errors<'_>,
) -> Option<T> {
    match toml::from_str::<T>(text) {
        Ok(value) => Some(value),
        Err(e) => {
            errors.toml(&e);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw policy types.
// ---------------------------------------------------------------------------------------------

/// A policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    /// API name, `[A-Za-z0-9_-]+`; part of Consul keys, alerts and metric labels. Required.
    api: Spanned<String>,
    /// Evaluation period (humantime). Default `"1m"`.
    #[serde(default = "default_interval")]
    interval: Spanned<HumanDuration>,
    /// Green's share of traffic per step, percent. Default `[1, 5, 10, 25, 50, 100]`.
    #[serde(default = "default_steps")]
    steps: Spanned<Vec<Spanned<f64>>>,
    /// Minimum time at a step before advancing. Default `"10m"`.
    #[serde(default = "default_min_step_duration")]
    min_step_duration: Spanned<HumanDuration>,
    /// Minimum green requests at a step (outside warm-up) before advancing. Default 2000.
    #[serde(default = "default_min_green_requests_per_step")]
    min_green_requests_per_step: u64,
    /// After this long at one step, `on_max_step_duration` applies. Default: never.
    #[serde(default)]
    max_step_duration: Option<Spanned<HumanDuration>>,
    /// `"hold"` or `"advance"` once `max_step_duration` has passed. Default `"hold"`.
    #[serde(default = "default_on_max_step_duration")]
    on_max_step_duration: RawMaxStepAction,
    /// Steps with a share below this percentage advance on dwell alone. Default: none.
    #[serde(default)]
    advance_on_dwell_below: Option<Spanned<f64>>,
    /// α: probability of ever rolling back a healthy canary, in (0, 0.5). Default 0.01.
    #[serde(default = "default_false_rollback_rate")]
    false_rollback_rate: Spanned<f64>,
    /// Error level of the advance evidence, in (0, 0.5). Default 0.05.
    #[serde(default = "default_false_advance_rate")]
    false_advance_rate: Spanned<f64>,
    /// Intervals discarded after each weight change. Default 1.
    #[serde(default = "default_warmup_intervals")]
    warmup_intervals: u32,
    /// Start the rollout without `greenlight start`. Default true.
    #[serde(default = "default_auto_start")]
    auto_start: bool,
    /// Alert after metrics were missing or unusable this long. Default `"10m"`.
    #[serde(default = "default_no_data_alert_after")]
    no_data_alert_after: Spanned<HumanDuration>,
    /// Alert when no step progress was made this long. Default `"3h"`.
    #[serde(default = "default_stuck_alert_after")]
    stuck_alert_after: Spanned<HumanDuration>,
    /// Where the traffic split lives. Required.
    traffic: Spanned<RawTraffic>,
    /// Optional progression windows.
    #[serde(default)]
    schedule: Option<Spanned<RawSchedule>>,
    /// `[[check]]` tables, in file order.
    #[serde(default, rename = "check")]
    checks: Vec<Spanned<RawCheck>>,
    /// Alert channel names from the daemon config. Default: none.
    #[serde(default)]
    alerts: Vec<Spanned<String>>,
    /// Optional per-event channel lists; an event not listed goes to `alerts`.
    #[serde(default)]
    alert_routes: Option<RawAlertRoutes>,
    /// Largest plausible request rate of one colour, per second. Default 10 000 000.
    #[serde(default)]
    max_requests_per_second: Option<Spanned<f64>>,
    /// `"hold"` or `"rollback"` once green's data are missing (blue's present) for
    /// `green_data_missing_for`. Default `"rollback"`.
    #[serde(default)]
    on_green_data_missing: Option<RawGreenMissingAction>,
    /// Default `"5m"`.
    #[serde(default)]
    green_data_missing_for: Option<Spanned<HumanDuration>>,
    /// Compare green's observed share of requests with its weight. Default true.
    #[serde(default)]
    check_traffic_split: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawGreenMissingAction {
    Hold,
    Rollback,
}

/// `[alert_routes]`: which channels receive which events (an empty list silences the event).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertRoutes {
    #[serde(default)]
    rollback: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    manual_override: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    paused: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    metrics_unavailable: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    stuck: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    promoted: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    internal_error: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    green_data_missing: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    traffic_split_mismatch: Option<Vec<Spanned<String>>>,
}

impl RawAlertRoutes {
    fn entries(&self) -> [(&'static str, &Option<Vec<Spanned<String>>>); 9] {
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
        ]
    }
}

fn default_interval() -> Spanned<HumanDuration> {
    duration(60)
}
fn default_steps() -> Spanned<Vec<Spanned<f64>>> {
    unspanned(
        [1.0, 5.0, 10.0, 25.0, 50.0, 100.0]
            .into_iter()
            .map(unspanned)
            .collect(),
    )
}
fn default_min_step_duration() -> Spanned<HumanDuration> {
    duration(10 * 60)
}
fn default_min_green_requests_per_step() -> u64 {
    2000
}
fn default_on_max_step_duration() -> RawMaxStepAction {
    RawMaxStepAction::Hold
}
fn default_false_rollback_rate() -> Spanned<f64> {
    unspanned(0.01)
}
fn default_false_advance_rate() -> Spanned<f64> {
    unspanned(0.05)
}
fn default_warmup_intervals() -> u32 {
    1
}
fn default_auto_start() -> bool {
    true
}
fn default_no_data_alert_after() -> Spanned<HumanDuration> {
    duration(10 * 60)
}
fn default_stuck_alert_after() -> Spanned<HumanDuration> {
    duration(3 * 3600)
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawMaxStepAction {
    Hold,
    Advance,
}

/// `[traffic]`: exactly one of `consul_keys` and `haproxy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    /// `{ blue = "<key>", green = "<key>" }`: Consul KV keys holding the integer weights.
    #[serde(default)]
    consul_keys: Option<Spanned<RawConsulKeys>>,
    /// `{ backend = "<backend>", blue = "<server>", green = "<server>" }`: HAProxy Runtime API.
    #[serde(default)]
    haproxy: Option<Spanned<RawHaproxyTarget>>,
    /// `{ backend, blue, green }`: with `consul_keys` only, the HAProxy servers `greenlight sync`
    /// mirrors the two keys to.
    #[serde(default)]
    haproxy_backend: Option<Spanned<RawHaproxyTarget>>,
    /// Sum of the blue and green weights, 1..=256. Default 100.
    #[serde(default = "default_total_weight")]
    total_weight: Spanned<i64>,
}

fn default_total_weight() -> Spanned<i64> {
    unspanned(100)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsulKeys {
    /// Consul key of blue's weight.
    blue: Spanned<String>,
    /// Consul key of green's weight.
    green: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHaproxyTarget {
    /// HAProxy backend holding both servers.
    backend: Spanned<String>,
    /// Server name of blue in that backend.
    blue: Spanned<String>,
    /// Server name of green in that backend.
    green: Spanned<String>,
}

/// `[schedule]`: progression only inside these daily windows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    /// IANA time zone name, e.g. `"Europe/Paris"`.
    timezone: Spanned<String>,
    /// Local-time windows `"HH:MM-HH:MM"`; may wrap midnight (`"22:00-06:00"`).
    windows: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawCheckKind {
    ErrorRate,
    LatencyHistogram,
    Threshold,
}

impl RawCheckKind {
    fn name(self) -> &'static str {
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
struct RawCheck {
    /// Unique name within the policy. Required.
    name: Spanned<String>,
    /// `"error_rate"`, `"latency_histogram"` or `"threshold"`. Required.
    kind: Spanned<RawCheckKind>,
    /// error_rate: PromQL count of requests for `{color}` over `[{interval}]`.
    #[serde(default)]
    requests: Option<Spanned<String>>,
    /// error_rate: PromQL count of errors for `{color}` over `[{interval}]`.
    #[serde(default)]
    errors: Option<Spanned<String>>,
    /// latency_histogram: PromQL bucket counts `sum by (le) (increase(...[{interval}]))`.
    #[serde(default)]
    buckets: Option<Spanned<String>>,
    /// latency_histogram: bucket edges (`le` values) to compare at, strings or numbers.
    #[serde(default)]
    edges: Option<Spanned<Vec<Spanned<RawEdge>>>>,
    /// error_rate, latency_histogram: relative worsening tolerated before rollback. Default 0.2.
    #[serde(default)]
    tolerance: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: advance margin (non-inferiority). Default 0.5.
    #[serde(default)]
    advance_tolerance: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: overdispersion φ ≥ 1. Default 1.0.
    #[serde(default)]
    overdispersion: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: green errors needed before a rollback. Default 5.
    #[serde(default)]
    min_errors: Option<Spanned<u64>>,
    /// error_rate: blue's error rate above this means an environment problem (hold).
    #[serde(default)]
    blue_max_error_rate: Option<Spanned<f64>>,
    /// error_rate, latency_histogram: optional absolute advance evidence — green's rate of bad
    /// requests (errors, or requests slower than an edge) is below this. In (0, 1).
    #[serde(default)]
    advance_max_rate: Option<Spanned<f64>>,
    /// threshold: PromQL value for `{color}`.
    #[serde(default)]
    query: Option<Spanned<String>>,
    /// threshold: breach when the value is above this.
    #[serde(default)]
    max: Option<Spanned<f64>>,
    /// threshold: breach when the value is below this.
    #[serde(default)]
    min: Option<Spanned<f64>>,
    /// threshold: consecutive breaching intervals before rollback. Default 3.
    #[serde(default)]
    failures: Option<Spanned<i64>>,
    /// threshold: green requests a window needs to count for the guard. Default 100.
    #[serde(default)]
    min_green_requests: Option<Spanned<i64>>,
    /// Not a check field: caught to explain that a top-level `alerts` written after a
    /// `[[check]]` header belongs to that check table.
    #[serde(default)]
    alerts: Option<Spanned<toml::Value>>,
}

fn default_tolerance() -> f64 {
    0.2
}
fn default_advance_tolerance() -> f64 {
    0.5
}
fn default_overdispersion() -> f64 {
    1.0
}
fn default_min_errors() -> u64 {
    5
}
fn default_failures() -> i64 {
    3
}
fn default_guard_min_green_requests() -> u64 {
    100
}

/// A latency bucket edge as written: a string (`"0.25"`, like Prometheus `le` labels) or a number.
#[derive(Debug, Clone)]
struct RawEdge(String);

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

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

/// Parses and validates one policy; also returns the span of its `api` value (for messages
/// about duplicates across files).
pub(super) fn parse_policy(
    text: &str,
    file: &Path,
    channels: Option<&[String]>,
) -> Result<(Policy, Range<usize>), Vec<PolicyError>> {
    let mut errors = Errors::new(text, file);
    let Some(raw) = parse_toml::<RawPolicy>(text, &mut errors) else {
        return Err(errors.into_sorted());
    };
    let api_span = raw.api.span();
    match raw.validate(file, channels, &mut errors) {
        Some(policy) if errors.is_empty() => Ok((policy, api_span)),
        _ => Err(errors.into_sorted()),
    }
}

impl Policy {
    /// Parses and validates a policy file's text. `file` is used in messages and recorded as the
    /// policy's source. With `channels`, every name in `alerts` must be one of them.
    pub fn from_toml(
        text: &str,
        file: &Path,
        channels: Option<&[String]>,
    ) -> Result<Policy, Vec<PolicyError>> {
        parse_policy(text, file, channels).map(|(policy, _)| policy)
    }
}

impl RawPolicy {
    fn validate(
        self,
        file: &Path,
        channels: Option<&[String]>,
        errors: &mut Errors<'_>,
    ) -> Option<Policy> {
        let api = self.api.get_ref().clone();
        if !is_api_name(&api) {
            errors.at(
                self.api.span(),
                format!(
                    "api name {api:?} must be non-empty and use only letters, digits, '_' and '-' \
                     (it becomes part of Consul keys)"
                ),
            );
        }

        for (name, d) in [
            ("interval", &self.interval),
            ("min_step_duration", &self.min_step_duration),
            ("no_data_alert_after", &self.no_data_alert_after),
            ("stuck_alert_after", &self.stuck_alert_after),
        ]
        .into_iter()
        .chain(
            self.max_step_duration
                .as_ref()
                .map(|d| ("max_step_duration", d)),
        ) {
            if d.get_ref().0.is_zero() {
                errors.at(d.span(), format!("{name} must be greater than zero"));
            }
        }
        let interval = self.interval.get_ref().0;
        let min_step = self.min_step_duration.get_ref().0;
        if !interval.is_zero() && min_step < interval {
            errors.at(
                explicit(&[self.min_step_duration.span(), self.interval.span()]),
                format!(
                    "min_step_duration ({}) must be at least interval ({})",
                    humantime::format_duration(min_step),
                    humantime::format_duration(interval)
                ),
            );
        }
        if let Some(max) = &self.max_step_duration {
            let max_d = max.get_ref().0;
            if !max_d.is_zero() && max_d < min_step {
                errors.at(
                    max.span(),
                    format!(
                        "max_step_duration ({}) must be at least min_step_duration ({})",
                        humantime::format_duration(max_d),
                        humantime::format_duration(min_step)
                    ),
                );
            }
        }

        if let Some(below) = &self.advance_on_dwell_below {
            let v = *below.get_ref();
            if !(v > 0.0 && v <= 100.0) {
                errors.at(
                    below.span(),
                    format!("advance_on_dwell_below must be a share in (0, 100] percent, got {v}"),
                );
            }
        }

        for (name, rate) in [
            ("false_rollback_rate", &self.false_rollback_rate),
            ("false_advance_rate", &self.false_advance_rate),
        ] {
            let v = *rate.get_ref();
            if !(v > 0.0 && v < 0.5) {
                errors.at(rate.span(), format!("{name} must be in (0, 0.5), got {v}"));
            }
        }

        let data_quality = self.data_quality(errors);
        let traffic = validate_traffic(&self.traffic, errors);
        let steps = validate_steps(&self.steps, traffic.as_ref(), errors);
        let schedule = self
            .schedule
            .as_ref()
            .and_then(|s| validate_schedule(s, errors));
        let checks = validate_checks(&self.checks, &self.api, errors);
        let alerts = validate_alerts(&self.alerts, channels, errors);
        let mut alert_routes = std::collections::BTreeMap::new();
        if let Some(routes) = &self.alert_routes {
            for (event, list) in routes.entries() {
                if let Some(list) = list {
                    alert_routes.insert(event.to_string(), validate_alerts(list, channels, errors));
                }
            }
        }

        Some(Policy {
            api,
            source: Some(file.to_path_buf()),
            interval,
            steps,
            min_step_duration: min_step,
            min_green_requests_per_step: self.min_green_requests_per_step,
            max_step_duration: self.max_step_duration.map(|d| d.get_ref().0),
            on_max_step_duration: match self.on_max_step_duration {
                RawMaxStepAction::Hold => MaxStepAction::Hold,
                RawMaxStepAction::Advance => MaxStepAction::Advance,
            },
            advance_on_dwell_below: self.advance_on_dwell_below.map(|b| *b.get_ref()),
            false_rollback_rate: *self.false_rollback_rate.get_ref(),
            false_advance_rate: *self.false_advance_rate.get_ref(),
            warmup_intervals: self.warmup_intervals,
            auto_start: self.auto_start,
            no_data_alert_after: self.no_data_alert_after.get_ref().0,
            stuck_alert_after: self.stuck_alert_after.get_ref().0,
            traffic: traffic?,
            schedule,
            checks,
            alerts,
            alert_routes,
            data_quality,
        })
    }

    /// `max_requests_per_second`, `on_green_data_missing`, `green_data_missing_for`,
    /// `check_traffic_split`.
    fn data_quality(&self, errors: &mut Errors<'_>) -> crate::policy::DataQuality {
        let mut dq = crate::policy::DataQuality::default();
        if let Some(rate) = &self.max_requests_per_second {
            let v = *rate.get_ref();
            if v.is_finite() && v > 0.0 {
                dq.max_requests_per_second = v;
            } else {
                errors.at(
                    rate.span(),
                    format!("max_requests_per_second must be a positive number, got {v}"),
                );
            }
        }
        if let Some(action) = self.on_green_data_missing {
            dq.on_green_data_missing = match action {
                RawGreenMissingAction::Hold => crate::policy::GreenMissingAction::Hold,
                RawGreenMissingAction::Rollback => crate::policy::GreenMissingAction::Rollback,
            };
        }
        if let Some(check) = self.check_traffic_split {
            dq.check_traffic_split = check;
        }
        if let Some(d) = &self.green_data_missing_for {
            if d.get_ref().0.is_zero() {
                errors.at(d.span(), "green_data_missing_for must be greater than zero");
            }
            dq.green_data_missing_for = d.get_ref().0;
        }
        dq
    }
}

fn is_api_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Why `key` is not a Consul KV key that every Consul release accepts, if it is not.
pub(super) fn consul_key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("must not be empty".into());
    }
    if key.starts_with('/') {
        return Some("must not start with '/'".into());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ',' | '-' | '_' | '.' | '/')))
    {
        return Some(format!(
            "contains {c:?}; use only letters, digits and ',', '-', '_', '.', '/'"
        ));
    }
    if key.contains("../") {
        return Some("must not contain \"../\"".into());
    }
    for ext in [".json", ".txt", ".js"] {
        if key.ends_with(ext) {
            return Some(format!("must not end in {ext:?}"));
        }
    }
    None
}

/// HAProxy proxy and server names: letters, digits, '-', '_', '.', ':'.
fn is_haproxy_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn validate_traffic(raw: &Spanned<RawTraffic>, errors: &mut Errors<'_>) -> Option<Traffic> {
    let t = raw.get_ref();
    let total = *t.total_weight.get_ref();
    let total_ok = (1..=256).contains(&total);
    if !total_ok {
        errors.at(
            t.total_weight.span(),
            format!("total_weight must be between 1 and 256 (HAProxy weights), got {total}"),
        );
    }
    let target = match (&t.consul_keys, &t.haproxy) {
        (Some(_), Some(h)) => {
            errors.at(
                h.span(),
                "set either traffic.consul_keys or traffic.haproxy, not both",
            );
            None
        }
        (None, None) => {
            errors.at(
                raw.span(),
                "[traffic] needs consul_keys = { blue, green } or haproxy = { backend, blue, green }",
            );
            None
        }
        (Some(keys), None) => {
            let k = keys.get_ref();
            let mut ok = true;
            for (name, key) in [("blue", &k.blue), ("green", &k.green)] {
                if let Some(problem) = consul_key_problem(key.get_ref()) {
                    errors.at(key.span(), format!("Consul key for {name} {problem}"));
                    ok = false;
                }
            }
            if ok && k.blue.get_ref() == k.green.get_ref() {
                errors.at(
                    k.green.span(),
                    "blue and green must use different Consul keys",
                );
                ok = false;
            }
            ok.then(|| TrafficTarget::ConsulKeys {
                blue: k.blue.get_ref().clone(),
                green: k.green.get_ref().clone(),
            })
        }
        (None, Some(h)) => {
            validate_haproxy_servers(h.get_ref(), errors).map(|s| TrafficTarget::Haproxy {
                backend: s.backend,
                blue: s.blue,
                green: s.green,
            })
        }
    };
    let haproxy_backend = match (&t.haproxy_backend, &t.consul_keys) {
        (None, _) => Some(None),
        (Some(h), Some(_)) => validate_haproxy_servers(h.get_ref(), errors).map(Some),
        (Some(h), None) => {
            errors.at(
                h.span(),
                "traffic.haproxy_backend only applies with traffic.consul_keys",
            );
            None
        }
    };
    let total_weight = u32::try_from(total).ok().filter(|_| total_ok)?;
    Some(Traffic {
        target: target?,
        total_weight,
        haproxy_backend: haproxy_backend?,
    })
}

fn validate_haproxy_servers(
    h: &RawHaproxyTarget,
    errors: &mut Errors<'_>,
) -> Option<HaproxyServers> {
    let mut ok = true;
    for (what, name) in [
        ("backend", &h.backend),
        ("blue server", &h.blue),
        ("green server", &h.green),
    ] {
        if !is_haproxy_name(name.get_ref()) {
            errors.at(
                name.span(),
                format!(
                    "HAProxy {what} name {:?} must be non-empty and use only letters, \
                     digits, '-', '_', '.' and ':'",
                    name.get_ref()
                ),
            );
            ok = false;
        }
    }
    if ok && h.blue.get_ref() == h.green.get_ref() {
        errors.at(h.green.span(), "blue and green must be different servers");
        ok = false;
    }
    ok.then(|| HaproxyServers {
        backend: h.backend.get_ref().clone(),
        blue: h.blue.get_ref().clone(),
        green: h.green.get_ref().clone(),
    })
}

fn validate_steps(
    raw: &Spanned<Vec<Spanned<f64>>>,
    traffic: Option<&Traffic>,
    errors: &mut Errors<'_>,
) -> Vec<f64> {
    let steps = raw.get_ref();
    if steps.is_empty() {
        errors.at(raw.span(), "steps must not be empty; the last step is 100");
        return Vec::new();
    }
    let mut previous: Option<f64> = None;
    let mut previous_green: Option<u32> = None;
    for step in steps {
        let v = *step.get_ref();
        if !(v > 0.0 && v <= 100.0) {
            errors.at(step.span(), format!("step {v} must be in (0, 100]"));
        } else if let Some(p) = previous.filter(|p| v <= *p) {
            errors.at(
                step.span(),
                format!("steps must be strictly increasing: {v} follows {p}"),
            );
        } else if let Some(t) = traffic {
            let green = t.weights_for(v).green;
            if green == 0 {
                errors.at(
                    step.span(),
                    format!(
                        "step {v}% gives green weight 0 at total_weight {}",
                        t.total_weight
                    ),
                );
            } else if previous_green == Some(green) {
                errors.at(
                    step.span(),
                    format!(
                        "step {v}% gives the same green weight ({green}) as the step before at \
                         total_weight {}",
                        t.total_weight
                    ),
                );
            }
            previous_green = Some(green);
        }
        if v.is_finite() {
            previous = Some(previous.map_or(v, |p| p.max(v)));
        }
    }
    if let Some(last) = steps.last() {
        if *last.get_ref() != 100.0 {
            errors.at(
                explicit(&[last.span(), raw.span()]),
                format!("the last step must be 100, got {}", last.get_ref()),
            );
        }
    }
    steps.iter().map(|s| *s.get_ref()).collect()
}

/// Parses `HH:MM` into minutes since midnight.
fn parse_clock(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn parse_window(s: &str) -> Result<TimeWindow, String> {
    let bad = || format!("time window {s:?} must be \"HH:MM-HH:MM\" (24-hour local time)");
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let start_minute = parse_clock(start.trim()).ok_or_else(bad)?;
    let end_minute = parse_clock(end.trim()).ok_or_else(bad)?;
    if start_minute == end_minute {
        return Err(format!("time window {s:?} is empty: start equals end"));
    }
    Ok(TimeWindow {
        start_minute,
        end_minute,
    })
}

fn validate_schedule(raw: &Spanned<RawSchedule>, errors: &mut Errors<'_>) -> Option<Schedule> {
    let s = raw.get_ref();
    let tz = match jiff::tz::TimeZone::get(s.timezone.get_ref()) {
        Ok(tz) => Some(tz),
        Err(_) => {
            errors.at(
                s.timezone.span(),
                format!(
                    "unknown time zone {:?} (use an IANA name such as \"Europe/Paris\")",
                    s.timezone.get_ref()
                ),
            );
            None
        }
    };
    if s.windows.get_ref().is_empty() {
        errors.at(
            s.windows.span(),
            "schedule.windows must list at least one window; remove [schedule] to progress at any time",
        );
    }
    let mut windows = Vec::new();
    for w in s.windows.get_ref() {
        match parse_window(w.get_ref()) {
            Ok(window) => windows.push(window),
            Err(message) => errors.at(w.span(), message),
        }
    }
    Some(Schedule {
        timezone: s.timezone.get_ref().clone(),
        tz: tz?,
        windows,
    })
}

/// A `{word}` placeholder found in a query: its name and byte index.
fn placeholders(query: &str) -> Vec<(&str, usize)> {
    // PromQL label matchers also use braces (`{job="x"}`), and values may hold placeholders
    // (`{server="{color}"}`). A placeholder is an innermost `{...}` holding a bare word.
    let bytes = query.as_bytes();
    let mut found = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'{' {
            continue;
        }
        let Some(len) = bytes[i + 1..].iter().position(|c| *c == b'{' || *c == b'}') else {
            continue;
        };
        if bytes[i + 1 + len] != b'}' {
            continue;
        }
        let inner = &query[i + 1..i + 1 + len];
        let mut chars = inner.chars();
        let is_word = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_word {
            found.push((inner, i));
        }
    }
    found
}

const PLACEHOLDERS: [&str; 3] = ["color", "interval", "api"];

/// Checks a query's placeholders; `count` queries must also contain `{interval}`.
fn validate_query(
    field: &str,
    query: &Spanned<String>,
    count: bool,
    errors: &mut Errors<'_>,
) -> String {
    let q = query.get_ref();
    let found = placeholders(q);
    for (name, index) in &found {
        if !PLACEHOLDERS.contains(name) {
            errors.in_string(
                query.span(),
                q,
                *index,
                format!(
                    "unknown placeholder {{{name}}} in {field}; known: {{color}}, {{interval}}, {{api}}"
                ),
            );
        }
    }
    if !found.iter().any(|(n, _)| *n == "color") {
        errors.at(
            query.span(),
            format!(
                "{field} must contain {{color}} (replaced by the blue or green selector value)"
            ),
        );
    }
    if count && !found.iter().any(|(n, _)| *n == "interval") {
        errors.at(
            query.span(),
            format!(
                "{field} counts events per interval and must contain {{interval}}, e.g. \
                 increase(...[{{interval}}])"
            ),
        );
    }
    q.clone()
}

/// Whether `query` groups by `le` (`by (le)`, `by (le, x)`, `sum(...) by (le)`).
fn groups_by_le(query: &str) -> bool {
    let mut rest = query;
    while let Some(i) = rest.find("by") {
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let after = &rest[i + 2..];
        let trimmed = after.trim_start();
        if before_ok && trimmed.starts_with('(') {
            if let Some(end) = trimmed.find(')') {
                if trimmed[1..end].split(',').any(|l| l.trim() == "le") {
                    return true;
                }
            }
        }
        rest = after;
    }
    false
}

fn validate_edges(raw: &Spanned<Vec<Spanned<RawEdge>>>, errors: &mut Errors<'_>) -> Vec<f64> {
    if raw.get_ref().is_empty() {
        errors.at(raw.span(), "edges must list at least one bucket edge");
    }
    let mut edges = Vec::new();
    let mut previous: Option<f64> = None;
    for edge in raw.get_ref() {
        let text = edge.get_ref().0.trim();
        let value = match text.parse::<f64>() {
            Ok(v) if v.is_infinite() && v > 0.0 => {
                errors.at(
                    edge.span(),
                    format!(
                        "edge {text:?} is the +Inf bucket: every request is below it, so there is \
                         nothing to compare"
                    ),
                );
                continue;
            }
            Ok(v) if v.is_finite() && v > 0.0 => v,
            _ => {
                errors.at(
                    edge.span(),
                    format!("edge {text:?} must be a finite positive number such as \"0.25\""),
                );
                continue;
            }
        };
        if let Some(p) = previous.filter(|p| value <= *p) {
            errors.at(
                edge.span(),
                format!("edges must be strictly ascending: {value} follows {p}"),
            );
        }
        previous = Some(previous.map_or(value, |p| p.max(value)));
        edges.push(value);
    }
    edges
}

fn validate_checks(
    raw: &[Spanned<RawCheck>],
    api: &Spanned<String>,
    errors: &mut Errors<'_>,
) -> Vec<Check> {
    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    let mut checks = Vec::new();
    for check in raw {
        let c = check.get_ref();
        let name = c.name.get_ref();
        if name.trim().is_empty() {
            errors.at(c.name.span(), "check name must not be empty");
        } else if let Some(first) = seen.get(name.as_str()) {
            let (line, col) = errors.location(first.clone());
            errors.at(
                c.name.span(),
                format!("duplicate check name {name:?} (first defined at {line}:{col})"),
            );
        } else {
            seen.insert(name, c.name.span());
        }
        if let Some(alerts) = &c.alerts {
            errors.at(
                alerts.span(),
                "`alerts` here belongs to the [[check]] table above it; move it to the top of the \
                 file, before the first [[check]]",
            );
        }
        if let Some(kind) = validate_check(c, errors) {
            checks.push(Check {
                name: name.clone(),
                kind,
            });
        }
    }
    let statistical = raw.iter().any(|c| {
        matches!(
            c.get_ref().kind.get_ref(),
            RawCheckKind::ErrorRate | RawCheckKind::LatencyHistogram
        )
    });
    if !statistical {
        errors.at(
            api.span(),
            "the policy needs at least one [[check]] with kind = \"error_rate\" or \
             kind = \"latency_histogram\"",
        );
    }
    checks
}

/// The value of an optional float field, checked against `ok`; default when absent.
fn float_field(
    field: &Option<Spanned<f64>>,
    name: &str,
    default: f64,
    ok: impl Fn(f64) -> bool,
    rule: &str,
    errors: &mut Errors<'_>,
) -> f64 {
    match field {
        None => default,
        Some(v) => {
            let x = *v.get_ref();
            if !(x.is_finite() && ok(x)) {
                errors.at(v.span(), format!("{name} must be {rule}, got {x}"));
            }
            x
        }
    }
}

fn validate_check(c: &RawCheck, errors: &mut Errors<'_>) -> Option<CheckKind> {
    let kind = *c.kind.get_ref();

    // Which optional fields this kind accepts.
    fn span<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
        v.as_ref().map(|v| v.span())
    }
    let error_rate = kind == RawCheckKind::ErrorRate;
    let latency = kind == RawCheckKind::LatencyHistogram;
    let threshold = kind == RawCheckKind::Threshold;
    let statistical = error_rate || latency;
    let fields = [
        ("requests", span(&c.requests), error_rate),
        ("errors", span(&c.errors), error_rate),
        (
            "blue_max_error_rate",
            span(&c.blue_max_error_rate),
            error_rate,
        ),
        ("buckets", span(&c.buckets), latency),
        ("edges", span(&c.edges), latency),
        ("tolerance", span(&c.tolerance), statistical),
        ("advance_tolerance", span(&c.advance_tolerance), statistical),
        ("overdispersion", span(&c.overdispersion), statistical),
        ("min_errors", span(&c.min_errors), statistical),
        ("advance_max_rate", span(&c.advance_max_rate), statistical),
        ("query", span(&c.query), threshold),
        ("max", span(&c.max), threshold),
        ("min", span(&c.min), threshold),
        ("failures", span(&c.failures), threshold),
        ("min_green_requests", span(&c.min_green_requests), threshold),
    ];
    let mut ok = true;
    for (field, span, allowed) in fields {
        if let (Some(span), false) = (span, allowed) {
            errors.at(
                span,
                format!("`{field}` does not apply to kind = \"{}\"", kind.name()),
            );
            ok = false;
        }
    }
    let mut require = |field: &str, value: bool, errors: &mut Errors<'_>| {
        if !value {
            errors.at(
                c.kind.span(),
                format!("kind = \"{}\" needs `{field}`", kind.name()),
            );
            ok = false;
        }
    };

    match kind {
        RawCheckKind::ErrorRate | RawCheckKind::LatencyHistogram => {
            let tolerance = float_field(
                &c.tolerance,
                "tolerance",
                default_tolerance(),
                |x| x >= 0.0,
                ">= 0",
                errors,
            );
            let advance_tolerance = float_field(
                &c.advance_tolerance,
                "advance_tolerance",
                default_advance_tolerance(),
                |x| x >= 0.0,
                ">= 0",
                errors,
            );
            let overdispersion = float_field(
                &c.overdispersion,
                "overdispersion",
                default_overdispersion(),
                |x| x >= 1.0,
                ">= 1",
                errors,
            );
            let min_errors = c
                .min_errors
                .as_ref()
                .map_or_else(default_min_errors, |v| *v.get_ref());
            let advance_max_rate = c.advance_max_rate.as_ref().map(|v| {
                let x = *v.get_ref();
                if !(x > 0.0 && x < 1.0) {
                    errors.at(
                        v.span(),
                        format!("advance_max_rate must be in (0, 1), got {x}"),
                    );
                }
                x
            });
            if kind == RawCheckKind::ErrorRate {
                require("requests", c.requests.is_some(), errors);
                require("errors", c.errors.is_some(), errors);
                let requests = c
                    .requests
                    .as_ref()
                    .map(|q| validate_query("requests", q, true, errors));
                let errs = c
                    .errors
                    .as_ref()
                    .map(|q| validate_query("errors", q, true, errors));
                let blue_max_error_rate = c.blue_max_error_rate.as_ref().map(|v| {
                    let x = *v.get_ref();
                    if !(x > 0.0 && x <= 1.0) {
                        errors.at(
                            v.span(),
                            format!("blue_max_error_rate must be in (0, 1], got {x}"),
                        );
                    }
                    x
                });
                Some(CheckKind::ErrorRate {
                    requests: requests?,
                    errors: errs?,
                    tolerance,
                    advance_tolerance,
                    overdispersion,
                    min_errors,
                    advance_max_rate,
                    blue_max_error_rate,
                })
                .filter(|_| ok)
            } else {
                require("buckets", c.buckets.is_some(), errors);
                require("edges", c.edges.is_some(), errors);
                let buckets = c.buckets.as_ref().map(|q| {
                    let text = validate_query("buckets", q, true, errors);
                    if !groups_by_le(&text) {
                        errors.at(
                            q.span(),
                            "buckets must keep the `le` label, e.g. sum by (le) (increase(..._bucket{...}[{interval}]))",
                        );
                    }
                    text
                });
                let edges = c.edges.as_ref().map(|e| validate_edges(e, errors));
                Some(CheckKind::LatencyHistogram {
                    buckets: buckets?,
                    edges: edges?,
                    tolerance,
                    advance_tolerance,
                    overdispersion,
                    min_errors,
                    advance_max_rate,
                })
                .filter(|_| ok)
            }
        }
        RawCheckKind::Threshold => {
            require("query", c.query.is_some(), errors);
            let query = c
                .query
                .as_ref()
                .map(|q| validate_query("query", q, false, errors));
            let max = c.max.as_ref().map(|v| (*v.get_ref(), v.span()));
            let min = c.min.as_ref().map(|v| (*v.get_ref(), v.span()));
            for (name, bound) in [("max", max.clone()), ("min", min.clone())] {
                if let Some((x, span)) = bound.filter(|(x, _)| !x.is_finite()) {
                    errors.at(span, format!("{name} must be a finite number, got {x}"));
                }
            }
            match (&max, &min) {
                (None, None) => {
                    errors.at(
                        c.kind.span(),
                        "kind = \"threshold\" needs `max`, `min` or both",
                    );
                    ok = false;
                }
                (Some((hi, _)), Some((lo, span))) if lo >= hi => {
                    errors.at(span.clone(), format!("min ({lo}) must be below max ({hi})"));
                }
                _ => {}
            }
            let failures = match &c.failures {
                None => default_failures(),
                Some(f) => *f.get_ref(),
            };
            let failures = match u32::try_from(failures) {
                Ok(f) if f >= 1 => f,
                _ => {
                    if let Some(f) = &c.failures {
                        errors.at(
                            f.span(),
                            format!("failures must be a positive count, got {failures}"),
                        );
                    }
                    1
                }
            };
            let min_green_requests = match &c.min_green_requests {
                None => default_guard_min_green_requests(),
                Some(v) => match u64::try_from(*v.get_ref()) {
                    Ok(n) => n,
                    Err(_) => {
                        errors.at(
                            v.span(),
                            format!(
                                "min_green_requests must be a count (0 or more), got {}",
                                v.get_ref()
                            ),
                        );
                        0
                    }
                },
            };
            Some(CheckKind::Threshold {
                query: query?,
                max: max.map(|(x, _)| x),
                min: min.map(|(x, _)| x),
                failures,
                min_green_requests,
            })
            .filter(|_| ok)
        }
    }
}

fn validate_alerts(
    raw: &[Spanned<String>],
    channels: Option<&[String]>,
    errors: &mut Errors<'_>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for alert in raw {
        let name = alert.get_ref();
        if names.contains(name) {
            errors.at(
                alert.span(),
                format!("alert channel {name:?} is listed twice"),
            );
            continue;
        }
        if let Some(channels) = channels {
            if !channels.contains(name) {
                let known = if channels.is_empty() {
                    "the daemon config declares no [[alert]] channels".to_string()
                } else {
                    format!("known: {}", channels.join(", "))
                };
                errors.at(
                    alert.span(),
                    format!("unknown alert channel {name:?} ({known})"),
                );
            }
        }
        names.push(name.clone());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
api = "checkout"
alerts = ["oncall"]

[traffic]
consul_keys = { blue = "haproxy/checkout/weights/blue", green = "haproxy/checkout/weights/green" }

[schedule]
timezone = "Europe/Paris"
windows = ["22:00-06:00"]

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}"}[{interval}]))'
errors = 'sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}",code="5xx"}[{interval}]))'

[[check]]
name = "latency"
kind = "latency_histogram"
buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{service="checkout",cluster="{color}"}[{interval}]))'
edges = ["0.25", 1]

[[check]]
name = "p99"
kind = "threshold"
query = 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{cluster="{color}"}[{interval}])))'
max = 0.5
"#;

    fn errors_of(text: &str) -> Vec<String> {
        match Policy::from_toml(text, Path::new("p.toml"), Some(&["oncall".to_string()])) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// `GOOD` with `from` replaced by `to` (which must occur).
    fn variant(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from:?} not in the sample");
        GOOD.replacen(from, to, 1)
    }

    #[test]
    fn good_policy_gets_defaults() {
        let p = Policy::from_toml(GOOD, Path::new("p.toml"), Some(&["oncall".into()])).unwrap();
        assert_eq!(p.api, "checkout");
        assert_eq!(p.interval, Duration::from_secs(60));
        assert_eq!(p.steps, vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0]);
        assert_eq!(p.min_step_duration, Duration::from_secs(600));
        assert_eq!(p.min_green_requests_per_step, 2000);
        assert_eq!(p.max_step_duration, None);
        assert_eq!(p.advance_on_dwell_below, None);
        assert_eq!(p.on_max_step_duration, MaxStepAction::Hold);
        assert_eq!(p.false_rollback_rate, 0.01);
        assert_eq!(p.false_advance_rate, 0.05);
        assert_eq!(p.warmup_intervals, 1);
        assert!(p.auto_start);
        assert_eq!(p.no_data_alert_after, Duration::from_secs(600));
        assert_eq!(p.stuck_alert_after, Duration::from_secs(3 * 3600));
        assert_eq!(p.traffic.total_weight, 100);
        assert_eq!(p.source.as_deref(), Some(Path::new("p.toml")));
        let s = p.schedule.as_ref().unwrap();
        assert_eq!(
            s.windows,
            vec![TimeWindow {
                start_minute: 22 * 60,
                end_minute: 6 * 60
            }]
        );
        assert_eq!(p.checks.len(), 3);
        match &p.checks[0].kind {
            CheckKind::ErrorRate {
                tolerance,
                advance_tolerance,
                overdispersion,
                min_errors,
                blue_max_error_rate,
                ..
            } => {
                assert_eq!(
                    (*tolerance, *advance_tolerance, *overdispersion, *min_errors),
                    (0.2, 0.5, 1.0, 5)
                );
                assert_eq!(*blue_max_error_rate, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        match &p.checks[1].kind {
            CheckKind::LatencyHistogram { edges, .. } => assert_eq!(edges, &vec![0.25, 1.0]),
            other => panic!("unexpected {other:?}"),
        }
        match &p.checks[2].kind {
            CheckKind::Threshold { failures, max, .. } => {
                assert_eq!((*failures, *max), (3, Some(0.5)))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(p.alerts, vec!["oncall".to_string()]);
        // Three statistical streams: one error rate plus two latency edges.
        assert!((p.alpha_per_stream() - 0.01 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn syntax_error_is_located() {
        let e = errors_of("api = \"x\"\nsteps = [1, 5\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p.toml:2:"), "{e:?}");
    }

    #[test]
    fn unknown_key_points_at_the_key() {
        let e = errors_of(&variant("alerts = [", "intervall = \"1m\"\nalerts = ["));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("p.toml:3:1: "), "{e:?}");
        assert!(e[0].contains("intervall"), "{e:?}");
    }

    #[test]
    fn every_semantic_error_is_reported_at_once() {
        let text = variant(
            "alerts = [",
            "steps = [5, 1, 100]\nfalse_rollback_rate = 0.7\nalerts = [",
        )
        .replacen("\"22:00-06:00\"", "\"22:00-22:00\"", 1)
        .replacen("\"0.25\"", "\"+Inf\"", 1);
        let e = errors_of(&text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("p.toml:3:13: steps must be strictly increasing"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.toml:4:23: false_rollback_rate"),
            "{e:?}"
        );
        assert!(e[2].starts_with("p.toml:12:12: time window"), "{e:?}");
        assert!(
            e[3].starts_with("p.toml:24:10: edge \"+Inf\" is the +Inf bucket"),
            "{e:?}"
        );
    }

    #[test]
    fn steps_must_end_at_100_and_give_distinct_weights() {
        let e = errors_of(&variant("alerts = [", "steps = [1, 50]\nalerts = ["));
        assert_eq!(e, vec!["p.toml:3:13: the last step must be 100, got 50"]);
        let e = errors_of(
            &variant("alerts = [", "steps = [1, 10, 14, 100]\nalerts = [").replacen(
                "[traffic]\n",
                "[traffic]\ntotal_weight = 10\n",
                1,
            ),
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:3:10: step 1% gives green weight 0"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.toml:3:17: step 14% gives the same"),
            "{e:?}"
        );
    }

    #[test]
    fn advance_on_dwell_below_is_a_share() {
        let e = errors_of(&variant(
            "alerts = [",
            "advance_on_dwell_below = 0\nalerts = [",
        ));
        assert_eq!(
            e,
            vec!["p.toml:3:26: advance_on_dwell_below must be a share in (0, 100] percent, got 0"]
        );
        let p = Policy::from_toml(
            &variant("alerts = [", "advance_on_dwell_below = 10\nalerts = ["),
            Path::new("p.toml"),
            Some(&["oncall".into()]),
        )
        .unwrap();
        assert!(p.is_probe_step(0) && p.is_probe_step(1) && !p.is_probe_step(2));
    }

    #[test]
    fn durations_are_checked() {
        let e = errors_of(&variant(
            "alerts = [",
            "interval = \"5m\"\nmin_step_duration = \"2m\"\nmax_step_duration = \"1m\"\nstuck_alert_after = \"0s\"\nalerts = [",
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:4:21: min_step_duration (2m) must be at least interval (5m)")
        );
        assert!(e[1].starts_with("p.toml:5:21: max_step_duration"));
        assert!(e[2].starts_with("p.toml:6:21: stuck_alert_after must be greater than zero"));
        let e = errors_of(&variant(
            "alerts = [",
            "interval = \"1 fortnight\"\nalerts = [",
        ));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p.toml:3:12: invalid duration"), "{e:?}");
        // A default min_step_duration below an explicit interval points at the interval.
        let e = errors_of(&variant("alerts = [", "interval = \"20m\"\nalerts = ["));
        assert!(
            e[0].starts_with("p.toml:3:12: min_step_duration (10m)"),
            "{e:?}"
        );
    }

    #[test]
    fn placeholders_are_told_apart_from_label_matchers() {
        assert_eq!(
            placeholders(r#"sum(x{a="b",server="{color}"}[{interval}]) by (le) {api}"#)
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>(),
            vec!["color", "interval", "api"]
        );
        assert!(placeholders(r#"x{code=~"5.{2}"} + y{} + z{job="a"}"#).is_empty());
        let e = errors_of(&variant(
            "server=\"{color}\"}[{interval}]",
            "server=\"{colour}\"}[{interval}]",
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:15:12: requests must contain {color}"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.toml:15:91: unknown placeholder {colour}"),
            "{e:?}"
        );
    }

    #[test]
    fn count_queries_need_interval_and_buckets_need_le() {
        let e = errors_of(&variant("(increase(http_request_duration_seconds_bucket{service=\"checkout\",cluster=\"{color}\"}[{interval}]))", "(increase(http_request_duration_seconds_bucket{service=\"checkout\",cluster=\"{color}\"}[5m]))"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:21:11: buckets counts events per interval"),
            "{e:?}"
        );
        let e = errors_of(&variant("sum by (le) (increase", "sum(increase"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("`le` label"), "{e:?}");
        assert!(groups_by_le("sum(rate(x[1m])) by (le)"));
        assert!(groups_by_le("sum by(job, le)(x)"));
        assert!(!groups_by_le("sum by (job) (x_bucket{le=\"1\"})"));
    }

    #[test]
    fn edges_must_be_finite_positive_and_ascending() {
        for (edges, needle) in [
            ("[\"1\", \"0.25\"]", "strictly ascending"),
            ("[\"abc\"]", "finite positive"),
            ("[\"-1\"]", "finite positive"),
            ("[\"+Inf\"]", "+Inf bucket"),
            ("[]", "at least one"),
        ] {
            let e = errors_of(&variant("[\"0.25\", 1]", edges));
            assert_eq!(e.len(), 1, "{edges}: {e:?}");
            assert!(e[0].starts_with("p.toml:22:"), "{e:?}");
            assert!(e[0].contains(needle), "{e:?}");
        }
    }

    #[test]
    fn schedule_time_zone_and_windows() {
        let e = errors_of(&variant("Europe/Paris", "Mars/Olympus"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:9:12: unknown time zone \"Mars/Olympus\""),
            "{e:?}"
        );
        for bad in ["25:00-06:00", "22:00", "22:0-06:00", "22:00-22:00"] {
            let e = errors_of(&variant("22:00-06:00", bad));
            assert_eq!(e.len(), 1, "{bad}");
            assert!(e[0].starts_with("p.toml:10:12: time window"), "{e:?}");
        }
    }

    #[test]
    fn check_kinds_accept_only_their_fields() {
        let e = errors_of(&variant("max = 0.5", "max = 0.5\nedges = [1]"));
        assert_eq!(
            e,
            vec!["p.toml:29:9: `edges` does not apply to kind = \"threshold\""]
        );
        let e = errors_of(&variant("max = 0.5", "failures = 0"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("p.toml:26:8: kind = \"threshold\" needs `max`, `min` or both"));
        assert!(e[1].starts_with("p.toml:28:12: failures must be a positive count"));
        let e = errors_of(&variant("kind = \"error_rate\"", "kind = \"error-rate\""));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:14:8: unknown variant `error-rate`"),
            "{e:?}"
        );
    }

    #[test]
    fn statistical_fields_are_checked() {
        let e = errors_of(&variant(
            "[[check]]\nname = \"latency\"",
            "tolerance = -0.1\noverdispersion = 0.5\nblue_max_error_rate = 2\n\n[[check]]\nname = \"latency\"",
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("p.toml:18:13: tolerance must be >= 0"));
        assert!(e[1].starts_with("p.toml:19:18: overdispersion must be >= 1"));
        assert!(e[2].starts_with("p.toml:20:23: blue_max_error_rate must be in (0, 1]"));
    }

    #[test]
    fn check_names_unique_and_a_statistical_check_required() {
        let e = errors_of(&variant("name = \"latency\"", "name = \"errors\""));
        assert_eq!(
            e,
            vec!["p.toml:19:8: duplicate check name \"errors\" (first defined at 13:8)"]
        );
        let only_threshold = GOOD
            .split("[[check]]")
            .enumerate()
            .filter(|(i, _)| *i == 0 || *i == 3)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join("[[check]]");
        let e = errors_of(&only_threshold);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("p.toml:2:7: the policy needs at least one [[check]]"));
    }

    #[test]
    fn api_name_and_traffic_target() {
        let e = errors_of(&variant("api = \"checkout\"", "api = \"check out\""));
        assert!(e[0].starts_with("p.toml:2:7: api name"), "{e:?}");
        let e = errors_of(&variant(
            "consul_keys = {",
            "haproxy = { backend = \"b\", blue = \"blue\", green = \"green\" }\nconsul_keys = {",
        ));
        assert_eq!(
            e,
            vec!["p.toml:6:11: set either traffic.consul_keys or traffic.haproxy, not both"]
        );
        let e = errors_of(&variant("haproxy/checkout/weights/green", "/haproxy/x"));
        assert_eq!(
            e,
            vec!["p.toml:6:65: Consul key for green must not start with '/'"]
        );
        let e = errors_of(&variant(
            "haproxy/checkout/weights/green",
            "weights/green.json",
        ));
        assert!(e[0].contains("must not end in \".json\""), "{e:?}");
        let e = errors_of(&variant("haproxy/checkout/weights/green", "w/g r"));
        assert!(e[0].contains("contains ' '"), "{e:?}");
        let e = errors_of(&variant("[traffic]\n", "[traffic]\ntotal_weight = 300\n"));
        assert!(
            e[0].starts_with("p.toml:6:16: total_weight must be between 1 and 256"),
            "{e:?}"
        );
    }

    #[test]
    fn haproxy_backend_names_the_servers_sync_mirrors_consul_keys_to() {
        let keys = "consul_keys = { blue = \"haproxy/checkout/weights/blue\", green = \"haproxy/checkout/weights/green\" }\n";
        let with = variant(
            keys,
            &format!("{keys}haproxy_backend = {{ backend = \"api_checkout\", blue = \"blue\", green = \"green\" }}\n"),
        );
        let p = Policy::from_toml(&with, Path::new("p.toml"), None).unwrap();
        assert_eq!(
            p.traffic.haproxy_backend,
            Some(HaproxyServers {
                backend: "api_checkout".into(),
                blue: "blue".into(),
                green: "green".into()
            })
        );
        let p = Policy::from_toml(GOOD, Path::new("p.toml"), None).unwrap();
        assert_eq!(p.traffic.haproxy_backend, None);

        let e = errors_of(&variant(
            keys,
            &format!("{keys}haproxy_backend = {{ backend = \"api checkout\", blue = \"b\", green = \"b\" }}\n"),
        ));
        assert_eq!(
            e,
            vec!["p.toml:7:31: HAProxy backend name \"api checkout\" must be non-empty and use only letters, digits, '-', '_', '.' and ':'"]
        );
        let e = errors_of(&variant(
            keys,
            &format!(
                "{keys}haproxy_backend = {{ backend = \"b\", blue = \"x\", green = \"x\" }}\n"
            ),
        ));
        assert_eq!(
            e,
            vec!["p.toml:7:56: blue and green must be different servers"]
        );
        let e = errors_of(&variant(
            keys,
            "haproxy = { backend = \"b\", blue = \"blue\", green = \"green\" }\nhaproxy_backend = { backend = \"b\", blue = \"blue\", green = \"green\" }\n",
        ));
        assert_eq!(
            e,
            vec!["p.toml:7:19: traffic.haproxy_backend only applies with traffic.consul_keys"]
        );
    }

    #[test]
    fn alert_channels_must_exist_when_known() {
        let e = errors_of(&variant("[\"oncall\"]", "[\"oncall\", \"pager\"]"));
        assert_eq!(
            e,
            vec!["p.toml:3:21: unknown alert channel \"pager\" (known: oncall)"]
        );
        let text = variant("[\"oncall\"]", "[\"pager\"]");
        assert!(Policy::from_toml(&text, Path::new("p.toml"), None).is_ok());
    }

    #[test]
    fn alert_routes_choose_channels_per_event() {
        let text = GOOD.replacen(
            "alerts = [\"oncall\"]\n",
            "alerts = [\"oncall\"]\n\n[alert_routes]\npromoted = []\nrollback = [\"oncall\", \"oncall\"]\nstuk = [\"oncall\"]\n",
            1,
        );
        let e = errors_of(&text);
        assert!(
            e.iter().any(|m| m.contains("unknown field `stuk`")),
            "{e:?}"
        );
        let text = GOOD.replacen(
            "alerts = [\"oncall\"]\n",
            "alerts = [\"oncall\"]\n\n[alert_routes]\npromoted = []\nrollback = [\"oncall\", \"pager\"]\n",
            1,
        );
        let channels = vec!["oncall".to_string(), "pager".to_string()];
        let p = Policy::from_toml(&text, Path::new("p.toml"), Some(&channels)).unwrap();
        assert_eq!(p.alert_channels("rollback"), ["oncall", "pager"]);
        assert!(p.alert_channels("promoted").is_empty());
        assert_eq!(p.alert_channels("stuck"), ["oncall"]);
        let e = Policy::from_toml(&text, Path::new("p.toml"), Some(&channels[..1])).unwrap_err();
        assert!(
            e[0].message.contains("unknown alert channel \"pager\""),
            "{e:?}"
        );
    }

    #[test]
    fn alerts_after_a_check_table_get_a_hint() {
        let text = format!(
            "{}alerts = [\"oncall\"]\n",
            GOOD.replacen("alerts = [\"oncall\"]\n", "", 1)
        );
        let e = errors_of(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("belongs to the [[check]] table above it"),
            "{e:?}"
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 2), (1, 2));
    }
}
