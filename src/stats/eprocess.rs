//! Grid-mixture e-processes over the green/blue rate ratio and over green's absolute rate.
//!
//! Conditional on an interval's total bad events, green's share of them is binomial with
//! p(r) = n_g·r / (n_g·r + n_b). The e-process mixes, with equal weights, the likelihood ratio of
//! alternatives r = r0·c against the boundary r0, multiplied over intervals and kept in log space.
//! By Ville's inequality, under H0 the chance that it ever reaches 1/α is at most α.

use serde::{Deserialize, Serialize};

/// Alternatives for the rollback test (green worse than r0 × blue).
pub const ROLLBACK_GRID: [f64; 6] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0];
/// Prior weights of [`ROLLBACK_GRID`] in the rollback test. Moderate regressions (×1.5–×2 the
/// null boundary) are the slow ones to detect, so they get the most weight; large ones carry so
/// much evidence per event that their smaller weight costs them under one event.
pub const ROLLBACK_WEIGHTS: [f64; 6] = [0.15, 0.25, 0.25, 0.15, 0.1, 0.1];
/// Alternatives for the non-inferiority (advance) test (green better than r_adv × blue).
pub const ADVANCE_GRID: [f64; 4] = [0.8, 0.67, 0.5, 0.33];
/// Alternatives for the absolute SLO test (green's rate below q_max).
pub const SLO_GRID: [f64; 3] = [0.5, 0.25, 0.1];

/// Alternatives of the bake test, as multiples of the rate it tests against (H0: q ≤ q0).
pub const BAKE_GRID: [f64; 4] = [1.5, 2.0, 3.0, 5.0];

/// ln Σ exp(x_i), stable; −∞ for an empty slice.
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// Mixture e-process for H0: r ≤ r0 (grid above 1) or H0: r ≥ r0 (grid below 1), where r is the
/// ratio of green's to blue's rate of bad events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatioEProcess {
    /// Boundary ratio of the null hypothesis.
    pub r0: f64,
    /// Multipliers c_k of the alternatives r0·c_k.
    pub grid: Vec<f64>,
    /// Tempering φ ≥ 1: each interval's log-likelihood ratio is divided by φ.
    pub phi: f64,
    /// Running log-likelihood ratio of each alternative.
    pub log_lr: Vec<f64>,
    /// Largest ln E seen so far (the sequential p-value is exp(−max)).
    pub max_log_e: f64,
    /// Intervals that carried information.
    pub intervals: u64,
    /// ln of the prior weight of each alternative; empty means equal weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_weights: Vec<f64>,
}

impl RatioEProcess {
    /// A new e-process with the given boundary, grid and tempering; E starts at 1.
    pub fn new(r0: f64, grid: &[f64], phi: f64) -> Self {
        RatioEProcess {
            r0,
            grid: grid.to_vec(),
            phi: phi.max(1.0),
            log_lr: vec![0.0; grid.len()],
            max_log_e: 0.0,
            intervals: 0,
            log_weights: Vec::new(),
        }
    }

    /// The same e-process with prior weights on the alternatives (normalised here). Any fixed
    /// weights summing to one keep it an e-process.
    pub fn weighted(mut self, weights: &[f64]) -> Self {
        assert_eq!(weights.len(), self.grid.len(), "one weight per alternative");
        let total: f64 = weights.iter().sum();
        self.log_weights = weights.iter().map(|w| (w / total).ln()).collect();
        self
    }

    /// Rollback test: H0 r ≤ 1 + tolerance, alternatives [`ROLLBACK_GRID`] weighted by
    /// [`ROLLBACK_WEIGHTS`].
    pub fn rollback(tolerance: f64, phi: f64) -> Self {
        Self::new(1.0 + tolerance, &ROLLBACK_GRID, phi).weighted(&ROLLBACK_WEIGHTS)
    }

    /// Non-inferiority test: H0 r ≥ 1 + tolerance, alternatives [`ADVANCE_GRID`].
    pub fn non_inferiority(tolerance: f64, phi: f64) -> Self {
        Self::new(1.0 + tolerance, &ADVANCE_GRID, phi)
    }

