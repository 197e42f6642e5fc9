//! Fenced writes (state and weights) against the Consul double: a write refused because the
//! lock's session no longer holds the key is a lost lock; any other refusal keeps Consul's own
//! per-operation reasons instead of being reported as a lost lock.

mod support;

use std::time::Duration;

use greenlight::consul::{ConsulClient, ConsulError, Lock};
use greenlight::daemon::{StateStore, StoreError};
use greenlight::engine::RolloutState;
use greenlight::policy::{Policy, Weights};
use greenlight::traffic::{ConsulKv, Retry, TrafficError};
use support::consul_double::ConsulDouble;

const BLUE: &str = "haproxy/checkout/weights/blue";
const GREEN: &str = "haproxy/checkout/weights/green";
/// What a failed Raft apply looks like; Consul reports it at operation 0 (state/txn.go `TxnRW`).
const COMMIT_FAILURE: &str = "failed to apply transaction: leadership lost while committing log";

fn policy() -> Policy {
    support::fixtures::policy(
        "checkout",
        support::fixtures::consul_keys(BLUE, GREEN),
        &[1.0, 5.0, 10.0, 100.0],
        vec![],
    )
}

fn w(blue: u32, green: u32) -> Weights {
    Weights { blue, green }
}

async fn setup(d: &ConsulDouble) -> (ConsulClient, StateStore, Lock) {
    support::fixtures::leader(d).await
}

#[tokio::test]
async fn fenced_state_save_keeps_consul_reasons_when_the_commit_fails() {
    let d = ConsulDouble::start();
    let (_c, store, lock) = setup(&d).await;
    let p = policy();
    let state = RolloutState::new(&p);
    d.fail_next_commit(COMMIT_FAILURE);
    match store.save(&state, 0, Some(lock.fence())).await {
        Err(StoreError::Consul(ConsulError::TxnRolledBack(errors))) => {
            assert_eq!(errors, vec![(0, COMMIT_FAILURE.to_string())]);
        }
        other => panic!("expected Consul's reasons, got {other:?}"),
    }
    let shown = store
        .save(&state, 0, Some(lock.fence()))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_eq!(shown, Ok(()), "nothing was written by the failed commit");
    assert!(lock.is_held());
}

#[tokio::test]
async fn fenced_state_save_is_lock_lost_only_when_the_session_lost_the_key() {
    let d = ConsulDouble::start();
    let (_c, store, lock) = setup(&d).await;
    let p = policy();
    let state = RolloutState::new(&p);
    let index = store.save(&state, 0, Some(lock.fence())).await.unwrap();
    // A stale index is a conflict, not a lost lock.
    match store.save(&state, index + 100, Some(lock.fence())).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    d.invalidate_session(&lock.fence().session);
    match store.save(&state, index, Some(lock.fence())).await {
        Err(StoreError::LockLost { .. }) => {}
        other => panic!("expected a lost lock, got {other:?}"),
    }
}

#[tokio::test]
async fn fenced_weight_write_keeps_consul_reasons_when_the_commit_fails() {
    let d = ConsulDouble::start();
    let (client, _store, lock) = setup(&d).await;
    let kv = ConsulKv::new(client).with_retry(Retry {
        attempts: 1,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(10),
    });
    let p = policy();
    kv.initialize(&p, w(100, 0)).await.unwrap();
    d.fail_next_commit(COMMIT_FAILURE);
    match kv
        .write_fenced(&p, w(100, 0), w(95, 5), Some(lock.fence()))
        .await
    {
        Err(TrafficError::Consul(ConsulError::TxnRolledBack(errors))) => {
            assert_eq!(errors, vec![(0, COMMIT_FAILURE.to_string())]);
        }
        other => panic!("expected Consul's reasons, got {other:?}"),
    }
    assert_eq!(kv.read(&p).await.unwrap(), w(100, 0), "nothing written");
    kv.write_fenced(&p, w(100, 0), w(95, 5), Some(lock.fence()))
        .await
        .unwrap();

    d.invalidate_session(&lock.fence().session);
    assert_eq!(
        kv.write_fenced(&p, w(95, 5), w(90, 10), Some(lock.fence()))
            .await,
        Err(TrafficError::LockLost)
    );
    assert_eq!(kv.read(&p).await.unwrap(), w(95, 5));
}

#[tokio::test]
async fn a_txn_error_without_op_index_is_not_read_as_a_lost_lock() {
    // An agent (or proxy) answering with errors that do not name their operation: nothing
    // says the check-session operation failed, so this is no lost lock.
    let fake = support::fake_http::FakeHttp::start(support::fake_http::Behaviour::Answer {
        status: 409,
        content_type: "application/json",
        body: r#"{"Results":null,"Errors":[{"What":"rpc error: No cluster leader"}]}"#.into(),
    });
    let client = ConsulClient::new(fake.url(), None, Duration::from_secs(5)).unwrap();
    let store = StateStore::new(client, "greenlight");
    let (fence, _held) = greenlight::consul::Fence::held_by(
        store.leader_key(),
        1,
        "00000000-0000-4000-8000-000000000001",
    );
    let state = RolloutState::new(&policy());
    match store.save(&state, 0, Some(&fence)).await {
        Err(StoreError::Consul(ConsulError::Decode(text))) => {
            assert!(text.contains("No cluster leader"), "{text}")
        }
        other => panic!("expected the unattributed error, got {other:?}"),
    }
}
