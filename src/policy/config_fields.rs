//! Validation of single config values: URLs, listen addresses, HAProxy nodes, secret
//! references and `[[alert]]` channels.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::config::{AlertChannelKind, HaproxyNode};
use super::config_raw::{RawAlert, RawAlertKind, RawSecret};
use super::located::{shown, shown_url, Errors};
use super::secret::Secret;

pub(super) fn resolve_path(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub(super) fn validate_secret(
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
pub(super) fn validate_url(
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

pub(super) fn parse_node(s: &str) -> Result<HaproxyNode, String> {
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

pub(super) fn validate_listen(
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

pub(super) fn validate_alert(
    a: &RawAlert,
    base: &Path,
    errors: &mut Errors<'_>,
) -> Option<AlertChannelKind> {
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
