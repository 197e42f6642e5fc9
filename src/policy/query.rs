//! Query validation: placeholders, then the query itself with a PromQL parser once they are
//! substituted.

use std::time::Duration;

use promql_parser::parser::{Expr, LabelModifier, VectorSelector};
use toml::Spanned;

use super::located::{shown, Errors};

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

const PLACEHOLDERS: [&str; 4] = ["color", "interval", "api", "cohort"];

/// What a query must measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueryKind {
    /// A count of events in the window: needs `{interval}`.
    Count,
    /// Histogram bucket counts in the window: needs `{interval}` and keeps the `le` label.
    Buckets,
    /// Any value (a threshold guard).
    Value,
}

/// What `{color}` becomes for parsing: an identifier, valid wherever a colour is.
const COLOR_MARKER: &str = "greenlightcolorplaceholder";
/// What `{cohort}` becomes for parsing.
const COHORT_MARKER: &str = "greenlightcohortplaceholder";
/// What `{interval}` becomes for parsing: a window no policy uses, recognisable in the tree.
const INTERVAL_MARKER: Duration = Duration::from_millis(5_555_555);

/// `query` with its placeholders replaced, in one pass, as the metrics client does at run time
/// (`{color}` and `{interval}` by the markers above, `{api}` by `api`).
fn substitute(query: &str, found: &[(&str, usize)], api: &str) -> String {
    let interval = format!("{}ms", INTERVAL_MARKER.as_millis());
    let mut out = String::with_capacity(query.len() + 32);
    let mut at = 0;
    for (name, index) in found {
        let value = match *name {
            "color" => COLOR_MARKER,
            "cohort" => COHORT_MARKER,
            "interval" => interval.as_str(),
            "api" => api,
            _ => continue,
        };
        out.push_str(&query[at..*index]);
        out.push_str(value);
        at = index + name.len() + 2;
    }
    out.push_str(&query[at..]);
    out
}

/// Checks a query: known placeholders, `{color}` present, valid PromQL once substituted,
/// `{color}` in every series selector (comments do not count), and what `kind` needs. In sticky
/// mode `{cohort}` is known too, and tells the sides apart as well as `{color}` does (blue's
/// requests are labelled `blue`, green's `random` or `pinned`).
pub(super) fn validate_query(
    field: &str,
    query: &Spanned<String>,
    kind: QueryKind,
    api: &str,
    sticky: bool,
    errors: &mut Errors<'_>,
) -> String {
    let q = query.get_ref();
    let found = placeholders(q);
    let mut unknown = false;
    for (name, index) in &found {
        if *name == "cohort" && !sticky {
            unknown = true;
            errors.in_string(
                query.span(),
                q,
                *index,
                "{cohort} only applies with traffic.mode = \"sticky\" (a weighted split has no cohorts)",
            );
        } else if !PLACEHOLDERS.contains(name) {
            unknown = true;
            let known = if sticky {
                "{color}, {cohort}, {interval}, {api}"
            } else {
                "{color}, {interval}, {api}"
            };
            errors.in_string(
                query.span(),
                q,
                *index,
                format!("unknown placeholder {{{name}}} in {field}; known: {known}"),
            );
        }
    }
    let sides_apart = |n: &str| n == "color" || (sticky && n == "cohort");
    if !found.iter().any(|(n, _)| sides_apart(n)) {
        let what = if sticky {
            "{color} or {cohort} (replaced by each side's server or cohort)"
        } else {
            "{color} (replaced by the blue or green selector value)"
        };
        errors.at(query.span(), format!("{field} must contain {what}"));
        return q.clone();
    }
    if unknown {
        return q.clone();
    }
    let expr = match promql_parser::parser::parse(&substitute(q, &found, api)) {
        Ok(expr) => expr,
        Err(e) => {
            let message = e
                .replace(COLOR_MARKER, "{color}")
                .replace(COHORT_MARKER, "{cohort}");
            errors.at(
                query.span(),
                format!("{field} is not valid PromQL: {}", message.trim()),
            );
            return q.clone();
        }
    };
    let mut tree = Tree::default();
    tree.walk(&expr);
    if tree.selectors.is_empty() {
        errors.at(
            query.span(),
            format!("{field} selects no series; it must select them by {{color}}"),
        );
    }
    let placeholder = if sticky {
        "{color} or {cohort}"
    } else {
        "{color}"
    };
    for selector in tree
        .selectors
        .iter()
        .filter(|s| !(s.uses_color || sticky && s.uses_cohort))
    {
        errors.at(
            query.span(),
            format!(
                "{field}: selector {} does not use {placeholder}, so blue and green would read \
                 the same series; put {placeholder} in every selector (comments do not count)",
                shown(&selector.text)
            ),
        );
    }
    if kind != QueryKind::Value && !tree.interval {
        errors.at(
            query.span(),
            format!(
                "{field} counts events per interval and must contain {{interval}}, e.g. \
                 increase(...[{{interval}}])"
            ),
        );
    }
    if kind == QueryKind::Buckets && !keeps_le(&expr) {
        errors.at(
            query.span(),
            format!(
                "{field} must keep the `le` label, e.g. sum by (le) (increase(..._bucket{{...}}[{{interval}}]))"
            ),
        );
    }
    q.clone()
}

