//! Batched queries against a real VictoriaMetrics: many APIs observed at once through one
//! batching client see exactly what each sees through its own queries, including the APIs
//! whose data is missing, stale or partial, and when the batched answers cannot be used.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use greenlight::engine::{CheckData, Observation};
use greenlight::metrics::{
    aligned_end, observe_with, Backend, MetricsSettings, ObserveOptions, PromClient, Window,
};
use greenlight::policy::{Check, CheckKind, Colour, Policy, Roles};
use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::victoria::{ImportSeries, Victoria};

const MINUTE: Duration = Duration::from_secs(60);
const TICK_MS: i64 = 15_000;

const REQUESTS: &str =
    r#"sum(increase(http_requests_total{app="{api}",color="{color}"}[{interval}]))"#;
const ERRORS: &str =
    r#"sum(increase(http_requests_total{app="{api}",color="{color}",code="500"}[{interval}]))"#;
const BUCKETS: &str = r#"sum by (le) (increase(http_request_duration_seconds_bucket{app="{api}",color="{color}"}[{interval}]))"#;
const RATIO: &str = r#"sum(rate(http_requests_total{app="{api}",color="{color}",code="500"}[{interval}])) / sum(rate(http_requests_total{app="{api}",color="{color}"}[{interval}])) * 100"#;

fn client(vm: &Victoria) -> PromClient {
    PromClient::new(MetricsSettings {
        url: vm.url(),
        kind: Backend::VictoriaMetrics,
        timeout: Duration::from_secs(10),
        auth: None,
    })
    .expect("client")
}

fn policy(api: &str) -> Policy {
    let checks = vec![
        Check {
            name: "errors".into(),
            kind: CheckKind::ErrorRate {
                requests: REQUESTS.into(),
                errors: ERRORS.into(),
                tolerance: 0.2,
                advance_tolerance: 0.1,
                overdispersion: 1.0,
                min_errors: 5,
                advance_max_rate: None,
                blue_max_error_rate: None,
            },
        },
        Check {
            name: "latency".into(),
            kind: CheckKind::LatencyHistogram {
                buckets: BUCKETS.into(),
                edges: vec![0.25, 1.0],
                tolerance: 0.2,
                advance_tolerance: 0.1,
                overdispersion: 1.0,
                min_errors: 5,
                advance_max_rate: None,
            },
        },
        Check {
            name: "error-percent".into(),
            kind: CheckKind::Threshold {
                query: RATIO.into(),
                max: Some(10.0),
                min: None,
                failures: 1,
                min_green_requests: 0,
                cohort: Default::default(),
            },
        },
    ];
    support::fixtures::policy(
        api,
        support::fixtures::consul_keys(format!("w/{api}/blue"), format!("w/{api}/green")),
        &[1.0, 10.0, 50.0, 100.0],
        checks,
    )
}

/// What happens to an API's green series in the synthetic history.
#[derive(Clone, Copy, PartialEq)]
enum Green {
    Healthy,
    /// Never reported.
    Missing,
    /// Stopped ten minutes before the end.
    Stopped,
    /// Never failed: no `code="500"` series at all.
    NoErrors,
}

/// A counter sampled every 15 s over `[from, to]`, growing by a random step per tick.
fn counter(rng: &mut StdRng, from: i64, to: i64, most: u32) -> Vec<(i64, f64)> {
    let mut value = 0.0;
    (0..)
        .map(|i| from + i * TICK_MS)
        .take_while(|t| *t <= to)
        .map(|t| {
            let sample = (t, value);
            value += f64::from(rng.random_range(0..most));
            sample
        })
        .collect()
}

/// Two pods per colour (so the sums add series), errors, and a latency histogram.
fn history(rng: &mut StdRng, api: &str, green: Green, end: Timestamp) -> Vec<ImportSeries> {
    let to = end.as_millisecond();
    let from = to - 30 * 60_000;
    let mut out = Vec::new();
    for color in ["blue", "green"] {
        let last = match (color, green) {
            ("green", Green::Missing) => continue,
            ("green", Green::Stopped) => to - 10 * 60_000,
            _ => to,
        };
        for pod in ["a", "b"] {
            let labels = |code: &'static str| {
                vec![
                    ("app", api.to_string()),
                    ("color", color.to_string()),
                    ("pod", pod.to_string()),
                    ("code", code.to_string()),
                ]
            };
            let series = |name: &str, labels: Vec<(&str, String)>, samples| {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                ImportSeries::new(name, &labels, samples)
            };
            out.push(series(
                "http_requests_total",
                labels("200"),
                counter(rng, from, last, 40),
            ));
            if !(color == "green" && green == Green::NoErrors) {
                out.push(series(
                    "http_requests_total",
                    labels("500"),
                    counter(rng, from, last, 3),
                ));
            }
            let mut cumulative: Vec<(i64, f64)> = counter(rng, from, last, 20);
            for le in ["0.1", "0.25", "1", "+Inf"] {
                let mut l = labels("");
                l.pop();
                l.push(("le", le.to_string()));
                out.push(series(
                    "http_request_duration_seconds_bucket",
                    l,
                    cumulative.clone(),
                ));
                let more = counter(rng, from, last, 6);
                for (c, m) in cumulative.iter_mut().zip(more) {
                    c.1 += m.1;
                }
            }
        }
    }
    out
}

