//! Alert notifiers (Alertmanager v2, Slack, generic webhook) behind a durable outbox.
//!
//! [`Notifier::notify`] first writes the event to the on-disk [`outbox`] (one entry per
//! channel), then tries to deliver it. Whatever could not be delivered stays in the outbox and
//! is retried with exponential backoff by [`Notifier::flush`], which the daemon calls on every
//! tick and at start, also after a restart. Delivery is at least once: a crash between a
//! successful send and the removal of its entry sends it again.
//!
//! This on-disk outbox holds only the alerts that cannot be written to Consul with the state
//! change behind them (the daemon's own failures, an unreachable Consul, a lost lock). Alerts
//! raised by a persisted decision live in the shared outbox in Consul KV (`daemon::outbox`),
//! which [`Notifier::send`] delivers for the lock holder.

pub mod channel;
pub mod event;
pub mod outbox;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

pub use channel::{ChannelKind, ChannelSettings, DeliveryError};
pub use event::{vmui_link, AlertEvent, EventKind, Severity};
pub use outbox::{Outbox, OutboxEntry, OutboxError};

/// The alert channels of a daemon configuration, with their secrets resolved.
pub fn channels_from_config(
    config: &crate::policy::Config,
) -> Result<Vec<ChannelSettings>, String> {
    use crate::policy::AlertChannelKind;
    let mut channels = Vec::new();
    for c in &config.alerts {
        let secret = |r: Result<String, _>| -> Result<String, String> {
            r.map_err(|e: crate::policy::SecretError| format!("alert channel {}: {e}", c.name))
        };
        let kind = match &c.kind {
            AlertChannelKind::Alertmanager { url } => ChannelKind::AlertmanagerUrl(url.clone()),
            AlertChannelKind::Slack { webhook_url } => ChannelKind::Slack {
                webhook_url: secret(webhook_url.resolve())?,
            },
            AlertChannelKind::Webhook { url, hmac_secret } => ChannelKind::Webhook {
                url: secret(url.resolve())?,
                hmac_secret: match hmac_secret {
                    Some(s) => Some(secret(s.resolve())?),
                    None => None,
                },
            },
        };
        channels.push(ChannelSettings {
            name: c.name.clone(),
            kind,
        });
    }
    Ok(channels)
}

/// Errors building a [`Notifier`] or recording an event.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("alert HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("duplicate alert channel name {0:?}")]
    DuplicateChannel(String),
}

/// What one [`Notifier::notify`] or [`Notifier::flush`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Entries delivered.
    pub delivered: usize,
    /// Entries that failed and will be retried.
    pub retrying: usize,
    /// Entries rejected for good (moved aside as `.failed`).
    pub rejected: usize,
    /// Channel names that are not configured (nothing enqueued or sent for them).
    pub unknown_channels: Vec<String>,
    /// Corrupt outbox files moved aside as `.bad`.
    pub corrupt: usize,
    /// Each delivery attempt: channel name and whether it was delivered (filled by the shared
    /// outbox, for per-channel telemetry).
    pub attempts: Vec<(String, bool)>,
}

/// Delivers alert events to named channels through a durable outbox.
#[derive(Debug)]
pub struct Notifier {
    channels: BTreeMap<String, ChannelSettings>,
    outbox: Outbox,
    client: reqwest::Client,
    /// One delivery pass at a time, so an entry is never sent twice concurrently.
    delivering: tokio::sync::Mutex<()>,
    /// The first flush after start retries every entry, whatever its backoff.
    started: AtomicBool,
    deliveries: AtomicU64,
    failures: AtomicU64,
    depth: AtomicU64,
}

