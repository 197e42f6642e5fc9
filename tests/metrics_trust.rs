//! Metrics that look valid but are not: freshness answers that say nothing, sample times far
//! from the evaluation time, and green's data missing while blue's are present. Against the
//! real VictoriaMetrics where it can give the answer, and a fake backend where it cannot.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use greenlight::engine::{CheckData, DataProblem, Observation};
use greenlight::metrics::{aligned_end, observe, Backend, MetricsSettings, PromClient};
use greenlight::policy::{Check, CheckKind, Policy};
use jiff::{SignedDuration, Timestamp};
use support::victoria::{ImportSeries, Victoria};

const MINUTE: Duration = Duration::from_secs(60);

const REQUESTS: &str =
    r#"sum(increase(http_requests_total{app="{api}",color="{color}"}[{interval}]))"#;
const ERRORS: &str =
    r#"sum(increase(http_requests_total{app="{api}",color="{color}",code="500"}[{interval}]))"#;

fn client(url: &str) -> PromClient {
    PromClient::new(MetricsSettings {
        url: url.to_string(),
        kind: Backend::VictoriaMetrics,
        timeout: Duration::from_secs(10),
        auth: None,
    })
    .expect("client")
}

fn errors_policy(api: &str, requests: &str) -> Policy {
    let check = Check {
        name: "errors".into(),
        kind: CheckKind::ErrorRate {
            requests: requests.into(),
            errors: ERRORS.into(),
            tolerance: 0.2,
            advance_tolerance: 0.1,
            overdispersion: 1.0,
            min_errors: 5,
            advance_max_rate: None,
            blue_max_error_rate: None,
        },
    };
    support::fixtures::policy(
        api,
        support::fixtures::consul_keys("w/blue", "w/green"),
        &[1.0, 10.0, 50.0, 100.0],
        vec![check],
    )
}

fn problem_of(obs: &Observation, check: &str) -> DataProblem {
    match obs.check(check) {
        Some(Err(p)) => p.clone(),
        other => panic!("{check}: expected a data problem, got {other:?}"),
    }
}

/// A one-sample vector answer `[time, value]`, or an empty vector.
fn vector(sample: Option<(Timestamp, &str)>) -> String {
    let result = match sample {
        Some((t, v)) => format!(
            r#"[{{"metric":{{}},"value":[{}.{:03},"{v}"]}}]"#,
            t.as_second(),
            t.subsec_millisecond()
        ),
        None => "[]".into(),
    };
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#)
}

/// A PromQL backend answering the freshness queries (`tlast_over_time`) with `freshness` and
/// every other query with `value`.
fn fake_backend(value: String, freshness: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
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
            let request = String::from_utf8_lossy(&raw);
            let body = if request.contains("tlast_over_time") {
                &freshness
            } else {
                &value
            };
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    addr
}

async fn observe_fake(value: String, freshness: String, end: Timestamp) -> Observation {
    let addr = fake_backend(value, freshness);
    let policy = errors_policy("checkout", REQUESTS);
    observe(
        &client(&format!("http://{addr}")),
        &policy,
        end - SignedDuration::from_mins(1),
        end,
    )
    .await
}

#[tokio::test]
async fn freshness_answers_of_nan_infinity_or_nothing_fail_closed() {
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    let value = vector(Some((end, "100")));
    for (freshness, expected) in [
        (vector(Some((end, "NaN"))), "freshness answer NaN"),
        (vector(Some((end, "+Inf"))), "freshness answer inf"),
        (vector(None), "its freshness is unknown"),
    ] {
        let obs = observe_fake(value.clone(), freshness.clone(), end).await;
        match problem_of(&obs, "errors") {
            DataProblem::Stale(d) => assert!(d.contains(expected), "{freshness}: {d}"),
            other => panic!("{freshness}: expected stale, got {other:?}"),
        }
    }
    // The same answers with a recent newest sample are clean counts.
    let fresh = vector(Some((end, &(end.as_second() - 10).to_string())));
    let obs = observe_fake(value, fresh, end).await;
    assert!(
        matches!(obs.check("errors"), Some(Ok(CheckData::Errors { .. }))),
        "{obs:?}"
    );
}

