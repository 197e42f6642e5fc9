//! The console: HTML pages (overview, one API) and the JSON API they use (`/api/v1/…`), with
//! sign-in, per-API permissions and actions. Assets are embedded in the binary.
//!
//! Every request is identified first ([`auth::Auth::identify`]): with sign-in configured, a
//! request without credentials gets 401; an API the user's groups may not view does not exist
//! for them (404); a browser without credentials is sent to the token sign-in page
//! ([`signin`]) when tokens are configured. Actions go through [`ConsoleBackend::perform`]
//! (the daemon's compare-and-set action path); a stale view gets 409 with the current state.

mod actions;
pub mod auth;
mod campaigns;
mod charts;
mod pages;
pub mod signin;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use jiff::Timestamp;
use serde::Deserialize;

use self::auth::{Auth, AuthError, Identity, Role, Via};
use super::{AppState, RolloutView};
use crate::audit::{ActionError, ActionKind, ActionOutcome, ActionRequest, Actor, AuditEntry};
use crate::engine::{DecisionRecord, RolloutState};
use crate::metrics::Backend;
use crate::policy::Policy;

pub(super) use actions::act;
pub use actions::{view_at, ConflictBody, DoneBody};
pub use pages::{api_page, overview_page, ApiPage, Overview, OverviewRow};
pub(super) use signin::{signin, signin_page, signout};

/// Largest accepted action body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest accepted reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// A boxed future, for the object-safe [`ConsoleBackend`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The buttons the console shows, in order (the JSON API takes every kind
/// [`ActionKind::PERFORMED`] lists).
pub const BUTTONS: [ActionKind; 6] = [
    ActionKind::Start,
    ActionKind::Pause,
    ActionKind::Resume,
    ActionKind::Rollback,
    ActionKind::Promote,
    ActionKind::Approve,
];

/// Whether `role` may ask for `kind`: approvers approve, owners and admins do everything.
pub fn allowed(kind: ActionKind, role: Role) -> bool {
    match kind {
        ActionKind::Approve => role >= Role::Approver,
        _ => role >= Role::Owner,
    }
}

/// The daemon side of the console: the stored state, the action path and the audit trail.
pub trait ConsoleBackend: Send + Sync + 'static {
    /// The stored state of `policy`'s API and its ModifyIndex (the revision actions compare).
    fn state<'a>(
        &'a self,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<(RolloutState, u64), String>>;

    fn perform<'a>(
        &'a self,
        policy: Arc<Policy>,
        actor: Actor,
        request: ActionRequest,
    ) -> BoxFuture<'a, Result<ActionOutcome, ActionError>>;

    /// The newest audit entries of `api`, oldest first.
    fn audit<'a>(&'a self, api: &'a str) -> BoxFuture<'a, Vec<AuditEntry>>;

    /// `api`'s newest decisions, oldest first (kept out of the state and out of memory: read
    /// when a page or the API asks for one rollout).
    fn history<'a>(&'a self, api: &'a str) -> BoxFuture<'a, Vec<DecisionRecord>>;
}

/// Where query links point.
#[derive(Debug, Clone)]
pub struct MetricsUi {
    pub url: String,
    pub backend: Backend,
}

impl MetricsUi {
    /// A link showing `query` in the metrics backend's own UI.
    pub fn link(&self, query: &str) -> String {
        let q = percent_encode(query);
        match self.backend {
            Backend::VictoriaMetrics => {
                format!("{}/vmui/#/?g0.expr={q}&g0.range_input=6h", self.url)
            }
            Backend::Prometheus => {
                format!("{}/graph?g0.expr={q}&g0.tab=0&g0.range_input=6h", self.url)
            }
        }
    }
}

/// The console's settings and its link to the daemon.
pub struct Console {
    pub auth: Auth,
    pub backend: Option<Arc<dyn ConsoleBackend>>,
    pub metrics_ui: Option<MetricsUi>,
    requests: AtomicU64,
}

impl Console {
    pub fn new(
        auth: Auth,
        backend: Option<Arc<dyn ConsoleBackend>>,
        metrics_ui: Option<MetricsUi>,
    ) -> Console {
        Console {
            auth,
            backend,
            metrics_ui,
            requests: AtomicU64::new(0),
        }
    }

    /// No sign-in, no actions: what [`super::router`] serves.
    pub fn read_only() -> Console {
        Console::new(Auth::read_only(), None, None)
    }

    fn request_id(&self) -> String {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let r: u32 = rand::random();
        format!("{r:08x}-{n}")
    }
}

