//! Sticky mode's statistics against a real VictoriaMetrics: the pinned subset is bad, the random
//! cohort healthy. HAProxy's counters keep the cohorts apart by server (`green` for the random
//! cohort, `green_pinned` for the pinned one) and the application labels its histogram with the
//! cohort header (`blue`, `random`, `pinned`). Over successive windows the pinned guards fire
//! and roll back, naming the pinned cohort, while the comparison checks read only the random
//! cohort and find nothing against green.

mod support;

use std::path::Path;
use std::time::Duration;

use greenlight::engine::{decide, Action, CheckData, Observation, RolloutState};
use greenlight::metrics::{aligned_end, observe, Backend, MetricsSettings, PromClient, Window};
use greenlight::policy::Policy;
use jiff::{SignedDuration, Timestamp};
use support::victoria::{ImportSeries, Victoria};

const MINUTE: Duration = Duration::from_secs(60);
const TICK_MS: i64 = 15_000;
const TICKS_PER_WINDOW: f64 = 4.0;

const POLICY: &str = r#"
api = "checkout"
interval = "1m"
steps = [10, 50, 100]
min_step_duration = "1h"
warmup_intervals = 0

[traffic]
haproxy = { backend = "api_checkout", blue = "blue", green = "green" }
mode = "sticky"

[traffic.sticky]
key = { header = "X-User-Id" }

[[traffic.sticky.subset]]
name = "beta"
colour = "green"
members = ["alice", "bob"]

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}"}[{interval}]))'
errors = 'sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}",code="5xx"}[{interval}]))'

[[check]]
name = "latency"
kind = "latency_histogram"
buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{service="checkout",cohort="{cohort}"}[{interval}]))'
edges = ["0.25"]

[[check]]
name = "p99"
kind = "threshold"
query = 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{service="checkout",cohort="{cohort}"}[{interval}])))'
max = 0.5
min_green_requests = 50

[[check]]
name = "beta-errors"
kind = "threshold"
cohort = "pinned"
query = 'sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}",code="5xx"}[{interval}])) / sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}"}[{interval}]))'
max = 0.05

[[check]]
name = "beta-p99"
kind = "threshold"
cohort = "pinned"
query = 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{service="checkout",cohort="{cohort}"}[{interval}])))'
max = 0.5
min_green_requests = 100000
"#;

/// One cohort's traffic per 15 s tick: HAProxy responses by code, and the application's
/// histogram increments per bucket (`le` 0.1, 0.25, 1, +Inf, not cumulative).
struct Cohort {
    server: &'static str,
    label: &'static str,
    ok: f64,
    /// 5xx responses per tick.
    errors: f64,
    /// Requests per tick in (0, 0.1], (0.1, 0.25], (0.25, 1], (1, +Inf).
    latency: [f64; 4],
}

/// Blue and green's random cohort: 0.5 % errors, everything within 250 ms. The pinned subset:
/// 20 % errors, most requests slower than a second.
const COHORTS: [Cohort; 3] = [
    Cohort {
        server: "blue",
        label: "blue",
        ok: 199.0,
        errors: 1.0,
        latency: [180.0, 20.0, 0.0, 0.0],
    },
    Cohort {
        server: "green",
        label: "random",
        ok: 19.9,
        errors: 0.1,
        latency: [18.0, 2.0, 0.0, 0.0],
    },
    Cohort {
        server: "green_pinned",
        label: "pinned",
        ok: 40.0,
        errors: 10.0,
        latency: [5.0, 5.0, 10.0, 30.0],
    },
];

/// A counter sampled every 15 s over `[from, to]`, growing by `per_tick`.
fn counter(from: Timestamp, to: Timestamp, per_tick: f64) -> Vec<(i64, f64)> {
    let (mut t, mut v, mut out) = (from.as_millisecond(), 0.0, Vec::new());
    while t <= to.as_millisecond() {
        out.push((t, v));
        v += per_tick;
        t += TICK_MS;
    }
    out
}

fn history(from: Timestamp, to: Timestamp) -> Vec<ImportSeries> {
    let mut series = Vec::new();
    for c in &COHORTS {
        for (code, per_tick) in [("2xx", c.ok), ("5xx", c.errors)] {
            series.push(ImportSeries::new(
                "haproxy_server_http_responses_total",
                &[
                    ("proxy", "api_checkout"),
                    ("server", c.server),
                    ("code", code),
                ],
                counter(from, to, per_tick),
            ));
        }
        let mut cumulative = 0.0;
        for (le, per_tick) in ["0.1", "0.25", "1", "+Inf"].into_iter().zip(c.latency) {
            cumulative += per_tick;
            series.push(ImportSeries::new(
                "http_request_duration_seconds_bucket",
                &[("service", "checkout"), ("cohort", c.label), ("le", le)],
                counter(from, to, cumulative),
            ));
        }
    }
    series
}

