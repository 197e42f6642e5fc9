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

mod faults;
mod world;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use faults::{Fault, Faults};
pub use world::{MetricsMode, SimEnv, WorldState};

use crate::consul::Fence;
use crate::daemon::Shell;
use crate::engine::{Intent, Phase, RolloutState};
use crate::policy::{Policy, Weights};
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
}

/// What made a rollback happen, from its recorded reason.
fn rollback_cause(reason: &str) -> &'static str {
    if reason.starts_with("Operator rollback") {
        "operator"
    } else if reason.contains("guard failed") {
        "threshold guard"
    } else if reason.contains("green's data") || reason.contains("green data") {
        "green data missing"
    } else if reason.contains("evidence") {
        "evidence"
    } else {
        "other"
    }
}

/// A shared, leaked copy of the policy and worlds (one per process; the traffic generator
/// borrows them for the whole night).
struct Statics {
    policy: &'static Policy,
    worlds: Vec<&'static Scenario>,
}

fn statics() -> &'static Statics {
    static S: std::sync::OnceLock<Statics> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let policy = Policy::from_toml(NIGHT_POLICY, Path::new("night.toml"), None)
            .expect("the night policy is valid");
        Statics {
            policy: Box::leak(Box::new(policy)),
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
        let env = SimEnv {
            world: world.clone(),
            instance: i,
            prefix: "greenlight".into(),
        };
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
    let policy = st.policy;
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
    let world = Arc::new(Mutex::new(WorldState {
        rng: StdRng::seed_from_u64(cfg.seed),
        faults: cfg.faults.clone(),
        step: 0,
        now: start,
        clock_offset: vec![SignedDuration::ZERO; instances],
        index: 1,
        states: HashMap::new(),
        weights,
        holder: None,
        sessions: 0,
        crashed: vec![false; instances],
        metrics: MetricsMode::Normal,
        traffic,
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
        trace: cfg.trace.then(Vec::new),
        checked: HashMap::new(),
    }));
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
            // The leader's machine is gone for good, its local disk with it; another instance
            // takes over.
            if let Some((h, _)) = w.holder.clone() {
                if (0..instances).any(|j| j != h && !w.gone[j]) && w.chance(Fault::InstanceLost) {
                    w.lose_instance(h);
                }
            }
            // The leader's session is lost.
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

/// What the invariants compare from one step to the next.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    state: Option<RolloutState>,
    live: Option<Weights>,
    landed: usize,
}

/// The invariants, with what they remember across steps.
#[derive(Debug, Default)]
struct Checker {
    last: Option<RolloutState>,
    human_since: Option<Timestamp>,
    /// Steps a decided rollback has been unapplied with no "not applied" alert.
    unapplied_steps: u32,
    /// The current rollout's recorded start and the step at which it was first seen.
    rollout: Option<(Timestamp, u64)>,
}

