//! Synthetic blue/green worlds that drive the real engine in accelerated time (`simulate`,
//! benchmarks, decision-quality comparisons).
//!
//! Each window: Poisson requests (optionally diurnal) split between the colours by the current
//! weights; per-colour error probability with optional gamma overdispersion; latency drawn from a
//! log-normal distribution and binned into histogram buckets. The simulator reads a threshold
//! query as a latency quantile when it is `histogram_quantile(q, …)`, otherwise as the colour's
//! error ratio.

pub mod cluster;
pub mod judges;
pub mod night;
pub mod replay;
mod scenario;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, Gamma, Poisson};
use serde::Serialize;

pub use scenario::{Scenario, ScenarioError};

use crate::engine::{
    Action, CheckData, CheckObservation, Counts, DataProblem, EdgeCounts, Observation, Pair, Phase,
};
use crate::policy::{CheckKind, Policy};

/// Prometheus' default histogram buckets, always simulated besides the policy's edges.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How a simulated rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Promoted,
    RolledBack,
    Held,
}

/// One simulated window and the decision taken on it.
#[derive(Debug, Clone, Serialize)]
pub struct SimWindow {
    pub end: Timestamp,
    pub elapsed_s: u64,
    pub green_percent: f64,
    pub blue: Counts,
    pub green: Counts,
    pub action: Action,
    pub reason: String,
    /// Each stream's evidence after the decision, in log space.
    pub evidence: Vec<crate::engine::EvidenceRecord>,
}

/// The result of one simulated rollout.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub outcome: Outcome,
    /// Time from the start of the rollout to promotion, rollback or the end of the simulation.
    pub duration_s: u64,
    /// Requests served by green during the rollout.
    pub green_requests: u64,
    /// Green requests that failed or were slower than the policy's highest latency edge.
    pub bad_green_requests: u64,
    /// Green errors only.
    pub green_errors: u64,
    pub decisions: usize,
    pub final_reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<SimWindow>,
}

/// Settings of one simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub scenario: Scenario,
    pub seed: u64,
    /// Simulation start; `None` = a fixed date, at the start of the policy's first schedule window.
    pub start: Option<Timestamp>,
    /// Give up (outcome `held`) after this long.
    pub max_duration: Duration,
    /// Keep every window in the result's timeline.
    pub keep_timeline: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            scenario: Scenario::default(),
            seed: 1,
            start: None,
            max_duration: Duration::from_secs(24 * 3600),
            keep_timeline: false,
        }
    }
}

/// The synthetic world: traffic generator for both colours.
pub struct World<'a> {
    policy: &'a Policy,
    scenario: &'a Scenario,
    rng: StdRng,
    buckets: Vec<f64>,
    top_edge: Option<f64>,
    /// Log-normal σ of green's latency (blue uses the scenario's).
    green_sigma: f64,
}

/// One drawn window: what the engine sees and what green really served.
#[derive(Debug, Clone)]
pub struct Draw {
    pub observation: Observation,
    pub blue: Counts,
    /// Green's requests and errors.
    pub green: Counts,
    /// Green requests that failed or were slower than the policy's highest latency edge.
    pub bad_green: u64,
    /// How many of green's requests would have been bad at blue's error rate and latency: what
    /// the same users would have suffered without the release.
    pub bad_green_at_blue_level: f64,
}

/// What one colour did in one window.
#[derive(Debug, Clone, Default)]
struct ColourWindow {
    requests: u64,
    errors: u64,
    /// Cumulative counts per bucket (`le` semantics), aligned with `World::buckets`.
    cumulative: Vec<u64>,
}

impl ColourWindow {
    fn slower_than(&self, buckets: &[f64], edge: f64) -> u64 {
        match buckets.iter().position(|b| *b == edge) {
            Some(i) => self.requests - self.cumulative[i],
            None => 0,
        }
    }

