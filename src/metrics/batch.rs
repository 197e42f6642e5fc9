//! Batching: the queries of many APIs that differ only in label values answered by one query.
//!
//! A policy's queries, rendered for one API and one colour, differ from another API's (or the
//! other colour's) only in the values of some equality matchers: `proxy="api_a",server="blue"`
//! against `proxy="api_b",server="green"`. When such a query is an aggregation of per-series
//! functions (`sum(increase(x{…}[60s]))`, `sum by (le) (increase(b{…}[60s]))`, the freshness
//! query `max(tlast_over_time(x{…}[1h]))`, ratios of such aggregations), the queries of a group
//! are answered by one query that matches every value (`proxy=~"api_a|api_b"`) and keeps the
//! varying labels (`sum by (proxy, server) (…)`); its answer, split by those labels, is each
//! query's own answer.
//!
//! This module is pure: [`Shape::of`] reads a query into its shape (the query with the values
//! of its equality matchers taken out, the grouping key), [`plan`] makes one query for shapes
//! that share a key, [`Planned::split`] hands each member its part of the answer. Anything it
//! cannot prove equivalent is left out: a query it does not recognise is sent as it is, and an
//! answer it cannot split entirely is `None` (the caller then sends each query alone).
//!
//! Equivalence rests on two facts: the functions allowed below the aggregation act on each
//! series alone and keep its labels, and every selector has an equality matcher on each
//! varying label, so every series read carries the value of its own query. Binary operators
//! between aggregations match on the grouping labels only (no `on`, `ignoring` or group
//! modifiers), which, grouped further by the varying labels, pairs each query's own sides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Once;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::function::{register_extra_functions, Function};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, LabelModifier, VectorMatchCardinality};
use promql_parser::util::escape_string;

use super::client::{QueryResult, Sample};

/// Aggregations whose grouping may be refined by more labels without mixing groups.
const AGGREGATIONS: [&str; 6] = ["sum", "min", "max", "avg", "count", "group"];

/// Functions of one series' samples that keep its labels (all but `__name__`), besides
/// [`ELEMENTWISE`].
const PER_SERIES: [&str; 18] = [
    "rate",
    "increase",
    "irate",
    "delta",
    "idelta",
    "deriv",
    "resets",
    "changes",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "tlast_over_time",
];

/// Functions of each sample's value alone: allowed below and above the aggregation.
const ELEMENTWISE: [&str; 10] = [
    "timestamp",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "sqrt",
    "exp",
];

/// VictoriaMetrics' `tlast_over_time` (the freshness query), unknown to the PromQL parser.
fn register_victoria_functions() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only on a clash with a built-in function, which this name is not.
        let _ = register_extra_functions(vec![Function::new(
            "tlast_over_time",
            vec![ValueType::Matrix],
            0,
            ValueType::Vector,
            false,
        )]);
    });
}

/// What a varying value becomes in a shape's key (an empty value stays empty).
const BLANK: &str = "\u{1}";

/// A query as a template: the values of its equality matchers, and the rest as a key.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The query with the values of its equality matchers blanked: queries with the same key
    /// differ only in those values.
    key: String,
    expr: Expr,
    /// Label and value of each equality matcher, in the order of the query.
    values: Vec<(String, String)>,
}

impl Shape {
    /// The shape of `query`, or `None` when it is not a query this module can batch.
    pub fn of(query: &str) -> Option<Shape> {
        register_victoria_functions();
        let expr = promql_parser::parser::parse(query).ok()?;
        if !top(&expr) {
            return None;
        }
        let mut values = Vec::new();
        let mut blanked = expr.clone();
        let mut complete = true;
        visit_selectors(&mut blanked, &mut |m, or_matchers| {
            complete &= !or_matchers;
            for matcher in m {
                if let Some(v) = batchable_value(matcher) {
                    values.push((matcher.name.clone(), v.to_string()));
                    matcher.value = BLANK.to_string();
                }
            }
        });
        (complete && !values.is_empty()).then(|| Shape {
            key: blanked.to_string(),
            expr,
            values,
        })
    }