type Broken = (&'static str, String);

impl Checker {
    fn snapshot(&self, world: &Arc<Mutex<WorldState>>, key: &str, api: &str) -> Snapshot {
        let mut w = lock(world);
        Snapshot {
            state: w.checked_state(api, key).and_then(|c| c.state.ok()),
            live: w.weights.get(api).copied(),
            landed: w.landed.len(),
        }
    }

    fn check(
        &mut self,
        world: &Arc<Mutex<WorldState>>,
        policy: &Policy,
        key: &str,
        before: &Snapshot,
        intent_this_step: bool,
    ) -> Result<(), Broken> {
        let mut w = lock(world);
        let api = policy.api.as_str();
        let Some(checked) = w.checked_state(api, key) else {
            return Ok(());
        };
        // Nothing non-finite in what is stored.
        if let Some(path) = checked.null_at {
            return Err(("nothing non-finite is stored", format!("null at {path}")));
        }
        // The stored state always decodes.
        let state = match checked.state {
            Err(e) => return Err(("the stored state always decodes", e)),
            Ok(s) => s,
        };
        let live = w
            .weights
            .get(api)
            .copied()
            .unwrap_or(Weights { blue: 0, green: 0 });
        let total = policy.traffic.total_weight;
        // Blue + green = total, never a half-applied split.
        if live.blue + live.green != total {
            return Err((
                "blue + green = total",
                format!("blue={} green={} total={total}", live.blue, live.green),
            ));
        }
        // The state is never older than a confirmed weight change.
        let human = w.human.get(api).copied();
        let released = w.released_human.get(api).copied();
        if live != state.weights
            && Some(live) != state.applying_from
            && Some(live) != human
            && Some(live) != released
        {
            return Err((
                "the stored state knows the live weights",
                format!(
                    "live blue={} green={}, state blue={} green={} (applying from {:?})",
                    live.blue,
                    live.green,
                    state.weights.blue,
                    state.weights.green,
                    state.applying_from
                ),
            ));
        }
        let new_writes = &w.landed[before.landed..];
        // Only the lock holder writes.
        if let Some(l) = new_writes.iter().find(|l| l.session != l.holder) {
            return Err((
                "only the lock holder writes",
                format!(
                    "instance {} wrote {} with session {:?} while {:?} held the lock",
                    l.instance, l.what, l.session, l.holder
                ),
            ));
        }
        let weight_writes = new_writes
            .iter()
            .filter(|l| l.what.starts_with("weights"))
            .count();
        // A weight set by a human is never overwritten.
        if before.live.is_some() && human.is_some() && weight_writes > 0 {
            return Err((
                "a weight set by a human is never overwritten",
                format!(
                    "greenlight wrote weights while a human's blue={} green={} stood",
                    live.blue, live.green
                ),
            ));
        }
        // No weight change and no rollback on unusable data.
        let prior_pending = before
            .state
            .as_ref()
            .is_some_and(|s| s.applying_from.is_some());
        let prior_intent = before.state.as_ref().is_some_and(|s| s.intent.is_some());
        // Green has no series before its rollout starts: an automatic start may not wait for them.
        let starting = before
            .state
            .as_ref()
            .is_none_or(|s| s.phase == Phase::Pending)
            && w.metrics == MetricsMode::GreenMissing;
        if !w.metrics.usable() && !intent_this_step && !prior_intent && !prior_pending && !starting
        {
            if weight_writes > 0 {
                return Err((
                    "no weight change while the data are unusable",
                    format!(
                        "metrics {:?}, weights now blue={} green={}",
                        w.metrics, live.blue, live.green
                    ),
                ));
            }
            let was = before.state.as_ref().map(|s| s.phase);
            if state.phase == Phase::RolledBack && was != Some(Phase::RolledBack) {
                return Err((
                    "no rollback on unusable data",
                    format!(
                        "metrics {:?}: {}",
                        w.metrics,
                        state.reason.clone().unwrap_or_default()
                    ),
                ));
            }
        }
        // A decided rollback is applied, or a critical "not applied" alert is outstanding.
        let rollback_weights = policy.traffic.weights_for(0.0);
        if state.phase == Phase::RolledBack
            && state.applying_from.is_some()
            && live != rollback_weights
        {
            let alerted = state.rollback_unapplied
                && w.produced
                    .iter()
                    .any(|(k, r)| !r && k.ends_with("-not-applied"));
            if alerted {
                self.unapplied_steps = 0;
            } else {
                self.unapplied_steps += 1;
                if self.unapplied_steps >= 3 {
                    return Err((
                        "a decided rollback is applied or alerted as not applied",
                        format!(
                            "live blue={} green={} for {} steps",
                            live.blue, live.green, self.unapplied_steps
                        ),
                    ));
                }
            }
        } else {
            self.unapplied_steps = 0;
        }
        // No window counted twice; evidence never reset by a crash or failover.
        if let Some(prev) = &self.last {
            let same_rollout = prev.rollout_started_at == state.rollout_started_at;
            if same_rollout {
                // Windows consumed without data may be given back (a corrected forward clock
                // jump); windows whose data counted never are.
                if state.last_good_data_at < prev.last_good_data_at {
                    return Err((
                        "no window is counted twice",
                        format!(
                            "the end of the last counted window went back from {:?} to {:?}",
                            prev.last_good_data_at, state.last_good_data_at
                        ),
                    ));
                }
                for (a, b) in prev.streams.iter().zip(&state.streams) {
                    if a.id == b.id && b.advance.intervals < a.advance.intervals {
                        return Err((
                            "evidence is never reset by a crash or failover",
                            format!(
                                "{}: {} counted windows, then {}",
                                a.id, a.advance.intervals, b.advance.intervals
                            ),
                        ));
                    }
                }
            }
        }
        // Counted windows never exceed the intervals of true time since the rollout began (its
        // recorded start comes from an instance's clock, which may be off).
        if self.rollout.map(|(t, _)| t) != state.rollout_started_at {
            self.rollout = state.rollout_started_at.map(|t| (t, w.step));
        }
        if let Some((_, first_step)) = self.rollout {
            let windows = (w.step - first_step) as i64;
            for s in &state.streams {
                if s.advance.intervals as i64 > windows + 1 {
                    return Err((
                        "no window is counted twice",
                        format!(
                            "{}: {} windows counted in {} intervals",
                            s.id, s.advance.intervals, windows
                        ),
                    ));
                }
            }
        }
        drop(w);
        self.last = Some(state);
        Ok(())
    }
}

/// The outcome of many nights.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub nights: usize,
    pub hours: f64,
    pub faults: BTreeMap<Fault, u64>,
    pub violations: Vec<Violation>,
    /// Per world: (nights, promoted, rolled back, minutes to the end of each decided night,
    /// green requests, bad green requests).
    pub worlds: BTreeMap<&'static str, WorldOutcome>,
}