/// The peer address axum recorded for the connection, if served with connect info.
fn peer<B>(req: &Request<B>) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Identifies every console and `/api/v1` request; refuses the unidentified with 401 before
/// any handler runs. `/api/v1/openapi.json` is public.
pub(super) async fn identify(
    State(app): State<AppState>,
    mut req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let open = path == "/api/v1/openapi.json"
        || path.starts_with("/assets/")
        || matches!(
            path,
            "/metrics" | "/healthz" | "/readyz" | "/signin" | "/signout"
        );
    let who = app.console.auth.identify(peer(&req), req.headers());
    match who {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(_) if open => next.run(req).await,
        Err(e) => {
            let message = match e {
                AuthError::Missing if app.console.auth.has_tokens() => {
                    "sign-in required: come through the sign-in proxy, sign in at /signin with an API token, or send Authorization: Bearer <token>"
                }
                AuthError::Missing => "sign-in required: come through the sign-in proxy",
                AuthError::BadToken => "the bearer token is not valid",
            };
            let html = !path.starts_with("/api/");
            let browser = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if html && browser && e == AuthError::Missing && app.console.auth.has_tokens() {
                // A browser is sent to the sign-in form, and back here once signed in.
                let here = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let to = format!("/signin?next={}", percent_encode(here));
                let mut resp = (
                    StatusCode::SEE_OTHER,
                    Html(pages::message_page("Sign-in required", message)),
                )
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&to) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return resp;
            }
            let mut resp = if html {
                (
                    StatusCode::UNAUTHORIZED,
                    Html(pages::message_page("Sign-in required", message)),
                )
                    .into_response()
            } else {
                super::error(StatusCode::UNAUTHORIZED, message.to_string())
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"greenlight\""),
            );
            resp
        }
    }
}

/// One visible API: its view, policy (if loaded) and the user's role.
pub struct Visible {
    pub view: RolloutView,
    pub policy: Option<Arc<Policy>>,
    pub role: Role,
}

/// The APIs `who` may view, in the source's order.
fn visible(app: &AppState, who: &Identity) -> Vec<Visible> {
    visible_of(app, who, app.status.rollouts())
}

/// [`visible`] without the decision histories.
fn visible_summaries(app: &AppState, who: &Identity) -> Vec<Visible> {
    visible_of(app, who, app.status.summaries())
}

fn visible_of(app: &AppState, who: &Identity, views: Vec<RolloutView>) -> Vec<Visible> {
    let policies: std::collections::HashMap<String, Arc<Policy>> = app
        .status
        .policies()
        .into_iter()
        .map(|p| (p.api.clone(), p))
        .collect();
    views
        .into_iter()
        .filter_map(|view| {
            let policy = policies.get(&view.api).cloned();
            let role = app.console.auth.role(who, policy.as_deref());
            (role > Role::None).then_some(Visible { view, policy, role })
        })
        .collect()
}

pub(super) fn visible_one(app: &AppState, who: &Identity, api: &str) -> Option<Visible> {
    let view = app.status.rollout(api)?;
    let policy = app.status.policies().into_iter().find(|p| p.api == api);
    let role = app.console.auth.role(who, policy.as_deref());
    (role > Role::None).then_some(Visible { view, policy, role })
}

pub(super) fn no_such_api(api: &str) -> Response {
    super::error(StatusCode::NOT_FOUND, format!("no rollout for API {api:?}"))
}

pub(super) async fn rollouts(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
) -> Json<Vec<RolloutView>> {
    Json(visible(&app, &who).into_iter().map(|v| v.view).collect())
}

pub(super) async fn rollout(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
    Path(api): Path<String>,
) -> Response {
    let Some(v) = visible_one(&app, &who, &api) else {
        return no_such_api(&api);
    };
    if let (Some(b), Some(policy)) = (&app.console.backend, &v.policy) {
        if let Ok((state, index)) = b.state(policy).await {
            let mut view = view_at(policy, &state, index);
            view.history = b.history(&api).await;
            return Json(view).into_response();
        }
    }
    Json(v.view).into_response()
}

/// The campaigns as the leader last planned them, each with only the caller's visible APIs.
fn visible_campaigns(app: &AppState, who: &Identity) -> Vec<super::CampaignView> {
    let visible: std::collections::BTreeSet<String> = visible_summaries(app, who)
        .into_iter()
        .map(|v| v.view.api)
        .collect();
    app.status
        .campaigns()
        .iter()
        .filter_map(|c| c.restricted(&visible))
        .collect()
}

pub(super) async fn campaigns(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
) -> Json<Vec<super::CampaignView>> {
    Json(visible_campaigns(&app, &who))
}

