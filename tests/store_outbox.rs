//! The shared alert outbox against the Consul double: a state change and the alerts it raised
//! are written in one fenced transaction (both or neither), the outbox stays within its cap
//! without ever refusing a state write, what does not fit Consul is handed back, and the lock
//! holder delivers each entry (retrying with backoff) and deletes it once delivered.

mod support;

use std::time::Duration;

use greenlight::alert::{
    AlertEvent, ChannelKind, ChannelSettings, DeliveryReport, EventKind, Notifier, OutboxEntry,
};
use greenlight::consul::{ConsulClient, Lock};
use greenlight::daemon::outbox::{self, SharedOutbox, CAP_PER_API, MAX_ENTRY_BYTES};
use greenlight::daemon::{StateStore, StoreError};
use greenlight::engine::{Phase, RolloutState};
use greenlight::policy::Policy;
use jiff::Timestamp;
use support::consul_double::ConsulDouble;
use support::fake_http::{Behaviour, FakeHttp};

const FOLDER: &str = "greenlight/outbox/checkout/";

fn policy() -> Policy {
    support::fixtures::policy(
        "checkout",
        support::fixtures::consul_keys("w/blue", "w/green"),
        &[10.0, 100.0],
        vec![],
    )
}

fn entry(key: &str, description: usize) -> OutboxEntry {
    let at: Timestamp = "2026-11-27T05:00:00Z".parse().unwrap();
    let event = AlertEvent::new("checkout", EventKind::Rollback, key, "rolled back", at)
        .with_description("d".repeat(description));
    OutboxEntry::new("oncall", &event, at)
}

async fn setup(d: &ConsulDouble) -> (ConsulClient, StateStore, Lock) {
    support::fixtures::leader(d).await
}

/// The rollout ids of the waiting entries, oldest first.
async fn waiting(client: &ConsulClient) -> Vec<String> {
    let (mut entries, _) = client.list(FOLDER).await.unwrap();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
        .iter()
        .map(|e| {
            let entry: OutboxEntry = serde_json::from_slice(&e.value).unwrap();
            entry.event.key.rsplit('/').next().unwrap().to_string()
        })
        .collect()
}

fn rolled_back(p: &Policy) -> RolloutState {
    let mut s = RolloutState::started(p, "2026-11-27T04:00:00Z".parse().unwrap());
    s.phase = Phase::RolledBack;
    s
}

#[tokio::test]
async fn a_decision_and_its_alert_are_written_together() {
    let d = ConsulDouble::start();
    let (client, store, lock) = setup(&d).await;
    let p = policy();
    let saved = store
        .save_with_alerts(
            &rolled_back(&p),
            0,
            Some(lock.fence()),
            vec![entry("r1", 10)],
        )
        .await
        .unwrap();
    assert_eq!(saved.written, 1);
    assert!(saved.dropped.is_empty() && saved.spilled.is_empty());
    let (state, index) = store.load(&p).await.unwrap();
    assert_eq!(state.phase, Phase::RolledBack);
    assert_eq!(index, saved.index);
    assert_eq!(waiting(&client).await, vec!["r1"]);
}

