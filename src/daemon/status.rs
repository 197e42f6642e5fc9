//! What the daemon shows through `/readyz` and `/api/v1/rollouts`: the last known state of
//! every API and the health of the stores.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::engine::RolloutState;
use crate::policy::Policy;
use crate::server::{RolloutView, StatusSource};

#[derive(Debug, Default)]
struct Inner {
    views: BTreeMap<String, RolloutView>,
    loaded: Vec<Arc<Policy>>,
    policies: usize,
    policy_errors: usize,
    leader: bool,
    consul: Option<Result<(), String>>,
}

/// Live status, updated after every evaluation.
#[derive(Debug, Default)]
pub struct LiveStatus {
    inner: Mutex<Inner>,
}

impl LiveStatus {
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

    pub fn set_leader(&self, leader: bool) {
        self.with(|i| i.leader = leader);
    }

    pub fn set_consul(&self, ok: Result<(), String>) {
        self.with(|i| i.consul = Some(ok));
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

    fn ready(&self) -> Result<(), String> {
        self.with(|i| {
            if i.policies == 0 {
                return Err(format!(
                    "no policy loaded ({} policy files rejected)",
                    i.policy_errors
                ));
            }
            match &i.consul {
                None => Err("Consul not contacted yet".into()),
                Some(Err(e)) => Err(format!("Consul unreachable: {e}")),
                Some(Ok(())) => Ok(()),
            }
        })
    }
}
