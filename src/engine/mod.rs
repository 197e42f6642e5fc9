//! The per-API rollout state machine and the pure `decide()` function.
//!
//! `decide(policy, state, observation, now)` is synchronous and free of I/O; the daemon,
//! `simulate`, `replay` and the benchmarks all call this one function.

pub mod breaker;
mod decide;
mod observation;
mod release;
mod state;

pub use decide::{
    adopted_step, approve, decide, percent, Action, CountRecord, Decision, DecisionRecord,
    Explanation, GuardReport, Notice, QualityState, StreamReport, ADVANCE_MAX_ROLLBACK_E,
    GREEN_MISSING_NOTICE_WINDOWS, MAGNITUDE_FACTOR, MAGNITUDE_FLOOR, RECENT_WINDOWS,
    SPLIT_MISMATCH_WINDOWS,
};
pub use observation::{
    CheckData, CheckObservation, Counts, DataProblem, EdgeCounts, Observation, Pair,
};
pub use release::{
    check_start, release_from_answer, release_suffix, stable_of_undecodable, validate_release,
    with_discovered_release, Releases, StartRequest, MAX_RELEASE_LEN, ROLLED_BACK_KEPT,
};
pub use state::{
    decode_state, encode_record, encode_state, stream_id, Approval, ApprovalGate, CodecError,
    EvidenceRecord, Held, Intent, Phase, RolloutState, Stream, HISTORY_LEN,
};

#[cfg(test)]
pub(crate) mod tests;
