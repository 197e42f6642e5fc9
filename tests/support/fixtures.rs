//! Policies built in code, for tests that need one without going through a file.

use std::time::Duration;

use greenlight::policy::{Check, MaxStepAction, Policy, Traffic, TrafficTarget};

/// A policy with the documented defaults, the given target, steps and checks.
pub fn policy(api: &str, target: TrafficTarget, steps: &[f64], checks: Vec<Check>) -> Policy {
    Policy {
        api: api.into(),
        source: None,
        interval: Duration::from_secs(60),
        steps: steps.to_vec(),
        min_step_duration: Duration::from_secs(600),
        min_green_requests_per_step: 2000,
        max_step_duration: None,
        on_max_step_duration: MaxStepAction::Hold,
        bake: None,
        release_query: None,
        advance_on_dwell_below: None,
        false_rollback_rate: 0.01,
        false_advance_rate: 0.05,
        warmup_intervals: 1,
        auto_start: true,
        no_data_alert_after: Duration::from_secs(600),
        stuck_alert_after: Duration::from_secs(3 * 3600),
        traffic: Traffic {
            target,
            total_weight: 100,
            haproxy_backend: None,
            sticky: None,
        },
        schedule: None,
        checks,
        alerts: vec![],
        alert_routes: Default::default(),
        data_quality: Default::default(),
        access: Default::default(),
        approval: Default::default(),
        labels: Default::default(),
        clusters: Default::default(),
    }
}

/// Weights in two Consul KV keys.
pub fn consul_keys(blue: impl Into<String>, green: impl Into<String>) -> TrafficTarget {
    TrafficTarget::ConsulKeys {
        blue: blue.into(),
        green: green.into(),
    }
}

/// Weights set through the HAProxy Runtime API on servers `blue` and `green` of `backend`.
pub fn haproxy(backend: &str) -> TrafficTarget {
    TrafficTarget::Haproxy {
        backend: backend.into(),
        blue: "blue".into(),
        green: "green".into(),
    }
}

/// A client and state store on the Consul double `d` (prefix `greenlight`), holding the leader
/// lock (no lock-delay).
pub async fn leader(
    d: &super::consul_double::ConsulDouble,
) -> (
    greenlight::consul::ConsulClient,
    greenlight::daemon::StateStore,
    greenlight::consul::Lock,
) {
    use greenlight::consul::{ConsulClient, Lock, LockOptions};
    let client = ConsulClient::new(d.url(), None, Duration::from_secs(5)).unwrap();
    let store = greenlight::daemon::StateStore::new(client.clone(), "greenlight");
    let mut opts = LockOptions::new("a", Duration::from_secs(10));
    opts.lock_delay = Duration::ZERO;
    let lock = Lock::try_acquire(&client, &store.leader_key(), &opts)
        .await
        .unwrap()
        .expect("lock");
    (client, store, lock)
}
