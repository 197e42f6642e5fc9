//! One rollout of one API through the real daemon shell, in a simulated world without faults:
//! what `simulate` and the decision-quality comparison measure for greenlight. Every window the
//! shell loads the stored state (decoding it with the production codec), reads and reconciles
//! the live weights, chooses its window, decides, stores the state and writes the weights, as
//! the daemon does; the caller draws each window's traffic from [`crate::sim::World`] and hands
//! the observation in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::sim_env::SimEnv;
use super::world::WorldState;
use super::{lock, run_ready, Faults};
use crate::daemon::store::encode;
use crate::daemon::{AlertIo, EvalError, Shell};
use crate::engine::{DecisionRecord, Observation, RolloutState};
use crate::policy::{Policy, Weights};

/// A rollout driven through [`Shell`], one window at a time.
pub struct ShellRollout<'a> {
    policy: &'a Policy,
    world: Arc<Mutex<WorldState>>,
    shell: Shell<SimEnv>,
    key: String,
    /// The stored state after the last evaluation.
    state: RolloutState,
}

impl<'a> ShellRollout<'a> {
    /// A rollout of `policy` progressing at its first step since `start`, its weights live
    /// (as after `greenlight start` has been applied).
    pub fn started(policy: &'a Policy, start: Timestamp) -> Self {
        let mut state = RolloutState::started(policy, start);
        state.applying_from = None;
        state.weights_confirmed_at = Some(start);
        let world = Arc::new(Mutex::new(WorldState::new(0, Faults::none(), start, 1)));
        let env = SimEnv::new(&world, 0);
        let key = env.key(&policy.api);
        {
            let mut w = lock(&world);
            let body = encode(&state).expect("a fresh state encodes");
            let index = w.index;
            w.states.insert(key.clone(), (body, index));
            w.weights.insert(policy.api.clone(), state.weights);
        }
        ShellRollout {
            policy,
            world,
            shell: Shell::with_env(env, Duration::ZERO),
            key,
            state,
        }
    }

    /// The stored state after the last evaluation.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// The weights live on the target.
    pub fn live(&self) -> Weights {
        lock(&self.world)
            .weights
            .get(&self.policy.api)
            .copied()
            .unwrap_or(self.state.weights)
    }

    /// Green's share of the live traffic (0–1).
    pub fn green_share(&self) -> f64 {
        let live = self.live();
        live.green as f64 / (live.blue + live.green).max(1) as f64
    }

    /// One evaluation at `now`; the metrics backend answers `obs` for the window the caller
    /// drew (and no data for any other). Returns the decision recorded for this evaluation, if
    /// the shell decided.
    pub fn evaluate(
        &mut self,
        obs: Observation,
        now: Timestamp,
    ) -> Result<Option<DecisionRecord>, EvalError> {
        {
            let mut w = lock(&self.world);
            w.now = now;
            w.step += 1;
            w.fed = Some(obs);
        }
        let r = run_ready(self.shell.evaluate(self.policy, None, now));
        run_ready(self.shell.env.flush(None));
        {
            let mut w = lock(&self.world);
            w.fed = None;
            let index = w.states.get(&self.key).map(|(_, i)| *i);
            if let Some((i, saved)) = w.saved.get(&self.key) {
                if Some(*i) == index {
                    self.state = saved.clone();
                }
            }
        }
        r?;
        Ok(self.state.last_decision.clone().filter(|d| d.at == now))
    }
}
