//! Whether this instance can act, from the outcomes of its probes: the pure rule behind
//! `/readyz`, `greenlight_ready`, `greenlight_leader` and `greenlight_backend_up`.
//!
//! Every tick the daemon probes Consul (reading the leader key, which also confirms that this
//! instance's session still holds it) and the metrics backend (a constant instant query), each
//! bounded in time. An instance is ready when its policies are loaded and both stores answered
//! recently; a leader is counted as one only while its leadership was confirmed recently. A
//! standby with healthy stores is ready: it can take over.

use std::time::{Duration, Instant};

/// The outcome of one probe and when it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub at: Instant,
    pub outcome: Result<(), String>,
}

impl Probe {
    pub fn ok(at: Instant) -> Probe {
        Probe {
            at,
            outcome: Ok(()),
        }
    }

    pub fn failed(at: Instant, error: impl Into<String>) -> Probe {
        Probe {
            at,
            outcome: Err(error.into()),
        }
    }
}

/// What this instance believes about the leader lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standby,
    /// Holds the lock; Consul last confirmed this session as its holder at `confirmed_at`.
    Leader {
        confirmed_at: Instant,
    },
}

/// Everything [`assess`] looks at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub now: Instant,
    /// A probe or confirmation older than this no longer counts.
    pub fresh_for: Duration,
    pub policies: usize,
    pub policy_errors: usize,
    pub role: Role,
    pub consul: Option<&'a Probe>,
    /// The metrics backend's kind (`victoriametrics`, `prometheus`) and its last probe.
    pub metrics: (&'a str, Option<&'a Probe>),
}

/// The verdict, with one sentence per reason it is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub ready: bool,
    /// Leading, with the leadership confirmed recently (`greenlight_leader`).
    pub leader: bool,
    /// Whether the last probe of each store succeeded recently (`None`: not probed yet).
    pub consul_up: Option<bool>,
    pub metrics_up: Option<bool>,
    pub problems: Vec<String>,
}

/// Decides readiness and the health gauges.
pub fn assess(i: &Inputs<'_>) -> Assessment {
    let mut problems = Vec::new();
    if i.policies == 0 {
        problems.push(format!(
            "no policy loaded ({} policy files rejected)",
            i.policy_errors
        ));
    }
    let consul_up = store_up(i, "Consul", i.consul, &mut problems);
    let (kind, metrics) = i.metrics;
    let metrics_up = store_up(
        i,
        &format!("the metrics backend ({kind})"),
        metrics,
        &mut problems,
    );
    let leader = match i.role {
        Role::Standby => false,
        Role::Leader { confirmed_at } => {
            let age = i.now.saturating_duration_since(confirmed_at);
            let confirmed = age <= i.fresh_for && consul_up == Some(true);
            if !confirmed {
                problems.push(format!(
                    "leadership not confirmed by Consul for {}s",
                    age.as_secs()
                ));
            }
            confirmed
        }
    };
    Assessment {
        ready: problems.is_empty(),
        leader,
        consul_up,
        metrics_up,
        problems,
    }
}

fn store_up(
    i: &Inputs<'_>,
    what: &str,
    probe: Option<&Probe>,
    problems: &mut Vec<String>,
) -> Option<bool> {
    let Some(p) = probe else {
        problems.push(format!("{what} not probed yet"));
        return None;
    };
    let age = i.now.saturating_duration_since(p.at);
    match &p.outcome {
        Err(e) => {
            problems.push(format!("{what} unreachable: {e}"));
            Some(false)
        }
        Ok(()) if age > i.fresh_for => {
            problems.push(format!("{what} has not answered for {}s", age.as_secs()));
            Some(false)
        }
        Ok(()) => Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_secs(5);

    fn inputs<'a>(
        now: Instant,
        role: Role,
        consul: Option<&'a Probe>,
        metrics: Option<&'a Probe>,
    ) -> Inputs<'a> {
        Inputs {
            now,
            fresh_for: FRESH,
            policies: 2,
            policy_errors: 0,
            role,
            consul,
            metrics: ("victoriametrics", metrics),
        }
    }

    #[test]
    fn a_confirmed_leader_with_both_stores_answering_is_ready() {
        let t0 = Instant::now();
        let ok = Probe::ok(t0);
        let a = assess(&inputs(
            t0 + Duration::from_secs(1),
            Role::Leader { confirmed_at: t0 },
            Some(&ok),
            Some(&ok),
        ));
        assert_eq!(
            a,
            Assessment {
                ready: true,
                leader: true,
                consul_up: Some(true),
                metrics_up: Some(true),
                problems: vec![],
            }
        );
    }

    #[test]
    fn a_standby_is_ready_but_not_a_leader() {
        let t0 = Instant::now();
        let ok = Probe::ok(t0);
        let a = assess(&inputs(t0, Role::Standby, Some(&ok), Some(&ok)));
        assert!(a.ready && !a.leader, "{a:?}");
    }

    #[test]
    fn a_metrics_outage_makes_the_instance_unready_and_names_the_backend() {
        let t0 = Instant::now();
        let ok = Probe::ok(t0);
        let down = Probe::failed(t0, "connection refused");
        let a = assess(&inputs(
            t0,
            Role::Leader { confirmed_at: t0 },
            Some(&ok),
            Some(&down),
        ));
        assert!(!a.ready);
        assert!(a.leader, "Consul still confirms the lock");
        assert_eq!(a.metrics_up, Some(false));
        assert_eq!(
            a.problems,
            vec!["the metrics backend (victoriametrics) unreachable: connection refused"]
        );
    }

    #[test]
    fn consul_down_makes_the_leader_count_as_none_at_once() {
        let t0 = Instant::now();
        let ok = Probe::ok(t0);
        let down = Probe::failed(t0 + Duration::from_secs(1), "timed out");
        let a = assess(&inputs(
            t0 + Duration::from_secs(1),
            Role::Leader { confirmed_at: t0 },
            Some(&down),
            Some(&ok),
        ));
        assert!(!a.ready && !a.leader, "{a:?}");
        assert_eq!(a.consul_up, Some(false));
    }

    #[test]
    fn probes_and_confirmations_expire() {
        let t0 = Instant::now();
        let ok = Probe::ok(t0);
        let later = t0 + FRESH + Duration::from_secs(1);
        let a = assess(&inputs(
            later,
            Role::Leader { confirmed_at: t0 },
            Some(&ok),
            Some(&ok),
        ));
        assert!(!a.ready && !a.leader);
        assert_eq!((a.consul_up, a.metrics_up), (Some(false), Some(false)));
        assert_eq!(
            a.problems,
            vec![
                "Consul has not answered for 6s",
                "the metrics backend (victoriametrics) has not answered for 6s",
                "leadership not confirmed by Consul for 6s",
            ]
        );
    }

    #[test]
    fn nothing_probed_or_no_policy_is_not_ready() {
        let t0 = Instant::now();
        let mut i = inputs(t0, Role::Standby, None, None);
        i.policies = 0;
        i.policy_errors = 3;
        let a = assess(&i);
        assert!(!a.ready);
        assert_eq!((a.consul_up, a.metrics_up), (None, None));
        assert_eq!(
            a.problems,
            vec![
                "no policy loaded (3 policy files rejected)",
                "Consul not probed yet",
                "the metrics backend (victoriametrics) not probed yet",
            ]
        );
    }
}
