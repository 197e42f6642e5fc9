//! The HAProxy Runtime API actuator against a real HAProxy 2.6 routing to two test servers.

mod support;

use std::time::Duration;

use greenlight::consul::{ConsulClient, Lock, LockOptions};
use greenlight::policy::{Policy, Weights};
use greenlight::traffic::{Actuator, HaproxyRuntime, MemoryTraffic, Retry, TrafficError};
use support::consul_double::ConsulDouble;
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

fn green(h: &Haproxy) -> String {
    h.runtime("get weight api_checkout/green")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_reapplied_not_reported_as_a_hand_edit() {
    let mut h = Haproxy::start();
    let node = h.tcp_url();
    let act = Actuator::Haproxy(runtime(std::slice::from_ref(&node)));
    let p = policy();
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    assert_eq!(act.read(&p).await.unwrap(), w(90, 10));
    let before = h.answering_pid();

    tokio::task::block_in_place(|| h.reload());
    assert_ne!(h.answering_pid(), before);
    assert_eq!(green(&h), "0 (initial 0)");

    // Reported as a reload, with the node and what it came back with; not as an override.
    let err = act.read(&p).await.unwrap_err();
    assert_eq!(
        err,
        TrafficError::Reloaded {
            nodes: vec![node.clone()],
            found: vec![(node.clone(), w(100, 0))],
        }
    );
    assert!(err.finishable(w(90, 10), w(90, 10)), "{err}");
    // Still a reload on the next look, until the weights are set again.
    assert!(matches!(
        act.read(&p).await,
        Err(TrafficError::Reloaded { .. })
    ));

    // Writing the decided weights again puts them back on the new process.
    act.write(&p, w(90, 10), w(90, 10)).await.unwrap();
    assert_eq!(green(&h), "10 (initial 0)");
    assert_eq!(act.read(&p).await.unwrap(), w(90, 10));
    // The new process's round-robin starts mid-cycle: about one request in ten goes to green.
    let (_, to_green) = split(&h, 100).await;
    assert!((8..=12).contains(&to_green), "{to_green} of 100 to green");

    // A reload between two steps: the next step lands on the reloaded node.
    tokio::task::block_in_place(|| h.reload());
    act.write(&p, w(90, 10), w(80, 20)).await.unwrap();
    assert_eq!(green(&h), "20 (initial 0)");
    assert_eq!(act.read(&p).await.unwrap(), w(80, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_server_state_file_a_reload_keeps_greenlights_weights() {
    let mut h = Haproxy::start_with_state_file();
    let act = Actuator::Haproxy(runtime(&[h.tcp_url()]));
    let p = policy();
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    let before = h.answering_pid();

    h.save_server_state();
    tokio::task::block_in_place(|| h.reload());
    assert_ne!(h.answering_pid(), before);
    // The new process loaded the saved weights: nothing lost, nothing to re-apply.
    assert_eq!(green(&h), "10 (initial 0)");
    assert_eq!(act.read(&p).await.unwrap(), w(90, 10));
    act.write(&p, w(90, 10), w(80, 20)).await.unwrap();
    assert_eq!(green(&h), "20 (initial 0)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_before_greenlight_first_looks_is_told_by_the_process_start() {
    let mut h = Haproxy::start();
    let p = policy();
    let url = h.tcp_url();
    let fresh = || Actuator::Haproxy(runtime(std::slice::from_ref(&url)));
    fresh().write(&p, w(100, 0), w(90, 10)).await.unwrap();
    let written = jiff::Timestamp::now();
    // HAProxy reports its start to the second: reload in a later second than the write.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while jiff::Timestamp::now().as_second() <= written.as_second() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| h.reload());

    // A greenlight that never saw the old process, without the hint: looks like a hand edit.
    assert_eq!(fresh().read(&p).await.unwrap(), w(100, 0));
    // Told when its weights were last live, it knows the process started after that.
    let act = fresh();
    match act.read_since(&p, Some(written)).await {
        Err(e @ TrafficError::Reloaded { .. }) => assert!(e.finishable(w(90, 10), w(90, 10))),
        other => panic!("expected Reloaded, got {other:?}"),
    }
    act.write(&p, w(90, 10), w(90, 10)).await.unwrap();
    assert_eq!(green(&h), "10 (initial 0)");

    // A hand edit on a process that was already running then is still an override.
    let written = jiff::Timestamp::now();
    h.runtime("set weight api_checkout/blue 100; set weight api_checkout/green 0");
    let act = fresh();
    assert_eq!(act.read_since(&p, Some(written)).await.unwrap(), w(100, 0));
    assert_eq!(
        act.write(&p, w(90, 10), w(80, 20)).await,
        Err(TrafficError::Override { found: w(100, 0) })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reloaded_node_among_several_is_named_and_reapplied() {
    let mut a = Haproxy::start();
    let b = Haproxy::start();
    let act = Actuator::Haproxy(runtime(&[a.tcp_url(), b.unix_url()]));
    let p = policy();
    act.write(&p, w(100, 0), w(95, 5)).await.unwrap();
    assert_eq!(act.read(&p).await.unwrap(), w(95, 5));

    tokio::task::block_in_place(|| a.reload());
    let err = act.read(&p).await.unwrap_err();
    assert_eq!(
        err,
        TrafficError::Reloaded {
            nodes: vec![a.tcp_url()],
            found: vec![(a.tcp_url(), w(100, 0)), (b.unix_url(), w(95, 5))],
        }
    );
    assert!(err.finishable(w(95, 5), w(95, 5)));
    // The other node shows something greenlight never set: not finishable as is.
    assert!(!err.finishable(w(90, 10), w(90, 10)));

    act.write(&p, w(95, 5), w(95, 5)).await.unwrap();
    for h in [&a, &b] {
        assert_eq!(green(h), "5 (initial 0)");
    }
    assert_eq!(act.read(&p).await.unwrap(), w(95, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_back_to_the_configured_weights_is_still_an_override() {
    let mut h = Haproxy::start();
    let act = Actuator::Haproxy(runtime(&[h.tcp_url()]));
    let p = policy();
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();

    // Same process, weights set by hand to exactly the configured ones.
    h.runtime("set weight api_checkout/blue 100; set weight api_checkout/green 0");
    assert_eq!(act.read(&p).await.unwrap(), w(100, 0));
    assert_eq!(
        act.write(&p, w(90, 10), w(80, 20)).await,
        Err(TrafficError::Override { found: w(100, 0) })
    );
    assert_eq!(green(&h), "0 (initial 0)");

    // After a reload has been re-applied, a later hand edit is an override again.
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    tokio::task::block_in_place(|| h.reload());
    act.write(&p, w(90, 10), w(90, 10)).await.unwrap();
    h.runtime("set weight api_checkout/green 0");
    assert_eq!(act.read(&p).await.unwrap(), w(90, 0));
    assert_eq!(
        act.write(&p, w(90, 10), w(80, 20)).await,
        Err(TrafficError::Override { found: w(90, 0) })
    );
    h.runtime("set weight api_checkout/blue 100");
    assert_eq!(
        act.write(&p, w(90, 10), w(80, 20)).await,
        Err(TrafficError::Override { found: w(100, 0) })
    );
    assert_eq!(green(&h), "0 (initial 0)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_with_a_node_down_lands_on_the_others_and_names_the_missing_node() {
    let a = Haproxy::start();
    let b = Haproxy::start();
    let p = policy();
    Actuator::Haproxy(runtime(&[a.tcp_url(), b.tcp_url()]))
        .write(&p, w(100, 0), w(90, 10))
        .await
        .unwrap();

    let down = format!("tcp://127.0.0.1:{}", support::free_port());
    let act = Actuator::Haproxy(runtime(&[a.tcp_url(), down.clone(), b.tcp_url()]));
    // The read names the missing node and says what the others show, enough to decide.
    match act.read(&p).await {
        Err(TrafficError::NodesDown {
            weights,
            down: missing,
        }) => {
            assert_eq!(weights, w(90, 10));
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].0, down);
            assert!(matches!(missing[0].1, TrafficError::Unreachable { .. }));
        }
        other => panic!("expected NodesDown, got {other:?}"),
    }
    // With every node down there is nothing to go by.
    assert!(matches!(
        Actuator::Haproxy(runtime(std::slice::from_ref(&down)))
            .read(&p)
            .await,
        Err(TrafficError::Unreachable { .. })
    ));
    // A step forward with a node down writes nothing.
    assert!(matches!(
        act.write(&p, w(90, 10), w(80, 20)).await,
        Err(TrafficError::Unreachable { .. })
    ));
    assert_eq!(green(&a), "10 (initial 0)");

    // The rollback reaches every node that answers.
    let err = act.write(&p, w(90, 10), w(100, 0)).await.unwrap_err();
    match &err {
        TrafficError::Partial { applied, failed } => {
            assert_eq!(applied, &vec![a.tcp_url(), b.tcp_url()]);
            assert_eq!(failed.len(), 1, "{err}");
            assert_eq!(failed[0].0, down);
            assert!(
                matches!(failed[0].1, TrafficError::Unreachable { .. }),
                "{err}"
            );
        }
        other => panic!("expected Partial, got {other:?}"),
    }
    assert!(err.to_string().contains(&down), "{err}");
    for h in [&a, &b] {
        assert_eq!(green(h), "0 (initial 0)");
    }
    assert_eq!(split(&a, 100).await, (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_not_stopped_by_a_node_changed_by_hand() {
    let a = Haproxy::start();
    let b = Haproxy::start();
    let act = Actuator::Haproxy(runtime(&[a.tcp_url(), b.tcp_url()]));
    let p = policy();
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    a.runtime("set weight api_checkout/green 40");

    let err = act.write(&p, w(90, 10), w(100, 0)).await.unwrap_err();
    assert_eq!(
        err,
        TrafficError::Partial {
            applied: vec![b.tcp_url()],
            failed: vec![(a.tcp_url(), TrafficError::Override { found: w(90, 40) })],
        }
    );
    assert_eq!(green(&b), "0 (initial 0)");
    // The hand edit is left in place.
    assert_eq!(green(&a), "40 (initial 0)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_write_is_finished_by_the_next_write() {
    let a = Haproxy::start();
    let b = Haproxy::start();
    let act = Actuator::Haproxy(runtime(&[a.tcp_url(), b.tcp_url()]));
    let p = policy();
    act.write(&p, w(100, 0), w(90, 10)).await.unwrap();
    // The step 90/10 → 80/20 reached only the first node.
    Actuator::Haproxy(runtime(&[a.tcp_url()]))
        .write(&p, w(90, 10), w(80, 20))
        .await
        .unwrap();

    let err = act.read(&p).await.unwrap_err();
    assert_eq!(
        err,
        TrafficError::Diverged(vec![(a.tcp_url(), w(80, 20)), (b.tcp_url(), w(90, 10))])
    );
    assert!(err.finishable(w(90, 10), w(80, 20)));
    assert!(!err.finishable(w(80, 20), w(70, 30)));

    act.write(&p, w(90, 10), w(80, 20)).await.unwrap();
    assert_eq!(act.read(&p).await.unwrap(), w(80, 20));
    for h in [&a, &b] {
        assert_eq!(green(h), "20 (initial 0)");
    }
    // A rollback from the half-done step finishes too.
    Actuator::Haproxy(runtime(&[b.tcp_url()]))
        .write(&p, w(80, 20), w(100, 0))
        .await
        .unwrap();
    act.write(&p, w(80, 20), w(100, 0)).await.unwrap();
    assert_eq!(act.read(&p).await.unwrap(), w(100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_a_lost_fence_is_refused() {
    let h = Haproxy::start();
    let d = ConsulDouble::start();
    let consul = ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap();
    let mut opts = LockOptions::new("node-a", Duration::from_secs(10));
    opts.renew_every = Duration::from_millis(50);
    let lock = Lock::try_acquire(&consul, "greenlight/leader", &opts)
        .await
        .unwrap()
        .expect("lock acquired");
    let fence = lock.fence().clone();
    let act = Actuator::Haproxy(runtime(&[h.tcp_url()]));
    let p = policy();

    // While held, fenced writes go through.
    assert!(fence.is_held());
    act.write_fenced(&p, w(100, 0), w(90, 10), Some(&fence))
        .await
        .unwrap();
    assert_eq!(green(&h), "10 (initial 0)");

    // Another instance takes over: the lock task notices, and nothing is written any more.
    d.invalidate_session(&fence.session);
    tokio::time::timeout(Duration::from_secs(30), lock.lost())
        .await
        .expect("lock loss noticed");
    assert!(!fence.is_held());
    assert_eq!(
        act.write_fenced(&p, w(90, 10), w(80, 20), Some(&fence))
            .await,
        Err(TrafficError::LockLost)
    );
    // Not even a rollback.
    assert_eq!(
        act.write_fenced(&p, w(90, 10), w(100, 0), Some(&fence))
            .await,
        Err(TrafficError::LockLost)
    );
    assert_eq!(green(&h), "10 (initial 0)");

    // The memory target honours the fence the same way.
    let mem = MemoryTraffic::new();
    mem.set(&p.api, w(90, 10));
    assert_eq!(
        Actuator::Memory(mem.clone())
            .write_fenced(&p, w(90, 10), w(80, 20), Some(&fence))
            .await,
        Err(TrafficError::LockLost)
    );
    assert_eq!(mem.get(&p.api), Some(w(90, 10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lock_fences_off_haproxy_writes() {
    let h = Haproxy::start();
    let d = ConsulDouble::start();
    let consul = ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap();
    let opts = LockOptions::new("node-a", Duration::from_secs(10));
    let lock = Lock::try_acquire(&consul, "greenlight/leader", &opts)
        .await
        .unwrap()
        .expect("lock acquired");
    let fence = lock.fence().clone();
    lock.release().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fence.is_held() {
        assert!(tokio::time::Instant::now() < deadline, "fence still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let act = Actuator::Haproxy(runtime(&[h.tcp_url()]));
    assert_eq!(
        act.write_fenced(&policy(), w(100, 0), w(90, 10), Some(&fence))
            .await,
        Err(TrafficError::LockLost)
    );
    assert_eq!(green(&h), "0 (initial 0)");
}
