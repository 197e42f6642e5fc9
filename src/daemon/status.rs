//! What the daemon shows through `/readyz` and `/api/v1/rollouts`: the last known state of
//! every API and the health of the stores.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::health::{self, Assessment, Probe, Role};
use crate::engine::RolloutState;
use crate::policy::Policy;
use crate::server::{BreakerView, CampaignView, RolloutView, StatusSource};

#[derive(Debug)]
struct Inner {
    views: BTreeMap<String, RolloutView>,
    campaigns: BTreeMap<String, CampaignView>,
    breakers: Vec<BreakerView>,
    loaded: Vec<Arc<Policy>>,
    policies: usize,
    policy_errors: usize,
    /// The session of the lock this instance holds, and the role it implies.
    session: Option<String>,
    role: Role,
    consul: Option<Probe>,
    metrics_kind: &'static str,
    metrics: Option<Probe>,
    fresh_for: Duration,
}

/// Live status, updated after every evaluation and every health probe.
#[derive(Debug)]
pub struct LiveStatus {
    inner: Mutex<Inner>,
}

impl Default for LiveStatus {
    fn default() -> Self {
        LiveStatus::new("metrics", Duration::from_secs(5))
    }
}

impl LiveStatus {
    /// A status for a metrics backend of `metrics_kind`; probes older than `fresh_for` no
    /// longer count.
    pub fn new(metrics_kind: &'static str, fresh_for: Duration) -> Self {
        LiveStatus {
            inner: Mutex::new(Inner {
                views: BTreeMap::new(),
                campaigns: BTreeMap::new(),
                breakers: Vec::new(),
                loaded: Vec::new(),
                policies: 0,
                policy_errors: 0,
                session: None,
                role: Role::Standby,
                consul: None,
                metrics_kind,
                metrics: None,
                fresh_for,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn update(&self, policy: &Policy, state: &RolloutState) {
        let view = RolloutView::from_state(policy, state);
        self.with(|i| i.views.insert(policy.api.clone(), view));
    }

    /// The loaded policies; an API without a view yet shows as fresh (pending).
    pub fn set_loaded(&self, policies: Vec<Arc<Policy>>) {
        self.with(|i| {
            for p in &policies {
                i.views
                    .entry(p.api.clone())
                    .or_insert_with(|| RolloutView::from_state(p, &RolloutState::new(p)));
            }
            i.loaded = policies;
        });
    }

    /// The campaign `view` as last planned.
    pub fn set_campaign(&self, view: CampaignView) {
        self.with(|i| i.campaigns.insert(view.name.clone(), view));
    }

    /// The cluster breakers as last looked at (every cluster the policies name).
    pub fn set_breakers(&self, views: Vec<BreakerView>) {
        self.with(|i| i.breakers = views);
    }

    /// Keeps only the campaigns named in `names` (the others' files are gone).
    pub fn retain_campaigns(&self, names: &[String]) {
        self.with(|i| i.campaigns.retain(|n, _| names.contains(n)));
    }

    /// Drops the API of a removed policy.
    pub fn forget(&self, api: &str) {
        self.with(|i| i.views.remove(api));
    }

    pub fn set_policies(&self, loaded: usize, errors: usize) {
        self.with(|i| {
            i.policies = loaded;
            i.policy_errors = errors;
        });
    }

    /// This instance acquired the lock with `session` (confirmed at `at`), or no longer holds
    /// it (`None`).
    pub fn set_leading(&self, session: Option<&str>, at: Instant) {
        self.with(|i| {
            i.role = match session {
                Some(_) => Role::Leader { confirmed_at: at },
                None => Role::Standby,
            };
            i.session = session.map(str::to_string);
        });
    }

    /// The session of the lock this instance holds, if any.
    pub fn leading_session(&self) -> Option<String> {
        self.with(|i| i.session.clone())
    }

    /// Consul confirmed at `at` that this instance's session holds the lock.
    pub fn confirm_leader(&self, session: &str, at: Instant) {
        self.with(|i| {
            if i.session.as_deref() == Some(session) {
                i.role = Role::Leader { confirmed_at: at };
            }
        });
    }

    pub fn set_consul(&self, probe: Probe) {
        self.with(|i| i.consul = Some(probe));
    }

    pub fn set_metrics(&self, probe: Probe) {
        self.with(|i| i.metrics = Some(probe));
    }

    /// Readiness and health as of `now`.
    pub fn assess(&self, now: Instant) -> Assessment {
        self.with(|i| {
            health::assess(&health::Inputs {
                now,
                fresh_for: i.fresh_for,
                policies: i.policies,
                policy_errors: i.policy_errors,
                role: i.role,
                consul: i.consul.as_ref(),
                metrics: (i.metrics_kind, i.metrics.as_ref()),
            })
        })
    }
}

impl StatusSource for LiveStatus {
    fn rollouts(&self) -> Vec<RolloutView> {
        self.with(|i| i.views.values().cloned().collect())
    }

    fn rollout(&self, api: &str) -> Option<RolloutView> {
        self.with(|i| i.views.get(api).cloned())
    }

    fn summaries(&self) -> Vec<RolloutView> {
        self.with(|i| i.views.values().map(RolloutView::summary).collect())
    }

    fn policies(&self) -> Vec<Arc<Policy>> {
        self.with(|i| i.loaded.clone())
    }

    fn campaigns(&self) -> Vec<CampaignView> {
        self.with(|i| i.campaigns.values().cloned().collect())
    }

    fn breakers(&self) -> Vec<BreakerView> {
        self.with(|i| i.breakers.clone())
    }

    fn ready(&self) -> Result<(), String> {
        let a = self.assess(Instant::now());
        if a.ready {
            Ok(())
        } else {
            Err(a.problems.join("; "))
        }
    }
}
