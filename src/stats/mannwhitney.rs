//! Mann-Whitney U on raw samples and histogram buckets, its effect size, and the shift interval.
//!
//! All three views reduce the data to groups of tied values in ascending order, each holding
//! some observations of the first sample (green, the experiment) and some of the second (blue,
//! the control). U counts the pairs in which the first sample is larger, ties counting one half:
//! U = Σ_j g_j·(B_<j + ½·b_j), which equals the rank-sum form Σ g_j·mid-rank_j − n_g(n_g+1)/2.
//! These are fixed-horizon tests for reports; they are not valid under repeated looks.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

use super::{Alternative, StatsError};

/// Largest number of pairwise differences [`shift_interval`] will sort (32 MiB of them).
pub const MAX_SHIFT_PAIRS: usize = 1 << 22;

/// Result of a Mann-Whitney U test with the normal approximation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MannWhitney {
    /// U of the first sample: pairs in which it is larger, ties counting one half.
    pub u: f64,
    /// Standardised statistic, oriented so that a larger z is more evidence for the alternative
    /// (two-sided: |U − μ| is used).
    pub z: f64,
    /// Standard deviation of U under H0, tie-corrected.
    pub sigma: f64,
    /// p-value: 1 − Φ(z) one-sided, 2(1 − Φ(z)) two-sided, capped at 1.
    pub p: f64,
}

/// Kayenta-style confidence interval on the location shift experiment − control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ShiftInterval {
    /// Lower end of the interval.
    pub lower: f64,
    /// Upper end of the interval.
    pub upper: f64,
    /// Hodges-Lehmann estimate: the median of all pairwise differences.
    pub estimate: f64,
    /// Confidence level the interval was computed for.
    pub confidence: f64,
}

/// Mann-Whitney U test of raw samples `x` (green) against `y` (blue), normal approximation
/// with tie correction, with or without the continuity correction of ½.
///
/// Matches `scipy.stats.mannwhitneyu(x, y, method="asymptotic")`.
pub fn mann_whitney(
    x: &[f64],
    y: &[f64],
    alternative: Alternative,
    continuity: bool,
) -> Result<MannWhitney, StatsError> {
    let xs = sorted_sample(x)?;
    let ys = sorted_sample(y)?;
    ranked_shifted(&xs, &ys, 0.0).test(alternative, continuity)
}

/// Mann-Whitney U test on histogram buckets: `g[j]` and `b[j]` are green's and blue's counts in
/// bucket j (per bucket, not cumulative), buckets in ascending order of value.
pub fn mann_whitney_binned(
    g: &[f64],
    b: &[f64],
    alternative: Alternative,
    continuity: bool,
) -> Result<MannWhitney, StatsError> {
    ranked_bins(g, b)?.test(alternative, continuity)
}

/// Common-language effect size from buckets: the probability that a random green observation
/// is larger (slower) than a random blue one, ties counting one half.
/// A = Σ_j g_j·(B_<j + ½·b_j) / (n_g·n_b).
pub fn cles_binned(g: &[f64], b: &[f64]) -> Result<f64, StatsError> {
    let ranked = ranked_bins(g, b)?;
    if ranked.n_x <= 0.0 || ranked.n_y <= 0.0 {
        return Err(StatsError::EmptySample);
    }
    Ok(ranked.u / (ranked.n_x * ranked.n_y))
}

