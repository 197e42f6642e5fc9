//! Simulated HAProxy nodes: each with its runtime weights, the process that serves them (PID
//! and start time), the weights of its configuration file (what a restart comes back with),
//! and whether its Runtime API answers. [`SimRuntime`] answers Runtime API command lines as
//! HAProxy does, so the production [`HaproxyRuntime`] (reply parsing, reload detection, the
//! per-node classification, rollback to every reachable node, fencing) runs against them.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use rand::Rng;

use super::faults::Fault;
use super::world::WorldState;
use crate::policy::Weights;
use crate::traffic::{HaproxyRuntime, Retry, RuntimeAddr, RuntimeIo, TrafficError};

/// One HAProxy node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    pub pid: u32,
    /// Process start, Unix seconds of simulated time.
    pub started: u64,
    pub weights: Weights,
    /// The configuration file's weights.
    pub configured: Weights,
    /// The Runtime API does not answer until then.
    pub down_until: Option<Timestamp>,
    /// Restarted at its configured weights and not written by greenlight since.
    pub reset: bool,
}

impl SimNode {
    pub fn new(i: usize, configured: Weights, now: Timestamp) -> Self {
        SimNode {
            pid: 1000 + i as u32,
            started: now.as_second().max(0) as u64,
            weights: configured,
            configured,
            down_until: None,
            reset: false,
        }
    }

    pub fn reachable(&self, now: Timestamp) -> bool {
        self.down_until.is_none_or(|t| now >= t)
    }
}

/// The backend and servers every simulated node carries.
pub const BACKEND: &str = "api_checkout";

/// Node `i`'s Runtime API address.
pub fn address(i: usize) -> RuntimeAddr {
    RuntimeAddr::Tcp(format!("haproxy-{i}:9999"))
}

/// One daemon instance's Runtime API client over the simulated nodes: the production runtime,
/// one attempt per exchange (a retry would wait, and the simulated world never does).
pub fn runtime(world: &Arc<Mutex<WorldState>>, instance: usize) -> HaproxyRuntime<SimRuntime> {
    let nodes = lock(world).nodes.len();
    HaproxyRuntime::with_io(
        (0..nodes).map(address).collect(),
        SimRuntime {
            world: world.clone(),
            instance,
        },
    )
    .with_retry(Retry {
        attempts: 1,
        ..Retry::default()
    })
}

fn lock(world: &Arc<Mutex<WorldState>>) -> std::sync::MutexGuard<'_, WorldState> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Runtime API of the simulated nodes.
#[derive(Clone)]
pub struct SimRuntime {
    world: Arc<Mutex<WorldState>>,
    instance: usize,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimRuntime(instance {})", self.instance)
    }
}

impl RuntimeIo for SimRuntime {
    async fn exchange(&self, node: &RuntimeAddr, line: &str) -> Result<String, TrafficError> {
        let mut w = lock(&self.world);
        let i = (0..w.nodes.len()).find(|i| address(*i) == *node);
        let now = w.now;
        let down = |reason: &str| TrafficError::Unreachable {
            target: format!("HAProxy {node}"),
            attempts: 1,
            reason: reason.to_string(),
        };
        let Some(i) = i else {
            return Err(down("no such node"));
        };
        if w.crashed[self.instance] {
            return Err(down("process crashed"));
        }
        if !w.nodes[i].reachable(now) {
            return Err(down("connection refused"));
        }
        let mut reply = String::new();
        let mut set = false;
        for command in line.split(';').map(str::trim) {
            let n = &mut w.nodes[i];
            let words: Vec<&str> = command.split_whitespace().collect();
            let server = |s: &str| -> Option<bool> {
                match s.strip_prefix(BACKEND)?.strip_prefix('/')? {
                    "blue" => Some(true),
                    "green" => Some(false),
                    _ => None,
                }
            };
            match words.as_slice() {
                ["show", "info"] => reply.push_str(&format!(
                    "Name: HAProxy\nVersion: 2.6.12\nPid: {}\nStart_time_sec: {}\n\n",
                    n.pid, n.started
                )),
                ["get", "weight", s] => match server(s) {
                    Some(blue) => {
                        let (cur, init) = if blue {
                            (n.weights.blue, n.configured.blue)
                        } else {
                            (n.weights.green, n.configured.green)
                        };
                        reply.push_str(&format!("{cur} (initial {init})\n\n"));
                    }
                    None => reply.push_str("No such server.\n\n"),
                },
                ["set", "weight", s, v] => match (server(s), v.parse::<u32>()) {
                    (Some(blue), Ok(v)) if v <= 256 => {
                        if blue {
                            n.weights.blue = v;
                        } else {
                            n.weights.green = v;
                        }
                        set = true;
                    }
                    (None, _) => reply.push_str("No such server.\n\n"),
                    _ => reply.push_str("Weight must be between 0 and 256.\n\n"),
                },
                _ => reply.push_str("Unknown command.\n\n"),
            }
        }
        if set {
            let n = &mut w.nodes[i];
            n.reset = false;
            let weights = n.weights;
            let session = w.writer.clone();
            w.record_session(
                self.instance,
                session,
                format!(
                    "weights of node {i} blue={} green={}",
                    weights.blue, weights.green
                ),
                Some(weights),
            );
        }
        Ok(reply)
    }
}

