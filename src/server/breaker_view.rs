//! A cluster breaker as `status`, `greenlight breaker status`, `/api/v1/breakers` and
//! `/metrics` show it. Built from its stored state and the settings only.

use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::engine::breaker::{BreakerSettings, BreakerState, ResetRecord, TripRecord};
use crate::stats::format_e;

pub const BREAKER_TRIPPED: &str = "greenlight_breaker_tripped";
pub const BREAKER_LOG_E: &str = "greenlight_breaker_log_evidence";
pub const BREAKER_APIS: &str = "greenlight_breaker_apis";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerView {
    pub cluster: String,
    /// `closed` or `tripped`.
    pub status: String,
    pub tripped: Option<TripRecord>,
    /// ln E of the pooled evidence at the leader's last look, and how many APIs spoke.
    pub log_e: f64,
    pub apis: usize,
    /// The threshold 1/α (an e-value, not its logarithm).
    pub threshold: f64,
    /// Automatic rollbacks onto the cluster within the rollback window, and the trip count.
    pub rollbacks: usize,
    pub max_rollbacks: usize,
    /// Start of the current episode (the last reset).
    pub since: Option<Timestamp>,
    pub last_reset: Option<ResetRecord>,
    /// A reset asked for and not yet obeyed, by whom.
    pub reset_requested_by: Option<String>,
    /// What a trip does to the rollouts onto the cluster: `hold` or `rollback`.
    pub on_trip: String,
}

impl BreakerView {
    pub fn new(state: &BreakerState, settings: &BreakerSettings) -> Self {
        BreakerView {
            cluster: state.cluster.clone(),
            status: if state.tripped.is_some() {
                "tripped"
            } else {
                "closed"
            }
            .into(),
            tripped: state.tripped.clone(),
            log_e: state.log_e,
            apis: state.apis,
            threshold: 1.0 / settings.alpha,
            rollbacks: state.rollbacks.len(),
            max_rollbacks: settings.max_rollbacks,
            since: state.since,
            last_reset: state.last_reset.clone(),
            reset_requested_by: state.reset_requested_by.clone(),
            on_trip: settings.on_trip.as_str().into(),
        }
    }

    /// The view with a trip naming only the APIs in `visible`.
    pub fn restricted(mut self, visible: &std::collections::BTreeSet<String>) -> Self {
        if let Some(t) = &mut self.tripped {
            let named = t.apis.len();
            t.apis.retain(|a| visible.contains(a));
            t.more_apis += named - t.apis.len();
        }
        self
    }

    /// One line for `status`.
    pub fn line(&self) -> String {
        let evidence = format!(
            "pooled {} over {} APIs (trips at {:.0}), {} of {} rollbacks",
            format_e(self.log_e),
            self.apis,
            self.threshold,
            self.rollbacks,
            self.max_rollbacks
        );
        let mut line = match &self.tripped {
            Some(t) => format!(
                "breaker {}: TRIPPED at {} ({}); rollouts onto it {}; {evidence}",
                self.cluster,
                t.at,
                t.reason,
                if self.on_trip == "rollback" {
                    "roll back"
                } else {
                    "hold"
                }
            ),
            None => format!("breaker {}: closed; {evidence}", self.cluster),
        };
        if let Some(by) = &self.reset_requested_by {
            line.push_str(&format!("; reset requested by {by}"));
        }
        line
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// The `greenlight_breaker_*` series, one per cluster.
#[derive(Debug, Default)]
pub(super) struct BreakerMetrics {
    tripped: Family<ClusterLabels, Gauge>,
    log_e: Family<ClusterLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    apis: Family<ClusterLabels, Gauge>,
}

impl BreakerMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            BREAKER_TRIPPED,
            "1 while the cluster breaker of a cluster is tripped (its rollouts hold or roll back)",
            self.tripped.clone(),
        );
        r.register(
            BREAKER_LOG_E,
            "ln of the pooled evidence that the cluster is worse for every API rolling onto it (trips at ln 1/alpha)",
            self.log_e.clone(),
        );
        r.register(
            BREAKER_APIS,
            "APIs whose evidence the cluster breaker pools",
            self.apis.clone(),
        );
    }

    pub(super) fn set(&self, view: &BreakerView) {
        let labels = ClusterLabels {
            cluster: view.cluster.clone(),
        };
        self.tripped
            .get_or_create(&labels)
            .set(i64::from(view.tripped.is_some()));
        let log_e = if view.log_e.is_finite() {
            view.log_e
        } else {
            0.0
        };
        self.log_e.get_or_create(&labels).set(log_e);
        self.apis.get_or_create(&labels).set(view.apis as i64);
    }
}
