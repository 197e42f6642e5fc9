//! The console served over HTTP on loopback: the overview of 1,000 APIs and one API's page
//! with a full decision history, signed in with an API token, through the same router the
//! daemon serves. Also the rendering alone, without HTTP.

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use greenlight::engine::{decide, Phase, RolloutState};
use greenlight::policy::{ConsoleConfig, Policy, TokenConfig, TokenHash};
use greenlight::server::console::auth::{Auth, Identity, Via};
use greenlight::server::console::{api_page, overview_page, ApiPage, Overview, OverviewRow};
use greenlight::server::{router_with, Console, RolloutView, StaticStatus, Telemetry};
use greenlight::sim::{default_start, Scenario, World};
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

const APIS: usize = 1000;
const TOKEN: &str = "bench-token";

/// A state of `policy` with a full history of a healthy world.
fn state(policy: &Policy) -> RolloutState {
    let scenario = Scenario::default();
    let mut world = World::new(policy, &scenario, 42);
    let start = default_start(policy);
    let step = SignedDuration::try_from(policy.interval).unwrap();
    let mut state = RolloutState::started(policy, start);
    let mut t = start;
    for _ in 0..90 {
        let share = state.weights.green as f64 / policy.traffic.total_weight as f64;
        let obs = world.observe(t, t + step, share, state.step);
        state = decide(policy, &state, &obs, t + step).state;
        t += step;
        if state.phase != Phase::Progressing {
            state = RolloutState::started(policy, t);
        }
    }
    state
}

fn bench_console(c: &mut Criterion) {
    let path = Path::new("policies/checkout.toml");
    let base = Policy::from_toml(include_str!("../policies/checkout.toml"), path, None)
        .expect("example policy is valid");
    let full = state(&base);
    let mut policies = Vec::new();
    let mut views = Vec::new();
    for i in 0..APIS {
        let mut p = base.clone();
        p.api = format!("api-{i:04}");
        p.access.owners = vec![format!("team-{}", i % 40)];
        let mut s = full.clone();
        s.api = p.api.clone();
        views.push(RolloutView::from_state(&p, &s));
        policies.push(Arc::new(p));
    }
    let status = Arc::new(StaticStatus::new(views.clone()));
    status.set_policies(policies.clone());
    let auth = Auth::from_config(&ConsoleConfig {
        admin_groups: vec!["platform".into()],
        tokens: vec![TokenConfig {
            user: "bench".into(),
            groups: vec!["platform".into()],
            sha256: TokenHash::Inline(Sha256::digest(TOKEN.as_bytes()).into()),
        }],
        ..ConsoleConfig::default()
    })
    .unwrap();
    let console = Arc::new(Console::new(auth, None, None));
    let router = router_with(Arc::new(Telemetry::new()), status, console);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(greenlight::server::serve_router(
        listener,
        router,
        std::future::pending(),
    ));
    let client = {
        let _in = rt.enter();
        reqwest::Client::new()
    };
    let fetch = |path: String| {
        let client = client.clone();
        rt.block_on(async move {
            let r = client
                .get(format!("http://{addr}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap().len()
        })
    };
    let size = fetch("/".into());
    eprintln!("overview of {APIS} APIs: {size} bytes");
    c.bench_function("console/overview_1000_apis_http", |b| {
        b.iter(|| fetch("/".into()))
    });
    let size = fetch("/apis/api-0500".into());
    eprintln!("API page: {size} bytes");
    c.bench_function("console/api_page_http", |b| {
        b.iter(|| fetch("/apis/api-0500".into()))
    });

    // Rendering alone.
    let who = Identity {
        user: "bench".into(),
        groups: vec!["platform".into()],
        via: Via::Token,
    };
    let rows: Vec<OverviewRow> = views
        .iter()
        .zip(&policies)
        .map(|(v, p)| OverviewRow {
            view: v.clone(),
            policy: Some(p.clone()),
            role: greenlight::server::console::auth::Role::Admin,
        })
        .collect();
    let now = Timestamp::now();
    c.bench_function("console/overview_1000_apis_render", |b| {
        b.iter(|| {
            let page = Overview {
                who: &who,
                csrf: None,
                team: None,
                phase: None,
                now,
            };
            overview_page(&page, &rows, false).len()
        })
    });
    c.bench_function("console/api_page_render", |b| {
        b.iter(|| {
            let page = ApiPage {
                who: &who,
                csrf: None,
                visible: &rows[500],
                audit: &[],
                metrics_ui: None,
                can_act: true,
                now,
            };
            api_page(&page, false).len()
        })
    });
}

criterion_group!(benches, bench_console);
criterion_main!(benches);