/// Two-sided confidence interval on the shift of `experiment` over `control`, as R's
/// `wilcox.test(experiment, control, conf.int = TRUE, exact = FALSE, correct = TRUE)` and
/// Kayenta's judge compute it: each bound is where the continuity- and tie-corrected z statistic
/// of (experiment − d) against control crosses the normal quantile. That statistic only changes
/// at the pairwise differences, so the bounds are found by bisection over the sorted differences
/// and are differences themselves (clamped to the smallest and largest).
pub fn shift_interval(
    experiment: &[f64],
    control: &[f64],
    confidence: f64,
) -> Result<ShiftInterval, StatsError> {
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(StatsError::InvalidInput(
            "confidence must lie strictly between 0 and 1",
        ));
    }
    let xs = sorted_sample(experiment)?;
    let ys = sorted_sample(control)?;
    let pairs = xs.len().saturating_mul(ys.len());
    if pairs > MAX_SHIFT_PAIRS {
        return Err(StatsError::TooLarge {
            pairs,
            max: MAX_SHIFT_PAIRS,
        });
    }
    let mut diffs = Vec::with_capacity(pairs);
    for x in &xs {
        diffs.extend(ys.iter().map(|y| x - y));
    }
    diffs.sort_by(f64::total_cmp);
    let half = diffs.len() / 2;
    let estimate = if diffs.len() % 2 == 1 {
        diffs[half]
    } else {
        (diffs[half - 1] + diffs[half]) / 2.0
    };
    diffs.dedup();

    let quantile = Normal::standard().inverse_cdf(1.0 - (1.0 - confidence) / 2.0);
    let lower = shift_root(&xs, &ys, &diffs, quantile)?;
    let upper = shift_root(&xs, &ys, &diffs, -quantile)?;
    Ok(ShiftInterval {
        lower,
        upper,
        estimate,
        confidence,
    })
}

/// The shift d at which z(d) − `quantile` changes sign, where z(d) is the corrected statistic of
/// (xs − d) against ys; `points` are the distinct pairwise differences, ascending.
fn shift_root(xs: &[f64], ys: &[f64], points: &[f64], quantile: f64) -> Result<f64, StatsError> {
    // Candidates alternate: even index 2k is the difference points[k], odd index 2k+1 stands for
    // the open gap between points[k] and points[k+1], on which the statistic is constant.
    let value = |c: usize| {
        if c % 2 == 0 {
            points[c / 2]
        } else {
            (points[c / 2] + points[c / 2 + 1]) / 2.0
        }
    };
    let f = |d: f64| -> Result<f64, StatsError> {
        let ranked = ranked_shifted(xs, ys, d);
        let sigma = ranked.sigma();
        if sigma.is_nan() || sigma <= 0.0 {
            return Err(StatsError::AllTied);
        }
        let dz = ranked.u - ranked.n_x * ranked.n_y / 2.0;
        let correction = if dz == 0.0 { 0.0 } else { 0.5 * dz.signum() };
        Ok((dz - correction) / sigma - quantile)
    };
    let last = 2 * (points.len() - 1);
    if f(value(0))? <= 0.0 {
        return Ok(points[0]);
    }
    if f(value(last))? >= 0.0 {
        return Ok(points[points.len() - 1]);
    }
    let (mut lo, mut hi) = (0, last);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let v = f(value(mid))?;
        if v == 0.0 {
            return Ok(value(mid));
        }
        if v > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // The sign changes where a gap meets a difference: the root is that difference.
    Ok(if lo % 2 == 0 {
        points[lo / 2]
    } else {
        points[hi / 2]
    })
}

/// A copy of the sample, sorted; rejects empty samples and non-finite values.
fn sorted_sample(sample: &[f64]) -> Result<Vec<f64>, StatsError> {
    if sample.is_empty() {
        return Err(StatsError::EmptySample);
    }
    if sample.iter().any(|v| !v.is_finite()) {
        return Err(StatsError::InvalidInput("sample values must be finite"));
    }
    let mut sorted = sample.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(sorted)
}

/// Ranks (xs − d) against ys, both sorted: x_i − d ties y_j when x_i − y_j equals d, so a shift
/// by a pairwise difference ties exactly that pair.
fn ranked_shifted(xs: &[f64], ys: &[f64], d: f64) -> Ranked {
    let mut ranked = Ranked::default();
    let (mut i, mut j) = (0, 0);
    while i < xs.len() || j < ys.len() {
        let order = if i == xs.len() {
            std::cmp::Ordering::Greater
        } else if j == ys.len() {
            std::cmp::Ordering::Less
        } else {
            (xs[i] - ys[j])
                .partial_cmp(&d)
                .unwrap_or(std::cmp::Ordering::Equal)
        };
        let (mut gx, mut gy) = (0usize, 0usize);
        if order.is_le() {
            let v = xs[i];
            while i < xs.len() && xs[i] == v {
                i += 1;
                gx += 1;
            }
        }
        if order.is_ge() {
            let v = ys[j];
            while j < ys.len() && ys[j] == v {
                j += 1;
                gy += 1;
            }
        }
        ranked.push(gx as f64, gy as f64);
    }
    ranked
}

