//! `/readyz` and `/metrics` of a running `greenlight run` say whether the instance can act:
//! Consul reachable, the metrics backend answering, and leadership confirmed recently. An outage
//! of either store shows within a few probes, long before the leader's session could expire.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::exposition::{scrape, value};
use support::stack::{listen_addr, Stack};
use support::{eventually, http};

const DEADLINE: Duration = Duration::from_secs(60);
/// Well under the session TTL of the config below: the outage must show before the lock could
/// be lost, i.e. from the probes and not from the lock's expiry.
const OUTAGE_SEEN_WITHIN: Duration = Duration::from_secs(20);

fn readyz(listen: SocketAddr) -> (u16, String) {
    http(listen, "GET", "/readyz", b"").expect("GET /readyz")
}

fn gauge(listen: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value(&scrape(listen), name, labels)
}

#[test]
fn readyz_and_leader_gauge_follow_consul_and_metrics_outages_before_the_lock_expires() {
    let mut stack = Stack::start();
    let listen = listen_addr();
    let vm_url = stack.vm().url();
    let cfg = stack.config("a", listen, &vm_url);
    // A long session TTL: the old behaviour (ready and leader until the lock is lost) would stay
    // green for at least a minute after Consul died.
    stack.edit_config(&cfg, "session_ttl = \"10s\"", "session_ttl = \"120s\"");
    let mut daemon = stack.daemon("a", &cfg, &[]);
    support::wait_ready(&mut daemon, listen, "/readyz", DEADLINE);
    eventually("the leader gauge at 1", DEADLINE, || {
        (gauge(listen, "greenlight_leader", &[]) == Some(1.0)).then_some(())
    });
    let m = scrape(listen);
    assert_eq!(value(&m, "greenlight_ready", &[]), Some(1.0));
    assert_eq!(
        value(&m, "greenlight_backend_up", &[("backend", "consul")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "greenlight_backend_up",
            &[("backend", "victoriametrics")]
        ),
        Some(1.0)
    );

    // Consul dies: not ready, not counted as the leader, Consul down.
    stack.consul.set_reachable(false);
    let body = eventually(
        "/readyz to fail while Consul is down",
        OUTAGE_SEEN_WITHIN,
        || {
            let (code, body) = readyz(listen);
            (code == 503).then_some(body)
        },
    );
    assert!(body.contains("Consul unreachable"), "{body}");
    eventually(
        "the leader gauge at 0 while Consul is down",
        OUTAGE_SEEN_WITHIN,
        || {
            let m = scrape(listen);
            (value(&m, "greenlight_leader", &[]) == Some(0.0)
                && value(&m, "greenlight_backend_up", &[("backend", "consul")]) == Some(0.0)
                && value(&m, "greenlight_ready", &[]) == Some(0.0))
            .then_some(())
        },
    );

    // Consul is back: the lock (TTL 120 s) was never lost, the probe confirms it again.
    stack.consul.set_reachable(true);
    support::wait_ready(&mut daemon, listen, "/readyz", DEADLINE);
    eventually("the leader gauge back at 1", DEADLINE, || {
        (gauge(listen, "greenlight_leader", &[]) == Some(1.0)).then_some(())
    });

    // The metrics backend dies: not ready, and the reason names it; still the leader.
    stack.vm_mut().kill();
    let body = eventually(
        "/readyz to fail while the metrics backend is down",
        OUTAGE_SEEN_WITHIN,
        || {
            let (code, body) = readyz(listen);
            (code == 503).then_some(body)
        },
    );
    assert!(
        body.contains("the metrics backend (victoriametrics) unreachable"),
        "{body}"
    );
    assert!(!body.contains("Consul"), "{body}");
    let m = scrape(listen);
    assert_eq!(
        value(
            &m,
            "greenlight_backend_up",
            &[("backend", "victoriametrics")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "greenlight_backend_up", &[("backend", "consul")]),
        Some(1.0)
    );
    assert_eq!(value(&m, "greenlight_leader", &[]), Some(1.0));
    assert_eq!(value(&m, "greenlight_ready", &[]), Some(0.0));
    daemon.assert_running();
}
