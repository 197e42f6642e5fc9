//! `[breaker]` of the daemon config: how the cluster breaker trips and what it does then.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::limits::{self, count_in, duration_in, CountRange, DurationRange};
use super::located::{number, shown, Errors};
use super::values::HumanDuration;

/// What every rollout onto a cluster does once its breaker trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTrip {
    /// Weights frozen where they are (each rollout's own rollback stays armed).
    #[default]
    Hold,
    /// Every rollout onto the cluster rolls back.
    Rollback,
}

impl OnTrip {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTrip::Hold => "hold",
            OnTrip::Rollback => "rollback",
        }
    }
}

/// The cluster breaker's settings (README, "The cluster breaker").
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// False-trip level of the pooled evidence (trips at 1/α). Default 0.01.
    pub alpha: f64,
    /// Trips on this many automatic rollbacks onto the cluster within `rollback_window`
    /// (0: never). Default 3.
    pub max_rollbacks: usize,
    /// Default 1 h.
    pub rollback_window: Duration,
    /// A rollout that ended (promoted or rolled back) keeps counting in the pooled evidence this
    /// long after it ended. Default 24 h.
    pub evidence_window: Duration,
    /// Default hold.
    pub on_trip: OnTrip,
    /// Channels of the breaker's alert. `None`: every channel of the config.
    pub alerts: Option<Vec<String>>,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings::at_level(0.01)
    }
}

impl BreakerSettings {
    /// The pooled evidence at level `alpha`, and 3 rollbacks within an hour.
    pub fn at_level(alpha: f64) -> Self {
        BreakerSettings {
            alpha,
            max_rollbacks: 3,
            rollback_window: Duration::from_secs(3600),
            evidence_window: Duration::from_secs(24 * 3600),
            on_trip: OnTrip::Hold,
            alerts: None,
        }
    }
}

/// `[breaker]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    #[serde(default)]
    alpha: Option<Spanned<f64>>,
    #[serde(default)]
    max_rollbacks: Option<Spanned<i64>>,
    #[serde(default)]
    rollback_window: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    evidence_window: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    on_trip: Option<OnTrip>,
    #[serde(default)]
    alerts: Option<Vec<Spanned<String>>>,
}

const MAX_ROLLBACKS: CountRange = CountRange { min: 0, max: 1000 };
const WINDOW: DurationRange = DurationRange {
    min: Duration::from_secs(60),
    max: Duration::from_secs(30 * 24 * 3600),
};

impl RawBreaker {
    /// The settings, every problem located; `channels` are the config's alert channel names.
    pub(super) fn validate(self, channels: &[String], errors: &mut Errors<'_>) -> BreakerSettings {
        let mut s = BreakerSettings::default();
        if let Some(a) = &self.alpha {
            let v = *a.get_ref();
            if (limits::ALPHA_MIN..limits::ALPHA_BELOW).contains(&v) {
                s.alpha = v;
            } else {
                errors.at(
                    a.span(),
                    format!(
                        "breaker.alpha must be at least {} and below {}, got {}",
                        limits::ALPHA_MIN,
                        limits::ALPHA_BELOW,
                        number(v)
                    ),
                );
            }
        }
        if let Some(n) = &self.max_rollbacks {
            if let Some(n) = count_in(n, "breaker.max_rollbacks", MAX_ROLLBACKS, errors) {
                s.max_rollbacks = n as usize;
            }
        }
        if let Some(w) = &self.rollback_window {
            s.rollback_window = duration_in(w, "breaker.rollback_window", WINDOW, errors);
        }
        if let Some(w) = &self.evidence_window {
            s.evidence_window = duration_in(w, "breaker.evidence_window", WINDOW, errors);
        }
        s.on_trip = self.on_trip.unwrap_or_default();
        if let Some(list) = &self.alerts {
            let mut names = Vec::new();
            for name in list {
                if channels.contains(name.get_ref()) {
                    names.push(name.get_ref().clone());
                } else {
                    errors.at(
                        name.span(),
                        format!(
                            "breaker.alerts names {}, which is not an [[alert]] channel",
                            shown(name.get_ref())
                        ),
                    );
                }
            }
            s.alerts = Some(names);
        }
        s
    }
}
