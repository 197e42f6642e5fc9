//! The normal-mixture mSPRT statistic Λ (Johari, Pekelis, Walsh: "Always valid inference").
//!
//! With an estimate θ̂ of variance V and a normal mixing prior N(θ0, τ²) over the alternatives,
//! Λ = √(V/(V+τ²))·exp(τ²(θ̂−θ0)²/(2V(V+τ²))) is an e-value: rejecting H0: θ = θ0 once Λ ≥ 1/α
//! keeps the chance of ever rejecting a true H0 at most α.

use super::StatsError;

/// ln Λ of the normal-mixture mSPRT for estimate `theta_hat` with variance `variance`, null
/// value `theta0` and mixing variance `tau2`.
pub fn msprt_log_lambda(
    theta_hat: f64,
    theta0: f64,
    variance: f64,
    tau2: f64,
) -> Result<f64, StatsError> {
    if !(theta_hat.is_finite() && theta0.is_finite()) {
        return Err(StatsError::InvalidInput(
            "estimate and null value must be finite",
        ));
    }
    if !(variance > 0.0 && variance.is_finite() && tau2 > 0.0 && tau2.is_finite()) {
        return Err(StatsError::InvalidInput(
            "variance and mixing variance must be positive and finite",
        ));
    }
    let total = variance + tau2;
    let delta = theta_hat - theta0;
    Ok(0.5 * (variance / total).ln() + tau2 * delta * delta / (2.0 * variance * total))
}

/// Λ of the normal-mixture mSPRT; see [`msprt_log_lambda`].
pub fn msprt_lambda(
    theta_hat: f64,
    theta0: f64,
    variance: f64,
    tau2: f64,
) -> Result<f64, StatsError> {
    msprt_log_lambda(theta_hat, theta0, variance, tau2).map(f64::exp)
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
    fn lambda_matches_reference_vectors() {
        close(
            msprt_lambda(0.2, 0.0, 0.02, 0.01).unwrap(),
            1.1395127733830444,
            1e-12,
        );
        close(
            msprt_lambda(0.2, 0.0, 0.002, 0.01).unwrap(),
            1698.4198515761295,
            1e-12,
        );
        close(
            msprt_lambda(0.05, 0.0, 0.0004, 0.0025).unwrap(),
            5.492946325124935,
            1e-12,
        );
    }

    #[test]
    fn lambda_depends_on_the_distance_from_the_null_only() {
        let above = msprt_lambda(1.2, 1.0, 0.02, 0.01).unwrap();
        let below = msprt_lambda(0.8, 1.0, 0.02, 0.01).unwrap();
        close(above, below, 1e-12);
        // At the null value the evidence is below 1: the mixture pays for its spread.
        assert!(msprt_lambda(1.0, 1.0, 0.02, 0.01).unwrap() < 1.0);
    }

    #[test]
    fn lambda_rejects_degenerate_variances() {
        assert!(msprt_lambda(0.2, 0.0, 0.0, 0.01).is_err());
        assert!(msprt_lambda(0.2, 0.0, 0.02, -1.0).is_err());
        assert!(msprt_lambda(f64::NAN, 0.0, 0.02, 0.01).is_err());
    }
}
