//! Exact binomial test and Fisher's exact test on a 2×2 table, as scipy computes them.
//!
//! Fixed-horizon tests for reports: re-running them every interval inflates false alarms.
//! Two-sided p-values sum the probabilities of all outcomes no more likely than the observed
//! one (with scipy's relative slack), finding the far tail's edge by binary search over the
//! unimodal mass function and summing it through the distribution function.

use serde::Serialize;
use statrs::distribution::{Binomial, Discrete, DiscreteCDF, Hypergeometric};

use super::{Alternative, StatsError};

/// Slack scipy's `binomtest` allows when comparing probabilities with the observed one.
const BINOMIAL_SLACK: f64 = 1e-7;
/// Slack scipy's `fisher_exact` allows when comparing probabilities with the observed one.
const FISHER_SLACK: f64 = 1e-14;

/// Result of Fisher's exact test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FisherExact {
    /// Sample odds ratio (a·d)/(b·c); +∞ when b·c = 0, NaN when a margin is empty.
    pub odds_ratio: f64,
    /// p-value.
    pub p: f64,
}

/// Exact binomial test of `k` successes in `n` trials against success probability `p`.
///
/// Greater: P(X ≥ k); less: P(X ≤ k); two-sided as `scipy.stats.binomtest`: the sum of
/// P(X = i) over all i with P(X = i) ≤ P(X = k)·(1 + 1e-7).
pub fn binomial_test(k: u64, n: u64, p: f64, alternative: Alternative) -> Result<f64, StatsError> {
    if k > n {
        return Err(StatsError::InvalidInput("successes exceed trials"));
    }
    let dist = Binomial::new(p, n)
        .map_err(|_| StatsError::InvalidInput("probability must lie in [0, 1]"))?;
    let at_least = |x: u64| if x == 0 { 1.0 } else { dist.sf(x - 1) };
    let pvalue = match alternative {
        Alternative::Greater => at_least(k),
        Alternative::Less => dist.cdf(k),
        Alternative::TwoSided => {
            let expected = p * n as f64;
            let k_f = k as f64;
            if k_f == expected {
                1.0
            } else {
                let threshold = dist.pmf(k) * (1.0 + BINOMIAL_SLACK);
                if k_f < expected {
                    // Upper tail: the mass decreases from ⌈np⌉ to n.
                    let far = first_true(expected.ceil() as u64, n, |x| dist.pmf(x) <= threshold);
                    dist.cdf(k) + far.map_or(0.0, at_least)
                } else {
                    // Lower tail: the mass increases from 0 to ⌊np⌋.
                    let far = last_at_most(0, expected.floor() as u64, |x| dist.pmf(x), threshold);
                    at_least(k) + far.map_or(0.0, |x| dist.cdf(x))
                }
            }
        }
    };
    Ok(pvalue.min(1.0))
}