#[derive(Debug, Default, Clone)]
pub struct WorldOutcome {
    pub regression: bool,
    pub nights: usize,
    pub promoted: usize,
    pub rolled_back: usize,
    pub minutes: Vec<f64>,
    pub bad_green: u64,
    pub green_requests: u64,
    /// Rollbacks by cause (operator, evidence, green data missing, threshold guard).
    pub causes: BTreeMap<&'static str, usize>,
}

impl SoakReport {
    pub fn add(&mut self, r: &NightResult) {
        self.nights += 1;
        self.hours += r.hours;
        for (f, n) in &r.faults {
            *self.faults.entry(*f).or_default() += n;
        }
        if let Some(v) = &r.violation {
            self.violations.push(v.clone());
        }
        let o = self.worlds.entry(r.world).or_default();
        o.regression = r.regression;
        o.nights += 1;
        match r.phase {
            Some(Phase::Promoted) => o.promoted += 1,
            Some(Phase::RolledBack) => o.rolled_back += 1,
            _ => {}
        }
        if let Some(m) = r.minutes_to_end {
            o.minutes.push(m);
        }
        if let Some(c) = r.rollback_cause {
            *o.causes.entry(c).or_default() += 1;
        }
        o.bad_green += r.bad_green;
        o.green_requests += r.green_requests;
    }

    /// A Markdown report: nights, faults, violations, outcomes per world.
    pub fn table(&self) -> String {
        let mut out = format!(
            "nights: {}, simulated hours: {:.0}, invariant violations: {}\n\n| fault | injected |\n|---|---:|\n",
            self.nights,
            self.hours,
            self.violations.len()
        );
        for (f, n) in &self.faults {
            out.push_str(&format!("| {f} | {n} |\n"));
        }
        out.push_str("\n| world | green is | nights | promoted | rolled back | by the statistics | by an operator | for green's missing data | median minutes to the end | bad green requests per night |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (name, o) in &self.worlds {
            let mut m = o.minutes.clone();
            m.sort_by(f64::total_cmp);
            let median = if m.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", m[m.len() / 2])
            };
            let cause = |c: &str| o.causes.get(c).copied().unwrap_or(0);
            out.push_str(&format!(
                "| {name} | {} | {} | {} ({:.1} %) | {} ({:.1} %) | {} | {} | {} | {median} | {:.0} |\n",
                if o.regression { "worse" } else { "healthy" },
                o.nights,
                o.promoted,
                100.0 * o.promoted as f64 / o.nights.max(1) as f64,
                o.rolled_back,
                100.0 * o.rolled_back as f64 / o.nights.max(1) as f64,
                cause("evidence") + cause("threshold guard"),
                cause("operator"),
                cause("green data missing"),
                o.bad_green as f64 / o.nights.max(1) as f64,
            ));
        }
        for v in self.violations.iter().take(20) {
            out.push_str(&format!("\nviolation: {v}"));
        }
        out
    }
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
