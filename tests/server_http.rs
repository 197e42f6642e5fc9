//! The HTTP endpoints served over a real socket, fed by a real engine run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use greenlight::engine::{
    decide, Action, CheckData, CheckObservation, Counts, Decision, EdgeCounts, Observation, Pair,
    Phase, RolloutState,
};
use greenlight::policy::{Check, CheckKind, Policy, Weights};
use greenlight::server::{serve, RolloutView, StaticStatus, StatusSource, Telemetry};
use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;

mod support;
use support::fixtures;

/// A string that stands for a credential: it must never appear in any answer.
const SECRET: &str = "s3cr3t-t0ken-do-not-leak";

fn policy(api: &str) -> Policy {
    let target = fixtures::consul_keys(
        format!("haproxy/{api}/weights/blue?token={SECRET}"),
        format!("haproxy/{api}/weights/green?token={SECRET}"),
    );
    let checks = vec![
        Check {
            name: "errors".into(),
            kind: CheckKind::ErrorRate {
                requests: format!(
                    r#"sum(increase(req{{color="{{color}}",auth="{SECRET}"}}[{{interval}}]))"#
                ),
                errors: format!(
                    r#"sum(increase(err{{color="{{color}}",auth="{SECRET}"}}[{{interval}}]))"#
                ),
                tolerance: 0.2,
                advance_tolerance: 0.5,
                overdispersion: 1.0,
                min_errors: 5,
                advance_max_rate: None,
                blue_max_error_rate: Some(0.2),
            },
        },
        Check {
            name: "latency".into(),
            kind: CheckKind::LatencyHistogram {
                buckets: format!(r#"sum by (le) (b{{color="{{color}}",auth="{SECRET}"}})"#),
                edges: vec![0.25, 1.0],
                tolerance: 0.2,
                advance_tolerance: 0.5,
                overdispersion: 1.0,
                min_errors: 5,
                advance_max_rate: Some(0.02),
            },
        },
    ];
    let mut p = fixtures::policy(api, target, &[5.0, 25.0, 50.0, 100.0], checks);
    p.alerts = vec![format!("oncall-{SECRET}")];
    p
}

fn at(minute: i64) -> Timestamp {
    "2026-01-05T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minute)
}

/// A healthy window: 12 000 requests split by the current weights, 0.5 % errors and 10 % slower
/// than 0.25 s on both colours.
fn window(minute: i64, weights: Weights) -> Observation {
    let total = 12_000.0;
    let share = f64::from(weights.green) / f64::from(weights.blue + weights.green);
    let (n_g, n_b) = (total * share, total * (1.0 - share));
    let pair = |rate: f64| Pair {
        blue: Counts::new(n_b, (n_b * rate).round()),
        green: Counts::new(n_g, (n_g * rate).round()),
    };
    Observation {
        start: at(minute - 1),
        end: at(minute),
        checks: vec![
            CheckObservation {
                check: "errors".into(),
                data: Ok(CheckData::Errors {
                    counts: pair(0.005),
                }),
            },
            CheckObservation {
                check: "latency".into(),
                data: Ok(CheckData::Latency {
                    edges: vec![
                        EdgeCounts {
                            edge: 0.25,
                            counts: pair(0.1),
                        },
                        EdgeCounts {
                            edge: 1.0,
                            counts: pair(0.005),
                        },
                    ],
                }),
            },
        ],
    }
}

/// Runs `windows` healthy windows through the engine, recording each decision in `telemetry`.
fn run(policy: &Policy, windows: i64, telemetry: &Telemetry) -> (RolloutState, Vec<Decision>) {
    let mut state = RolloutState::new(policy);
    let mut decisions = Vec::new();
    for m in 1..=windows {
        let d = decide(policy, &state, &window(m, state.weights), at(m));
        telemetry.decision(&policy.api, &d);
        state = d.state.clone();
        decisions.push(d);
    }
    (state, decisions)
}

struct Server {
    base: String,
    status: Arc<StaticStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
}

async fn start(telemetry: Arc<Telemetry>, views: Vec<RolloutView>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(StaticStatus::new(views));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let source: Arc<dyn StatusSource> = status.clone();
    let task = tokio::spawn(serve(listener, telemetry, source, async move {
        let _ = stopped.await;
    }));
    Server {
        base: format!("http://{addr}"),
        status,
        stop: Some(stop),
        task,
        http: reqwest::Client::new(),
    }
}

impl Server {
    async fn get(&self, path: &str) -> (StatusCode, String, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, ct, r.text().await.unwrap())
    }
}

fn sample_value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::exposition::value(scrape, name, labels)
        .unwrap_or_else(|| panic!("no scalar sample {name} {labels:?}"))
}

