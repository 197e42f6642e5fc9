//! Validation of `[[check]]` tables: which fields each kind takes, their values and queries.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::cohort::{Cohort, CohortRules};
use super::limits::{self, count_in};
use super::located::{number, shown, Errors};
use super::query::{validate_query, QueryKind};
use super::raw::{
    default_advance_tolerance, default_failures, default_guard_min_green_requests,
    default_min_errors, default_overdispersion, default_tolerance, RawCheck, RawCheckKind, RawEdge,
};
use super::values::Table;
use super::{Check, CheckKind};

fn validate_edges(raw: &Spanned<Vec<Spanned<RawEdge>>>, errors: &mut Errors<'_>) -> Vec<f64> {
    if raw.get_ref().is_empty() {
        errors.at(raw.span(), "edges must list at least one bucket edge");
    }
    if raw.get_ref().len() > limits::EDGES_MAX {
        errors.at(
            raw.span(),
            format!(
                "edges lists {} bucket edges; at most {} (each is a rollback stream sharing α)",
                raw.get_ref().len(),
                limits::EDGES_MAX
            ),
        );
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
                        "edge {} is the +Inf bucket: every request is below it, so there is \
                         nothing to compare",
                        shown(text)
                    ),
                );
                continue;
            }
            Ok(v) if v.is_finite() && v > 0.0 => v,
            _ => {
                errors.at(
                    edge.span(),
                    format!(
                        "edge {} must be a finite positive number such as \"0.25\"",
                        shown(text)
                    ),
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

pub(super) fn validate_checks(
    raw: &[Spanned<Table<RawCheck>>],
    api: &Spanned<String>,
    rules: CohortRules,
    errors: &mut Errors<'_>,
) -> Vec<Check> {
    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    let mut checks = Vec::new();
    if let Some(extra) = raw.get(limits::CHECKS_MAX) {
        errors.at(
            extra.get_ref().name.span(),
            format!(
                "a policy has at most {} [[check]] tables, this file has {}",
                limits::CHECKS_MAX,
                raw.len()
            ),
        );
    }
    for check in raw {
        let c = check.get_ref();
        let name = c.name.get_ref();
        if name.trim().is_empty() {
            errors.at(c.name.span(), "check name must not be empty");
        } else if let Some(first) = seen.get(name.as_str()) {
            let (line, col) = errors.location(first.clone());
            errors.at(
                c.name.span(),
                format!(
                    "duplicate check name {} (first defined at {line}:{col})",
                    shown(name)
                ),
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
        if let Some(kind) = validate_check(c, api.get_ref(), rules, errors) {
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
                errors.at(
                    v.span(),
                    format!("{name} must be {rule}, got {}", number(x)),
                );
            }
            x
        }
    }
}

/// The `cohort` of a check (see [`super::cohort`]): threshold checks only, sticky mode only,
/// `pinned` only where someone is pinned to green.
fn validate_cohort(c: &RawCheck, rules: CohortRules, errors: &mut Errors<'_>) -> Option<Cohort> {
    let Some(cohort) = &c.cohort else {
        return Some(Cohort::Random);
    };
    if *c.kind.get_ref() != RawCheckKind::Threshold {
        errors.at(
            cohort.span(),
            format!(
                "`cohort` does not apply to kind = \"{}\": comparison checks read only green's \
                 random cohort, a random sample like blue; guard the pinned cohort with \
                 kind = \"threshold\" and cohort = \"pinned\"",
                c.kind.get_ref().name()
            ),
        );
        return None;
    }
    if !rules.sticky {
        errors.at(
            cohort.span(),
            "`cohort` only applies with traffic.mode = \"sticky\" (a weighted split has no cohorts)",
        );
        return None;
    }
    if *cohort.get_ref() == Cohort::Pinned && rules.pinnable == Some(false) {
        errors.at(
            cohort.span(),
            "cohort = \"pinned\" needs a [[traffic.sticky.subset]] with colour = \"green\" or an \
             override_header: no user is pinned to green",
        );
        return None;
    }
    Some(*cohort.get_ref())
}

fn validate_check(
    c: &RawCheck,
    api: &str,
    rules: CohortRules,
    errors: &mut Errors<'_>,
) -> Option<CheckKind> {
    let kind = *c.kind.get_ref();
    let cohort = validate_cohort(c, rules, errors);
    let sticky = rules.sticky;

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
                |x| (0.0..=limits::TOLERANCE_MAX).contains(&x),
                &format!("between 0 and {}", limits::TOLERANCE_MAX),
                errors,
            );
            let advance_tolerance = float_field(
                &c.advance_tolerance,
                "advance_tolerance",
                default_advance_tolerance(),
                |x| (0.0..=limits::TOLERANCE_MAX).contains(&x),
                &format!("between 0 and {}", limits::TOLERANCE_MAX),
                errors,
            );
            let overdispersion = float_field(
                &c.overdispersion,
                "overdispersion",
                default_overdispersion(),
                |x| (1.0..=limits::OVERDISPERSION_MAX).contains(&x),
                &format!("between 1 and {}", limits::OVERDISPERSION_MAX),
                errors,
            );
            let min_errors = match &c.min_errors {
                None => Some(default_min_errors()),
                Some(v) => count_in(v, "min_errors", limits::MIN_ERRORS, errors),
            };
            let advance_max_rate = c.advance_max_rate.as_ref().map(|v| {
                let x = *v.get_ref();
                if !(x > 0.0 && x < 1.0) {
                    errors.at(
                        v.span(),
                        format!("advance_max_rate must be in (0, 1), got {}", number(x)),
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
                    .map(|q| validate_query("requests", q, QueryKind::Count, api, sticky, errors));
                let errs = c
                    .errors
                    .as_ref()
                    .map(|q| validate_query("errors", q, QueryKind::Count, api, sticky, errors));
                let blue_max_error_rate = c.blue_max_error_rate.as_ref().map(|v| {
                    let x = *v.get_ref();
                    if !(x > 0.0 && x <= 1.0) {
                        errors.at(
                            v.span(),
                            format!("blue_max_error_rate must be in (0, 1], got {}", number(x)),
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
                    min_errors: min_errors?,
                    advance_max_rate,
                    blue_max_error_rate,
                })
                .filter(|_| ok)
            } else {
                require("buckets", c.buckets.is_some(), errors);
                require("edges", c.edges.is_some(), errors);
                let buckets = c
                    .buckets
                    .as_ref()
                    .map(|q| validate_query("buckets", q, QueryKind::Buckets, api, sticky, errors));
                let edges = c.edges.as_ref().map(|e| validate_edges(e, errors));
                Some(CheckKind::LatencyHistogram {
                    buckets: buckets?,
                    edges: edges?,
                    tolerance,
                    advance_tolerance,
                    overdispersion,
                    min_errors: min_errors?,
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
                .map(|q| validate_query("query", q, QueryKind::Value, api, sticky, errors));
            let max = c.max.as_ref().map(|v| (*v.get_ref(), v.span()));
            let min = c.min.as_ref().map(|v| (*v.get_ref(), v.span()));
            for (name, bound) in [("max", max.clone()), ("min", min.clone())] {
                if let Some((x, span)) = bound.filter(|(x, _)| !x.is_finite()) {
                    errors.at(
                        span,
                        format!("{name} must be a finite number, got {}", number(x)),
                    );
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
                    errors.at(
                        span.clone(),
                        format!("min ({}) must be below max ({})", number(*lo), number(*hi)),
                    );
                }
                _ => {}
            }
            let failures = match &c.failures {
                None => Some(default_failures()),
                Some(f) => count_in(f, "failures", limits::FAILURES, errors)
                    .and_then(|n| u32::try_from(n).ok()),
            };
            let min_green_requests = match &c.min_green_requests {
                None => Some(default_guard_min_green_requests()),
                Some(v) => count_in(v, "min_green_requests", limits::REQUEST_COUNT, errors),
            };
            Some(CheckKind::Threshold {
                query: query?,
                max: max.map(|(x, _)| x),
                min: min.map(|(x, _)| x),
                failures: failures?,
                min_green_requests: min_green_requests?,
                cohort: cohort?,
            })
            .filter(|_| ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{errors_of, variant, GOOD};

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
    fn check_kinds_accept_only_their_fields() {
        let e = errors_of(&variant("max = 0.5", "max = 0.5\nedges = [1]"));
        assert_eq!(
            e,
            vec!["p.toml:29:9: `edges` does not apply to kind = \"threshold\""]
        );
        let e = errors_of(&variant("max = 0.5", "failures = 0"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("p.toml:26:8: kind = \"threshold\" needs `max`, `min` or both"));
        assert!(
            e[1].starts_with("p.toml:28:12: failures must be a whole number from 1 to 1000, got 0")
        );
        let e = errors_of(&variant("kind = \"error_rate\"", "kind = \"error-rate\""));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:14:8: unknown variant `error-rate`"),
            "{e:?}"
        );
    }

    #[test]
    fn huge_tolerance_and_overdispersion_are_rejected() {
        // 1e308 made r0 and the mixture ratios infinite: rollback could never fire.
        for (line, needle) in [
            (
                "tolerance = 1e308",
                "p.toml:18:13: tolerance must be between 0 and 10, got 1e308",
            ),
            (
                "advance_tolerance = 1e308",
                "p.toml:18:21: advance_tolerance must be between 0 and 10",
            ),
            (
                "overdispersion = 1e308",
                "p.toml:18:18: overdispersion must be between 1 and 100",
            ),
            (
                "min_errors = -3",
                "p.toml:18:14: min_errors must be a whole number from 0 to 1000000, got -3",
            ),
        ] {
            let e = errors_of(&variant(
                "[[check]]\nname = \"latency\"",
                &format!("{line}\n\n[[check]]\nname = \"latency\""),
            ));
            assert_eq!(e.len(), 1, "{line}: {e:?}");
            assert!(e[0].starts_with(needle), "{line}: {e:?}");
        }
        let e = errors_of(&variant("max = 0.5", "max = 0.5\nfailures = 1001"));
        assert_eq!(
            e,
            vec!["p.toml:29:12: failures must be a whole number from 1 to 1000, got 1001"]
        );
    }

    #[test]
    fn too_many_checks_or_edges_are_rejected() {
        let edges: Vec<String> = (1..=17).map(|i| format!("\"{i}\"")).collect();
        let e = errors_of(&variant(
            "[\"0.25\", 1]",
            &format!("[{}]", edges.join(", ")),
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:22:9: edges lists 17 bucket edges; at most 16"),
            "{e:?}"
        );
        let extra: String = (0..32)
            .map(|i| format!("\n[[check]]\nname = \"g{i}\"\nkind = \"threshold\"\nquery = 'up{{c=\"{{color}}\"}}'\nmax = 1\n"))
            .collect();
        let e = errors_of(&format!("{GOOD}{extra}"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("a policy has at most 32 [[check]] tables, this file has 35"),
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
        assert!(e[0].starts_with("p.toml:18:13: tolerance must be between 0 and 10, got -0.1"));
        assert!(e[1].starts_with("p.toml:19:18: overdispersion must be between 1 and 100, got 0.5"));
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
}