    /// Adds one interval: green requests and bad events, blue requests and bad events.
    /// Non-finite or negative inputs, intervals without both colours' traffic and intervals
    /// whose evidence would leave the floating-point range change nothing.
    pub fn update(&mut self, n_g: f64, n_b: f64, e_g: f64, e_b: f64) {
        let finite = [n_g, n_b, e_g, e_b]
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0);
        if !finite || n_g <= 0.0 || n_b <= 0.0 || e_g + e_b <= 0.0 {
            return;
        }
        // With p1 = p(r0·c): p1/p0 = c·(1−p1)/(1−p0) and (1−p0)/(1−p1) = 1 + p0·(c − 1), so
        // ln LR = e_g·ln c − (e_g + e_b)·ln(1 + p0·(c − 1)); this never forms 1 − p, which
        // rounds to 0 when one colour's traffic dwarfs the other's.
        let p0 = share(n_g, n_b, self.r0);
        let phi = self.phi;
        let step = |c: f64| (e_g * c.ln() - (e_g + e_b) * (p0 * (c - 1.0)).ln_1p()) / phi;
        // Counts so large that the running sums would leave the floating-point range are not
        // evidence anyone can store or compare: such an interval changes nothing.
        if !self
            .grid
            .iter()
            .zip(&self.log_lr)
            .all(|(c, l)| (l + step(*c)).is_finite())
        {
            return;
        }
        for (k, c) in self.grid.iter().enumerate() {
            self.log_lr[k] += step(*c);
        }
        self.intervals += 1;
        self.max_log_e = self.max_log_e.max(self.log_e());
    }

    /// ln E_t.
    pub fn log_e(&self) -> f64 {
        if self.log_weights.len() == self.log_lr.len() {
            let terms = || {
                self.log_lr
                    .iter()
                    .zip(&self.log_weights)
                    .map(|(l, w)| l + w)
            };
            let max = terms().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                return max;
            }
            max + terms().map(|x| (x - max).exp()).sum::<f64>().ln()
        } else {
            mixture(&self.log_lr)
        }
    }

    /// E_t.
    pub fn e_value(&self) -> f64 {
        self.log_e().exp()
    }

    /// Whether E_t has reached 1/α.
    pub fn crossed(&self, alpha: f64) -> bool {
        self.log_e() >= (1.0 / alpha).ln()
    }

    /// Starts afresh (E = 1) with the same boundary, grid, tempering and weights: from here on
    /// it is an e-process of the data that follow (started at a stopping time).
    pub fn restart(&mut self) {
        self.log_lr.iter_mut().for_each(|l| *l = 0.0);
        self.max_log_e = 0.0;
        self.intervals = 0;
    }
}

/// One-sample mixture e-process on one colour's counts against the rate `q_max`: the binomial
/// likelihood ratio of each alternative c·q_max of the grid, averaged. With c < 1
/// ([`SloEProcess::new`]) it tests H0: q ≥ q_max (the absolute advance evidence); with c > 1
/// ([`SloEProcess::exceeding`]) H0: q ≤ q_max (the bake). Either way each factor has mean at
/// most 1 under H0, so the product is a test supermartingale and P(ever ≥ 1/α) ≤ α.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloEProcess {
    pub q_max: f64,
    pub grid: Vec<f64>,
    pub phi: f64,
    pub log_lr: Vec<f64>,
    pub max_log_e: f64,
}

impl SloEProcess {
    pub fn new(q_max: f64, phi: f64) -> Self {
        SloEProcess {
            q_max,
            grid: SLO_GRID.to_vec(),
            phi: phi.max(1.0),
            log_lr: vec![0.0; SLO_GRID.len()],
            max_log_e: 0.0,
        }
    }

    /// The bake's e-process: evidence that the rate exceeds `q0` (alternatives [`BAKE_GRID`]
    /// times `q0`, kept below 1).
    pub fn exceeding(q0: f64, phi: f64) -> Self {
        let q0 = q0.clamp(1e-9, 0.99);
        let grid: Vec<f64> = BAKE_GRID
            .iter()
            .map(|c| c.min((1.0 + q0) / (2.0 * q0)))
            .collect();
        SloEProcess {
            q_max: q0,
            log_lr: vec![0.0; grid.len()],
            grid,
            phi: phi.max(1.0),
            max_log_e: 0.0,
        }
    }

