//! The range every number and duration of a policy or the daemon config must lie in, and the
//! checks that report a value outside it at its `line:col`.
//!
//! The bounds keep every value the engine and the daemon compute from them finite and in range
//! (deadlines, 1/α thresholds, semaphore sizes); the README lists them next to each key.

use std::time::Duration;

use toml::Spanned;

use super::located::Errors;
use super::values::HumanDuration;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// An inclusive range of durations.
#[derive(Debug, Clone, Copy)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

/// An inclusive range of counts.
#[derive(Debug, Clone, Copy)]
pub struct CountRange {
    pub min: u64,
    pub max: u64,
}

// Policy.
/// `interval`: the evaluation period and window length.
pub const INTERVAL: DurationRange = DurationRange {
    min: SECOND,
    max: HOUR,
};
/// `min_step_duration` (also at least `interval`) and `max_step_duration` (also at least
/// `min_step_duration`).
pub const STEP_DURATION: DurationRange = DurationRange {
    min: SECOND,
    max: Duration::from_secs(30 * 86_400),
};
/// `no_data_alert_after` and `stuck_alert_after`.
pub const ALERT_AFTER: DurationRange = DurationRange {
    min: SECOND,
    max: Duration::from_secs(30 * 86_400),
};
/// `approval_timeout`.
pub const APPROVAL_TIMEOUT: DurationRange = DurationRange {
    min: Duration::from_secs(60),
    max: Duration::from_secs(30 * 86_400),
};
/// `min_green_requests_per_step` and a threshold check's `min_green_requests`.
pub const REQUEST_COUNT: CountRange = CountRange {
    min: 0,
    max: 1_000_000_000,
};
/// `warmup_intervals`.
pub const WARMUP_INTERVALS: CountRange = CountRange { min: 0, max: 100 };
/// `false_rollback_rate` and `false_advance_rate`: α in [`ALPHA_MIN`, `ALPHA_BELOW`).
pub const ALPHA_MIN: f64 = 1e-6;
/// Exclusive upper bound of α.
pub const ALPHA_BELOW: f64 = 0.5;
/// `tolerance` and `advance_tolerance` of a statistical check (relative: 10 = 11× blue).
pub const TOLERANCE_MAX: f64 = 10.0;
/// `max_requests_per_second`: at most this (one colour of one API).
pub const MAX_REQUESTS_PER_SECOND: f64 = 1e9;
/// `overdispersion` φ of a statistical check.
pub const OVERDISPERSION_MAX: f64 = 100.0;
/// `min_errors` of a statistical check.
pub const MIN_ERRORS: CountRange = CountRange {
    min: 0,
    max: 1_000_000,
};
/// `failures` of a threshold check.
pub const FAILURES: CountRange = CountRange { min: 1, max: 1000 };
/// Number of `[[check]]` tables in one policy.
pub const CHECKS_MAX: usize = 32;
/// Number of `edges` of one latency check.
pub const EDGES_MAX: usize = 16;

// Daemon config.
/// `max_concurrency`: APIs evaluated at once.
pub const MAX_CONCURRENCY: CountRange = CountRange { min: 1, max: 1024 };
/// `metrics.batch_max`: queries answered by one batched query.
pub const BATCH_MAX: CountRange = CountRange { min: 1, max: 4096 };
/// `metrics.timeout`.
pub const METRICS_TIMEOUT: DurationRange = DurationRange {
    min: Duration::from_millis(100),
    max: Duration::from_secs(5 * 60),
};
/// `metrics.latency_offset`.
pub const LATENCY_OFFSET: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: HOUR,
};
/// `metrics.max_staleness`.
pub const MAX_STALENESS: DurationRange = DurationRange {
    min: SECOND,
    max: DAY,
};
/// `consul.session_ttl` (Consul's own limits).
pub const SESSION_TTL: DurationRange = DurationRange {
    min: Duration::from_secs(10),
    max: DAY,
};
/// `consul.lock_delay` (Consul caps it at 60 s).
pub const LOCK_DELAY: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: MINUTE,
};
/// `sync.repair_interval`.
pub const REPAIR_INTERVAL: DurationRange = DurationRange {
    min: Duration::from_millis(100),
    max: HOUR,
};

fn show(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

impl DurationRange {
    pub fn contains(&self, d: Duration) -> bool {
        (self.min..=self.max).contains(&d)
    }

    /// "between 1s and 1h".
    pub fn describe(&self) -> String {
        format!("between {} and {}", show(self.min), show(self.max))
    }
}

impl CountRange {
    pub fn contains(&self, n: u64) -> bool {
        (self.min..=self.max).contains(&n)
    }
}

/// The duration of `d`; an error at it when outside `range`.
pub(super) fn duration_in(
    d: &Spanned<HumanDuration>,
    name: &str,
    range: DurationRange,
    errors: &mut Errors<'_>,
) -> Duration {
    let v = d.get_ref().0;
    if !range.contains(v) {
        errors.at(
            d.span(),
            format!("{name} must be {}, got {}", range.describe(), show(v)),
        );
    }
    v
}

/// The count `n` (written at `span`); an error there when outside `range`.
pub(super) fn count_in(
    n: &Spanned<i64>,
    name: &str,
    range: CountRange,
    errors: &mut Errors<'_>,
) -> Option<u64> {
    let v = *n.get_ref();
    match u64::try_from(v) {
        Ok(c) if range.contains(c) => Some(c),
        _ => {
            errors.at(
                n.span(),
                format!(
                    "{name} must be a whole number from {} to {}, got {v}",
                    range.min, range.max
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_describe_themselves_in_the_units_people_write() {
        assert_eq!(INTERVAL.describe(), "between 1s and 1h");
        assert_eq!(STEP_DURATION.describe(), "between 1s and 30days");
        assert_eq!(LOCK_DELAY.describe(), "between 0s and 1m");
        assert_eq!(METRICS_TIMEOUT.describe(), "between 100ms and 5m");
    }
}
