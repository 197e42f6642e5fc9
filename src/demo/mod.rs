//! A demo HTTP service with a configurable error rate and log-normal latency, exporting
//! Prometheus request counters and a latency histogram, and a bounded loopback load generator.
//!
//! Used by the real-stack demo (`examples/demo_service.rs`, `examples/demo_load.rs`): two
//! instances (blue and green) behind HAProxy give greenlight something real to measure.
//! With a pool of users ([`LoadSettings::with_users`]) the load generator sends each request as
//! one of them and tracks which colour served whom ([`users`]), to show a sticky canary at work.

pub mod users;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

/// Upper bounds of `http_request_duration_seconds`, seconds (Prometheus' defaults).
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Longest latency the service will sleep, whatever the distribution draws.
pub const MAX_LATENCY: Duration = Duration::from_secs(30);

/// How the demo service behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSettings {
    /// `service` label, e.g. `checkout`.
    pub service: String,
    /// `cluster` label: `blue` or `green`.
    pub color: String,
    /// Probability that `GET /` answers 500.
    pub error_rate: f64,
    /// Median latency, seconds.
    pub latency_median: f64,
    /// σ of the latency's logarithm.
    pub latency_sigma: f64,
    /// Every latency is multiplied by this (a "slow green").
    pub slow_factor: f64,
    /// Seed of the error and latency draws.
    pub seed: u64,
}

impl DemoSettings {
    /// Every problem with the settings, in one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(0.0..=1.0).contains(&self.error_rate) {
            p.push(format!(
                "error rate must be in [0, 1], got {}",
                self.error_rate
            ));
        }
        if !(self.latency_median.is_finite() && self.latency_median > 0.0) {
            p.push(format!(
                "latency median must be positive seconds, got {}",
                self.latency_median
            ));
        }
        if !(self.latency_sigma.is_finite() && self.latency_sigma >= 0.0) {
            p.push(format!(
                "latency sigma must be zero or positive, got {}",
                self.latency_sigma
            ));
        }
        if !(self.slow_factor.is_finite() && self.slow_factor > 0.0) {
            p.push(format!(
                "slow factor must be positive, got {}",
                self.slow_factor
            ));
        }
        for (what, value) in [("service", &self.service), ("color", &self.color)] {
            if value.is_empty() {
                p.push(format!("{what} must not be empty"));
            }
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    cluster: String,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LatencyLabels {
    service: String,
    cluster: String,
}

struct Demo {
    settings: DemoSettings,
    latency: LogNormal<f64>,
    rng: Mutex<StdRng>,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<LatencyLabels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Demo {
    fn new(settings: DemoSettings) -> Result<Demo, String> {
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let latency = LogNormal::new(settings.latency_median.ln(), settings.latency_sigma)
            .map_err(|e| format!("latency distribution: {e}"))?;
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<LatencyLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let mut registry = Registry::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, per service, cluster and status code",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, seconds",
            durations.clone(),
        );
        Ok(Demo {
            rng: Mutex::new(StdRng::seed_from_u64(settings.seed)),
            settings,
            latency,
            registry,
            requests,
            durations,
        })
    }

    /// One request's outcome: (fails, latency). Both come from one draw under one lock, so the
    /// sequence of outcomes depends only on the seed, not on request interleaving.
    fn draw(&self) -> (bool, Duration) {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let fails = rng.random::<f64>() < self.settings.error_rate;
        let seconds = self.latency.sample(&mut *rng) * self.settings.slow_factor;
        let latency = Duration::try_from_secs_f64(seconds)
            .unwrap_or(MAX_LATENCY)
            .min(MAX_LATENCY);
        (fails, latency)
    }

    fn record(&self, status: StatusCode, latency: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                service: self.settings.service.clone(),
                cluster: self.settings.color.clone(),
                code: status.as_u16().to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&LatencyLabels {
                service: self.settings.service.clone(),
                cluster: self.settings.color.clone(),
            })
            .observe(latency.as_secs_f64());
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "Could not encode the demo metrics.");
        }
        out
    }
}

async fn answer(State(demo): State<Arc<Demo>>) -> Response {
    let (fails, latency) = demo.draw();
    tokio::time::sleep(latency).await;
    let status = if fails {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    demo.record(status, latency);
    let body = format!(
        "{} from {}\n",
        if fails { "error" } else { "ok" },
        demo.settings.color
    );
    (status, body).into_response()
}

async fn metrics(State(demo): State<Arc<Demo>>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        demo.encode(),
    )
        .into_response()
}

