//! Where alerts go: channel settings, the payload each channel kind receives, and one delivery.
//!
//! Payloads:
//! - Alertmanager v2: `POST {url}/api/v2/alerts` with one alert whose labels are `alertname`
//!   (`Greenlight<Kind>`), `api`, `severity` and `greenlight_key` (the event key, so that two
//!   rollouts of one API are two alerts), whose annotations are `summary`, `description`, `link`
//!   and every field, and with `startsAt`; a resolution re-posts the same labels with `endsAt`.
//! - Slack incoming webhook: `{"text": …}`, a readable message with every number.
//! - Generic webhook: `{"version": 1, "event": <AlertEvent>}` (the [`AlertEvent`] JSON schema),
//!   signed with `X-Greenlight-Signature: sha256=<hex HMAC-SHA256 of the body>` when a secret is
//!   configured.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::event::AlertEvent;

/// Version of the generic webhook schema (`{"version": 1, "event": …}`).
pub const WEBHOOK_SCHEMA_VERSION: u32 = 1;

/// Header carrying the webhook body's signature.
pub const SIGNATURE_HEADER: &str = "X-Greenlight-Signature";

/// One named alert destination.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelSettings {
    pub name: String,
    pub kind: ChannelKind,
}

/// The kind of destination and where it is. Webhook URLs and secrets are credentials: their
/// `Debug` output is `<redacted>` and they are never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// Alertmanager base URL (e.g. `http://alertmanager:9093`).
    AlertmanagerUrl(String),
    /// Slack incoming webhook.
    Slack { webhook_url: String },
    /// Generic JSON webhook, optionally signed.
    Webhook {
        url: String,
        hmac_secret: Option<String>,
    },
}

impl ChannelKind {
    /// `alertmanager`, `slack` or `webhook`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::AlertmanagerUrl(_) => "alertmanager",
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Webhook { .. } => "webhook",
        }
    }
}

impl fmt::Debug for ChannelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSettings")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Debug for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelKind::AlertmanagerUrl(url) => f
                .debug_tuple("AlertmanagerUrl")
                .field(&without_credentials(url))
                .finish(),
            ChannelKind::Slack { .. } => f
                .debug_struct("Slack")
                .field("webhook_url", &"<redacted>")
                .finish(),
            ChannelKind::Webhook { hmac_secret, .. } => f
                .debug_struct("Webhook")
                .field("url", &"<redacted>")
                .field("hmac_secret", &hmac_secret.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// An Alertmanager URL with any user/password replaced by `<redacted>`.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("redacted");
            let _ = u.set_password(None);
            u.to_string().replacen("redacted@", "<redacted>@", 1)
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable>".to_string(),
    }
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver rejected the payload (4xx other than 408/429): retrying will not help.
    /// `body` is the start of the answer, kept only for endpoints that are not secret.
    #[error("rejected with HTTP {status}{}", answer(.body))]
    Rejected { status: u16, body: String },
    /// Temporary: 5xx, 408, 429, timeout, connection refused… Retry later.
    #[error("{0}")]
    Transient(String),
}

/// `: <body>`, or why there is none.
fn answer(body: &str) -> String {
    if body.is_empty() {
        " (the answer of a secret endpoint is not recorded)".to_string()
    } else {
        format!(": {body}")
    }
}

impl DeliveryError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Rejected { .. })
    }
}

/// Sends `event` to `channel` once.
pub async fn deliver(
    client: &reqwest::Client,
    channel: &ChannelSettings,
    event: &AlertEvent,
) -> Result<(), DeliveryError> {
    let (url, body, signature) = match &channel.kind {
        ChannelKind::AlertmanagerUrl(base) => (
            format!("{}/api/v2/alerts", base.trim_end_matches('/')),
            alertmanager_body(event),
            None,
        ),
        ChannelKind::Slack { webhook_url } => (webhook_url.clone(), slack_body(event), None),
        ChannelKind::Webhook { url, hmac_secret } => {
            let body = webhook_body(event);
            let signature = hmac_secret.as_deref().map(|s| signature(s, &body));
            (url.clone(), body, signature)
        }
    };
    let mut request = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(sig) = signature {
        request = request.header(SIGNATURE_HEADER, sig);
    }
    // reqwest errors name the URL, which may be a credential: strip it before formatting.
    let response = request
        .send()
        .await
        .map_err(|e| DeliveryError::Transient(e.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // A Slack or webhook URL is a credential, and receivers echo it (their path, a token in the
    // query) in error pages: nothing of their answer is kept, logged or stored. Alertmanager's
    // answer is, without any password of its URL.
    let body = match &channel.kind {
        ChannelKind::AlertmanagerUrl(base) => {
            let text = response.text().await.unwrap_or_default();
            let body: String = text.trim().chars().take(200).collect();
            match reqwest::Url::parse(base)
                .ok()
                .and_then(|u| u.password().map(String::from))
            {
                Some(password) if !password.is_empty() => body.replace(&password, "<redacted>"),
                _ => body,
            }
        }
        ChannelKind::Slack { .. } | ChannelKind::Webhook { .. } => String::new(),
    };
    classify(status.as_u16(), body)
}

fn classify(status: u16, body: String) -> Result<(), DeliveryError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 => Err(DeliveryError::Transient(format!(
            "HTTP {status}{}",
            answer(&body)
        ))),
        400..=499 => Err(DeliveryError::Rejected { status, body }),
        _ => Err(DeliveryError::Transient(format!(
            "HTTP {status}{}",
            answer(&body)
        ))),
    }
}