/// Twelve APIs, three of each kind of green.
fn world(vm: &Victoria, seed: u64) -> (Vec<Policy>, Timestamp) {
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds = [
        Green::Healthy,
        Green::Missing,
        Green::Stopped,
        Green::NoErrors,
    ];
    let mut series = Vec::new();
    let mut policies = Vec::new();
    for i in 0..12 {
        let api = format!("api-{i}.svc");
        series.extend(history(&mut rng, &api, kinds[i % kinds.len()], end));
        policies.push(policy(&api));
    }
    vm.import(&series);
    (policies, end)
}

async fn observe_all(client: &PromClient, policies: &[Policy], w: Window) -> Vec<Observation> {
    let options = ObserveOptions::default();
    let options = &options;
    join_all(policies.iter().map(|p| async move {
        observe_with(
            client,
            p,
            (w.start, w.end),
            Roles::stable(Colour::Blue),
            options,
        )
        .await
    }))
    .await
}

/// Each API's observation through its own queries, one API after the other.
async fn observe_alone(client: &PromClient, policies: &[Policy], w: Window) -> Vec<Observation> {
    let mut out = Vec::new();
    for p in policies {
        out.push(
            observe_all(client, std::slice::from_ref(p), w)
                .await
                .remove(0),
        );
    }
    out
}

/// The same observations: counts exactly, values (ratios of sums of rates) to the last bits,
/// which depend on the order of the additions.
fn same(alone: &[Observation], together: &[Observation], context: &str) {
    assert_eq!(alone.len(), together.len());
    for (a, t) in alone.iter().zip(together) {
        let mut t = t.clone();
        for (ca, ct) in a.checks.iter().zip(t.checks.iter_mut()) {
            if let (
                Ok(CheckData::Value { candidate, stable }),
                Ok(CheckData::Value {
                    candidate: c,
                    stable: s,
                }),
            ) = (&ca.data, &mut ct.data)
            {
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(y.abs());
                assert!(close(*candidate, *c), "{context}: {candidate} vs {c}");
                assert_eq!(stable.is_some(), s.is_some(), "{context}");
                if let (Some(x), Some(y)) = (stable, s.as_mut()) {
                    assert!(close(*x, *y), "{context}: {x} vs {y}");
                    *y = *x;
                }
                *c = *candidate;
            }
        }
        assert_eq!(a, &t, "{context}");
    }
}

#[tokio::test]
async fn apis_observed_together_through_batched_queries_see_what_their_own_queries_see() {
    let vm = Victoria::start();
    let (policies, end) = world(&vm, 11);
    let plain = client(&vm);
    let batching = client(&vm).with_batching(256);
    for back in [3, 12, 20] {
        let w = Window::ending_at(end - SignedDuration::from_mins(back), MINUTE);
        let alone = observe_alone(&plain, &policies, w).await;
        // The worlds differ: some usable counts, some data problems.
        assert!(alone
            .iter()
            .any(|o| o.checks.iter().all(|c| c.data.is_ok())));
        assert!(alone
            .iter()
            .any(|o| o.checks.iter().any(|c| c.data.is_err())));
        let together = observe_all(&batching, &policies, w).await;
        same(
            &alone,
            &together,
            &format!("window ending {back} min before the end"),
        );
    }
    let stats = batching.batch_stats().unwrap();
    // Far fewer requests than queries: most queries were answered by a batch.
    assert!(stats.batched > 10 * stats.batches, "{stats:?}");
    assert!(stats.batched > 4 * stats.alone, "{stats:?}");
}

#[tokio::test]
async fn batched_answers_that_cannot_be_used_leave_each_query_to_its_own_answer() {
    let vm = Victoria::start();
    let (policies, end) = world(&vm, 12);
    // Answers for one API fit in 600 bytes, those for many do not: such batches are refused
    // (too large) and their queries are sent alone.
    let plain = client(&vm).with_max_body(600);
    let batching = client(&vm).with_max_body(600).with_batching(256);
    let w = Window::ending_at(end - SignedDuration::from_mins(4), MINUTE);
    let alone = observe_alone(&plain, &policies, w).await;
    assert!(alone
        .iter()
        .any(|o| o.checks.iter().all(|c| c.data.is_ok())));
    let together = observe_all(&batching, &policies, w).await;
    same(&alone, &together, "");
    let stats = batching.batch_stats().unwrap();
    assert!(stats.fallen_back > 0, "{stats:?}");
}
