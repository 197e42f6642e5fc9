//! Raw serde types of the daemon config file, as written, with their defaults. Validation into
//! [`Config`](super::Config) lives in `config`.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::config::MetricsBackend;
use super::located::unspanned;
use super::values::{duration, HumanDuration, Table};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Directory of policy files, relative to this file. Default `"policies"`.
    #[serde(default = "default_policies_dir")]
    pub(super) policies_dir: Spanned<String>,
    /// Directory of campaign files, relative to this file. Default `"campaigns"`; a directory
    /// that does not exist holds no campaigns.
    #[serde(default = "default_campaigns_dir")]
    pub(super) campaigns_dir: Spanned<String>,
    /// HTTP listen address. Default `"127.0.0.1:8457"`.
    #[serde(default = "default_listen")]
    pub(super) listen: Spanned<String>,
    /// Local state directory (alert outbox), relative to this file. Default
    /// `"/var/lib/greenlight"`.
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: Spanned<String>,
    /// `[metrics]`: the PromQL backend.
    #[serde(default = "default_metrics")]
    pub(super) metrics: Table<RawMetrics>,
    /// `[consul]`: KV, sessions and locks.
    #[serde(default = "default_consul")]
    pub(super) consul: Table<RawConsul>,
    /// `[haproxy]`: Runtime API nodes.
    #[serde(default = "default_haproxy")]
    pub(super) haproxy: Table<RawHaproxy>,
    /// `[[alert]]`: named alert channels.
    #[serde(default, rename = "alert")]
    pub(super) alerts: Vec<Spanned<Table<RawAlert>>>,
    /// Maximum APIs evaluated at once. Default 32.
    #[serde(default = "default_max_concurrency")]
    pub(super) max_concurrency: Spanned<i64>,
    /// `[sync]`: `greenlight sync`.
    #[serde(default = "default_sync")]
    pub(super) sync: Table<RawSync>,
    /// `[console]`: sign-in and admin groups of the console and the JSON API.
    #[serde(default)]
    pub(super) console: Table<super::config_console::RawConsole>,
    /// `[breaker]`: the cluster breaker.
    #[serde(default)]
    pub(super) breaker: Table<super::config_breaker::RawBreaker>,
}

pub(super) fn default_policies_dir() -> Spanned<String> {
    unspanned("policies".into())
}
pub(super) fn default_campaigns_dir() -> Spanned<String> {
    unspanned("campaigns".into())
}
pub(super) fn default_listen() -> Spanned<String> {
    unspanned("127.0.0.1:8457".into())
}
pub(super) fn default_state_dir() -> Spanned<String> {
    unspanned("/var/lib/greenlight".into())
}
pub(super) fn default_max_concurrency() -> Spanned<i64> {
    unspanned(32)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// Base URL. Default `"http://127.0.0.1:8428"`.
    #[serde(default = "default_metrics_url")]
    pub(super) url: Spanned<String>,
    /// `"victoriametrics"` or `"prometheus"`. Default `"victoriametrics"`.
    #[serde(default = "default_metrics_kind")]
    pub(super) kind: MetricsBackend,
    /// Query timeout. Default `"10s"`.
    #[serde(default = "default_metrics_timeout")]
    pub(super) timeout: Spanned<HumanDuration>,
    /// Default `"30s"` for VictoriaMetrics, `"0s"` for Prometheus.
    #[serde(default)]
    pub(super) latency_offset: Option<Spanned<HumanDuration>>,
    /// Newest-sample age beyond which data is stale. Default `"2m"`.
    #[serde(default = "default_max_staleness")]
    pub(super) max_staleness: Spanned<HumanDuration>,
    /// `[metrics.auth]`: `bearer_token = <secret>`, or `username` + `password = <secret>`.
    #[serde(default)]
    pub(super) auth: Option<Spanned<Table<RawAuth>>>,
    /// Most queries answered by one batched query; 1 (the default) sends each alone.
    #[serde(default = "default_batch_max")]
    pub(super) batch_max: Spanned<i64>,
}

pub(super) fn default_metrics() -> Table<RawMetrics> {
    Table(RawMetrics {
        url: default_metrics_url(),
        kind: default_metrics_kind(),
        timeout: default_metrics_timeout(),
        latency_offset: None,
        max_staleness: default_max_staleness(),
        auth: None,
        batch_max: default_batch_max(),
    })
}
pub(super) fn default_metrics_url() -> Spanned<String> {
    unspanned("http://127.0.0.1:8428".into())
}
pub(super) fn default_metrics_kind() -> MetricsBackend {
    MetricsBackend::VictoriaMetrics
}
pub(super) fn default_metrics_timeout() -> Spanned<HumanDuration> {
    duration(10)
}
pub(super) fn default_batch_max() -> Spanned<i64> {
    unspanned(1)
}
pub(super) fn default_max_staleness() -> Spanned<HumanDuration> {
    duration(120)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    /// Bearer token secret.
    #[serde(default)]
    pub(super) bearer_token: Option<Spanned<RawSecret>>,
    /// Basic-auth user name (not secret).
    #[serde(default)]
    pub(super) username: Option<Spanned<String>>,
    /// Basic-auth password secret.
    #[serde(default)]
    pub(super) password: Option<Spanned<RawSecret>>,
}

