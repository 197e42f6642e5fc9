//! What an alert says: the event kinds, their severities, and links to graph the queries.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What happened to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Green was sent back to 0 % because the evidence says it is worse than blue.
    Rollback,
    /// Someone changed the weights by hand; greenlight paused the API.
    ManualOverride,
    /// The rollout was paused.
    Paused,
    /// Metrics have been missing or unusable for too long; weights are frozen.
    MetricsUnavailable,
    /// No step progress for too long.
    Stuck,
    /// Green reached 100 %.
    Promoted,
    /// greenlight itself failed (Consul, HAProxy, disk…).
    InternalError,
    /// Green stopped reporting metrics while blue still does (crashed or not scraped).
    GreenDataMissing,
    /// Green does not receive the share of requests its weight configures.
    TrafficSplitMismatch,
    /// The rollout waits at a step for a human to approve the next one.
    ApprovalNeeded,
    /// A human acted on the rollout (start, pause, approve…); sent only where routed.
    Audit,
    /// A migration campaign started, finished a wave, stopped or finished (its `event` field
    /// says which); sent to the campaign's own channels.
    Campaign,
    /// A breach during the bake while the previous stable colour is not kept warm: nothing
    /// rolled back.
    BakeBreach,
    /// The cluster breaker of a cluster tripped (critical) or was reset (its resolution): every
    /// rollout onto the cluster holds or rolls back, and campaigns touching it stop.
    Breaker,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 14] = [
        EventKind::Rollback,
        EventKind::ManualOverride,
        EventKind::Paused,
        EventKind::MetricsUnavailable,
        EventKind::Stuck,
        EventKind::Promoted,
        EventKind::InternalError,
        EventKind::GreenDataMissing,
        EventKind::TrafficSplitMismatch,
        EventKind::ApprovalNeeded,
        EventKind::Audit,
        EventKind::Campaign,
        EventKind::BakeBreach,
        EventKind::Breaker,
    ];

    /// The severity an event of this kind carries.
    pub fn severity(self) -> Severity {
        match self {
            EventKind::Rollback
            | EventKind::GreenDataMissing
            | EventKind::BakeBreach
            | EventKind::Breaker => Severity::Critical,
            EventKind::ManualOverride
            | EventKind::TrafficSplitMismatch
            | EventKind::Paused
            | EventKind::MetricsUnavailable
            | EventKind::Stuck
            | EventKind::InternalError
            | EventKind::ApprovalNeeded => Severity::Warning,
            EventKind::Promoted | EventKind::Audit | EventKind::Campaign => Severity::Info,
        }
    }

    /// snake_case name, as serialised and as used in dedup keys.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Rollback => "rollback",
            EventKind::ManualOverride => "manual_override",
            EventKind::Paused => "paused",
            EventKind::MetricsUnavailable => "metrics_unavailable",
            EventKind::Stuck => "stuck",
            EventKind::Promoted => "promoted",
            EventKind::InternalError => "internal_error",
            EventKind::GreenDataMissing => "green_data_missing",
            EventKind::TrafficSplitMismatch => "traffic_split_mismatch",
            EventKind::ApprovalNeeded => "approval_needed",
            EventKind::Audit => "audit",
            EventKind::Campaign => "campaign",
            EventKind::BakeBreach => "bake_breach",
            EventKind::Breaker => "breaker",
        }
    }

    /// The Alertmanager `alertname` label: `Greenlight` followed by the kind in CamelCase.
    pub fn alertname(self) -> &'static str {
        match self {
            EventKind::Rollback => "GreenlightRollback",
            EventKind::ManualOverride => "GreenlightManualOverride",
            EventKind::Paused => "GreenlightPaused",
            EventKind::MetricsUnavailable => "GreenlightMetricsUnavailable",
            EventKind::Stuck => "GreenlightStuck",
            EventKind::Promoted => "GreenlightPromoted",
            EventKind::InternalError => "GreenlightInternalError",
            EventKind::GreenDataMissing => "GreenlightGreenDataMissing",
            EventKind::TrafficSplitMismatch => "GreenlightTrafficSplitMismatch",
            EventKind::ApprovalNeeded => "GreenlightApprovalNeeded",
            EventKind::Audit => "GreenlightAudit",
            EventKind::Campaign => "GreenlightCampaign",
            EventKind::BakeBreach => "GreenlightBakeBreach",
            EventKind::Breaker => "GreenlightClusterBreaker",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an event is; the values match the usual Alertmanager `severity` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert: what happened to which API, why, with the numbers behind it.
///
/// `key` identifies the event for deduplication and resolution: the same key is the same alert
/// (e.g. `checkout/rollback/<rollout id>`); a later event with the same key and `resolved = true`
/// resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub key: String,
    pub api: String,
    pub kind: EventKind,
    pub severity: Severity,
    /// One line.
    pub summary: String,
    /// Multi-line human explanation.
    pub description: String,
    /// The numbers behind the decision (weights before/after, step, requests, errors and rates per
    /// colour, statistic, threshold…), already formatted.
    pub fields: BTreeMap<String, String>,
    /// PromQL queries that show the problem.
    pub queries: Vec<String>,
    /// A link to look at (e.g. a vmui graph of `queries`).
    pub link: Option<String>,
    /// When it happened (or, for a resolution, when it ended).
    pub at: Timestamp,
    pub resolved: bool,
}

