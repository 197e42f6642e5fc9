//! Canary judges compared by the decision-quality benchmark: greenlight's engine, a
//! Flagger-style threshold judge, a Kayenta-style Mann-Whitney judge and Wald's SPRT oracle,
//! each driving its own synthetic world on the policy's step schedule.
//!
//! All judges see the same worlds: each (scenario, seed) pair is run once per judge in its own
//! [`World`] built from the same seed. A judge's weights change the green share, which changes
//! the draws, so the worlds stay identical only while the judges keep the same share sequence
//! (same seed + same shares = same draws); from the first differing decision on, each judge
//! meets the world its own decisions produce, as it would in production.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::night::ShellRollout;
use super::{default_start, lognormal_cdf, Scenario, World};
use crate::engine::{CheckData, Observation, Phase};
use crate::policy::{CheckKind, Policy};
use crate::stats::shift_interval;

/// What a judge concluded after a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going at [`Judge::green_share`].
    Continue,
    RolledBack,
    Promoted,
}

/// A canary judge: reads one window's observation at a time and moves green along the steps.
pub trait Judge {
    fn name(&self) -> &'static str;
    /// Green's share of traffic (0–1) for the next window.
    fn green_share(&self) -> f64;
    /// Index of the current step (for regressions that start at a later step).
    fn step(&self) -> usize;
    /// Takes the observation of the window ending at `now`.
    fn observe(&mut self, obs: &Observation, now: Timestamp) -> Verdict;
}

/// greenlight: the real daemon shell ([`ShellRollout`]: the stored state and its codec, the
/// weight reconciliation, window choice, warm-up and [`decide`](crate::engine::decide) itself) in a world without
/// faults.
pub struct Greenlight<'a> {
    rollout: ShellRollout<'a>,
}

impl<'a> Greenlight<'a> {
    pub fn new(policy: &'a Policy, start: Timestamp) -> Self {
        Greenlight {
            rollout: ShellRollout::started(policy, start),
        }
    }
}

impl Judge for Greenlight<'_> {
    fn name(&self) -> &'static str {
        "greenlight"
    }

    fn green_share(&self) -> f64 {
        self.rollout.green_share()
    }

    fn step(&self) -> usize {
        self.rollout.state().step
    }

    fn observe(&mut self, obs: &Observation, now: Timestamp) -> Verdict {
        // Without faults an evaluation does not fail; if one did, the rollout holds.
        let _ = self.rollout.evaluate(obs.clone(), now);
        match self.rollout.state().phase {
            Phase::Promoted => Verdict::Promoted,
            Phase::RolledBack => Verdict::RolledBack,
            _ => Verdict::Continue,
        }
    }
}

/// The step schedule shared by the baseline judges: the policy's steps, at least
/// `min_step_duration` at each.
struct Schedule<'a> {
    policy: &'a Policy,
    step: usize,
    step_started: Timestamp,
}

impl<'a> Schedule<'a> {
    fn new(policy: &'a Policy, start: Timestamp) -> Self {
        Schedule {
            policy,
            step: 0,
            step_started: start,
        }
    }

    fn share(&self) -> f64 {
        self.policy.steps[self.step] / 100.0
    }

    fn dwell_done(&self, now: Timestamp) -> bool {
        let secs = (now.as_second() - self.step_started.as_second()).max(0) as u64;
        Duration::from_secs(secs) >= self.policy.min_step_duration
    }

    /// Moves to the next step; `Promoted` when it is the last (100 %).
    fn advance(&mut self, now: Timestamp) -> Verdict {
        self.step += 1;
        self.step_started = now;
        if self.step + 1 >= self.policy.steps.len() {
            Verdict::Promoted
        } else {
            Verdict::Continue
        }
    }
}

/// Green's error counts and its latency quantile in one window, as the baselines read them.
struct Points {
    /// (requests, errors) of green and blue, when the error check has data.
    errors: Option<((f64, f64), (f64, f64))>,
    /// Green's and blue's latency quantile (the policy's `histogram_quantile` threshold check).
    latency: Option<(f64, Option<f64>)>,
}