fn requests_of(obs: &Observation, check: &str) -> (f64, f64) {
    match obs.check(check) {
        Some(Ok(CheckData::Errors { counts })) => (counts.blue.requests, counts.green.requests),
        Some(Ok(CheckData::Latency { edges })) => (
            edges[0].counts.blue.requests,
            edges[0].counts.green.requests,
        ),
        other => panic!("{check}: unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_pinned_subset_trips_its_guards_and_not_the_comparison_of_the_random_cohort() {
    let policy = Policy::from_toml(POLICY, Path::new("checkout.toml"), None).expect("policy");
    let vm = Victoria::start();
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    let from = end - SignedDuration::from_mins(20);
    vm.import(&history(from, end));
    let client = PromClient::new(MetricsSettings {
        url: vm.url(),
        kind: Backend::VictoriaMetrics,
        timeout: Duration::from_secs(10),
        auth: None,
    })
    .expect("client");

    let mut window = Window::ending_at(end - SignedDuration::from_mins(4), MINUTE);
    let mut state = RolloutState::started(&policy, window.start - SignedDuration::from_mins(10));
    let mut decisions = Vec::new();
    for _ in 0..4 {
        let obs = observe(&client, &policy, window.start, window.end).await;
        // The comparisons see blue and green's random cohort only: the pinned subset's
        // requests are in neither side's counts.
        let random = COHORTS[1].ok + COHORTS[1].errors;
        let blue = COHORTS[0].ok + COHORTS[0].errors;
        for check in ["errors", "latency"] {
            let (b, g) = requests_of(&obs, check);
            assert!(
                (b - blue * TICKS_PER_WINDOW).abs() < 1e-6,
                "{check}: blue {b}"
            );
            assert!(
                (g - random * TICKS_PER_WINDOW).abs() < 1e-6,
                "{check}: green {g} is not the random cohort's {}",
                random * TICKS_PER_WINDOW
            );
        }
        let d = decide(&policy, &state, &obs, window.end);
        assert!(d.explanation.problems.is_empty(), "{d:#?}");
        state = d.state.clone();
        decisions.push(d);
        if state.phase != greenlight::engine::Phase::Progressing {
            break;
        }
        window = window.next();
    }

    // Two windows of failing pinned guards hold; the third (failures = 3) rolls back.
    let actions: Vec<Action> = decisions.iter().map(|d| d.action).collect();
    assert_eq!(
        actions,
        vec![Action::Hold, Action::Hold, Action::Rollback],
        "{decisions:#?}"
    );
    let last = decisions.last().unwrap();
    assert!(
        last.reason.starts_with(
            "beta-errors guard on the pinned cohort failed 3 windows in a row (pinned green 0.2000, limit"
        ),
        "{}",
        last.reason
    );
    assert_eq!(last.set_weights.map(|w| w.green), Some(0));
    for d in &decisions {
        let guard = |name: &str| {
            d.explanation
                .guards
                .iter()
                .find(|g| g.check == name)
                .unwrap_or_else(|| panic!("{name} not evaluated: {d:#?}"))
        };
        // The pinned guards read green_pinned and the pinned histogram; blue stays healthy, so
        // it is green's pinned cohort failing, not the environment.
        let errors = guard("beta-errors");
        assert!((errors.green.unwrap() - 0.2).abs() < 1e-9, "{errors:?}");
        assert!((errors.blue.unwrap() - 0.005).abs() < 1e-9, "{errors:?}");
        assert!(guard("beta-p99").green.unwrap() > 0.5);
        // Counted although the random cohort's 80 requests are below its min_green_requests.
        assert!(guard("beta-p99").consecutive_failures >= 1);
        // The random cohort's own guard and every comparison stream find nothing.
        let p99 = guard("p99");
        assert!(p99.green.unwrap() < 0.25, "{p99:?}");
        assert_eq!(p99.consecutive_failures, 0);
        for s in &d.explanation.streams {
            assert!(
                s.rollback_log_e < 10f64.ln(),
                "{}: evidence against the healthy random cohort: {s:?}",
                s.id
            );
        }
    }
}