/// A secret reference: exactly one of `{ file = "/path" }` or `{ env = "VAR" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretTable {
    /// File holding the secret (relative to the config file).
    #[serde(default)]
    pub(super) file: Option<String>,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub(super) env: Option<String>,
}

/// [`RawSecretTable`], refusing any other form without echoing it: a secret pasted in place of
/// the reference must not end up in an error message.
#[derive(Debug, Clone)]
pub(super) struct RawSecret {
    pub(super) file: Option<String>,
    pub(super) env: Option<String>,
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str =
            "a secret reference { file = \"/path\" } or { env = \"VAR\" }, never the secret itself";
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSecret, A::Error> {
                let t =
                    RawSecretTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawSecret {
                    file: t.file,
                    env: t.env,
                })
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
                Err(serde::de::Error::custom(format!("expected {EXPECTED}")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsul {
    /// Base URL. Default `"http://127.0.0.1:8500"`.
    #[serde(default = "default_consul_url")]
    pub(super) url: Spanned<String>,
    /// ACL token secret. Default `{ env = "CONSUL_HTTP_TOKEN" }`.
    #[serde(default = "default_consul_token")]
    pub(super) token: Spanned<RawSecret>,
    /// Prefix of greenlight's own keys. Default `"greenlight"`.
    #[serde(default = "default_consul_prefix")]
    pub(super) prefix: Spanned<String>,
    /// Session TTL. Default `"15s"`.
    #[serde(default = "default_session_ttl")]
    pub(super) session_ttl: Spanned<HumanDuration>,
    /// Session lock-delay. Default `"15s"`.
    #[serde(default = "default_lock_delay")]
    pub(super) lock_delay: Spanned<HumanDuration>,
}

pub(super) fn default_consul() -> Table<RawConsul> {
    Table(RawConsul {
        url: default_consul_url(),
        token: default_consul_token(),
        prefix: default_consul_prefix(),
        session_ttl: default_session_ttl(),
        lock_delay: default_lock_delay(),
    })
}
pub(super) fn default_consul_url() -> Spanned<String> {
    unspanned("http://127.0.0.1:8500".into())
}
pub(super) fn default_consul_token() -> Spanned<RawSecret> {
    unspanned(RawSecret {
        file: None,
        env: Some("CONSUL_HTTP_TOKEN".into()),
    })
}
pub(super) fn default_consul_prefix() -> Spanned<String> {
    unspanned("greenlight".into())
}
pub(super) fn default_session_ttl() -> Spanned<HumanDuration> {
    duration(15)
}
pub(super) fn default_lock_delay() -> Spanned<HumanDuration> {
    duration(15)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHaproxy {
    /// `"tcp://host:port"` or `"unix:///path"`. Default `["tcp://127.0.0.1:9999"]`.
    #[serde(default = "default_haproxy_nodes")]
    pub(super) nodes: Vec<Spanned<String>>,
}

pub(super) fn default_haproxy() -> Table<RawHaproxy> {
    Table(RawHaproxy {
        nodes: default_haproxy_nodes(),
    })
}
pub(super) fn default_haproxy_nodes() -> Vec<Spanned<String>> {
    vec![unspanned("tcp://127.0.0.1:9999".into())]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    /// Listen address of sync's `/metrics`. Default `"127.0.0.1:8458"`.
    #[serde(default = "default_sync_listen")]
    pub(super) listen: Spanned<String>,
    /// Drift check period. Default `"10s"`.
    #[serde(default = "default_repair_interval")]
    pub(super) repair_interval: Spanned<HumanDuration>,
}

pub(super) fn default_sync() -> Table<RawSync> {
    Table(RawSync {
        listen: default_sync_listen(),
        repair_interval: default_repair_interval(),
    })
}
pub(super) fn default_sync_listen() -> Spanned<String> {
    unspanned("127.0.0.1:8458".into())
}
pub(super) fn default_repair_interval() -> Spanned<HumanDuration> {
    duration(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawAlertKind {
    Alertmanager,
    Slack,
    Webhook,
}

/// One `[[alert]]` channel. Flat: which fields a kind takes is checked during validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    /// Unique channel name, used in policies' `alerts = [...]`.
    pub(super) name: Spanned<String>,
    /// `"alertmanager"`, `"slack"` or `"webhook"`.
    pub(super) kind: Spanned<RawAlertKind>,
    /// alertmanager: base URL (string). webhook: the URL as a secret (`{ env = "..." }`).
    #[serde(default)]
    pub(super) url: Option<Spanned<toml::Value>>,
    /// slack: incoming-webhook URL as a secret.
    #[serde(default)]
    pub(super) webhook_url: Option<Spanned<RawSecret>>,
    /// webhook: optional HMAC-SHA256 signing key as a secret.
    #[serde(default)]
    pub(super) hmac_secret: Option<Spanned<RawSecret>>,
}