/// This interval's node faults: restarts (runtime weights back to the configuration's, a new
/// process) and Runtime APIs that stop answering for a while.
pub fn node_faults(w: &mut WorldState) {
    let now = w.now;
    for i in 0..w.nodes.len() {
        if w.nodes[i].down_until.is_some_and(|t| now >= t) {
            w.nodes[i].down_until = None;
            w.log(|| format!("HAProxy node {i} answers again"));
        }
        if w.chance(Fault::HaproxyReload) {
            let n = &mut w.nodes[i];
            n.pid += 1;
            n.started = now.as_second().max(0) as u64;
            n.reset = true;
            n.weights = n.configured;
            w.log(|| format!("HAProxy node {i} reloads"));
        }
        if w.nodes[i].down_until.is_none() && w.chance(Fault::HaproxyUnreachable) {
            let mins = w.rng.random_range(2..45);
            w.nodes[i].down_until = Some(now + SignedDuration::from_mins(mins));
            w.log(|| format!("HAProxy node {i} unreachable for {mins} min"));
        }
    }
}

/// The fleet's split as traffic sees it: the mean green share over the nodes (each serves an
/// equal part).
pub fn green_share(nodes: &[SimNode]) -> f64 {
    let shares: f64 = nodes
        .iter()
        .map(|n| n.weights.green as f64 / (n.weights.blue + n.weights.green).max(1) as f64)
        .sum();
    shares / nodes.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::daemon::store::encode;
    use crate::daemon::Shell;
    use crate::engine::{Intent, Phase, RolloutState};
    use crate::sim::night::sim_env::SimEnv;
    use crate::sim::night::{run_ready, statics, Faults};

    /// A world of three nodes at `weights`, with `state` stored.
    fn world(state: &RolloutState, weights: Weights, now: Timestamp) -> Arc<Mutex<WorldState>> {
        let policy = statics().haproxy;
        let mut w = WorldState::new(1, Faults::none(), now, 1);
        w.nodes = (0..3)
            .map(|i| SimNode {
                weights,
                ..SimNode::new(i, policy.traffic.weights_for(0.0), now)
            })
            .collect();
        let key = format!("greenlight/state/{}", policy.api);
        w.states
            .insert(key, (encode(state).expect("encodes"), w.index));
        Arc::new(Mutex::new(w))
    }

    #[test]
    fn a_rollback_decided_while_a_node_is_down_reaches_it_when_it_answers() {
        let policy = statics().haproxy;
        let now: Timestamp = "2026-01-05T22:00:00Z".parse().unwrap();
        let mut state = RolloutState::started(policy, now - SignedDuration::from_mins(30));
        state.applying_from = None;
        let split = Weights {
            blue: 75,
            green: 25,
        };
        state.weights = split;
        state.intent = Some(Intent::Rollback {
            reason: "operator".into(),
        });
        let world = world(&state, split, now);
        lock(&world).nodes[1].down_until = Some(now + SignedDuration::from_mins(10));
        let shell = Shell::with_env(SimEnv::new(&world, 0), Duration::ZERO);
        // The rollback lands on the nodes that answer; the one down still sends traffic to
        // green, so the rollback is not applied.
        let _ = run_ready(shell.evaluate(policy, None, now));
        let drained = |w: &WorldState| w.nodes.iter().map(|n| n.weights.green).collect::<Vec<_>>();
        assert_eq!(drained(&lock(&world)), vec![0, 25, 0]);
        // Evaluations while it is still down (the others agree) must not take the rollback
        // for done.
        for m in 1..=3 {
            let t = now + SignedDuration::from_mins(m);
            lock(&world).now = t;
            let _ = run_ready(shell.evaluate(policy, None, t));
        }
        // It answers again: greenlight finishes its rollback there, without a pause or an
        // override alert.
        let t = now + SignedDuration::from_mins(11);
        lock(&world).now = t;
        let _ = run_ready(shell.evaluate(policy, None, t));
        let w = lock(&world);
        assert_eq!(drained(&w), vec![0, 0, 0]);
        assert_eq!(w.overrides, 0);
        let key = format!("greenlight/state/{}", policy.api);
        let stored = w.stored_state(&policy.api, &key).unwrap().unwrap();
        assert_eq!(stored.phase, Phase::RolledBack);
        assert_eq!(stored.weights, policy.traffic.weights_for(0.0));
        assert_eq!(stored.applying_from, None);
    }

    #[test]
    fn a_reload_is_reapplied_not_taken_for_a_human_edit() {
        let policy = statics().haproxy;
        let now: Timestamp = "2026-01-05T22:00:00Z".parse().unwrap();
        let mut state = RolloutState::started(policy, now - SignedDuration::from_mins(30));
        state.applying_from = None;
        state.weights_confirmed_at = Some(now - SignedDuration::from_mins(5));
        let at_step = state.weights;
        let world = world(&state, at_step, now);
        let shell = Shell::with_env(SimEnv::new(&world, 0), Duration::ZERO);
        let _ = run_ready(shell.evaluate(policy, None, now));
        // Node 2 restarts with its configuration's weights.
        {
            let mut w = lock(&world);
            let t = now + SignedDuration::from_mins(1);
            w.now = t;
            let n = &mut w.nodes[2];
            n.pid += 1;
            n.started = t.as_second() as u64;
            n.weights = n.configured;
        }
        let t = now + SignedDuration::from_mins(1);
        let _ = run_ready(shell.evaluate(policy, None, t));
        let w = lock(&world);
        assert!(
            w.nodes.iter().all(|n| n.weights == at_step),
            "{:?}",
            w.nodes
        );
        assert_eq!(w.overrides, 0);
        let key = format!("greenlight/state/{}", policy.api);
        let stored = w.stored_state(&policy.api, &key).unwrap().unwrap();
        assert_eq!(stored.phase, Phase::Progressing);
    }
}
