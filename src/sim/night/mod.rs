//! Simulated nights: the real daemon shell ([`crate::daemon::Shell`]: store and codec, windows
//! and catch-up, weight writes and recovery of half-done changes, override detection, fencing,
//! alerts) driven in virtual time against an in-memory world with faults injected at every I/O
//! step, checking invariants after every step. Single-threaded and reproducible: the same seed
//! gives the same trace, bit for bit.
//!
//! Each simulated interval: faults for the interval are drawn (metrics mode, clock jumps, human
//! edits, leader loss, alert receiver outages); every live instance that holds the lock
//! evaluates each API through the shell, retrying like the daemon's tick does; crashed
//! instances restart from the store; then the invariants are checked.

mod checker;
mod faults;
mod haproxy;
mod report;
mod rollout;
mod sim_env;
mod world;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::Rng;

use checker::Checker;
pub use faults::{Fault, Faults};
pub use report::{SoakReport, WorldOutcome};
pub use rollout::ShellRollout;
pub use sim_env::SimEnv;
pub use world::{MetricsMode, WorldState};

use crate::consul::Fence;
use crate::daemon::Shell;
use crate::engine::{Intent, Phase, RolloutState};
use crate::policy::Policy;
use crate::sim::{Scenario, World};

/// The policy simulated nights run by default: the checkout example without its schedule.
pub const NIGHT_POLICY: &str = r#"
api = "checkout"
interval = "1m"
steps = [1, 5, 10, 25, 50, 100]
min_step_duration = "10m"
min_green_requests_per_step = 2000
max_step_duration = "2h"
advance_on_dwell_below = 10
false_rollback_rate = 0.01
no_data_alert_after = "10m"
alerts = ["oncall"]

[traffic]
consul_keys = { blue = "haproxy/checkout/weights/blue", green = "haproxy/checkout/weights/green" }
total_weight = 100

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}"}[{interval}]))'
errors = 'sum(increase(haproxy_server_http_responses_total{proxy="api_checkout",server="{color}",code="5xx"}[{interval}]))'
tolerance = 0.2
advance_tolerance = 0.5
min_errors = 5

[[check]]
name = "latency"
kind = "latency_histogram"
buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{service="checkout",cluster="{color}"}[{interval}]))'
edges = ["0.25", "1"]
tolerance = 0.2
advance_max_rate = 0.01
"#;

/// The worlds nights are drawn from (by seed), and whether green is a regression there.
pub const WORLDS: [(&str, bool); 8] = [
    ("healthy", false),
    ("healthy,rps=2000", false),
    ("healthy,overdispersion=0.3", false),
    ("healthy,diurnal,rps=20", false),
    ("errors=2x", true),
    ("errors=5x", true),
    ("latency=+50%", true),
    ("errors=3x,from-step=3", true),
];

/// HAProxy nodes of a night on the `haproxy` target.
const HAPROXY_NODES: usize = 3;

/// One night's settings.
#[derive(Debug, Clone)]
pub struct NightConfig {
    pub seed: u64,
    pub hours: f64,
    pub faults: Faults,
    /// Keep the full event trace.
    pub trace: bool,
}

/// What went wrong in a night: the first invariant violation.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} step {}: invariant \"{}\" violated: {}",
            self.seed, self.step, self.invariant, self.detail
        )
    }
}

/// How one night ended.
#[derive(Debug, Clone)]
pub struct NightResult {
    pub seed: u64,
    pub world: &'static str,
    pub regression: bool,
    pub phase: Option<Phase>,
    /// Minutes from the start to promotion or rollback.
    pub minutes_to_end: Option<f64>,
    pub green_requests: u64,
    pub bad_green: u64,
    pub faults: BTreeMap<Fault, u64>,
    pub violation: Option<Violation>,
    pub trace: Vec<String>,
    pub hours: f64,
    /// Why the rollout was rolled back, if it was.
    pub rollback_cause: Option<&'static str>,
    /// Whether the rollout went through a bake (the policy of one seed block in four bakes).
    pub baked: bool,
}