    /// Adds one interval of green's `n` requests with `e` bad ones (nothing when the evidence
    /// would leave the floating-point range).
    pub fn update(&mut self, n: f64, e: f64) {
        if !(n.is_finite() && e.is_finite()) || n <= 0.0 || e < 0.0 || e > n {
            return;
        }
        let (q_max, phi) = (self.q_max, self.phi);
        let step = |c: f64| (e * c.ln() + (n - e) * ((1.0 - c * q_max) / (1.0 - q_max)).ln()) / phi;
        if !self
            .grid
            .iter()
            .zip(&self.log_lr)
            .all(|(c, l)| (l + step(*c)).is_finite())
        {
            return;
        }
        for (k, c) in self.grid.iter().enumerate() {
            self.log_lr[k] += step(*c);
        }
        self.max_log_e = self.max_log_e.max(self.log_e());
    }

    pub fn log_e(&self) -> f64 {
        mixture(&self.log_lr)
    }

    /// Starts afresh (E = 1), like [`RatioEProcess::restart`].
    pub fn restart(&mut self) {
        self.log_lr.iter_mut().for_each(|l| *l = 0.0);
        self.max_log_e = 0.0;
    }

    pub fn e_value(&self) -> f64 {
        self.log_e().exp()
    }
}

/// Green's expected share of the bad events when its rate is `r` times blue's.
fn share(n_g: f64, n_b: f64, r: f64) -> f64 {
    n_g * r / (n_g * r + n_b)
}

