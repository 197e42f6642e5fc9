//! The daemon configuration (`greenlight.toml`): raw serde types, defaults, validation, secrets.
//!
//! Every field has a default, so `Config::default()` runs locally against services on
//! 127.0.0.1. Relative paths (`policies_dir`, `state_dir`, secret files) are resolved against the
//! directory of the config file, so the daemon does not depend on its working directory.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::limits::{self, count_in, duration_in};
use super::located::{parse_toml, shown, shown_url, unspanned, Errors};
use super::read::read_text;
use super::secret::{Secret, SecretRef};
use super::validate::consul_key_problem;
use super::values::{duration, HumanDuration, Table};
use super::{load_paths_in, LoadReport, PolicyContext, PolicyError};

/// The validated daemon configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory of per-API policy files (`*.toml`). Default `policies`.
    pub policies_dir: PathBuf,
    /// Address of the progressor's own HTTP server. Default `127.0.0.1:8457`.
    pub listen: SocketAddr,
    /// Local state, e.g. the durable alert outbox. Default `/var/lib/greenlight`.
    pub state_dir: PathBuf,
    pub metrics: MetricsConfig,
    pub consul: ConsulConfig,
    pub haproxy: HaproxyConfig,
    /// Alert channels, by unique name, in file order.
    pub alerts: Vec<AlertChannel>,
    /// Maximum number of APIs evaluated concurrently. Default 32.
    pub max_concurrency: usize,
    pub sync: SyncConfig,
    /// Every secret written in the file, with where it was written: [`Config::check_secrets`].
    secrets: Vec<SecretRef>,
}

/// `greenlight sync`: mirrors the Consul weight keys into HAProxy.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Address of sync's own `/metrics`. Default `127.0.0.1:8458`.
    pub listen: SocketAddr,
    /// How often every node's weights are compared with Consul and repaired. Default 10 s.
    pub repair_interval: Duration,
}

/// Where metrics come from.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Base URL without a trailing `/`, e.g. `http://127.0.0.1:8428`.
    pub url: String,
    pub kind: MetricsBackend,
    /// Per-request timeout. Default 10 s.
    pub timeout: Duration,
    /// How far in the past windows must end so the backend returns complete data
    /// (VictoriaMetrics hides the newest 30 s by default). Default 30 s for VictoriaMetrics,
    /// 0 for Prometheus.
    pub latency_offset: Duration,
    /// A series whose newest sample is older than this (at evaluation time) counts as stale.
    /// Default 2 min.
    pub max_staleness: Duration,
    /// Credentials sent with every query. Default: none.
    pub auth: Option<MetricsAuth>,
}

/// The PromQL backend flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsBackend {
    #[serde(rename = "victoriametrics")]
    VictoriaMetrics,
    Prometheus,
}

/// HTTP credentials for the metrics backend.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic ...`.
    Basic { username: String, password: Secret },
}

/// Consul: traffic weights, rollout state, sessions and locks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulConfig {
    /// Base URL without a trailing `/`. Default `http://127.0.0.1:8500`.
    pub url: String,
    /// ACL token. Default: environment variable `CONSUL_HTTP_TOKEN`; an unset variable means no
    /// token (see [`Secret::resolve_optional`]).
    pub token: Secret,
    /// Key prefix for greenlight's own keys (state, locks), without leading or trailing `/`.
    /// Default `greenlight`.
    pub prefix: String,
    /// Session TTL (Consul accepts 10 s to 24 h). Default 15 s.
    pub session_ttl: Duration,
    /// Session lock-delay (Consul caps it at 60 s). Default 15 s.
    pub lock_delay: Duration,
}

/// HAProxy Runtime API endpoints: used by the `haproxy` traffic target and by `greenlight sync`.
#[derive(Debug, Clone, PartialEq)]
pub struct HaproxyConfig {
    /// Every node receives every weight change. Default `["tcp://127.0.0.1:9999"]`.
    pub nodes: Vec<HaproxyNode>,
}

/// One HAProxy Runtime API socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaproxyNode {
    /// `tcp://host:port`; holds `host:port`.
    Tcp(String),
    /// `unix:///path/to/admin.sock`.
    Unix(PathBuf),
}

impl fmt::Display for HaproxyNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaproxyNode::Tcp(addr) => write!(f, "tcp://{addr}"),
            HaproxyNode::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// A named alert destination that policies refer to in `alerts = [...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChannel {
    pub name: String,
    pub kind: AlertChannelKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlertChannelKind {
    /// Alertmanager v2 API; `url` is the base URL without a trailing `/` (`http://host:9093`).
    Alertmanager { url: String },
    /// Slack incoming webhook; the URL itself is the credential.
    Slack { webhook_url: Secret },
    /// Generic JSON webhook; the URL may embed a token, and the body may be signed with HMAC.
    Webhook {
        url: Secret,
        hmac_secret: Option<Secret>,
    },
}

