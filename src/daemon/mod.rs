//! The I/O shell: for every policy, fetch → decide → apply → persist → alert, on its own
//! interval, while holding the leader lock.
//!
//! Per API and window: read the state (Consul KV) and the live weights; finish a weight change a
//! crashed predecessor left half done, or pause on a manual change; query the window's metrics;
//! `decide()`; persist the new state (compare-and-set, fenced by the lock) with the pending
//! weight change marked and its alerts in the shared outbox, in one transaction; write the weights
//! (compare-and-set); clear the mark. Killed at any point, the next instance finds either the old
//! state (and re-decides the same window) or the marked one (and finishes the change).

mod alerts;
pub mod breakers;
mod campaigns;
pub mod console;
pub mod docs;
pub mod env;
pub mod health;
pub mod outbox;
pub mod plan;
mod run;
mod shell;
mod status;
pub mod store;

use std::time::Duration;

pub use docs::{BreakerStore, CampaignStore};
pub use status::LiveStatus;
pub use store::{Saved, StateStore, StoreError};

pub use env::{AlertIo, Clock, Env, MetricsIo, RealEnv, StateIo, WeightIo};
pub use run::run;
pub use shell::{EvalError, Shell};

use crate::alert::{ChannelKind, ChannelSettings, Notifier};
use crate::consul::{ConsulClient, ConsulError};
use crate::metrics::{ObserveOptions, PromClient};
use crate::policy::{AlertChannelKind, Config, PolicyError};
use crate::traffic::{ConsulKv, HaproxyRuntime};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("policies: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Policies(Vec<PolicyError>),
    #[error("another instance holds the leader lock {0}")]
    NotLeader(String),
    #[error("Consul: {0}")]
    Consul(#[from] ConsulError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{failed} of {total} evaluations failed")]
    Evaluations { failed: usize, total: usize },
}

/// Options of `greenlight run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Evaluate every policy once, then exit.
    pub once: bool,
    /// Name of this instance (lock holder description, session name).
    pub instance: String,
    /// How often the loop wakes up to look for due windows and reloaded policies.
    pub tick: Duration,
    /// Serve the HTTP endpoints (not with `--once`).
    pub serve: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            once: false,
            instance: default_instance(),
            tick: Duration::from_secs(1),
            serve: true,
        }
    }
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "greenlight".into());
    format!("{host}-{}", std::process::id())
}

/// Builds the Consul client from the config (token from its file or environment variable).
pub fn consul_client(config: &Config) -> Result<ConsulClient, DaemonError> {
    let token = config
        .consul
        .token
        .resolve_optional()
        .map_err(|e| DaemonError::Config(format!("consul token: {e}")))?;
    Ok(ConsulClient::new(
        &config.consul.url,
        token,
        Duration::from_secs(10),
    )?)
}

/// Connects the production parts described by `config` (no network traffic yet).
pub fn real_env(config: &Config) -> Result<RealEnv, DaemonError> {
    let consul = consul_client(config)?;
    let settings = crate::metrics::MetricsSettings::from_config(&config.metrics)
        .map_err(DaemonError::Config)?;
    let kind = settings.kind;
    let metrics = PromClient::new(settings)
        .map_err(|e| DaemonError::Config(format!("metrics: {e}")))?
        .with_batching(config.metrics.batch_max);
    let haproxy = if config.haproxy.nodes.is_empty() {
        None
    } else {
        let urls: Vec<String> = config.haproxy.nodes.iter().map(|n| n.to_string()).collect();
        Some(HaproxyRuntime::from_urls(&urls).map_err(DaemonError::Config)?)
    };
    let mut channels = Vec::new();
    for c in &config.alerts {
        let secret = |r: Result<String, String>| {
            r.map_err(|e| DaemonError::Config(format!("alert channel {}: {e}", c.name)))
        };
        let kind = match &c.kind {
            AlertChannelKind::Alertmanager { url } => ChannelKind::AlertmanagerUrl(url.clone()),
            AlertChannelKind::Slack { webhook_url } => ChannelKind::Slack {
                webhook_url: secret(webhook_url.resolve().map_err(|e| e.to_string()))?,
            },
            AlertChannelKind::Webhook { url, hmac_secret } => ChannelKind::Webhook {
                url: secret(url.resolve().map_err(|e| e.to_string()))?,
                hmac_secret: match hmac_secret {
                    Some(s) => Some(secret(s.resolve().map_err(|e| e.to_string()))?),
                    None => None,
                },
            },
        };
        channels.push(ChannelSettings {
            name: c.name.clone(),
            kind,
        });
    }
    let notifier = Notifier::new(
        channels,
        config.state_dir.join("outbox"),
        Duration::from_secs(5),
    )
    .map_err(|e| DaemonError::Config(format!("alert outbox: {e}")))?;
    let backend = match kind {
        crate::metrics::Backend::VictoriaMetrics => "victoriametrics",
        crate::metrics::Backend::Prometheus => "prometheus",
    };
    Ok(RealEnv {
        store: StateStore::new(consul.clone(), &config.consul.prefix),
        consul_kv: ConsulKv::new(consul.clone()),
        haproxy,
        metrics,
        observe: ObserveOptions {
            max_sample_age: Some(config.metrics.max_staleness),
            ..ObserveOptions::default()
        },
        backend,
        metrics_url: config.metrics.url.clone(),
        notifier: std::sync::Arc::new(notifier),
        shared: outbox::SharedOutbox::new(consul.clone(), &config.consul.prefix),
    })
}