/// ln of the equally weighted mixture of exp(log_lr).
fn mixture(log_lr: &[f64]) -> f64 {
    log_sum_exp(log_lr) - (log_lr.len() as f64).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, rel: f64) {
        assert!(
            ((actual - expected) / expected).abs() < rel,
            "actual {actual}, expected {expected}"
        );
    }

    /// The equally weighted mixture of docs/statistics.md §3, which the §10 vectors pin.
    fn reference_rollback(tolerance: f64) -> RatioEProcess {
        RatioEProcess::new(1.0 + tolerance, &ROLLBACK_GRID, 1.0)
    }

    #[test]
    fn weighted_rollback_is_the_weighted_mixture() {
        let mut plain = reference_rollback(0.2);
        let mut weighted = RatioEProcess::rollback(0.2, 1.0);
        for (n_g, n_b, e_g, e_b) in SEQ {
            plain.update(n_g, n_b, e_g, e_b);
            weighted.update(n_g, n_b, e_g, e_b);
        }
        assert_eq!(plain.log_lr, weighted.log_lr);
        let want: f64 = weighted
            .log_lr
            .iter()
            .zip(ROLLBACK_WEIGHTS)
            .map(|(l, w)| w * l.exp())
            .sum();
        close(weighted.e_value(), want, 1e-12);
        // Weights summing to one: E starts at 1.
        assert!(RatioEProcess::rollback(0.2, 1.0).log_e().abs() < 1e-12);
        // A ×2 regression (r/r0 ≈ 1.7) is weighted more than under equal weights.
        let mut a = reference_rollback(0.2);
        let mut b = RatioEProcess::rollback(0.2, 1.0);
        for _ in 0..10 {
            a.update(600.0, 11400.0, 6.0, 57.0);
            b.update(600.0, 11400.0, 6.0, 57.0);
        }
        assert!(
            b.log_e() > a.log_e() + 0.2,
            "{} vs {}",
            b.log_e(),
            a.log_e()
        );
    }

    const SEQ: [(f64, f64, f64, f64); 5] = [
        (500.0, 9500.0, 2.0, 30.0),
        (500.0, 9500.0, 1.0, 25.0),
        (1000.0, 9000.0, 4.0, 28.0),
        (1000.0, 9000.0, 5.0, 27.0),
        (1000.0, 9000.0, 6.0, 30.0),
    ];

    #[test]
    fn rollback_e_process_matches_reference_sequence_r0_1() {
        let expected = [
            0.5684181387,
            0.3897996485,
            0.3820344152,
            0.5637836610,
            1.0185099684,
        ];
        let mut e = reference_rollback(0.0);
        for (interval, want) in SEQ.iter().zip(expected) {
            e.update(interval.0, interval.1, interval.2, interval.3);
            close(e.e_value(), want, 1e-9);
        }
    }

    #[test]
    fn rollback_e_process_matches_reference_sequence_r0_1_2() {
        let expected = [
            0.4604768564,
            0.2951219902,
            0.2393796589,
            0.2830457207,
            0.3880730471,
        ];
        let mut e = reference_rollback(0.2);
        for (interval, want) in SEQ.iter().zip(expected) {
            e.update(interval.0, interval.1, interval.2, interval.3);
            close(e.e_value(), want, 1e-9);
        }
    }

    #[test]
    fn single_interval_vectors() {
        let mut e = reference_rollback(0.0);
        e.update(500.0, 9500.0, 4.0, 0.0);
        close(e.e_value(), 439.83154631, 1e-9);
        let mut e = reference_rollback(0.0);
        e.update(500.0, 9500.0, 3.0, 0.0);
        close(e.e_value(), 72.094431944, 1e-9);
        let mut e = reference_rollback(0.0);
        e.update(600.0, 11400.0, 18.0, 114.0);
        close(e.e_value(), 325.3622082, 1e-8);
    }

    #[test]
    fn advance_e_process_vectors() {
        let mut e = RatioEProcess::non_inferiority(0.5, 1.0);
        let mut got = vec![];
        for i in 1..=30 {
            e.update(600.0, 11400.0, 3.0, 57.0);
            if i % 10 == 0 {
                got.push(e.e_value());
            }
        }
        close(got[0], 6.9025, 1e-4);
        close(got[1], 74.433, 1e-4);
        close(got[2], 897.89, 1e-4);
    }

    #[test]
    fn slo_e_process_vectors() {
        let mut e = SloEProcess::new(0.01, 1.0);
        let expected = [1.38877, 2.81661, 6.34360];
        for want in expected {
            e.update(600.0, 3.0);
            close(e.e_value(), want, 1e-5);
        }
    }

    #[test]
    fn tempering_divides_the_log_evidence() {
        let mut plain = RatioEProcess::rollback(0.0, 1.0);
        let mut tempered = RatioEProcess::rollback(0.0, 2.0);
        plain.update(500.0, 9500.0, 4.0, 0.0);
        tempered.update(500.0, 9500.0, 4.0, 0.0);
        assert!(tempered.e_value() < plain.e_value());
        for (p, t) in plain.log_lr.iter().zip(&tempered.log_lr) {
            close(*t, p / 2.0, 1e-12);
        }
    }

    #[test]
    fn unusable_intervals_change_nothing() {
        let mut e = RatioEProcess::rollback(0.2, 1.0);
        let before = e.clone();
        e.update(0.0, 100.0, 0.0, 3.0);
        e.update(100.0, 0.0, 3.0, 0.0);
        e.update(100.0, 100.0, 0.0, 0.0);
        e.update(f64::NAN, 100.0, 1.0, 1.0);
        e.update(100.0, 100.0, -1.0, 1.0);
        assert_eq!(e, before);
    }
}