#[tokio::test]
async fn a_decision_that_loses_its_compare_and_set_leaves_no_alert() {
    let d = ConsulDouble::start();
    let (client, store, lock) = setup(&d).await;
    let p = policy();
    let first = store.save(&RolloutState::new(&p), 0, None).await.unwrap();
    // Someone else (an operator command) wrote the state meanwhile.
    let mut theirs = RolloutState::new(&p);
    theirs.revision += 1;
    store.save(&theirs, first, None).await.unwrap();
    let err = store
        .save_with_alerts(
            &rolled_back(&p),
            first,
            Some(lock.fence()),
            vec![entry("r1", 10)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(store.load(&p).await.unwrap().0.phase, Phase::Pending);
    assert!(
        waiting(&client).await.is_empty(),
        "no alert for an unwritten decision"
    );
}

#[tokio::test]
async fn a_decision_by_an_instance_that_lost_the_lock_leaves_no_alert() {
    let d = ConsulDouble::start();
    let (client, store, lock) = setup(&d).await;
    let p = policy();
    assert!(d.invalidate_session(&lock.fence().session));
    let err = store
        .save_with_alerts(
            &rolled_back(&p),
            0,
            Some(lock.fence()),
            vec![entry("r1", 10)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LockLost { .. }), "{err}");
    assert!(store.load_raw("checkout").await.unwrap().is_none());
    assert!(waiting(&client).await.is_empty());
}

#[tokio::test]
async fn a_full_outbox_drops_its_oldest_alerts_and_never_refuses_the_state() {
    let d = ConsulDouble::start();
    let (client, store, lock) = setup(&d).await;
    let p = policy();
    let mut state = rolled_back(&p);
    let mut index = 0;
    for i in 0..CAP_PER_API {
        state.revision += 1;
        index = store
            .save_with_alerts(
                &state,
                index,
                Some(lock.fence()),
                vec![entry(&format!("old{i:02}"), 10)],
            )
            .await
            .unwrap()
            .index;
    }
    assert_eq!(waiting(&client).await.len(), CAP_PER_API);
    state.revision += 1;
    let saved = store
        .save_with_alerts(
            &state,
            index,
            Some(lock.fence()),
            vec![entry("new1", 10), entry("new2", 10)],
        )
        .await
        .unwrap();
    assert_eq!(saved.dropped.len(), 2);
    assert_eq!(store.load(&p).await.unwrap().0.revision, state.revision);
    let now = waiting(&client).await;
    assert_eq!(now.len(), CAP_PER_API);
    assert_eq!(now[0], "old02", "the two oldest were dropped");
    assert_eq!(&now[CAP_PER_API - 2..], ["new1", "new2"]);
}

#[tokio::test]
async fn an_alert_too_big_for_consul_is_handed_back_and_the_state_still_written() {
    let d = ConsulDouble::start();
    let (client, store, lock) = setup(&d).await;
    let p = policy();
    let big = entry("big", MAX_ENTRY_BYTES);
    let saved = store
        .save_with_alerts(
            &rolled_back(&p),
            0,
            Some(lock.fence()),
            vec![entry("small", 10), big.clone()],
        )
        .await
        .unwrap();
    assert_eq!(saved.spilled, vec![big]);
    assert_eq!(store.load(&p).await.unwrap().0.phase, Phase::RolledBack);
    assert_eq!(waiting(&client).await, vec!["small"]);
    // And as many alerts as Consul's transaction limit allows in one decision: still written.
    let many: Vec<OutboxEntry> = (0..100).map(|i| entry(&format!("m{i}"), 10)).collect();
    let saved = store
        .save_with_alerts(&rolled_back(&p), saved.index, Some(lock.fence()), many)
        .await
        .unwrap();
    assert!(saved.written + saved.dropped.len() <= outbox::MAX_OPS);
    assert_eq!(saved.written + saved.spilled.len(), 100);
}

fn webhook(port: u16) -> Vec<ChannelSettings> {
    vec![ChannelSettings {
        name: "oncall".into(),
        kind: ChannelKind::Webhook {
            url: format!("http://127.0.0.1:{port}/hook"),
            hmac_secret: None,
        },
    }]
}

#[tokio::test]
async fn the_leader_retries_a_shared_alert_until_its_receiver_is_back_then_deletes_it() {
    let d = ConsulDouble::start();
    let (client, store, lock) = setup(&d).await;
    let p = policy();
    store
        .save_with_alerts(
            &rolled_back(&p),
            0,
            Some(lock.fence()),
            vec![entry("r1", 10)],
        )
        .await
        .unwrap();
    let port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let notifier = Notifier::new(webhook(port), dir.path(), Duration::from_secs(2)).unwrap();
    let shared = SharedOutbox::new(client.clone(), "greenlight");
    let t0: Timestamp = "2026-11-27T05:00:00Z".parse().unwrap();

    // The receiver is down: the entry stays, and is not tried again within its backoff.
    let report = shared.deliver(&notifier, lock.fence(), t0).await.unwrap();
    assert_eq!((report.delivered, report.retrying), (0, 1));
    assert_eq!(report.attempts, vec![("oncall".to_string(), false)]);
    assert_eq!(shared.depth(), 1);
    let soon = t0 + jiff::SignedDuration::from_millis(500);
    let report = shared.deliver(&notifier, lock.fence(), soon).await.unwrap();
    assert!(report.attempts.is_empty(), "{report:?}");
    assert_eq!(waiting(&client).await, vec!["r1"]);

    // Back: delivered once, then deleted.
    let hook = FakeHttp::start_on(
        port,
        Behaviour::Answer {
            status: 200,
            content_type: "application/json",
            body: "{}".into(),
        },
    );
    let later = t0 + jiff::SignedDuration::from_secs(2);
    let report = shared
        .deliver(&notifier, lock.fence(), later)
        .await
        .unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert!(waiting(&client).await.is_empty());
    assert_eq!(shared.depth(), 0);
    let received = hook.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].body.contains("checkout/rollback/r1"),
        "{}",
        received[0].body
    );
    // Nothing left to send.
    let report = shared
        .deliver(&notifier, lock.fence(), later)
        .await
        .unwrap();
    assert_eq!(report, DeliveryReport::default());
    assert_eq!(hook.received().len(), 1);
}
