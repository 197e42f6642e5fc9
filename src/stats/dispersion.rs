//! Overdispersion φ of bad-event counts, estimated from blue-vs-blue (A/A) intervals.
//!
//! With two groups of the same version (a, b) and Poisson bad events, green-vs-blue style
//! conditioning makes a's share of each interval's E = e_a + e_b bad events binomial with
//! p_s = n_a/(n_a + n_b). Pearson's X² = Σ (e_a − E·p_s)² / (E·p_s·(1 − p_s)) over the usable
//! intervals, divided by their number (no parameter is fitted: the rate ratio is 1), estimates
//! the variance inflation φ. The e-processes divide each interval's log-likelihood ratio by φ.
//! Estimate φ before a canary, never from canary data.

use serde::Serialize;

use super::StatsError;

/// Estimated overdispersion of A/A interval counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dispersion {
    /// φ̂ = max(1, X²/df).
    pub phi: f64,
    /// Pearson's X² of the conditional binomial.
    pub chi2: f64,
    /// Degrees of freedom: the number of usable intervals.
    pub df: u64,
    /// φ̂ rounded up to one decimal: the value to put in a policy.
    pub recommended_phi: f64,
}

/// Estimates φ from A/A intervals `(n_a, n_b, e_a, e_b)`: requests and bad events of two groups
/// running the same version, in the same order as [`super::RatioEProcess::update`] takes them.
/// Intervals without traffic on both sides, without bad events, or with negative or
/// non-finite values are skipped.
pub fn estimate_dispersion(
    intervals: impl IntoIterator<Item = (f64, f64, f64, f64)>,
) -> Result<Dispersion, StatsError> {
    let mut chi2 = 0.0;
    let mut df = 0u64;
    for (n_a, n_b, e_a, e_b) in intervals {
        let valid = [n_a, n_b, e_a, e_b]
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0);
        let events = e_a + e_b;
        if !valid || n_a <= 0.0 || n_b <= 0.0 || events <= 0.0 {
            continue;
        }
        let share = n_a / (n_a + n_b);
        let expected = events * share;
        chi2 += (e_a - expected).powi(2) / (expected * (1.0 - share));
        df += 1;
    }
    if df == 0 {
        return Err(StatsError::NoUsableIntervals);
    }
    let phi = (chi2 / df as f64).max(1.0);
    // The small slack keeps 1.2 from becoming 1.3 through 12.000000000000002.
    let recommended_phi = ((phi * 10.0 - 1e-9).ceil() / 10.0).max(1.0);
    Ok(Dispersion {
        phi,
        chi2,
        df,
        recommended_phi,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Gamma, Poisson};

    /// A/A intervals with the given request counts and a per-request bad rate; `cv` > 0 draws
    /// each group's rate per interval from a gamma with mean 1 and that coefficient of variation.
    fn simulate(seed: u64, intervals: usize, cv: f64) -> Vec<(f64, f64, f64, f64)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let noise = (cv > 0.0).then(|| Gamma::new(1.0 / (cv * cv), cv * cv).unwrap());
        let rate = 0.01;
        (0..intervals)
            .map(|i| {
                // The traffic split moves like a rollout's steps.
                let n_a = [500.0, 1000.0, 2500.0, 5000.0][i * 4 / intervals];
                let n_b = 10_000.0 - n_a;
                let mut draw = |n: f64| {
                    let factor = noise.as_ref().map_or(1.0, |g| g.sample(&mut rng));
                    Poisson::new(n * rate * factor).unwrap().sample(&mut rng)
                };
                let e_a = draw(n_a);
                let e_b = draw(n_b);
                (n_a, n_b, e_a, e_b)
            })
            .collect()
    }

    #[test]
    fn poisson_counts_show_no_overdispersion() {
        for seed in 1..=5 {
            let d = estimate_dispersion(simulate(seed, 400, 0.0)).unwrap();
            assert_eq!(d.df, 400);
            assert!(d.phi >= 1.0 && d.phi < 1.2, "seed {seed}: {d:?}");
            assert!(d.recommended_phi <= 1.2, "seed {seed}: {d:?}");
        }
    }

    #[test]
    fn gamma_mixed_rates_show_overdispersion() {
        // Gamma noise with CV 0.3 on rates of 5–50 events per interval inflates the
        // conditional binomial's variance by about 1 + 0.09·μ_a·μ_b/(μ_a + μ_b).
        for seed in 1..=5 {
            let d = estimate_dispersion(simulate(seed, 400, 0.3)).unwrap();
            assert!(d.phi > 2.0, "seed {seed}: {d:?}");
            assert!(d.recommended_phi >= d.phi && d.recommended_phi < d.phi + 0.1 + 1e-9);
        }
    }

    #[test]
    fn pearson_statistic_of_a_hand_computed_table() {
        // Shares 0.5 and 0.2; E = 10 and 5: X² = (7−5)²/2.5 + (0−1)²/0.8 = 1.6 + 1.25.
        let d = estimate_dispersion([
            (100.0, 100.0, 7.0, 3.0),
            (100.0, 400.0, 0.0, 5.0),
            (100.0, 0.0, 3.0, 0.0),
            (100.0, 100.0, 0.0, 0.0),
            (f64::NAN, 100.0, 1.0, 1.0),
        ])
        .unwrap();
        assert_eq!(d.df, 2);
        assert!((d.chi2 - 2.85).abs() < 1e-12, "{d:?}");
        assert!((d.phi - 1.425).abs() < 1e-12, "{d:?}");
        assert_eq!(d.recommended_phi, 1.5);
    }

    #[test]
    fn under_dispersed_counts_recommend_no_tempering() {
        let d = estimate_dispersion([(100.0, 100.0, 5.0, 5.0), (100.0, 300.0, 2.0, 6.0)]).unwrap();
        assert_eq!(d.chi2, 0.0);
        assert_eq!(d.phi, 1.0);
        assert_eq!(d.recommended_phi, 1.0);
    }

    #[test]
    fn no_usable_interval_is_an_error() {
        assert_eq!(
            estimate_dispersion([(100.0, 100.0, 0.0, 0.0)]),
            Err(StatsError::NoUsableIntervals)
        );
        assert_eq!(estimate_dispersion([]), Err(StatsError::NoUsableIntervals));
    }
}