/// Properties every e-process must keep whatever the data, and a simulated check of Ville's
/// inequality on healthy (A/A) rollouts.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Poisson};

    /// One interval (n_g, n_b, e_g, e_b) with real-valued counts.
    fn interval() -> impl Strategy<Value = (f64, f64, f64, f64)> {
        (1.0..1e6f64, 1.0..1e6f64, 0.0..200.0f64, 0.0..200.0f64)
    }

    /// A rollback or a non-inferiority e-process with some tolerance and tempering.
    fn process() -> impl Strategy<Value = RatioEProcess> {
        (any::<bool>(), 0.0..1.0f64, 1.0..3.0f64).prop_map(|(rollback, tolerance, phi)| {
            if rollback {
                RatioEProcess::rollback(tolerance, phi)
            } else {
                RatioEProcess::non_inferiority(tolerance, phi)
            }
        })
    }

    fn feed(e: &mut RatioEProcess, history: &[(f64, f64, f64, f64)]) {
        for &(n_g, n_b, e_g, e_b) in history {
            e.update(n_g, n_b, e_g, e_b);
        }
    }

    proptest! {
        /// An interval without bad events carries no evidence either way.
        #[test]
        fn intervals_without_bad_events_leave_the_e_process_unchanged(
            mut e in process(),
            history in prop::collection::vec(interval(), 0..10),
            n_g in 0.0..1e6f64,
            n_b in 0.0..1e6f64,
        ) {
            feed(&mut e, &history);
            let before = e.clone();
            e.update(n_g, n_b, 0.0, 0.0);
            prop_assert_eq!(e, before);
        }

        /// When green's bad events are exactly its expected share at the null's boundary r0,
        /// every alternative's log-likelihood ratio changes by −E·KL(p(r0) ‖ p(r0·c)) ≤ 0
        /// (Gibbs' inequality), so E cannot grow, and from a fresh start stays ≤ 1.
        #[test]
        fn bad_events_at_the_null_share_never_raise_the_evidence(
            mut e in process(),
            history in prop::collection::vec(interval(), 0..10),
            null_intervals in prop::collection::vec((1.0..1e6f64, 1.0..1e6f64, 0.0..500.0f64), 1..10),
        ) {
            let mut fresh = RatioEProcess::new(e.r0, &e.grid, e.phi);
            feed(&mut e, &history);
            for (n_g, n_b, events) in null_intervals {
                let p0 = n_g * e.r0 / (n_g * e.r0 + n_b);
                let (e_g, e_b) = (events * p0, events * (1.0 - p0));
                let before = e.clone();
                e.update(n_g, n_b, e_g, e_b);
                for (after, prior) in e.log_lr.iter().zip(&before.log_lr) {
                    prop_assert!(*after <= prior + 1e-9, "{} > {}", after, prior);
                }
                prop_assert!(e.log_e() <= before.log_e() + 1e-9);
                fresh.update(n_g, n_b, e_g, e_b);
                prop_assert!(fresh.log_e() <= 1e-9, "fresh ln E = {}", fresh.log_e());
            }
        }

        /// The likelihood ratio is multiplicative: splitting an interval into two with the same
        /// traffic shares, however its bad events are divided, gives the same E.
        #[test]
        fn splitting_an_interval_keeps_the_evidence(
            mut whole in process(),
            history in prop::collection::vec(interval(), 0..5),
            (n_g, n_b, e_g, e_b) in interval(),
            traffic_part in 0.05..0.95f64,
            events_part in 0.0..=1.0f64,
        ) {
            feed(&mut whole, &history);
            let mut split = whole.clone();
            whole.update(n_g, n_b, e_g, e_b);
            split.update(n_g * traffic_part, n_b * traffic_part, e_g * events_part, e_b * events_part);
            let (rest, events_rest) = (1.0 - traffic_part, 1.0 - events_part);
            split.update(n_g * rest, n_b * rest, e_g * events_rest, e_b * events_rest);
            for (a, b) in whole.log_lr.iter().zip(&split.log_lr) {
                prop_assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{} vs {}", a, b);
            }
            prop_assert!((whole.log_e() - split.log_e()).abs() <= 1e-9 * (1.0 + whole.log_e().abs()));
        }

        /// E is a number in [0, ∞): ln E stays finite, and the running maximum used for the
        /// sequential p-value never falls below the current value or below ln 1.
        #[test]
        fn evidence_is_finite_and_the_maximum_dominates(
            mut e in process(),
            history in prop::collection::vec(
                (-3.0..16.0f64, -3.0..16.0f64, 0.0..1e4f64, 0.0..1e4f64), 1..20),
        ) {
            // Traffic spans nineteen orders of magnitude, so one colour can dwarf the other.
            for (log_n_g, log_n_b, e_g, e_b) in history {
                e.update(10f64.powf(log_n_g), 10f64.powf(log_n_b), e_g, e_b);
                let log_e = e.log_e();
                prop_assert!(log_e.is_finite(), "ln E = {}", log_e);
                prop_assert!(e.e_value() >= 0.0);
                if log_e < 700.0 {
                    prop_assert!(e.e_value().is_finite());
                }
                prop_assert!(e.max_log_e >= log_e && e.max_log_e >= 0.0);
            }
        }
    }

    /// Healthy rollouts (green's error rate equal to blue's, r = r0 = 1): 300 rollouts of 200
    /// one-minute intervals at 200 req/s and 0.5 % errors, green's share stepping
    /// 5 → 10 → 25 → 50 %. By Ville's inequality at most α of them may ever reach 1/α.
    #[test]
    fn healthy_rollouts_rarely_cross_the_threshold() {
        let alpha = 0.05;
        let mut rng = StdRng::seed_from_u64(20_240_601);
        let rollouts = 300;
        let mut crossed = 0;
        for _ in 0..rollouts {
            let mut e = RatioEProcess::rollback(0.0, 1.0);
            let mut ever = false;
            for s in 0..200 {
                let n_g = 12_000.0 * [0.05, 0.10, 0.25, 0.50][s / 50];
                let n_b = 12_000.0 - n_g;
                let e_g = Poisson::new(n_g * 0.005).unwrap().sample(&mut rng);
                let e_b = Poisson::new(n_b * 0.005).unwrap().sample(&mut rng);
                e.update(n_g, n_b, e_g, e_b);
                ever |= e.crossed(alpha);
            }
            assert_eq!(ever, e.max_log_e >= (1.0 / alpha).ln());
            crossed += usize::from(ever);
        }
        let rate = crossed as f64 / rollouts as f64;
        assert!(
            rate <= alpha,
            "{crossed} of {rollouts} healthy rollouts crossed 1/α"
        );
    }

    #[test]
    fn counts_beyond_the_float_range_change_nothing() {
        let mut rb = RatioEProcess::rollback(0.2, 1.0);
        rb.update(600.0, 11400.0, 12.0, 57.0);
        let before = rb.clone();
        // Finite counts whose log-likelihood ratio overflows.
        rb.update(f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        assert_eq!(rb, before);
        // Representable windows keep adding until the sums would overflow; then they stop.
        for _ in 0..20 {
            rb.update(1e300, 1e307, 1e307, 1e306);
            assert!(rb.log_lr.iter().all(|x| x.is_finite()), "{rb:?}");
        }
        assert!(
            rb.log_e() > 1e307 && rb.log_e().is_finite(),
            "{}",
            rb.log_e()
        );
        let mut slo = SloEProcess::new(0.02, 1.0);
        slo.update(600.0, 1.0);
        for _ in 0..200 {
            slo.update(f64::MAX, 0.0);
            assert!(slo.log_lr.iter().all(|x| x.is_finite()), "{slo:?}");
        }
        assert!(slo.log_e() > 1e307 && slo.log_e().is_finite());
    }

    /// The bake test at its boundary (the rate exactly q0) crosses 1/α in at most α of runs
    /// (Ville), and catches twice the rate.
    #[test]
    fn the_bake_e_process_keeps_its_level_at_the_boundary_and_catches_a_doubled_rate() {
        let (q0, alpha, windows, runs) = (0.005, 0.01, 120, 2000);
        let mut rng = StdRng::seed_from_u64(11);
        let run = |rng: &mut StdRng, q: f64| {
            let mut e = SloEProcess::exceeding(q0, 1.0);
            let n = 2000.0;
            let bad = Poisson::new(n * q).unwrap();
            (0..windows).any(|_| {
                e.update(n, bad.sample(rng));
                e.e_value() >= 1.0 / alpha
            })
        };
        let false_alarms = (0..runs).filter(|_| run(&mut rng, q0)).count();
        assert!(
            (false_alarms as f64) / (runs as f64) <= alpha + 0.005,
            "{false_alarms} of {runs}"
        );
        let caught = (0..200).filter(|_| run(&mut rng, 2.0 * q0)).count();
        assert!(caught >= 190, "caught {caught} of 200 doubled rates");
    }

    #[test]
    fn the_bake_grid_stays_a_probability_for_high_base_rates() {
        let e = SloEProcess::exceeding(0.6, 1.0);
        assert!(e.grid.iter().all(|c| c * e.q_max < 1.0), "{e:?}");
        let mut e = e;
        e.update(100.0, 90.0);
        assert!(e.log_e().is_finite() && e.log_e() > 0.0);
    }
}
