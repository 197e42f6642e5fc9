//! The simulated outside world of one night: Consul KV (states, weights, the leader lock, the
//! shared alert outbox), the metrics backend, the alert receiver and each instance's clock, all in memory, with faults
//! injected at every I/O step. [`super::SimEnv`] is one daemon instance's view of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::faults::{Fault, Faults};
use super::haproxy::SimNode;
use crate::alert::{AlertEvent, OutboxEntry};
use crate::consul::Fence;
use crate::daemon::store::{decode, StoreError};
use crate::engine::{Observation, RolloutState};
use crate::policy::Weights;
use crate::sim::World;

/// What the metrics backend does during the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsMode {
    Normal,
    /// Every query fails (backend down).
    Outage,
    /// Answers take longer than the query timeout.
    Slow,
    /// Counts that are NaN.
    NotANumber,
    /// Counts of 1e300 (finite, absurd).
    Huge,
    /// Green's series are missing while blue's are present.
    GreenMissing,
}

impl MetricsMode {
    pub fn usable(self) -> bool {
        self == MetricsMode::Normal
    }
}

/// A write that landed, for the invariants.
#[derive(Debug, Clone)]
pub struct Landed {
    pub step: u64,
    pub instance: usize,
    pub session: Option<String>,
    pub holder: Option<String>,
    pub what: String,
    /// The weights written, for a weight write.
    pub weights: Option<Weights>,
}

/// Everything outside the daemon processes. Survives their crashes.
pub struct WorldState {
    pub rng: StdRng,
    pub faults: Faults,
    pub step: u64,
    pub now: Timestamp,
    /// Per instance: offset of its wall clock from true time.
    pub clock_offset: Vec<SignedDuration>,
    /// Consul's raft index.
    pub index: u64,
    /// State key → (bytes, modify index).
    pub states: HashMap<String, (Vec<u8>, u64)>,
    /// API → live weights.
    pub weights: HashMap<String, Weights>,
    /// Current lock holder: (instance, session).
    pub holder: Option<(usize, String)>,
    pub sessions: u64,
    /// Per instance: set when a crash fault fired; the driver restarts that instance.
    pub crashed: Vec<bool>,
    pub metrics: MetricsMode,
    /// Traffic generator per API.
    pub traffic: HashMap<String, World<'static>>,
    /// Bad requests green served, per API (real, not observed).
    pub green_requests: HashMap<String, u64>,
    pub bad_green: HashMap<String, u64>,
    pub started_at: Timestamp,
    /// Alert receiver down until then.
    pub receiver_down_until: Option<Timestamp>,
    /// Per instance: its local durable outbox (key, resolved) → event.
    pub outboxes: Vec<BTreeMap<(String, bool), AlertEvent>>,
    /// Consul's `<prefix>/outbox/…`: alerts written with the state change that raised them.
    pub shared_outbox: BTreeMap<String, OutboxEntry>,
    /// Per instance: its machine is gone for good (never restarts, its local outbox is lost).
    pub gone: Vec<bool>,
    /// Alerts allowed to go undelivered: local ones lost with a machine that never came back,
    /// and shared ones dropped beyond the outbox's cap (both logged).
    pub lost_alerts: BTreeSet<(String, bool)>,
    pub produced: BTreeSet<(String, bool)>,
    pub delivered: BTreeSet<(String, bool)>,
    pub landed: Vec<Landed>,
    /// Weights a human set, per API, until an operator intent gives them back.
    pub human: HashMap<String, Weights>,
    /// Weights a human set and an operator gave back, until greenlight writes the API's weights.
    pub released_human: HashMap<String, Weights>,
    pub trace: Option<Vec<String>>,
    /// Decoded stored states, by key.
    pub checked: HashMap<String, Checked>,
    /// The observation of the next window, drawn by the caller (the decision-quality
    /// comparison draws every judge's windows itself); when set, the metrics backend answers
    /// with it instead of drawing from `traffic`.
    pub fed: Option<Observation>,
    /// The last state saved, by key, with its modify index: what a load of that version
    /// decodes to (the codec checks it on every save), without decoding it again.
    pub saved: HashMap<String, (u64, RolloutState)>,
    /// HAProxy nodes, for a night whose API uses the `haproxy` target (empty otherwise).
    pub nodes: Vec<SimNode>,
    /// The session of the fence guarding the HAProxy write under way.
    pub writer: Option<String>,
    /// "Weights changed by hand" alerts produced.
    pub overrides: u64,
}

