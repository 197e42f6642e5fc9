//! Query templates: `{color}`, `{cohort}`, `{interval}` and `{api}` placeholders in a policy's
//! PromQL.

use std::time::Duration;

use crate::policy::Side;

/// Substitutes the placeholders of `template` in one pass (a substituted value is never
/// re-expanded); any other `{…}`, such as a label matcher, is left alone.
///
/// `{color}` and `{cohort}` become the side's values ([`crate::policy::Policy::sides`]),
/// `{interval}` the window length as a PromQL duration (see [`promql_duration`]). Values are
/// inserted verbatim: server names, cohorts and API names are plain identifiers.
pub fn render(template: &str, side: &Side, window: Duration, api: &str) -> String {
    let color = side.color.as_str();
    let interval = promql_duration(window);
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let (value, len) = if tail.starts_with("{color}") {
            (color, "{color}".len())
        } else if tail.starts_with("{cohort}") {
            (side.cohort, "{cohort}".len())
        } else if tail.starts_with("{interval}") {
            (interval.as_str(), "{interval}".len())
        } else if tail.starts_with("{api}") {
            (api, "{api}".len())
        } else {
            ("{", 1)
        };
        out.push_str(value);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

/// A duration as PromQL writes it: whole seconds as `60s`, otherwise milliseconds (`1500ms`).
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(color: &str, cohort: &'static str) -> Side {
        Side {
            color: color.into(),
            cohort,
        }
    }

    #[test]
    fn substitutes_every_placeholder_and_keeps_matchers() {
        let t = r#"sum(increase(haproxy_server_http_responses_total{proxy="{api}",server="{color}",code="5xx"}[{interval}]))"#;
        assert_eq!(
            render(t, &side("green", ""), Duration::from_secs(60), "checkout"),
            r#"sum(increase(haproxy_server_http_responses_total{proxy="checkout",server="green",code="5xx"}[60s]))"#
        );
    }

    #[test]
    fn repeated_placeholders_and_no_reexpansion() {
        let t = "a{x=\"{color}\"} / b{y=\"{color}\"}[{interval}] {unknown}";
        assert_eq!(
            render(t, &side("blue", ""), Duration::from_secs(300), "{color}"),
            "a{x=\"blue\"} / b{y=\"blue\"}[300s] {unknown}"
        );
        assert_eq!(
            render("{api}", &side("blue", ""), Duration::ZERO, "{color}"),
            "{color}"
        );
    }

    #[test]
    fn cohort_becomes_the_sides_cohort() {
        let t =
            r#"sum(increase(h_bucket{server="{color}",cohort="{cohort}"}[{interval}])) {cohort}x"#;
        assert_eq!(
            render(
                t,
                &side("green_pinned", "pinned"),
                Duration::from_secs(60),
                "a"
            ),
            r#"sum(increase(h_bucket{server="green_pinned",cohort="pinned"}[60s])) pinnedx"#
        );
        assert_eq!(
            render("{cohort}", &side("{cohort}", "blue"), Duration::ZERO, "a"),
            "blue"
        );
        assert_eq!(
            render("{color}", &side("{cohort}", "blue"), Duration::ZERO, "a"),
            "{cohort}"
        );
    }

    #[test]
    fn durations_in_promql_units() {
        assert_eq!(promql_duration(Duration::from_secs(60)), "60s");
        assert_eq!(promql_duration(Duration::from_secs(3600)), "3600s");
        assert_eq!(promql_duration(Duration::from_millis(1500)), "1500ms");
        // Sub-millisecond parts are dropped.
        assert_eq!(promql_duration(Duration::from_micros(2_000_400)), "2s");
    }
}