/// Serves the demo on `listener` until `shutdown` completes: `GET /` (200 or 500 after a
/// log-normal latency), `GET /metrics` and `GET /healthz`. Invalid settings are
/// [`io::ErrorKind::InvalidInput`].
pub async fn serve_demo(
    listener: tokio::net::TcpListener,
    settings: DemoSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let demo = Demo::new(settings).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        service = %demo.settings.service,
        color = %demo.settings.color,
        error_rate = demo.settings.error_rate,
        latency_median = demo.settings.latency_median,
        "Serving the demo service."
    );
    let app = Router::new()
        .route("/", get(answer))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(demo));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Upper bounds of the load generator: it never runs longer or sends more than this.
pub const MAX_LOAD_RPS: u32 = 5_000;
pub const MAX_LOAD_DURATION: Duration = Duration::from_secs(3600);
/// Requests in flight at most; beyond it a tick is skipped and counted.
pub const MAX_IN_FLIGHT: usize = 512;

/// What the load generator sends.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// A loopback `http://` URL (see [`loopback_target`]).
    pub target: reqwest::Url,
    pub rps: u32,
    pub duration: Duration,
    /// Send every request as one user of a pool, drawn at random (seeded).
    pub users: Option<UserLoad>,
}

/// A pool of users for the load generator (see [`LoadSettings::with_users`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UserLoad {
    /// Pool size; ids are `user-0` … `user-{n-1}`.
    pub users: u32,
    /// The request header carrying the id.
    pub header: String,
    pub seed: u64,
    /// Where the [`users::Stickiness`] so far is written (JSON, replaced atomically) every second.
    pub stats: Option<PathBuf>,
}

/// Largest user pool the load generator tracks.
pub const MAX_USERS: u32 = 1_000_000;

/// What came back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer.
    pub failed: u64,
    /// Ticks skipped because [`MAX_IN_FLIGHT`] requests were outstanding.
    pub skipped: u64,
    /// With a user pool: which colour served whom.
    pub stickiness: Option<users::Stickiness>,
}

/// Parses `text` as an `http://` URL whose host is a loopback address (`127.0.0.0/8`, `::1` or
/// `localhost`); anything else is refused.
pub fn loopback_target(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("{text:?}: only http:// targets are supported"));
    }
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if loopback {
        Ok(url)
    } else {
        Err(format!(
            "{text:?}: the load generator only targets loopback addresses (127.0.0.1, ::1, localhost)"
        ))
    }
}

impl LoadSettings {
    /// Checks the bounds; the target must be loopback.
    pub fn new(target: &str, rps: u32, duration: Duration) -> Result<LoadSettings, String> {
        let target = loopback_target(target)?;
        if rps == 0 || rps > MAX_LOAD_RPS {
            return Err(format!(
                "rps must be between 1 and {MAX_LOAD_RPS}, got {rps}"
            ));
        }
        if duration.is_zero() || duration > MAX_LOAD_DURATION {
            return Err(format!(
                "duration must be between 1ms and {}, got {}",
                humantime::format_duration(MAX_LOAD_DURATION),
                humantime::format_duration(duration)
            ));
        }
        Ok(LoadSettings {
            target,
            rps,
            duration,
            users: None,
        })
    }

    /// Sends every request as one of `users` users (header `header`), tracking the colour that
    /// served each from HAProxy's `X-Served-By` answer header.
    pub fn with_users(mut self, users: UserLoad) -> Result<LoadSettings, String> {
        if users.users == 0 || users.users > MAX_USERS {
            return Err(format!(
                "users must be between 1 and {MAX_USERS}, got {}",
                users.users
            ));
        }
        if axum::http::HeaderName::from_bytes(users.header.as_bytes()).is_err() {
            return Err(format!("{:?} is not an HTTP header name", users.header));
        }
        self.users = Some(users);
        Ok(self)
    }

    /// Total requests: `rps × duration`, at least one.
    pub fn total(&self) -> u64 {
        ((f64::from(self.rps) * self.duration.as_secs_f64()).round() as u64).max(1)
    }
}