impl Notifier {
    /// A notifier for `channels` keeping its outbox in `outbox_dir` (created if missing), with
    /// `timeout` per HTTP request.
    pub fn new(
        channels: Vec<ChannelSettings>,
        outbox_dir: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Result<Notifier, NotifierError> {
        let mut by_name = BTreeMap::new();
        for c in channels {
            if by_name.contains_key(&c.name) {
                return Err(NotifierError::DuplicateChannel(c.name));
            }
            by_name.insert(c.name.clone(), c);
        }
        let outbox = Outbox::open(outbox_dir)?;
        let depth = outbox.depth()? as u64;
        Ok(Notifier {
            channels: by_name,
            outbox,
            client: channel::http_client(timeout)?,
            delivering: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
            deliveries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            depth: AtomicU64::new(depth),
        })
    }

    /// Records `event` durably for each of `channel_names`, then tries to deliver it once.
    /// Returns once the event is on disk and the attempt is over; an error means it could not
    /// be recorded. Unknown channel names are logged, counted as failures and reported.
    pub async fn notify(
        &self,
        event: &AlertEvent,
        channel_names: &[String],
    ) -> Result<DeliveryReport, NotifierError> {
        let mut report = DeliveryReport::default();
        let mut known = Vec::with_capacity(channel_names.len());
        for name in channel_names {
            if self.channels.contains_key(name) {
                if !known.contains(name) {
                    known.push(name.clone());
                }
            } else {
                unknown_channel(name, &event.key);
                self.failures.fetch_add(1, Ordering::Relaxed);
                report.unknown_channels.push(name.clone());
            }
        }
        let _guard = self.delivering.lock().await;
        let entries = self.outbox.enqueue(event, &known, Timestamp::now())?;
        self.refresh_depth();
        for entry in entries {
            // An entry already waiting for its backoff is left to `flush`.
            if entry.is_due(Timestamp::now()) {
                self.deliver_entry(entry, &mut report).await;
            } else {
                report.retrying += 1;
            }
        }
        self.refresh_depth();
        Ok(report)
    }

    /// Delivers every entry that is due (on the first call after start: every entry), oldest
    /// first. Failures are logged and rescheduled; nothing here is fatal.
    pub async fn flush(&self) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let _guard = self.delivering.lock().await;
        let first = !self.started.swap(true, Ordering::Relaxed);
        let pending = match self.outbox.pending() {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "Could not read the alert outbox.");
                self.failures.fetch_add(1, Ordering::Relaxed);
                return report;
            }
        };
        report.corrupt = pending.bad.len();
        self.failures
            .fetch_add(pending.bad.len() as u64, Ordering::Relaxed);
        let now = Timestamp::now();
        for entry in pending.entries {
            if !first && !entry.is_due(now) {
                continue;
            }
            if !self.channels.contains_key(&entry.channel) {
                if !report.unknown_channels.contains(&entry.channel) {
                    unknown_channel(&entry.channel, &entry.event.key);
                    report.unknown_channels.push(entry.channel.clone());
                }
                continue;
            }
            self.deliver_entry(entry, &mut report).await;
        }
        self.refresh_depth();
        report
    }

    /// Sends `event` to the channel named `channel` once, without the local outbox (the caller
    /// keeps it elsewhere until this succeeds). `None` if no such channel is configured.
    pub async fn send(
        &self,
        channel: &str,
        event: &AlertEvent,
    ) -> Option<Result<(), DeliveryError>> {
        let settings = self.channels.get(channel)?;
        let result = channel::deliver(&self.client, settings, event).await;
        match &result {
            Ok(()) => {
                tracing::info!(key = %event.key, %channel, kind = settings.kind.as_str(), resolved = event.resolved, "Delivered alert.");
                self.deliveries.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(result)
    }

    /// Successful deliveries since start.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Failed delivery attempts (retried or rejected), unknown channels and corrupt outbox files
    /// since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Entries waiting in the outbox, as of the last notify or flush.
    pub fn outbox_depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Configured channel names.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    async fn deliver_entry(&self, mut entry: OutboxEntry, report: &mut DeliveryReport) {
        let Some(channel) = self.channels.get(&entry.channel) else {
            return;
        };
        match channel::deliver(&self.client, channel, &entry.event).await {
            Ok(()) => {
                delivered(&entry, channel);
                self.deliveries.fetch_add(1, Ordering::Relaxed);
                report.delivered += 1;
                if let Err(error) = self.outbox.remove(&entry) {
                    tracing::error!(%error, key = %entry.event.key, channel = %entry.channel, "Could not remove a delivered alert from the outbox; it may be sent again.");
                }
            }
            Err(error) if error.is_permanent() => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                report.rejected += 1;
                match self.outbox.move_aside_failed(&entry) {
                    Ok(path) => {
                        tracing::error!(%error, key = %entry.event.key, channel = %entry.channel, kind = channel.kind.as_str(), path = %path.display(), "Alert rejected by its receiver; moved aside.");
                    }
                    Err(io) => {
                        tracing::error!(%error, %io, key = %entry.event.key, channel = %entry.channel, "Alert rejected by its receiver and could not be moved aside.");
                    }
                }
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                report.retrying += 1;
                let now = Timestamp::now();
                let message = error.to_string();
                match self.outbox.record_failure(&mut entry, &message, now) {
                    Ok(()) => {
                        tracing::warn!(%error, key = %entry.event.key, channel = %entry.channel, attempts = entry.attempts, next_attempt_at = %entry.next_attempt_at, "Alert delivery failed; will retry.");
                    }
                    Err(io) => {
                        tracing::error!(%error, %io, key = %entry.event.key, channel = %entry.channel, "Alert delivery failed and the retry could not be recorded.");
                    }
                }
            }
        }
    }

    fn refresh_depth(&self) {
        match self.outbox.depth() {
            Ok(d) => self.depth.store(d as u64, Ordering::Relaxed),
            Err(error) => tracing::warn!(%error, "Could not count the alert outbox."),
        }
    }
}

