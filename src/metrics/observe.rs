//! One policy, one window: runs each check's queries for blue and green and classifies the
//! answers into clean counts or the [`DataProblem`] that makes the window unusable.
//!
//! # Freshness
//!
//! Measured against VictoriaMetrics 1.79 (`-search.latencyOffset=0s`, samples every 15 s): for a
//! counter whose samples stopped 195 s before the evaluation time,
//!
//! - `sum(increase(x[60s]))` answers an empty vector, exactly like a series that never existed
//!   (the same happens for a series that stopped 90 s before, i.e. just before the window);
//! - `sum(increase(x[5m]))` answers `105`: a clean-looking count of the part of the window
//!   before the samples stopped;
//! - `x` alone still answers its last value (the 5-minute instant lookback);
//! - `max(tlast_over_time(x[1h]))` answers the timestamp of the newest sample (`end − 195`), and
//!   an empty vector for a series that never existed.
//!
//! An increase over the window therefore cannot tell "stopped" from "never existed", and it
//! reports a partially covered window as a normal count. So each statistical input is paired
//! with a freshness query on the series it reads: the range selectors of the rendered query
//! (`metric{…}[…]`) become `max(tlast_over_time(metric{…}[lookback]))` on VictoriaMetrics and
//! `max(timestamp(metric{…})) or max(max_over_time(timestamp(metric{…})[lookback:1m]))` on
//! Prometheus. Then:
//!
//! - the window has a value and the newest input sample is at most `max_sample_age` from the
//!   window end (before or after): fresh;
//! - the window has a value but the newest sample is older, or in the future:
//!   [`DataProblem::Stale`];
//! - the window has a value but the freshness query found no sample of its inputs, or answered
//!   `NaN`, `±Inf` or several series: [`DataProblem::Stale`] (freshness unknown fails closed);
//! - the window has no value but the series had samples within the lookback:
//!   [`DataProblem::Stale`] (the data stopped arriving);
//! - nothing within the lookback either: [`DataProblem::NoData`].
//!
//! Every answer's sample times must be the evaluation time, within `max_sample_age`: a backend
//! echoes the time asked, so any other time means the answer is not about this window (stale).
//!
//! When blue's requests (or buckets) are usable and green's are missing or stale, the check's
//! problem is [`DataProblem::GreenMissing`]: green stopped reporting, which the engine treats
//! apart from a metrics outage. Threshold guards never report it: their query may be empty for
//! green alone on a healthy green (an error ratio before the first error).
//!
//! The newest sample across a query's inputs counts, so one pod that stops while others keep
//! reporting is not detected. Queries without a range selector get no freshness check. Checks
//! reading the same series (a latency histogram and a quantile guard on it) share one freshness
//! query per window.
//!
//! # Missing error series
//!
//! An errors query without a result is 0 errors when the requests query of the same colour is
//! usable (present and fresh). Counters labelled by status code only exist once the first such
//! response happened, and a restarted process starts without them, so an absent errors series
//! is the normal state of a healthy service; the requests series vouches that the target is
//! being scraped. For the same reason the errors query gets no freshness check of its own. A
//! value (not an absence) from the errors query must be finite and non-negative, and at most
//! the requests count.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use jiff::Timestamp;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use super::client::{PromClient, QueryError, QueryResult};
use super::selectors::{freshness_query, range_selectors};
use super::template::{promql_duration, render};
use crate::engine::{
    CheckData, CheckObservation, Counts, DataProblem, EdgeCounts, Observation, Pair,
};
use crate::policy::{CheckKind, Colour, Policy, Roles, Side, Sides};

/// Tuning of the data-quality rules.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserveOptions {
    /// Data whose newest sample lies further than this before the window end is stale.
    /// `None`: half the window, at least 30 s. Set it above the scrape interval plus the
    /// ingestion lag.
    pub max_sample_age: Option<Duration>,
    /// How far back the freshness query looks for the newest sample of an input.
    pub freshness_lookback: Duration,
}

impl Default for ObserveOptions {
    fn default() -> Self {
        ObserveOptions {
            max_sample_age: None,
            freshness_lookback: Duration::from_secs(3600),
        }
    }
}