fn points(policy: &Policy, obs: &Observation) -> Points {
    let mut p = Points {
        errors: None,
        latency: None,
    };
    for check in &policy.checks {
        match (&check.kind, obs.check(&check.name)) {
            (CheckKind::ErrorRate { .. }, Some(Ok(CheckData::Errors { counts }))) => {
                p.errors = Some((
                    (counts.green.requests, counts.green.bad),
                    (counts.blue.requests, counts.blue.bad),
                ))
            }
            (
                CheckKind::Threshold { query, .. },
                Some(Ok(CheckData::Value {
                    candidate: green,
                    stable: blue,
                })),
            ) if query.contains("histogram_quantile") => p.latency = Some((*green, *blue)),
            _ => {}
        }
    }
    p
}

/// Flagger's canary analysis with its two built-in metrics, as configured in Flagger's
/// documentation (`docs/gitbook/how-it-works.md`): `request-success-rate` with
/// `thresholdRange.min: 99` (percent of non-5xx responses in the interval) and
/// `request-duration` with `thresholdRange.max: 500` (p99 in ms, `histogram_quantile(0.99, …)`
/// over the interval), `threshold: 5`. Flagger's scheduler (`pkg/controller/scheduler.go`)
/// runs the checks every `interval`; a failing run increments `status.failedChecks`, which is
/// only reset when a new revision starts, and rolls back once `failedChecks >= threshold`; a
/// query without a value ("no values found") fails the check; a passing run moves the weight
/// to the next `stepWeights` entry and promotes after `maxWeight`. To share greenlight's
/// schedule, each step is held for `min_step_duration` (the same as listing a weight
/// repeatedly in `stepWeights`), checked every policy interval.
pub struct Flagger<'a> {
    policy: &'a Policy,
    schedule: Schedule<'a>,
    failed_checks: u32,
    /// Minimum success rate, percent.
    pub min_success_rate: f64,
    /// Maximum p99, seconds.
    pub max_p99: f64,
    /// Failed checks before rollback.
    pub threshold: u32,
}

impl<'a> Flagger<'a> {
    pub fn new(policy: &'a Policy, start: Timestamp) -> Self {
        Flagger {
            policy,
            schedule: Schedule::new(policy, start),
            failed_checks: 0,
            min_success_rate: 99.0,
            max_p99: 0.5,
            threshold: 5,
        }
    }

    fn checks_pass(&self, obs: &Observation) -> bool {
        let p = points(self.policy, obs);
        let success = match p.errors {
            Some(((n, e), _)) if n > 0.0 => 100.0 * (1.0 - e / n) >= self.min_success_rate,
            _ => false,
        };
        let latency = match (p.latency, p.errors) {
            (Some((p99, _)), Some(((n, _), _))) if n > 0.0 && p99.is_finite() => {
                p99 <= self.max_p99
            }
            _ => false,
        };
        success && latency
    }
}

impl Judge for Flagger<'_> {
    fn name(&self) -> &'static str {
        "flagger"
    }

    fn green_share(&self) -> f64 {
        self.schedule.share()
    }

    fn step(&self) -> usize {
        self.schedule.step
    }

    fn observe(&mut self, obs: &Observation, now: Timestamp) -> Verdict {
        if !self.checks_pass(obs) {
            self.failed_checks += 1;
            if self.failed_checks >= self.threshold {
                return Verdict::RolledBack;
            }
            return Verdict::Continue;
        }
        if self.schedule.dwell_done(now) {
            return self.schedule.advance(now);
        }
        Verdict::Continue
    }
}

/// Kayenta's NetflixACAJudge (`kayenta-judge/.../NetflixACAJudge.scala`,
/// `classifiers/metric/MannWhitneyClassifier.scala`, `scorers/WeightedSumScorer.scala`): at the
/// end of each step it compares the step's per-interval points of green (experiment) and blue
/// (control) for each metric with the Mann-Whitney shift interval at 98 % confidence; a metric
/// is High when the interval's lower end exceeds 0.25 × |Hodges-Lehmann estimate|, Nodata
/// when either side has no points, Pass otherwise (also when the samples are identical or all
/// tied). The score is 100 × Pass / (Pass + High) over the metrics with data, 0 when none has
/// data; below the marginal threshold (75) the canary fails and rolls back, otherwise green
/// advances. Metrics: the error ratio and the p99 latency per interval, direction "increase".
/// Kayenta's IQR outlier removal is not applied.
pub struct Kayenta<'a> {
    policy: &'a Policy,
    schedule: Schedule<'a>,
    green_errors: Vec<f64>,
    blue_errors: Vec<f64>,
    green_p99: Vec<f64>,
    blue_p99: Vec<f64>,
    pub confidence: f64,
    pub fraction: f64,
    pub marginal: f64,
}

