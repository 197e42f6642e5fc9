//! The Consul lock recipe: a session-held key, renewed at TTL/2, lost as soon as the key's
//! Session changes or the key vanishes, released and its session destroyed on stop or drop.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::txn::is_session_check_failure;
use super::{ConsulClient, ConsulError, SessionBehavior, SessionRequest, TxnOp};

/// How a [`Lock`] creates its session and follows its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// Session name (usually the instance name).
    pub session_name: String,
    /// Session TTL; renewed every `renew_every`.
    pub ttl: Duration,
    /// Lock-delay after an invalidation (Consul caps it at 60 s).
    pub lock_delay: Duration,
    /// Value written to the key while held (e.g. a description of the holder).
    pub value: Vec<u8>,
    /// Renewal period; TTL/2 by default.
    pub renew_every: Duration,
    /// Wait of the blocking queries that follow the key.
    pub watch_wait: Duration,
    /// Pause after a failed attempt before trying again (the lock-delay may be active).
    pub retry_after: Duration,
}

impl LockOptions {
    /// The recipe's defaults: TTL as given, lock-delay 15 s, renewal at TTL/2.
    pub fn new(session_name: impl Into<String>, ttl: Duration) -> Self {
        LockOptions {
            session_name: session_name.into(),
            ttl,
            lock_delay: Duration::from_secs(15),
            value: Vec::new(),
            renew_every: ttl / 2,
            watch_wait: Duration::from_secs(60),
            retry_after: Duration::from_secs(5),
        }
    }

    /// Sets the value written while the lock is held.
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }
}

/// The fencing sequencer of a held lock: a write guarded by it is valid only while the key still
/// carries this LockIndex and Session. Targets that cannot check the key in the same step as
/// the write (HAProxy) ask [`Fence::is_held`].
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: String,
    pub lock_index: u64,
    pub session: String,
    held: watch::Receiver<bool>,
}

impl PartialEq for Fence {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, self.lock_index, &self.session)
            == (&other.key, other.lock_index, &other.session)
    }
}

impl Eq for Fence {}

impl Fence {
    /// A fence held for as long as the returned sender lives and says `true` (for in-memory
    /// locks, e.g. the world simulator's).
    pub fn held_by(
        key: impl Into<String>,
        lock_index: u64,
        session: impl Into<String>,
    ) -> (Fence, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(true);
        let fence = Fence {
            key: key.into(),
            lock_index,
            session: session.into(),
            held: rx,
        };
        (fence, tx)
    }

    /// False once the lock task saw the lock lost, or the lock was released or dropped.
    pub fn is_held(&self) -> bool {
        *self.held.borrow() && self.held.has_changed().is_ok()
    }
}

impl Fence {
    /// The `check-session` operation that guards a write with this fence.
    pub fn check(&self) -> TxnOp {
        TxnOp::check_session(&self.key, &self.session)
    }

    /// Whether a rolled-back transaction failed because this fence's `check-session`
    /// operation, at index `op`, found that the session no longer holds the key. Any other
    /// failure of that operation (an ACL denial, a commit error, which Consul also reports at
    /// operation 0: agent/consul/state/txn.go `TxnRW`) is not a lost lock.
    pub fn lost_in(&self, errors: &[(usize, String)], op: usize) -> bool {
        errors
            .iter()
            .any(|(i, what)| *i == op && is_session_check_failure(what))
    }
}

/// A held Consul lock. Dropping it releases the key and destroys the session (best effort, in
/// the background); [`Lock::release`] does the same and waits for it.
#[derive(Debug)]
pub struct Lock {
    client: ConsulClient,
    fence: Fence,
    held: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    released: bool,
}

impl Lock {
    /// One attempt: creates a session and tries to acquire `key`. `Ok(None)` when another
    /// session holds it or a lock-delay is active (the new session is destroyed again).
    pub async fn try_acquire(
        client: &ConsulClient,
        key: &str,
        opts: &LockOptions,
    ) -> Result<Option<Lock>, ConsulError> {
        let session = client
            .session_create(&SessionRequest {
                name: opts.session_name.clone(),
                ttl: Some(opts.ttl),
                lock_delay: opts.lock_delay,
                behavior: SessionBehavior::Release,
            })
            .await?;
        let acquired = match client.acquire(key, &opts.value, &session).await {
            Ok(acquired) => acquired,
            Err(e) => {
                let _ = client.session_destroy(&session).await;
                return Err(e);
            }
        };
        if !acquired {
            client.session_destroy(&session).await?;
            tracing::debug!(key, "Lock is held elsewhere or in its lock-delay.");
            return Ok(None);
        }
        let (entry, index) = client.get_with_index(key).await?;
        let lock_index = match entry {
            Some(e) if e.session.as_deref() == Some(session.as_str()) => e.lock_index,
            _ => {
                let _ = client.session_destroy(&session).await;
                return Ok(None);
            }
        };
        let (tx, rx) = watch::channel(true);
        let fence = Fence {
            key: key.to_string(),
            lock_index,
            session,
            held: rx.clone(),
        };
        tracing::info!(key, lock_index, "Acquired lock.");
        let task = tokio::spawn(keep(client.clone(), fence.clone(), opts.clone(), index, tx));
        Ok(Some(Lock {
            client: client.clone(),
            fence,
            held: rx,
            task: Some(task),
            released: false,
        }))
    }