/// Ranks bucket counts; rejects mismatched lengths and negative or non-finite counts.
fn ranked_bins(g: &[f64], b: &[f64]) -> Result<Ranked, StatsError> {
    if g.len() != b.len() {
        return Err(StatsError::LengthMismatch {
            first: g.len(),
            second: b.len(),
        });
    }
    if g.iter().chain(b).any(|c| !(c.is_finite() && *c >= 0.0)) {
        return Err(StatsError::InvalidInput(
            "bucket counts must be finite and non-negative",
        ));
    }
    let mut ranked = Ranked::default();
    for (gx, gy) in g.iter().zip(b) {
        ranked.push(*gx, *gy);
    }
    Ok(ranked)
}

/// Running U, sample sizes and tie term over groups of tied values in ascending order.
#[derive(Debug, Default)]
struct Ranked {
    u: f64,
    n_x: f64,
    n_y: f64,
    /// Σ (t³ − t) over the groups' sizes t.
    ties: f64,
}

impl Ranked {
    fn push(&mut self, gx: f64, gy: f64) {
        let t = gx + gy;
        self.u += gx * (self.n_y + gy / 2.0);
        self.ties += t * t * t - t;
        self.n_x += gx;
        self.n_y += gy;
    }

    /// σ = √( n_x·n_y/12 · [(N+1) − Σ(t³ − t)/(N(N−1))] ); 0 when undefined.
    fn sigma(&self) -> f64 {
        let n = self.n_x + self.n_y;
        if n < 2.0 {
            return 0.0;
        }
        let var = self.n_x * self.n_y / 12.0 * ((n + 1.0) - self.ties / (n * (n - 1.0)));
        var.max(0.0).sqrt()
    }

