//! What one evaluation window measured, per check and colour, and what was wrong with it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::Colour;

/// Requests and "bad" requests (errors, or requests slower than an edge) for one colour in one window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub requests: f64,
    pub bad: f64,
}

impl Counts {
    pub fn new(requests: f64, bad: f64) -> Self {
        Counts { requests, bad }
    }

    /// bad / requests, or 0 with no requests.
    pub fn rate(&self) -> f64 {
        if self.requests > 0.0 {
            self.bad / self.requests
        } else {
            0.0
        }
    }
}

/// Blue and green counts side by side, by colour as measured. Which of them is the stable copy
/// and which the candidate is the rollout's direction ([`Pair::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Pair {
    pub blue: Counts,
    pub green: Counts,
}

impl Pair {
    /// The counts of `colour`.
    pub fn of(&self, colour: Colour) -> Counts {
        match colour {
            Colour::Blue => self.blue,
            Colour::Green => self.green,
        }
    }
}

/// Exceedance counts at one latency bucket edge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EdgeCounts {
    /// The bucket bound `le`, in seconds.
    pub edge: f64,
    /// `requests` = all requests, `bad` = requests slower than `edge`.
    pub counts: Pair,
}

/// Data of one check in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckData {
    /// Error-rate check: requests and errors per colour.
    Errors { counts: Pair },
    /// Latency check: one entry per policy edge, in the policy's order.
    Latency { edges: Vec<EdgeCounts> },
    /// Threshold check: the query's value for the candidate and, when available, for the stable
    /// copy.
    Value {
        #[serde(alias = "green")]
        candidate: f64,
        #[serde(alias = "blue")]
        stable: Option<f64>,
    },
}

/// Why a check's data cannot be used this window. Every variant means hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", content = "detail", rename_all = "snake_case")]
pub enum DataProblem {
    /// The query matched no series.
    NoData,
    /// NaN, ±Inf or a negative count.
    NotFinite(String),
    /// The newest sample is older than allowed.
    Stale(String),
    /// Some of the expected series or buckets are missing, or more series than expected.
    Partial(String),
    /// The metrics backend answered with an error or not at all.
    Backend(String),
    /// Finite counts that cannot be true: more errors than requests, latency buckets that are
    /// not cumulative, or a request count beyond the plausible magnitude.
    OutOfRange(String),
    /// The candidate's data are missing or stale while the stable copy's are present: the
    /// candidate stopped reporting.
    GreenMissing(String),
}

impl std::fmt::Display for DataProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataProblem::NoData => write!(f, "no data"),
            DataProblem::NotFinite(d) => write!(f, "not a finite count: {d}"),
            DataProblem::Stale(d) => write!(f, "stale data: {d}"),
            DataProblem::Partial(d) => write!(f, "partial data: {d}"),
            DataProblem::Backend(d) => write!(f, "metrics backend error: {d}"),
            DataProblem::OutOfRange(d) => write!(f, "implausible counts: {d}"),
            DataProblem::GreenMissing(d) => {
                write!(
                    f,
                    "candidate's data missing while stable's are present: {d}"
                )
            }
        }
    }
}

/// One check's outcome for the window, by check name (matching the policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckObservation {
    pub check: String,
    pub data: Result<CheckData, DataProblem>,
}

/// Everything measured for one API over one window `[start, end)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub start: Timestamp,
    pub end: Timestamp,
    pub checks: Vec<CheckObservation>,
}

impl Observation {
    /// The observation of the check named `name`, if present.
    pub fn check(&self, name: &str) -> Option<&Result<CheckData, DataProblem>> {
        self.checks
            .iter()
            .find(|c| c.check == name)
            .map(|c| &c.data)
    }
}