/// Kayenta's metric classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    Pass,
    High,
    Nodata,
}

/// Kayenta's Mann-Whitney classifier for a metric whose increase is bad.
pub fn kayenta_classify(
    experiment: &[f64],
    control: &[f64],
    confidence: f64,
    fraction: f64,
) -> Classification {
    if experiment.is_empty() || control.is_empty() {
        return Classification::Nodata;
    }
    let mut a = experiment.to_vec();
    let mut b = control.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    if a == b {
        return Classification::Pass;
    }
    match shift_interval(experiment, control, confidence) {
        Ok(ci) if ci.lower > fraction * ci.estimate.abs() => Classification::High,
        _ => Classification::Pass,
    }
}

impl<'a> Kayenta<'a> {
    pub fn new(policy: &'a Policy, start: Timestamp) -> Self {
        Kayenta {
            policy,
            schedule: Schedule::new(policy, start),
            green_errors: Vec::new(),
            blue_errors: Vec::new(),
            green_p99: Vec::new(),
            blue_p99: Vec::new(),
            confidence: 0.98,
            fraction: 0.25,
            marginal: 75.0,
        }
    }

    /// The step's score, 0–100.
    fn score(&self) -> f64 {
        let metrics = [
            kayenta_classify(
                &self.green_errors,
                &self.blue_errors,
                self.confidence,
                self.fraction,
            ),
            kayenta_classify(
                &self.green_p99,
                &self.blue_p99,
                self.confidence,
                self.fraction,
            ),
        ];
        let pass = metrics
            .iter()
            .filter(|c| **c == Classification::Pass)
            .count();
        let high = metrics
            .iter()
            .filter(|c| **c == Classification::High)
            .count();
        if pass + high == 0 {
            0.0
        } else {
            100.0 * pass as f64 / (pass + high) as f64
        }
    }
}

impl Judge for Kayenta<'_> {
    fn name(&self) -> &'static str {
        "kayenta"
    }

    fn green_share(&self) -> f64 {
        self.schedule.share()
    }

    fn step(&self) -> usize {
        self.schedule.step
    }

    fn observe(&mut self, obs: &Observation, now: Timestamp) -> Verdict {
        let p = points(self.policy, obs);
        if let Some(((ng, eg), (nb, eb))) = p.errors {
            if ng > 0.0 && nb > 0.0 {
                self.green_errors.push(eg / ng);
                self.blue_errors.push(eb / nb);
            }
            if let Some((g, Some(b))) = p.latency {
                if ng > 0.0 && nb > 0.0 && g.is_finite() && b.is_finite() {
                    self.green_p99.push(g);
                    self.blue_p99.push(b);
                }
            }
        }
        if !self.schedule.dwell_done(now) {
            return Verdict::Continue;
        }
        let score = self.score();
        self.green_errors.clear();
        self.blue_errors.clear();
        self.green_p99.clear();
        self.blue_p99.clear();
        if score < self.marginal {
            return Verdict::RolledBack;
        }
        self.schedule.advance(now)
    }
}

/// Which statistical stream an oracle watches.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleStream {
    /// Check name.
    pub check: String,
    /// Latency edge, for a latency check.
    pub edge: Option<f64>,
    /// The true ratio of green's to blue's rate of bad events on this stream.
    pub ratio: f64,
    /// The ratio the SPRT tests against: 1 (docs/statistics.md §8), or 1 + the check's
    /// tolerance for the best test of the policy's own null hypothesis.
    pub null_ratio: f64,
}

impl OracleStream {
    /// The same stream tested against the check's tolerance (r0 = 1 + tolerance).
    pub fn at_tolerance(&self, policy: &Policy) -> OracleStream {
        let tolerance =
            policy
                .checks
                .iter()
                .find(|c| c.name == self.check)
                .map_or(0.0, |c| match &c.kind {
                    CheckKind::ErrorRate { tolerance, .. }
                    | CheckKind::LatencyHistogram { tolerance, .. } => *tolerance,
                    CheckKind::Threshold { .. } => 0.0,
                });
        OracleStream {
            null_ratio: 1.0 + tolerance,
            ..self.clone()
        }
    }
}

