//! Consul sessions (`/v1/session/*`): create, renew, destroy, info.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{expect_ok, ConsulClient, ConsulError};

/// What happens to the keys a session holds when the session is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// Locks are released (Session cleared, value kept).
    #[default]
    Release,
    /// Held keys are deleted.
    Delete,
}

/// Parameters of `PUT /v1/session/create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub name: String,
    /// Invalidated after 2×TTL without renewal. Consul accepts 10 s to 24 h.
    pub ttl: Option<Duration>,
    /// After invalidation, held keys cannot be re-acquired for this long (max 60 s).
    pub lock_delay: Duration,
    pub behavior: SessionBehavior,
}

impl SessionRequest {
    /// A release-on-invalidation session with the given TTL and Consul's default 15 s lock-delay.
    pub fn new(name: impl Into<String>, ttl: Duration) -> Self {
        SessionRequest {
            name: name.into(),
            ttl: Some(ttl),
            lock_delay: Duration::from_secs(15),
            behavior: SessionBehavior::Release,
        }
    }
}

/// A session as `GET /v1/session/info/:id` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
    /// Nanoseconds.
    #[serde(default)]
    pub lock_delay: u64,
    #[serde(default)]
    pub behavior: String,
    #[serde(default, rename = "TTL")]
    pub ttl: String,
    #[serde(default)]
    pub create_index: u64,
}

impl ConsulClient {
    /// Creates a session; returns its ID.
    pub async fn session_create(&self, req: &SessionRequest) -> Result<String, ConsulError> {
        let mut body = serde_json::json!({
            "Name": req.name,
            "LockDelay": format!("{}ms", req.lock_delay.as_millis()),
            "Behavior": req.behavior,
        });
        if let Some(ttl) = req.ttl {
            body["TTL"] = serde_json::Value::String(format!("{}s", ttl.as_secs().max(1)));
        }
        let reply = self
            .call(
                Method::PUT,
                "session/create",
                &[],
                Some(body.to_string().into_bytes()),
                Duration::ZERO,
            )
            .await?;
        expect_ok(&reply)?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let created: Created = serde_json::from_str(&reply.body)
            .map_err(|e| ConsulError::Decode(format!("session create: {e}")))?;
        Ok(created.id)
    }

    /// Renews a session's TTL. [`ConsulError::SessionNotFound`] if it is gone.
    pub async fn session_renew(&self, id: &str) -> Result<SessionInfo, ConsulError> {
        let reply = self
            .call(
                Method::PUT,
                &format!("session/renew/{id}"),
                &[],
                None,
                Duration::ZERO,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(ConsulError::SessionNotFound(id.to_string()));
        }
        expect_ok(&reply)?;
        let mut infos: Vec<SessionInfo> = serde_json::from_str(&reply.body)
            .map_err(|e| ConsulError::Decode(format!("session renew: {e}")))?;
        if infos.is_empty() {
            return Err(ConsulError::SessionNotFound(id.to_string()));
        }
        Ok(infos.swap_remove(0))
    }

    /// Destroys a session (idempotent); its locks are released.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        let reply = self
            .call(
                Method::PUT,
                &format!("session/destroy/{id}"),
                &[],
                None,
                Duration::ZERO,
            )
            .await?;
        expect_ok(&reply)
    }

    /// The session, or `None` if Consul does not know it.
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionInfo>, ConsulError> {
        let reply = self
            .call(
                Method::GET,
                &format!("session/info/{id}"),
                &[],
                None,
                Duration::ZERO,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        expect_ok(&reply)?;
        let infos: Vec<SessionInfo> = serde_json::from_str(&reply.body)
            .map_err(|e| ConsulError::Decode(format!("session info: {e}")))?;
        Ok(infos.into_iter().next())
    }
}
