//! Weight actuators over Consul KV (against the Consul API double) and in memory.

mod support;

use std::time::Duration;

use greenlight::consul::ConsulClient;
use greenlight::policy::{Policy, Weights};
use greenlight::traffic::{Actuator, ConsulKv, MemoryTraffic, Retry, TrafficError};
use support::consul_double::ConsulDouble;

const BLUE: &str = "haproxy/checkout/weights/blue";
const GREEN: &str = "haproxy/checkout/weights/green";

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

fn fast_retry(attempts: u32) -> Retry {
    Retry {
        attempts,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    }
}

fn actuator(d: &ConsulDouble, token: Option<&str>) -> (Actuator, ConsulKv, ConsulClient) {
    let client =
        ConsulClient::new(d.url(), token.map(String::from), Duration::from_secs(5)).unwrap();
    let kv = ConsulKv::new(client.clone()).with_retry(fast_retry(3));
    (Actuator::ConsulKv(kv.clone()), kv, client)
}

#[tokio::test]
async fn missing_keys_are_reported_then_initialized_once() {
    let d = ConsulDouble::start();
    let (act, kv, _) = actuator(&d, None);
    let p = policy();
    match act.read(&p).await {
        Err(TrafficError::Missing { keys }) => {
            assert_eq!(keys, vec![BLUE.to_string(), GREEN.to_string()])
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    assert!(kv.initialize(&p, w(100, 0)).await.unwrap());
    assert_eq!(act.read(&p).await.unwrap(), w(100, 0));
    // Existing keys are never re-initialized.
    d.put(GREEN, b"7");
    assert!(!kv.initialize(&p, w(100, 0)).await.unwrap());
    assert_eq!(act.read(&p).await.unwrap(), w(100, 7));
}

#[tokio::test]
async fn write_changes_both_keys_in_one_transaction() {
    let d = ConsulDouble::start();
    let (act, kv, client) = actuator(&d, None);
    let p = policy();
    kv.initialize(&p, w(100, 0)).await.unwrap();
    act.write(&p, w(100, 0), w(95, 5)).await.unwrap();
    let blue = client.get(BLUE).await.unwrap().unwrap();
    let green = client.get(GREEN).await.unwrap().unwrap();
    assert_eq!(
        (blue.value.as_slice(), green.value.as_slice()),
        (b"95".as_slice(), b"5".as_slice())
    );
    assert_eq!(
        blue.modify_index, green.modify_index,
        "both keys changed by one commit"
    );
    assert_eq!(act.read(&p).await.unwrap(), w(95, 5));
}

#[tokio::test]
async fn a_hand_edit_makes_write_return_override_and_is_kept() {
    let d = ConsulDouble::start();
    let (act, kv, _) = actuator(&d, None);
    let p = policy();
    kv.initialize(&p, w(95, 5)).await.unwrap();
    d.put(GREEN, b"30"); // an operator moves green by hand
    match act.write(&p, w(95, 5), w(90, 10)).await {
        Err(TrafficError::Override { found }) => assert_eq!(found, w(95, 30)),
        other => panic!("expected Override, got {other:?}"),
    }
    assert_eq!(d.value(BLUE).unwrap(), b"95");
    assert_eq!(d.value(GREEN).unwrap(), b"30");
}

#[tokio::test]
async fn a_non_integer_value_is_reported() {
    let d = ConsulDouble::start();
    let (act, _, _) = actuator(&d, None);
    d.put(BLUE, b"lots");
    d.put(GREEN, b"0");
    match act.read(&policy()).await {
        Err(TrafficError::BadValue { key, value }) => {
            assert_eq!((key.as_str(), value.as_str()), (BLUE, "lots"))
        }
        other => panic!("expected BadValue, got {other:?}"),
    }
}

#[tokio::test]
async fn permission_denied_is_clear_not_retried_and_hides_the_token() {
    let d = ConsulDouble::start().with_acl("admin-token");
    d.put(BLUE, b"100");
    d.put(GREEN, b"0");
    let (act, _, _) = actuator(&d, Some("wrong-token-123"));
    let before = d.requests();
    let err = act.write(&policy(), w(100, 0), w(95, 5)).await.unwrap_err();
    assert_eq!(d.requests() - before, 1, "a 403 is not retried");
    assert!(matches!(err, TrafficError::PermissionDenied(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("permission denied"), "{text}");
    assert!(text.contains("ACL not found"), "{text}");
    assert!(!text.contains("wrong-token-123"), "{text}");
    assert!(!format!("{act:?}").contains("wrong-token-123"));

    let (anonymous, _, _) = actuator(&d, None);
    let err = anonymous.read(&policy()).await.unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    assert_eq!(d.value(GREEN).unwrap(), b"0");
}

#[tokio::test]
async fn an_unreachable_agent_is_retried_then_reported() {
    let d = ConsulDouble::start();
    let (_, kv, _) = actuator(&d, None);
    let p = policy();
    kv.initialize(&p, w(100, 0)).await.unwrap();
    d.set_reachable(false);
    // A fresh client, so no pooled connection from before the outage is involved.
    let (act, kv, _) = actuator(&d, None);
    match act.write(&p, w(100, 0), w(95, 5)).await {
        Err(TrafficError::Unreachable { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(
        d.refused_connections(),
        3,
        "each attempt reached for the agent"
    );
    assert_eq!(d.value(GREEN).unwrap(), b"0");

    // The agent comes back while retries are still running: the write goes through.
    let refused = d.refused_connections();
    let kv = kv.with_retry(Retry {
        attempts: 50,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(20),
    });
    let act = Actuator::ConsulKv(kv);
    let writer = tokio::spawn({
        let p = p.clone();
        async move { act.write(&p, w(100, 0), w(95, 5)).await }
    });
    while d.refused_connections() == refused {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.set_reachable(true);
    writer.await.unwrap().unwrap();
    assert_eq!(d.value(GREEN).unwrap(), b"5");
}

#[tokio::test]
async fn memory_actuator_is_a_compare_and_set_too() {
    let mem = MemoryTraffic::new();
    let act = Actuator::Memory(mem.clone());
    let p = policy();
    assert!(matches!(
        act.read(&p).await,
        Err(TrafficError::Missing { .. })
    ));
    mem.set("checkout", w(100, 0));
    act.write(&p, w(100, 0), w(99, 1)).await.unwrap();
    assert_eq!(act.read(&p).await.unwrap(), w(99, 1));
    mem.manual_edit("checkout", w(50, 50));
    assert_eq!(
        act.write(&p, w(99, 1), w(95, 5)).await,
        Err(TrafficError::Override { found: w(50, 50) })
    );
    assert_eq!(mem.get("checkout"), Some(w(50, 50)));
}

#[tokio::test]
async fn state_and_weights_are_read_in_one_transaction_or_left_to_their_own_reads() {
    let d = ConsulDouble::start();
    let (_, kv, _) = actuator(&d, None);
    let p = policy();
    const STATE: &str = "greenlight/state/checkout";
    // Weight keys missing: no combined answer (the weights' own read reports them missing).
    assert_eq!(kv.read_along(&p, STATE).await.unwrap(), None);
    d.put(BLUE, b"90");
    d.put(GREEN, b"10");
    // No state yet: an entry without a ModifyIndex, and the split, in one request.
    let before = d.requests();
    let (state, live) = kv.read_along(&p, STATE).await.unwrap().unwrap();
    assert_eq!(d.requests() - before, 1);
    assert_eq!((state.key.as_str(), state.modify_index), (STATE, 0));
    assert_eq!(ConsulKv::split_of(&p, &live, None).unwrap(), w(90, 10));
    d.put(STATE, b"{}");
    let (state, _) = kv.read_along(&p, STATE).await.unwrap().unwrap();
    assert!(state.modify_index > 0);
    assert_eq!(state.value, b"{}");
    // A value that is not a weight is reported as the weights' own read reports it.
    d.put(GREEN, b"ten");
    let (_, live) = kv.read_along(&p, STATE).await.unwrap().unwrap();
    assert!(matches!(
        ConsulKv::split_of(&p, &live, None),
        Err(TrafficError::BadValue { .. })
    ));
}

#[tokio::test]
async fn a_combined_read_whose_entries_acls_filter_out_is_left_to_the_separate_reads() {
    let d = ConsulDouble::start().with_acl("secret");
    d.put(BLUE, b"90");
    d.put(GREEN, b"10");
    // Anonymous: Consul answers the transaction read with its entries filtered out.
    let (_, kv, _) = actuator(&d, None);
    assert_eq!(
        kv.read_along(&policy(), "greenlight/state/checkout")
            .await
            .unwrap(),
        None
    );
    let (_, kv, _) = actuator(&d, Some("secret"));
    assert!(kv
        .read_along(&policy(), "greenlight/state/checkout")
        .await
        .unwrap()
        .is_some());
}
