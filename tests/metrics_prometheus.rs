//! The metrics module against a real Prometheus: answer shapes of constant expressions.

mod support;

use std::time::Duration;

use greenlight::engine::{CheckData, DataProblem};
use greenlight::metrics::{
    observe, Backend, MetricsSettings, PromClient, QueryError, QueryResult, Window,
};
use greenlight::policy::{Check, CheckKind, Policy};
use jiff::{SignedDuration, Timestamp};
use support::prometheus::Prometheus;

fn client(prom: &Prometheus) -> PromClient {
    PromClient::new(MetricsSettings {
        url: prom.url(),
        kind: Backend::Prometheus,
        timeout: Duration::from_secs(10),
        auth: None,
    })
    .expect("client")
}

fn policy(checks: Vec<Check>) -> Policy {
    support::fixtures::policy(
        "checkout",
        support::fixtures::haproxy("api_checkout"),
        &[10.0, 100.0],
        checks,
    )
}

fn threshold(name: &str, query: &str) -> Check {
    Check {
        name: name.into(),
        kind: CheckKind::Threshold {
            query: query.into(),
            max: Some(1.0),
            min: None,
            failures: 1,
            min_green_requests: 0,
            cohort: Default::default(),
        },
    }
}

#[tokio::test]
async fn prometheus_answer_shapes() {
    let prom = Prometheus::start();
    let client = client(&prom);
    let at =
        Timestamp::from_millisecond(Timestamp::now().as_millisecond() / 1000 * 1000 + 250).unwrap();

    // 0/0 is a NaN scalar in Prometheus (VictoriaMetrics drops it).
    match client.instant("0/0", at).await {
        Ok(QueryResult::Scalar { time, value }) => {
            assert!(value.is_nan());
            assert_eq!(time, at, "millisecond evaluation time");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.instant("1/0", at).await,
        Ok(QueryResult::Scalar {
            time: at,
            value: f64::INFINITY
        })
    );
    match client.instant("vector(0)/0", at).await {
        Ok(QueryResult::Vector(v)) => assert!(v.len() == 1 && v[0].value.is_nan(), "{v:?}"),
        other => panic!("{other:?}"),
    }
    match client.instant("vector(1)", at).await {
        Ok(QueryResult::Vector(v)) => {
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].value, 1.0);
            assert!(v[0].labels.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.instant("\"hello\"", at).await,
        Ok(QueryResult::String {
            time: at,
            value: "hello".into()
        })
    );
    assert_eq!(
        client.instant("no_such_metric", at).await,
        Ok(QueryResult::Vector(vec![]))
    );
    match client
        .range(
            "vector(3)",
            at - SignedDuration::from_mins(5),
            at,
            Duration::from_secs(60),
        )
        .await
    {
        Ok(QueryResult::Matrix(m)) => {
            assert_eq!(m.len(), 1);
            assert_eq!(m[0].points.len(), 6);
            assert!(m[0].points.iter().all(|p| p.1 == 3.0));
            assert_eq!(m[0].points.last().unwrap().0, at);
        }
        other => panic!("{other:?}"),
    }
    match client.instant("sum(rate(x[1m])", at).await {
        Err(QueryError::Syntax { message }) => {
            assert!(message.contains("parse error"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_freshness_query_is_valid_promql() {
    let prom = Prometheus::start();
    let client = client(&prom);
    // The Prometheus form of the freshness query built by observe().
    let q = r#"max(timestamp(x{color="green"})) or max(max_over_time(timestamp(x{color="green"})[3600s:1m]))"#;
    assert_eq!(
        client.instant(q, Timestamp::now()).await,
        Ok(QueryResult::Vector(vec![]))
    );
}

#[tokio::test]
async fn observe_classifies_prometheus_values() {
    let prom = Prometheus::start();
    let client = client(&prom);
    let checks = vec![
        threshold("constant", "scalar(vector(0.5))"),
        threshold("nan", "vector(0)/0"),
        threshold("inf", "1/0"),
        threshold(
            "missing",
            r#"sum(rate(http_requests_total{color="{color}"}[{interval}]))"#,
        ),
        Check {
            name: "errors".into(),
            kind: CheckKind::ErrorRate {
                requests: r#"sum(increase(http_requests_total{color="{color}"}[{interval}]))"#
                    .into(),
                errors:
                    r#"sum(increase(http_requests_total{color="{color}",code="5xx"}[{interval}]))"#
                        .into(),
                tolerance: 0.2,
                advance_tolerance: 0.1,
                overdispersion: 1.0,
                min_errors: 5,
                advance_max_rate: None,
                blue_max_error_rate: None,
            },
        },
        threshold("typo", "sum(rate(x[{interval}])"),
    ];
    let w = Window::latest(Timestamp::now(), Duration::from_secs(60), Duration::ZERO);
    let obs = observe(&client, &policy(checks), w.start, w.end).await;
    assert_eq!(
        obs.check("constant"),
        Some(&Ok(CheckData::Value {
            candidate: 0.5,
            stable: Some(0.5)
        }))
    );
    assert!(matches!(
        obs.check("nan"),
        Some(Err(DataProblem::NotFinite(_)))
    ));
    assert!(matches!(
        obs.check("inf"),
        Some(Err(DataProblem::NotFinite(_)))
    ));
    assert_eq!(obs.check("missing"), Some(&Err(DataProblem::NoData)));
    assert_eq!(obs.check("errors"), Some(&Err(DataProblem::NoData)));
    match obs.check("typo") {
        Some(Err(DataProblem::Backend(d))) => assert!(d.contains("parse error"), "{d}"),
        other => panic!("{other:?}"),
    }
}