    fn test(&self, alternative: Alternative, continuity: bool) -> Result<MannWhitney, StatsError> {
        if self.n_x <= 0.0 || self.n_y <= 0.0 {
            return Err(StatsError::EmptySample);
        }
        let sigma = self.sigma();
        if !(sigma > 0.0 && sigma.is_finite()) {
            return Err(StatsError::AllTied);
        }
        let mu = self.n_x * self.n_y / 2.0;
        let c = if continuity { 0.5 } else { 0.0 };
        let z = match alternative {
            Alternative::Greater => (self.u - mu - c) / sigma,
            Alternative::Less => (mu - self.u - c) / sigma,
            Alternative::TwoSided => ((self.u - mu).abs() - c) / sigma,
        };
        let tail = Normal::standard().sf(z);
        let p = match alternative {
            Alternative::TwoSided => 2.0 * tail,
            Alternative::Greater | Alternative::Less => tail,
        };
        Ok(MannWhitney {
            u: self.u,
            z,
            sigma,
            p: p.min(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// statrs' erfc is accurate to about 1e-10 relative, so p-values are compared at 1e-9.
    const P_TOL: f64 = 1e-9;

    fn close(actual: f64, expected: f64, rel: f64) {
        assert!(
            ((actual - expected) / expected).abs() < rel,
            "actual {actual}, expected {expected}"
        );
    }

    const X: [f64; 4] = [10.0, 20.0, 30.0, 40.0];
    const Y: [f64; 4] = [1.0, 2.0, 3.0, 4.0];
    const TIES_X: [f64; 7] = [1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 5.0];
    const TIES_Y: [f64; 6] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
    const G: [f64; 4] = [30.0, 40.0, 20.0, 10.0];
    const B: [f64; 4] = [50.0, 30.0, 15.0, 5.0];

    #[test]
    fn separated_samples_match_scipy() {
        let two = mann_whitney(&X, &Y, Alternative::TwoSided, true).unwrap();
        assert_eq!(two.u, 16.0);
        close(two.p, 0.03038282197657749, P_TOL);
        let greater = mann_whitney(&X, &Y, Alternative::Greater, true).unwrap();
        assert_eq!(greater.u, 16.0);
        close(greater.p, 0.015191410988288745, P_TOL);
    }

    #[test]
    fn tied_samples_match_scipy() {
        let two = mann_whitney(&TIES_X, &TIES_Y, Alternative::TwoSided, true).unwrap();
        assert_eq!(two.u, 29.0);
        close(two.p, 0.26760323817222964, P_TOL);
        let greater = mann_whitney(&TIES_X, &TIES_Y, Alternative::Greater, true).unwrap();
        close(greater.p, 0.13380161908611482, P_TOL);
        let less = mann_whitney(&TIES_X, &TIES_Y, Alternative::Less, true).unwrap();
        assert_eq!(less.u, 29.0);
        close(less.p, 0.8955167061390955, P_TOL);
    }

    #[test]
    fn binned_counts_match_scipy() {
        let two = mann_whitney_binned(&G, &B, Alternative::TwoSided, true).unwrap();
        assert_eq!(two.u, 6075.0);
        close(two.sigma, 385.5305357164971, 1e-12);
        close(two.z, 2.7870684691760497, 1e-12);
        close(two.p, 0.005318723991071098, P_TOL);
        let greater = mann_whitney_binned(&G, &B, Alternative::Greater, true).unwrap();
        close(greater.p, 0.002659361995535549, P_TOL);
        let plain = mann_whitney_binned(&G, &B, Alternative::Greater, false).unwrap();
        close(plain.p, 0.0026487379265319245, P_TOL);
    }

    #[test]
    fn binned_effect_size_matches_reference() {
        close(cles_binned(&G, &B).unwrap(), 0.6075, 1e-12);
    }

    #[test]
    fn raw_samples_and_their_buckets_agree() {
        // Each distinct value is one bucket, so both views see the same ties.
        let g = [1.0, 2.0, 2.0, 1.0, 1.0];
        let b = [2.0, 2.0, 2.0, 0.0, 0.0];
        let raw = mann_whitney(&TIES_X, &TIES_Y, Alternative::TwoSided, true).unwrap();
        let binned = mann_whitney_binned(&g, &b, Alternative::TwoSided, true).unwrap();
        assert_eq!(raw.u, binned.u);
        close(raw.sigma, binned.sigma, 1e-12);
        close(raw.p, binned.p, 1e-12);
    }

    #[test]
    fn swapping_samples_mirrors_the_one_sided_tests() {
        let xy = mann_whitney(&TIES_X, &TIES_Y, Alternative::Greater, true).unwrap();
        let yx = mann_whitney(&TIES_Y, &TIES_X, Alternative::Less, true).unwrap();
        close(xy.p, yx.p, 1e-12);
        close(xy.z, yx.z, 1e-12);
        assert_eq!(xy.u + yx.u, 42.0);
    }

    #[test]
    fn negative_zero_ties_positive_zero() {
        let signed = mann_whitney(&[-0.0, 1.0], &[0.0, 2.0], Alternative::TwoSided, true).unwrap();
        let plain = mann_whitney(&[0.0, 1.0], &[0.0, 2.0], Alternative::TwoSided, true).unwrap();
        assert_eq!(signed, plain);
        assert_eq!(signed.u, 1.5);
    }

    #[test]
    fn degenerate_inputs_are_errors_not_p_values() {
        assert_eq!(
            mann_whitney(&[], &Y, Alternative::TwoSided, true),
            Err(StatsError::EmptySample)
        );
        assert_eq!(
            mann_whitney(&[1.0, 1.0], &[1.0], Alternative::TwoSided, true),
            Err(StatsError::AllTied)
        );
        assert!(matches!(
            mann_whitney(&[f64::NAN], &Y, Alternative::TwoSided, true),
            Err(StatsError::InvalidInput(_))
        ));
        assert_eq!(
            mann_whitney_binned(&[1.0], &[1.0, 2.0], Alternative::Greater, true),
            Err(StatsError::LengthMismatch {
                first: 1,
                second: 2
            })
        );
        assert!(matches!(
            mann_whitney_binned(&[-1.0, 2.0], &[1.0, 2.0], Alternative::Greater, true),
            Err(StatsError::InvalidInput(_))
        ));
        assert_eq!(
            mann_whitney_binned(&[0.0, 0.0], &[1.0, 2.0], Alternative::Greater, true),
            Err(StatsError::EmptySample)
        );
        assert_eq!(cles_binned(&[0.0], &[3.0]), Err(StatsError::EmptySample));
    }

    #[test]
    fn shift_interval_matches_kayenta() {
        let ci = shift_interval(&X, &Y, 0.95).unwrap();
        assert_eq!(ci.lower, 6.0);
        assert_eq!(ci.upper, 39.0);
        assert_eq!(ci.estimate, 22.5);
        assert_eq!(ci.confidence, 0.95);
    }

    #[test]
    fn shift_interval_narrows_inside_the_differences_with_more_data() {
        // control 0..20, experiment the same shifted by 5: the interval must hold 5, lie strictly
        // inside the extreme differences, and widen with the confidence level.
        let control: Vec<f64> = (0..20).map(f64::from).collect();
        let experiment: Vec<f64> = control.iter().map(|v| v + 5.0).collect();
        let ci95 = shift_interval(&experiment, &control, 0.95).unwrap();
        let ci80 = shift_interval(&experiment, &control, 0.80).unwrap();
        assert_eq!(ci95.estimate, 5.0);
        assert!(ci95.lower > -14.0 && ci95.upper < 24.0, "{ci95:?}");
        assert!(ci95.lower < 5.0 && 5.0 < ci95.upper, "{ci95:?}");
        assert!(ci80.lower >= ci95.lower && ci80.upper <= ci95.upper);
        assert!(ci80.upper - ci80.lower < ci95.upper - ci95.lower);
        // Symmetric data give a symmetric interval around the shift.
        assert_eq!(ci95.lower - 5.0, 5.0 - ci95.upper);
    }

    #[test]
    fn shift_interval_bounds_are_where_the_corrected_statistic_crosses() {
        let control: Vec<f64> = (0..20).map(f64::from).collect();
        let experiment: Vec<f64> = control.iter().map(|v| v + 5.0).collect();
        let ci = shift_interval(&experiment, &control, 0.95).unwrap();
        let q = Normal::standard().inverse_cdf(0.975);
        let xs = sorted_sample(&experiment).unwrap();
        let ys = sorted_sample(&control).unwrap();
        let z = |d: f64| {
            let r = ranked_shifted(&xs, &ys, d);
            let dz = r.u - r.n_x * r.n_y / 2.0;
            let c = if dz == 0.0 { 0.0 } else { 0.5 * dz.signum() };
            (dz - c) / r.sigma()
        };
        // The statistic crosses each quantile at the bound: the test rejects a shift just
        // outside the interval and keeps one just inside.
        assert!(z(ci.lower - 0.5) >= q && z(ci.lower + 0.5) < q);
        assert!(z(ci.upper - 0.5) > -q && z(ci.upper + 0.5) <= -q);
    }

    #[test]
    fn shift_interval_rejects_what_it_cannot_compute() {
        assert_eq!(
            shift_interval(&[3.0], &[3.0], 0.95),
            Err(StatsError::AllTied)
        );
        assert!(matches!(
            shift_interval(&X, &Y, 1.0),
            Err(StatsError::InvalidInput(_))
        ));
        let big = vec![0.0; 3000];
        assert!(matches!(
            shift_interval(&big, &big, 0.95),
            Err(StatsError::TooLarge { .. })
        ));
    }
}
