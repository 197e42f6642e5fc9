//! The Consul client against the Consul API double, checking both against the API contract.

mod support;

use std::time::Duration;

use greenlight::consul::{
    ConsulClient, ConsulError, Lock, LockOptions, SessionBehavior, SessionRequest, TxnOp,
};
use support::consul_double::{effective_wait, ConsulDouble};

const T: Duration = Duration::from_secs(5);

fn client(d: &ConsulDouble) -> ConsulClient {
    ConsulClient::new(d.url(), None, T).unwrap()
}

async fn raw(
    method: reqwest::Method,
    url: String,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::new()
        .request(method, url)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn index_header(h: &reqwest::header::HeaderMap) -> u64 {
    h["X-Consul-Index"].to_str().unwrap().parse().unwrap()
}

/// Polls `f` (yielding to the runtime) until it holds; panics after 10 s.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn session(name: &str) -> SessionRequest {
    SessionRequest {
        name: name.into(),
        ttl: Some(Duration::from_secs(10)),
        lock_delay: Duration::from_secs(15),
        behavior: SessionBehavior::Release,
    }
}

#[tokio::test]
async fn kv_values_indexes_and_missing_keys() {
    let d = ConsulDouble::start();
    let c = client(&d);
    assert_eq!(c.get("app/missing").await.unwrap(), None);
    let (_, h, _) = raw(
        reqwest::Method::GET,
        format!("{}/v1/kv/app/missing", d.url()),
        vec![],
    )
    .await;
    assert!(index_header(&h) >= 1, "X-Consul-Index is never 0");
    assert_eq!(h["X-Consul-KnownLeader"], "true");

    c.put("app/a", b"hello").await.unwrap();
    let (e, idx) = c.get_with_index("app/a").await.unwrap();
    let e = e.unwrap();
    assert_eq!(e.value, b"hello");
    assert_eq!(e.create_index, e.modify_index);
    assert_eq!(idx, e.modify_index, "single-key index is its ModifyIndex");

    // An identical write does not bump ModifyIndex; a different one does.
    c.put("app/a", b"hello").await.unwrap();
    assert_eq!(
        c.get("app/a").await.unwrap().unwrap().modify_index,
        e.modify_index
    );
    c.put("app/a", b"world").await.unwrap();
    let e2 = c.get("app/a").await.unwrap().unwrap();
    assert!(e2.modify_index > e.modify_index);
    assert_eq!(e2.create_index, e.create_index);

    // raw, flags, keys with separator, recurse.
    let (s, _, body) = raw(
        reqwest::Method::PUT,
        format!("{}/v1/kv/app/b/c?flags=42", d.url()),
        b"x".to_vec(),
    )
    .await;
    assert_eq!((s, body.as_str()), (200, "true"));
    let (_, _, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/kv/app/a?raw", d.url()),
        vec![],
    )
    .await;
    assert_eq!(body, "world");
    let (_, _, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/kv/app/?keys&separator=/", d.url()),
        vec![],
    )
    .await;
    assert_eq!(body, r#"["app/a","app/b/"]"#);
    let (_, _, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/kv/nothing/?keys", d.url()),
        vec![],
    )
    .await;
    assert_eq!(body, "[]");
    let (list, idx) = c.list("app/").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].flags, 42);
    assert_eq!(idx, list.iter().map(|e| e.modify_index).max().unwrap());
    let (s, _, _) = raw(
        reqwest::Method::GET,
        format!("{}/v1/kv/none/?recurse", d.url()),
        vec![],
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn cas_and_delete_follow_the_contract() {
    let d = ConsulDouble::start();
    let c = client(&d);
    assert!(
        c.put_cas("k", b"1", 0).await.unwrap(),
        "cas=0 creates a missing key"
    );
    assert!(
        !c.put_cas("k", b"2", 0).await.unwrap(),
        "cas=0 refuses an existing key"
    );
    assert!(
        !c.put_cas("other", b"2", 7).await.unwrap(),
        "cas=N on a missing key is false"
    );
    let e = c.get("k").await.unwrap().unwrap();
    assert!(!c.put_cas("k", b"2", e.modify_index + 100).await.unwrap());
    assert!(c.put_cas("k", b"2", e.modify_index).await.unwrap());
    assert_eq!(c.get("k").await.unwrap().unwrap().value, b"2");

    let e = c.get("k").await.unwrap().unwrap();
    assert!(!c.delete_cas("k", e.modify_index + 1).await.unwrap());
    assert!(c.get("k").await.unwrap().is_some());
    assert!(c.delete_cas("k", e.modify_index).await.unwrap());
    assert!(c.get("k").await.unwrap().is_none());
    c.delete("k").await.unwrap(); // missing: still true

    c.put("t/a", b"1").await.unwrap();
    c.put("t/b", b"1").await.unwrap();
    c.put("u", b"1").await.unwrap();
    c.delete_tree("t/").await.unwrap();
    assert!(c.list("t/").await.unwrap().0.is_empty());
    assert!(c.get("u").await.unwrap().is_some());
}

#[tokio::test]
async fn bad_requests_get_the_documented_status() {
    let d = ConsulDouble::start();
    let u = d.url();
    use reqwest::Method as M;
    let (s, _, b) = raw(M::PUT, format!("{u}/v1/kv/k?cas=0&acquire=x"), vec![]).await;
    assert_eq!(s, 400);
    assert!(b.starts_with("Conflicting flags"), "{b}");
    let (s, _, _) = raw(M::PUT, format!("{u}/v1/kv/k?acquire=x&release=x"), vec![]).await;
    assert_eq!(s, 400);
    let (s, _, _) = raw(M::DELETE, format!("{u}/v1/kv/k?recurse&cas=1"), vec![]).await;
    assert_eq!(s, 400);
    let (s, _, _) = raw(M::PUT, format!("{u}/v1/kv/big"), vec![b'x'; 512 * 1024 + 1]).await;
    assert_eq!(s, 413);
    let (s, h, _) = raw(M::POST, format!("{u}/v1/kv/k"), vec![]).await;
    assert_eq!(s, 405);
    assert!(h.contains_key("Allow"));
    let (s, _, b) = raw(M::GET, format!("{u}/v1/kv/"), vec![]).await;
    assert_eq!((s, b.as_str()), (400, "Missing key name"));
    let (s, _, _) = raw(M::GET, format!("{u}/v1/kv/k?stale&consistent"), vec![]).await;
    assert_eq!(s, 400);
    let (s, _, b) = raw(M::GET, format!("{u}/v1/kv/k?index=1&wait=soon"), vec![]).await;
    assert_eq!((s, b.as_str()), (400, "Invalid wait time"));
    let (s, _, b) = raw(M::GET, format!("{u}/v1/kv/k?index=x"), vec![]).await;
    assert_eq!((s, b.as_str()), (400, "Invalid index"));
    let ops: Vec<_> = (0..129)
        .map(|i| TxnOp::set(&format!("k{i}"), b"v"))
        .collect();
    let (s, _, _) = raw(
        M::PUT,
        format!("{u}/v1/txn"),
        serde_json::to_vec(&ops).unwrap(),
    )
    .await;
    assert_eq!(s, 413);
}

#[test]
fn wait_parameter_defaults_and_clamps() {
    assert_eq!(effective_wait(None), Ok(Duration::from_secs(300)));
    assert_eq!(effective_wait(Some("0")), Ok(Duration::from_secs(300)));
    assert_eq!(effective_wait(Some("-1s")), Ok(Duration::from_secs(300)));
    assert_eq!(effective_wait(Some("15000ms")), Ok(Duration::from_secs(15)));
    assert_eq!(effective_wait(Some("1m30s")), Ok(Duration::from_secs(90)));
    assert_eq!(effective_wait(Some("20m")), Ok(Duration::from_secs(600)));
    assert_eq!(effective_wait(Some("30")), Err(()));
}

#[tokio::test]
async fn blocking_queries_wake_on_change() {
    let d = ConsulDouble::start();
    let c = client(&d);
    c.put("w/key", b"1").await.unwrap();
    let (_, idx) = c.get_with_index("w/key").await.unwrap();

    // Times out without a change: same index, same value.
    let (entries, next) = c
        .watch("w/key", idx, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(next, idx);
    assert_eq!(entries[0].value, b"1");

    let watcher = {
        let c = c.clone();
        tokio::spawn(async move { c.watch("w/key", idx, Duration::from_secs(60)).await })
    };
    c.put("w/other", b"x").await.unwrap(); // another key: does not wake a single-key query
    c.put("w/key", b"2").await.unwrap();
    let (entries, next) = watcher.await.unwrap().unwrap();
    assert_eq!(entries[0].value, b"2");
    assert!(next > idx);

    // A missing key blocks until it appears.
    let (_, idx) = c.get_with_index("w/later").await.unwrap();
    let watcher = {
        let c = c.clone();
        tokio::spawn(async move { c.watch("w/later", idx, Duration::from_secs(60)).await })
    };
    c.put("w/later", b"here").await.unwrap();
    let (entries, _) = watcher.await.unwrap().unwrap();
    assert_eq!(entries[0].value, b"here");

    // The watch loop over a prefix sees a deletion.
    let mut w = c.watcher("w/", Duration::from_secs(60));
    assert_eq!(w.next().await.unwrap().len(), 3);
    let waiting = tokio::spawn(async move { w.next().await });
    c.delete("w/other").await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().len(), 2);
}

#[tokio::test]
async fn transactions_are_atomic() {
    let d = ConsulDouble::start();
    let c = client(&d);
    c.put("x/b", b"1").await.unwrap();
    let b = c.get("x/b").await.unwrap().unwrap();

    let err = c
        .txn(&[
            TxnOp::set("x/a", b"new"),
            TxnOp::cas("x/b", b"2", b.modify_index + 5),
        ])
        .await
        .unwrap_err();
    match err {
        ConsulError::TxnRolledBack(errors) => {
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].0, 1);
            assert!(errors[0].1.contains("x/b"), "{errors:?}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    assert_eq!(
        c.get("x/a").await.unwrap(),
        None,
        "nothing applied on rollback"
    );

    let res = c
        .txn(&[
            TxnOp::set("x/a", b"new"),
            TxnOp::cas("x/b", b"2", b.modify_index),
        ])
        .await
        .unwrap();
    assert_eq!(res.entries.len(), 2);
    assert_eq!(
        res.entries[0].modify_index, res.entries[1].modify_index,
        "one commit index"
    );
    assert!(res.entries[0].value.is_empty(), "writes return no value");

    let res = c
        .txn(&[TxnOp::get("x/a"), TxnOp::get("x/b")])
        .await
        .unwrap();
    assert_eq!(res.entries[0].value, b"new");
    assert_eq!(res.entries[1].value, b"2");
    assert!(matches!(
        c.txn(&[TxnOp::get("x/none")]).await,
        Err(ConsulError::TxnRolledBack(_))
    ));
    assert!(matches!(
        c.txn(&[TxnOp::check_not_exists("x/a")]).await,
        Err(ConsulError::TxnRolledBack(_))
    ));
    let a = c.get("x/a").await.unwrap().unwrap();
    assert!(c
        .txn(&[TxnOp::check_index("x/a", a.modify_index + 1)])
        .await
        .is_err());
    c.txn(&[
        TxnOp::check_index("x/a", a.modify_index),
        TxnOp::delete_cas("x/a", a.modify_index),
    ])
    .await
    .unwrap();
    assert_eq!(c.get("x/a").await.unwrap(), None);

    let s = c.session_create(&session("txn")).await.unwrap();
    c.txn(&[TxnOp::lock("x/l", b"me", &s)]).await.unwrap();
    assert_eq!(
        c.get("x/l").await.unwrap().unwrap().session.as_deref(),
        Some(s.as_str())
    );
    c.txn(&[TxnOp::unlock("x/l", b"", &s)]).await.unwrap();
    assert_eq!(c.get("x/l").await.unwrap().unwrap().session, None);
}

#[tokio::test]
async fn sessions_create_renew_destroy_and_info() {
    let d = ConsulDouble::start();
    let c = client(&d);
    let id = c.session_create(&session("node-a")).await.unwrap();
    let info = c.session_info(&id).await.unwrap().unwrap();
    assert_eq!(info.name, "node-a");
    assert_eq!(info.ttl, "10s");
    assert_eq!(info.lock_delay, 15_000_000_000);
    assert_eq!(info.behavior, "release");
    c.session_renew(&id).await.unwrap();
    assert_eq!(d.renewals(&id), Some(1));
    c.session_destroy(&id).await.unwrap();
    c.session_destroy(&id).await.unwrap(); // idempotent
    assert_eq!(c.session_info(&id).await.unwrap(), None);
    assert!(matches!(
        c.session_renew(&id).await,
        Err(ConsulError::SessionNotFound(_))
    ));

    let mut short = session("short");
    short.ttl = Some(Duration::from_secs(5));
    match c.session_create(&short).await {
        Err(ConsulError::Http { status: 500, body }) => {
            assert!(body.contains("Invalid Session TTL"), "{body}")
        }
        other => panic!("expected a 500, got {other:?}"),
    }
    let (s, _, b) = raw(
        reqwest::Method::PUT,
        format!("{}/v1/session/create", d.url()),
        br#"{"Behavior":"explode"}"#.to_vec(),
    )
    .await;
    assert_eq!((s, b.as_str()), (500, "Invalid Behavior setting 'explode'"));
}

#[tokio::test]
async fn locks_follow_acquire_release_and_lock_delay_rules() {
    let d = ConsulDouble::start();
    let c = client(&d);
    let a = c.session_create(&session("a")).await.unwrap();
    let b = c.session_create(&session("b")).await.unwrap();

    assert!(c.acquire("svc/leader", b"a1", &a).await.unwrap());
    let e = c.get("svc/leader").await.unwrap().unwrap();
    assert_eq!((e.lock_index, e.session.as_deref()), (1, Some(a.as_str())));
    assert!(
        c.acquire("svc/leader", b"a2", &a).await.unwrap(),
        "holder may update"
    );
    let e = c.get("svc/leader").await.unwrap().unwrap();
    assert_eq!((e.lock_index, e.value.as_slice()), (1, b"a2".as_slice()));
    assert!(
        !c.acquire("svc/leader", b"b", &b).await.unwrap(),
        "held by another"
    );
    assert!(
        !c.release("svc/leader", b"", &b).await.unwrap(),
        "not the holder"
    );
    c.put("svc/leader", b"plain").await.unwrap();
    assert_eq!(
        c.get("svc/leader")
            .await
            .unwrap()
            .unwrap()
            .session
            .as_deref(),
        Some(a.as_str()),
        "a plain write keeps the holder"
    );
    assert!(c.release("svc/leader", b"", &a).await.unwrap());
    let e = c.get("svc/leader").await.unwrap().unwrap();
    assert_eq!((e.lock_index, e.session.as_deref()), (1, None));
    // An explicit release sets no lock-delay.
    assert!(c.acquire("svc/leader", b"b", &b).await.unwrap());
    assert_eq!(c.get("svc/leader").await.unwrap().unwrap().lock_index, 2);

    match c.acquire("svc/other", b"", "no-such-session").await {
        Err(ConsulError::Http { status: 500, body }) => assert!(body.contains("invalid session")),
        other => panic!("expected a 500, got {other:?}"),
    }

    // Invalidation releases the key and starts the lock-delay.
    let before = c.get("svc/leader").await.unwrap().unwrap();
    assert!(d.invalidate_session(&b));
    let e = c.get("svc/leader").await.unwrap().unwrap();
    assert_eq!(e.session, None);
    assert!(e.modify_index > before.modify_index);
    assert!(
        !c.acquire("svc/leader", b"a", &a).await.unwrap(),
        "lock-delay active"
    );
    d.advance_clock(Duration::from_secs(16));
    assert!(
        c.acquire("svc/leader", b"a", &a).await.unwrap(),
        "lock-delay over"
    );
}

#[tokio::test]
async fn session_ttl_expires_after_twice_the_ttl() {
    let d = ConsulDouble::start();
    let c = client(&d);
    let mut req = session("ttl");
    req.behavior = SessionBehavior::Delete;
    let s = c.session_create(&req).await.unwrap();
    assert!(c.acquire("ttl/key", b"v", &s).await.unwrap());
    d.advance_clock(Duration::from_secs(15));
    assert!(
        c.session_info(&s).await.unwrap().is_some(),
        "alive between TTL and 2×TTL"
    );
    c.session_renew(&s).await.unwrap();
    d.advance_clock(Duration::from_secs(15));
    assert!(
        c.session_info(&s).await.unwrap().is_some(),
        "renewal restarted the clock"
    );
    d.advance_clock(Duration::from_secs(6));
    assert!(c.session_info(&s).await.unwrap().is_none());
    assert_eq!(
        c.get("ttl/key").await.unwrap(),
        None,
        "delete behaviour removes held keys"
    );
}

#[tokio::test]
async fn acl_tokens_are_checked_and_never_echoed() {
    let d = ConsulDouble::start().with_acl("s3cret-token");
    let anonymous = client(&d);
    match anonymous.put("a", b"1").await {
        Err(ConsulError::PermissionDenied(text)) => assert!(text.starts_with("Permission denied")),
        other => panic!("expected 403, got {other:?}"),
    }
    let wrong = ConsulClient::new(d.url(), Some("other-token".into()), T).unwrap();
    let err = wrong.get("a").await.unwrap_err();
    assert_eq!(err, ConsulError::PermissionDenied("ACL not found".into()));
    assert!(!err.to_string().contains("other-token"));
    assert!(matches!(
        wrong.txn(&[TxnOp::get("a")]).await,
        Err(ConsulError::PermissionDenied(_))
    ));

    let good = ConsulClient::new(d.url(), Some("s3cret-token".into()), T).unwrap();
    good.put("a", b"1").await.unwrap();
    assert_eq!(good.get("a").await.unwrap().unwrap().value, b"1");
    assert!(!format!("{good:?}").contains("s3cret-token"));

    // Bearer and ?token= are accepted too; ?token= wins over the header.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/kv/a", d.url()))
        .header("Authorization", "bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::Client::new()
        .get(format!("{}/v1/kv/a?token=nope", d.url()))
        .header("X-Consul-Token", "s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn unreachable_agent_is_reported_and_recovers() {
    let d = ConsulDouble::start();
    let c = client(&d);
    c.put("k", b"1").await.unwrap();
    d.set_reachable(false);
    let err = c.get("k").await.unwrap_err();
    assert!(matches!(err, ConsulError::Unreachable(_)), "{err:?}");
    assert!(err.is_transient());
    d.set_reachable(true);
    assert_eq!(c.get("k").await.unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn lock_helper_holds_renews_detects_loss_and_releases() {
    let d = ConsulDouble::start();
    let c = client(&d);
    let mut opts = LockOptions::new("node-a", Duration::from_secs(10)).value("node-a");
    opts.renew_every = Duration::from_millis(50);
    opts.lock_delay = Duration::ZERO;
    opts.retry_after = Duration::from_millis(50);

    let lock = Lock::try_acquire(&c, "svc/leader", &opts)
        .await
        .unwrap()
        .unwrap();
    let fence = lock.fence().clone();
    assert_eq!((fence.key.as_str(), fence.lock_index), ("svc/leader", 1));
    assert!(lock.is_held());
    assert!(Lock::try_acquire(&c, "svc/leader", &opts)
        .await
        .unwrap()
        .is_none());
    until("two renewals", || {
        d.renewals(&fence.session).unwrap_or(0) >= 2
    })
    .await;

    // A follower waits; losing the session hands the lock over with a new LockIndex.
    let follower = {
        let (c, opts) = (c.clone(), opts.clone());
        tokio::spawn(async move { Lock::acquire(&c, "svc/leader", &opts).await })
    };
    d.invalidate_session(&fence.session);
    tokio::time::timeout(Duration::from_secs(30), lock.lost())
        .await
        .unwrap();
    assert!(!lock.is_held());
    let next = follower.await.unwrap().unwrap();
    assert_eq!(next.fence().lock_index, 2);
    assert_ne!(next.fence().session, fence.session);

    let s = next.fence().session.clone();
    next.release().await.unwrap();
    assert_eq!(c.get("svc/leader").await.unwrap().unwrap().session, None);
    assert!(!d.has_session(&s));

    // Dropping a held lock releases it and destroys its session in the background.
    let dropped = Lock::try_acquire(&c, "svc/leader", &opts)
        .await
        .unwrap()
        .unwrap();
    let s = dropped.fence().session.clone();
    drop(dropped);
    until("session destroyed after drop", || !d.has_session(&s)).await;
    assert_eq!(c.get("svc/leader").await.unwrap().unwrap().session, None);
}
