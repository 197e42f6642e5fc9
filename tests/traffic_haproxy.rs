//! The HAProxy Runtime API actuator against a real HAProxy 2.6 routing to two test servers.

mod support;

use std::time::Duration;

use greenlight::policy::{Policy, Weights};
use greenlight::traffic::{Actuator, HaproxyRuntime, Retry, TrafficError};
use support::haproxy::{runtime_unix, Haproxy, BACKEND};

fn policy() -> Policy {
    support::fixtures::policy(
        "checkout",
        support::fixtures::haproxy(BACKEND),
        &[1.0, 5.0, 10.0, 100.0],
        vec![],
    )
}

fn w(blue: u32, green: u32) -> Weights {
    Weights { blue, green }
}

fn runtime(urls: &[String]) -> HaproxyRuntime {
    HaproxyRuntime::from_urls(urls).unwrap().with_retry(Retry {
        attempts: 3,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    })
}

/// Runs blocking request loops off the async runtime.
async fn split(h: &Haproxy, n: usize) -> (usize, usize) {
    let counts = tokio::task::block_in_place(|| h.split(n));
    (
        counts.get("blue").copied().unwrap_or(0),
        counts.get("green").copied().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_written_through_the_runtime_api_split_the_traffic() {
    let h = Haproxy::start();
    let rt = runtime(&[h.tcp_url()]);
    let act = Actuator::Haproxy(rt.clone());
    let p = policy();
    assert_eq!(act.read(&p).await.unwrap(), w(100, 0));
    // 100 requests at 100/0 complete one round-robin cycle, so the next 100 requests are exactly
    // one cycle of the new weights.
    assert_eq!(split(&h, 100).await, (100, 0));

    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    assert_eq!(act.read(&p).await.unwrap(), w(90, 10));
    assert_eq!(split(&h, 100).await, (90, 10));
    let node = &rt.nodes()[0];
    assert_eq!(
        rt.get_weight(node, BACKEND, "green").await.unwrap(),
        (10, 0)
    );
    assert_eq!(
        h.runtime("get weight api_checkout/blue").trim(),
        "90 (initial 100)"
    );

    act.write(&p, w(90, 10), w(100, 0)).await.unwrap();
    assert_eq!(split(&h, 100).await, (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_errors_surface_with_its_text() {
    let h = Haproxy::start();
    let rt = runtime(&[h.tcp_url()]);
    let cases = [
        ("nosuch", "blue", "green", w(90, 10), "No such backend."),
        (BACKEND, "blue", "nosuch", w(90, 10), "No such server."),
        (
            BACKEND,
            "blue",
            "green",
            w(257, 0),
            "Absolute weight can only be between 0 and 256 inclusive.",
        ),
    ];
    for (backend, blue, green, weights, text) in cases {
        match rt.apply(backend, blue, green, weights).await {
            Err(TrafficError::Haproxy { message, .. }) => {
                assert!(message.contains(text), "{message}")
            }
            other => panic!("expected HAProxy's {text:?}, got {other:?}"),
        }
    }
    assert_eq!(
        h.runtime("get weight api_checkout/blue").trim(),
        "100 (initial 100)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_set_by_hand_is_reported_and_left_in_place() {
    let h = Haproxy::start();
    let act = Actuator::Haproxy(runtime(&[h.tcp_url()]));
    let p = policy();
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    assert_eq!(h.runtime("set weight api_checkout/green 50").trim(), "");
    match act.write(&p, w(90, 10), w(80, 20)).await {
        Err(TrafficError::Override { found }) => assert_eq!(found, w(90, 50)),
        other => panic!("expected Override, got {other:?}"),
    }
    assert_eq!(
        h.runtime("get weight api_checkout/green").trim(),
        "50 (initial 0)"
    );
    assert_eq!(
        h.runtime("get weight api_checkout/blue").trim(),
        "90 (initial 100)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_works_too() {
    let h = Haproxy::start();
    let act = Actuator::Haproxy(runtime(&[h.unix_url()]));
    let p = policy();
    assert_eq!(split(&h, 100).await, (100, 0));
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    assert_eq!(act.read(&p).await.unwrap(), w(90, 10));
    let reply = runtime_unix(&h.socket, "get weight api_checkout/green").unwrap();
    assert_eq!(reply.trim(), "10 (initial 0)");
    assert_eq!(split(&h, 100).await, (90, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_is_checked_before_any_is_written() {
    let a = Haproxy::start();
    let b = Haproxy::start();
    let act = Actuator::Haproxy(runtime(&[a.tcp_url(), b.unix_url()]));
    let p = policy();
    act.write(&p, w(100, 0), w(95, 5)).await.unwrap();
    for h in [&a, &b] {
        assert_eq!(
            h.runtime("get weight api_checkout/green").trim(),
            "5 (initial 0)"
        );
    }

    // A hand edit on the second node: nothing is written anywhere.
    b.runtime("set weight api_checkout/green 40");
    assert!(matches!(act.read(&p).await, Err(TrafficError::Diverged(_))));
    assert_eq!(
        act.write(&p, w(95, 5), w(90, 10)).await,
        Err(TrafficError::Override { found: w(95, 40) })
    );
    assert_eq!(
        a.runtime("get weight api_checkout/green").trim(),
        "5 (initial 0)"
    );
    b.runtime("set weight api_checkout/green 5");

    // A node that is down is retried and reported, and the others stay untouched.
    let down = format!("tcp://127.0.0.1:{}", support::free_port());
    let act = Actuator::Haproxy(runtime(&[a.tcp_url(), down.clone()]));
    match act.write(&p, w(95, 5), w(90, 10)).await {
        Err(TrafficError::Unreachable {
            target, attempts, ..
        }) => {
            assert!(target.contains(&down), "{target}");
            assert_eq!(attempts, 3);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(
        a.runtime("get weight api_checkout/green").trim(),
        "5 (initial 0)"
    );

    // `apply` (no compare) still tries every node and names the one that failed.
    let rt = runtime(&[down.clone(), a.tcp_url()]);
    let err = rt
        .apply(BACKEND, "blue", "green", w(90, 10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&down), "{err}");
    assert_eq!(
        a.runtime("get weight api_checkout/green").trim(),
        "10 (initial 0)"
    );
}