impl AlertEvent {
    /// A firing event with key `<api>/<kind>/<instance>` (instance: e.g. the rollout id) and the
    /// kind's severity; the rest is filled in with the `with_*` methods.
    pub fn new(
        api: impl Into<String>,
        kind: EventKind,
        instance: &str,
        summary: impl Into<String>,
        at: Timestamp,
    ) -> AlertEvent {
        let api = api.into();
        AlertEvent {
            key: format!("{api}/{kind}/{instance}"),
            api,
            kind,
            severity: kind.severity(),
            summary: summary.into(),
            description: String::new(),
            fields: BTreeMap::new(),
            queries: Vec::new(),
            link: None,
            at,
            resolved: false,
        }
    }

    /// Critical: the stored state of `api` (at `key`, ModifyIndex `index`) cannot be decoded, so
    /// greenlight cannot act on that API; the weights stay where they are. One alert per stored
    /// version (the key names the index).
    pub fn state_undecodable(
        api: &str,
        key: &str,
        index: u64,
        reason: &str,
        at: Timestamp,
    ) -> AlertEvent {
        let mut e = AlertEvent::new(
            api,
            EventKind::InternalError,
            &format!("state-undecodable-{index}"),
            format!("greenlight cannot read the state of {api}; it no longer acts on it"),
            at,
        )
        .with_description(format!(
            "The state at {key} (index {index}) cannot be decoded: {reason}\n\
             The weights stay as they are. `greenlight rollback {api} --now` sends all traffic \
             to blue, keeps these bytes under another key and writes a fresh rolled-back state."
        ))
        .with_field("key", key)
        .with_field("index", index)
        .with_field("reason", reason);
        e.severity = Severity::Critical;
        e
    }

    pub fn with_description(mut self, description: impl Into<String>) -> AlertEvent {
        self.description = description.into();
        self
    }

    pub fn with_field(mut self, name: impl Into<String>, value: impl ToString) -> AlertEvent {
        self.fields.insert(name.into(), value.to_string());
        self
    }

    pub fn with_query(mut self, query: impl Into<String>) -> AlertEvent {
        self.queries.push(query.into());
        self
    }

    pub fn with_link(mut self, link: impl Into<String>) -> AlertEvent {
        self.link = Some(link.into());
        self
    }

    /// The resolution of this event: same key, `resolved = true`, `at` = when it ended.
    pub fn resolve(&self, at: Timestamp) -> AlertEvent {
        AlertEvent {
            resolved: true,
            at,
            ..self.clone()
        }
    }
}

/// A VictoriaMetrics UI (vmui) link graphing `queries` (one panel each, `g0`, `g1`, …) over
/// `[start, end]`.
///
/// Format: `{base}/vmui/#/?g0.expr=<q>&g0.range_input=<duration>&g0.end_input=<UTC
/// YYYY-MM-DDTHH:MM:SS>&g0.relative_time=none&g0.tab=0&g1.expr=…`, every value percent-encoded
/// (everything but `A-Z a-z 0-9 - . _ ~`). `base_url` is the VictoriaMetrics root URL; a trailing
/// `/` or `/vmui` is accepted.
pub fn vmui_link(base_url: &str, queries: &[String], start: Timestamp, end: Timestamp) -> String {
    let mut base = base_url.trim_end_matches('/');
    base = base.strip_suffix("/vmui").unwrap_or(base);
    let (start, end) = if start <= end {
        (start, end)
    } else {
        (end, start)
    };
    let span = end.duration_since(start);
    let secs = (span.as_secs() + i64::from(span.subsec_nanos() > 0)).max(1);
    let range = compact_duration(secs as u64);
    let end_input = end.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let mut params = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        params.push(format!("g{i}.expr={}", percent_encode(q)));
        params.push(format!("g{i}.range_input={}", percent_encode(&range)));
        params.push(format!("g{i}.end_input={}", percent_encode(&end_input)));
        params.push(format!("g{i}.relative_time=none"));
        params.push(format!("g{i}.tab=0"));
    }
    format!("{base}/vmui/#/?{}", params.join("&"))
}

