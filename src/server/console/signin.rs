//! Signing in with an API token from a browser: `GET /signin` (the form), `POST /signin` (the
//! token, checked against the configured hashes; a session cookie on success) and
//! `POST /signout`. A session is a random id kept in memory (only its hash) with an expiry;
//! the token itself is never stored, logged or sent back. Failed attempts are counted per
//! source address, and an address with too many is refused for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use jiff::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::actions::ConnectInfoOpt;
use super::auth::{cookie, hex, Identity, Via};
use super::pages::{esc, page};
use crate::server::AppState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "greenlight_session";
/// Name of the cookie carrying the sign-in form's CSRF token.
pub const SIGNIN_COOKIE: &str = "greenlight_signin";
/// Failed sign-ins from one address before it is refused for [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// How long failed sign-ins count against an address.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sessions kept at most (the oldest are dropped first).
const MAX_SESSIONS: usize = 10_000;
/// Addresses whose failures are tracked at most.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone)]
struct Session {
    user: String,
    groups: Vec<String>,
    expires: Timestamp,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Timestamp,
}

#[derive(Default)]
struct Inner {
    /// By the SHA-256 of the session id.
    sessions: HashMap<[u8; 32], Session>,
    failures: HashMap<IpAddr, Failures>,
}

/// The signed-in browsers and the failed attempts per address.
pub struct Sessions {
    lifetime: Duration,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the ids.
        let inner = crate::server::lock(&self.inner);
        f.debug_struct("Sessions")
            .field("lifetime", &self.lifetime)
            .field("sessions", &inner.sessions.len())
            .finish()
    }
}

fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn after(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Sessions {
        Sessions {
            lifetime,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new session of `user` from `now`: its id (what the cookie carries).
    pub fn create(&self, user: &str, groups: &[String], now: Timestamp) -> String {
        let mut id = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut id);
        let id = hex(&id);
        let mut inner = crate::server::lock(&self.inner);
        if inner.sessions.len() >= MAX_SESSIONS {
            inner.sessions.retain(|_, s| s.expires > now);
        }
        if inner.sessions.len() >= MAX_SESSIONS {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                inner.sessions.remove(&k);
            }
        }
        inner.sessions.insert(
            id_hash(&id),
            Session {
                user: user.to_string(),
                groups: groups.to_vec(),
                expires: after(now, self.lifetime),
            },
        );
        id
    }

    /// The identity of session `id` at `now`; `None` when unknown or expired.
    pub fn identity(&self, id: &str, now: Timestamp) -> Option<Identity> {
        let key = id_hash(id);
        let mut inner = crate::server::lock(&self.inner);
        let s = inner.sessions.get(&key)?;
        if s.expires <= now {
            inner.sessions.remove(&key);
            return None;
        }
        Some(Identity {
            user: s.user.clone(),
            groups: s.groups.clone(),
            via: Via::Session,
        })
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        crate::server::lock(&self.inner)
            .sessions
            .remove(&id_hash(id));
    }

    /// How long `from` must wait before trying again, when it failed too often.
    pub fn refused_for(&self, from: IpAddr, now: Timestamp) -> Option<Duration> {
        let inner = crate::server::lock(&self.inner);
        let f = inner.failures.get(&from)?;
        let until = after(f.since, FAILURE_WINDOW);
        (f.count >= MAX_FAILURES && until > now)
            .then(|| Duration::try_from(until.duration_since(now)).unwrap_or(FAILURE_WINDOW))
    }

    /// Counts a failed sign-in from `from`.
    pub fn failed(&self, from: IpAddr, now: Timestamp) {
        let mut inner = crate::server::lock(&self.inner);
        if inner.failures.len() >= MAX_TRACKED && !inner.failures.contains_key(&from) {
            inner
                .failures
                .retain(|_, f| after(f.since, FAILURE_WINDOW) > now);
            if inner.failures.len() >= MAX_TRACKED {
                // Under a flood from many addresses: forget the oldest.
                let oldest = inner
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    inner.failures.remove(&k);
                }
            }
        }
        let f = inner.failures.entry(from).or_insert(Failures {
            count: 0,
            since: now,
        });
        if after(f.since, FAILURE_WINDOW) <= now {
            *f = Failures {
                count: 0,
                since: now,
            };
        }
        f.count += 1;
    }

    /// Forgets `from`'s failures after a successful sign-in.
    pub fn succeeded(&self, from: IpAddr) {
        crate::server::lock(&self.inner).failures.remove(&from);
    }
}