/// The stream a regression in `scenario` (with green's latency σ `green_sigma`) is easiest to
/// see on: the largest expected information per window, ∝ green's bad rate × (ln r − 1 + 1/r).
/// `None` when green equals blue everywhere.
pub fn oracle_stream(
    policy: &Policy,
    scenario: &Scenario,
    green_sigma: f64,
) -> Option<OracleStream> {
    let mut best: Option<(f64, OracleStream)> = None;
    let mut consider = |rate_b: f64, ratio: f64, check: &str, edge: Option<f64>| {
        if !(ratio.is_finite() && ratio > 0.0) || (ratio - 1.0).abs() < 1e-9 {
            return;
        }
        let info = rate_b * ratio * (ratio.ln() - 1.0 + 1.0 / ratio);
        if best.as_ref().is_none_or(|(b, _)| info > *b) {
            best = Some((
                info,
                OracleStream {
                    check: check.to_string(),
                    edge,
                    ratio,
                    null_ratio: 1.0,
                },
            ));
        }
    };
    for check in &policy.checks {
        match &check.kind {
            CheckKind::ErrorRate { .. } => consider(
                scenario.blue_error_rate,
                scenario.error_multiplier,
                &check.name,
                None,
            ),
            CheckKind::LatencyHistogram { edges, .. } => {
                for e in edges {
                    let median = scenario.latency_median_s;
                    let blue = 1.0 - lognormal_cdf(*e, median, scenario.latency_sigma);
                    let green =
                        1.0 - lognormal_cdf(*e, median * scenario.latency_multiplier, green_sigma);
                    consider(blue, green / blue, &check.name, Some(*e));
                }
            }
            CheckKind::Threshold { .. } => {}
        }
    }
    best.map(|(_, s)| s)
}

/// Wald's SPRT of H0: r = r0 (the stream's `null_ratio`) against the true ratio r on one
/// stream, with the conditional binomial likelihood of docs/statistics.md §2; crosses at
/// ln(1/α).
#[derive(Debug, Clone)]
pub struct Sprt {
    pub stream: OracleStream,
    pub llr: f64,
    pub threshold: f64,
}

impl Sprt {
    pub fn new(stream: OracleStream, alpha: f64) -> Self {
        Sprt {
            stream,
            llr: 0.0,
            threshold: (1.0 / alpha).ln(),
        }
    }

    /// Adds one window; returns whether the SPRT has crossed.
    pub fn update(&mut self, obs: &Observation) -> bool {
        let counts = match (obs.check(&self.stream.check), self.stream.edge) {
            (Some(Ok(CheckData::Errors { counts })), None) => Some(*counts),
            (Some(Ok(CheckData::Latency { edges })), Some(edge)) => {
                edges.iter().find(|e| e.edge == edge).map(|e| e.counts)
            }
            _ => None,
        };
        if let Some(c) = counts {
            let (ng, nb) = (c.green.requests, c.blue.requests);
            if ng > 0.0 && nb > 0.0 {
                let r = self.stream.ratio;
                let r0 = self.stream.null_ratio;
                let p0 = ng * r0 / (ng * r0 + nb);
                let p1 = ng * r / (ng * r + nb);
                self.llr +=
                    c.green.bad * (p1 / p0).ln() + c.blue.bad * ((1.0 - p1) / (1.0 - p0)).ln();
            }
        }
        self.crossed()
    }

    pub fn crossed(&self) -> bool {
        self.llr >= self.threshold
    }
}

/// The oracle: knows which stream regressed and by how much, runs Wald's SPRT on it at the
/// policy's whole α (docs/statistics.md §8), and otherwise advances on the schedule. It never
/// rolls back a healthy green (its alternative equals the null).
pub struct Oracle<'a> {
    name: &'static str,
    schedule: Schedule<'a>,
    sprt: Option<Sprt>,
}

impl<'a> Oracle<'a> {
    pub fn new(policy: &'a Policy, start: Timestamp, stream: Option<OracleStream>) -> Self {
        Self::named("oracle", policy, start, stream)
    }

    /// An oracle reported under `name` (e.g. one testing against the policy's tolerance).
    pub fn named(
        name: &'static str,
        policy: &'a Policy,
        start: Timestamp,
        stream: Option<OracleStream>,
    ) -> Self {
        Oracle {
            name,
            schedule: Schedule::new(policy, start),
            sprt: stream.map(|s| Sprt::new(s, policy.false_rollback_rate)),
        }
    }
}

