//! The cycle's lower bound: the very PromQL requests one daemon cycle sent, sent again by a tight
//! client at the same concurrency (the same number of APIs at once, every query of an API at
//! once), with no state, no decision and no Consul in between. What VictoriaMetrics needs to
//! answer a cycle's queries is the least a cycle can take without asking fewer or cheaper ones.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};

/// One request as the daemon sent it: path, content type and the form body.
#[derive(Clone)]
pub struct Recorded {
    path: String,
    content_type: String,
    body: Bytes,
}

impl Recorded {
    /// The API a query is for: the value of its `api="…"` matcher (form-encoded in the body).
    fn api(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.split_once("api%3D%22")
            .and_then(|(_, rest)| rest.split_once("%22"))
            .map_or_else(String::new, |(api, _)| api.to_string())
    }
}

/// A pass-through proxy in front of VictoriaMetrics that keeps every query request. Used for one
/// cycle that is not timed; the bound replays what it kept.
pub struct Recorder {
    pub url: String,
    kept: Arc<Mutex<Vec<Recorded>>>,
    _runtime: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    kept: Arc<Mutex<Vec<Recorded>>>,
}

async fn forward(
    State(p): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, Bytes) {
    let path = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if uri.path().starts_with("/api/v1/query") {
        p.kept.lock().unwrap().push(Recorded {
            path: path.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
    }
    let req = p
        .http
        .request(method, format!("{}{path}", p.upstream))
        .header("content-type", content_type)
        .body(body);
    match req.send().await {
        Ok(r) => {
            let status = axum::http::StatusCode::from_u16(r.status().as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            (status, r.bytes().await.unwrap_or_default())
        }
        Err(_) => (axum::http::StatusCode::BAD_GATEWAY, Bytes::new()),
    }
}

impl Recorder {
    pub fn start(upstream: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let kept = Arc::new(Mutex::new(Vec::new()));
        let proxy = Proxy {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            kept: kept.clone(),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let app = axum::Router::new().fallback(forward).with_state(proxy);
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder {
            url,
            kept,
            _runtime: runtime,
        }
    }

    /// The requests kept so far (and forgets them).
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.kept.lock().unwrap())
    }
}

/// What the replay took.
pub struct Bound {
    pub queries: usize,
    pub wall: Duration,
    pub failed: usize,
}

/// Sends `recorded` to `upstream` again: `concurrency` APIs at once, each API's requests all
/// at once, as the daemon evaluates them.
pub fn replay(upstream: &str, recorded: &[Recorded], concurrency: usize) -> Bound {
    let mut by_api: std::collections::BTreeMap<String, Vec<Recorded>> = Default::default();
    for r in recorded {
        by_api.entry(r.api()).or_default().push(r.clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("replay runtime");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 16)
        .build()
        .expect("client");
    let upstream = upstream.trim_end_matches('/').to_string();
    let started = Instant::now();
    let failed = runtime.block_on(async {
        let results: Vec<usize> = stream::iter(by_api.into_values())
            .map(|group| {
                let http = http.clone();
                let upstream = upstream.clone();
                async move {
                    let answers = join_all(group.iter().map(|r| {
                        http.post(format!("{upstream}{}", r.path))
                            .header("content-type", r.content_type.as_str())
                            .body(r.body.clone())
                            .send()
                    }))
                    .await;
                    let mut failed = 0;
                    for a in answers {
                        match a {
                            Ok(r) if r.status().is_success() => {
                                // Read the whole answer, as the daemon does.
                                if r.bytes().await.is_err() {
                                    failed += 1;
                                }
                            }
                            _ => failed += 1,
                        }
                    }
                    failed
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.into_iter().sum()
    });
    Bound {
        queries: recorded.len(),
        wall: started.elapsed(),
        failed,
    }
}