/// Whether cookies set in answer to these headers need `Secure`: always, except for a browser
/// talking plain http to a loopback address (where a browser would drop a `Secure` cookie).
pub fn needs_secure(peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    let loopback_host = name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let loopback_peer = peer.is_none_or(|p| match p {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    });
    https || !(loopback_host && loopback_peer)
}

fn set_cookie(name: &str, value: &str, max_age: u64, path: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Where to go after signing in: a path on this console only.
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(in crate::server) struct SigninQuery {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
pub(in crate::server) struct SigninForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
pub(in crate::server) struct SignoutForm {
    #[serde(default)]
    csrf: String,
}

/// The sign-in form (its CSRF token is also in [`SIGNIN_COOKIE`]).
fn form_page(csrf: &str, next: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| {
            format!(
                r#"<p class="error" id="signin-error" role="alert">{}</p>"#,
                esc(e)
            )
        })
        .unwrap_or_default();
    page(
        "Sign in",
        None,
        None,
        &format!(
            r#"<h1>Sign in</h1><p class="notice">Sign-in required: paste an API token of this console (or come through the sign-in proxy, if one is set up).</p>{error}<form class="signin" method="post" action="/signin"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="next" value="{}"><label>API token <input type="password" name="token" id="token" autocomplete="current-password" required></label> <button type="submit" id="signin">Sign in</button></form>"#,
            esc(csrf),
            esc(next)
        ),
    )
}

fn no_token_signin() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(super::pages::message_page(
            "No token sign-in",
            "This console has no API tokens configured ([[console.token]]); sign in through the sign-in proxy.",
        )),
    )
        .into_response()
}

fn with_headers(mut resp: Response, cookies: &[HeaderValue]) -> Response {
    let h = resp.headers_mut();
    for c in cookies {
        h.append(header::SET_COOKIE, c.clone());
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; \
             form-action 'self'",
        ),
    );
    resp
}

fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `GET /signin?next=/apis/checkout`.
pub(in crate::server) async fn signin_page(
    State(app): State<AppState>,
    ConnectInfoOpt(peer): ConnectInfoOpt,
    Query(q): Query<SigninQuery>,
    headers: HeaderMap,
) -> Response {
    let auth = &app.console.auth;
    if !auth.has_tokens() {
        return no_token_signin();
    }
    let csrf = auth.signin_token();
    let secure = needs_secure(peer, &headers);
    let body = form_page(&csrf, &local(q.next.as_deref()), None);
    with_headers(
        Html(body).into_response(),
        &[set_cookie(SIGNIN_COOKIE, &csrf, 3600, "/signin", secure)],
    )
}