impl Judge for Oracle<'_> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn green_share(&self) -> f64 {
        self.schedule.share()
    }

    fn step(&self) -> usize {
        self.schedule.step
    }

    fn observe(&mut self, obs: &Observation, now: Timestamp) -> Verdict {
        if let Some(sprt) = &mut self.sprt {
            if sprt.update(obs) {
                return Verdict::RolledBack;
            }
        }
        if self.schedule.dwell_done(now) {
            return self.schedule.advance(now);
        }
        Verdict::Continue
    }
}

/// One judge's rollout in one world.
#[derive(Debug, Clone)]
pub struct JudgeRun {
    pub verdict: Verdict,
    /// Seconds from the start to the rollback or promotion (the horizon when neither).
    pub decided_after_s: u64,
    /// Bad green requests until the rollback, or until the horizon (at 100 % after promotion).
    pub bad_green: u64,
    /// `bad_green` minus what the same green requests would have suffered at blue's rates:
    /// the harm caused by the release itself.
    pub excess_bad_green: f64,
    pub green_requests: u64,
    /// Per shadow stream: seconds until Wald's SPRT on the same windows this judge saw would
    /// have crossed (continuing at the judge's last share after a rollback); `None` if never
    /// within the horizon.
    pub shadow_oracle_s: Vec<Option<u64>>,
}

/// Settings of [`run_judge`].
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub seed: u64,
    /// Green's latency σ while regressed (the scenario's for a pure shift).
    pub green_sigma: f64,
    /// Length of the experiment; after a promotion green serves everything until then.
    pub horizon: Duration,
    /// Keep drawing after a promotion to count the harm a promoted bad green does.
    pub count_after_promotion: bool,
    /// Run Wald's SPRT on each of these streams beside the judge.
    pub shadow: Vec<OracleStream>,
}