    /// Prometheus-style `histogram_quantile` over the buckets (linear within a bucket).
    fn quantile(&self, buckets: &[f64], q: f64) -> f64 {
        if self.requests == 0 {
            return f64::NAN;
        }
        let rank = q * self.requests as f64;
        let mut prev_count = 0.0;
        let mut prev_bound = 0.0;
        for (i, b) in buckets.iter().enumerate() {
            let c = self.cumulative[i] as f64;
            if c >= rank {
                if c == prev_count {
                    return *b;
                }
                return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count);
            }
            prev_count = c;
            prev_bound = *b;
        }
        *buckets.last().unwrap_or(&f64::NAN)
    }
}

impl<'a> World<'a> {
    pub fn new(policy: &'a Policy, scenario: &'a Scenario, seed: u64) -> Self {
        let mut buckets: Vec<f64> = DEFAULT_BUCKETS.to_vec();
        let mut top_edge: Option<f64> = None;
        for check in &policy.checks {
            if let CheckKind::LatencyHistogram { edges, .. } = &check.kind {
                buckets.extend(edges.iter().copied());
                for e in edges {
                    top_edge = Some(top_edge.map_or(*e, |t: f64| t.max(*e)));
                }
            }
        }
        buckets.sort_by(f64::total_cmp);
        buckets.dedup();
        World {
            policy,
            scenario,
            rng: StdRng::seed_from_u64(seed),
            buckets,
            top_edge,
            green_sigma: scenario.latency_sigma,
        }
    }

    /// Gives green's latency its own log-normal σ (a wider tail at the same median) while the
    /// regression applies.
    pub fn with_green_sigma(mut self, sigma: f64) -> Self {
        self.green_sigma = sigma;
        self
    }

    /// Draws the window `[start, end)`, `elapsed` into the rollout (for diurnal load and
    /// outages), at `green_share` (0–1) with green at step index `step`. The same seed and the
    /// same sequence of arguments give the same draws.
    pub fn draw(
        &mut self,
        start: Timestamp,
        end: Timestamp,
        elapsed: Duration,
        green_share: f64,
        step: usize,
    ) -> Draw {
        let (observation, blue, green, bad_green) =
            self.window(start, end, elapsed, green_share, step);
        let slow_p = self.top_edge.map_or(0.0, |e| {
            1.0 - lognormal_cdf(
                e,
                self.scenario.latency_median_s,
                self.scenario.latency_sigma,
            )
        });
        let bad_green_at_blue_level = green.requests * (self.scenario.blue_error_rate + slow_p);
        Draw {
            observation,
            blue,
            green,
            bad_green,
            bad_green_at_blue_level,
        }
    }

    /// Draws one colour's window.
    fn colour(
        &mut self,
        requests: u64,
        error_rate: f64,
        latency_scale: f64,
        sigma: f64,
    ) -> ColourWindow {
        let noise = self.noise();
        let p_err = (error_rate * noise).clamp(0.0, 1.0);
        let errors = binomial(&mut self.rng, requests, p_err);
        // Multinomial over the buckets by sequential conditional binomials.
        let median = self.scenario.latency_median_s * latency_scale;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut below = 0u64;
        let mut p_below = 0.0;
        for b in &self.buckets {
            let p = lognormal_cdf(*b, median, sigma);
            let remaining = requests - below;
            let p_cond = if p_below >= 1.0 {
                0.0
            } else {
                ((p - p_below) / (1.0 - p_below)).clamp(0.0, 1.0)
            };
            below += binomial(&mut self.rng, remaining, p_cond);
            p_below = p;
            cumulative.push(below);
        }
        ColourWindow {
            requests,
            errors,
            cumulative,
        }
    }

    fn noise(&mut self) -> f64 {
        let cv = self.scenario.overdispersion_cv;
        if cv <= 0.0 {
            return 1.0;
        }
        let shape = 1.0 / (cv * cv);
        Gamma::new(shape, 1.0 / shape)
            .map(|g| g.sample(&mut self.rng))
            .unwrap_or(1.0)
    }

