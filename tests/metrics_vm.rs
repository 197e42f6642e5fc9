//! The metrics module against a real VictoriaMetrics loaded with synthetic blue/green history.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use greenlight::engine::{CheckData, Counts, DataProblem, Observation};
use greenlight::metrics::{
    aligned_end, observe, Auth, Backend, MetricsSettings, PromClient, QueryError, QueryResult,
    Window,
};
use greenlight::policy::{Check, CheckKind, Policy};
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

fn client(url: &str, timeout: Duration) -> PromClient {
    PromClient::new(MetricsSettings {
        url: url.to_string(),
        kind: Backend::VictoriaMetrics,
        timeout,
        auth: None,
    })
    .expect("client")
}

fn error_check(name: &str, requests: &str, errors: &str) -> Check {
    Check {
        name: name.into(),
        kind: CheckKind::ErrorRate {
            requests: requests.into(),
            errors: errors.into(),
            tolerance: 0.2,
            advance_tolerance: 0.1,
            overdispersion: 1.0,
            min_errors: 5,
            advance_max_rate: None,
            blue_max_error_rate: None,
        },
    }
}

fn latency_check(name: &str, buckets: &str, edges: &[f64]) -> Check {
    Check {
        name: name.into(),
        kind: CheckKind::LatencyHistogram {
            buckets: buckets.into(),
            edges: edges.to_vec(),
            tolerance: 0.2,
            advance_tolerance: 0.1,
            overdispersion: 1.0,
            min_errors: 5,
            advance_max_rate: None,
        },
    }
}

fn threshold_check(name: &str, query: &str) -> Check {
    Check {
        name: name.into(),
        kind: CheckKind::Threshold {
            query: query.into(),
            max: Some(10.0),
            min: None,
            failures: 1,
            min_green_requests: 0,
            cohort: Default::default(),
        },
    }
}

fn policy(api: &str, interval: Duration, checks: Vec<Check>) -> Policy {
    let mut p = support::fixtures::policy(
        api,
        support::fixtures::consul_keys("w/blue", "w/green"),
        &[1.0, 10.0, 50.0, 100.0],
        checks,
    );
    p.interval = interval;
    p
}

fn checkout_policy(interval: Duration) -> Policy {
    policy(
        "checkout",
        interval,
        vec![
            error_check("errors", REQUESTS, ERRORS),
            latency_check("latency", BUCKETS, &[0.25, 1.0]),
            threshold_check("green-errors", ERRORS),
        ],
    )
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// A counter sampled every 15 s from `from` to `to` (inclusive), growing by `step()` per tick;
/// `reset_at` restarts it from 0 (a process restart).
fn counter(
    from: Timestamp,
    to: Timestamp,
    reset_at: Option<Timestamp>,
    mut step: impl FnMut() -> f64,
) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut value = 0.0;
    let mut t = ms(from);
    while t <= ms(to) {
        if reset_at.is_some_and(|r| ms(r) == t) {
            value = 0.0;
        }
        out.push((t, value));
        value += step();
        t += TICK_MS;
    }
    out
}

/// What `increase()` over `(start, end]` must give for `samples` (VictoriaMetrics semantics:
/// no extrapolation, a reset counts the new value, a series starts from 0).
fn expected_increase(samples: &[(i64, f64)], start: Timestamp, end: Timestamp) -> f64 {
    let mut prev: Option<f64> = None;
    let mut total = 0.0;
    for &(t, v) in samples {
        if t > ms(end) {
            break;
        }
        if t > ms(start) {
            let p = prev.unwrap_or(0.0);
            total += if v >= p { v - p } else { v };
        }
        prev = Some(v);
    }
    total
}