/// Fisher's exact test on the 2×2 table `[[a, b], [c, d]]`: rows are the two groups (green,
/// blue), columns the outcomes (bad, good). Greater: the first row's odds of the first column
/// are higher. Matches `scipy.stats.fisher_exact`, including p = 1 and a NaN odds ratio when a
/// row or column is empty.
pub fn fisher_exact(
    table: [[u64; 2]; 2],
    alternative: Alternative,
) -> Result<FisherExact, StatsError> {
    let [[a, b], [c, d]] = table;
    let col1 = a.checked_add(c);
    let col2 = b.checked_add(d);
    let (Some(col1), Some(col2)) = (col1, col2) else {
        return Err(StatsError::InvalidInput("table counts overflow"));
    };
    let Some(total) = col1.checked_add(col2) else {
        return Err(StatsError::InvalidInput("table counts overflow"));
    };
    if col1 == 0 || col2 == 0 || a + b == 0 || c + d == 0 {
        return Ok(FisherExact {
            odds_ratio: f64::NAN,
            p: 1.0,
        });
    }
    let odds_ratio = if b > 0 && c > 0 {
        (a as f64 * d as f64) / (b as f64 * c as f64)
    } else {
        f64::INFINITY
    };

    // a ~ Hypergeometric(population total, successes col1, draws a + b).
    let draws = a + b;
    let dist = Hypergeometric::new(total, col1, draws)
        .map_err(|_| StatsError::InvalidInput("inconsistent table"))?;
    let low = draws.saturating_sub(col2);
    let high = draws.min(col1);
    let pmf = |x: u64| {
        if x < low || x > high {
            0.0
        } else {
            dist.ln_pmf(x).exp()
        }
    };
    let at_least = |x: u64| if x == 0 { 1.0 } else { dist.sf(x - 1) };

    let p = match alternative {
        Alternative::Less => dist.cdf(a),
        Alternative::Greater => at_least(a),
        Alternative::TwoSided => {
            let mode = ((draws as u128 + 1) * (col1 as u128 + 1) / (total as u128 + 2)) as u64;
            let exact = pmf(a);
            let at_mode = pmf(mode);
            if (exact - at_mode).abs() / exact.max(at_mode) <= FISHER_SLACK {
                1.0
            } else {
                let threshold = exact * (1.0 + FISHER_SLACK);
                if a < mode {
                    let far = first_true(mode, high, |x| pmf(x) <= threshold);
                    dist.cdf(a) + far.map_or(0.0, at_least)
                } else {
                    let far = last_at_most(low, mode, pmf, threshold);
                    at_least(a) + far.map_or(0.0, |x| dist.cdf(x))
                }
            }
        }
    };
    Ok(FisherExact {
        odds_ratio,
        p: p.min(1.0),
    })
}

/// Smallest x in [lo, hi] for which `pred` holds, where `pred` is false then true; None if it
/// never holds.
fn first_true(lo: u64, hi: u64, pred: impl Fn(u64) -> bool) -> Option<u64> {
    if lo > hi {
        return None;
    }
    let end = hi;
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    (lo < end || pred(end)).then_some(lo)
}