/// Observes `policy` over `[start, end)` with the default [`ObserveOptions`], blue stable.
pub async fn observe(
    client: &PromClient,
    policy: &Policy,
    start: Timestamp,
    end: Timestamp,
) -> Observation {
    observe_with(
        client,
        policy,
        (start, end),
        Roles::stable(Colour::Blue),
        &ObserveOptions::default(),
    )
    .await
}

/// Observes `policy` over `[start, end)`: every query is evaluated at `end` with `{interval}` set
/// to `end − start`; every query of every check runs concurrently. `roles.stable` is the
/// rollout's stable colour: the candidate's data missing while the stable copy's are present is
/// [`DataProblem::GreenMissing`], and a threshold check's value is the candidate's. With
/// `roles.stable_optional` (the bake) the stable copy's data missing count as none served.
pub async fn observe_with(
    client: &PromClient,
    policy: &Policy,
    (start, end): (Timestamp, Timestamp),
    roles: Roles,
    options: &ObserveOptions,
) -> Observation {
    let window = start.duration_until(end).unsigned_abs();
    let ctx = Ctx {
        client,
        api: &policy.api,
        window,
        end,
        max_age: options
            .max_sample_age
            .unwrap_or_else(|| (window / 2).max(Duration::from_secs(30))),
        lookback: options.freshness_lookback,
        newest: Mutex::new(HashMap::new()),
        roles,
    };
    // Every check's queries at once: one slow query costs one timeout, not one per check.
    let checks = join_all(policy.checks.iter().map(|check| {
        let ctx = &ctx;
        async move {
            let sides = policy.sides(check);
            let sides = &sides;
            let data = match &check.kind {
                CheckKind::ErrorRate {
                    requests, errors, ..
                } => error_rate(ctx, sides, requests, errors).await,
                CheckKind::LatencyHistogram { buckets, edges, .. } => {
                    latency(ctx, sides, buckets, edges).await
                }
                CheckKind::Threshold { query, .. } => threshold(ctx, sides, query).await,
            };
            if let Err(problem) = &data {
                check_unusable(&policy.api, &check.name, problem);
            }
            CheckObservation {
                check: check.name.clone(),
                data,
            }
        }
    }))
    .await;
    Observation { start, end, checks }
}

fn check_unusable(api: &str, check: &str, problem: &DataProblem) {
    match problem {
        DataProblem::Backend(_) => {
            warn!(%api, %check, %problem, "Metrics backend failed; holding this window.")
        }
        _ => info!(%api, %check, %problem, "Check data unusable; holding this window."),
    }
}

/// A query's answer, computed once and shared.
type SharedAnswer = Arc<OnceCell<Result<QueryResult, QueryError>>>;

struct Ctx<'a> {
    client: &'a PromClient,
    api: &'a str,
    window: Duration,
    end: Timestamp,
    max_age: Duration,
    lookback: Duration,
    /// Answers of the freshness queries already made for this window, by query text.
    /// One freshness answer per query, shared by the checks that run at once (the first to ask
    /// sends it, the others wait for its answer).
    newest: Mutex<HashMap<String, SharedAnswer>>,
    /// The rollout's stable colour, and whether its data may be missing.
    roles: Roles,
}

#[derive(Clone, Copy)]
enum Color {
    Blue,
    Green,
}

impl Color {
    fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// This colour's values of `{color}` and `{cohort}` in one check.
    fn side(self, sides: &Sides) -> &Side {
        match self {
            Color::Blue => &sides.blue,
            Color::Green => &sides.green,
        }
    }
}

/// The newest sample among a query's inputs.
#[derive(Debug, Clone, PartialEq)]
enum Freshness {
    /// The query has no range selector to check.
    Unknown,
    /// No input had a sample within the lookback.
    Absent,
    Newest(Timestamp),
    /// The freshness answer is not a usable timestamp (NaN, ±Inf, several series, a sample time
    /// far from the evaluation time): freshness unknown, so not fresh.
    Invalid(String),
}

/// A query's answer, with the freshness of its inputs when asked for.
struct Measured {
    what: String,
    result: Result<QueryResult, QueryError>,
    freshness: Result<Freshness, QueryError>,
}

