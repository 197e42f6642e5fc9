//! In-memory weights per API, for tests and simulation, with a way to mimic a manual edit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::TrafficError;
use crate::policy::{Policy, Weights};

/// Weights keyed by API name. Clones share the same map.
#[derive(Debug, Clone, Default)]
pub struct MemoryTraffic {
    inner: Arc<Mutex<HashMap<String, Weights>>>,
}

impl MemoryTraffic {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Weights>> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets `api`'s weights (initial setup).
    pub fn set(&self, api: &str, weights: Weights) {
        self.map().insert(api.to_string(), weights);
    }

    /// Changes `api`'s weights behind greenlight's back, as an operator would by hand.
    pub fn manual_edit(&self, api: &str, weights: Weights) {
        self.set(api, weights);
    }

    /// Current weights of `api`, if any.
    pub fn get(&self, api: &str) -> Option<Weights> {
        self.map().get(api).copied()
    }

    pub(crate) fn read(&self, policy: &Policy) -> Result<Weights, TrafficError> {
        self.get(&policy.api).ok_or_else(|| TrafficError::Missing {
            keys: vec![policy.api.clone()],
        })
    }

    pub(crate) fn write(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
    ) -> Result<(), TrafficError> {
        let mut map = self.map();
        match map.get(&policy.api) {
            None => Err(TrafficError::Missing {
                keys: vec![policy.api.clone()],
            }),
            Some(found) if *found != expected => Err(TrafficError::Override { found: *found }),
            Some(_) => {
                map.insert(policy.api.clone(), new);
                Ok(())
            }
        }
    }
}