/// The Alertmanager v2 `POST /api/v2/alerts` body for `event` (an array of one alert).
pub fn alertmanager_payload(event: &AlertEvent) -> Value {
    let mut annotations = Map::new();
    for (name, value) in &event.fields {
        annotations.insert(label_name(name), Value::String(value.clone()));
    }
    if !event.queries.is_empty() {
        annotations.insert(
            "queries".to_string(),
            Value::String(event.queries.join("\n")),
        );
    }
    if let Some(link) = &event.link {
        annotations.insert("link".to_string(), Value::String(link.clone()));
    }
    annotations.insert("summary".to_string(), Value::String(event.summary.clone()));
    annotations.insert(
        "description".to_string(),
        Value::String(event.description.clone()),
    );
    let mut alert = json!({
        "labels": {
            "alertname": event.kind.alertname(),
            "api": event.api,
            "severity": event.severity.as_str(),
            "greenlight_key": event.key,
        },
        "annotations": annotations,
        "startsAt": event.at.to_string(),
    });
    if event.resolved {
        alert["endsAt"] = Value::String(event.at.to_string());
    }
    if let Some(link) = event.link.as_deref().filter(|l| is_http_url(l)) {
        alert["generatorURL"] = Value::String(link.to_string());
    }
    Value::Array(vec![alert])
}

