//! Statistics: anytime-valid e-processes for the decisions, fixed-horizon tests for reports.
//!
//! Pure numeric code, pinned to the test vectors of the statistics reference.

mod eprocess;
mod staged;

pub use eprocess::{
    log_sum_exp, RatioEProcess, SloEProcess, ADVANCE_GRID, ROLLBACK_GRID, SLO_GRID,
};
pub use staged::StagedEProcess;