/// What made a rollback happen, from its recorded reason.
fn rollback_cause(reason: &str) -> &'static str {
    if reason.starts_with("Operator rollback") {
        "operator"
    } else if reason.contains("guard failed") {
        "threshold guard"
    } else if reason.contains("metrics have been missing")
        || reason.contains("green's data")
        || reason.contains("green data")
    {
        "green data missing"
    } else if reason.contains("evidence") {
        "evidence"
    } else {
        "other"
    }
}

/// A shared, leaked copy of the policy and worlds (one per process; the traffic generator
/// borrows them for the whole night).
pub(super) struct Statics {
    pub(super) policy: &'static Policy,
    /// The same policy on the `haproxy` target.
    pub(super) haproxy: &'static Policy,
    /// The same policy (Consul keys) with a 30-minute bake after the last step.
    pub(super) baking: &'static Policy,
    worlds: Vec<&'static Scenario>,
}

pub(super) fn statics() -> &'static Statics {
    static S: std::sync::OnceLock<Statics> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let policy = Policy::from_toml(NIGHT_POLICY, Path::new("night.toml"), None)
            .expect("the night policy is valid");
        let target = format!(
            "haproxy = {{ backend = \"{}\", blue = \"blue\", green = \"green\" }}",
            haproxy::BACKEND
        );
        let text = NIGHT_POLICY.replace(
            r#"consul_keys = { blue = "haproxy/checkout/weights/blue", green = "haproxy/checkout/weights/green" }"#,
            &target,
        );
        let on_haproxy = Policy::from_toml(&text, Path::new("night-haproxy.toml"), None)
            .expect("the night policy on HAProxy is valid");
        let baking = Policy::from_toml(
            &NIGHT_POLICY.replace("alerts = [", "bake = \"30m\"\nalerts = ["),
            Path::new("night-baking.toml"),
            None,
        )
        .expect("the baking night policy is valid");
        Statics {
            baking: Box::leak(Box::new(baking)),
            policy: Box::leak(Box::new(policy)),
            haproxy: Box::leak(Box::new(on_haproxy)),
            worlds: WORLDS
                .iter()
                .map(|(s, _)| &*Box::leak(Box::new(s.parse::<Scenario>().expect("valid world"))))
                .collect(),
        }
    })
}

/// Runs a future whose I/O is all in memory (it never waits) to completion.
fn run_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a simulated I/O step waited; the simulated world never does"),
    }
}

/// One daemon process.
struct Instance {
    shell: Shell<SimEnv>,
    fence: Option<Fence>,
    /// Keeps `fence` held while this instance believes it leads.
    held: Option<tokio::sync::watch::Sender<bool>>,
    /// End of the last window done with, per API (the daemon's schedule, lost on a crash).
    last_end: HashMap<String, Timestamp>,
}

impl Instance {
    fn boot(world: &Arc<Mutex<WorldState>>, i: usize) -> Instance {
        let env = SimEnv::new(world, i);
        let shell = Shell::with_env(env, Duration::ZERO);
        // The daemon delivers what a previous run left in its outbox before anything else.
        run_ready(crate::daemon::AlertIo::flush(&shell.env, None));
        Instance {
            shell,
            fence: None,
            held: None,
            last_end: HashMap::new(),
        }
    }
}

