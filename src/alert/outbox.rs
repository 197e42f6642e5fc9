//! The durable outbox: one JSON file per (channel, event key, resolved) awaiting delivery.
//!
//! Every entry is written atomically (temporary file, fsync, link/rename, fsync of the directory)
//! before any delivery attempt, so an alert survives a crash or restart. Enqueueing an entry that
//! is already waiting keeps the waiting one (with its attempt count). Delivered entries are
//! removed; entries the receiver rejected for good are moved aside as `<name>.failed`; files that
//! cannot be decoded are moved aside as `<name>.bad`. Nothing else lives in the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::AlertEvent;

/// Delay before the first retry.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The delay after `attempts` failed attempts: 1 s, 2 s, 4 s, … capped at 5 min.
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(31);
    BACKOFF_INITIAL
        .checked_mul(1u32 << exp)
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX)
}

/// One event waiting to be delivered to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Channel name.
    pub channel: String,
    pub event: AlertEvent,
    pub enqueued_at: Timestamp,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Not to be attempted before this time.
    pub next_attempt_at: Timestamp,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// File name inside the outbox directory (derived, not stored).
    #[serde(skip)]
    pub file_name: String,
}

impl OutboxEntry {
    /// `event` waiting for `channel` since `now`, due at once.
    pub fn new(channel: &str, event: &AlertEvent, now: Timestamp) -> Self {
        OutboxEntry {
            channel: channel.to_string(),
            event: event.clone(),
            enqueued_at: now,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            file_name: String::new(),
        }
    }

    /// Whether a delivery attempt is due at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.next_attempt_at <= now
    }
}

/// What [`Outbox::pending`] found.
#[derive(Debug, Default)]
pub struct Pending {
    /// Entries, oldest first.
    pub entries: Vec<OutboxEntry>,
    /// Files that could not be decoded, now moved aside (their new paths).
    pub bad: Vec<PathBuf>,
}