/// Runs `judge` in a fresh world of `scenario` with `settings.seed`, window by window, from the
/// policy's default start.
pub fn run_judge(
    policy: &Policy,
    scenario: &Scenario,
    judge: &mut dyn Judge,
    settings: &RunSettings,
) -> JudgeRun {
    let start = default_start(policy);
    let mut world =
        World::new(policy, scenario, settings.seed).with_green_sigma(settings.green_sigma);
    let interval =
        SignedDuration::try_from(policy.interval).unwrap_or(SignedDuration::from_mins(1));
    let mut shadow: Vec<Sprt> = settings
        .shadow
        .iter()
        .map(|s| Sprt::new(s.clone(), policy.false_rollback_rate))
        .collect();
    let mut shadow_at: Vec<Option<u64>> = vec![None; shadow.len()];
    let mut t = start;
    let (mut bad, mut requests, mut excess) = (0u64, 0u64, 0.0);
    let mut verdict = Verdict::Continue;
    let mut decided: Option<u64> = None;
    let mut last_share = judge.green_share();
    let mut step = judge.step();
    loop {
        let elapsed_s = (t.as_second() - start.as_second()).max(0) as u64;
        if Duration::from_secs(elapsed_s) >= settings.horizon {
            break;
        }
        let after_decision = verdict != Verdict::Continue;
        let share = match verdict {
            Verdict::Continue => judge.green_share(),
            Verdict::Promoted => 1.0,
            Verdict::RolledBack => last_share,
        };
        let need_shadow = shadow_at.iter().any(Option::is_none);
        let need_harm = verdict == Verdict::Promoted && settings.count_after_promotion;
        if after_decision && !need_shadow && !need_harm {
            break;
        }
        let end = t + interval;
        let d = world.draw(t, end, Duration::from_secs(elapsed_s), share, step);
        let end_s = elapsed_s + policy.interval.as_secs();
        if verdict != Verdict::RolledBack {
            bad += d.bad_green;
            excess += d.bad_green as f64 - d.bad_green_at_blue_level;
            requests += d.green.requests as u64;
        }
        for (sprt, at) in shadow.iter_mut().zip(shadow_at.iter_mut()) {
            if at.is_none() && verdict != Verdict::Promoted && sprt.update(&d.observation) {
                *at = Some(end_s);
            }
        }
        if verdict == Verdict::Continue {
            last_share = share;
            verdict = judge.observe(&d.observation, end);
            step = judge.step();
            if verdict != Verdict::Continue {
                decided = Some(end_s);
            }
        }
        t = end;
    }
    JudgeRun {
        verdict,
        decided_after_s: decided.unwrap_or(settings.horizon.as_secs()),
        bad_green: bad,
        excess_bad_green: excess,
        green_requests: requests,
        shadow_oracle_s: shadow_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CheckObservation, Counts, Pair};

    fn policy() -> Policy {
        Policy::from_toml(
            include_str!("../../bench/policy.toml"),
            std::path::Path::new("bench/policy.toml"),
            None,
        )
        .expect("bench policy is valid")
    }

    fn t(min: i64) -> Timestamp {
        default_start(&policy()) + SignedDuration::from_mins(min)
    }

    fn obs(green: (f64, f64), blue: (f64, f64), p99: f64) -> Observation {
        let p = policy();
        let checks = p
            .checks
            .iter()
            .map(|c| CheckObservation {
                check: c.name.clone(),
                data: Ok(match &c.kind {
                    CheckKind::ErrorRate { .. } => CheckData::Errors {
                        counts: Pair {
                            blue: Counts::new(blue.0, blue.1),
                            green: Counts::new(green.0, green.1),
                        },
                    },
                    CheckKind::LatencyHistogram { edges, .. } => CheckData::Latency {
                        edges: edges
                            .iter()
                            .map(|e| crate::engine::EdgeCounts {
                                edge: *e,
                                counts: Pair::default(),
                            })
                            .collect(),
                    },
                    CheckKind::Threshold { .. } => CheckData::Value {
                        candidate: p99,
                        stable: Some(0.3),
                    },
                }),
            })
            .collect();
        Observation {
            start: t(0),
            end: t(1),
            checks,
        }
    }

    #[test]
    fn flagger_rolls_back_on_the_fifth_failed_check_even_when_not_consecutive() {
        let p = policy();
        let mut f = Flagger::new(&p, t(0));
        let bad = obs((100.0, 2.0), (9900.0, 50.0), 0.3);
        let good = obs((100.0, 0.0), (9900.0, 50.0), 0.3);
        for i in 0..4 {
            assert_eq!(f.observe(&bad, t(2 * i + 1)), Verdict::Continue);
            assert_eq!(f.observe(&good, t(2 * i + 2)), Verdict::Continue);
        }
        assert_eq!(f.observe(&bad, t(9)), Verdict::RolledBack);
    }

    #[test]
    fn flagger_counts_missing_data_and_slow_p99_as_failures() {
        let p = policy();
        let f = Flagger::new(&p, t(0));
        let mut outage = obs((100.0, 0.0), (9900.0, 50.0), 0.3);
        outage.checks[0].data = Err(crate::engine::DataProblem::NoData);
        assert!(!f.checks_pass(&outage));
        assert!(!f.checks_pass(&obs((100.0, 0.0), (9900.0, 50.0), 0.6)));
        assert!(f.checks_pass(&obs((100.0, 1.0), (9900.0, 50.0), 0.5)));
    }

    #[test]
    fn flagger_advances_after_the_dwell_and_promotes_after_the_last_step() {
        let p = policy();
        let mut f = Flagger::new(&p, t(0));
        let good = obs((100.0, 0.0), (9900.0, 50.0), 0.3);
        let mut m = 0;
        let mut verdict = Verdict::Continue;
        while verdict == Verdict::Continue && m < 200 {
            m += 1;
            verdict = f.observe(&good, t(m));
        }
        assert_eq!(verdict, Verdict::Promoted);
        // Five steps below 100 %, ten minutes each.
        assert_eq!(m, 50);
    }

    #[test]
    fn kayenta_flags_a_clear_increase_and_passes_noise() {
        let blue = [
            0.005, 0.006, 0.004, 0.005, 0.0055, 0.0045, 0.005, 0.006, 0.004, 0.005,
        ];
        let worse: Vec<f64> = blue.iter().map(|x| x * 3.0).collect();
        assert_eq!(
            kayenta_classify(&worse, &blue, 0.98, 0.25),
            Classification::High
        );
        let same = [
            0.0052, 0.0058, 0.0041, 0.005, 0.0054, 0.0046, 0.0049, 0.006, 0.0042, 0.0051,
        ];
        assert_eq!(
            kayenta_classify(&same, &blue, 0.98, 0.25),
            Classification::Pass
        );
        assert_eq!(
            kayenta_classify(&[], &blue, 0.98, 0.25),
            Classification::Nodata
        );
    }

    #[test]
    fn kayenta_fails_a_step_without_any_data() {
        let p = policy();
        let mut k = Kayenta::new(&p, t(0));
        let mut outage = obs((100.0, 0.0), (9900.0, 50.0), 0.3);
        for c in &mut outage.checks {
            c.data = Err(crate::engine::DataProblem::NoData);
        }
        let mut verdict = Verdict::Continue;
        for m in 1..=10 {
            verdict = k.observe(&outage, t(m));
        }
        assert_eq!(verdict, Verdict::RolledBack);
    }

    #[test]
    fn the_oracle_watches_the_most_informative_stream() {
        let p = policy();
        let s: Scenario = "errors=2x".parse().unwrap();
        let o = oracle_stream(&p, &s, s.latency_sigma).unwrap();
        assert_eq!((o.check.as_str(), o.edge, o.ratio), ("errors", None, 2.0));
        let s: Scenario = "latency=1.2x".parse().unwrap();
        let o = oracle_stream(&p, &s, s.latency_sigma).unwrap();
        assert_eq!(o.check, "latency");
        assert!(o.ratio > 1.5, "{o:?}");
        assert!(oracle_stream(&p, &Scenario::default(), 0.6).is_none());
    }

    #[test]
    fn same_seed_and_shares_give_the_same_world() {
        let p = policy();
        let s: Scenario = "errors=2x".parse().unwrap();
        let settings = RunSettings {
            seed: 4,
            green_sigma: s.latency_sigma,
            horizon: Duration::from_secs(6 * 3600),
            count_after_promotion: true,
            shadow: Vec::new(),
        };
        let a = run_judge(&p, &s, &mut Oracle::new(&p, t(0), None), &settings);
        let b = run_judge(&p, &s, &mut Flagger::new(&p, t(0)), &settings);
        // Neither judge has acted by the first window, so both saw the same first windows;
        // the oracle without a stream promotes on schedule.
        assert_eq!(a.verdict, Verdict::Promoted);
        assert_eq!(a.decided_after_s, 50 * 60);
        assert!(b.decided_after_s > 0);
        let again = run_judge(&p, &s, &mut Oracle::new(&p, t(0), None), &settings);
        assert_eq!(a.bad_green, again.bad_green);
        assert_eq!(a.green_requests, again.green_requests);
    }

    #[test]
    fn greenlight_and_the_sprt_catch_a_fivefold_error_rate() {
        let p = policy();
        let s: Scenario = "errors=5x".parse().unwrap();
        let stream = oracle_stream(&p, &s, s.latency_sigma);
        let settings = RunSettings {
            seed: 2,
            green_sigma: s.latency_sigma,
            horizon: Duration::from_secs(6 * 3600),
            count_after_promotion: true,
            shadow: stream
                .iter()
                .flat_map(|st| [st.clone(), st.at_tolerance(&p)])
                .collect(),
        };
        let start = default_start(&p);
        let g = run_judge(&p, &s, &mut Greenlight::new(&p, start), &settings);
        assert_eq!(g.verdict, Verdict::RolledBack);
        // The SPRT against the policy's tolerance needs more evidence than the one against 1.
        let (vs_one, vs_tolerance) = (g.shadow_oracle_s[0], g.shadow_oracle_s[1]);
        assert!(
            vs_one.unwrap() <= vs_tolerance.unwrap(),
            "{vs_one:?} {vs_tolerance:?}"
        );
        // Harm caused by the release: most of green's bad requests, not blue-level ones.
        assert!(g.excess_bad_green > 0.5 * g.bad_green as f64, "{g:?}");
        let o = run_judge(&p, &s, &mut Oracle::new(&p, start, stream), &settings);
        assert_eq!(o.verdict, Verdict::RolledBack);
    }

    #[test]
    fn a_healthy_green_causes_no_excess_harm() {
        let p = policy();
        let s = Scenario::default();
        let settings = RunSettings {
            seed: 3,
            green_sigma: s.latency_sigma,
            horizon: Duration::from_secs(3 * 3600),
            count_after_promotion: true,
            shadow: Vec::new(),
        };
        let o = run_judge(&p, &s, &mut Oracle::new(&p, t(0), None), &settings);
        assert_eq!(o.verdict, Verdict::Promoted);
        // Bad requests at blue's own rates are not harm caused by the release.
        assert!(o.bad_green > 100, "{o:?}");
        assert!(o.excess_bad_green.abs() < 0.1 * o.bad_green as f64, "{o:?}");
    }
}