impl<'a> Ctx<'a> {
    async fn measure(
        &self,
        template: &str,
        (color, sides): (Color, &Sides),
        what: &str,
        fresh: bool,
    ) -> Measured {
        let query = render(template, color.side(sides), self.window, self.api);
        let what = format!("{} {what}", color.as_str());
        let (result, freshness) = tokio::join!(self.client.instant(&query, self.end), async {
            if fresh {
                self.freshness(&query).await
            } else {
                Ok(Freshness::Unknown)
            }
        });
        debug!(api = %self.api, %what, %query, "Evaluated a check query.");
        Measured {
            what,
            result,
            freshness,
        }
    }

    async fn freshness(&self, query: &str) -> Result<Freshness, QueryError> {
        let selectors = range_selectors(query);
        if selectors.is_empty() {
            return Ok(Freshness::Unknown);
        }
        let mut newest: Option<Timestamp> = None;
        for selector in selectors {
            let q = freshness_query(self.client.backend(), &selector, self.lookback);
            let value = match self.newest_sample(&q).await {
                Ok(result) => {
                    if let Some(problem) = self.sample_time_problem(&result) {
                        return Ok(Freshness::Invalid(format!("freshness answer {problem}")));
                    }
                    match single(&result) {
                        Ok(v) => v,
                        Err(d) => return Ok(Freshness::Invalid(format!("freshness answer: {d}"))),
                    }
                }
                Err(QueryError::Syntax { message }) => {
                    warn!(%query, %q, %message, "Freshness query rejected; skipping the freshness check.");
                    return Ok(Freshness::Unknown);
                }
                Err(e) => return Err(e),
            };
            // An empty answer: this input had no sample within the lookback.
            let Some(seconds) = value else {
                continue;
            };
            let t = (seconds.is_finite())
                .then(|| Timestamp::from_millisecond((seconds * 1000.0).round() as i64).ok())
                .flatten();
            let Some(t) = t else {
                return Ok(Freshness::Invalid(format!(
                    "freshness answer {seconds} is not a sample time"
                )));
            };
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
        Ok(newest.map_or(Freshness::Absent, Freshness::Newest))
    }

    /// The answer of freshness query `q` at the window end, asked once per window: the checks of
    /// one policy run one after the other, so a later check reuses an earlier one's answer.
    async fn newest_sample(&self, q: &str) -> Result<QueryResult, QueryError> {
        let cell = {
            let mut m = self.newest.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(q.to_string()).or_default().clone()
        };
        cell.get_or_init(|| self.client.instant(q, self.end))
            .await
            .clone()
    }

    /// The single value of `m`, or `None` for an empty answer, after the freshness rules.
    fn value(&self, m: &Measured) -> Result<Option<f64>, DataProblem> {
        let result = m
            .result
            .as_ref()
            .map_err(|e| DataProblem::Backend(format!("{}: {e}", m.what)))?;
        let value = single(result).map_err(|d| DataProblem::Partial(format!("{}: {d}", m.what)))?;
        if let Some(problem) = self.sample_time_problem(result) {
            return Err(DataProblem::Stale(format!("{}: {problem}", m.what)));
        }
        let freshness = m
            .freshness
            .as_ref()
            .map_err(|e| DataProblem::Backend(format!("{} freshness: {e}", m.what)))?;
        self.check_fresh(&m.what, value.is_some(), freshness)?;
        Ok(value)
    }

    /// Why the sample times of `result` are not the evaluation time (within `max_age`), if they
    /// are not. A backend echoes the evaluation time; any other time means the answer is not
    /// about this window.
    fn sample_time_problem(&self, result: &QueryResult) -> Option<String> {
        let times: Vec<Timestamp> = match result {
            QueryResult::Vector(v) => v.iter().map(|s| s.time).collect(),
            QueryResult::Scalar { time, .. } | QueryResult::String { time, .. } => vec![*time],
            QueryResult::Matrix(_) => Vec::new(),
        };
        times.into_iter().find_map(|t| {
            let off = t.duration_until(self.end);
            (off.abs().as_secs_f64() > self.max_age.as_secs_f64()).then(|| {
                let side = if off.is_negative() { "after" } else { "before" };
                format!(
                    "sample time {t} is {} {side} the evaluation time {} (allowed {})",
                    promql_duration(off.unsigned_abs()),
                    self.end,
                    promql_duration(self.max_age)
                )
            })
        })
    }

    /// Fails closed: a value is fresh only when its inputs' newest sample is known and recent, or
    /// when the query has no range selector to check.
    fn check_fresh(
        &self,
        what: &str,
        present: bool,
        freshness: &Freshness,
    ) -> Result<(), DataProblem> {
        match (present, freshness) {
            (_, Freshness::Invalid(d)) => Err(DataProblem::Stale(format!("{what}: {d}"))),
            (true, Freshness::Newest(t)) => {
                let age = t.duration_until(self.end);
                if age.as_secs_f64() > self.max_age.as_secs_f64() {
                    return Err(DataProblem::Stale(format!(
                        "{what}: newest sample {} before the window end (allowed {})",
                        promql_duration(age.unsigned_abs()),
                        promql_duration(self.max_age)
                    )));
                }
                if -age.as_secs_f64() > self.max_age.as_secs_f64() {
                    return Err(DataProblem::Stale(format!(
                        "{what}: newest sample {} after the window end (allowed {})",
                        promql_duration(age.unsigned_abs()),
                        promql_duration(self.max_age)
                    )));
                }
                Ok(())
            }
            (true, Freshness::Unknown) => Ok(()),
            (true, Freshness::Absent) => Err(DataProblem::Stale(format!(
                "{what}: a value, but no sample of its inputs within {}; its freshness is unknown",
                promql_duration(self.lookback)
            ))),
            (false, Freshness::Newest(t)) => Err(DataProblem::Stale(format!(
                "{what}: no samples in the window; newest sample {} before the window end",
                promql_duration(t.duration_until(self.end).unsigned_abs())
            ))),
            (false, _) => Err(DataProblem::NoData),
        }
    }
}

/// The one value of a result: `None` when empty, an error text for several series or a
/// non-numeric result.
fn single(result: &QueryResult) -> Result<Option<f64>, String> {
    match result {
        QueryResult::Scalar { value, .. } => Ok(Some(*value)),
        QueryResult::Vector(v) => match v.as_slice() {
            [] => Ok(None),
            [s] => Ok(Some(s.value)),
            many => Err(format!(
                "{} series where one is expected (aggregate the query, e.g. with sum)",
                many.len()
            )),
        },
        QueryResult::Matrix(_) => Err("a range (matrix) result where one value is expected".into()),
        QueryResult::String { .. } => Err("a string result where a number is expected".into()),
    }
}

fn count(what: &str, v: f64) -> Result<f64, DataProblem> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(DataProblem::NotFinite(format!("{what} = {v}")))
    }
}

