//! Evaluation windows: aligned to multiples of the interval since the Unix epoch, disjoint and
//! contiguous, and far enough in the past for the backend to hold their data.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// The most recent window boundary that lies at least `latency_offset` before `now`.
///
/// Boundaries are the multiples of `interval` since the Unix epoch, so every instance (and every
/// restart) cuts the same windows. `latency_offset` covers the backend's ingestion delay
/// (VictoriaMetrics hides the newest `-search.latencyOffset`, 30 s by default). An interval
/// shorter than a millisecond is treated as one millisecond.
pub fn aligned_end(now: Timestamp, interval: Duration, latency_offset: Duration) -> Timestamp {
    let step = interval.as_millis().clamp(1, i64::MAX as u128) as i64;
    let offset = latency_offset.as_millis().min(i64::MAX as u128) as i64;
    let latest = now.as_millisecond().saturating_sub(offset);
    let end = latest.div_euclid(step).saturating_mul(step);
    Timestamp::from_millisecond(end).unwrap_or(if end < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// A half-open window `[start, end)` of one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Window {
    /// The window of length `interval` ending at `end`.
    pub fn ending_at(end: Timestamp, interval: Duration) -> Window {
        Window {
            start: end - signed(interval),
            end,
        }
    }

    /// The newest complete window at `now` (see [`aligned_end`]).
    pub fn latest(now: Timestamp, interval: Duration, latency_offset: Duration) -> Window {
        Window::ending_at(aligned_end(now, interval, latency_offset), interval)
    }

    pub fn length(&self) -> Duration {
        self.start.duration_until(self.end).unsigned_abs()
    }

    /// The window right after this one.
    pub fn next(&self) -> Window {
        Window {
            start: self.end,
            end: self.end + signed(self.length()),
        }
    }

    /// The window right before this one.
    pub fn previous(&self) -> Window {
        Window {
            start: self.start - signed(self.length()),
            end: self.start,
        }
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn end_is_the_last_boundary_at_least_the_offset_ago() {
        let now = at("2026-11-28T10:07:45Z");
        assert_eq!(
            aligned_end(now, MINUTE, Duration::ZERO),
            at("2026-11-28T10:07:00Z")
        );
        assert_eq!(
            aligned_end(now, MINUTE, Duration::from_secs(30)),
            at("2026-11-28T10:07:00Z")
        );
        // 10:07:45 − 50 s = 10:06:55: the 10:07 boundary is not yet 50 s old.
        assert_eq!(
            aligned_end(now, MINUTE, Duration::from_secs(50)),
            at("2026-11-28T10:06:00Z")
        );
        assert_eq!(
            aligned_end(now, Duration::from_secs(300), Duration::from_secs(30)),
            at("2026-11-28T10:05:00Z")
        );
    }

    #[test]
    fn a_boundary_exactly_offset_ago_counts() {
        let now = at("2026-11-28T10:07:30Z");
        assert_eq!(
            aligned_end(now, MINUTE, Duration::from_secs(30)),
            at("2026-11-28T10:07:00Z")
        );
    }

    #[test]
    fn boundaries_are_multiples_of_the_interval_since_the_epoch() {
        let interval = Duration::from_secs(7 * 60);
        let end = aligned_end(at("2026-11-28T10:07:45Z"), interval, Duration::ZERO);
        assert_eq!(end.as_second() % (7 * 60), 0);
        assert!(end <= at("2026-11-28T10:07:45Z"));
        assert!(at("2026-11-28T10:07:45Z").as_second() - end.as_second() < 7 * 60);
    }

    #[test]
    fn successive_windows_are_disjoint_and_contiguous() {
        let interval = Duration::from_secs(90);
        let mut now = at("2026-11-28T10:00:01Z");
        let mut last: Option<Window> = None;
        for _ in 0..500 {
            let w = Window::latest(now, interval, Duration::from_secs(30));
            assert_eq!(w.length(), interval);
            if let Some(prev) = last {
                // Either still the same window, or exactly the next one: never a gap or overlap.
                assert!(w == prev || w == prev.next(), "{prev:?} then {w:?}");
            }
            last = Some(w);
            now += SignedDuration::from_secs(7);
        }
        let w = last.unwrap();
        assert_eq!(w.next().previous(), w);
    }

    #[test]
    fn before_the_epoch_still_floors() {
        let now = at("1969-12-31T23:59:30Z");
        assert_eq!(
            aligned_end(now, MINUTE, Duration::ZERO),
            at("1969-12-31T23:59:00Z")
        );
    }
}
