//! `POST /api/v1/rollouts/{api}/actions`: checks (sign-in, CSRF, body, role), then the one
//! action path through [`ConsoleBackend::perform`].

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::{Identity, Via};
use super::{allowed, no_such_api, visible_one, MAX_REASON_CHARS};
use crate::audit::{ActionError, ActionKind, ActionRequest, Actor};
use crate::engine::RolloutState;
use crate::policy::Policy;
use crate::server::{AppState, RolloutView};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action: String,
    #[serde(default)]
    reason: String,
    /// The ModifyIndex of the state the caller saw (`state_index` of a rollout view).
    #[serde(default)]
    expected_revision: Option<u64>,
}

/// Answer to a stale or refused action: why, and the state now.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConflictBody {
    pub error: String,
    /// The ModifyIndex of the current state (send it to act on what you see now).
    pub revision: u64,
    pub current: RolloutView,
}

/// Answer to a recorded action.
#[derive(Debug, Serialize, Deserialize)]
pub struct DoneBody {
    pub api: String,
    pub action: String,
    pub request_id: String,
    /// The ModifyIndex of the state as the action wrote it.
    pub revision: u64,
    pub before: RolloutView,
    pub after: RolloutView,
    /// Set when the audit entry could not be stored (the action stands).
    pub audit_error: Option<String>,
}

/// A view of `state` at ModifyIndex `index`.
pub fn view_at(policy: &Policy, state: &RolloutState, index: u64) -> RolloutView {
    let mut view = RolloutView::from_state(policy, state);
    view.state_index = Some(index);
    view
}

/// `POST /api/v1/rollouts/{api}/actions`:
/// `{"action": "pause", "reason": "…", "expected_revision": 12}`.
pub(crate) async fn act(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<Identity>,
    ConnectInfoOpt(address): ConnectInfoOpt,
    Path(api): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let forbidden = |m: String| crate::server::error(StatusCode::FORBIDDEN, m);
    let Some(v) = visible_one(&app, &who, &api) else {
        return no_such_api(&api);
    };
    if who.via == Via::Anonymous {
        return forbidden(
            "the console is read-only: no sign-in is configured ([console.proxy] or \
             [[console.token]] in the daemon config)"
                .into(),
        );
    }
    if let Err(m) = app.console.auth.check_csrf(&who, &headers) {
        return forbidden(m);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return crate::server::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the action as application/json".into(),
        );
    }
    let parsed: ActionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return crate::server::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"action\": \"pause\", \"reason\": \"…\", \"expected_revision\": N}}: {e}"
                ),
            )
        }
    };
    let kind = ActionKind::parse(&parsed.action).filter(|k| ActionKind::PERFORMED.contains(k));
    let Some(kind) = kind else {
        let known: Vec<&str> = ActionKind::PERFORMED.iter().map(|k| k.as_str()).collect();
        return crate::server::error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown action {:?} (known: {})",
                parsed.action,
                known.join(", ")
            ),
        );
    };
    let reason = parsed.reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return crate::server::error(
            StatusCode::BAD_REQUEST,
            format!("give a reason (1 to {MAX_REASON_CHARS} characters)"),
        );
    }
    if !allowed(kind, v.role) {
        let owners = v
            .policy
            .as_ref()
            .map(|p| p.access.owners.join(", "))
            .unwrap_or_default();
        return forbidden(format!(
            "{} may view {api} but not {} it (role {}; owners: {})",
            who.user,
            kind.as_str(),
            v.role.as_str(),
            if owners.is_empty() {
                "admins only".into()
            } else {
                owners
            }
        ));
    }
    let (Some(backend), Some(policy)) = (&app.console.backend, &v.policy) else {
        return crate::server::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "actions are not available from this server".into(),
        );
    };
    let request_id = app.console.request_id();
    let actor = Actor {
        user: who.user.clone(),
        groups: who.groups.clone(),
        source: address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into()),
        request_id: request_id.clone(),
    };
    let request = ActionRequest {
        kind,
        reason,
        expected_revision: parsed.expected_revision,
        start: Default::default(),
    };
    let conflict = |error: String, current: &RolloutState, revision: u64| {
        (
            StatusCode::CONFLICT,
            Json(ConflictBody {
                error,
                revision,
                current: view_at(policy, current, revision),
            }),
        )
            .into_response()
    };
    let mut resp = match backend.perform(policy.clone(), actor, request).await {
        Ok(done) => Json(DoneBody {
            api: api.clone(),
            action: kind.as_str().into(),
            request_id: request_id.clone(),
            revision: done.revision,
            before: RolloutView::from_state(policy, &done.before),
            after: view_at(policy, &done.after, done.revision),
            audit_error: done.audit_error,
        })
        .into_response(),
        Err(ActionError::Stale { current, revision }) => conflict(
            format!(
                "the rollout changed since your view (revision {}, now {revision}): nothing done; look again",
                parsed
                    .expected_revision
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            ),
            &current,
            revision,
        ),
        Err(ActionError::Refused(reason)) => match backend.state(policy).await {
            Ok((current, revision)) => conflict(reason, &current, revision),
            Err(_) => crate::server::error(StatusCode::CONFLICT, reason),
        },
        Err(e) => crate::server::error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The connection's peer address, when served with connect info.
pub(crate) struct ConnectInfoOpt(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ConnectInfoOpt {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ConnectInfoOpt(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}