/// Cumulative bucket series by `le`, ascending, `+Inf` last.
type Histogram = Vec<(&'static str, Vec<(i64, f64)>)>;

/// Synthetic history for the `checkout` API: blue never fails (no code="500" series at all),
/// green fails a little and restarts once; both have a latency histogram.
struct History {
    /// The newest window boundary with data up to it.
    end: Timestamp,
    blue_ok: Vec<(i64, f64)>,
    green_ok: Vec<(i64, f64)>,
    green_err: Vec<(i64, f64)>,
    /// Cumulative buckets per colour: (le, samples), le ascending, +Inf last.
    buckets: Vec<(&'static str, Histogram)>,
}

impl History {
    fn new(seed: u64) -> History {
        let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
        let from = end - SignedDuration::from_mins(30);
        let restart = end - SignedDuration::from_secs(14 * 60 + 45);
        let mut rng = StdRng::seed_from_u64(seed);
        let blue_ok = counter(from, end, None, || rng.random_range(10..50) as f64);
        let green_ok = counter(from, end, Some(restart), || rng.random_range(5..30) as f64);
        let green_err = counter(from, end, None, || rng.random_range(0..3) as f64);
        let mut buckets = Vec::new();
        for color in ["blue", "green"] {
            let (mut a, mut b, mut c, mut d) = (0.0, 0.0, 0.0, 0.0);
            let mut series: Histogram = vec![
                ("0.1", vec![]),
                ("0.25", vec![]),
                ("1", vec![]),
                ("+Inf", vec![]),
            ];
            let mut t = ms(from);
            while t <= ms(end) {
                series[0].1.push((t, a));
                series[1].1.push((t, a + b));
                series[2].1.push((t, a + b + c));
                series[3].1.push((t, a + b + c + d));
                a += rng.random_range(5..40) as f64;
                b += rng.random_range(0..10) as f64;
                c += rng.random_range(0..5) as f64;
                d += rng.random_range(0..2) as f64;
                t += TICK_MS;
            }
            buckets.push((color, series));
        }
        History {
            end,
            blue_ok,
            green_ok,
            green_err,
            buckets,
        }
    }

    fn import(&self, vm: &Victoria) {
        let mut series = vec![
            ImportSeries::new(
                "http_requests_total",
                &[("app", "checkout"), ("color", "blue"), ("code", "200")],
                self.blue_ok.clone(),
            ),
            ImportSeries::new(
                "http_requests_total",
                &[("app", "checkout"), ("color", "green"), ("code", "200")],
                self.green_ok.clone(),
            ),
            ImportSeries::new(
                "http_requests_total",
                &[("app", "checkout"), ("color", "green"), ("code", "500")],
                self.green_err.clone(),
            ),
        ];
        for (color, buckets) in &self.buckets {
            for (le, samples) in buckets {
                series.push(ImportSeries::new(
                    "http_request_duration_seconds_bucket",
                    &[("app", "checkout"), ("color", color), ("le", le)],
                    samples.clone(),
                ));
            }
        }
        vm.import(&series);
    }

    fn errors(&self, w: Window) -> (Counts, Counts) {
        let blue = expected_increase(&self.blue_ok, w.start, w.end);
        let green_err = expected_increase(&self.green_err, w.start, w.end);
        let green = expected_increase(&self.green_ok, w.start, w.end) + green_err;
        (Counts::new(blue, 0.0), Counts::new(green, green_err))
    }

    /// (total, slower than `le`) for `color`.
    fn latency(&self, color: &str, le: &str, w: Window) -> Counts {
        let buckets = &self.buckets.iter().find(|(c, _)| *c == color).unwrap().1;
        let of = |le: &str| {
            let s = &buckets.iter().find(|(l, _)| *l == le).unwrap().1;
            expected_increase(s, w.start, w.end)
        };
        let total = of("+Inf");
        Counts::new(total, total - of(le))
    }
}

fn errors_of(obs: &Observation, check: &str) -> (Counts, Counts) {
    match obs.check(check) {
        Some(Ok(CheckData::Errors { counts })) => (counts.blue, counts.green),
        other => panic!("{check}: expected error counts, got {other:?}"),
    }
}

fn problem_of(obs: &Observation, check: &str) -> DataProblem {
    match obs.check(check) {
        Some(Err(p)) => p.clone(),
        other => panic!("{check}: expected a data problem, got {other:?}"),
    }
}

#[tokio::test]
async fn observe_returns_the_exact_counts_of_a_window() {
    let vm = Victoria::start();
    let history = History::new(7);
    history.import(&vm);
    let client = client(&vm.url(), Duration::from_secs(10));
    let policy = checkout_policy(MINUTE);
    let w = Window::ending_at(history.end - SignedDuration::from_mins(5), MINUTE);

    let obs = observe(&client, &policy, w.start, w.end).await;
    assert_eq!((obs.start, obs.end), (w.start, w.end));
    assert_eq!(obs.checks.len(), 3);

    let (blue, green) = errors_of(&obs, "errors");
    let (want_blue, want_green) = history.errors(w);
    assert!(want_blue.requests > 0.0 && want_green.requests > 0.0);
    assert_eq!(blue, want_blue, "blue has no error series: 0 errors");
    assert_eq!(green, want_green);

    match obs.check("latency") {
        Some(Ok(CheckData::Latency { edges })) => {
            assert_eq!(edges.len(), 2);
            for (e, (edge, le)) in edges.iter().zip([(0.25, "0.25"), (1.0, "1")]) {
                assert_eq!(e.edge, edge);
                assert_eq!(
                    e.counts.blue,
                    history.latency("blue", le, w),
                    "blue le={le}"
                );
                assert_eq!(
                    e.counts.green,
                    history.latency("green", le, w),
                    "green le={le}"
                );
            }
        }
        other => panic!("latency: {other:?}"),
    }

    // The threshold query reads green's errors; blue has none, so its value is unavailable.
    assert_eq!(
        obs.check("green-errors"),
        Some(&Ok(CheckData::Value {
            candidate: want_green.bad,
            stable: None
        }))
    );
}

#[tokio::test]
async fn successive_aligned_windows_partition_the_data() {
    let vm = Victoria::start();
    let history = History::new(11);
    history.import(&vm);
    let client = client(&vm.url(), Duration::from_secs(10));
    let policy = checkout_policy(MINUTE);

    // Ten windows from end−20m to end−10m, across green's restart at end−14m45s.
    let last = Window::ending_at(history.end - SignedDuration::from_mins(10), MINUTE);
    let mut w = Window::ending_at(history.end - SignedDuration::from_mins(19), MINUTE);
    let (mut blue_sum, mut green_sum, mut green_err_sum) = (0.0, 0.0, 0.0);
    let mut count = 0;
    loop {
        let obs = observe(&client, &policy, w.start, w.end).await;
        let (blue, green) = errors_of(&obs, "errors");
        blue_sum += blue.requests;
        green_sum += green.requests;
        green_err_sum += green.bad;
        count += 1;
        if w == last {
            break;
        }
        w = w.next();
    }
    assert_eq!(count, 10);

    let span = Window {
        start: last.end - SignedDuration::from_mins(10),
        end: last.end,
    };
    let (want_blue, want_green) = history.errors(span);
    assert_eq!(blue_sum, want_blue.requests);
    assert_eq!(green_sum, want_green.requests);
    assert_eq!(green_err_sum, want_green.bad);

    // The backend's own increase over the whole span agrees.
    let q = r#"sum(increase(http_requests_total{app="checkout",color="green"}[600s]))"#;
    match client.instant(q, span.end).await {
        Ok(QueryResult::Vector(v)) => assert_eq!(v[0].value, green_sum),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_metric_that_never_existed_is_no_data() {
    let vm = Victoria::start();
    History::new(3).import(&vm);
    let client = client(&vm.url(), Duration::from_secs(10));
    let policy = policy(
        "payments",
        MINUTE,
        vec![
            error_check("errors", REQUESTS, ERRORS),
            latency_check("latency", BUCKETS, &[0.25]),
            threshold_check("guard", REQUESTS),
        ],
    );
    let w = Window::latest(Timestamp::now(), MINUTE, Duration::ZERO);
    let obs = observe(&client, &policy, w.start, w.end).await;
    for check in ["errors", "latency", "guard"] {
        assert_eq!(problem_of(&obs, check), DataProblem::NoData, "{check}");
    }
}

#[tokio::test]
async fn a_series_that_stopped_arriving_is_stale_not_zero() {
    let vm = Victoria::start();
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    let stop = end - SignedDuration::from_mins(4);
    let from = end - SignedDuration::from_mins(40);
    let mut rng = StdRng::seed_from_u64(5);
    let mut series = Vec::new();
    for color in ["blue", "green"] {
        // Blue keeps arriving; green stopped four minutes before the window end.
        let to = if color == "blue" { end } else { stop };
        series.push(ImportSeries::new(
            "http_requests_total",
            &[("app", "orders"), ("color", color), ("code", "200")],
            counter(from, to, None, || rng.random_range(10..20) as f64),
        ));
    }
    vm.import(&series);
    let client = client(&vm.url(), Duration::from_secs(10));

    // A one-minute window after the stop: increase() is empty, as for a metric that never existed.
    let policy_1m = policy(
        "orders",
        MINUTE,
        vec![error_check("errors", REQUESTS, ERRORS)],
    );
    let q = r#"sum(increase(http_requests_total{app="orders",color="green"}[60s]))"#;
    assert_eq!(
        client.instant(q, end).await,
        Ok(QueryResult::Vector(vec![]))
    );
    let obs = observe(&client, &policy_1m, end - SignedDuration::from_mins(1), end).await;
    // Blue still reports, so green's stale data say that green stopped reporting.
    match problem_of(&obs, "errors") {
        DataProblem::GreenMissing(d) => assert!(
            d.contains("green requests: no samples in the window"),
            "{d}"
        ),
        other => panic!("expected green missing, got {other:?}"),
    }

    // A five-minute window covering the stop: increase() returns a clean-looking count of the
    // first minute only.
    let q = r#"sum(increase(http_requests_total{app="orders",color="green"}[300s]))"#;
    match client.instant(q, end).await {
        Ok(QueryResult::Vector(v)) => assert!(v[0].value > 0.0, "{v:?}"),
        other => panic!("{other:?}"),
    }
    let policy_5m = policy(
        "orders",
        Duration::from_secs(300),
        vec![error_check("errors", REQUESTS, ERRORS)],
    );
    let obs = observe(&client, &policy_5m, end - SignedDuration::from_mins(5), end).await;
    match problem_of(&obs, "errors") {
        DataProblem::GreenMissing(d) => assert!(d.contains("240s"), "{d}"),
        other => panic!("expected green missing, got {other:?}"),
    }

    // Blue alone, still arriving, is fine over the same window.
    let blue_only = policy(
        "orders",
        MINUTE,
        vec![threshold_check(
            "blue-requests",
            r#"sum(increase(http_requests_total{app="orders",color="blue"}[{interval}]))"#,
        )],
    );
    let obs = observe(&client, &blue_only, end - SignedDuration::from_mins(1), end).await;
    assert!(matches!(
        obs.check("blue-requests"),
        Some(Ok(CheckData::Value { .. }))
    ));
}

#[tokio::test]
async fn missing_or_duplicated_series_are_partial() {
    let vm = Victoria::start();
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    let from = end - SignedDuration::from_mins(20);
    let mut series = Vec::new();
    for color in ["blue", "green"] {
        // Green's histogram lacks the 0.25 bucket.
        for le in ["0.1", "0.25", "1", "+Inf"] {
            if color == "green" && le == "0.25" {
                continue;
            }
            let rate = match le {
                "0.1" => 5.0,
                "0.25" => 7.0,
                "1" => 8.0,
                _ => 9.0,
            };
            series.push(ImportSeries::new(
                "http_request_duration_seconds_bucket",
                &[("app", "search"), ("color", color), ("le", le)],
                counter(from, end, None, || rate),
            ));
        }
        for pod in ["a", "b"] {
            series.push(ImportSeries::new(
                "http_requests_total",
                &[("app", "search"), ("color", color), ("pod", pod)],
                counter(from, end, None, || 3.0),
            ));
        }
    }
    vm.import(&series);
    let client = client(&vm.url(), Duration::from_secs(10));
    let policy = policy(
        "search",
        MINUTE,
        vec![
            latency_check("latency", BUCKETS, &[0.25, 1.0]),
            latency_check("latency-1s", BUCKETS, &[1.0]),
            // Not aggregated: one series per pod.
            error_check(
                "per-pod",
                r#"increase(http_requests_total{app="{api}",color="{color}"}[{interval}])"#,
                ERRORS,
            ),
        ],
    );
    let w = Window::ending_at(end, MINUTE);
    let obs = observe(&client, &policy, w.start, w.end).await;
    match problem_of(&obs, "latency") {
        DataProblem::Partial(d) => assert!(d.contains("le=\"0.25\""), "{d}"),
        other => panic!("{other:?}"),
    }
    // The edges present in the data work for both colours: 4 ticks × 9 total, 4 × 1 slower than 1 s.
    match obs.check("latency-1s") {
        Some(Ok(CheckData::Latency { edges })) => {
            assert_eq!(edges[0].counts.blue, Counts::new(36.0, 4.0));
            assert_eq!(edges[0].counts.green, Counts::new(36.0, 4.0));
        }
        other => panic!("{other:?}"),
    }
    match problem_of(&obs, "per-pod") {
        DataProblem::Partial(d) => assert!(d.contains("2 series"), "{d}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn infinite_and_negative_values_are_not_finite() {
    let vm = Victoria::start();
    History::new(9).import(&vm);
    let client = client(&vm.url(), Duration::from_secs(10));
    let policy = policy(
        "checkout",
        MINUTE,
        vec![
            threshold_check("ratio", &format!("{REQUESTS} / 0")),
            error_check("negative", &format!("-1 * {REQUESTS}"), ERRORS),
        ],
    );
    let w = Window::latest(Timestamp::now(), MINUTE, Duration::from_secs(120));
    let obs = observe(&client, &policy, w.start, w.end).await;
    assert!(matches!(problem_of(&obs, "ratio"), DataProblem::NotFinite(d) if d.contains("inf")));
    assert!(matches!(problem_of(&obs, "negative"), DataProblem::NotFinite(d) if d.contains("-")));
}

#[tokio::test]
async fn vm_answer_shapes_and_syntax_errors() {
    let vm = Victoria::start();
    let client = client(&vm.url(), Duration::from_secs(10));
    let now = Timestamp::now();

    assert_eq!(
        client.instant("0/0", now).await,
        Ok(QueryResult::Vector(vec![]))
    );
    match client.instant("1/0", now).await {
        Ok(QueryResult::Vector(v)) => assert_eq!(v[0].value, f64::INFINITY),
        other => panic!("{other:?}"),
    }
    match client
        .range("vector(2)", now - SignedDuration::from_mins(5), now, MINUTE)
        .await
    {
        Ok(QueryResult::Matrix(m)) => {
            assert_eq!(m.len(), 1);
            assert!(m[0].points.len() >= 5, "{m:?}");
            assert!(m[0].points.iter().all(|p| p.1 == 2.0));
        }
        other => panic!("{other:?}"),
    }
    let message = match client.instant("sum(rate(x[1m])", now).await {
        Err(QueryError::Syntax { message }) => message,
        other => panic!("{other:?}"),
    };
    assert!(!message.is_empty());

    // Through observe(), the same server message reaches the check's problem.
    let policy = policy(
        "checkout",
        MINUTE,
        vec![error_check("errors", "sum(rate(x[{interval}])", ERRORS)],
    );
    let w = Window::latest(now, MINUTE, Duration::ZERO);
    let obs = observe(&client, &policy, w.start, w.end).await;
    match problem_of(&obs, "errors") {
        DataProblem::Backend(d) => {
            assert!(d.contains("query rejected"), "{d}");
            // VictoriaMetrics echoes the query, then gives its reason; the reason reaches the
            // observation.
            let reason = message.rsplit("): ").next().unwrap();
            assert!(reason.contains("unexpected token"), "{message}");
            assert!(d.contains(reason), "{d}");
        }
        other => panic!("{other:?}"),
    }

    // A body cap smaller than the answer.
    let small = client.clone().with_max_body(8);
    assert_eq!(
        small.instant("vector(1)", now).await,
        Err(QueryError::TooLarge { limit: 8 })
    );
}

#[tokio::test]
async fn a_killed_backend_is_unreachable() {
    let mut vm = Victoria::start();
    let client = client(&vm.url(), Duration::from_secs(5));
    assert!(client.instant("vector(1)", Timestamp::now()).await.is_ok());
    vm.kill();
    assert!(matches!(
        client.instant("vector(1)", Timestamp::now()).await,
        Err(QueryError::Unreachable(_))
    ));
    let policy = checkout_policy(MINUTE);
    let w = Window::latest(Timestamp::now(), MINUTE, Duration::ZERO);
    let obs = observe(&client, &policy, w.start, w.end).await;
    for check in ["errors", "latency", "green-errors"] {
        match problem_of(&obs, check) {
            DataProblem::Backend(d) => assert!(d.contains("unreachable"), "{check}: {d}"),
            other => panic!("{check}: {other:?}"),
        }
    }
}

/// A TCP server that accepts connections and never answers.
fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

/// An HTTP server answering every request with `response`; each raw request goes to the channel.
fn canned_server(response: String) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then the body by Content-Length.
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&raw).to_string());
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_backend_that_never_answers_times_out() {
    let addr = silent_server();
    let client = client(&format!("http://{addr}"), Duration::from_millis(300));
    assert_eq!(
        client.instant("vector(1)", Timestamp::now()).await,
        Err(QueryError::Timeout(Duration::from_millis(300)))
    );
    let policy = checkout_policy(MINUTE);
    let w = Window::latest(Timestamp::now(), MINUTE, Duration::ZERO);
    let obs = observe(&client, &policy, w.start, w.end).await;
    match problem_of(&obs, "errors") {
        DataProblem::Backend(d) => assert!(d.contains("no answer within"), "{d}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_backend_answering_garbage_is_malformed() {
    let (addr, _requests) = canned_server(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\nConnection: close\r\n\r\n<html></html>"
            .to_string(),
    );
    let client = client(&format!("http://{addr}"), Duration::from_secs(5));
    assert!(matches!(
        client.instant("vector(1)", Timestamp::now()).await,
        Err(QueryError::Malformed(d)) if d.contains("<html>")
    ));
    let policy = checkout_policy(MINUTE);
    let w = Window::latest(Timestamp::now(), MINUTE, Duration::ZERO);
    let obs = observe(&client, &policy, w.start, w.end).await;
    match problem_of(&obs, "latency") {
        DataProblem::Backend(d) => assert!(d.contains("malformed"), "{d}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn queries_carry_credentials_time_and_no_cache() {
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    let (addr, requests) = canned_server(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let client = PromClient::new(MetricsSettings {
        url: format!("http://{addr}/select/0/prometheus/"),
        kind: Backend::VictoriaMetrics,
        timeout: Duration::from_secs(5),
        auth: Some(Auth::Bearer("t0ken".into())),
    })
    .unwrap();
    let at = Timestamp::from_millisecond(1_795_754_059_250).unwrap();
    assert_eq!(
        client.instant("up", at).await,
        Ok(QueryResult::Vector(vec![]))
    );
    let raw = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        raw.starts_with("POST /select/0/prometheus/api/v1/query HTTP/1.1"),
        "{raw}"
    );
    assert!(
        raw.contains("authorization: Bearer t0ken") || raw.contains("Authorization: Bearer t0ken"),
        "{raw}"
    );
    let form = raw.split_once("\r\n\r\n").unwrap().1;
    assert!(form.contains("query=up"), "{form}");
    assert!(form.contains("time=1795754059.250"), "{form}");
    assert!(form.contains("nocache=1"), "{form}");
}

#[tokio::test]
async fn checks_reading_the_same_series_share_one_freshness_query_per_colour() {
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    let (addr, requests) = canned_server(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let client = client(&format!("http://{addr}"), Duration::from_secs(5));
    // A histogram comparison and a quantile guard on the same buckets.
    let p99 = r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{app="{api}",color="{color}"}[{interval}])))"#;
    let policy = policy(
        "checkout",
        MINUTE,
        vec![
            latency_check("latency", BUCKETS, &[0.25]),
            threshold_check("p99", p99),
        ],
    );
    let w = Window::latest(Timestamp::now(), MINUTE, Duration::ZERO);
    let obs = observe(&client, &policy, w.start, w.end).await;
    assert_eq!(problem_of(&obs, "latency"), DataProblem::NoData);
    assert_eq!(problem_of(&obs, "p99"), DataProblem::NoData);
    let forms: Vec<String> = requests.try_iter().collect();
    let freshness: Vec<&String> = forms
        .iter()
        .filter(|r| r.contains("tlast_over_time"))
        .collect();
    // Two bucket queries, two quantile queries, and one freshness query per colour.
    assert_eq!(freshness.len(), 2, "{freshness:#?}");
    assert_eq!(forms.len(), 6, "{forms:#?}");
}