    /// The observation of one simulated window `[start, end)` at `green_share` (0–1), with green
    /// at step index `step` (for `from-step` regressions).
    pub fn observe(
        &mut self,
        start: Timestamp,
        end: Timestamp,
        green_share: f64,
        step: usize,
    ) -> Observation {
        self.window(start, end, Duration::ZERO, green_share, step).0
    }

    /// Simulates the window `[start, end)` at the given green share; returns the observation the
    /// engine sees and the raw green counts (requests, errors, bad).
    fn window(
        &mut self,
        start: Timestamp,
        end: Timestamp,
        elapsed: Duration,
        green_share: f64,
        step: usize,
    ) -> (Observation, Counts, Counts, u64) {
        let secs = (end.as_second() - start.as_second()) as f64;
        let load = self.scenario.load_factor(elapsed);
        let total = poisson(&mut self.rng, self.scenario.rps * secs * load);
        let n_g = binomial(&mut self.rng, total, green_share.clamp(0.0, 1.0));
        let n_b = total - n_g;
        let regressed = step >= self.scenario.regression_from_step;
        let (err_mult, lat_mult, green_sigma) = if regressed {
            (
                self.scenario.error_multiplier,
                self.scenario.latency_multiplier,
                self.green_sigma,
            )
        } else {
            (1.0, 1.0, self.scenario.latency_sigma)
        };
        let blue_sigma = self.scenario.latency_sigma;
        let blue = self.colour(n_b, self.scenario.blue_error_rate, 1.0, blue_sigma);
        let green = self.colour(
            n_g,
            self.scenario.blue_error_rate * err_mult,
            lat_mult,
            green_sigma,
        );
        let bad_green = green.errors
            + self
                .top_edge
                .map_or(0, |e| green.slower_than(&self.buckets, e));
        let outage = self.scenario.in_outage(elapsed, secs);
        let checks = self
            .policy
            .checks
            .iter()
            .map(|check| CheckObservation {
                check: check.name.clone(),
                data: if outage {
                    Err(DataProblem::Backend("simulated metrics outage".into()))
                } else {
                    Ok(self.check_data(&check.kind, &blue, &green))
                },
            })
            .collect();
        let obs = Observation { start, end, checks };
        (
            obs,
            Counts::new(n_b as f64, blue.errors as f64),
            Counts::new(n_g as f64, green.errors as f64),
            bad_green,
        )
    }

    fn check_data(&self, kind: &CheckKind, blue: &ColourWindow, green: &ColourWindow) -> CheckData {
        match kind {
            CheckKind::ErrorRate { .. } => CheckData::Errors {
                counts: Pair {
                    blue: Counts::new(blue.requests as f64, blue.errors as f64),
                    green: Counts::new(green.requests as f64, green.errors as f64),
                },
            },
            CheckKind::LatencyHistogram { edges, .. } => CheckData::Latency {
                edges: edges
                    .iter()
                    .map(|e| EdgeCounts {
                        edge: *e,
                        counts: Pair {
                            blue: Counts::new(
                                blue.requests as f64,
                                blue.slower_than(&self.buckets, *e) as f64,
                            ),
                            green: Counts::new(
                                green.requests as f64,
                                green.slower_than(&self.buckets, *e) as f64,
                            ),
                        },
                    })
                    .collect(),
            },
            CheckKind::Threshold { query, .. } => {
                let value = |c: &ColourWindow| match quantile_of(query) {
                    Some(q) => c.quantile(&self.buckets, q),
                    None if c.requests > 0 => c.errors as f64 / c.requests as f64,
                    None => f64::NAN,
                };
                let g = value(green);
                let b = value(blue);
                // An idle green has no quantile: report 0 so the guard does not fire on nothing.
                CheckData::Value {
                    candidate: if g.is_finite() { g } else { 0.0 },
                    stable: b.is_finite().then_some(b),
                }
            }
        }
    }
}

