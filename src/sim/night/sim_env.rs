//! [`SimEnv`]: one daemon instance's view of the simulated world. It implements the shell's I/O
//! traits over [`WorldState`], injecting the faults drawn for each I/O step, so the real
//! [`crate::daemon::Shell`] runs against it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;

use super::faults::Fault;
use super::haproxy::{self, SimRuntime};
use super::world::{MetricsMode, WorldState};
use crate::alert::{AlertEvent, DeliveryReport, EventKind, OutboxEntry};
use crate::consul::{ConsulError, Fence};
use crate::daemon::outbox;
use crate::daemon::store::{decode, encode, history_ops, Saved, StoreError};
use crate::daemon::{AlertIo, Clock, MetricsIo, StateIo, WeightIo};
use crate::engine::{CheckData, DataProblem, Observation, RolloutState};
use crate::policy::{Policy, TrafficTarget, Weights};
use crate::traffic::{HaproxyRuntime, TrafficError};

fn unreachable(what: &str) -> ConsulError {
    ConsulError::Unreachable(format!("simulated fault: {what}"))
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
        // Its decisions go in the same transaction, encoded under the production rules.
        history_ops(&self.prefix, state)?;
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
        // What a later load reads back: the stored document, without the decisions it wrote.
        let mut stored = state.clone();
        stored.new_records.clear();
        stored.legacy_history.clear();
        w.saved.insert(key, (new, stored));
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
    /// The simulated world reports no release.
    async fn candidate_release(
        &self,
        _policy: &Policy,
        _candidate: crate::policy::Colour,
        _at: Timestamp,
    ) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// The simulated world's new version runs on green: its nights roll onto green only.
    async fn observe(
        &self,
        policy: &Policy,
        (start, end): (Timestamp, Timestamp),
        _roles: crate::policy::Roles,
    ) -> Observation {
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
        CheckData::Value { candidate, .. } => *candidate = v,
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