/// Keeps the problem an operator most needs to see when both colours have one.
fn worst(a: DataProblem, b: DataProblem) -> DataProblem {
    fn rank(p: &DataProblem) -> u8 {
        match p {
            DataProblem::Backend(_) => 4,
            DataProblem::Partial(_) | DataProblem::OutOfRange(_) => 3,
            DataProblem::NotFinite(_) => 2,
            DataProblem::Stale(_) | DataProblem::GreenMissing(_) => 1,
            DataProblem::NoData => 0,
        }
    }
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

/// Both colours' data (blue's, green's), or the problem. The candidate's data missing or stale
/// while the stable copy's are usable is [`DataProblem::GreenMissing`]: the candidate stopped
/// reporting, the metrics pipeline did not.
fn both<T: Default>(
    roles: Roles,
    blue: Result<T, DataProblem>,
    green: Result<T, DataProblem>,
) -> Result<(T, T), DataProblem> {
    let candidate = roles.stable.other();
    let absent = |p: &DataProblem| matches!(p, DataProblem::NoData | DataProblem::Stale(_));
    match (blue, green) {
        (Err(e), Ok(g)) if roles.stable_optional && candidate == Colour::Green && absent(&e) => {
            Ok((T::default(), g))
        }
        (Ok(b), Err(e)) if roles.stable_optional && candidate == Colour::Blue && absent(&e) => {
            Ok((b, T::default()))
        }
        (Ok(b), Ok(g)) => Ok((b, g)),
        (Ok(_), Err(e)) if candidate == Colour::Green => Err(candidate_missing(candidate, e)),
        (Err(e), Ok(_)) if candidate == Colour::Blue => Err(candidate_missing(candidate, e)),
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => Err(e),
        (Err(b), Err(g)) => Err(worst(b, g)),
    }
}

/// The candidate's problem when the stable copy's data are usable.
fn candidate_missing(candidate: Colour, problem: DataProblem) -> DataProblem {
    match problem {
        DataProblem::NoData => DataProblem::GreenMissing(format!("{candidate}: no data")),
        DataProblem::Stale(d) => DataProblem::GreenMissing(d),
        other => other,
    }
}

async fn error_rate(
    ctx: &Ctx<'_>,
    sides: &Sides,
    requests: &str,
    errors: &str,
) -> Result<CheckData, DataProblem> {
    let (blue, green) = tokio::join!(
        error_counts(ctx, requests, errors, (Color::Blue, sides)),
        error_counts(ctx, requests, errors, (Color::Green, sides))
    );
    let (blue, green) = both(ctx.roles, blue, green)?;
    Ok(CheckData::Errors {
        counts: Pair { blue, green },
    })
}

async fn error_counts(
    ctx: &Ctx<'_>,
    requests: &str,
    errors: &str,
    (color, sides): (Color, &Sides),
) -> Result<Counts, DataProblem> {
    let (req, err) = tokio::join!(
        ctx.measure(requests, (color, sides), "requests", true),
        ctx.measure(errors, (color, sides), "errors", false)
    );
    let total = match ctx.value(&req)? {
        Some(v) => count(&req.what, v)?,
        None => return Err(DataProblem::NoData),
    };
    let bad = match ctx.value(&err) {
        Ok(Some(v)) => count(&err.what, v)?,
        // See the module documentation: an absent errors series next to a usable requests
        // series is a true zero.
        Err(DataProblem::NoData) | Ok(None) => 0.0,
        Err(other) => return Err(other),
    };
    if bad > total {
        return Err(DataProblem::OutOfRange(format!(
            "{}: {bad} errors exceed {total} requests",
            color.as_str()
        )));
    }
    Ok(Counts::new(total, bad))
}

async fn latency(
    ctx: &Ctx<'_>,
    sides: &Sides,
    template: &str,
    edges: &[f64],
) -> Result<CheckData, DataProblem> {
    let (blue, green) = tokio::join!(
        ctx.measure(template, (Color::Blue, sides), "buckets", true),
        ctx.measure(template, (Color::Green, sides), "buckets", true)
    );
    let (blue, green) = both(ctx.roles, buckets(ctx, &blue), buckets(ctx, &green))?;
    let mut out = Vec::with_capacity(edges.len());
    for &edge in edges {
        out.push(EdgeCounts {
            edge,
            counts: Pair {
                blue: blue.exceeding(edge, "blue")?,
                green: green.exceeding(edge, "green")?,
            },
        });
    }
    Ok(CheckData::Latency { edges: out })
}

/// Cumulative bucket counts of one colour, sorted by `le`.
/// A colour's latency buckets; the default is a colour that served nothing (the stable copy
/// during the bake).
#[derive(Default)]
struct Buckets {
    total: f64,
    by_le: Vec<(f64, f64)>,
}

impl Buckets {
    /// Requests in total and those slower than `edge`.
    fn exceeding(&self, edge: f64, color: &str) -> Result<Counts, DataProblem> {
        if self.total == 0.0 && self.by_le.is_empty() {
            return Ok(Counts::default());
        }
        let within = self
            .by_le
            .iter()
            .find(|(le, _)| *le == edge)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                DataProblem::Partial(format!("{color} buckets: no bucket le=\"{edge}\""))
            })?;
        Ok(Counts::new(self.total, (self.total - within).max(0.0)))
    }
}

