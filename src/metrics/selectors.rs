//! The series a PromQL query reads over a range, and the query for their newest sample (see
//! the freshness rules in [`super::observe`]).

use std::time::Duration;

use super::template::promql_duration;
use super::Backend;

/// The query returning the timestamp (seconds) of the newest sample of `selector`.
pub(super) fn freshness_query(backend: Backend, selector: &str, lookback: Duration) -> String {
    let lookback = promql_duration(lookback.max(Duration::from_secs(60)));
    match backend {
        Backend::VictoriaMetrics => format!("max(tlast_over_time({selector}[{lookback}]))"),
        Backend::Prometheus => format!(
            "max(timestamp({selector})) or max(max_over_time(timestamp({selector})[{lookback}:1m]))"
        ),
    }
}

/// The series selectors of `query` that are read over a range (`metric{…}[…]`, `{…}[…]`), in
/// order of appearance, without duplicates.
pub(super) fn range_selectors(query: &str) -> Vec<String> {
    let b = query.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i);
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' || c == b'{' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let mut end = i;
            let j = skip_ws(i);
            if j < b.len() && b[j] == b'{' {
                end = skip_braces(b, j);
                i = end;
            } else if start == i {
                i += 1;
                continue;
            }
            let k = skip_ws(end);
            if k < b.len() && b[k] == b'[' {
                let selector = query[start..end].to_string();
                if !out.contains(&selector) {
                    out.push(selector);
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Index just past the string literal starting at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// Index just past the `}` matching the `{` at `i`, skipping string literals.
fn skip_braces(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => j = skip_string(b, j),
            b'}' => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_selectors_of_typical_queries() {
        assert_eq!(
            range_selectors(
                r#"sum(increase(haproxy_server_http_responses_total{proxy="api",server="green",code="5xx"}[60s]))"#
            ),
            vec![r#"haproxy_server_http_responses_total{proxy="api",server="green",code="5xx"}"#]
        );
        assert_eq!(
            range_selectors(
                r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{service="checkout",cluster="green"}[60s])))"#
            ),
            vec![r#"http_request_duration_seconds_bucket{service="checkout",cluster="green"}"#]
        );
        assert_eq!(
            range_selectors("sum(rate(a[5m])) / sum(rate(b {x=\"}[\"} [5m])) + sum(rate(a[5m]))"),
            vec!["a".to_string(), "b {x=\"}[\"}".to_string()]
        );
        assert_eq!(
            range_selectors(r#"sum(increase({__name__="x",color="blue"}[1m] offset 1m))"#),
            vec![r#"{__name__="x",color="blue"}"#]
        );
        assert!(range_selectors("vector(1) * 1e3 + up").is_empty());
        assert!(range_selectors("max_over_time((a + b)[5m:1m])").is_empty());
    }

    #[test]
    fn freshness_queries_per_backend() {
        assert_eq!(
            freshness_query(
                Backend::VictoriaMetrics,
                "x{a=\"b\"}",
                Duration::from_secs(3600)
            ),
            "max(tlast_over_time(x{a=\"b\"}[3600s]))"
        );
        assert_eq!(
            freshness_query(Backend::Prometheus, "x", Duration::from_secs(3600)),
            "max(timestamp(x)) or max(max_over_time(timestamp(x)[3600s:1m]))"
        );
    }
}