/// Errors reading or writing the outbox directory.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("outbox entry encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory of pending deliveries.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir` and removes temporary files left by an
    /// interrupted write.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Outbox, OutboxError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let item = item.map_err(io_err(&dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let path = item.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(Outbox { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name of the entry for (`channel`, `event.key`, `event.resolved`): a readable
    /// prefix and a hash that makes it unique.
    pub fn file_name(channel: &str, event: &AlertEvent) -> String {
        let state = if event.resolved { "resolved" } else { "firing" };
        let mut hasher = Sha256::new();
        hasher.update(channel.as_bytes());
        hasher.update([0]);
        hasher.update(event.key.as_bytes());
        hasher.update([0]);
        hasher.update(state.as_bytes());
        let hash: String = hasher.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}--{}--{state}--{hash}.json",
            readable(channel, 40),
            readable(&event.key, 80)
        )
    }

    /// Durably records `event` for each of `channels` unless the same (channel, key, resolved)
    /// is already waiting. Returns the entries waiting for this event (new or earlier).
    pub fn enqueue(
        &self,
        event: &AlertEvent,
        channels: &[String],
        now: Timestamp,
    ) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut out = Vec::with_capacity(channels.len());
        for channel in channels {
            let file_name = Self::file_name(channel, event);
            let path = self.dir.join(&file_name);
            if path.exists() {
                match self.read(&file_name) {
                    Ok(existing) => {
                        out.push(existing);
                        continue;
                    }
                    Err(ReadError::Gone) => {}
                    Err(ReadError::Corrupt(reason)) => {
                        let aside = self.move_aside_path(&file_name, "bad")?;
                        tracing::warn!(path = %aside.display(), %reason, "Moved a corrupt outbox file aside.");
                    }
                    Err(ReadError::Io(e)) => return Err(e),
                }
            }
            let entry = OutboxEntry {
                file_name,
                ..OutboxEntry::new(channel, event, now)
            };
            if self.create(&entry)? {
                out.push(entry);
            } else {
                // Another writer created it between the check and the link: keep theirs.
                match self.read(&entry.file_name) {
                    Ok(existing) => out.push(existing),
                    Err(_) => out.push(entry),
                }
            }
        }
        Ok(out)
    }

    /// All waiting entries, oldest first (firing before resolved at equal times). Undecodable
    /// files are moved aside as `.bad` and listed in [`Pending::bad`].
    pub fn pending(&self) -> Result<Pending, OutboxError> {
        let mut pending = Pending::default();
        for name in self.entry_names()? {
            match self.read(&name) {
                Ok(entry) => pending.entries.push(entry),
                Err(ReadError::Gone) => {}
                Err(ReadError::Corrupt(reason)) => {
                    let aside = self.move_aside_path(&name, "bad")?;
                    tracing::warn!(path = %aside.display(), %reason, "Moved a corrupt outbox file aside.");
                    pending.bad.push(aside);
                }
                Err(ReadError::Io(e)) => return Err(e),
            }
        }
        pending.entries.sort_by(|a, b| {
            (a.enqueued_at, a.event.resolved, &a.file_name).cmp(&(
                b.enqueued_at,
                b.event.resolved,
                &b.file_name,
            ))
        });
        Ok(pending)
    }

    /// Number of waiting entries.
    pub fn depth(&self) -> Result<usize, OutboxError> {
        Ok(self.entry_names()?.len())
    }

    /// Records a failed attempt: counts it, stores the error and schedules the next attempt
    /// after [`backoff`]. The entry is rewritten atomically.
    pub fn record_failure(
        &self,
        entry: &mut OutboxEntry,
        error: &str,
        now: Timestamp,
    ) -> Result<(), OutboxError> {
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last_error = Some(error.to_string());
        let delay = backoff(entry.attempts);
        entry.next_attempt_at = now
            .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX);
        self.replace(entry)
    }

    /// Removes a delivered entry.
    pub fn remove(&self, entry: &OutboxEntry) -> Result<(), OutboxError> {
        let path = self.dir.join(&entry.file_name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        }
        self.sync_dir()
    }

    /// Moves an entry out of the queue as `<name>.failed` (rejected for good) and returns the
    /// new path.
    pub fn move_aside_failed(&self, entry: &OutboxEntry) -> Result<PathBuf, OutboxError> {
        self.move_aside_path(&entry.file_name, "failed")
    }

    fn move_aside_path(&self, file_name: &str, suffix: &str) -> Result<PathBuf, OutboxError> {
        let from = self.dir.join(file_name);
        let to = self.dir.join(format!("{file_name}.{suffix}"));
        fs::rename(&from, &to).map_err(io_err(&from))?;
        self.sync_dir()?;
        Ok(to)
    }

    fn entry_names(&self) -> Result<Vec<String>, OutboxError> {
        let mut names = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let item = item.map_err(io_err(&self.dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !name.starts_with('.') {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, file_name: &str) -> Result<OutboxEntry, ReadError> {
        let path = self.dir.join(file_name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Gone),
            Err(e) => return Err(ReadError::Io(io_err(&path)(e))),
        };
        let mut entry: OutboxEntry =
            serde_json::from_slice(&bytes).map_err(|e| ReadError::Corrupt(e.to_string()))?;
        entry.file_name = file_name.to_string();
        Ok(entry)
    }

    /// Writes `entry` to a new file; `false` if a file of that name already exists.
    fn create(&self, entry: &OutboxEntry) -> Result<bool, OutboxError> {
        let tmp = self.write_tmp(entry)?;
        let path = self.dir.join(&entry.file_name);
        // A hard link never replaces an existing file: concurrent enqueues keep one entry.
        let linked = match fs::hard_link(&tmp, &path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io_err(&path)(e));
            }
        };
        fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        self.sync_dir()?;
        Ok(linked)
    }

    /// Atomically replaces the file of `entry`.
    fn replace(&self, entry: &OutboxEntry) -> Result<(), OutboxError> {
        let tmp = self.write_tmp(entry)?;
        let path = self.dir.join(&entry.file_name);
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
        self.sync_dir()
    }

    fn write_tmp(&self, entry: &OutboxEntry) -> Result<PathBuf, OutboxError> {
        let body = serde_json::to_vec_pretty(entry)?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".{}.{}.{n}.tmp",
            entry.file_name,
            std::process::id()
        ));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        Ok(tmp)
    }

    fn sync_dir(&self) -> Result<(), OutboxError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }
}

enum ReadError {
    Gone,
    Corrupt(String),
    Io(OutboxError),
}