impl WorldState {
    /// A world at `start` with nothing stored yet, `instances` daemon processes, faults drawn
    /// from `seed`.
    pub fn new(seed: u64, faults: Faults, start: Timestamp, instances: usize) -> Self {
        WorldState {
            rng: StdRng::seed_from_u64(seed),
            faults,
            step: 0,
            now: start,
            clock_offset: vec![SignedDuration::ZERO; instances],
            index: 1,
            states: HashMap::new(),
            weights: HashMap::new(),
            holder: None,
            sessions: 0,
            crashed: vec![false; instances],
            metrics: MetricsMode::Normal,
            traffic: HashMap::new(),
            green_requests: HashMap::new(),
            bad_green: HashMap::new(),
            started_at: start,
            receiver_down_until: None,
            outboxes: vec![Default::default(); instances],
            shared_outbox: Default::default(),
            gone: vec![false; instances],
            lost_alerts: Default::default(),
            produced: Default::default(),
            delivered: Default::default(),
            landed: Vec::new(),
            human: HashMap::new(),
            released_human: HashMap::new(),
            trace: None,
            checked: HashMap::new(),
            fed: None,
            saved: HashMap::new(),
            nodes: Vec::new(),
            writer: None,
            overrides: 0,
        }
    }

    pub fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let l = line();
            t.push(format!("{} step {}: {l}", self.now, self.step));
        }
    }

    /// Draws whether `fault` fires now (counted).
    pub fn chance(&mut self, fault: Fault) -> bool {
        self.faults.fire(fault, &mut self.rng)
    }

    pub(super) fn fire(&mut self, fault: Fault, what: &str, instance: usize) -> bool {
        if self.faults.fire(fault, &mut self.rng) {
            self.log(|| format!("fault {} at {what} (instance {instance})", fault.name()));
            true
        } else {
            false
        }
    }

    pub(super) fn holder_session(&self) -> Option<String> {
        self.holder.as_ref().map(|(_, s)| s.clone())
    }

    pub(super) fn fence_ok(&self, fence: Option<&Fence>) -> bool {
        match fence {
            None => true,
            Some(f) => self.holder_session().as_deref() == Some(f.session.as_str()),
        }
    }

    pub(super) fn record(&mut self, instance: usize, fence: Option<&Fence>, what: String) {
        let weights = None;
        self.record_session(instance, fence.map(|f| f.session.clone()), what, weights);
    }

    /// Records a write that landed, made under `session`.
    pub fn record_session(
        &mut self,
        instance: usize,
        session: Option<String>,
        what: String,
        weights: Option<Weights>,
    ) {
        let landed = Landed {
            step: self.step,
            instance,
            session,
            holder: self.holder_session(),
            what,
            weights,
        };
        self.log(|| {
            format!(
                "instance {} wrote {} ({})",
                landed.instance,
                landed.what,
                if landed.session == landed.holder {
                    "holder"
                } else {
                    "NOT holder"
                }
            )
        });
        self.landed.push(landed);
    }

    /// For an HAProxy night: the split of the nodes greenlight and humans keep (the first
    /// reachable node not just restarted), as `weights` of `api`.
    pub fn sync_fleet(&mut self, api: &str) {
        let now = self.now;
        if let Some(n) = self.nodes.iter().find(|n| n.reachable(now) && !n.reset) {
            let weights = n.weights;
            self.weights.insert(api.to_string(), weights);
        }
    }

    /// Crash points around a write: returns Err if the process dies before the write.
    pub(super) fn crash_before(&mut self, instance: usize, what: &str) -> bool {
        if self.fire(Fault::CrashBeforeWrite, what, instance) {
            self.crashed[instance] = true;
            return true;
        }
        false
    }

    pub(super) fn crash_after(&mut self, instance: usize, what: &str) -> bool {
        if self.fire(Fault::CrashAfterWrite, what, instance) {
            self.crashed[instance] = true;
            return true;
        }
        false
    }

    /// Delivers every outbox entry when the receiver is up.
    pub fn deliver(&mut self, instance: usize) -> usize {
        if self.receiver_down_until.is_some_and(|t| self.now < t) {
            return 0;
        }
        let entries = std::mem::take(&mut self.outboxes[instance]);
        let n = entries.len();
        for (k, _) in entries {
            self.delivered.insert(k);
        }
        n
    }

    /// The lock holder delivers (and deletes) every shared outbox entry when the receiver is up.
    pub fn deliver_shared(&mut self) -> usize {
        if self.receiver_down_until.is_some_and(|t| self.now < t) {
            return 0;
        }
        let entries = std::mem::take(&mut self.shared_outbox);
        let n = entries.len();
        for (_, e) in entries {
            self.delivered.insert((e.event.key, e.event.resolved));
        }
        n
    }

    /// `instance`'s machine is gone for good: its local outbox with it.
    pub fn lose_instance(&mut self, instance: usize) {
        self.gone[instance] = true;
        self.crashed[instance] = true;
        if self.holder.as_ref().is_some_and(|(h, _)| *h == instance) {
            self.holder = None;
        }
        let local = std::mem::take(&mut self.outboxes[instance]);
        self.log(|| {
            format!(
                "instance {instance} is gone for good ({} local alerts with it)",
                local.len()
            )
        });
        self.lost_alerts.extend(local.into_keys());
    }

    /// The state of `api` as stored, decoded with the production codec.
    pub fn stored_state(&self, api: &str, key: &str) -> Option<Result<RolloutState, StoreError>> {
        self.states.get(key).map(|(b, i)| decode(api, key, *i, b))
    }

    /// [`WorldState::stored_state`], decoded once per stored version, with the path of the
    /// first `null` standing for a number (serde_json writes non-finite floats as null).
    pub fn checked_state(&mut self, api: &str, key: &str) -> Option<Checked> {
        let (bytes, index) = self.states.get(key)?;
        if let Some(c) = self.checked.get(key).filter(|c| c.index == *index) {
            return Some(c.clone());
        }
        let c = Checked {
            index: *index,
            state: decode(api, key, *index, bytes).map_err(|e| e.to_string()),
            null_at: serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| find_null_number(&v, "")),
        };
        self.checked.insert(key.to_string(), c.clone());
        Some(c)
    }
}

/// A stored state as the invariants see it.
#[derive(Debug, Clone)]
pub struct Checked {
    pub index: u64,
    pub state: Result<RolloutState, String>,
    pub null_at: Option<String>,
}

/// The path of the first JSON `null` in an array of numbers or in a field of a state (every
/// optional field of a state is an object, a string or a number; a null inside an array of
/// numbers, or an f64 field gone null, is an overflow).
fn find_null_number(v: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::Array(items) => items.iter().enumerate().find_map(|(i, x)| {
            if x.is_null() && items.iter().any(Value::is_number) {
                Some(format!("{path}[{i}]"))
            } else {
                find_null_number(x, &format!("{path}[{i}]"))
            }
        }),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, x)| find_null_number(x, &format!("{path}.{k}"))),
        _ => None,
    }
}

/// Picks a split a human might set by hand (never the one greenlight has).
pub fn human_split(rng: &mut StdRng, total: u32, not: Weights) -> Weights {
    loop {
        let green = rng.random_range(0..=total);
        let w = Weights {
            blue: total - green,
            green,
        };
        if w != not {
            return w;
        }
    }
}