fn is_http_url(s: &str) -> bool {
    reqwest::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// A valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`) for a field name: other characters
/// become `_`, a leading digit gets a `_` prefix.
fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn alertmanager_body(event: &AlertEvent) -> Vec<u8> {
    alertmanager_payload(event).to_string().into_bytes()
}

/// The Slack message text for `event`: a headline, the description, every field, the queries
/// and the link.
pub fn slack_text(event: &AlertEvent) -> String {
    let status = if event.resolved {
        "RESOLVED".to_string()
    } else {
        event.severity.as_str().to_uppercase()
    };
    let icon = match (event.resolved, event.severity) {
        (true, _) => ":white_check_mark:",
        (false, super::event::Severity::Critical) => ":rotating_light:",
        (false, super::event::Severity::Warning) => ":warning:",
        (false, super::event::Severity::Info) => ":information_source:",
    };
    let mut text = format!(
        "{icon} *[{status}] {api}: {summary}*\n",
        api = event.api,
        summary = event.summary
    );
    if !event.description.is_empty() {
        text.push_str(event.description.trim_end());
        text.push('\n');
    }
    for (name, value) in &event.fields {
        text.push_str(&format!("• {name}: {value}\n"));
    }
    for query in &event.queries {
        text.push_str(&format!("`{query}`\n"));
    }
    if let Some(link) = &event.link {
        text.push_str(&format!("<{link}|Graph>\n"));
    }
    text.push_str(&format!(
        "_{kind} · {key} · {at}_",
        kind = event.kind,
        key = event.key,
        at = event.at
    ));
    text
}

/// The Slack incoming-webhook body: `{"text": …}`.
pub fn slack_payload(event: &AlertEvent) -> Value {
    json!({ "text": slack_text(event) })
}

fn slack_body(event: &AlertEvent) -> Vec<u8> {
    slack_payload(event).to_string().into_bytes()
}

/// The generic webhook body: `{"version": 1, "event": <AlertEvent>}`.
pub fn webhook_payload(event: &AlertEvent) -> Value {
    json!({ "version": WEBHOOK_SCHEMA_VERSION, "event": event })
}

fn webhook_body(event: &AlertEvent) -> Vec<u8> {
    webhook_payload(event).to_string().into_bytes()
}

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`, the value of [`SIGNATURE_HEADER`].
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// An HTTP client for deliveries with the given overall timeout per request.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("greenlight/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::event::EventKind;

    fn rollback() -> AlertEvent {
        AlertEvent::new(
            "checkout",
            EventKind::Rollback,
            "r7",
            "Rolled back green from 10% to 0%",
            "2026-11-27T05:00:00Z".parse().unwrap(),
        )
        .with_description(
            "Green's error rate exceeds blue's by more than the tolerance.\nEvidence crossed 1/α.",
        )
        .with_field("green_weight_before", "10")
        .with_field("green_weight_after", "0")
        .with_field("green.error_rate", "0.0412")
        .with_field("5xx", "17")
        .with_query("sum(rate(x{server=\"green\"}[1m]))")
        .with_link("http://vm:8428/vmui/#/?g0.expr=x")
    }

    #[test]
    fn alertmanager_payload_has_labels_annotations_and_start() {
        let p = alertmanager_payload(&rollback());
        let a = &p[0];
        assert_eq!(p.as_array().unwrap().len(), 1);
        assert_eq!(a["labels"]["alertname"], "GreenlightRollback");
        assert_eq!(a["labels"]["api"], "checkout");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["greenlight_key"], "checkout/rollback/r7");
        assert_eq!(
            a["annotations"]["summary"],
            "Rolled back green from 10% to 0%"
        );
        assert!(a["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains('\n'));
        assert_eq!(a["annotations"]["green_weight_before"], "10");
        assert_eq!(a["annotations"]["green_error_rate"], "0.0412");
        assert_eq!(a["annotations"]["_5xx"], "17");
        assert_eq!(a["startsAt"], "2026-11-27T05:00:00Z");
        assert_eq!(a["generatorURL"], "http://vm:8428/vmui/#/?g0.expr=x");
        assert!(a.get("endsAt").is_none());
    }

    #[test]
    fn alertmanager_resolution_carries_ends_at_and_same_labels() {
        let e = rollback();
        let r = e.resolve("2026-11-27T06:00:00Z".parse().unwrap());
        let fired = alertmanager_payload(&e);
        let resolved = alertmanager_payload(&r);
        assert_eq!(resolved[0]["labels"], fired[0]["labels"]);
        assert_eq!(resolved[0]["endsAt"], "2026-11-27T06:00:00Z");
    }

    #[test]
    fn slack_text_is_readable_with_every_number() {
        let text = slack_text(&rollback());
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            ":rotating_light: *[CRITICAL] checkout: Rolled back green from 10% to 0%*"
        );
        for line in [
            "• green_weight_before: 10",
            "• green_weight_after: 0",
            "• green.error_rate: 0.0412",
            "Evidence crossed 1/α.",
            "<http://vm:8428/vmui/#/?g0.expr=x|Graph>",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let resolved = slack_text(&rollback().resolve("2026-11-27T06:00:00Z".parse().unwrap()));
        assert!(resolved.starts_with(":white_check_mark: *[RESOLVED] checkout:"));
        assert_eq!(slack_payload(&rollback())["text"], text);
    }

    #[test]
    fn webhook_payload_is_versioned_and_carries_the_event() {
        let e = rollback();
        let p = webhook_payload(&e);
        assert_eq!(p["version"], 1);
        let back: AlertEvent = serde_json::from_value(p["event"].clone()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn signature_matches_rfc4231_and_known_vectors() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Computed with `printf '{"version":1}' | openssl dgst -sha256 -hmac s3cret`.
        assert_eq!(
            signature("s3cret", br#"{"version":1}"#),
            "sha256=37d836ceeac029e78ae7c1aea23d20f2c8b7e6f4ad4b2eea354086f1917a30a5"
        );
    }

    #[test]
    fn status_classification() {
        assert!(classify(200, String::new()).is_ok());
        assert!(classify(204, String::new()).is_ok());
        assert!(classify(400, String::new()).unwrap_err().is_permanent());
        assert!(classify(404, String::new()).unwrap_err().is_permanent());
        assert!(classify(422, String::new()).unwrap_err().is_permanent());
        assert!(!classify(408, String::new()).unwrap_err().is_permanent());
        assert!(!classify(429, String::new()).unwrap_err().is_permanent());
        assert!(!classify(500, String::new()).unwrap_err().is_permanent());
        assert!(!classify(503, String::new()).unwrap_err().is_permanent());
    }

    #[test]
    fn debug_redacts_webhook_urls_and_secrets() {
        let channels = [
            ChannelSettings {
                name: "oncall".into(),
                kind: ChannelKind::Slack {
                    webhook_url: "https://hooks.slack.com/services/T000/B000/XXXXSECRET".into(),
                },
            },
            ChannelSettings {
                name: "hook".into(),
                kind: ChannelKind::Webhook {
                    url: "https://example.com/hook?token=XXXXSECRET".into(),
                    hmac_secret: Some("XXXXSECRET".into()),
                },
            },
            ChannelSettings {
                name: "am".into(),
                kind: ChannelKind::AlertmanagerUrl("http://user:XXXXSECRET@am:9093/".into()),
            },
        ];
        for c in &channels {
            let dbg = format!("{c:?}");
            assert!(!dbg.contains("XXXXSECRET"), "{dbg}");
            assert!(dbg.contains(&c.name), "{dbg}");
        }
        assert!(format!("{:?}", channels[2]).contains("am:9093"));
    }

    #[test]
    fn label_names_are_valid() {
        assert_eq!(label_name("green.rate"), "green_rate");
        assert_eq!(label_name("99th"), "_99th");
        assert_eq!(label_name(""), "_");
    }

    /// A receiver answering `status` with a page that echoes the request line (path and query).
    async fn echoing_receiver(status: u16) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut got = Vec::new();
                    // Read the head and the body (Content-Length) before answering.
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).to_string();
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            let length = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if got.len() >= head_end + 4 + length {
                                break;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&got).to_string();
                    let line = text.lines().next().unwrap_or_default().to_string();
                    let page = format!("no route for {line}");
                    let answer = format!(
                        "HTTP/1.1 {status} Oops\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_receiver_echoing_its_secret_path_does_not_leak_it_into_errors() {
        let client = http_client(Duration::from_secs(5)).unwrap();
        for status in [404u16, 500, 429] {
            let addr = echoing_receiver(status).await;
            let channels = [
                ChannelSettings {
                    name: "hook".into(),
                    kind: ChannelKind::Webhook {
                        url: format!("http://{addr}/hooks/XXXXSECRET?token=XXXXSECRET"),
                        hmac_secret: Some("XXXXSECRET".into()),
                    },
                },
                ChannelSettings {
                    name: "slack".into(),
                    kind: ChannelKind::Slack {
                        webhook_url: format!("http://{addr}/services/T0/B0/XXXXSECRET"),
                    },
                },
            ];
            for c in &channels {
                let err = deliver(&client, c, &rollback()).await.unwrap_err();
                let text = err.to_string();
                assert!(text.contains(&format!("HTTP {status}")), "{text}");
                assert!(!text.contains("XXXXSECRET"), "{text}");
                assert!(!text.contains("no route"), "{text}");
                assert!(!format!("{err:?}").contains("XXXXSECRET"), "{err:?}");
            }
        }
        // Alertmanager is not a secret endpoint: its answer helps, its password does not.
        let addr = echoing_receiver(400).await;
        let am = ChannelSettings {
            name: "am".into(),
            kind: ChannelKind::AlertmanagerUrl(format!("http://user:XXXXSECRET@{addr}")),
        };
        let text = deliver(&client, &am, &rollback())
            .await
            .unwrap_err()
            .to_string();
        assert!(text.contains("no route for POST /api/v2/alerts"), "{text}");
        assert!(!text.contains("XXXXSECRET"), "{text}");
    }

    /// A cloneable in-memory log writer.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Logs {
        type Writer = Logs;
        fn make_writer(&'w self) -> Logs {
            self.clone()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn failed_webhook_deliveries_log_no_secret_url() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::default();
        let dispatch =
            crate::server::logging::subscriber(true, Some("debug"), logs.clone()).unwrap();
        let _guard = tracing::dispatcher::set_default(&dispatch);
        let mut channels = Vec::new();
        for (name, status) in [("rejecting", 404u16), ("failing", 503)] {
            let addr = echoing_receiver(status).await;
            channels.push(ChannelSettings {
                name: name.into(),
                kind: ChannelKind::Webhook {
                    url: format!("http://{addr}/hooks/XXXXSECRET"),
                    hmac_secret: None,
                },
            });
        }
        let n = crate::alert::Notifier::new(channels, dir.path(), Duration::from_secs(5)).unwrap();
        let report = n
            .notify(&rollback(), &["rejecting".into(), "failing".into()])
            .await
            .unwrap();
        assert_eq!((report.rejected, report.retrying), (1, 1), "{report:?}");
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("HTTP 404") && text.contains("HTTP 503"),
            "{text}"
        );
        assert!(!text.contains("XXXXSECRET"), "{text}");
        // Nor does the outbox, which keeps the last error of the entry to retry.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let stored = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    !stored.contains("XXXXSECRET"),
                    "{}: {stored}",
                    path.display()
                );
            }
        }
    }
}
