//! The per-API rollout state machine and the pure `decide()` function.

mod observation;

pub use observation::{
    CheckData, CheckObservation, Counts, DataProblem, EdgeCounts, Observation, Pair,
};