#[tokio::test]
async fn endpoints_show_a_real_rollout() {
    let policy = policy("checkout");
    let telemetry = Arc::new(Telemetry::new());
    let (state, decisions) = run(&policy, 40, &telemetry);
    // The run must have gone somewhere for the test to mean anything.
    assert!(
        decisions.iter().any(|d| d.action == Action::Advance),
        "no advance in 40 healthy windows"
    );
    assert_eq!(state.phase, Phase::Progressing);
    let view = RolloutView::from_state(&policy, &state);
    let server = start(telemetry, vec![view]).await;

    // /metrics parses as Prometheus text and shows this rollout.
    let (code, ct, body) = server.get("/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        sample_value(&scrape, "greenlight_green_weight", &[("api", "checkout")]),
        f64::from(state.weights.green)
    );
    assert_eq!(
        sample_value(&scrape, "greenlight_step", &[("api", "checkout")]),
        state.step as f64
    );
    assert_eq!(
        sample_value(
            &scrape,
            "greenlight_phase",
            &[("api", "checkout"), ("phase", "progressing")]
        ),
        1.0
    );
    let mut counts: BTreeMap<&str, f64> = BTreeMap::new();
    for d in &decisions {
        *counts.entry(d.action.as_str()).or_default() += 1.0;
    }
    for (action, n) in &counts {
        assert_eq!(
            sample_value(
                &scrape,
                "greenlight_decisions_total",
                &[("api", "checkout"), ("action", action)]
            ),
            *n,
            "{action}"
        );
    }
    let errors_rb = state.streams[0].rollback.log_e();
    assert_eq!(
        sample_value(
            &scrape,
            "greenlight_log_evidence",
            &[
                ("api", "checkout"),
                ("stream", "errors"),
                ("kind", "rollback")
            ]
        ),
        errors_rb
    );

    // Liveness.
    let (code, _, body) = server.get("/healthz").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "ok"));

    // Readiness follows the source.
    server
        .status
        .set_ready(Err("policies not loaded yet".into()));
    let (code, _, body) = server.get("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "policies not loaded yet");
    server.status.set_ready(Ok(()));
    let (code, _, _) = server.get("/readyz").await;
    assert_eq!(code, StatusCode::OK);

    // Rollout list and detail.
    let (code, ct, body) = server.get("/api/v1/rollouts").await;
    assert_eq!(code, StatusCode::OK);
    assert!(ct.starts_with("application/json"), "{ct}");
    let list: Vec<RolloutView> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1);
    let v = &list[0];
    assert_eq!(v.api, "checkout");
    assert_eq!(v.phase, Phase::Progressing);
    assert_eq!(v.step, state.step);
    assert_eq!(v.weights, state.weights);
    assert_eq!(v.green_percent, policy.steps[state.step]);
    assert_eq!(v.evidence.len(), 3);
    assert_eq!(v.evidence[0].stream, "errors");
    assert_eq!(v.evidence[0].rollback_log_e, errors_rb);
    assert_eq!(v.evidence[0].rollback_threshold, 300.0);
    assert_eq!(v.evidence[0].advance_threshold, 60.0);
    assert_eq!(v.since, state.step_started_at);
    // The list leaves the history out (it is read per rollout, from the store).
    assert!(v.history.is_empty());
    let last = v.last_decision.as_ref().unwrap();
    assert_eq!(last.action, decisions.last().unwrap().action);
    assert_eq!(last.at, at(40));
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(raw[0]["phase"], "progressing");

    let (code, _, body) = server.get("/api/v1/rollouts/checkout").await;
    assert_eq!(code, StatusCode::OK);
    let one: RolloutView = serde_json::from_str(&body).unwrap();
    assert_eq!(&one, v);

    // Unknown API and unknown path: 404 with a JSON error.
    let (code, ct, body) = server.get("/api/v1/rollouts/nosuch").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(ct.starts_with("application/json"), "{ct}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(err["error"].as_str().unwrap().contains("nosuch"), "{body}");
    let (code, _, body) = server.get("/api/v1/nothing-here").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());

    // Read-only: other methods are refused.
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/v1/rollouts",
        "/api/v1/rollouts/checkout",
    ] {
        for method in [
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
            reqwest::Method::PATCH,
        ] {
            let r = server
                .http
                .request(method.clone(), format!("{}{path}", server.base))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
    }
    // Nothing changed by those attempts.
    let (_, _, body) = server.get("/api/v1/rollouts/checkout").await;
    assert_eq!(serde_json::from_str::<RolloutView>(&body).unwrap(), one);

    stop(server).await;
}

#[tokio::test]
async fn nothing_from_the_policy_configuration_leaks() {
    let policy = policy("payments");
    let telemetry = Arc::new(Telemetry::new());
    let (state, _) = run(&policy, 5, &telemetry);
    let server = start(telemetry, vec![RolloutView::from_state(&policy, &state)]).await;
    server.status.set_ready(Ok(()));
    for path in [
        "/metrics",
        "/api/v1/rollouts",
        "/api/v1/rollouts/payments",
        "/readyz",
        "/healthz",
    ] {
        let (code, _, body) = server.get(path).await;
        assert_eq!(code, StatusCode::OK, "{path}");
        assert!(body.contains("payments") || path.ends_with("z"), "{path}");
        assert!(!body.contains(SECRET), "{path} leaks: {body}");
        assert!(!body.contains("weights/blue"), "{path} shows traffic keys");
    }
    stop(server).await;
}

#[tokio::test]
async fn shutdown_future_stops_the_server() {
    let server = start(Arc::new(Telemetry::new()), Vec::new()).await;
    let (code, _, body) = server.get("/api/v1/rollouts").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "[]"));
    let base = server.base.clone();
    stop(server).await;
    let refused = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "still answering after shutdown");
}

/// Fires the shutdown future and waits for `serve` to return `Ok`.
async fn stop(mut server: Server) {
    server.stop.take().unwrap().send(()).unwrap();
    // The deadline only keeps a broken shutdown from hanging the test run.
    let result = tokio::time::timeout(Duration::from_secs(30), server.task)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    result.unwrap();
}
