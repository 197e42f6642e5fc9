//! The simulated outside world of one night: Consul KV (states, weights, the leader lock), the
//! metrics backend, the alert receiver and each instance's clock, all in memory, with faults
//! injected at every I/O step. [`SimEnv`] is one daemon instance's view of it and implements the
//! shell's I/O traits, so the real [`crate::daemon::Shell`] runs against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::faults::{Fault, Faults};
use super::haproxy::{self, SimNode, SimRuntime};
use crate::alert::{AlertEvent, DeliveryReport, EventKind};
use crate::consul::{ConsulError, Fence};
use crate::daemon::store::{decode, encode, StoreError};
use crate::daemon::{AlertIo, Clock, MetricsIo, StateIo, WeightIo};
use crate::engine::{CheckData, DataProblem, Observation, RolloutState};
use crate::policy::{Policy, TrafficTarget, Weights};
use crate::sim::World;
use crate::traffic::{HaproxyRuntime, TrafficError};

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
    /// Per instance: its durable outbox (key, resolved) → event.
    pub outboxes: Vec<BTreeMap<(String, bool), AlertEvent>>,
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
    /// This process's Runtime API client, when the world has HAProxy nodes (its memory of
    /// each node's process is lost with the process).
    pub haproxy: Option<HaproxyRuntime<SimRuntime>>,
}

impl SimEnv {
    /// Instance `instance`'s view of `world`, keys under `greenlight/`.
    pub fn new(world: &Arc<Mutex<WorldState>>, instance: usize) -> Self {
        let nodes = !world
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .is_empty();
        SimEnv {
            world: world.clone(),
            instance,
            prefix: "greenlight".into(),
            haproxy: nodes.then(|| haproxy::runtime(world, instance)),
        }
    }

    /// The HAProxy runtime, when `policy` uses the `haproxy` target.
    fn nodes_for(&self, policy: &Policy) -> Option<&HaproxyRuntime<SimRuntime>> {
        match policy.traffic.target {
            TrafficTarget::Haproxy { .. } => self.haproxy.as_ref(),
            TrafficTarget::ConsulKeys { .. } => None,
        }
    }

    fn crashed_error(&self) -> Option<TrafficError> {
        self.w().crashed[self.instance].then(|| TrafficError::Unreachable {
            target: "haproxy".into(),
            attempts: 1,
            reason: "process crashed".into(),
        })
    }

    /// A compare-and-set over the HAProxy nodes, with crash points around it.
    async fn write_nodes(
        &self,
        runtime: &HaproxyRuntime<SimRuntime>,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        let i = self.instance;
        let down = || TrafficError::Unreachable {
            target: "haproxy".into(),
            attempts: 1,
            reason: "simulated crash".into(),
        };
        {
            let mut w = self.w();
            if w.crashed[i] || w.crash_before(i, "write HAProxy weights") {
                return Err(down());
            }
            w.writer = fence.map(|f| f.session.clone());
        }
        let landed_before = self.w().landed.len();
        let r = runtime.write(policy, expected, new, fence).await;
        let mut w = self.w();
        w.writer = None;
        w.sync_fleet(&policy.api);
        if w.landed.len() > landed_before {
            w.released_human.remove(&policy.api);
        }
        if w.crash_after(i, "write HAProxy weights") {
            return Err(down());
        }
        r
    }
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
            // The state this world saved last at that index: `encode` checked when saving it
            // that its bytes decode to exactly this state.
            Some((_, index)) if w.saved.get(&key).is_some_and(|(i, _)| i == index) => {
                Ok((w.saved[&key].1.clone(), *index))
            }
            Some((bytes, index)) => Ok((decode(&policy.api, &key, *index, bytes)?, *index)),
        }
    }

    async fn save(
        &self,
        state: &RolloutState,
        index: u64,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
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
        w.states.insert(key.clone(), (body, new));
        w.saved.insert(key, (new, state.clone()));
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
        Ok(new)
    }
}

impl WeightIo for SimEnv {
    async fn read_weights(
        &self,
        policy: &Policy,
        confirmed: Option<Timestamp>,
    ) -> Result<Weights, TrafficError> {
        if let Some(runtime) = self.nodes_for(policy) {
            if let Some(e) = self.crashed_error() {
                return Err(e);
            }
            return runtime.read(policy, confirmed).await;
        }
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
        if self.nodes_for(policy).is_some() {
            return Ok(());
        }
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
        if let Some(runtime) = self.nodes_for(policy) {
            return self
                .write_nodes(runtime, policy, expected, new, fence)
                .await;
        }
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
        w.record_session(
            i,
            fence.map(|f| f.session.clone()),
            format!(
                "weights of {} blue={} green={}",
                policy.api, new.blue, new.green
            ),
            Some(new),
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
        // The caller drew this window already (for the same window, or the shell asked for
        // another one than the caller drew: nothing is known about that one).
        if let Some(fed) = w.fed.take() {
            if (fed.start, fed.end) == (start, end) {
                return fed;
            }
            return every_check(policy, start, end, || DataProblem::NoData);
        }
        // A window ahead of true time (this instance's clock is ahead) has no samples yet: a
        // real backend's freshness query finds the newest sample too old.
        if end > w.now {
            return every_check(policy, start, end, || {
                DataProblem::Stale("no sample in the window yet".into())
            });
        }

        let share = if w.nodes.is_empty() {
            let live = w
                .weights
                .get(&policy.api)
                .copied()
                .unwrap_or(Weights { blue: 0, green: 0 });
            live.green as f64 / (live.blue + live.green).max(1) as f64
        } else {
            haproxy::green_share(&w.nodes)
        };
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
            if event.kind == EventKind::ManualOverride
                && !event.resolved
                && !w.produced.contains(&key)
            {
                w.overrides += 1;
            }
            w.produced.insert(key.clone());
            w.outboxes[i].insert(key, event.clone());
            w.deliver(i);
        }
        Ok(DeliveryReport::default())
    }

    async fn flush(&self) {
        let mut w = self.w();
        if !w.crashed[self.instance] {
            w.deliver(self.instance);
        }
    }

    fn outbox_depth(&self) -> u64 {
        self.w().outboxes[self.instance].len() as u64
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
