//! Leader takeover time: a standby waiting in `Lock::acquire` takes over within the documented
//! bound, 2 × session TTL + lock-delay, after the holder dies without releasing.
//!
//! The dead holder's session is expired by moving the double's virtual clock by 2 × TTL (the
//! longest an unrenewed session lives); the lock-delay that follows runs on real time, so the
//! measured wait is the part the lock recipe controls.

mod support;

use std::time::{Duration, Instant};

use greenlight::consul::{ConsulClient, Lock, LockOptions, SessionBehavior, SessionRequest};
use support::consul_double::ConsulDouble;

const KEY: &str = "greenlight/leader";

/// Slack for scheduling on a loaded machine; far below the blocking wait the bug added.
const SLACK: Duration = Duration::from_secs(2);

/// The daemon's lock options (see `daemon::run`): retry after 1 s, 10 s blocking waits.
fn daemon_like(ttl: Duration, lock_delay: Duration) -> LockOptions {
    LockOptions {
        lock_delay,
        retry_after: Duration::from_secs(1),
        watch_wait: Duration::from_secs(10),
        ..LockOptions::new("standby", ttl).value("standby")
    }
}

/// A holder that took the lock and then died: its session is never renewed or destroyed.
async fn dead_holder(c: &ConsulClient, ttl: Duration, lock_delay: Duration) -> String {
    let s = c
        .session_create(&SessionRequest {
            name: "dead".into(),
            ttl: Some(ttl),
            lock_delay,
            behavior: SessionBehavior::Release,
        })
        .await
        .unwrap();
    assert!(c.acquire(KEY, b"dead", &s).await.unwrap());
    s
}

/// Kills the holder's session as its TTL would and returns how long the standby then took.
async fn takeover_after_expiry(ttl: Duration, lock_delay: Duration) -> Duration {
    let d = ConsulDouble::start();
    let c = ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap();
    let holder = dead_holder(&c, ttl, lock_delay).await;
    let opts = daemon_like(ttl, lock_delay);
    let standby = {
        let c = c.clone();
        tokio::spawn(async move { Lock::acquire(&c, KEY, &opts).await })
    };
    // Let the standby reach its blocking read on the held key.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = d.requests();
    while d.requests() < before + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The holder died right after its last renewal: its session lives 2 × TTL more.
    d.advance_clock(2 * ttl);
    assert!(!d.has_session(&holder), "the session expired after 2 × TTL");
    let expired = Instant::now();
    let lock = tokio::time::timeout(Duration::from_secs(60), standby)
        .await
        .expect("standby never took over")
        .unwrap()
        .unwrap();
    let took = expired.elapsed();
    assert_eq!(lock.fence().lock_index, 2);
    lock.release().await.unwrap();
    took
}

#[tokio::test]
async fn standby_takes_over_within_twice_ttl_plus_lock_delay() {
    let ttl = Duration::from_secs(10);
    let lock_delay = Duration::from_secs(1);
    let took = takeover_after_expiry(ttl, lock_delay).await;
    let total = 2 * ttl + took;
    println!(
        "takeover {total:?} after the holder died (bound {:?})",
        2 * ttl + lock_delay
    );
    assert!(
        took >= lock_delay,
        "took the lock during the lock-delay ({took:?})"
    );
    assert!(
        total <= 2 * ttl + lock_delay + SLACK,
        "takeover took {total:?}, more than 2 × TTL + lock-delay ({:?}) + {SLACK:?}",
        2 * ttl + lock_delay
    );
}

#[tokio::test]
async fn standby_retries_through_a_lock_delay_longer_than_its_retry_pause() {
    // Lock-delay 3 s with 1 s retries: refused twice or so, then taken when the delay ends.
    let ttl = Duration::from_secs(10);
    let lock_delay = Duration::from_secs(3);
    let took = takeover_after_expiry(ttl, lock_delay).await;
    println!("took {took:?} after the session expired (lock-delay {lock_delay:?})");
    assert!(took >= lock_delay, "took the lock during the lock-delay");
    assert!(
        took <= lock_delay + SLACK,
        "took {took:?} after expiry, lock-delay is {lock_delay:?}"
    );
}
