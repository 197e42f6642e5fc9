//! PromQL metrics: backend settings, the HTTP client, templating, windows and observations.
//!
//! - [`client`]: [`PromClient`], instant and range queries against VictoriaMetrics or
//!   Prometheus, decoded into [`QueryResult`] or a typed [`QueryError`].
//! - [`template`]: substitutes `{color}`, `{cohort}`, `{interval}` and `{api}` into a policy's
//!   queries.
//! - [`window`]: aligned, disjoint and contiguous evaluation windows.
//! - [`observe`]: runs a policy's checks for one window and classifies the data into an
//!   [`crate::engine::Observation`] (clean counts, or the [`crate::engine::DataProblem`] that
//!   makes the window unusable).

pub mod batch;
mod batcher;
pub mod client;
pub mod observe;
mod selectors;
pub mod template;
pub mod window;

use std::fmt;
use std::time::Duration;

pub use batcher::BatchStats;
pub use client::{PromClient, QueryError, QueryResult, Sample, Series, SettingsError};
pub use observe::{observe, observe_with, ObserveOptions};
pub use template::{promql_duration, render};
pub use window::{aligned_end, Window};

/// Which PromQL server the client talks to; the dialects differ in details (cache control,
/// error codes, NaN handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    VictoriaMetrics,
    Prometheus,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::VictoriaMetrics => f.write_str("victoriametrics"),
            Backend::Prometheus => f.write_str("prometheus"),
        }
    }
}

/// Credentials sent with every query. `Debug` never shows the secret part.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP basic authentication.
    Basic { user: String, password: String },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &format_args!("<redacted>"))
                .finish(),
        }
    }
}

/// Where and how to query metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Base URL of the PromQL API, without `/api/v1` (e.g. `http://vm:8428`, or
    /// `http://vmselect:8481/select/0/prometheus` for a cluster).
    pub url: String,
    pub kind: Backend,
    /// Whole-request deadline for one query.
    pub timeout: Duration,
    pub auth: Option<Auth>,
}

impl MetricsSettings {
    /// The daemon config's `[metrics]` section as client settings; secrets are read now.
    pub fn from_config(m: &crate::policy::MetricsConfig) -> Result<MetricsSettings, String> {
        use crate::policy::{MetricsAuth, MetricsBackend};
        let auth = match &m.auth {
            None => None,
            Some(MetricsAuth::Bearer(token)) => Some(Auth::Bearer(
                token
                    .resolve()
                    .map_err(|e| format!("metrics bearer token: {e}"))?,
            )),
            Some(MetricsAuth::Basic { username, password }) => Some(Auth::Basic {
                user: username.clone(),
                password: password
                    .resolve()
                    .map_err(|e| format!("metrics password: {e}"))?,
            }),
        };
        Ok(MetricsSettings {
            url: m.url.clone(),
            kind: match m.kind {
                MetricsBackend::VictoriaMetrics => Backend::VictoriaMetrics,
                MetricsBackend::Prometheus => Backend::Prometheus,
            },
            timeout: m.timeout,
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_debug_hides_secrets() {
        let bearer = format!("{:?}", Auth::Bearer("s3cr3t-token".into()));
        assert!(!bearer.contains("s3cr3t"), "{bearer}");
        let basic = format!(
            "{:?}",
            MetricsSettings {
                url: "http://vm:8428".into(),
                kind: Backend::VictoriaMetrics,
                timeout: Duration::from_secs(5),
                auth: Some(Auth::Basic {
                    user: "reader".into(),
                    password: "hunter2".into()
                }),
            }
        );
        assert!(basic.contains("reader"), "{basic}");
        assert!(!basic.contains("hunter2"), "{basic}");
        assert!(basic.contains("<redacted>"), "{basic}");
    }
}