/// Runs one rollout of `policy` in the configured world, from step 0 to promotion, rollback or
/// `max_duration`, through the real daemon shell ([`night::ShellRollout`]: stored state and
/// codec, weight reconciliation, window choice, warm-up, decision) in a world without faults.
pub fn simulate(policy: &Policy, cfg: &SimConfig) -> SimResult {
    let start = cfg.start.unwrap_or_else(|| default_start(policy));
    let mut world = World::new(policy, &cfg.scenario, cfg.seed);
    let mut rollout = night::ShellRollout::started(policy, start);
    let step = SignedDuration::try_from(policy.interval).unwrap_or(SignedDuration::from_mins(1));
    let mut t = start;
    let mut timeline = Vec::new();
    let (mut green_requests, mut bad_green, mut green_errors) = (0u64, 0u64, 0u64);
    let mut decisions = 0usize;
    let mut last_reason = String::new();
    loop {
        let elapsed = Duration::from_secs((t.as_second() - start.as_second()).max(0) as u64);
        if elapsed >= cfg.max_duration {
            break;
        }
        let end = t + step;
        let share = rollout.green_share();
        let (obs, blue, green, bad) = world.window(t, end, elapsed, share, rollout.state().step);
        green_requests += green.requests as u64;
        green_errors += green.bad as u64;
        bad_green += bad;
        let (action, reason, evidence) = match rollout.evaluate(obs, end) {
            Ok(Some(d)) => {
                decisions += 1;
                (d.action, d.reason, d.evidence)
            }
            Ok(None) => (Action::Hold, "not evaluated".to_string(), Vec::new()),
            Err(e) => (Action::Hold, format!("evaluation failed: {e}"), Vec::new()),
        };
        if cfg.keep_timeline {
            timeline.push(SimWindow {
                end,
                elapsed_s: (end.as_second() - start.as_second()) as u64,
                green_percent: share * 100.0,
                blue,
                green,
                action,
                reason: reason.clone(),
                evidence,
            });
        }
        last_reason = reason;
        t = end;
        if matches!(rollout.state().phase, Phase::Promoted | Phase::RolledBack) {
            break;
        }
    }
    let outcome = match rollout.state().phase {
        Phase::Promoted => Outcome::Promoted,
        Phase::RolledBack => Outcome::RolledBack,
        _ => Outcome::Held,
    };
    SimResult {
        outcome,
        duration_s: (t.as_second() - start.as_second()).max(0) as u64,
        green_requests,
        bad_green_requests: bad_green,
        green_errors,
        decisions,
        final_reason: last_reason,
        timeline,
    }
}

/// 2026-01-05 at the start of the policy's first schedule window (midnight UTC without one).
pub fn default_start(policy: &Policy) -> Timestamp {
    let base: Timestamp = "2026-01-05T00:00:00Z".parse().expect("valid timestamp");
    let Some(schedule) = &policy.schedule else {
        return base;
    };
    // Find the first minute of the day (in the schedule's zone) that the schedule allows.
    let mut t = base;
    for _ in 0..(48 * 60) {
        if schedule.allows(t) {
            return t;
        }
        t += SignedDuration::from_mins(1);
    }
    base
}

fn quantile_of(query: &str) -> Option<f64> {
    let rest = query.split("histogram_quantile(").nth(1)?;
    rest.split(',').next()?.trim().parse().ok()
}

pub(crate) fn lognormal_cdf(x: f64, median: f64, sigma: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let z = (x.ln() - median.ln()) / sigma;
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

fn erf(x: f64) -> f64 {
    statrs::function::erf::erf(x)
}

fn binomial(rng: &mut StdRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).map(|b| b.sample(rng)).unwrap_or(0)
}

fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean)
        .map(|p| p.sample(rng) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
