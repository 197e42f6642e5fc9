//! The shell's own decisions, as pure functions of what it read: how the live weights relate to
//! the stored state, and which window to evaluate. The executor in `daemon` only carries them out.

use jiff::{SignedDuration, Timestamp};

use crate::engine::{Phase, RolloutState};
use crate::policy::Weights;

/// A gap longer than this many intervals since the last counted window is skipped, not
/// evaluated as one long window.
pub const MAX_CATCH_UP_INTERVALS: i64 = 10;

/// What to do about the live weights before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivePlan {
    /// The live weights are the stored ones.
    InSync,
    /// A change decided earlier is live now; only the pending mark must be cleared.
    Confirmed,
    /// A change decided earlier is not written yet: write it (from `from`).
    Finish { from: Weights },
    /// Someone changed the weights by hand: never overwrite; pause (or, after a rollback, stay
    /// rolled back) and alert.
    Override { expected: Weights, found: Weights },
    /// Nobody is moving traffic (paused, promoted, rolled back, pending without a change under
    /// way): people own the weights; follow them quietly.
    Adopt { live: Weights },
}

/// Compares the live weights with the stored state.
pub fn reconcile_live(state: &RolloutState, live: Weights) -> LivePlan {
    match state.applying_from {
        Some(_) if live == state.weights => LivePlan::Confirmed,
        Some(from) if live == from => LivePlan::Finish { from },
        Some(_) => LivePlan::Override {
            expected: state.weights,
            found: live,
        },
        None if live == state.weights => LivePlan::InSync,
        None => match state.phase {
            Phase::Progressing | Phase::Baking | Phase::Pending => LivePlan::Override {
                expected: state.weights,
                found: live,
            },
            Phase::Paused | Phase::Promoted | Phase::RolledBack => LivePlan::Adopt { live },
        },
    }
}

/// [`reconcile_live`] when `live` may come from only some of the nodes (the others did not
/// answer). A change that takes the candidate out of service is written to every node that answers,
/// whatever the others (a rollback must land where it can): the nodes that answered having it
/// do not confirm it on the silent ones, so the change stays pending until they answer. Other
/// changes are written to every node or to none, so the nodes that answered tell.
pub fn reconcile_live_partial(state: &RolloutState, live: Weights, some_unread: bool) -> LivePlan {
    match reconcile_live(state, live) {
        LivePlan::Confirmed if some_unread && state.weights.of(state.candidate()) == 0 => {
            LivePlan::InSync
        }
        plan => plan,
    }
}

/// Which window an evaluation at `end` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlan {
    pub start: Timestamp,
    pub end: Timestamp,
    pub kind: WindowKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The next window, right after the last counted one (or the first one).
    Next,
    /// Several intervals were missed (daemon down, failover): one window from the last counted
    /// end, at most [`MAX_CATCH_UP_INTERVALS`] long.
    CatchUp { intervals: i64 },
    /// This window was counted already.
    Counted,
    /// The wall clock is behind the last window with counted data: it went backwards. Nothing
    /// is counted until it is past that window again.
    ClockBehind { last: Timestamp },
    /// The last window consumed lies ahead of the clock but held no counted data (the clock had
    /// jumped forward and was corrected): evaluation restarts from the last counted data, so the
    /// rollout does not stall until the clock catches up, and nothing is counted twice.
    Reanchored {
        ahead: Timestamp,
        from: Option<Timestamp>,
    },
    /// More than [`MAX_CATCH_UP_INTERVALS`] intervals since the last counted window (a forward
    /// clock jump, or a long stop): those windows are skipped, only the latest is evaluated.
    Gap { last: Timestamp, skipped: i64 },
}

impl WindowPlan {
    /// Whether this window brings data not counted yet.
    pub fn is_new(&self) -> bool {
        !matches!(
            self.kind,
            WindowKind::Counted | WindowKind::ClockBehind { .. }
        )
    }
}

