//! Sync's own metrics: what was verified on each node, failures, drift repairs, the last
//! success per API.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{
    SyncError, APPLIED_SHARE, APPLIED_WEIGHT, APPLY_ERRORS_TOTAL, DRIFT_REPAIRS_TOTAL,
    LAST_SUCCESS_TIMESTAMP_SECONDS, READ_ERRORS_TOTAL,
};
use crate::policy::Weights;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WeightLabels {
    api: String,
    node: String,
    color: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeLabels {
    api: String,
    node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReadLabels {
    api: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Sync's own metrics registry. Labels are bounded by the configuration: API names from the
/// policies, node addresses from `haproxy.nodes`, colours and error kinds from the code.
#[derive(Debug)]
pub struct SyncMetrics {
    registry: Registry,
    applied: Family<WeightLabels, Gauge>,
    applied_share: Family<NodeLabels, Gauge>,
    apply_errors: Family<NodeLabels, Counter>,
    read_errors: Family<ReadLabels, Counter>,
    drift_repairs: Family<NodeLabels, Counter>,
    last_success: Family<ApiLabels, FloatGauge>,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        SyncMetrics::new()
    }
}

impl SyncMetrics {
    pub fn new() -> SyncMetrics {
        let applied = Family::<WeightLabels, Gauge>::default();
        let applied_share = Family::<NodeLabels, Gauge>::default();
        let apply_errors = Family::<NodeLabels, Counter>::default();
        let read_errors = Family::<ReadLabels, Counter>::default();
        let drift_repairs = Family::<NodeLabels, Counter>::default();
        let last_success = Family::<ApiLabels, FloatGauge>::default();
        let mut r = Registry::default();
        r.register(
            APPLIED_WEIGHT,
            "Weight verified on an HAProxy node, per API, node and colour",
            applied.clone(),
        );
        r.register(
            APPLIED_SHARE,
            "Sticky mode: green's share in buckets (0-10000) verified in an HAProxy node's map, per API and node",
            applied_share.clone(),
        );
        r.register(
            counter_base(APPLY_ERRORS_TOTAL),
            "Failed attempts to set or verify weights on an HAProxy node, per API and node",
            apply_errors.clone(),
        );
        r.register(
            counter_base(READ_ERRORS_TOTAL),
            "Failed or refused reads of the weight keys, per API and kind",
            read_errors.clone(),
        );
        r.register(
            counter_base(DRIFT_REPAIRS_TOTAL),
            "Nodes found with weights (or sticky maps) that drifted from Consul and set again, per API and node",
            drift_repairs.clone(),
        );
        r.register(
            LAST_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time of the last pass where every node matched Consul, per API",
            last_success.clone(),
        );
        SyncMetrics {
            registry: r,
            applied,
            applied_share,
            apply_errors,
            read_errors,
            drift_repairs,
            last_success,
        }
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "Could not encode the sync metrics registry.");
        }
        out
    }

    pub(super) fn verified(&self, api: &str, node: &str, weights: Weights) {
        for (color, w) in [("blue", weights.blue), ("green", weights.green)] {
            self.applied
                .get_or_create(&WeightLabels {
                    api: api.to_string(),
                    node: node.to_string(),
                    color,
                })
                .set(i64::from(w));
        }
    }

    pub(super) fn verified_share(&self, api: &str, node: &str, share: u32) {
        self.applied_share
            .get_or_create(&Self::node_labels(api, node))
            .set(i64::from(share));
    }

    fn node_labels(api: &str, node: &str) -> NodeLabels {
        NodeLabels {
            api: api.to_string(),
            node: node.to_string(),
        }
    }

    pub(super) fn error(&self, error: &SyncError) {
        match error {
            SyncError::Node { api, node, .. } => {
                self.apply_errors
                    .get_or_create(&Self::node_labels(api, node))
                    .inc();
            }
            SyncError::Consul { api, .. } | SyncError::OutOfRange { api, .. } => {
                let kind = error.read_kind().unwrap_or("error");
                self.read_errors
                    .get_or_create(&ReadLabels {
                        api: api.clone(),
                        kind,
                    })
                    .inc();
            }
        }
    }

    pub(super) fn drift_repaired(&self, api: &str, node: &str) {
        self.drift_repairs
            .get_or_create(&Self::node_labels(api, node))
            .inc();
    }

    pub(super) fn success(&self, api: &str) {
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        self.last_success
            .get_or_create(&ApiLabels {
                api: api.to_string(),
            })
            .set(now);
    }
}

fn counter_base(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}