/// One series selector of a parsed query.
struct Selector {
    /// As written, placeholders shown as such.
    text: String,
    uses_color: bool,
    uses_cohort: bool,
}

/// What a walk over a parsed query found.
#[derive(Default)]
struct Tree {
    selectors: Vec<Selector>,
    /// Some range (`[{interval}]`, or a subquery's) is the window.
    interval: bool,
}

impl Tree {
    fn selector(&mut self, vs: &VectorSelector) {
        let matchers = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        let uses = |marker: &str| {
            vs.name.as_deref().is_some_and(|n| n.contains(marker))
                || matchers
                    .clone()
                    .any(|m| m.name.contains(marker) || m.value.contains(marker))
        };
        self.selectors.push(Selector {
            text: vs
                .to_string()
                .replace(COLOR_MARKER, "{color}")
                .replace(COHORT_MARKER, "{cohort}"),
            uses_color: uses(COLOR_MARKER),
            uses_cohort: uses(COHORT_MARKER),
        });
    }

    fn walk(&mut self, expr: &Expr) {
        match expr {
            Expr::Aggregate(a) => {
                self.walk(&a.expr);
                if let Some(p) = &a.param {
                    self.walk(p);
                }
            }
            Expr::Unary(u) => self.walk(&u.expr),
            Expr::Binary(b) => {
                self.walk(&b.lhs);
                self.walk(&b.rhs);
            }
            Expr::Paren(p) => self.walk(&p.expr),
            Expr::Subquery(s) => {
                self.interval |= s.range == INTERVAL_MARKER;
                self.walk(&s.expr);
            }
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => {
                self.interval |= ms.range == INTERVAL_MARKER;
                self.selector(&ms.vs);
            }
            Expr::Call(c) => {
                for arg in &c.args.args {
                    self.walk(arg);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
}

/// Whether the result of `expr` still carries the `le` label of its series (as far as can be
/// told without data: a selector is assumed to have it).
fn keeps_le(expr: &Expr) -> bool {
    match expr {
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            let keeps_input_labels =
                matches!(op.as_str(), "topk" | "bottomk" | "limitk" | "limit_ratio");
            match &a.modifier {
                _ if keeps_input_labels => keeps_le(&a.expr),
                Some(LabelModifier::Include(labels)) => {
                    labels.labels.iter().any(|l| l == "le") && keeps_le(&a.expr)
                }
                Some(LabelModifier::Exclude(labels)) => {
                    !labels.labels.iter().any(|l| l == "le") && keeps_le(&a.expr)
                }
                None => false,
            }
        }
        Expr::Unary(u) => keeps_le(&u.expr),
        Expr::Binary(b) => keeps_le(&b.lhs) || keeps_le(&b.rhs),
        Expr::Paren(p) => keeps_le(&p.expr),
        Expr::Subquery(s) => keeps_le(&s.expr),
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) | Expr::Extension(_) => true,
        Expr::Call(c) => match c.func.name {
            "histogram_quantile" | "histogram_fraction" | "absent" | "absent_over_time"
            | "vector" | "scalar" | "time" => false,
            _ => c.args.args.iter().any(|a| keeps_le(a)),
        },
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => false,
    }
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
        let keeps = |q: &str| keeps_le(&promql_parser::parser::parse(q).unwrap());
        assert!(keeps("sum(rate(x[1m])) by (le)"));
        assert!(keeps("sum by(job, le)(x)"));
        assert!(keeps("sum without (pod) (increase(x_bucket[1m]))"));
        assert!(keeps("topk(3, x_bucket)"));
        assert!(!keeps("sum by (job) (x_bucket{le=\"1\"})"));
        assert!(!keeps("sum without (le) (x_bucket)"));
        assert!(!keeps("histogram_quantile(0.9, sum by (le) (x_bucket))"));
    }

    const REQUESTS: &str = "requests = 'sum(increase(haproxy_server_http_responses_total{proxy=\"api_checkout\",server=\"{color}\"}[{interval}]))'";
    const BUCKETS: &str = "buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{service=\"checkout\",cluster=\"{color}\"}[{interval}]))'";

    #[test]
    fn color_only_inside_a_promql_comment_is_rejected() {
        let e = errors_of(&variant(
            REQUESTS,
            "requests = '''sum(increase(haproxy_server_http_responses_total{proxy=\"api_checkout\"}[{interval}]))\n# server=\"{color}\"'''",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "p.toml:15:12: requests: selector \"haproxy_server_http_responses_total{proxy=\\\"api_checkout\\\"}\" does not use {color}"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn color_in_only_one_of_two_selectors_is_rejected() {
        let e = errors_of(&variant(
            REQUESTS,
            "requests = 'sum(increase(a_total{server=\"{color}\"}[{interval}])) + sum(increase(b_total{job=\"x\"}[{interval}]))'",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("selector \"b_total{job=\\\"x\\\"}\" does not use {color}"),
            "{e:?}"
        );
    }

    #[test]
    fn interval_only_inside_a_promql_comment_is_rejected() {
        let e = errors_of(&variant(
            REQUESTS,
            "requests = '''sum(increase(x_total{server=\"{color}\"}[5m])) # [{interval}]'''",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("requests counts events per interval"),
            "{e:?}"
        );
    }

    #[test]
    fn valid_promql_the_old_scanner_refused_is_accepted() {
        let text = variant(
            BUCKETS,
            "buckets = 'sum without (pod, instance) (increase(http_request_duration_seconds_bucket{service=\"{api}\",cluster=\"{color}\"}[{interval}]))'",
        );
        assert_eq!(errors_of(&text), Vec::<String>::new());
        let text = variant(
            REQUESTS,
            "requests = 'sum(rate(x_total{server=~\"{color}|{color}-canary\"}[{interval}])) * on() group_left() (1 + 0 * sum(up{server=\"{color}\"}))'",
        );
        assert_eq!(errors_of(&text), Vec::<String>::new());
    }

    #[test]
    fn invalid_promql_is_rejected_at_the_query() {
        let e = errors_of(&variant(
            REQUESTS,
            "requests = 'sum(increase(x_total{server=\"{color}\"}[{interval}])'",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:15:12: requests is not valid PromQL: "),
            "{e:?}"
        );
        assert!(!e[0].contains("greenlightcolorplaceholder"), "{e:?}");
    }
}