/// Runs one night.
pub fn run_night(cfg: &NightConfig) -> NightResult {
    let st = statics();
    // Every other block of eight seeds drives HAProxy nodes instead of Consul keys; one block
    // in four bakes for 30 minutes after the last step.
    let block = cfg.seed / WORLDS.len() as u64;
    let on_haproxy = block % 2 == 1;
    let policy = match (on_haproxy, block % 4) {
        (true, _) => st.haproxy,
        (false, 2) => st.baking,
        (false, _) => st.policy,
    };
    let world_index = (cfg.seed % WORLDS.len() as u64) as usize;
    let (world_name, regression) = WORLDS[world_index];
    let start: Timestamp = "2026-01-05T21:00:00Z".parse().expect("valid timestamp");
    let interval =
        SignedDuration::try_from(policy.interval).unwrap_or(SignedDuration::from_mins(1));
    let instances = if cfg.faults.enabled(Fault::LockRace) {
        2
    } else {
        1
    };
    let mut traffic = HashMap::new();
    traffic.insert(
        policy.api.clone(),
        World::new(policy, st.worlds[world_index], cfg.seed ^ 0x5eed),
    );
    let mut weights = HashMap::new();
    weights.insert(policy.api.clone(), policy.traffic.weights_for(0.0));
    let mut state = WorldState::new(cfg.seed, cfg.faults.clone(), start, instances);
    state.traffic = traffic;
    state.weights = weights;
    state.trace = cfg.trace.then(Vec::new);
    if on_haproxy {
        let configured = policy.traffic.weights_for(0.0);
        state.nodes = (0..HAPROXY_NODES)
            .map(|i| haproxy::SimNode::new(i, configured, start))
            .collect();
    }
    let world = Arc::new(Mutex::new(state));
    let mut procs: Vec<Instance> = (0..instances).map(|i| Instance::boot(&world, i)).collect();
    let mut checker = Checker::default();
    let steps = (cfg.hours * 3600.0 / interval.as_secs_f64()).round() as u64;
    let mut metrics_until: Option<(Timestamp, MetricsMode)> = None;
    let mut clock_back_at: Vec<Option<Timestamp>> = vec![None; instances];
    let mut end_at: Option<Timestamp> = None;
    let mut violation = None;
    let key = format!("greenlight/state/{}", policy.api);

    for step in 1..=steps {
        let mut intent_this_step = false;
        {
            let mut w = lock(&world);
            w.step = step;
            w.now = start + interval * step as i32;
            let now = w.now;
            // Metrics for this interval.
            w.metrics = match metrics_until {
                Some((until, mode)) if now < until => mode,
                _ => {
                    metrics_until = None;
                    if w.chance(Fault::MetricsOutage) {
                        let mins = w.rng.random_range(5..90);
                        metrics_until =
                            Some((now + SignedDuration::from_mins(mins), MetricsMode::Outage));
                        MetricsMode::Outage
                    } else if w.chance(Fault::MetricsSlow) {
                        MetricsMode::Slow
                    } else if w.chance(Fault::MetricsGarbage) {
                        match w.rng.random_range(0..3) {
                            0 => MetricsMode::NotANumber,
                            1 => MetricsMode::Huge,
                            _ => MetricsMode::GreenMissing,
                        }
                    } else {
                        MetricsMode::Normal
                    }
                }
            };
            haproxy::node_faults(&mut w);
            w.sync_fleet(&policy.api);
            let mode = w.metrics;
            if mode != MetricsMode::Normal {
                w.log(|| format!("metrics {mode:?}"));
            }
            // Clock jumps, undone some time later.
            for (i, back_at) in clock_back_at.iter_mut().enumerate() {
                if back_at.is_some_and(|t| now >= t) {
                    w.clock_offset[i] = SignedDuration::ZERO;
                    *back_at = None;
                    w.log(|| format!("instance {i} clock corrected"));
                } else if back_at.is_none() && w.chance(Fault::ClockJump) {
                    let mins = if w.rng.random_bool(0.5) {
                        -w.rng.random_range(2..120)
                    } else {
                        w.rng.random_range(2..240)
                    };
                    w.clock_offset[i] = SignedDuration::from_mins(mins);
                    *back_at = Some(now + SignedDuration::from_mins(w.rng.random_range(5..60)));
                    w.log(|| format!("instance {i} clock jumps {mins} min"));
                }
            }
            // The alert receiver goes down for hours.
            if w.receiver_down_until.is_none_or(|t| now >= t) && w.chance(Fault::AlertsDown) {
                let hours = w.rng.random_range(1..5);
                w.receiver_down_until = Some(now + SignedDuration::from_hours(hours));
                w.log(|| format!("alert receiver down for {hours} h"));
            }
            // The leader's session is lost.
            // The leader's machine is gone for good, its local disk with it; another instance
            // takes over.
            if let Some((h, _)) = w.holder.clone() {
                if (0..instances).any(|j| j != h && !w.gone[j]) && w.chance(Fault::InstanceLost) {
                    w.lose_instance(h);
                }
            }
            if w.holder.is_some() && w.chance(Fault::LeaderLoss) {
                w.log(|| "leader session invalidated".to_string());
                w.holder = None;
            }
            // A human edits the weights; an operator gives them back later.
            let api = policy.api.clone();
            if let Some(since) = checker.human_since {
                if now - since >= SignedDuration::from_mins(45) {
                    let intent = match w.rng.random_range(0..3) {
                        0 => Intent::Resume,
                        1 => Intent::ResumeAdoptLive,
                        _ => Intent::Rollback {
                            reason: "operator".into(),
                        },
                    };
                    if operator_intent(&mut w, policy, &key, intent.clone()) {
                        if let Some(h) = w.human.remove(&api) {
                            w.released_human.insert(api.clone(), h);
                        }
                        checker.human_since = None;
                        intent_this_step = true;
                        w.log(|| format!("operator intent {intent:?}"));
                    }
                }
            } else if w.chance(Fault::HumanEdit) {
                let current = w.weights[&api];
                let total = policy.traffic.total_weight;
                let by_hand = world::human_split(&mut w.rng, total, current);
                // On every node (the configuration and each runtime).
                for n in &mut w.nodes {
                    n.weights = by_hand;
                    n.reset = false;
                }
                w.weights.insert(api.clone(), by_hand);
                w.human.insert(api.clone(), by_hand);
                checker.human_since = Some(now);
                w.log(|| format!("human sets blue={} green={}", by_hand.blue, by_hand.green));
            }
        }

        let before = checker.snapshot(&world, &key, &policy.api);
        // Every instance: restart if crashed, take the lock if free, evaluate if leading.
        let order: Vec<usize> = {
            let mut w = lock(&world);
            let mut o: Vec<usize> = (0..instances).collect();
            if instances > 1 && w.rng.random_bool(0.5) {
                o.reverse();
            }
            o
        };
        for i in order {
            if lock(&world).gone[i] {
                continue;
            }
            if lock(&world).crashed[i] {
                let mut w = lock(&world);
                w.crashed[i] = false;
                if w.holder.as_ref().is_some_and(|(h, _)| *h == i) {
                    // Its session expires.
                    w.holder = None;
                }
                w.log(|| format!("instance {i} restarts"));
                drop(w);
                procs[i] = Instance::boot(&world, i);
            }
            let p = &mut procs[i];
            {
                let mut w = lock(&world);
                let holds = match (&w.holder, &p.fence) {
                    (Some((h, s)), Some(f)) => *h == i && *s == f.session,
                    _ => false,
                };
                // A leader that lost its session may not know yet: half the time it learns
                // before its next evaluation, otherwise its fenced writes must be refused.
                if !holds && (p.fence.is_none() || w.rng.random_bool(0.5)) {
                    p.fence = None;
                    p.held = None;
                    if w.holder.is_none() {
                        w.sessions += 1;
                        let session = format!("session-{}", w.sessions);
                        w.holder = Some((i, session.clone()));
                        w.log(|| format!("instance {i} acquires the lock ({session})"));
                        let (fence, held) =
                            Fence::held_by("greenlight/leader", w.sessions, session);
                        p.fence = Some(fence);
                        p.held = Some(held);
                    }
                }
            }
            let Some(fence) = p.fence.clone() else {
                continue;
            };
            // The daemon's tick: evaluate when due, again at the next tick after a failure.
            for _attempt in 0..4 {
                let now = crate::daemon::Clock::now(&p.shell.env);
                let end = crate::metrics::window::aligned_end(now, policy.interval, Duration::ZERO);
                if p.last_end.get(&policy.api).is_some_and(|l| *l == end) {
                    break;
                }
                let r = run_ready(p.shell.evaluate(policy, Some(&fence), now));
                if lock(&world).crashed[i] {
                    break;
                }
                match r {
                    Ok(Some(end)) => {
                        p.last_end.insert(policy.api.clone(), end);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        lock(&world).log(|| format!("instance {i} evaluation failed: {e}"));
                        if matches!(
                            e,
                            crate::daemon::EvalError::Store(
                                crate::daemon::StoreError::LockLost { .. }
                            ) | crate::daemon::EvalError::Traffic(
                                crate::traffic::TrafficError::LockLost
                            )
                        ) {
                            p.fence = None;
                            break;
                        }
                    }
                }
            }
            if !lock(&world).crashed[i] {
                run_ready(crate::daemon::AlertIo::flush(
                    &p.shell.env,
                    p.fence.as_ref(),
                ));
            }
        }

        if let Err(v) = checker.check(&world, policy, &key, &before, intent_this_step) {
            violation = Some(Violation {
                seed: cfg.seed,
                step,
                invariant: v.0,
                detail: v.1,
            });
            break;
        }
        if end_at.is_none() {
            if let Some(s) = &checker.last {
                if matches!(s.phase, Phase::Promoted | Phase::RolledBack)
                    && checker.human_since.is_none()
                {
                    end_at = Some(lock(&world).now);
                }
            }
        }
    }

    // Morning: receivers come back, every instance still there restarts and flushes its local
    // outbox, the next lock holder the shared one. Lost with a machine that never came back:
    // only that machine's local alerts, never one raised by a persisted decision.
    if violation.is_none() {
        let mut w = lock(&world);
        w.receiver_down_until = None;
        for i in 0..instances {
            if !w.gone[i] {
                w.crashed[i] = false;
                w.deliver(i);
            }
        }
        w.deliver_shared();
        let mut lost: Vec<String> = w
            .produced
            .difference(&w.delivered)
            .filter(|k| !w.lost_alerts.contains(*k))
            .map(|(k, r)| format!("{k}{}", if *r { " (resolved)" } else { "" }))
            .collect();
        // A persisted rollback's alert is delivered, whoever decided it.
        if let Some(s) = w
            .stored_state(&policy.api, &key)
            .and_then(Result::ok)
            .filter(|s| s.phase == Phase::RolledBack)
        {
            let id = s
                .rollout_started_at
                .map_or("none".to_string(), |t| t.as_second().to_string());
            let wanted = (format!("{}/rollback/{id}", policy.api), false);
            if !w.delivered.contains(&wanted) {
                lost.push(format!("{} (the persisted rollback's alert)", wanted.0));
            }
        }
        if !lost.is_empty() {
            violation = Some(Violation {
                seed: cfg.seed,
                step: w.step,
                invariant: "every alert is delivered once its receiver is back",
                detail: lost.join(", "),
            });
        }
    }
    let mut w = lock(&world);
    let trace = w.trace.take().unwrap_or_default();
    NightResult {
        seed: cfg.seed,
        world: world_name,
        regression,
        phase: checker.last.as_ref().map(|s| s.phase),
        baked: checker.baked,
        minutes_to_end: end_at.map(|t| (t - start).as_secs_f64() / 60.0),
        green_requests: w.green_requests.values().sum(),
        bad_green: w.bad_green.values().sum(),
        faults: w.faults.fired.clone(),
        violation,
        trace,
        hours: cfg.hours,
        rollback_cause: checker
            .last
            .as_ref()
            .filter(|s| s.phase == Phase::RolledBack)
            .map(|s| rollback_cause(s.reason.as_deref().unwrap_or_default())),
    }
}

fn lock(world: &Arc<Mutex<WorldState>>) -> std::sync::MutexGuard<'_, WorldState> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

/// An operator command: writes an intent into the stored state by compare-and-set, like the
/// CLI. Returns whether it was written.
fn operator_intent(w: &mut WorldState, policy: &Policy, key: &str, intent: Intent) -> bool {
    let (mut state, index) = match w.stored_state(&policy.api, key) {
        Some(Ok(s)) => (s, w.states[key].1),
        Some(Err(_)) => return false,
        None => (RolloutState::new(policy), 0),
    };
    if w.states.get(key).map_or(0, |e| e.1) != index {
        return false;
    }
    state.intent = Some(intent);
    let Ok(body) = crate::daemon::store::encode(&state) else {
        return false;
    };
    w.index += 1;
    let new = w.index;
    w.states.insert(key.to_string(), (body, new));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let cfg = NightConfig {
            seed: 11,
            hours: 2.0,
            faults: Faults::all(),
            trace: true,
        };
        let a = run_night(&cfg);
        let b = run_night(&cfg);
        assert!(!a.trace.is_empty());
        assert_eq!(a.trace, b.trace);
    }
}
