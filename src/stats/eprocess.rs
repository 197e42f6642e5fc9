//! Grid-mixture e-processes over the green/blue rate ratio and over green's absolute rate.
//!
//! Conditional on an interval's total bad events, green's share of them is binomial with
//! p(r) = n_g·r / (n_g·r + n_b). The e-process mixes, with equal weights, the likelihood ratio of
//! alternatives r = r0·c against the boundary r0, multiplied over intervals and kept in log space.
//! By Ville's inequality, under H0 the chance that it ever reaches 1/α is at most α.

use serde::{Deserialize, Serialize};

/// Alternatives for the rollback test (green worse than r0 × blue).
pub const ROLLBACK_GRID: [f64; 6] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0];
/// Alternatives for the non-inferiority (advance) test (green better than r_adv × blue).
pub const ADVANCE_GRID: [f64; 4] = [0.8, 0.67, 0.5, 0.33];
/// Alternatives for the absolute SLO test (green's rate below q_max).
pub const SLO_GRID: [f64; 3] = [0.5, 0.25, 0.1];

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
        }
    }

    /// Rollback test: H0 r ≤ 1 + tolerance, alternatives [`ROLLBACK_GRID`].
    pub fn rollback(tolerance: f64, phi: f64) -> Self {
        Self::new(1.0 + tolerance, &ROLLBACK_GRID, phi)
    }

    /// Non-inferiority test: H0 r ≥ 1 + tolerance, alternatives [`ADVANCE_GRID`].
    pub fn non_inferiority(tolerance: f64, phi: f64) -> Self {
        Self::new(1.0 + tolerance, &ADVANCE_GRID, phi)
    }

    /// Adds one interval: green requests and bad events, blue requests and bad events.
    /// Non-finite or negative inputs and intervals without both colours' traffic change nothing.
    pub fn update(&mut self, n_g: f64, n_b: f64, e_g: f64, e_b: f64) {
        let finite = [n_g, n_b, e_g, e_b]
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0);
        if !finite || n_g <= 0.0 || n_b <= 0.0 || e_g + e_b <= 0.0 {
            return;
        }
        let p0 = share(n_g, n_b, self.r0);
        for (k, c) in self.grid.iter().enumerate() {
            let p1 = share(n_g, n_b, self.r0 * c);
            let llr = e_g * (p1 / p0).ln() + e_b * ((1.0 - p1) / (1.0 - p0)).ln();
            self.log_lr[k] += llr / self.phi;
        }
        self.intervals += 1;
        self.max_log_e = self.max_log_e.max(self.log_e());
    }

    /// ln E_t.
    pub fn log_e(&self) -> f64 {
        mixture(&self.log_lr)
    }

    /// E_t.
    pub fn e_value(&self) -> f64 {
        self.log_e().exp()
    }

    /// Whether E_t has reached 1/α.
    pub fn crossed(&self, alpha: f64) -> bool {
        self.log_e() >= (1.0 / alpha).ln()
    }
}

/// Mixture e-process for H0: green's rate of bad events q ≥ q_max.
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

    /// Adds one interval of green's `n` requests with `e` bad ones.
    pub fn update(&mut self, n: f64, e: f64) {
        if !(n.is_finite() && e.is_finite()) || n <= 0.0 || e < 0.0 || e > n {
            return;
        }
        for (k, c) in self.grid.iter().enumerate() {
            let llr = e * c.ln() + (n - e) * ((1.0 - c * self.q_max) / (1.0 - self.q_max)).ln();
            self.log_lr[k] += llr / self.phi;
        }
        self.max_log_e = self.max_log_e.max(self.log_e());
    }

    pub fn log_e(&self) -> f64 {
        mixture(&self.log_lr)
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
        let mut e = RatioEProcess::rollback(0.0, 1.0);
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
        let mut e = RatioEProcess::rollback(0.2, 1.0);
        for (interval, want) in SEQ.iter().zip(expected) {
            e.update(interval.0, interval.1, interval.2, interval.3);
            close(e.e_value(), want, 1e-9);
        }
    }

    #[test]
    fn single_interval_vectors() {
        let mut e = RatioEProcess::rollback(0.0, 1.0);
        e.update(500.0, 9500.0, 4.0, 0.0);
        close(e.e_value(), 439.83154631, 1e-9);
        let mut e = RatioEProcess::rollback(0.0, 1.0);
        e.update(500.0, 9500.0, 3.0, 0.0);
        close(e.e_value(), 72.094431944, 1e-9);
        let mut e = RatioEProcess::rollback(0.0, 1.0);
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
