//! Reading greenlight's `/metrics` (Prometheus text format) in tests.

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};

use super::http;

/// Parses an exposition; panics with the text when it does not parse.
pub fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("/metrics does not parse ({e}):\n{text}"))
}

/// `GET /metrics` from a daemon listening on `listen`, parsed.
pub fn scrape(listen: SocketAddr) -> Scrape {
    let (code, body) = http(listen, "GET", "/metrics", b"").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    parse(&body)
}

/// The value of the first sample of `name` carrying every label of `labels`.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}
