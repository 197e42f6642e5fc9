//! Query validation: placeholders and PromQL.

use toml::Spanned;

use super::located::Errors;

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
pub(super) fn validate_query(
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
pub(super) fn groups_by_le(query: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::super::fixture::{errors_of, variant};
    use super::*;

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
}
