//! The simulated outside world of one night: Consul KV (states, weights, the leader lock, the
//! shared alert outbox), the metrics backend, the alert receiver and each instance's clock, all
//! in memory, with faults injected at every I/O step. [`SimEnv`] is one daemon instance's view of it and implements the
//! shell's I/O traits, so the real [`crate::daemon::Shell`] runs against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::Rng;

use super::faults::{Fault, Faults};
use crate::alert::{AlertEvent, DeliveryReport, OutboxEntry};
use crate::consul::{ConsulError, Fence};
use crate::daemon::outbox;
use crate::daemon::store::{decode, encode, Saved, StoreError};
use crate::daemon::{AlertIo, Clock, MetricsIo, StateIo, WeightIo};
use crate::engine::{CheckData, DataProblem, Observation, RolloutState};
use crate::policy::{Policy, Weights};
use crate::sim::World;
use crate::traffic::TrafficError;

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
}

impl WorldState {
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

    fn fire(&mut self, fault: Fault, what: &str, instance: usize) -> bool {
        if self.faults.fire(fault, &mut self.rng) {
            self.log(|| format!("fault {} at {what} (instance {instance})", fault.name()));
            true
        } else {
            false
        }
    }

    fn holder_session(&self) -> Option<String> {
        self.holder.as_ref().map(|(_, s)| s.clone())
    }

    fn fence_ok(&self, fence: Option<&Fence>) -> bool {
        match fence {
            None => true,
            Some(f) => self.holder_session().as_deref() == Some(f.session.as_str()),
        }
    }