/// Sends `rps × duration` GET requests at a steady pace (never more), then waits for the
/// outstanding answers.
pub async fn generate_load(settings: &LoadSettings) -> LoadReport {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "Cannot build the HTTP client.");
            return LoadReport::default();
        }
    };
    let total = settings.total();
    let gap = Duration::from_secs_f64(1.0 / f64::from(settings.rps));
    let mut ticks = tokio::time::interval(gap);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut report = LoadReport::default();
    let pool = settings
        .users
        .as_ref()
        .map(|u| Arc::new(Mutex::new(users::UserPool::new(u.users))));
    let mut rng = StdRng::seed_from_u64(settings.users.as_ref().map_or(0, |u| u.seed));
    let mut last_stats = std::time::Instant::now();
    for _ in 0..total {
        ticks.tick().await;
        if let (Some(u), Some(pool)) = (&settings.users, &pool) {
            if last_stats.elapsed() >= Duration::from_secs(1) {
                write_stats(u, pool);
                last_stats = std::time::Instant::now();
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            report.skipped += 1;
            continue;
        };
        report.sent += 1;
        let mut request = client.get(settings.target.clone());
        let user = match (&settings.users, &pool) {
            (Some(u), Some(pool)) => {
                let index = rng.random_range(0..u.users);
                request = request.header(u.header.as_str(), users::UserPool::id(index));
                Some((index, pool.clone()))
            }
            _ => None,
        };
        tasks.spawn(async move {
            let answer = request.send().await.ok();
            drop(permit);
            let answer = answer?;
            if let Some((index, pool)) = user {
                let server = answer
                    .headers()
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok());
                if let Ok(mut pool) = pool.lock() {
                    pool.record(index, server);
                }
            }
            Some(answer.status().as_u16())
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some(code)) => *report.statuses.entry(code).or_insert(0) += 1,
            _ => report.failed += 1,
        }
    }
    if let (Some(u), Some(pool)) = (&settings.users, &pool) {
        write_stats(u, pool);
        report.stickiness = pool.lock().ok().map(|p| p.stickiness());
    }
    report
}

/// Writes the stickiness so far to `users.stats` (a temporary file renamed over it, so a reader
/// never sees half a file). Failures are logged, never fatal.
fn write_stats(users: &UserLoad, pool: &Mutex<users::UserPool>) {
    let Some(path) = &users.stats else {
        return;
    };
    let Ok(stickiness) = pool.lock().map(|p| p.stickiness()) else {
        return;
    };
    let tmp = path.with_extension("tmp");
    let written = serde_json::to_vec(&stickiness)
        .map_err(io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "Cannot write the user statistics.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080/",
            "http://127.1.2.3:80",
            "http://[::1]:9000/x",
            "http://localhost:1234",
        ] {
            assert!(loopback_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:80",
            "http://example.com/",
            "https://127.0.0.1/",
            "http://0.0.0.0:80",
            "127.0.0.1:80",
        ] {
            assert!(loopback_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_pools_are_bounded_and_need_a_header_name() {
        let s = LoadSettings::new("http://127.0.0.1:1", 50, Duration::from_secs(3)).unwrap();
        let pool = |users, header: &str| UserLoad {
            users,
            header: header.into(),
            seed: 1,
            stats: None,
        };
        assert!(s.clone().with_users(pool(1000, "X-User-Id")).is_ok());
        assert!(s.clone().with_users(pool(0, "X-User-Id")).is_err());
        assert!(s
            .clone()
            .with_users(pool(MAX_USERS + 1, "X-User-Id"))
            .is_err());
        assert!(s.with_users(pool(10, "bad header")).is_err());
    }

    #[test]
    fn load_is_bounded() {
        let s = LoadSettings::new("http://127.0.0.1:1", 50, Duration::from_secs(3)).unwrap();
        assert_eq!(s.total(), 150);
        assert!(LoadSettings::new("http://127.0.0.1:1", 0, Duration::from_secs(1)).is_err());
        assert!(LoadSettings::new("http://127.0.0.1:1", 50_000, Duration::from_secs(1)).is_err());
        assert!(LoadSettings::new("http://127.0.0.1:1", 5, Duration::from_secs(7200)).is_err());
    }

    #[test]
    fn settings_problems_are_listed() {
        let s = DemoSettings {
            service: "checkout".into(),
            color: String::new(),
            error_rate: 1.5,
            latency_median: 0.0,
            latency_sigma: -1.0,
            slow_factor: 0.0,
            seed: 1,
        };
        assert_eq!(s.problems().len(), 5, "{:?}", s.problems());
    }

    #[test]
    fn draws_follow_the_seed_and_the_slow_factor() {
        let settings = DemoSettings {
            service: "checkout".into(),
            color: "green".into(),
            error_rate: 0.1,
            latency_median: 0.08,
            latency_sigma: 0.6,
            slow_factor: 1.0,
            seed: 7,
        };
        let a = Demo::new(settings.clone()).unwrap();
        let slow = Demo::new(DemoSettings {
            slow_factor: 2.0,
            ..settings
        })
        .unwrap();
        for _ in 0..100 {
            let (fa, la) = a.draw();
            let (fs, ls) = slow.draw();
            assert_eq!(fa, fs);
            assert!((ls.as_secs_f64() - 2.0 * la.as_secs_f64()).abs() < 1e-6);
        }
    }
}