/// `POST /signin` with `token`, `csrf` and `next` (a form).
pub(in crate::server) async fn signin(
    State(app): State<AppState>,
    ConnectInfoOpt(peer): ConnectInfoOpt,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Response {
    let auth = &app.console.auth;
    if !auth.has_tokens() {
        return no_token_signin();
    }
    let now = Timestamp::now();
    let source = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let secure = needs_secure(peer, &headers);
    let next = local(form.next.as_deref());
    let sessions = auth.sessions();
    if let Some(wait) = sessions.refused_for(source, now) {
        signin_refused(source, "too many failed attempts");
        let secs = wait.as_secs().max(1);
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            Html(super::pages::message_page(
                "Too many attempts",
                &format!("Too many failed sign-ins from this address: try again in {secs} s."),
            )),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return with_headers(resp, &[]);
    }
    let cookie_token = cookie(&headers, SIGNIN_COOKIE).unwrap_or_default();
    if let Err(m) = auth.same_origin(&headers).and_then(|()| {
        auth.signin_token_matches(&form.csrf, &cookie_token)
            .then_some(())
            .ok_or_else(|| {
                "missing or wrong CSRF token: open the sign-in page again and retry".to_string()
            })
    }) {
        signin_refused(source, &m);
        return with_headers(
            (
                StatusCode::FORBIDDEN,
                Html(super::pages::message_page("Sign-in refused", &m)),
            )
                .into_response(),
            &[],
        );
    }
    let Some(who) = auth.token_identity(form.token.trim()) else {
        sessions.failed(source, now);
        signin_refused(source, "the token matches no configured hash");
        let body = form_page(&cookie_token, &next, Some("That token is not valid."));
        return with_headers((StatusCode::UNAUTHORIZED, Html(body)).into_response(), &[]);
    };
    sessions.succeeded(source);
    let id = sessions.create(&who.user, &who.groups, now);
    signed_in(&who, source);
    with_headers(
        see_other(&next),
        &[
            set_cookie(
                SESSION_COOKIE,
                &id,
                sessions.lifetime().as_secs(),
                "/",
                secure,
            ),
            set_cookie(SIGNIN_COOKIE, "", 0, "/signin", secure),
        ],
    )
}

/// `POST /signout` with the page's `csrf` (a form): ends the session, back to the sign-in page.
pub(in crate::server) async fn signout(
    State(app): State<AppState>,
    ConnectInfoOpt(peer): ConnectInfoOpt,
    who: Option<axum::Extension<Identity>>,
    headers: HeaderMap,
    Form(form): Form<SignoutForm>,
) -> Response {
    let auth = &app.console.auth;
    let secure = needs_secure(peer, &headers);
    if let Some(axum::Extension(who)) = who.filter(|w| w.via == Via::Session) {
        if let Err(m) = auth.check_form_csrf(&who, &headers, &form.csrf) {
            return with_headers(
                (
                    StatusCode::FORBIDDEN,
                    Html(super::pages::message_page("Sign-out refused", &m)),
                )
                    .into_response(),
                &[],
            );
        }
        if let Some(id) = cookie(&headers, SESSION_COOKIE) {
            auth.sessions().end(&id);
        }
        tracing::info!(user = %who.user, source = %peer.map(|p| p.to_string()).unwrap_or_default(), "Signed out of the console.");
    }
    with_headers(
        see_other("/signin"),
        &[set_cookie(SESSION_COOKIE, "", 0, "/", secure)],
    )
}

fn signed_in(who: &Identity, source: IpAddr) {
    tracing::info!(user = %who.user, groups = %who.groups.join(","), %source, "Signed in to the console with a token.");
}

fn signin_refused(source: IpAddr, reason: &str) {
    tracing::warn!(%source, %reason, "Refused a console sign-in.");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_767_571_200 + s).unwrap()
    }

    #[test]
    fn a_session_lasts_its_lifetime_and_ends_at_sign_out() {
        let s = Sessions::new(Duration::from_secs(3600));
        let id = s.create("bot", &["payments".into()], t(0));
        let who = s.identity(&id, t(3599)).unwrap();
        assert_eq!((who.user.as_str(), who.via), ("bot", Via::Session));
        assert_eq!(who.groups, ["payments"]);
        assert_eq!(s.identity(&id, t(3600)), None, "expired");
        let id = s.create("bot", &[], t(0));
        s.end(&id);
        assert_eq!(s.identity(&id, t(1)), None, "signed out");
        assert_eq!(s.identity("0123abcd", t(1)), None, "forged");
        assert!(!format!("{s:?}").contains(&id), "ids are never shown");
    }

    #[test]
    fn an_address_with_too_many_failures_waits_for_the_window() {
        let s = Sessions::new(Duration::from_secs(60));
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let b: IpAddr = "10.0.0.10".parse().unwrap();
        for i in 0..MAX_FAILURES {
            assert_eq!(s.refused_for(a, t(i as i64)), None);
            s.failed(a, t(i as i64));
        }
        assert_eq!(s.refused_for(a, t(10)), Some(Duration::from_secs(50)));
        assert_eq!(
            s.refused_for(b, t(10)),
            None,
            "other addresses are not held"
        );
        assert_eq!(s.refused_for(a, t(60)), None, "the window passed");
        s.failed(a, t(61));
        assert_eq!(s.refused_for(a, t(62)), None, "counting starts again");
        s.succeeded(a);
        assert!(crate::server::lock(&s.inner).failures.is_empty());
    }

    #[test]
    fn cookies_are_secure_except_over_plain_http_on_loopback() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let lo: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        assert!(!needs_secure(lo, &h(&[("host", "127.0.0.1:8457")])));
        assert!(!needs_secure(lo, &h(&[("host", "localhost:8457")])));
        assert!(!needs_secure(
            Some("::1".parse().unwrap()),
            &h(&[("host", "[::1]:8457")])
        ));
        assert!(needs_secure(
            lo,
            &h(&[("host", "127.0.0.1:8457"), ("x-forwarded-proto", "https")])
        ));
        assert!(needs_secure(lo, &h(&[("host", "greenlight.example.com")])));
        assert!(needs_secure(
            Some("10.0.0.7".parse().unwrap()),
            &h(&[("host", "127.0.0.1:8457")])
        ));
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local(Some("/apis/checkout")), "/apis/checkout");
        assert_eq!(local(Some("//evil.example/")), "/");
        assert_eq!(local(Some("https://evil.example/")), "/");
        assert_eq!(local(Some("/\\evil.example")), "/");
        assert_eq!(local(None), "/");
    }
}