/// `s` with characters other than `[A-Za-z0-9._-]` replaced by `_`, at most `max` characters.
fn readable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::event::EventKind;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn event(instance: &str) -> AlertEvent {
        AlertEvent::new(
            "checkout",
            EventKind::Rollback,
            instance,
            "rolled back",
            ts("2026-11-27T05:00:00Z"),
        )
        .with_field("green_weight_before", 10)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn chans(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn enqueue_writes_one_durable_file_per_channel_and_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let now = ts("2026-11-27T05:00:01Z");
        let entries = outbox
            .enqueue(&event("r1"), &chans(&["am", "slack"]), now)
            .unwrap();
        assert_eq!(entries.len(), 2);
        let names = files(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
        // The files decode to the event, ready to deliver now.
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.entries.len(), 2);
        for e in &pending.entries {
            assert_eq!(e.event, event("r1"));
            assert_eq!(e.attempts, 0);
            assert!(e.is_due(now));
        }
        // A second Outbox on the same directory (a restarted process) sees the same entries.
        let reopened = Outbox::open(dir.path()).unwrap();
        assert_eq!(reopened.pending().unwrap().entries, pending.entries);
    }

    #[test]
    fn enqueueing_the_same_channel_key_and_state_twice_keeps_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let t0 = ts("2026-11-27T05:00:00Z");
        outbox.enqueue(&event("r1"), &chans(&["am"]), t0).unwrap();
        let mut first = outbox.pending().unwrap().entries.remove(0);
        outbox
            .record_failure(&mut first, "connection refused", t0)
            .unwrap();
        let again = outbox
            .enqueue(&event("r1"), &chans(&["am"]), ts("2026-11-27T05:00:05Z"))
            .unwrap();
        assert_eq!(
            again,
            vec![first.clone()],
            "the waiting entry is kept as is"
        );
        assert_eq!(outbox.depth().unwrap(), 1);
        // A different key, state or channel is a different entry.
        outbox.enqueue(&event("r2"), &chans(&["am"]), t0).unwrap();
        outbox
            .enqueue(&event("r1").resolve(t0), &chans(&["am"]), t0)
            .unwrap();
        outbox
            .enqueue(&event("r1"), &chans(&["slack"]), t0)
            .unwrap();
        assert_eq!(outbox.depth().unwrap(), 4);
    }

    #[test]
    fn pending_lists_oldest_first_firing_before_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let t = |s: u32| ts(&format!("2026-11-27T05:00:{s:02}Z"));
        outbox.enqueue(&event("c"), &chans(&["am"]), t(3)).unwrap();
        outbox.enqueue(&event("a"), &chans(&["am"]), t(1)).unwrap();
        outbox
            .enqueue(&event("b").resolve(t(2)), &chans(&["am"]), t(2))
            .unwrap();
        outbox.enqueue(&event("b"), &chans(&["am"]), t(2)).unwrap();
        let order: Vec<(String, bool)> = outbox
            .pending()
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.event.key, e.event.resolved))
            .collect();
        assert_eq!(
            order,
            vec![
                ("checkout/rollback/a".to_string(), false),
                ("checkout/rollback/b".to_string(), false),
                ("checkout/rollback/b".to_string(), true),
                ("checkout/rollback/c".to_string(), false),
            ]
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn failures_are_recorded_durably_with_the_next_attempt_time() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let t0 = ts("2026-11-27T05:00:00Z");
        outbox.enqueue(&event("r1"), &chans(&["am"]), t0).unwrap();
        let mut e = outbox.pending().unwrap().entries.remove(0);
        outbox.record_failure(&mut e, "HTTP 503", t0).unwrap();
        outbox.record_failure(&mut e, "HTTP 503", t0).unwrap();
        outbox.record_failure(&mut e, "timeout", t0).unwrap();
        let stored = Outbox::open(dir.path()).unwrap().pending().unwrap().entries;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].attempts, 3);
        assert_eq!(stored[0].last_error.as_deref(), Some("timeout"));
        assert_eq!(stored[0].next_attempt_at, ts("2026-11-27T05:00:04Z"));
        assert!(!stored[0].is_due(ts("2026-11-27T05:00:03Z")));
        assert!(stored[0].is_due(ts("2026-11-27T05:00:04Z")));
        assert_eq!(files(dir.path()).len(), 1, "no temporary files left");
    }

    #[test]
    fn remove_and_move_aside_take_entries_out_of_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let t0 = ts("2026-11-27T05:00:00Z");
        outbox
            .enqueue(&event("r1"), &chans(&["am", "hook"]), t0)
            .unwrap();
        let entries = outbox.pending().unwrap().entries;
        outbox.remove(&entries[0]).unwrap();
        let failed = outbox.move_aside_failed(&entries[1]).unwrap();
        assert!(failed.to_string_lossy().ends_with(".json.failed"));
        assert!(failed.exists());
        assert_eq!(outbox.depth().unwrap(), 0);
        assert!(outbox.pending().unwrap().entries.is_empty());
        // Removing twice is harmless.
        outbox.remove(&entries[0]).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let t0 = ts("2026-11-27T05:00:00Z");
        outbox.enqueue(&event("ok"), &chans(&["am"]), t0).unwrap();
        fs::write(dir.path().join("torn.json"), b"{\"channel\": \"am\", \"ev").unwrap();
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.entries.len(), 1);
        assert_eq!(pending.entries[0].event.key, "checkout/rollback/ok");
        assert_eq!(pending.bad, vec![dir.path().join("torn.json.bad")]);
        assert!(dir.path().join("torn.json.bad").exists());
        assert!(outbox.pending().unwrap().bad.is_empty(), "reported once");
    }

    #[test]
    fn enqueue_over_a_corrupt_entry_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let t0 = ts("2026-11-27T05:00:00Z");
        let name = Outbox::file_name("am", &event("r1"));
        fs::write(dir.path().join(&name), b"garbage").unwrap();
        outbox.enqueue(&event("r1"), &chans(&["am"]), t0).unwrap();
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.entries.len(), 1);
        assert_eq!(pending.entries[0].event, event("r1"));
        assert!(dir.path().join(format!("{name}.bad")).exists());
    }

    #[test]
    fn leftover_temporaries_from_an_interrupted_write_are_ignored_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".x.json.1.0.tmp"), b"{partial").unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        assert!(files(dir.path()).is_empty());
        assert!(outbox.pending().unwrap().entries.is_empty());
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        let a = Outbox::file_name("on/call", &event("../../etc"));
        assert!(!a.contains('/'), "{a}");
        let b = Outbox::file_name("on_call", &event("../../etc"));
        assert_ne!(a, b, "the hash tells apart names that read the same");
    }
}