/// Validates a `sum by (le)` answer: one series per distinct `le`, finite non-negative counts,
/// a `+Inf` bucket, cumulative.
fn buckets(ctx: &Ctx<'_>, m: &Measured) -> Result<Buckets, DataProblem> {
    let result = m
        .result
        .as_ref()
        .map_err(|e| DataProblem::Backend(format!("{}: {e}", m.what)))?;
    let freshness = m
        .freshness
        .as_ref()
        .map_err(|e| DataProblem::Backend(format!("{} freshness: {e}", m.what)))?;
    let samples = match result {
        QueryResult::Vector(v) => v,
        _ => {
            return Err(DataProblem::Partial(format!(
                "{}: expected a vector of buckets",
                m.what
            )))
        }
    };
    if let Some(problem) = ctx.sample_time_problem(result) {
        return Err(DataProblem::Stale(format!("{}: {problem}", m.what)));
    }
    ctx.check_fresh(&m.what, !samples.is_empty(), freshness)?;
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples {
        let le_text = s.labels.get("le").ok_or_else(|| {
            DataProblem::Partial(format!(
                "{}: a series without an `le` label (use sum by (le))",
                m.what
            ))
        })?;
        let le = parse_le(le_text)
            .ok_or_else(|| DataProblem::Partial(format!("{}: bad le=\"{le_text}\"", m.what)))?;
        let value = count(&format!("{} le=\"{le_text}\"", m.what), s.value)?;
        if by_le.insert(order_key(le), (le, value)).is_some() {
            return Err(DataProblem::Partial(format!(
                "{}: several series for le=\"{le_text}\" (aggregate with sum by (le))",
                m.what
            )));
        }
    }
    let by_le: Vec<(f64, f64)> = by_le.into_values().collect();
    let total = match by_le.last() {
        Some((le, c)) if *le == f64::INFINITY => *c,
        _ => {
            return Err(DataProblem::Partial(format!(
                "{}: no le=\"+Inf\" bucket",
                m.what
            )))
        }
    };
    for pair in by_le.windows(2) {
        let ((lo_le, lo), (hi_le, hi)) = (pair[0], pair[1]);
        if lo > hi * (1.0 + 1e-9) + 1e-9 {
            return Err(DataProblem::Partial(format!(
                "{}: buckets not cumulative (le={lo_le}: {lo} > le={hi_le}: {hi})",
                m.what
            )));
        }
    }
    Ok(Buckets { total, by_le })
}