fn delivered(entry: &OutboxEntry, channel: &ChannelSettings) {
    tracing::info!(
        key = %entry.event.key,
        channel = %entry.channel,
        kind = channel.kind.as_str(),
        resolved = entry.event.resolved,
        attempts = entry.attempts + 1,
        "Delivered alert."
    );
}

fn unknown_channel(name: &str, key: &str) {
    tracing::error!(channel = %name, %key, "Alert channel is not configured; alert not sent there.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_receiver_keeps_the_alert_for_later() {
        let dir = tempfile::tempdir().unwrap();
        // A port that was free a moment ago: nothing listens (connection refused).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channels = vec![ChannelSettings {
            name: "am".into(),
            kind: ChannelKind::AlertmanagerUrl(format!("http://127.0.0.1:{port}")),
        }];
        let n = Notifier::new(channels, dir.path(), Duration::from_secs(2)).unwrap();
        let e = AlertEvent::new("checkout", EventKind::Rollback, "r1", "x", Timestamp::now());
        let report = n
            .notify(&e, &["am".to_string(), "nosuch".to_string()])
            .await
            .unwrap();
        assert_eq!(report.retrying, 1);
        assert_eq!(report.unknown_channels, vec!["nosuch".to_string()]);
        assert_eq!(n.outbox_depth(), 1);
        assert_eq!(n.deliveries(), 0);
        assert_eq!(n.failures(), 2);
        let entry = &Outbox::open(dir.path()).unwrap().pending().unwrap().entries[0];
        assert_eq!(entry.attempts, 1);
        assert!(entry.last_error.is_some());
        // Within the backoff, notifying again neither duplicates nor resends.
        let again = n.notify(&e, &["am".to_string()]).await.unwrap();
        assert_eq!(again.retrying, 1);
        assert_eq!(n.outbox_depth(), 1);
    }

    #[test]
    fn duplicate_channel_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChannelSettings {
            name: "x".into(),
            kind: ChannelKind::AlertmanagerUrl("http://127.0.0.1:9".into()),
        };
        let err =
            Notifier::new(vec![c.clone(), c], dir.path(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, NotifierError::DuplicateChannel(n) if n == "x"));
    }
}