impl Default for Config {
    /// The built-in defaults: every service on 127.0.0.1, no alert channels.
    fn default() -> Self {
        match Config::from_toml("", Path::new("<defaults>")) {
            Ok(config) => config,
            // Unreachable: the empty file is covered by a unit test.
            Err(errors) => panic!("built-in config defaults are invalid: {errors:?}"),
        }
    }
}

impl Config {
    /// Parses and validates a config file's text; `file` names it in messages and anchors
    /// relative paths.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, Vec<PolicyError>> {
        let mut errors = Errors::new(text, file);
        let Some(raw) = parse_toml::<RawConfig>(text, &mut errors) else {
            return Err(errors.into_sorted());
        };
        let base = file.parent().unwrap_or(Path::new(""));
        match raw.validate(base, &mut errors) {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(errors.into_sorted()),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Vec<PolicyError>> {
        let text = read_text(path).map_err(|e| vec![e])?;
        Config::from_toml(&text, path)
    }

    /// Reads every secret the file names (not the default Consul token, which may be unset)
    /// and reports each one that is missing, unreadable or empty, at the `line:col` where it is
    /// written. Run at start by `greenlight run`, `greenlight sync` and `greenlight check`: a
    /// named secret that is missing is a configuration error, not a silent "no credentials".
    pub fn check_secrets(&self) -> Vec<PolicyError> {
        let mut errors: Vec<PolicyError> =
            self.secrets.iter().filter_map(SecretRef::check).collect();
        errors.sort_by_key(|e| (e.line, e.col));
        errors
    }

    /// Loads the policies directory, checking each policy against this config: alert channels
    /// declared, weight keys outside `consul.prefix`. What the daemon loads at start and reload.
    pub fn load_policies(&self) -> LoadReport {
        self.load_policy_paths(std::slice::from_ref(&self.policies_dir))
    }

    /// [`Config::load_policies`] for the given files and directories (`greenlight check`).
    pub fn load_policy_paths(&self, paths: &[PathBuf]) -> LoadReport {
        let channels = self.channel_names();
        load_paths_in(
            paths,
            PolicyContext {
                channels: Some(&channels),
                consul_prefix: Some(&self.consul.prefix),
            },
        )
    }

    /// Names of the declared alert channels, in file order.
    pub fn channel_names(&self) -> Vec<String> {
        self.alerts.iter().map(|a| a.name.clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw types.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Directory of policy files, relative to this file. Default `"policies"`.
    #[serde(default = "default_policies_dir")]
    policies_dir: Spanned<String>,
    /// HTTP listen address. Default `"127.0.0.1:8457"`.
    #[serde(default = "default_listen")]
    listen: Spanned<String>,
    /// Local state directory (alert outbox), relative to this file. Default
    /// `"/var/lib/greenlight"`.
    #[serde(default = "default_state_dir")]
    state_dir: Spanned<String>,
    /// `[metrics]`: the PromQL backend.
    #[serde(default = "default_metrics")]
    metrics: Table<RawMetrics>,
    /// `[consul]`: KV, sessions and locks.
    #[serde(default = "default_consul")]
    consul: Table<RawConsul>,
    /// `[haproxy]`: Runtime API nodes.
    #[serde(default = "default_haproxy")]
    haproxy: Table<RawHaproxy>,
    /// `[[alert]]`: named alert channels.
    #[serde(default, rename = "alert")]
    alerts: Vec<Spanned<Table<RawAlert>>>,
    /// Maximum APIs evaluated at once. Default 32.
    #[serde(default = "default_max_concurrency")]
    max_concurrency: Spanned<i64>,
    /// `[sync]`: `greenlight sync`.
    #[serde(default = "default_sync")]
    sync: Table<RawSync>,
}

fn default_policies_dir() -> Spanned<String> {
    unspanned("policies".into())
}
fn default_listen() -> Spanned<String> {
    unspanned("127.0.0.1:8457".into())
}
fn default_state_dir() -> Spanned<String> {
    unspanned("/var/lib/greenlight".into())
}
fn default_max_concurrency() -> Spanned<i64> {
    unspanned(32)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// Base URL. Default `"http://127.0.0.1:8428"`.
    #[serde(default = "default_metrics_url")]
    url: Spanned<String>,
    /// `"victoriametrics"` or `"prometheus"`. Default `"victoriametrics"`.
    #[serde(default = "default_metrics_kind")]
    kind: MetricsBackend,
    /// Query timeout. Default `"10s"`.
    #[serde(default = "default_metrics_timeout")]
    timeout: Spanned<HumanDuration>,
    /// Default `"30s"` for VictoriaMetrics, `"0s"` for Prometheus.
    #[serde(default)]
    latency_offset: Option<Spanned<HumanDuration>>,
    /// Newest-sample age beyond which data is stale. Default `"2m"`.
    #[serde(default = "default_max_staleness")]
    max_staleness: Spanned<HumanDuration>,
    /// `[metrics.auth]`: `bearer_token = <secret>`, or `username` + `password = <secret>`.
    #[serde(default)]
    auth: Option<Spanned<Table<RawAuth>>>,
}

fn default_metrics() -> Table<RawMetrics> {
    Table(RawMetrics {
        url: default_metrics_url(),
        kind: default_metrics_kind(),
        timeout: default_metrics_timeout(),
        latency_offset: None,
        max_staleness: default_max_staleness(),
        auth: None,
    })
}
fn default_metrics_url() -> Spanned<String> {
    unspanned("http://127.0.0.1:8428".into())
}
fn default_metrics_kind() -> MetricsBackend {
    MetricsBackend::VictoriaMetrics
}
fn default_metrics_timeout() -> Spanned<HumanDuration> {
    duration(10)
}
fn default_max_staleness() -> Spanned<HumanDuration> {
    duration(120)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    /// Bearer token secret.
    #[serde(default)]
    bearer_token: Option<Spanned<RawSecret>>,
    /// Basic-auth user name (not secret).
    #[serde(default)]
    username: Option<Spanned<String>>,
    /// Basic-auth password secret.
    #[serde(default)]
    password: Option<Spanned<RawSecret>>,
}

/// A secret reference: exactly one of `{ file = "/path" }` or `{ env = "VAR" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretTable {
    /// File holding the secret (relative to the config file).
    #[serde(default)]
    file: Option<String>,
    /// Environment variable holding the secret.
    #[serde(default)]
    env: Option<String>,
}

/// [`RawSecretTable`], refusing any other form without echoing it: a secret pasted in place of
/// the reference must not end up in an error message.
#[derive(Debug, Clone)]
struct RawSecret {
    file: Option<String>,
    env: Option<String>,
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
struct RawConsul {
    /// Base URL. Default `"http://127.0.0.1:8500"`.
    #[serde(default = "default_consul_url")]
    url: Spanned<String>,
    /// ACL token secret. Default `{ env = "CONSUL_HTTP_TOKEN" }`.
    #[serde(default = "default_consul_token")]
    token: Spanned<RawSecret>,
    /// Prefix of greenlight's own keys. Default `"greenlight"`.
    #[serde(default = "default_consul_prefix")]
    prefix: Spanned<String>,
    /// Session TTL. Default `"15s"`.
    #[serde(default = "default_session_ttl")]
    session_ttl: Spanned<HumanDuration>,
    /// Session lock-delay. Default `"15s"`.
    #[serde(default = "default_lock_delay")]
    lock_delay: Spanned<HumanDuration>,
}

fn default_consul() -> Table<RawConsul> {
    Table(RawConsul {
        url: default_consul_url(),
        token: default_consul_token(),
        prefix: default_consul_prefix(),
        session_ttl: default_session_ttl(),
        lock_delay: default_lock_delay(),
    })
}
fn default_consul_url() -> Spanned<String> {
    unspanned("http://127.0.0.1:8500".into())
}
fn default_consul_token() -> Spanned<RawSecret> {
    unspanned(RawSecret {
        file: None,
        env: Some("CONSUL_HTTP_TOKEN".into()),
    })
}
fn default_consul_prefix() -> Spanned<String> {
    unspanned("greenlight".into())
}
fn default_session_ttl() -> Spanned<HumanDuration> {
    duration(15)
}
fn default_lock_delay() -> Spanned<HumanDuration> {
    duration(15)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHaproxy {
    /// `"tcp://host:port"` or `"unix:///path"`. Default `["tcp://127.0.0.1:9999"]`.
    #[serde(default = "default_haproxy_nodes")]
    nodes: Vec<Spanned<String>>,
}

fn default_haproxy() -> Table<RawHaproxy> {
    Table(RawHaproxy {
        nodes: default_haproxy_nodes(),
    })
}
fn default_haproxy_nodes() -> Vec<Spanned<String>> {
    vec![unspanned("tcp://127.0.0.1:9999".into())]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    /// Listen address of sync's `/metrics`. Default `"127.0.0.1:8458"`.
    #[serde(default = "default_sync_listen")]
    listen: Spanned<String>,
    /// Drift check period. Default `"10s"`.
    #[serde(default = "default_repair_interval")]
    repair_interval: Spanned<HumanDuration>,
}

fn default_sync() -> Table<RawSync> {
    Table(RawSync {
        listen: default_sync_listen(),
        repair_interval: default_repair_interval(),
    })
}
fn default_sync_listen() -> Spanned<String> {
    unspanned("127.0.0.1:8458".into())
}
fn default_repair_interval() -> Spanned<HumanDuration> {
    duration(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawAlertKind {
    Alertmanager,
    Slack,
    Webhook,
}

/// One `[[alert]]` channel. Flat: which fields a kind takes is checked during validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    /// Unique channel name, used in policies' `alerts = [...]`.
    name: Spanned<String>,
    /// `"alertmanager"`, `"slack"` or `"webhook"`.
    kind: Spanned<RawAlertKind>,
    /// alertmanager: base URL (string). webhook: the URL as a secret (`{ env = "..." }`).
    #[serde(default)]
    url: Option<Spanned<toml::Value>>,
    /// slack: incoming-webhook URL as a secret.
    #[serde(default)]
    webhook_url: Option<Spanned<RawSecret>>,
    /// webhook: optional HMAC-SHA256 signing key as a secret.
    #[serde(default)]
    hmac_secret: Option<Spanned<RawSecret>>,
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

fn resolve_path(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate_secret(
    raw: &Spanned<RawSecret>,
    field: &str,
    base: &Path,
    errors: &mut Errors<'_>,
) -> Option<Secret> {
    let s = raw.get_ref();
    match (&s.file, &s.env) {
        (Some(file), None) if !file.is_empty() => Some(Secret::File(resolve_path(base, file))),
        (None, Some(var)) if !var.is_empty() && !var.contains(['=', '\0']) => {
            Some(Secret::Env(var.clone()))
        }
        (Some(_), None) | (None, Some(_)) => {
            errors.at(
                raw.span(),
                format!("{field}: the file name or environment variable name is not valid"),
            );
            None
        }
        _ => {
            errors.at(
                raw.span(),
                format!(
                    "{field} must be exactly one of {{ file = \"/path\" }} or {{ env = \"VAR\" }}"
                ),
            );
            None
        }
    }
}

/// Checks an http(s) base URL; returns it without a trailing `/`. Credentials in it are refused
/// (they would travel into logs, alerts and links); `credentials` says where they go instead.
fn validate_url(
    raw: &Spanned<String>,
    field: &str,
    credentials: &str,
    errors: &mut Errors<'_>,
) -> String {
    let text = raw.get_ref().trim_end_matches('/').to_string();
    match reqwest::Url::parse(&text) {
        Ok(url) if !url.username().is_empty() || url.password().is_some() => errors.at(
            raw.span(),
            format!(
                "{field} must not contain a user name or password (user:password@); {credentials}"
            ),
        ),
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        Ok(_) => errors.at(
            raw.span(),
            format!(
                "{field} must be an http:// or https:// URL, got {}",
                shown_url(raw.get_ref())
            ),
        ),
        Err(e) => errors.at(
            raw.span(),
            format!(
                "{field} {} is not a valid URL: {e}",
                shown_url(raw.get_ref())
            ),
        ),
    }
    text
}

fn parse_node(s: &str) -> Result<HaproxyNode, String> {
    if let Some(addr) = s.strip_prefix("tcp://") {
        if addr.contains('@') {
            return Err(
                "HAProxy node must be tcp://host:port, without a user name or password".into(),
            );
        }
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if ok {
            return Ok(HaproxyNode::Tcp(addr.to_string()));
        }
        return Err(format!(
            "HAProxy node {} must be tcp://host:port",
            shown_url(s)
        ));
    }
    if let Some(path) = s.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(HaproxyNode::Unix(PathBuf::from(path)));
        }
        return Err(format!(
            "HAProxy node {} must be unix:///absolute/path/to/admin.sock",
            shown(s)
        ));
    }
    Err(format!(
        "HAProxy node {} must be tcp://host:port or unix:///path/to/admin.sock",
        shown_url(s)
    ))
}

fn validate_listen(
    raw: &Spanned<String>,
    field: &str,
    example: &str,
    errors: &mut Errors<'_>,
) -> Option<SocketAddr> {
    match raw.get_ref().parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.at(
                raw.span(),
                format!(
                    "{field} must be an address such as \"{example}\", got {}",
                    shown(raw.get_ref())
                ),
            );
            None
        }
    }
}

impl RawConfig {
    fn validate(self, base: &Path, errors: &mut Errors<'_>) -> Option<Config> {
        // Where each secret was written, taken before the sections are consumed.
        let auth_spans = self.metrics.auth.as_ref().map(|a| {
            let bearer = a.get_ref().bearer_token.as_ref().map(|s| s.span());
            let password = a.get_ref().password.as_ref().map(|s| s.span());
            bearer.or(password).unwrap_or_else(|| a.span())
        });
        let token_span = self.consul.token.span();
        let mut secrets = Vec::new();
        let file = errors.file().to_path_buf();
        let listen = validate_listen(&self.listen, "listen", "127.0.0.1:8457", errors);
        let sync_listen =
            validate_listen(&self.sync.listen, "sync.listen", "127.0.0.1:8458", errors);
        let repair_interval = duration_in(
            &self.sync.repair_interval,
            "sync.repair_interval",
            limits::REPAIR_INTERVAL,
            errors,
        );
        for (field, dir) in [
            ("policies_dir", &self.policies_dir),
            ("state_dir", &self.state_dir),
        ] {
            if dir.get_ref().is_empty() {
                errors.at(dir.span(), format!("{field} must not be empty"));
            }
        }
        let max_concurrency = count_in(
            &self.max_concurrency,
            "max_concurrency",
            limits::MAX_CONCURRENCY,
            errors,
        );

        let metrics = self.metrics.0.validate(base, errors);
        let consul = self.consul.0.validate(base, errors);
        let mut nodes = Vec::new();
        for node in &self.haproxy.nodes {
            match parse_node(node.get_ref()) {
                Ok(n) => nodes.push(n),
                Err(message) => errors.at(node.span(), message),
            }
        }

        let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
        let mut alerts = Vec::new();
        for alert in &self.alerts {
            let a = alert.get_ref();
            let name = a.name.get_ref();
            if name.is_empty() {
                errors.at(a.name.span(), "alert channel name must not be empty");
            } else if let Some((line, col)) = seen.get(name) {
                errors.at(
                    a.name.span(),
                    format!(
                        "duplicate alert channel {} (first defined at {line}:{col})",
                        shown(name)
                    ),
                );
            } else {
                seen.insert(name.clone(), errors.location(a.name.span()));
            }
            if let Some(kind) = validate_alert(a, base, errors) {
                let located = |span: Option<Range<usize>>| span.unwrap_or_else(|| alert.span());
                match &kind {
                    AlertChannelKind::Alertmanager { .. } => {}
                    AlertChannelKind::Slack { webhook_url } => secrets.push(SecretRef::new(
                        format!("alert {} webhook_url", shown(name)),
                        webhook_url,
                        &file,
                        errors.location(located(a.webhook_url.as_ref().map(|s| s.span()))),
                    )),
                    AlertChannelKind::Webhook { url, hmac_secret } => {
                        secrets.push(SecretRef::new(
                            format!("alert {} url", shown(name)),
                            url,
                            &file,
                            errors.location(located(a.url.as_ref().map(|s| s.span()))),
                        ));
                        if let Some(hmac) = hmac_secret {
                            secrets.push(SecretRef::new(
                                format!("alert {} hmac_secret", shown(name)),
                                hmac,
                                &file,
                                errors.location(located(a.hmac_secret.as_ref().map(|s| s.span()))),
                            ));
                        }
                    }
                }
                alerts.push(AlertChannel {
                    name: name.clone(),
                    kind,
                });
            }
        }

        let auth = metrics.as_ref().and_then(|m| m.auth.clone());
        if let (Some(auth), Some(span)) = (auth, auth_spans) {
            let (field, secret) = match &auth {
                MetricsAuth::Bearer(s) => ("metrics.auth.bearer_token", s),
                MetricsAuth::Basic { password, .. } => ("metrics.auth.password", password),
            };
            secrets.push(SecretRef::new(
                field.into(),
                secret,
                &file,
                errors.location(span),
            ));
        }
        // The default token ({ env = "CONSUL_HTTP_TOKEN" }, not written) may be unset: no token.
        if let (Some(c), false) = (&consul, token_span.is_empty()) {
            secrets.push(SecretRef::new(
                "consul.token".into(),
                &c.token,
                &file,
                errors.location(token_span),
            ));
        }

        Some(Config {
            policies_dir: resolve_path(base, self.policies_dir.get_ref()),
            listen: listen?,
            state_dir: resolve_path(base, self.state_dir.get_ref()),
            metrics: metrics?,
            consul: consul?,
            haproxy: HaproxyConfig { nodes },
            alerts,
            max_concurrency: usize::try_from(max_concurrency?).ok()?,
            sync: SyncConfig {
                listen: sync_listen?,
                repair_interval,
            },
            secrets,
        })
    }
}

impl RawMetrics {
    fn validate(self, base: &Path, errors: &mut Errors<'_>) -> Option<MetricsConfig> {
        let url = validate_url(
            &self.url,
            "metrics.url",
            "put them in [metrics.auth]: bearer_token = { file = \"...\" }, or username = \"...\" \
             with password = { env = \"...\" }",
            errors,
        );
        let timeout = duration_in(
            &self.timeout,
            "metrics.timeout",
            limits::METRICS_TIMEOUT,
            errors,
        );
        let max_staleness = duration_in(
            &self.max_staleness,
            "metrics.max_staleness",
            limits::MAX_STALENESS,
            errors,
        );
        let latency_offset = match (&self.latency_offset, self.kind) {
            (Some(d), _) => {
                duration_in(d, "metrics.latency_offset", limits::LATENCY_OFFSET, errors)
            }
            (None, MetricsBackend::VictoriaMetrics) => Duration::from_secs(30),
            (None, MetricsBackend::Prometheus) => Duration::ZERO,
        };
        let auth = match &self.auth {
            None => Some(None),
            Some(raw) => {
                let a = raw.get_ref();
                match (&a.bearer_token, &a.username, &a.password) {
                    (Some(token), None, None) => {
                        validate_secret(token, "metrics.auth.bearer_token", base, errors)
                            .map(|s| Some(MetricsAuth::Bearer(s)))
                    }
                    (None, Some(user), Some(password)) => {
                        validate_secret(password, "metrics.auth.password", base, errors).map(|s| {
                            Some(MetricsAuth::Basic {
                                username: user.get_ref().clone(),
                                password: s,
                            })
                        })
                    }
                    _ => {
                        errors.at(
                            raw.span(),
                            "metrics.auth takes either bearer_token = { env = \"...\" } or \
                             username = \"...\" with password = { file = \"...\" }",
                        );
                        None
                    }
                }
            }
        };
        Some(MetricsConfig {
            url,
            kind: self.kind,
            timeout,
            latency_offset,
            max_staleness,
            auth: auth?,
        })
    }
}

impl RawConsul {
    fn validate(self, base: &Path, errors: &mut Errors<'_>) -> Option<ConsulConfig> {
        let url = validate_url(
            &self.url,
            "consul.url",
            "give the ACL token as consul.token = { file = \"...\" } or { env = \"...\" }",
            errors,
        );
        let token = validate_secret(&self.token, "consul.token", base, errors);
        let prefix = self.prefix.get_ref();
        if let Some(problem) = consul_key_problem(prefix) {
            errors.at(self.prefix.span(), format!("consul.prefix {problem}"));
        } else if prefix.ends_with('/') {
            errors.at(self.prefix.span(), "consul.prefix must not end with '/'");
        }
        let ttl = duration_in(
            &self.session_ttl,
            "consul.session_ttl",
            limits::SESSION_TTL,
            errors,
        );
        let lock_delay = duration_in(
            &self.lock_delay,
            "consul.lock_delay",
            limits::LOCK_DELAY,
            errors,
        );
        Some(ConsulConfig {
            url,
            token: token?,
            prefix: prefix.clone(),
            session_ttl: ttl,
            lock_delay,
        })
    }
}

fn validate_alert(a: &RawAlert, base: &Path, errors: &mut Errors<'_>) -> Option<AlertChannelKind> {
    let kind = *a.kind.get_ref();
    let kind_name = match kind {
        RawAlertKind::Alertmanager => "alertmanager",
        RawAlertKind::Slack => "slack",
        RawAlertKind::Webhook => "webhook",
    };
    let mut ok = true;
    let allowed = [
        (
            "url",
            a.url.as_ref().map(|v| v.span()),
            kind != RawAlertKind::Slack,
        ),
        (
            "webhook_url",
            a.webhook_url.as_ref().map(|v| v.span()),
            kind == RawAlertKind::Slack,
        ),
        (
            "hmac_secret",
            a.hmac_secret.as_ref().map(|v| v.span()),
            kind == RawAlertKind::Webhook,
        ),
    ];
    for (field, span, allowed) in allowed {
        if let (Some(span), false) = (span, allowed) {
            errors.at(
                span,
                format!("`{field}` does not apply to kind = \"{kind_name}\""),
            );
            ok = false;
        }
    }
    let missing = |field: &str, errors: &mut Errors<'_>| {
        errors.at(
            a.kind.span(),
            format!("kind = \"{kind_name}\" needs `{field}`"),
        );
    };
    let kind = match kind {
        RawAlertKind::Alertmanager => match &a.url {
            None => {
                missing("url", errors);
                None
            }
            Some(url) => match url.get_ref() {
                toml::Value::String(s) => {
                    let text = validate_url(
                        &Spanned::new(url.span(), s.clone()),
                        "url",
                        "an alertmanager channel sends none; use a webhook channel, whose url is \
                         a secret, for a receiver that needs them",
                        errors,
                    );
                    Some(AlertChannelKind::Alertmanager { url: text })
                }
                _ => {
                    errors.at(url.span(), "alertmanager url must be a string");
                    None
                }
            },
        },
        RawAlertKind::Slack => match &a.webhook_url {
            None => {
                missing("webhook_url", errors);
                None
            }
            Some(secret) => validate_secret(secret, "webhook_url", base, errors)
                .map(|webhook_url| AlertChannelKind::Slack { webhook_url }),
        },
        RawAlertKind::Webhook => {
            let url = match &a.url {
                None => {
                    missing("url", errors);
                    None
                }
                Some(url) => match url.get_ref().clone().try_into::<RawSecret>() {
                    Ok(secret) => {
                        validate_secret(&Spanned::new(url.span(), secret), "url", base, errors)
                    }
                    Err(_) => {
                        errors.at(
                            url.span(),
                            "webhook url is a secret: write url = { env = \"VAR\" } or \
                             url = { file = \"/path\" }",
                        );
                        None
                    }
                },
            };
            let hmac_secret = match &a.hmac_secret {
                None => Some(None),
                Some(s) => validate_secret(s, "hmac_secret", base, errors).map(Some),
            };
            match (url, hmac_secret) {
                (Some(url), Some(hmac_secret)) => {
                    Some(AlertChannelKind::Webhook { url, hmac_secret })
                }
                _ => None,
            }
        }
    };
    kind.filter(|_| ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        match Config::from_toml(text, Path::new("conf/g.toml")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::default();
        assert_eq!(c.policies_dir, PathBuf::from("policies"));
        assert_eq!(c.listen, "127.0.0.1:8457".parse::<SocketAddr>().unwrap());
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/greenlight"));
        assert_eq!(c.metrics.url, "http://127.0.0.1:8428");
        assert_eq!(c.metrics.kind, MetricsBackend::VictoriaMetrics);
        assert_eq!(c.metrics.timeout, Duration::from_secs(10));
        assert_eq!(c.metrics.latency_offset, Duration::from_secs(30));
        assert_eq!(c.metrics.auth, None);
        assert_eq!(c.consul.url, "http://127.0.0.1:8500");
        assert_eq!(c.consul.token, Secret::Env("CONSUL_HTTP_TOKEN".into()));
        assert_eq!(c.consul.prefix, "greenlight");
        assert_eq!(c.consul.session_ttl, Duration::from_secs(15));
        assert_eq!(c.consul.lock_delay, Duration::from_secs(15));
        assert_eq!(
            c.haproxy.nodes,
            vec![HaproxyNode::Tcp("127.0.0.1:9999".into())]
        );
        assert!(c.alerts.is_empty());
        assert_eq!(c.max_concurrency, 32);
        assert_eq!(
            c.sync.listen,
            "127.0.0.1:8458".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.sync.repair_interval, Duration::from_secs(10));
    }

    #[test]
    fn sync_section_sets_listen_and_repair_interval() {
        let c = Config::from_toml(
            "[sync]\nlisten = \"127.0.0.1:9458\"\nrepair_interval = \"3s\"\n",
            Path::new("g.toml"),
        )
        .unwrap();
        assert_eq!(
            c.sync.listen,
            "127.0.0.1:9458".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.sync.repair_interval, Duration::from_secs(3));
        let e = errors_of("[sync]\nlisten = \"nowhere\"\nrepair_interval = \"0s\"\n");
        assert_eq!(
            e,
            vec![
                "conf/g.toml:2:10: sync.listen must be an address such as \"127.0.0.1:8458\", got \"nowhere\"",
                "conf/g.toml:3:19: sync.repair_interval must be between 100ms and 1h, got 0s",
            ]
        );
    }

    #[test]
    fn full_config_parses_and_resolves_relative_paths() {
        let text = r#"
policies_dir = "../policies"
state_dir = "state"
listen = "0.0.0.0:9000"
max_concurrency = 4

[metrics]
url = "http://vm:8428/"
kind = "prometheus"
auth = { username = "gl", password = { file = "secrets/vm" } }

[consul]
token = { file = "/etc/greenlight/consul-token" }
prefix = "ops/greenlight"

[haproxy]
nodes = ["tcp://127.0.0.1:9999", "unix:///run/haproxy/admin.sock"]

[[alert]]
name = "oncall"
kind = "alertmanager"
url = "http://127.0.0.1:9093"

[[alert]]
name = "chat"
kind = "slack"
webhook_url = { env = "SLACK_WEBHOOK" }

[[alert]]
name = "hook"
kind = "webhook"
url = { env = "HOOK_URL" }
hmac_secret = { file = "hmac" }
"#;
        let c = Config::from_toml(text, Path::new("conf/g.toml")).unwrap();
        assert_eq!(c.policies_dir, PathBuf::from("conf/../policies"));
        assert_eq!(c.state_dir, PathBuf::from("conf/state"));
        assert_eq!(c.metrics.url, "http://vm:8428");
        assert_eq!(c.metrics.latency_offset, Duration::ZERO);
        assert_eq!(
            c.metrics.auth,
            Some(MetricsAuth::Basic {
                username: "gl".into(),
                password: Secret::File("conf/secrets/vm".into())
            })
        );
        assert_eq!(
            c.consul.token,
            Secret::File("/etc/greenlight/consul-token".into())
        );
        assert_eq!(
            c.haproxy.nodes[1],
            HaproxyNode::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(c.channel_names(), vec!["oncall", "chat", "hook"]);
        assert_eq!(
            c.alerts[2].kind,
            AlertChannelKind::Webhook {
                url: Secret::Env("HOOK_URL".into()),
                hmac_secret: Some(Secret::File("conf/hmac".into()))
            }
        );
    }

    #[test]
    fn values_that_break_the_daemon_are_rejected_by_validation() {
        // max_concurrency = i64::MAX panicked in tokio's semaphore.
        for (text, expected) in [
            ("max_concurrency = 9223372036854775807", "conf/g.toml:1:19: max_concurrency must be a whole number from 1 to 1024, got 9223372036854775807"),
            ("[metrics]\ntimeout = \"20000y\"", "conf/g.toml:2:11: metrics.timeout must be between 100ms and 5m, got 20000years"),
            ("[metrics]\nlatency_offset = \"2h\"", "conf/g.toml:2:18: metrics.latency_offset must be between 0s and 1h, got 2h"),
            ("[metrics]\nmax_staleness = \"1ns\"", "conf/g.toml:2:17: metrics.max_staleness must be between 1s and 1day, got 1ns"),
            ("[sync]\nrepair_interval = \"20000y\"", "conf/g.toml:2:19: sync.repair_interval must be between 100ms and 1h, got 20000years"),
            ("[consul]\nlock_delay = \"61s\"", "conf/g.toml:2:14: consul.lock_delay must be between 0s and 1m, got 1m 1s"),
        ] {
            assert_eq!(errors_of(text), vec![expected.to_string()], "{text}");
        }
    }

    #[test]
    fn credentials_in_urls_are_rejected_without_being_echoed() {
        // The password of a metrics URL ended up in every rollback alert's vmui link.
        let e = errors_of("[metrics]\nurl = \"http://greenlight:hunter2@vm:8428\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("conf/g.toml:2:7: metrics.url must not contain a user name or password (user:password@); put them in [metrics.auth]"),
            "{e:?}"
        );
        for text in [
            "[consul]\nurl = \"https://x:hunter2@consul:8500\"\n",
            "[[alert]]\nname = \"a\"\nkind = \"alertmanager\"\nurl = \"http://u:hunter2@am:9093\"\n",
            "[haproxy]\nnodes = [\"tcp://admin:hunter2@lb:9999\"]\n",
            "[metrics]\nurl = \"ftp://u:hunter2@vm:8428\"\n",
            "[metrics]\nurl = \"http://u:hunter2@vm:port\"\n",
        ] {
            let e = errors_of(text);
            assert_eq!(e.len(), 1, "{text}: {e:?}");
            assert!(!e[0].contains("hunter2"), "the password leaked: {e:?}");
        }
    }

    #[test]
    fn named_secret_that_is_missing_is_a_configuration_error() {
        // An unset token variable used to mean "run without a token" (then: permission denied).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hmac"), "k3y\n").unwrap();
        let text = r#"[consul]
token = { env = "GREENLIGHT_TEST_UNSET_CONSUL_TOKEN" }

[metrics]
auth = { bearer_token = { file = "missing-token" } }

[[alert]]
name = "hook"
kind = "webhook"
url = { env = "GREENLIGHT_TEST_UNSET_HOOK_URL" }
hmac_secret = { file = "hmac" }
"#;
        let c = Config::from_toml(text, &dir.path().join("g.toml")).unwrap();
        let e: Vec<String> = c.check_secrets().iter().map(|e| e.to_string()).collect();
        let file = dir.path().join("g.toml").display().to_string();
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            e[1],
            format!("{file}:5:25: metrics.auth.bearer_token: cannot read secret file {}: No such file or directory (os error 2)", dir.path().join("missing-token").display())
        );
        assert_eq!(
            e[0],
            format!("{file}:2:9: consul.token: environment variable GREENLIGHT_TEST_UNSET_CONSUL_TOKEN is not set")
        );
        assert_eq!(
            e[2],
            format!("{file}:10:7: alert \"hook\" url: environment variable GREENLIGHT_TEST_UNSET_HOOK_URL is not set")
        );
        // Not written, the default token may be unset: no token.
        assert!(Config::default().check_secrets().is_empty());
    }

    #[test]
    fn every_error_is_located() {
        let text = r#"listen = "localhost"
max_concurrency = 0

[consul]
session_ttl = "5s"
token = { file = "a", env = "B" }

[haproxy]
nodes = ["http://x"]

[[alert]]
name = "a"
kind = "slack"

[[alert]]
name = "a"
kind = "alertmanager"
url = "ftp://x"
"#;
        let e = errors_of(text);
        assert_eq!(
            e,
            vec![
                "conf/g.toml:1:10: listen must be an address such as \"127.0.0.1:8457\", got \"localhost\"",
                "conf/g.toml:2:19: max_concurrency must be a whole number from 1 to 1024, got 0",
                "conf/g.toml:5:15: consul.session_ttl must be between 10s and 1day, got 5s",
                "conf/g.toml:6:9: consul.token must be exactly one of { file = \"/path\" } or { env = \"VAR\" }",
                "conf/g.toml:9:10: HAProxy node \"http://x\" must be tcp://host:port or unix:///path/to/admin.sock",
                "conf/g.toml:13:8: kind = \"slack\" needs `webhook_url`",
                "conf/g.toml:16:8: duplicate alert channel \"a\" (first defined at 12:8)",
                "conf/g.toml:18:7: url must be an http:// or https:// URL, got \"ftp://x\"",
            ]
        );
    }

    #[test]
    fn unknown_keys_and_secrets_in_plain_text_are_rejected() {
        let e = errors_of("[consul]\ntoken = \"s3cr3t\"\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("conf/g.toml:2:9: "), "{e:?}");
        assert!(
            !e[0].contains("s3cr3t"),
            "a secret leaked into a message: {e:?}"
        );
        let e = errors_of("[metrics]\nurll = \"http://x\"\n");
        assert!(
            e[0].starts_with("conf/g.toml:2:1: unknown field `urll`"),
            "{e:?}"
        );
        let e = errors_of("[[alert]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\n");
        assert!(
            e[0].starts_with("conf/g.toml:4:7: webhook url is a secret"),
            "{e:?}"
        );
    }

    #[test]
    fn metrics_auth_debug_does_not_show_the_secret_reference() {
        let auth = MetricsAuth::Bearer(Secret::File("/etc/greenlight/vm-token".into()));
        assert!(!format!("{auth:?}").contains("token"));
    }

    #[test]
    fn load_reports_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::load(&dir.path().join("missing.toml")).unwrap_err();
        assert_eq!((err[0].line, err[0].col), (0, 0));
    }
}