fn parse_le(s: &str) -> Option<f64> {
    let v = match s {
        "+Inf" | "Inf" | "inf" | "+inf" => f64::INFINITY,
        _ => s.parse::<f64>().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

/// A key ordering non-NaN floats numerically.
fn order_key(v: f64) -> u64 {
    let bits = v.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

async fn threshold(ctx: &Ctx<'_>, sides: &Sides, template: &str) -> Result<CheckData, DataProblem> {
    let (blue, green) = tokio::join!(
        ctx.measure(template, (Color::Blue, sides), "value", true),
        ctx.measure(template, (Color::Green, sides), "value", true)
    );
    let finite = |m: &Measured| -> Result<f64, DataProblem> {
        match ctx.value(m)? {
            Some(v) if v.is_finite() => Ok(v),
            Some(v) => Err(DataProblem::NotFinite(format!("{} = {v}", m.what))),
            None => Err(DataProblem::NoData),
        }
    };
    // A guard's query may legitimately be empty for the candidate alone (an error ratio without
    // any error series yet), so its absence is not taken as the candidate having stopped
    // reporting: the statistical checks' request counts tell that.
    let (candidate, stable) = match ctx.roles.stable {
        Colour::Blue => (green, blue),
        Colour::Green => (blue, green),
    };
    let candidate = finite(&candidate)?;
    let stable = match finite(&stable) {
        Ok(v) => Some(v),
        Err(problem) => {
            debug!(api = %ctx.api, %problem, "The stable copy's threshold value is unavailable.");
            None
        }
    };
    Ok(CheckData::Value { candidate, stable })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_parses_and_orders_numerically() {
        let mut les: Vec<f64> = ["+Inf", "0.1", "0.25", "1", "10", "2.5"]
            .iter()
            .map(|s| parse_le(s).unwrap())
            .collect();
        les.sort_by_key(|v| order_key(*v));
        assert_eq!(les, vec![0.1, 0.25, 1.0, 2.5, 10.0, f64::INFINITY]);
        assert!(order_key(-1.0) < order_key(0.0));
        assert!(parse_le("NaN").is_none());
        assert!(parse_le("fast").is_none());
    }

    #[test]
    fn worst_prefers_backend_over_missing_data() {
        assert_eq!(
            worst(DataProblem::NoData, DataProblem::Backend("x".into())),
            DataProblem::Backend("x".into())
        );
        assert_eq!(
            worst(DataProblem::Stale("s".into()), DataProblem::NoData),
            DataProblem::Stale("s".into())
        );
    }
}