/// `5400` → `1h30m`, `61` → `1m1s`, `86400` → `24h`.
fn compact_duration(mut secs: u64) -> String {
    let mut out = String::new();
    let h = secs / 3600;
    secs %= 3600;
    let m = secs / 60;
    let s = secs % 60;
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Percent-encodes every byte outside RFC 3986's unreserved set (like JavaScript's
/// `encodeURIComponent`, but also encoding `!'()*`).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn rollback_is_critical_and_promoted_is_info() {
        assert_eq!(EventKind::Rollback.severity(), Severity::Critical);
        assert_eq!(EventKind::Promoted.severity(), Severity::Info);
        for kind in [
            EventKind::ManualOverride,
            EventKind::Paused,
            EventKind::MetricsUnavailable,
            EventKind::Stuck,
            EventKind::InternalError,
        ] {
            assert_eq!(kind.severity(), Severity::Warning, "{kind}");
        }
    }

    #[test]
    fn alertnames_are_greenlight_camel_case() {
        assert_eq!(
            EventKind::MetricsUnavailable.alertname(),
            "GreenlightMetricsUnavailable"
        );
        for kind in EventKind::ALL {
            let name = kind.alertname();
            assert!(name.starts_with("Greenlight"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
        }
    }

    #[test]
    fn new_builds_the_dedup_key_and_resolve_keeps_it() {
        let e = AlertEvent::new(
            "checkout",
            EventKind::Rollback,
            "r42",
            "x",
            ts("2026-01-01T00:00:00Z"),
        );
        assert_eq!(e.key, "checkout/rollback/r42");
        assert_eq!(e.severity, Severity::Critical);
        let r = e.resolve(ts("2026-01-01T01:00:00Z"));
        assert_eq!(r.key, e.key);
        assert!(r.resolved && !e.resolved);
        assert_eq!(r.at, ts("2026-01-01T01:00:00Z"));
    }

    #[test]
    fn an_undecodable_state_is_a_critical_alert_keyed_by_its_index() {
        let e = AlertEvent::state_undecodable(
            "checkout",
            "greenlight/state/checkout",
            42,
            "at history[3].evidence[0]: invalid type: null, expected f64",
            ts("2026-01-01T00:00:00Z"),
        );
        assert_eq!(e.severity, Severity::Critical);
        assert_eq!(e.key, "checkout/internal_error/state-undecodable-42");
        assert!(
            e.description.contains("rollback checkout --now"),
            "{}",
            e.description
        );
        assert_eq!(e.fields["index"], "42");
    }

    #[test]
    fn event_round_trips_through_json() {
        let e = AlertEvent::new(
            "checkout",
            EventKind::ManualOverride,
            "r1",
            "weights changed by hand",
            ts("2026-03-04T05:06:07.25Z"),
        )
        .with_description("line one\nline two")
        .with_field("green_weight_before", 10)
        .with_query("sum(rate(x[1m]))")
        .with_link("http://vm:8428/vmui/");
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"manual_override""#), "{json}");
        assert!(json.contains(r#""severity":"warning""#), "{json}");
        let back: AlertEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn vmui_link_encodes_each_query_and_the_window() {
        let queries = vec![
            r#"sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="green",code="5xx"}[1m]))"#.to_string(),
            "a + b / c & d # e".to_string(),
        ];
        let link = vmui_link(
            "http://vm.example:8428/",
            &queries,
            ts("2026-11-27T04:30:00Z"),
            ts("2026-11-27T06:00:00Z"),
        );
        let expected_q0 = "sum%28increase%28haproxy_server_http_responses_total%7Bproxy%3D%22api_checkout%22%2Cserver%3D%22green%22%2Ccode%3D%225xx%22%7D%5B1m%5D%29%29";
        assert_eq!(
            link,
            format!(
                "http://vm.example:8428/vmui/#/?g0.expr={expected_q0}&g0.range_input=1h30m\
                 &g0.end_input=2026-11-27T06%3A00%3A00&g0.relative_time=none&g0.tab=0\
                 &g1.expr=a%20%2B%20b%20%2F%20c%20%26%20d%20%23%20e&g1.range_input=1h30m\
                 &g1.end_input=2026-11-27T06%3A00%3A00&g1.relative_time=none&g1.tab=0"
            )
        );
        // The fragment has no raw characters that would split or end a parameter.
        let fragment = link.split_once("#/?").unwrap().1;
        for param in fragment.split('&') {
            let (_, value) = param.split_once('=').unwrap();
            assert!(!value.contains(['&', '#', '=', ' ', '+', '"']), "{value}");
        }
    }

    #[test]
    fn vmui_link_accepts_a_vmui_base_and_short_windows() {
        let link = vmui_link(
            "http://vm:8428/vmui",
            &["up".to_string()],
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-01T00:00:00.5Z"),
        );
        assert!(
            link.starts_with("http://vm:8428/vmui/#/?g0.expr=up&"),
            "{link}"
        );
        assert!(link.contains("g0.range_input=1s&"), "{link}");
        assert_eq!(compact_duration(61), "1m1s");
        assert_eq!(compact_duration(86400), "24h");
    }

    #[test]
    fn percent_encoding_handles_utf8() {
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
    }
}
