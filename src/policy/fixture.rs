//! A complete policy for unit tests, and helpers to vary it and collect its errors.

use std::path::Path;

use super::{Config, Policy};

pub(super) const GOOD: &str = r#"
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

pub(super) fn errors_of(text: &str) -> Vec<String> {
    match Policy::from_toml(text, Path::new("p.toml"), Some(&["oncall".to_string()])) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// `text` loaded as `p.toml` (no alert channels declared), or its errors one string each.
pub(super) fn load(text: &str) -> Result<Policy, Vec<String>> {
    Policy::from_toml(text, Path::new("p.toml"), None)
        .map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

/// The errors of `base` with `from` replaced by `to` (which must occur); it must be refused.
pub(super) fn refused(base: &str, from: &str, to: &str) -> Vec<String> {
    assert!(base.contains(from), "{from}");
    load(&base.replacen(from, to, 1)).expect_err("must be refused")
}

/// `GOOD` with `from` replaced by `to` (which must occur).
pub(super) fn variant(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in the sample");
    GOOD.replacen(from, to, 1)
}

/// The errors of the daemon config `text` (read as `conf/g.toml`), one string each.
pub(super) fn config_errors_of(text: &str) -> Vec<String> {
    match Config::from_toml(text, Path::new("conf/g.toml")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}