/// Chooses the window to evaluate at the aligned window end `end`, given the end of the last
/// consumed window (`last`) and of the last window whose data were counted (`counted`).
/// Windows never overlap one whose data were counted.
pub fn choose_window(
    last: Option<Timestamp>,
    counted: Option<Timestamp>,
    end: Timestamp,
    interval: SignedDuration,
) -> WindowPlan {
    let next = WindowPlan {
        start: end - interval,
        end,
        kind: WindowKind::Next,
    };
    let Some(last) = last else { return next };
    let step = interval.as_secs().max(1);
    if last > end {
        if counted.is_some_and(|c| c > end) {
            return WindowPlan {
                start: end,
                end,
                kind: WindowKind::ClockBehind { last },
            };
        }
        let start = match counted {
            Some(c) if c > end - interval => c,
            _ => end - interval,
        };
        return WindowPlan {
            start,
            end,
            kind: if start == end {
                WindowKind::Counted
            } else {
                WindowKind::Reanchored {
                    ahead: last,
                    from: counted,
                }
            },
        };
    }
    if last == end {
        return WindowPlan {
            start: end,
            end,
            kind: WindowKind::Counted,
        };
    }
    let behind = (end.as_second() - last.as_second()) / step;
    if behind <= 1 {
        WindowPlan {
            start: last,
            ..next
        }
    } else if behind <= MAX_CATCH_UP_INTERVALS {
        WindowPlan {
            start: last,
            end,
            kind: WindowKind::CatchUp { intervals: behind },
        }
    } else {
        WindowPlan {
            kind: WindowKind::Gap {
                last,
                skipped: behind - 1,
            },
            ..next
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        format!("2026-01-05T{s}Z").parse().unwrap()
    }

    const MIN: SignedDuration = SignedDuration::from_mins(1);

    #[test]
    fn windows_follow_each_other_without_overlap() {
        let w = choose_window(None, None, t("00:10:00"), MIN);
        assert_eq!(
            (w.start, w.end, w.kind),
            (t("00:09:00"), t("00:10:00"), WindowKind::Next)
        );
        let w = choose_window(Some(t("00:10:00")), Some(t("00:10:00")), t("00:11:00"), MIN);
        assert_eq!((w.start, w.kind), (t("00:10:00"), WindowKind::Next));
        let w = choose_window(Some(t("00:10:00")), Some(t("00:10:00")), t("00:10:00"), MIN);
        assert!(!w.is_new());
        let w = choose_window(Some(t("00:10:00")), Some(t("00:10:00")), t("00:14:00"), MIN);
        assert_eq!(
            (w.start, w.kind),
            (t("00:10:00"), WindowKind::CatchUp { intervals: 4 })
        );
    }

    #[test]
    fn clock_jumping_backwards_counts_nothing_and_says_so() {
        let w = choose_window(Some(t("00:30:00")), Some(t("00:30:00")), t("00:05:00"), MIN);
        assert_eq!(
            w.kind,
            WindowKind::ClockBehind {
                last: t("00:30:00")
            }
        );
        assert!(!w.is_new());
    }

    #[test]
    fn forward_clock_jump_then_correction_does_not_stall_the_rollout() {
        // At 00:10 the clock jumped 3 h ahead: the window ending 03:10 found no data (nothing
        // counted); corrected at 00:12, evaluation goes on from the last counted data.
        let w = choose_window(Some(t("03:10:00")), Some(t("00:10:00")), t("00:12:00"), MIN);
        assert_eq!(
            w.kind,
            WindowKind::Reanchored {
                ahead: t("03:10:00"),
                from: Some(t("00:10:00"))
            }
        );
        assert_eq!((w.start, w.end), (t("00:11:00"), t("00:12:00")));
        assert!(w.is_new());
        let w = choose_window(Some(t("03:10:00")), Some(t("00:11:30")), t("00:12:00"), MIN);
        assert_eq!(w.start, t("00:11:30"));
    }

    #[test]
    fn clock_jumping_forward_skips_windows_and_says_how_many() {
        let w = choose_window(Some(t("00:10:00")), Some(t("00:10:00")), t("02:10:00"), MIN);
        assert_eq!(
            w.kind,
            WindowKind::Gap {
                last: t("00:10:00"),
                skipped: 119
            }
        );
        assert_eq!(w.start, t("02:09:00"));
        assert!(w.is_new());
    }

    #[test]
    fn a_rollback_raced_by_a_human_edit_is_an_override_not_a_finish() {
        let policy = crate::policy::Policy::from_toml(
            r#"
api = "a"
steps = [10, 100]
[traffic]
consul_keys = { blue = "b", green = "g" }
[[check]]
name = "errors"
kind = "error_rate"
requests = 'r{color}[{interval}]'
errors = 'e{color}[{interval}]'
"#,
            std::path::Path::new("a.toml"),
            None,
        )
        .unwrap();
        let mut s = RolloutState::started(&policy, t("00:00:00"));
        s.applying_from = None;
        let at_step = s.weights;
        s.phase = Phase::RolledBack;
        s.set_weights(policy.traffic.weights_for(0.0));
        assert_eq!(
            reconcile_live(&s, at_step),
            LivePlan::Finish { from: at_step }
        );
        assert_eq!(reconcile_live(&s, s.weights), LivePlan::Confirmed);
        // Nodes that answered having the rollback confirm nothing about those that did not.
        assert_eq!(
            reconcile_live_partial(&s, s.weights, true),
            LivePlan::InSync
        );
        assert_eq!(
            reconcile_live_partial(&s, at_step, true),
            LivePlan::Finish { from: at_step }
        );
        let by_hand = Weights {
            blue: 50,
            green: 50,
        };
        assert_eq!(
            reconcile_live(&s, by_hand),
            LivePlan::Override {
                expected: s.weights,
                found: by_hand
            }
        );
        s.applying_from = None;
        assert_eq!(
            reconcile_live(&s, by_hand),
            LivePlan::Adopt { live: by_hand }
        );
    }
}