    /// Waits until the lock is acquired: follows the key with blocking queries and tries
    /// whenever no session holds it. Cancel by dropping the future.
    ///
    /// An attempt refused while no session held the key means a lock-delay is in effect (or
    /// another instance won the race). Nothing changes the key's index when a lock-delay ends,
    /// so, as Consul's `api/lock.go` (`Lock.Lock`) does, the index is reset and the next attempt
    /// follows a *timed* wait instead of a blocking read on the old index: at most
    /// `retry_after`, and no later than `lock_delay` after the key was first seen free (the
    /// lock-delay began before that). A standby therefore takes over within lock-delay of the
    /// holder's session being invalidated, itself at most 2×TTL after the holder died.
    pub async fn acquire(
        client: &ConsulClient,
        key: &str,
        opts: &LockOptions,
    ) -> Result<Lock, ConsulError> {
        let mut watch = client.watcher(key, opts.watch_wait);
        // When the key was first seen with no holder, in the current run of refused attempts.
        let mut free_since: Option<Instant> = None;
        loop {
            let entries = watch.next().await?;
            if entries.first().is_some_and(|e| e.session.is_some()) {
                free_since = None;
                continue;
            }
            let seen_free = *free_since.get_or_insert_with(Instant::now);
            if let Some(lock) = Lock::try_acquire(client, key, opts).await? {
                return Ok(lock);
            }
            let now = Instant::now();
            let delay_ends = seen_free + opts.lock_delay;
            let next = if delay_ends > now {
                delay_ends.min(now + opts.retry_after)
            } else {
                now + opts.retry_after
            };
            tracing::debug!(
                key,
                "Lock refused while free: lock-delay; retrying after a timed wait."
            );
            tokio::time::sleep_until(next).await;
            watch.reset();
        }
    }

    /// The (key, LockIndex, Session) sequencer of this lock.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether the lock is still believed held (false once loss was detected).
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Completes when the lock is lost (the key vanished, another session holds it, the session
    /// expired, or renewals failed for a whole TTL).
    pub async fn lost(&self) {
        let mut rx = self.held.clone();
        let _ = rx.wait_for(|held| !*held).await;
    }

    /// Releases the key and destroys the session.
    pub async fn release(mut self) -> Result<(), ConsulError> {
        self.released = true;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let result = self
            .client
            .release(&self.fence.key, b"", &self.fence.session)
            .await;
        let destroyed = self.client.session_destroy(&self.fence.session).await;
        tracing::info!(key = %self.fence.key, "Released lock.");
        result.and(destroyed)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if self.released {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let fence = self.fence.clone();
            handle.spawn(async move {
                let _ = client.release(&fence.key, b"", &fence.session).await;
                let _ = client.session_destroy(&fence.session).await;
            });
        }
    }
}

/// Renews the session and follows the key until the lock is lost, then flips `held` to false.
async fn keep(
    client: ConsulClient,
    fence: Fence,
    opts: LockOptions,
    index: u64,
    held: watch::Sender<bool>,
) {
    let renew = async {
        let mut last_ok = Instant::now();
        let period = opts.renew_every.max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(period).await;
            match client.session_renew(&fence.session).await {
                Ok(_) => last_ok = Instant::now(),
                Err(ConsulError::SessionNotFound(_)) => {
                    tracing::warn!(key = %fence.key, "Lock session expired.");
                    return;
                }
                Err(e) => {
                    tracing::warn!(key = %fence.key, error = %e, "Could not renew lock session.");
                    if last_ok.elapsed() >= opts.ttl {
                        return;
                    }
                }
            }
        }
    };
    let follow = async {
        let mut watch = client
            .watcher(fence.key.clone(), opts.watch_wait)
            .from_index(index.max(1));
        loop {
            match watch.next().await {
                Ok(entries) => {
                    let holder = entries.first().and_then(|e| e.session.clone());
                    if holder.as_deref() != Some(fence.session.as_str()) {
                        tracing::warn!(key = %fence.key, "Lock lost: the key changed holder or vanished.");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %fence.key, error = %e, "Could not follow lock key.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = renew => {}
        _ = follow => {}
    }
    let _ = held.send(false);
}
