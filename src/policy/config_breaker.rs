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
    /// The pooled evidence trips only once at least this many APIs show strong evidence: each
    /// API's e-value counts at most (1/α)^(1/min_apis). Default 3.
    pub min_apis: usize,
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
            min_apis: 3,
            max_rollbacks: 3,
            rollback_window: Duration::from_secs(3600),
            evidence_window: Duration::from_secs(24 * 3600),
            on_trip: OnTrip::Hold,
            alerts: None,
        }
    }

    /// ln of the cap on one API's e-value in the pooled evidence.
    pub fn cap_log_e(&self) -> f64 {
        (1.0 / self.alpha).ln() / self.min_apis.max(1) as f64
    }
}

/// `[breaker]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    #[serde(default)]
    alpha: Option<Spanned<f64>>,
    #[serde(default)]
    min_apis: Option<Spanned<i64>>,
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

const MIN_APIS: CountRange = CountRange { min: 1, max: 1000 };
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
        if let Some(n) = &self.min_apis {
            if let Some(n) = count_in(n, "breaker.min_apis", MIN_APIS, errors) {
                s.min_apis = n as usize;
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::policy::{Config, OnTrip};

    #[test]
    fn the_breaker_section_is_read_with_defaults_for_what_it_leaves_out() {
        let c = Config::from_toml("", Path::new("g.toml")).unwrap();
        assert_eq!(c.breaker.alpha, 0.01);
        assert_eq!(c.breaker.max_rollbacks, 3);
        assert_eq!(c.breaker.rollback_window, Duration::from_secs(3600));
        assert_eq!(c.breaker.on_trip, OnTrip::Hold);
        assert_eq!(c.breaker.alerts, None);
        let text = "[[alert]]\nname = \"pager\"\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:9093\"\n\
                    [breaker]\nalpha = 0.001\nmax_rollbacks = 0\non_trip = \"rollback\"\nalerts = [\"pager\"]\n";
        let c = Config::from_toml(text, Path::new("g.toml")).unwrap();
        assert_eq!(c.breaker.alpha, 0.001);
        assert_eq!(c.breaker.max_rollbacks, 0);
        assert_eq!(c.breaker.on_trip, OnTrip::Rollback);
        assert_eq!(c.breaker.alerts, Some(vec!["pager".to_string()]));
    }

    #[test]
    fn every_bad_breaker_value_is_reported_where_it_is_written() {
        let text = "[breaker]\nalpha = 0.7\nmax_rollbacks = -1\nrollback_window = \"1s\"\nalerts = [\"nobody\"]\non_trip = \"panic\"\n";
        let e: Vec<String> = Config::from_toml(text, Path::new("g.toml"))
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        // An unknown variant is a TOML error: reported alone, at its value.
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("g.toml:6:11:"), "{e:?}");
        let text = text.replace("on_trip = \"panic\"\n", "");
        let e: Vec<String> = Config::from_toml(&text, Path::new("g.toml"))
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(
            e[0],
            "g.toml:2:9: breaker.alpha must be at least 0.000001 and below 0.5, got 0.7"
        );
        assert!(
            e[1].starts_with("g.toml:3:17: breaker.max_rollbacks must be"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("g.toml:4:19: breaker.rollback_window must be"),
            "{e:?}"
        );
        assert_eq!(
            e[3],
            "g.toml:5:11: breaker.alerts names \"nobody\", which is not an [[alert]] channel"
        );
    }
}
