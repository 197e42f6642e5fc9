//! A rollback e-process that also restarts at each step entry, so that a regression appearing
//! only at a higher traffic share is not drowned by the good evidence of earlier steps.
//!
//! E_t = Σ_j π_j · E_t^(j), where E^(j) is the grid-mixture e-process started when step j was
//! entered (a stopping time) and equal to 1 before. Each component is a non-negative
//! supermartingale with initial value 1 under H0, and the weights π_j are fixed before the
//! rollout (π_0 = [`FIRST_STAGE_WEIGHT`] for the start of the rollout, the rest shared equally by the
//! later steps), so the mixture is an e-process too and Ville's inequality still bounds the chance of
//! ever crossing 1/α by α. The price of the protection is ln(1/π_0) nats at the start.

use serde::{Deserialize, Serialize};

use super::eprocess::{log_sum_exp, RatioEProcess};

/// π_0: the weight of the component that runs from the start of the rollout. Most regressions
/// are present from the first step, so it gets most of the weight (cost ln(1/π_0) ≈ 0.29 nats);
/// a regression that appears only at a later step is seen there at a larger share, where the
/// larger cost of its smaller weight is paid in a few windows.
pub const FIRST_STAGE_WEIGHT: f64 = 0.75;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedEProcess {
    /// The component started at each stage so far (index = stage).
    pub started: Vec<Option<RatioEProcess>>,
    /// ln π_j for every stage, fixed at creation.
    pub log_weights: Vec<f64>,
    /// A fresh component, cloned when a stage starts.
    pub template: RatioEProcess,
    pub max_log_e: f64,
}

impl StagedEProcess {
    /// `stages` = the number of steps at which blue and green are compared; stage 0 starts now.
    pub fn new(template: RatioEProcess, stages: usize) -> Self {
        let stages = stages.max(1);
        let weights: Vec<f64> = if stages == 1 {
            vec![1.0]
        } else {
            std::iter::once(FIRST_STAGE_WEIGHT)
                .chain(std::iter::repeat_n(
                    (1.0 - FIRST_STAGE_WEIGHT) / (stages - 1) as f64,
                    stages - 1,
                ))
                .collect()
        };
        let mut s = StagedEProcess {
            started: vec![None; stages],
            log_weights: weights.iter().map(|w| w.ln()).collect(),
            template,
            max_log_e: 0.0,
        };
        s.start_stage(0);
        s
    }

    /// Starts the component of `stage` (no-op if it is out of range or already started).
    pub fn start_stage(&mut self, stage: usize) {
        if let Some(slot) = self.started.get_mut(stage) {
            if slot.is_none() {
                *slot = Some(self.template.clone());
            }
        }
    }

    /// Adds one interval to every started component.
    pub fn update(&mut self, n_g: f64, n_b: f64, e_g: f64, e_b: f64) {
        for c in self.started.iter_mut().flatten() {
            c.update(n_g, n_b, e_g, e_b);
        }
        self.max_log_e = self.max_log_e.max(self.log_e());
    }

    /// ln E_t: components not started yet count as 1.
    pub fn log_e(&self) -> f64 {
        let terms: Vec<f64> = self
            .started
            .iter()
            .zip(&self.log_weights)
            .map(|(c, lw)| lw + c.as_ref().map_or(0.0, RatioEProcess::log_e))
            .collect();
        log_sum_exp(&terms)
    }

    pub fn e_value(&self) -> f64 {
        self.log_e().exp()
    }

    pub fn crossed(&self, alpha: f64) -> bool {
        self.log_e() >= (1.0 / alpha).ln()
    }

    /// The boundary ratio r0 of the null hypothesis.
    pub fn r0(&self) -> f64 {
        self.template.r0
    }

    pub fn phi(&self) -> f64 {
        self.template.phi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stage_is_the_plain_e_process() {
        let mut plain = RatioEProcess::rollback(0.2, 1.0);
        let mut staged = StagedEProcess::new(RatioEProcess::rollback(0.2, 1.0), 1);
        for (n_g, n_b, e_g, e_b) in [(500.0, 9500.0, 2.0, 30.0), (1000.0, 9000.0, 9.0, 27.0)] {
            plain.update(n_g, n_b, e_g, e_b);
            staged.update(n_g, n_b, e_g, e_b);
            assert!((plain.log_e() - staged.log_e()).abs() < 1e-12);
        }
    }

    #[test]
    fn starts_at_one_and_costs_ln_1_over_pi0_at_the_first_stage() {
        let staged = StagedEProcess::new(RatioEProcess::rollback(0.2, 1.0), 4);
        assert!(staged.log_e().abs() < 1e-12);
        let mut plain = RatioEProcess::rollback(0.2, 1.0);
        let mut staged = staged;
        for _ in 0..5 {
            plain.update(600.0, 11400.0, 12.0, 57.0);
            staged.update(600.0, 11400.0, 12.0, 57.0);
        }
        // π_0 E^(0) + the unstarted rest: at least π_0 of the plain evidence.
        assert!(staged.e_value() >= FIRST_STAGE_WEIGHT * plain.e_value());
        assert!(staged.e_value() <= plain.e_value());
    }

    #[test]
    fn a_late_regression_is_caught_despite_a_good_history() {
        let mut plain = RatioEProcess::rollback(0.2, 1.0);
        let mut staged = StagedEProcess::new(RatioEProcess::rollback(0.2, 1.0), 4);
        // Thirty healthy intervals at 5 %.
        for _ in 0..30 {
            plain.update(600.0, 11400.0, 3.0, 57.0);
            staged.update(600.0, 11400.0, 3.0, 57.0);
        }
        // Step 2 at 25 %: green now has 4× blue's error rate.
        staged.start_stage(1);
        let mut plain_windows = None;
        let mut staged_windows = None;
        for w in 1..=60 {
            plain.update(3000.0, 9000.0, 60.0, 45.0);
            staged.update(3000.0, 9000.0, 60.0, 45.0);
            if plain_windows.is_none() && plain.crossed(0.0033) {
                plain_windows = Some(w);
            }
            if staged_windows.is_none() && staged.crossed(0.0033) {
                staged_windows = Some(w);
            }
        }
        let staged_windows = staged_windows.expect("staged e-process crossed");
        let plain_windows = plain_windows.unwrap_or(61);
        assert!(
            staged_windows < plain_windows,
            "staged {staged_windows} vs plain {plain_windows}"
        );
    }
}