    fn record(&mut self, instance: usize, fence: Option<&Fence>, what: String) {
        let landed = Landed {
            step: self.step,
            instance,
            session: fence.map(|f| f.session.clone()),
            holder: self.holder_session(),
            what,
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

    /// Crash points around a write: returns Err if the process dies before the write.
    fn crash_before(&mut self, instance: usize, what: &str) -> bool {
        if self.fire(Fault::CrashBeforeWrite, what, instance) {
            self.crashed[instance] = true;
            return true;
        }
        false
    }

    fn crash_after(&mut self, instance: usize, what: &str) -> bool {
        if self.fire(Fault::CrashAfterWrite, what, instance) {
            self.crashed[instance] = true;
            return true;
        }
        false
    }

    /// Delivers every entry of `instance`'s local outbox when the receiver is up.
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

fn unreachable(what: &str) -> ConsulError {
    ConsulError::Unreachable(format!("simulated fault: {what}"))
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

/// One daemon instance's view of the world.
#[derive(Clone)]
pub struct SimEnv {
    pub world: Arc<Mutex<WorldState>>,
    pub instance: usize,
    pub prefix: String,
}

impl SimEnv {
    fn w(&self) -> MutexGuard<'_, WorldState> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn key(&self, api: &str) -> String {
        format!("{}/state/{api}", self.prefix)
    }
}

impl StateIo for SimEnv {
    async fn load(&self, policy: &Policy) -> Result<(RolloutState, u64), StoreError> {
        let key = self.key(&policy.api);
        let mut w = self.w();
        if w.crashed[self.instance] {
            return Err(unreachable("process crashed").into());
        }
        if w.fire(Fault::ConsulError, "load", self.instance) {
            return Err(unreachable("load").into());
        }
        match w.states.get(&key) {
            None => Ok((RolloutState::new(policy), 0)),
            Some((bytes, index)) => Ok((decode(&policy.api, &key, *index, bytes)?, *index)),
        }
    }

    async fn save(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        self.save_with_alerts(state, index, fence, Vec::new())
            .await
            .map(|s| s.index)
    }

    async fn save_with_alerts(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
        alerts: Vec<OutboxEntry>,
    ) -> Result<Saved, StoreError> {
        let key = self.key(&state.api);
        let body = encode(state)?;
        let mut w = self.w();
        let i = self.instance;
        if w.crashed[i] {
            return Err(unreachable("process crashed").into());
        }
        if w.crash_before(i, "save") {
            return Err(unreachable("crash before save").into());
        }
        if w.fire(Fault::ConsulError, "save", i) {
            return Err(unreachable("save").into());
        }
        if w.fire(Fault::CasConflict, "save", i) {
            // Someone else (an operator command) wrote the state meanwhile.
            w.index += 1;
            let new = w.index;
            if let Some(entry) = w.states.get_mut(&key) {
                entry.1 = new;
            }
        }
        if !w.fence_ok(fence) {
            return Err(StoreError::LockLost {
                api: state.api.clone(),
            });
        }
        let current = w.states.get(&key).map(|(_, idx)| *idx).unwrap_or(0);
        if current != index {
            return Err(StoreError::Conflict {
                api: state.api.clone(),
            });
        }
        w.index += 1;
        let new = w.index;
        w.states.insert(key, (body, new));
        // The alerts, in the same transaction, as the production store plans them.
        let folder = outbox::api_prefix(&self.prefix, &state.api);
        let existing: Vec<String> = w
            .shared_outbox
            .keys()
            .filter(|k| k.starts_with(&folder))
            .cloned()
            .collect();
        let plan = outbox::plan(&folder, &existing, index, alerts);
        for k in &plan.drops {
            if let Some(e) = w.shared_outbox.remove(k) {
                w.log(|| format!("shared outbox full: dropped {}", e.event.key));
                w.lost_alerts.insert((e.event.key, e.event.resolved));
            }
        }
        for (k, v) in &plan.writes {
            let e: OutboxEntry = serde_json::from_slice(v).expect("an outbox entry decodes");
            w.log(|| {
                let r = if e.event.resolved { " (resolved)" } else { "" };
                format!("alert {}{r} to the shared outbox", e.event.key)
            });
            w.produced.insert((e.event.key.clone(), e.event.resolved));
            w.shared_outbox.insert(k.clone(), e);
        }
        let saved = Saved {
            index: new,
            written: plan.writes.len(),
            dropped: plan.drops,
            spilled: plan.spilled,
        };
        w.record(
            i,
            fence,
            format!("state of {} ({:?})", state.api, state.phase),
        );
        // A timeout after the write reached Consul: applied, but the caller sees an error.
        if w.fire(Fault::ConsulTimeout, "save", i) {
            return Err(unreachable("timeout after save").into());
        }
        if w.crash_after(i, "save") {
            return Err(unreachable("crash after save").into());
        }
        Ok(saved)
    }
}

impl WeightIo for SimEnv {
    async fn read_weights(
        &self,
        policy: &Policy,
        _confirmed: Option<Timestamp>,
    ) -> Result<Weights, TrafficError> {
        let mut w = self.w();
        if w.crashed[self.instance] || w.fire(Fault::ConsulError, "read weights", self.instance) {
            return Err(TrafficError::Unreachable {
                target: "consul".into(),
                attempts: 1,
                reason: "simulated fault".into(),
            });
        }
        w.weights
            .get(&policy.api)
            .copied()
            .ok_or_else(|| TrafficError::Missing {
                keys: vec![policy.api.clone()],
            })
    }

    async fn init_weights(&self, policy: &Policy, weights: Weights) -> Result<(), TrafficError> {
        let mut w = self.w();
        w.weights.entry(policy.api.clone()).or_insert(weights);
        Ok(())
    }

    async fn write_weights(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        let mut w = self.w();
        let i = self.instance;
        let down = || TrafficError::Unreachable {
            target: "consul".into(),
            attempts: 1,
            reason: "simulated fault".into(),
        };
        if w.crashed[i] || w.crash_before(i, "write weights") {
            return Err(down());
        }
        if w.fire(Fault::ConsulError, "write weights", i) {
            return Err(down());
        }
        if !w.fence_ok(fence) {
            return Err(TrafficError::LockLost);
        }
        let found = w.weights.get(&policy.api).copied();
        match found {
            None => {
                return Err(TrafficError::Missing {
                    keys: vec![policy.api.clone()],
                })
            }
            Some(f) if f != expected => return Err(TrafficError::Override { found: f }),
            Some(_) => {}
        }
        w.weights.insert(policy.api.clone(), new);
        w.released_human.remove(&policy.api);
        w.record(
            i,
            fence,
            format!(
                "weights of {} blue={} green={}",
                policy.api, new.blue, new.green
            ),
        );
        if w.fire(Fault::ConsulTimeout, "write weights", i) || w.crash_after(i, "write weights") {
            return Err(down());
        }
        Ok(())
    }
}

impl MetricsIo for SimEnv {
    async fn observe(&self, policy: &Policy, start: Timestamp, end: Timestamp) -> Observation {
        let mut w = self.w();
        let mode = w.metrics;
        // A backend that is down or too slow answers nothing, whatever the window.
        match mode {
            MetricsMode::Outage => {
                return every_check(policy, start, end, || {
                    DataProblem::Backend("connection refused".into())
                })
            }
            MetricsMode::Slow => {
                return every_check(policy, start, end, || {
                    DataProblem::Backend("timed out".into())
                })
            }
            _ => {}
        }
        // A window ahead of true time (this instance's clock is ahead) has no samples yet: a
        // real backend's freshness query finds the newest sample too old.
        if end > w.now {
            return every_check(policy, start, end, || {
                DataProblem::Stale("no sample in the window yet".into())
            });
        }

        let live = w
            .weights
            .get(&policy.api)
            .copied()
            .unwrap_or(Weights { blue: 0, green: 0 });
        let total = (live.blue + live.green).max(1);
        let share = live.green as f64 / total as f64;
        let elapsed =
            Duration::from_secs((start.as_second() - w.started_at.as_second()).max(0) as u64);
        // What the world really served: drawn once per window the shell asks for. Windows
        // never overlap (the shell guarantees it), so green's harm is counted once.
        let step = stored_step(&mut w, &self.key(&policy.api), &policy.api);
        let Some(world) = w.traffic.get_mut(&policy.api) else {
            return Observation {
                start,
                end,
                checks: Vec::new(),
            };
        };
        let draw = world.draw(start, end, elapsed, share, step);
        *w.green_requests.entry(policy.api.clone()).or_default() += draw.green.requests as u64;
        *w.bad_green.entry(policy.api.clone()).or_default() += draw.bad_green;
        let mut obs = draw.observation;
        match mode {
            // Outages and slow answers were answered above.
            MetricsMode::Normal | MetricsMode::Outage | MetricsMode::Slow => {}
            MetricsMode::NotANumber | MetricsMode::Huge => {
                let v = if mode == MetricsMode::Huge {
                    1e300
                } else {
                    f64::NAN
                };
                for c in &mut obs.checks {
                    if let Ok(data) = &mut c.data {
                        garble(data, v);
                    }
                }
            }
            MetricsMode::GreenMissing => {
                for c in &mut obs.checks {
                    c.data = Err(DataProblem::GreenMissing(
                        "simulated: green stopped reporting".into(),
                    ));
                }
            }
        }
        obs
    }

    fn backend(&self) -> &'static str {
        "simulated"
    }

    fn ui(&self) -> Option<&str> {
        None
    }
}

/// The same problem for every check of `policy` over the window.
fn every_check(
    policy: &Policy,
    start: Timestamp,
    end: Timestamp,
    problem: impl Fn() -> DataProblem,
) -> Observation {
    let checks = policy
        .checks
        .iter()
        .map(|c| crate::engine::CheckObservation {
            check: c.name.clone(),
            data: Err(problem()),
        })
        .collect();
    Observation { start, end, checks }
}

/// The step index the stored state is at (for step-dependent regressions).
fn stored_step(w: &mut WorldState, key: &str, api: &str) -> usize {
    w.checked_state(api, key)
        .and_then(|c| c.state.ok())
        .map_or(0, |s| s.step)
}

/// Garbage in every count: requests and errors become `v` (errors half of it).
fn garble(data: &mut CheckData, v: f64) {
    let pair = |p: &mut crate::engine::Pair| {
        p.green.requests = v;
        p.green.bad = v / 2.0;
    };
    match data {
        CheckData::Errors { counts } => pair(counts),
        CheckData::Latency { edges } => {
            for e in edges {
                pair(&mut e.counts);
            }
        }
        CheckData::Value { green, .. } => *green = v,
    }
}

impl AlertIo for SimEnv {
    async fn notify(
        &self,
        event: &AlertEvent,
        channels: &[String],
    ) -> Result<DeliveryReport, String> {
        let mut w = self.w();
        if w.crashed[self.instance] {
            return Err("process crashed".into());
        }
        let key = (event.key.clone(), event.resolved);
        let i = self.instance;
        let already = w.delivered.contains(&key);
        if !channels.is_empty() && !already {
            w.log(|| {
                format!(
                    "alert {}{}",
                    event.key,
                    if event.resolved { " (resolved)" } else { "" }
                )
            });
            w.produced.insert(key.clone());
            w.outboxes[i].insert(key, event.clone());
            w.deliver(i);
        }
        Ok(DeliveryReport::default())
    }

    async fn flush(&self, fence: Option<&Fence>) -> DeliveryReport {
        let mut w = self.w();
        let mut report = DeliveryReport::default();
        if !w.crashed[self.instance] {
            w.deliver(self.instance);
            if fence.is_some() && w.fence_ok(fence) {
                report.delivered = w.deliver_shared();
            }
        }
        report
    }

    fn outbox_depth(&self) -> u64 {
        let w = self.w();
        (w.outboxes[self.instance].len() + w.shared_outbox.len()) as u64
    }
}

impl Clock for SimEnv {
    fn now(&self) -> Timestamp {
        let w = self.w();
        w.now + w.clock_offset[self.instance]
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