/// Largest x in [lo, hi] with `mass(x) ≤ threshold`, where `mass` does not decrease on the range;
/// None if there is none.
fn last_at_most(lo: u64, hi: u64, mass: impl Fn(u64) -> f64, threshold: f64) -> Option<u64> {
    match first_true(lo, hi, |x| mass(x) > threshold) {
        Some(x) if x == lo => None,
        Some(x) => Some(x - 1),
        None if lo <= hi => Some(hi),
        None => None,
    }
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

    #[test]
    fn binomial_test_matches_scipy() {
        close(
            binomial_test(9, 50, 0.1, Alternative::Greater).unwrap(),
            0.05786720571809426,
            1e-10,
        );
        close(
            binomial_test(9, 50, 0.1, Alternative::TwoSided).unwrap(),
            0.09165306541052616,
            1e-10,
        );
        close(
            binomial_test(9, 50, 0.12 / 1.02, Alternative::Greater).unwrap(),
            0.12741054736357293,
            1e-10,
        );
        close(
            binomial_test(4, 4, 0.05, Alternative::Greater).unwrap(),
            6.25e-06,
            1e-10,
        );
    }

    #[test]
    fn binomial_two_sided_sums_both_tails_of_no_more_likely_outcomes() {
        // Brute force over the whole support, on both sides of the mean.
        for (k, n, p) in [
            (9, 50, 0.1),
            (1, 50, 0.1),
            (0, 30, 0.2),
            (30, 40, 0.6),
            (3, 7, 0.5),
        ] {
            let dist = Binomial::new(p, n).unwrap();
            let threshold = dist.pmf(k) * (1.0 + BINOMIAL_SLACK);
            let brute: f64 = (0..=n)
                .map(|x| dist.pmf(x))
                .filter(|m| *m <= threshold)
                .sum();
            let got = binomial_test(k, n, p, Alternative::TwoSided).unwrap();
            close(got, brute.min(1.0), 1e-9);
        }
    }

    #[test]
    fn binomial_less_and_greater_cover_the_observation_twice() {
        let greater = binomial_test(9, 50, 0.1, Alternative::Greater).unwrap();
        let less = binomial_test(9, 50, 0.1, Alternative::Less).unwrap();
        let at = Binomial::new(0.1, 50).unwrap().pmf(9);
        close(greater + less, 1.0 + at, 1e-12);
        assert_eq!(
            binomial_test(0, 50, 0.1, Alternative::Greater).unwrap(),
            1.0
        );
        assert_eq!(
            binomial_test(5, 50, 0.1, Alternative::TwoSided).unwrap(),
            1.0
        );
    }

    #[test]
    fn binomial_rejects_impossible_inputs() {
        assert!(binomial_test(5, 4, 0.1, Alternative::Greater).is_err());
        assert!(binomial_test(1, 4, 1.5, Alternative::Greater).is_err());
        assert!(binomial_test(1, 4, f64::NAN, Alternative::Greater).is_err());
    }

    #[test]
    fn fisher_exact_matches_scipy() {
        let table = [[9, 991], [41, 8959]];
        let greater = fisher_exact(table, Alternative::Greater).unwrap();
        close(greater.odds_ratio, 1.9844699859713026, 1e-12);
        close(greater.p, 0.057401512369331296, 1e-9);
        let two = fisher_exact(table, Alternative::TwoSided).unwrap();
        close(two.odds_ratio, 1.9844699859713026, 1e-12);
        close(two.p, 0.09088365090801176, 1e-9);
    }

    #[test]
    fn fisher_two_sided_sums_both_tails_of_no_more_likely_tables() {
        for table in [
            [[9, 991], [41, 8959]],
            [[1, 9], [11, 3]],
            [[0, 5], [5, 0]],
            [[3, 3], [3, 3]],
        ] {
            let [[a, b], [c, d]] = table;
            let dist = Hypergeometric::new(a + b + c + d, a + c, a + b).unwrap();
            let low = (a + b).saturating_sub(b + d);
            let high = (a + b).min(a + c);
            let pmf = |x: u64| dist.ln_pmf(x).exp();
            let threshold = pmf(a) * (1.0 + FISHER_SLACK);
            let brute: f64 = (low..=high).map(pmf).filter(|m| *m <= threshold).sum();
            let got = fisher_exact(table, Alternative::TwoSided).unwrap().p;
            close(got, brute.min(1.0), 1e-9);
        }
    }

    #[test]
    fn fisher_one_sided_tails_and_degenerate_tables() {
        let less = fisher_exact([[1, 9], [11, 3]], Alternative::Less).unwrap();
        let greater = fisher_exact([[1, 9], [11, 3]], Alternative::Greater).unwrap();
        assert!(less.p < 0.01 && greater.p > 0.99);
        // Swapping the rows swaps the one-sided tests.
        let swapped = fisher_exact([[11, 3], [1, 9]], Alternative::Greater).unwrap();
        close(swapped.p, less.p, 1e-12);
        let empty = fisher_exact([[0, 0], [3, 4]], Alternative::TwoSided).unwrap();
        assert!(empty.odds_ratio.is_nan());
        assert_eq!(empty.p, 1.0);
        let all_green_bad = fisher_exact([[2, 0], [3, 4]], Alternative::Greater).unwrap();
        assert_eq!(all_green_bad.odds_ratio, f64::INFINITY);
        let all_blue_good = fisher_exact([[2, 5], [0, 4]], Alternative::Greater).unwrap();
        assert_eq!(all_blue_good.odds_ratio, f64::INFINITY);
        let no_good_blue = fisher_exact([[2, 5], [3, 0]], Alternative::Greater).unwrap();
        assert_eq!(no_good_blue.odds_ratio, 0.0);
    }
}
