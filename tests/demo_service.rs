//! The demo service: its error rate follows the setting and its Prometheus metrics count exactly
//! the requests it answered.

use std::time::Duration;

use greenlight::demo::{
    generate_load, serve_demo, DemoSettings, LoadSettings, UserLoad, LATENCY_BUCKETS,
};

fn settings(error_rate: f64) -> DemoSettings {
    DemoSettings {
        service: "checkout".into(),
        color: "green".into(),
        error_rate,
        latency_median: 0.002,
        latency_sigma: 0.6,
        slow_factor: 1.0,
        seed: 42,
    }
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("unexpected value {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_follows_the_setting_and_metrics_count_every_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_demo(listener, settings(0.05), async move {
        let _ = stopped.await;
    }));

    let load = LoadSettings::new(&format!("http://{addr}/"), 1000, Duration::from_secs(2)).unwrap();
    let report = generate_load(&load).await;
    assert_eq!(report.sent + report.skipped, 2000);
    assert_eq!(report.failed, 0, "{report:?}");
    let ok = report.statuses.get(&200).copied().unwrap_or(0);
    let errors = report.statuses.get(&500).copied().unwrap_or(0);
    assert_eq!(ok + errors, report.sent, "{report:?}");
    // 5 % of 2000: 100 expected, standard deviation about 9.7.
    let rate = errors as f64 / report.sent as f64;
    assert!(
        (0.03..=0.07).contains(&rate),
        "error rate {rate} ({report:?})"
    );

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let count = |name: &str, code: Option<&str>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| s.labels.get("service") == Some("checkout"))
            .filter(|s| s.labels.get("cluster") == Some("green"))
            .filter(|s| code.is_none_or(|c| s.labels.get("code") == Some(c)))
            .map(value)
            .sum()
    };
    assert_eq!(count("http_requests_total", Some("200")), ok as f64);
    assert_eq!(count("http_requests_total", Some("500")), errors as f64);
    assert_eq!(
        count("http_request_duration_seconds_count", None),
        report.sent as f64
    );

    let histogram = scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h)
                if s.metric == "http_request_duration_seconds" =>
            {
                Some(h.clone())
            }
            _ => None,
        })
        .expect("a latency histogram");
    let les: Vec<f64> = histogram
        .iter()
        .map(|b| b.less_than)
        .filter(|le| le.is_finite())
        .collect();
    assert_eq!(les, LATENCY_BUCKETS);
    let counts: Vec<f64> = histogram.iter().map(|b| b.count).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "buckets are cumulative: {counts:?}"
    );
    assert_eq!(*counts.last().unwrap(), report.sent as f64);
    // Median 2 ms: most requests fall under 5 ms, almost none above 25 ms.
    assert!(counts[0] > 0.6 * report.sent as f64, "{counts:?}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn invalid_settings_are_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve_demo(listener, settings(2.0), async {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("error rate"), "{err}");
}

/// A stand-in for HAProxy in sticky mode: answers `X-Served-By: green` to users whose number is
/// a multiple of three, `blue` to the others — until `flip_after` requests, after which every
/// user gets blue (what a broken sticky setup would do to green's users).
async fn colour_server(flip_after: u64) -> std::net::SocketAddr {
    use axum::http::HeaderMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let served = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move |headers: HeaderMap| {
            let served = served.clone();
            async move {
                let n = served.fetch_add(1, Ordering::SeqCst);
                let user: u32 = headers
                    .get("x-user-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("user-"))
                    .and_then(|v| v.parse().ok())
                    .expect("every request names its user");
                let colour = if n < flip_after && user % 3 == 0 {
                    "green"
                } else {
                    "blue"
                };
                ([("x-served-by", colour)], "ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn users(stats: Option<std::path::PathBuf>) -> UserLoad {
    UserLoad {
        users: 60,
        header: "X-User-Id".into(),
        seed: 3,
        stats,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_tracks_each_users_colour_and_writes_it_down() {
    let addr = colour_server(u64::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("users.json");
    let load = LoadSettings::new(&format!("http://{addr}/"), 500, Duration::from_secs(2))
        .unwrap()
        .with_users(users(Some(stats.clone())))
        .unwrap();
    let report = generate_load(&load).await;
    let st = report
        .stickiness
        .expect("a user pool reports its stickiness");
    // 1,000 draws among 60 users: every user is seen (missing one has odds of about 1e-7).
    assert_eq!((st.users, st.seen), (60, 60), "{st:?}");
    assert_eq!(st.on_green, 20, "users 0, 3, …, 57 are green: {st:?}");
    assert_eq!((st.flipped, st.unattributed), (0, 0), "{st:?}");
    let written: greenlight::demo::users::Stickiness =
        serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(written, st, "the file holds the final figures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_moved_from_green_back_to_blue_count_as_flipped() {
    let addr = colour_server(300).await;
    let load = LoadSettings::new(&format!("http://{addr}/"), 500, Duration::from_secs(2))
        .unwrap()
        .with_users(users(None))
        .unwrap();
    let st = generate_load(&load).await.stickiness.unwrap();
    assert_eq!(st.on_green, 0, "{st:?}");
    // Each green user was almost surely served before and after the flip (5 requests each).
    assert!(st.flipped >= 15 && st.flipped <= 20, "{st:?}");
}
