//! The daemon configuration (`greenlight.toml`): validated types, loading, and validation of the
//! raw file (`config_raw`) section by section (single values in `config_fields`).
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

use super::config_console::ConsoleConfig;
use super::config_fields::{
    parse_node, resolve_path, validate_alert, validate_listen, validate_secret, validate_url,
};
use super::config_raw::{RawConfig, RawConsul, RawMetrics};
use super::limits::{self, count_in, duration_in};
use super::located::{parse_toml, shown, Errors};
use super::read::read_text;
use super::secret::{Secret, SecretRef};
use super::validate::consul_key_problem;
use super::{load_paths_in, LoadReport, PolicyContext, PolicyError};

/// The validated daemon configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory of per-API policy files (`*.toml`). Default `policies`.
    pub policies_dir: PathBuf,
    /// Directory of campaign files (`*.toml`). Default `campaigns`; absent: no campaigns.
    pub campaigns_dir: PathBuf,
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
    /// `[console]`: sign-in, tokens, admin groups.
    pub console: ConsoleConfig,
    /// `[breaker]`: when the cluster breaker trips and what it does then.
    pub breaker: super::BreakerSettings,
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
    /// Most queries (the same template for other APIs and colours) answered by one batched
    /// query; 1 (the default) sends each query alone. Off by default: a query waits behind a
    /// slow batch of its shape, so one hanging query can cost more than one timeout.
    pub batch_max: usize,
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

    /// Loads the campaigns directory, checking alert channels against this config and resolving
    /// each campaign against `policies`.
    pub fn load_campaigns(&self, policies: &[&super::Policy]) -> super::CampaignReport {
        let channels = self.channel_names();
        super::load_campaigns(&self.campaigns_dir, Some(&channels), Some(policies))
    }

    /// Names of the declared alert channels, in file order.
    pub fn channel_names(&self) -> Vec<String> {
        self.alerts.iter().map(|a| a.name.clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

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
            ("campaigns_dir", &self.campaigns_dir),
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

        let console = self.console.0.validate(base, errors);
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() && !console.auth_configured() {
                errors.at(
                    self.listen.span(),
                    format!(
                        "listen {addr} is reachable from other machines, but the console has no \
                         sign-in: listen on 127.0.0.1, or configure [console.proxy] or \
                         [[console.token]]"
                    ),
                );
            }
        }
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

        let channel_names: Vec<String> = alerts.iter().map(|a| a.name.clone()).collect();
        let breaker = self.breaker.0.validate(&channel_names, errors);
        Some(Config {
            policies_dir: resolve_path(base, self.policies_dir.get_ref()),
            campaigns_dir: resolve_path(base, self.campaigns_dir.get_ref()),
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
            console,
            breaker,
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
        let batch_max = count_in(
            &self.batch_max,
            "metrics.batch_max",
            limits::BATCH_MAX,
            errors,
        );
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
            batch_max: usize::try_from(batch_max?).ok()?,
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::fixture::config_errors_of as errors_of;

    #[test]
    fn console_public_url_is_an_http_url_without_credentials() {
        assert_eq!(Config::default().console.public_url, None);
        let c = Config::from_toml(
            "[console]\npublic_url = \"https://greenlight.example.com/\"\n",
            Path::new("conf/g.toml"),
        )
        .unwrap();
        assert_eq!(
            c.console.public_url.as_deref(),
            Some("https://greenlight.example.com")
        );
        let e = errors_of("[console]\npublic_url = \"https://me:pw@greenlight.example.com\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "conf/g.toml:2:14: console.public_url must not contain a user name or password"
            ),
            "{e:?}"
        );
        let e = errors_of("[console]\npublic_url = \"ftp://greenlight\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("conf/g.toml:2:14: console.public_url must be an http"),
            "{e:?}"
        );
        let e = errors_of("[console]\nlisten = 1\n");
        assert_eq!(
            e,
            vec!["conf/g.toml:2:1: unknown field `listen`, expected one of `public_url`, `admin_groups`, `proxy`, `token`, `session_lifetime`"]
        );
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
        assert_eq!(c.metrics.batch_max, 1);
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

[console.proxy]
addresses = ["10.0.0.7"]

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
            ("[metrics]\nbatch_max = 0", "conf/g.toml:2:13: metrics.batch_max must be a whole number from 1 to 4096, got 0"),
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