/// The breakers, each trip naming only the APIs `who` may see.
fn visible_breakers(app: &AppState, who: &Identity) -> Vec<super::BreakerView> {
    let visible: std::collections::BTreeSet<String> = visible_summaries(app, who)
        .into_iter()
        .map(|v| v.view.api)
        .collect();
    app.status
        .breakers()
        .into_iter()
        .map(|b| b.restricted(&visible))
        .collect()
}

pub(super) async fn breakers(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
) -> Json<Vec<super::BreakerView>> {
    Json(visible_breakers(&app, &who))
}

/// The read-only campaign panel.
pub(super) async fn campaigns_html(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
    headers: HeaderMap,
) -> Response {
    let views = visible_campaigns(&app, &who);
    let breakers = visible_breakers(&app, &who);
    let csrf = csrf_for(&app.console.auth, &who);
    let body = campaigns::campaigns_page(&who, csrf.as_deref(), &views, &breakers);
    html(&headers, body, &who, &app.console.auth)
}

/// The audit trail of one API.
pub(super) async fn audit(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
    Path(api): Path<String>,
) -> Response {
    if visible_one(&app, &who, &api).is_none() {
        return no_such_api(&api);
    }
    let items = match &app.console.backend {
        Some(b) => b.audit(&api).await,
        None => Vec::new(),
    };
    Json(items).into_response()
}

/// Who the caller is and what they may do per visible API.
pub(super) async fn me(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
) -> Response {
    let roles: serde_json::Map<String, serde_json::Value> = visible_summaries(&app, &who)
        .into_iter()
        .map(|v| (v.view.api, v.role.as_str().into()))
        .collect();
    Json(serde_json::json!({
        "user": who.user,
        "groups": who.groups,
        "via": who.via.as_str(),
        "admin": app.console.auth.is_admin(&who),
        "roles": roles,
    }))
    .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    phase: Option<String>,
    /// Only the live part of the page (for the page's own updates).
    #[serde(default)]
    fragment: Option<u8>,
}

/// HTML with an ETag; 304 when the browser already has it.
fn html(headers: &HeaderMap, body: String, who: &Identity, auth: &Auth) -> Response {
    let tag = format!("\"{:016x}\"", fnv(body.as_bytes()));
    let mut resp = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Html(body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    if Auth::is_browser(who) {
        if let Ok(v) = HeaderValue::from_str(&auth::csrf_cookie(&auth.csrf_token(&who.user))) {
            h.insert(header::SET_COOKIE, v);
        }
    }
    resp
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

pub(super) async fn overview(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let rows = visible_summaries(&app, &who);
    let page = Overview {
        who: &who,
        csrf: csrf_for(&app.console.auth, &who),
        team: q.team.as_deref().filter(|t| !t.is_empty()),
        phase: q.phase.as_deref().filter(|p| !p.is_empty()),
        now: Timestamp::now(),
    };
    let body = overview_page(&page, &rows, q.fragment.is_some());
    html(&headers, body, &who, &app.console.auth)
}

pub(super) async fn api_html(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
    Path(api): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(v) = visible_one(&app, &who, &api) else {
        return (
            StatusCode::NOT_FOUND,
            Html(pages::message_page(
                "No such API",
                &format!("There is no rollout for {api:?} that you may see."),
            )),
        )
            .into_response();
    };
    let mut v = v;
    let audit = match (&app.console.backend, &v.policy) {
        (Some(b), Some(policy)) => {
            // The stored state, fresher than the last evaluation's (a pending intent shows at
            // once), with the revision actions compare.
            if let Ok((state, index)) = b.state(policy).await {
                v.view = view_at(policy, &state, index);
            }
            v.view.history = b.history(&api).await;
            b.audit(&api).await
        }
        _ => Vec::new(),
    };
    let page = ApiPage {
        who: &who,
        csrf: csrf_for(&app.console.auth, &who),
        visible: &v,
        audit: &audit,
        metrics_ui: app.console.metrics_ui.as_ref(),
        can_act: app.console.backend.is_some() && who.via != Via::Anonymous,
        now: Timestamp::now(),
    };
    let body = api_page(&page, q.fragment.is_some());
    html(&headers, body, &who, &app.console.auth)
}

fn csrf_for(auth: &Auth, who: &Identity) -> Option<String> {
    Auth::is_browser(who).then(|| auth.csrf_token(&who.user))
}

pub(super) async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static str, &'static str) = match name.as_str() {
        "console.js" => (
            include_str!("assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.css" => (
            include_str!("assets/console.css"),
            "text/css; charset=utf-8",
        ),
        _ => return super::error(StatusCode::NOT_FOUND, "no such asset".into()),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI document of `/api/v1`.
pub const OPENAPI: &str = include_str!("assets/openapi.json");

/// `%`-encodes everything but unreserved characters (for query links).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