    /// Queries with equal keys may be batched together.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The value of an equality matcher that batching may vary: not the metric name, not empty
/// (an empty value also matches series without the label).
fn batchable_value(m: &Matcher) -> Option<&str> {
    (matches!(m.op, MatchOp::Equal) && m.name != "__name__" && !m.value.is_empty())
        .then_some(m.value.as_str())
}

/// Calls `f` with the matchers of every selector of `expr` (and whether it has `or` matchers).
fn visit_selectors(expr: &mut Expr, f: &mut impl FnMut(&mut Vec<Matcher>, bool)) {
    match expr {
        Expr::VectorSelector(vs) => {
            let or = !vs.matchers.or_matchers.is_empty();
            f(&mut vs.matchers.matchers, or)
        }
        Expr::MatrixSelector(ms) => {
            let or = !ms.vs.matchers.or_matchers.is_empty();
            f(&mut ms.vs.matchers.matchers, or)
        }
        Expr::Aggregate(a) => {
            visit_selectors(&mut a.expr, f);
            if let Some(p) = &mut a.param {
                visit_selectors(p, f);
            }
        }
        Expr::Unary(u) => visit_selectors(&mut u.expr, f),
        Expr::Binary(b) => {
            visit_selectors(&mut b.lhs, f);
            visit_selectors(&mut b.rhs, f);
        }
        Expr::Paren(p) => visit_selectors(&mut p.expr, f),
        Expr::Subquery(s) => visit_selectors(&mut s.expr, f),
        Expr::Call(c) => {
            for arg in &mut c.args.args {
                visit_selectors(arg, f);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn is_number(e: &Expr) -> bool {
    match e {
        Expr::NumberLiteral(_) => true,
        Expr::Paren(p) => is_number(&p.expr),
        Expr::Unary(u) => is_number(&u.expr),
        _ => false,
    }
}

/// Whether a binary operator matches its sides on all their labels (no `on`, `ignoring`,
/// `group_left`/`group_right`).
fn plain_matching(b: &promql_parser::parser::BinaryExpr) -> bool {
    b.modifier.as_ref().is_none_or(|m| {
        m.matching.is_none()
            && matches!(
                m.card,
                VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany
            )
    })
}

/// An expression of groups: aggregations of per-series expressions, combined by group-wise
/// functions and plain binary operators, with at least one aggregation.
fn top(e: &Expr) -> bool {
    match e {
        Expr::Aggregate(a) => {
            AGGREGATIONS.contains(&a.op.to_string().as_str())
                && a.param.is_none()
                && a.modifier.as_ref().is_none_or(LabelModifier::is_include)
                && per_series(&a.expr)
        }
        Expr::Paren(p) => top(&p.expr),
        Expr::Unary(u) => top(&u.expr),
        Expr::Call(c) => {
            (c.func.name == "histogram_quantile" || ELEMENTWISE.contains(&c.func.name))
                && c.args.args.iter().all(|a| top(a) || is_number(a))
                && c.args.args.iter().any(|a| top(a))
        }
        Expr::Binary(b) => {
            plain_matching(b)
                && (top(&b.lhs) || is_number(&b.lhs))
                && (top(&b.rhs) || is_number(&b.rhs))
                && (top(&b.lhs) || top(&b.rhs))
        }
        _ => false,
    }
}

/// An expression whose every series comes from one selected series, labels kept.
fn per_series(e: &Expr) -> bool {
    match e {
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) => true,
        Expr::Paren(p) => per_series(&p.expr),
        Expr::Unary(u) => per_series(&u.expr),
        Expr::Subquery(s) => per_series(&s.expr),
        Expr::Call(c) => {
            (PER_SERIES.contains(&c.func.name) || ELEMENTWISE.contains(&c.func.name))
                && c.args.args.iter().all(|a| per_series(a) || is_number(a))
                && c.args.args.iter().any(|a| per_series(a))
        }
        Expr::Binary(b) => {
            let set = matches!(b.op.to_string().as_str(), "and" | "or" | "unless");
            !set && ((per_series(&b.lhs) && is_number(&b.rhs))
                || (is_number(&b.lhs) && per_series(&b.rhs)))
        }
        _ => false,
    }
}

/// One query answering several: its text, and how to split its answer.
#[derive(Debug, Clone)]
pub struct Planned {
    pub query: String,
    /// The varying labels, in order.
    labels: Vec<String>,
    /// Labels the batch added to the grouping, removed from each member's answer.
    added: BTreeSet<String>,
    /// The members (indices into the planned shapes) of each combination of values.
    members: HashMap<Vec<String>, Vec<usize>>,
    count: usize,
}

/// One query for `shapes` (which share a key), or `None` when they cannot be answered by one:
/// fewer than two, or a varying label that is not matched for one value in every selector.
pub fn plan(shapes: &[&Shape]) -> Option<Planned> {
    let first = *shapes.first()?;
    if shapes.len() < 2 || shapes.iter().any(|s| s.key != first.key) {
        return None;
    }
    let n = first.values.len();
    let same_labels = |s: &&Shape| {
        s.values.len() == n
            && s.values
                .iter()
                .zip(&first.values)
                .all(|((a, _), (b, _))| a == b)
    };
    if !shapes.iter().all(same_labels) {
        return None;
    }
    let labels: BTreeSet<&str> = (0..n)
        .filter(|&i| shapes.iter().any(|s| s.values[i].1 != first.values[i].1))
        .map(|i| first.values[i].0.as_str())
        .collect();
    if labels.is_empty() {
        return None;
    }
    let labels: Vec<String> = labels.into_iter().map(str::to_string).collect();
    // Each member's value of each varying label: the same wherever the label is matched.
    let mut members: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
    let mut alternatives: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (index, shape) in shapes.iter().enumerate() {
        let mut tuple = Vec::with_capacity(labels.len());
        for label in &labels {
            let mut seen = shape
                .values
                .iter()
                .filter(|(l, _)| l == label)
                .map(|(_, v)| v);
            let value = seen.next()?;
            if seen.any(|v| v != value) {
                return None;
            }
            alternatives
                .entry(label.as_str())
                .or_default()
                .insert(value.as_str());
            tuple.push(value.clone());
        }
        members.entry(tuple).or_default().push(index);
    }
    let mut expr = first.expr.clone();
    let mut every_selector = true;
    visit_selectors(&mut expr, &mut |matchers, _| {
        for label in &labels {
            let Some(m) = matchers
                .iter_mut()
                .find(|m| &m.name == label && batchable_value(m).is_some())
            else {
                every_selector = false;
                continue;
            };
            let pattern = alternatives[label.as_str()]
                .iter()
                .map(|v| regex_escape(v))
                .collect::<Vec<_>>()
                .join("|");
            match regex_matcher(label, &pattern) {
                Some(re) => *m = re,
                None => every_selector = false,
            }
        }
    });
    if !every_selector {
        return None;
    }
    let mut added = BTreeSet::new();
    group_by(&mut expr, &labels, &mut added);
    Some(Planned {
        query: expr.to_string(),
        labels,
        added,
        members,
        count: shapes.len(),
    })
}

/// Adds `labels` to the grouping of every top-level aggregation of `expr`; records in `added`
/// those an aggregation did not keep already.
fn group_by(expr: &mut Expr, labels: &[String], added: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(a) => {
            let mut by: Vec<String> = match &a.modifier {
                Some(LabelModifier::Include(l)) => l.labels.clone(),
                _ => Vec::new(),
            };
            for label in labels {
                if !by.contains(label) {
                    by.push(label.clone());
                    added.insert(label.clone());
                }
            }
            a.modifier = Some(LabelModifier::include(
                by.iter().map(String::as_str).collect(),
            ));
        }
        Expr::Paren(p) => group_by(&mut p.expr, labels, added),
        Expr::Unary(u) => group_by(&mut u.expr, labels, added),
        Expr::Call(c) => {
            for arg in &mut c.args.args {
                group_by(arg, labels, added);
            }
        }
        Expr::Binary(b) => {
            group_by(&mut b.lhs, labels, added);
            group_by(&mut b.rhs, labels, added);
        }
        _ => {}
    }
}

/// `label=~"pattern"`, made by the parser (which compiles the regular expression).
fn regex_matcher(label: &str, pattern: &str) -> Option<Matcher> {
    let selector = format!("{{{label}=~\"{}\"}}", escape_string(pattern));
    match promql_parser::parser::parse(&selector).ok()? {
        Expr::VectorSelector(mut vs) => vs.matchers.matchers.pop(),
        _ => None,
    }
}

/// `value` as a regular expression matching only itself (RE2 syntax).
fn regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Planned {
    /// How many queries this one answers.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Each member's answer, in the order of the planned shapes; `None` when the answer is not
    /// an instant vector whose every series belongs to exactly one combination of values (then
    /// nothing is trusted, and each query is sent alone).
    pub fn split(&self, result: QueryResult) -> Option<Vec<QueryResult>> {
        let QueryResult::Vector(samples) = result else {
            return None;
        };
        let mut parts: Vec<Vec<Sample>> = vec![Vec::new(); self.count];
        for mut sample in samples {
            let tuple: Vec<String> = self
                .labels
                .iter()
                .map(|l| sample.labels.get(l).cloned())
                .collect::<Option<_>>()?;
            let members = self.members.get(&tuple)?;
            sample.labels.retain(|l, _| !self.added.contains(l));
            for &m in members {
                parts[m].push(sample.clone());
            }
        }
        Some(parts.into_iter().map(QueryResult::Vector).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    const REQUESTS: &str = r#"sum(increase(haproxy_backend_http_requests_total{proxy="{api}",server="{color}"}[60s]))"#;

    fn q(template: &str, api: &str, color: &str) -> String {
        template.replace("{api}", api).replace("{color}", color)
    }

    fn shapes(template: &str, members: &[(&str, &str)]) -> Vec<Shape> {
        members
            .iter()
            .map(|(a, c)| Shape::of(&q(template, a, c)).expect("batchable"))
            .collect()
    }

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            time: Timestamp::UNIX_EPOCH,
            value,
        }
    }

    #[test]
    fn apis_and_colours_of_one_template_become_one_query_grouped_by_what_varies() {
        let s = shapes(
            REQUESTS,
            &[("a", "blue"), ("a", "green"), ("b", "blue"), ("b", "green")],
        );
        let refs: Vec<&Shape> = s.iter().collect();
        let p = plan(&refs).unwrap();
        assert_eq!(
            p.query,
            r#"sum by (proxy, server) (increase(haproxy_backend_http_requests_total{proxy=~"a|b",server=~"blue|green"}[1m]))"#
        );
        let parts = p
            .split(QueryResult::Vector(vec![
                sample(&[("proxy", "b"), ("server", "green")], 4.0),
                sample(&[("proxy", "a"), ("server", "blue")], 1.0),
            ]))
            .unwrap();
        assert_eq!(parts[0], QueryResult::Vector(vec![sample(&[], 1.0)]));
        // No series for a/green: the same empty answer its own query gives.
        assert_eq!(parts[1], QueryResult::Vector(vec![]));
        assert_eq!(parts[2], QueryResult::Vector(vec![]));
        assert_eq!(parts[3], QueryResult::Vector(vec![sample(&[], 4.0)]));
    }

    #[test]
    fn a_grouping_of_the_template_is_kept_and_only_the_added_labels_are_removed() {
        let t = r#"sum by (le) (increase(lat_bucket{service="{api}",cluster="{color}"}[60s]))"#;
        let s = shapes(t, &[("a", "green"), ("b", "green")]);
        let p = plan(&s.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(
            p.query,
            r#"sum by (le, service) (increase(lat_bucket{cluster="green",service=~"a|b"}[1m]))"#
        );
        let parts = p
            .split(QueryResult::Vector(vec![
                sample(&[("le", "0.1"), ("service", "a")], 3.0),
                sample(&[("le", "+Inf"), ("service", "a")], 5.0),
            ]))
            .unwrap();
        assert_eq!(
            parts[0],
            QueryResult::Vector(vec![
                sample(&[("le", "0.1")], 3.0),
                sample(&[("le", "+Inf")], 5.0)
            ])
        );
        assert_eq!(parts[1], QueryResult::Vector(vec![]));
    }

    #[test]
    fn ratios_of_aggregations_and_the_freshness_queries_batch() {
        let ratio =
            r#"sum(rate(e{job="{api}",code="5xx"}[60s])) / sum(rate(r{job="{api}"}[60s])) * 100"#;
        let s = shapes(ratio, &[("a", ""), ("b", "")]);
        let p = plan(&s.iter().collect::<Vec<_>>()).unwrap();
        assert!(
            p.query
                .contains(r#"sum by (job) (rate(e{code="5xx",job=~"a|b"}[1m]))"#),
            "{}",
            p.query
        );
        assert!(
            p.query
                .contains(r#"sum by (job) (rate(r{job=~"a|b"}[1m]))"#),
            "{}",
            p.query
        );
        let fresh = r#"max(tlast_over_time(x{proxy="{api}",server="{color}"}[3600s]))"#;
        let s = shapes(fresh, &[("a", "blue"), ("b", "blue")]);
        let p = plan(&s.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(
            p.query,
            r#"max by (proxy) (tlast_over_time(x{proxy=~"a|b",server="blue"}[1h]))"#
        );
        let prom = r#"max(timestamp(x{p="{api}"})) or max(max_over_time(timestamp(x{p="{api}"})[3600s:1m]))"#;
        let s = shapes(prom, &[("a", ""), ("b", "")]);
        assert!(plan(&s.iter().collect::<Vec<_>>()).is_some());
    }

    #[test]
    fn queries_whose_groups_could_mix_are_not_batched() {
        for query in [
            // A label dropped below the aggregation.
            r#"sum(sum by (code) (rate(x{p="a"}[1m])))"#,
            r#"sum(label_replace(rate(x{p="a"}[1m]), "p", "", "p", ".*"))"#,
            // Matching modifiers pair series across groups.
            r#"sum(rate(x{p="a"}[1m])) / on() sum(rate(y{p="a"}[1m]))"#,
            r#"sum without (i) (rate(x{p="a"}[1m]))"#,
            r#"topk(1, rate(x{p="a"}[1m]))"#,
            // Not an aggregation.
            r#"rate(x{p="a"}[1m])"#,
            // Nothing to vary.
            r#"sum(rate(x[1m]))"#,
            "not promql (",
        ] {
            assert!(Shape::of(query).is_none(), "{query}");
        }
        // A label matched in one selector only, or for two values in one query.
        let one_side = [
            r#"sum(rate(x{p="a"}[1m])) / sum(rate(y[1m]))"#,
            r#"sum(rate(x{p="b"}[1m])) / sum(rate(y[1m]))"#,
        ];
        let s: Vec<Shape> = one_side.iter().map(|q| Shape::of(q).unwrap()).collect();
        assert!(plan(&s.iter().collect::<Vec<_>>()).is_none());
        let two_values = [
            r#"sum(rate(x{p="a"}[1m])) / sum(rate(y{p="a"}[1m]))"#,
            r#"sum(rate(x{p="b"}[1m])) / sum(rate(y{p="c"}[1m]))"#,
        ];
        let s: Vec<Shape> = two_values.iter().map(|q| Shape::of(q).unwrap()).collect();
        assert!(plan(&s.iter().collect::<Vec<_>>()).is_none());
        // Different templates never share a key.
        assert_ne!(
            Shape::of(&q(REQUESTS, "a", "blue")).unwrap().key(),
            Shape::of(r#"sum(increase(other{proxy="a",server="blue"}[60s]))"#)
                .unwrap()
                .key()
        );
    }

    #[test]
    fn values_are_matched_literally_and_identical_queries_share_an_answer() {
        let s = shapes(
            REQUESTS,
            &[("a.b", "blue"), ("a+b", "blue"), ("a.b", "blue")],
        );
        let p = plan(&s.iter().collect::<Vec<_>>()).unwrap();
        assert!(p.query.contains(r#"proxy=~"a\\+b|a\\.b""#), "{}", p.query);
        let parts = p
            .split(QueryResult::Vector(vec![sample(&[("proxy", "a.b")], 2.0)]))
            .unwrap();
        assert_eq!(parts[0], parts[2]);
        assert_eq!(parts[0], QueryResult::Vector(vec![sample(&[], 2.0)]));
        assert_eq!(parts[1], QueryResult::Vector(vec![]));
    }

    #[test]
    fn an_answer_that_does_not_split_cleanly_is_not_trusted() {
        let s = shapes(REQUESTS, &[("a", "blue"), ("b", "blue")]);
        let p = plan(&s.iter().collect::<Vec<_>>()).unwrap();
        // A series without the varying label, one for a value not asked, or not a vector.
        assert!(p
            .split(QueryResult::Vector(vec![sample(&[], 1.0)]))
            .is_none());
        assert!(p
            .split(QueryResult::Vector(vec![sample(&[("proxy", "c")], 1.0)]))
            .is_none());
        assert!(p
            .split(QueryResult::Scalar {
                time: Timestamp::UNIX_EPOCH,
                value: 1.0
            })
            .is_none());
    }
}