#[tokio::test]
async fn sample_times_a_day_old_or_a_year_ahead_are_stale() {
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    let fresh = vector(Some((end, &(end.as_second() - 10).to_string())));
    for (at, side) in [
        (end - SignedDuration::from_hours(24), "before"),
        (end + SignedDuration::from_hours(24 * 365), "after"),
    ] {
        let obs = observe_fake(vector(Some((at, "100"))), fresh.clone(), end).await;
        match problem_of(&obs, "errors") {
            DataProblem::Stale(d) => assert!(
                d.contains("sample time") && d.contains(&format!("{side} the evaluation time")),
                "{d}"
            ),
            other => panic!("{at}: expected stale, got {other:?}"),
        }
    }
    // A newest input sample a day in the future is not fresh either.
    let future = vector(Some((end, &(end.as_second() + 86_400).to_string())));
    let obs = observe_fake(vector(Some((end, "100"))), future, end).await;
    match problem_of(&obs, "errors") {
        DataProblem::Stale(d) => assert!(d.contains("after the window end"), "{d}"),
        other => panic!("expected stale, got {other:?}"),
    }
}

/// Request counters of `colors` for `app`, every 15 s over the last 30 minutes up to `end`.
fn import_requests(vm: &Victoria, app: &str, colors: &[&str], end: Timestamp) {
    let from = end - SignedDuration::from_mins(30);
    let mut series = Vec::new();
    for color in colors {
        let mut samples = Vec::new();
        let (mut t, mut v) = (from.as_millisecond(), 0.0);
        while t <= end.as_millisecond() {
            samples.push((t, v));
            v += 12.0;
            t += 15_000;
        }
        series.push(ImportSeries::new(
            "http_requests_total",
            &[("app", app), ("color", color), ("code", "200")],
            samples,
        ));
    }
    vm.import(&series);
}

#[tokio::test]
async fn green_never_reporting_while_blue_does_is_green_missing_not_an_outage() {
    let vm = Victoria::start();
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    import_requests(&vm, "orders", &["blue"], end);
    let policy = errors_policy("orders", REQUESTS);
    let obs = observe(
        &client(&vm.url()),
        &policy,
        end - SignedDuration::from_mins(1),
        end,
    )
    .await;
    match problem_of(&obs, "errors") {
        DataProblem::GreenMissing(d) => assert!(d.contains("green"), "{d}"),
        other => panic!("expected green missing, got {other:?}"),
    }
    // Neither colour reporting is an outage of the metrics, not green's.
    let policy = errors_policy("nobody", REQUESTS);
    let obs = observe(
        &client(&vm.url()),
        &policy,
        end - SignedDuration::from_mins(1),
        end,
    )
    .await;
    assert_eq!(problem_of(&obs, "errors"), DataProblem::NoData);
}

#[tokio::test]
async fn a_value_whose_inputs_have_no_sample_is_not_taken_as_fresh() {
    let vm = Victoria::start();
    let end = aligned_end(Timestamp::now(), MINUTE, Duration::ZERO);
    import_requests(&vm, "orders", &["blue", "green"], end);
    // `or vector(100)` gives a value although the series read never existed: the freshness
    // query finds nothing, and that must not count as fresh.
    let ghost = r#"sum(increase(ghost_requests_total{app="{api}",color="{color}"}[{interval}])) or vector(100)"#;
    let policy = errors_policy("orders", ghost);
    let obs = observe(
        &client(&vm.url()),
        &policy,
        end - SignedDuration::from_mins(1),
        end,
    )
    .await;
    match problem_of(&obs, "errors") {
        DataProblem::Stale(d) => assert!(d.contains("its freshness is unknown"), "{d}"),
        other => panic!("expected stale, got {other:?}"),
    }
    // The real counters of the same window are clean.
    let policy = errors_policy("orders", REQUESTS);
    let obs = observe(
        &client(&vm.url()),
        &policy,
        end - SignedDuration::from_mins(1),
        end,
    )
    .await;
    assert!(
        matches!(obs.check("errors"), Some(Ok(CheckData::Errors { .. }))),
        "{obs:?}"
    );
}
