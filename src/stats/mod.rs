//! Statistics: anytime-valid e-processes for the decisions, fixed-horizon tests for reports.
//!
//! Pure numeric code, pinned to the test vectors of docs/statistics.md §10 (formulas in §3–§9).
//!
//! - [`RatioEProcess`], [`SloEProcess`]: the grid-mixture e-processes that decide rollback and
//!   advance; valid however often they are looked at.
//! - [`StagedEProcess`]: the rollback e-process restarted at each step entry, so a regression
//!   that appears only at a higher share is caught there.
//! - [`mann_whitney`], [`mann_whitney_binned`], [`cles_binned`], [`shift_interval`]: rank tests
//!   and effect sizes for reports and Kayenta-style comparison (fixed horizon).
//! - [`binomial_test`], [`fisher_exact`]: exact tests for reports (fixed horizon).
//! - [`msprt_lambda`]: the normal-mixture mSPRT statistic.
//! - [`format_e`], [`format_e_short`]: e-values for people, from ln E.
//! - [`estimate_dispersion`]: the overdispersion φ of blue-vs-blue counts, to temper the
//!   e-processes with.

mod dispersion;
mod display;
mod eprocess;
mod exact;
mod mannwhitney;
mod msprt;
mod staged;

use serde::{Deserialize, Serialize};

pub use dispersion::{estimate_dispersion, Dispersion};
pub use display::{format_e, format_e_short};
pub use eprocess::{
    log_sum_exp, RatioEProcess, SloEProcess, ADVANCE_GRID, BAKE_GRID, ROLLBACK_GRID, SLO_GRID,
};
pub use exact::{binomial_test, fisher_exact, FisherExact};
pub use mannwhitney::{
    cles_binned, mann_whitney, mann_whitney_binned, shift_interval, MannWhitney, ShiftInterval,
    MAX_SHIFT_PAIRS,
};
pub use msprt::{msprt_lambda, msprt_log_lambda};
pub use staged::StagedEProcess;

/// Direction of a fixed-horizon test, from the first sample's (green's) point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alternative {
    /// The first sample differs from the second in either direction.
    TwoSided,
    /// The first sample is larger (slower, more errors) than the second.
    Greater,
    /// The first sample is smaller than the second.
    Less,
}

/// Why a statistic could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// A sample or a group of bucket counts is empty.
    #[error("a sample is empty")]
    EmptySample,
    /// An input is NaN, infinite, negative or otherwise outside its domain.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// Two per-bucket count vectors have different lengths.
    #[error("bucket count vectors differ in length: {first} and {second}")]
    LengthMismatch { first: usize, second: usize },
    /// Every observation is tied, so the rank statistic has no variance.
    #[error("all observations are tied; the rank statistic has no variance")]
    AllTied,
    /// The shift interval would sort more pairwise differences than allowed.
    #[error("{pairs} pairwise differences exceed the limit of {max}")]
    TooLarge { pairs: usize, max: usize },
    /// No interval carried usable information.
    #[error("no interval has traffic on both sides and at least one bad event")]
    NoUsableIntervals,
}
