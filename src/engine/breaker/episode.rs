//! The breaker of one cluster over time: what each rollout contributes, when it trips, and
//! what an operator's reset does. Pure: the daemon stores a [`BreakerState`] per cluster in
//! Consul, feeds [`plan`] the latest [`Contribution`] of every API and writes what it returns.
//!
//! An *episode* runs from the breaker's creation (or its last reset) until the next reset: the
//! pooled evidence and the rollback count only look at rollouts that started in it, so a reset
//! never trips again at once on the evidence that tripped it. A rollout that ended keeps
//! counting for `evidence_window` after its end (a stopped e-process keeps its value; the window
//! only keeps last week's rollouts out of tonight's verdict).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{check, pooled_streams, BreakerSettings, Trip};
use crate::engine::state::{Held, Phase, RolloutState};
use crate::policy::{Colour, OnTrip, Policy};

/// Most automatic rollbacks a breaker state remembers (the newest).
const MAX_ROLLBACKS_KEPT: usize = 200;
/// Most API names a trip records (the rest are counted): a trip on a cluster of 10,000 APIs
/// stays a small document and a readable alert.
pub const MAX_TRIP_APIS: usize = 50;

/// One API's part in its cluster's breaker, read off its state after an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub api: String,
    /// The cluster the rollout moves (or moved) traffic onto.
    pub cluster: String,
    pub rollout_started_at: Timestamp,
    /// When the rollout ended (promoted or rolled back); `None` while it runs.
    pub ended_at: Option<Timestamp>,
    /// When greenlight rolled it back on its own evidence (not a person, not the breaker).
    pub rolled_back_at: Option<Timestamp>,
    /// ln E of each rollback stream, by stream id.
    pub streams: Vec<(String, f64)>,
}

/// The contribution of `state`'s rollout, if its policy names the cluster of the colour it
/// moves onto and a rollout has started.
pub fn contribution(policy: &Policy, state: &RolloutState) -> Option<Contribution> {
    let started = state.rollout_started_at?;
    // After a promotion the colour the rollout moved onto is the stable one.
    let onto = match state.phase {
        Phase::Pending => return None,
        Phase::Promoted => state.releases.stable,
        _ => state.candidate(),
    };
    let cluster = policy.clusters.of(onto)?.to_string();
    let ended_at = matches!(state.phase, Phase::Promoted | Phase::RolledBack)
        .then(|| state.phase_since.unwrap_or(started));
    let rolled_back_at = (state.phase == Phase::RolledBack && state.rollback_by.is_none())
        .then_some(ended_at)
        .flatten();
    let streams = state
        .streams
        .iter()
        .map(|s| (s.id.clone(), s.rollback_log_e()))
        .filter(|(_, l)| l.is_finite())
        .collect();
    Some(Contribution {
        api: state.api.clone(),
        cluster,
        rollout_started_at: started,
        ended_at,
        rolled_back_at,
        streams,
    })
}

/// A breaker's stored state (`<prefix>/breaker/<cluster>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerState {
    pub cluster: String,
    /// Start of the current episode (the last reset); `None`: since the breaker first looked.
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Set while tripped.
    #[serde(default)]
    pub tripped: Option<TripRecord>,
    /// Automatic rollbacks onto the cluster in this episode, oldest first.
    #[serde(default)]
    pub rollbacks: Vec<RollbackRecord>,
    /// A reset asked for by this operator, obeyed at the leader's next look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_requested_by: Option<String>,
    /// The last reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<ResetRecord>,
    /// The pooled evidence at the last look (ln E) and how many APIs spoke; for status.
    #[serde(default)]
    pub log_e: f64,
    #[serde(default)]
    pub apis: usize,
    /// Increases by one per change that matters (trip, reset).
    #[serde(default)]
    pub revision: u64,
}

impl BreakerState {
    pub fn new(cluster: &str) -> Self {
        BreakerState {
            cluster: cluster.to_string(),
            since: None,
            tripped: None,
            rollbacks: Vec::new(),
            reset_requested_by: None,
            last_reset: None,
            log_e: 0.0,
            apis: 0,
            revision: 0,
        }
    }
}

/// Why and when a breaker tripped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripRecord {
    pub at: Timestamp,
    /// What tripped it, in words (`pooled evidence of 8 APIs 2.1e2 ≥ 1/α = 100`).
    pub reason: String,
    /// The APIs whose evidence or rollbacks tripped it (at most [`MAX_TRIP_APIS`]).
    pub apis: Vec<String>,
    /// How many more APIs took part than `apis` names.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_apis: usize,
    /// ln E at the trip (0 for a rollback-count trip).
    pub log_e: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TripRecord {
    /// The APIs in words: `a, b, c`, `a, b, … and 12 more` or `12 others`.
    pub fn apis_text(&self) -> String {
        let named = self.apis.join(", ");
        match self.more_apis {
            0 => named,
            n if named.is_empty() => format!("{n} others"),
            n => format!("{named}, … and {n} more"),
        }
    }
}

/// The stored state as it stands with a trip this instance decided but could not write
/// (`unsaved`): a trip is never lost to a failed write. The trip stands (so the rollouts onto
/// the cluster keep holding and its alert, already sent, is not sent again) and is written at the
/// next successful look; a trip already stored (by this or another leader) wins.
pub fn with_unsaved_trip(stored: &BreakerState, unsaved: Option<&TripRecord>) -> BreakerState {
    let mut s = stored.clone();
    if let Some(trip) = unsaved {
        let reset_since = s.last_reset.as_ref().is_some_and(|r| r.at >= trip.at);
        if s.tripped.is_none() && !reset_since {
            s.tripped = Some(trip.clone());
            s.revision += 1;
        }
    }
    s
}

/// An automatic rollback onto the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub api: String,
    pub at: Timestamp,
}

/// A reset: who and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResetRecord {
    pub by: String,
    pub at: Timestamp,
    /// The trip it cleared (none: it was not tripped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<TripRecord>,
}

/// What a look at one breaker did.
#[derive(Debug, Clone, PartialEq)]
pub enum BreakerAction {
    Tripped(TripRecord),
    Reset(ResetRecord),
}

/// The state after a look and what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPlan {
    pub state: BreakerState,
    pub actions: Vec<BreakerAction>,
}

impl BreakerPlan {
    /// Whether the state must be written (anything but the shown evidence changed).
    pub fn changed(&self, before: &BreakerState) -> bool {
        let mut a = self.state.clone();
        let mut b = before.clone();
        (a.log_e, a.apis, b.log_e, b.apis) = (0.0, 0, 0.0, 0);
        a != b
    }
}

/// Whether a contribution belongs to the episode of `state` at `now`.
fn in_episode(state: &BreakerState, c: &Contribution) -> bool {
    c.cluster == state.cluster
        && state
            .since
            .is_none_or(|since| c.rollout_started_at >= since)
}

/// One look at the breaker of `state.cluster`: obey a pending reset, record new automatic
/// rollbacks, and trip on the pooled evidence or the rollback count. A tripped breaker stays
/// tripped until a reset.
pub fn plan(
    settings: &BreakerSettings,
    state: &BreakerState,
    contributions: &[Contribution],
    now: Timestamp,
) -> BreakerPlan {
    let mut s = state.clone();
    let mut actions = Vec::new();
    if let Some(by) = s.reset_requested_by.take() {
        let reset = ResetRecord {
            by,
            at: now,
            cleared: s.tripped.take(),
        };
        s.since = Some(now);
        s.rollbacks.clear();
        s.last_reset = Some(reset.clone());
        s.revision += 1;
        actions.push(BreakerAction::Reset(reset));
    }
    let window = settings.rollback_window.as_secs() as i64;
    let episode: Vec<&Contribution> = contributions.iter().filter(|c| in_episode(&s, c)).collect();
    for c in &episode {
        let Some(at) = c.rolled_back_at else { continue };
        let known = s.rollbacks.iter().any(|r| r.api == c.api && r.at == at);
        if !known && now.as_second() - at.as_second() <= window {
            s.rollbacks.push(RollbackRecord {
                api: c.api.clone(),
                at,
            });
        }
    }
    s.rollbacks
        .retain(|r| now.as_second() - r.at.as_second() <= window);
    s.rollbacks.sort_by_key(|r| r.at);
    let excess = s.rollbacks.len().saturating_sub(MAX_ROLLBACKS_KEPT);
    s.rollbacks.drain(..excess);

    let evidence_window = settings.evidence_window.as_secs() as i64;
    let counted: Vec<&Contribution> = episode
        .into_iter()
        .filter(|c| {
            c.ended_at
                .is_none_or(|end| now.as_second() - end.as_second() <= evidence_window)
        })
        .collect();
    let (log_e, apis) = pooled_streams(settings, counted.iter().map(|c| c.streams.as_slice()));
    (s.log_e, s.apis) = (if log_e.is_finite() { log_e } else { 0.0 }, apis);
    if s.tripped.is_none() {
        let times: Vec<Timestamp> = s.rollbacks.iter().map(|r| r.at).collect();
        if let Some(trip) = check(settings, (log_e, apis), &times, now) {
            let (mut apis, log_e): (Vec<String>, f64) = match &trip {
                Trip::Evidence { log_e, .. } => (
                    counted
                        .iter()
                        .filter(|c| !c.streams.is_empty())
                        .map(|c| c.api.clone())
                        .collect(),
                    *log_e,
                ),
                Trip::Rollbacks { .. } => {
                    (s.rollbacks.iter().map(|r| r.api.clone()).collect(), 0.0)
                }
            };
            let more_apis = apis.len().saturating_sub(MAX_TRIP_APIS);
            apis.truncate(MAX_TRIP_APIS);
            let record = TripRecord {
                at: now,
                reason: trip.to_string(),
                apis,
                more_apis,
                log_e,
            };
            s.tripped = Some(record.clone());
            s.revision += 1;
            actions.push(BreakerAction::Tripped(record));
        }
    }
    BreakerPlan { state: s, actions }
}

/// What a rollout onto a tripped cluster must do: hold (or roll back, per `on_trip`), saying
/// why. `tripped` maps each tripped cluster to its trip. `None`: the rollout's candidate runs on
/// no tripped cluster.
pub fn hold_for(
    policy: &Policy,
    state: &RolloutState,
    tripped: &BTreeMap<String, TripRecord>,
    on_trip: OnTrip,
) -> Option<Held> {
    let onto: Colour = state.candidate();
    let cluster = policy.clusters.of(onto)?;
    let trip = tripped.get(cluster)?;
    Some(Held {
        by: format!("breaker:{cluster}"),
        reason: format!(
            "the cluster breaker of {cluster} tripped at {} ({}); `greenlight breaker reset {cluster}` lifts it",
            trip.at, trip.reason
        ),
        roll_back: on_trip == OnTrip::Rollback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::policy;

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + minute * 60).unwrap()
    }

    fn settings() -> BreakerSettings {
        BreakerSettings::at_level(0.01)
    }

    /// A running rollout onto `cilium` started at minute `started` whose streams show `log_e`.
    fn running(api: &str, started: i64, log_e: f64) -> Contribution {
        Contribution {
            api: api.into(),
            cluster: "cilium".into(),
            rollout_started_at: t(started),
            ended_at: None,
            rolled_back_at: None,
            streams: vec![("errors".into(), log_e), ("latency@0.25".into(), log_e)],
        }
    }

    fn rolled_back(api: &str, started: i64, at: i64) -> Contribution {
        Contribution {
            ended_at: Some(t(at)),
            rolled_back_at: Some(t(at)),
            ..running(api, started, 0.0)
        }
    }

    #[test]
    fn the_pooled_evidence_of_apis_each_too_weak_alone_trips_once_and_stays_tripped() {
        let s = BreakerState::new("cilium");
        // ln 100 = 4.6: one API at ln E = 1.5 is nowhere near; four of them are (6.0).
        let one = [running("a", 0, 1.5)];
        let p = plan(&settings(), &s, &one, t(10));
        assert!(p.actions.is_empty() && p.state.tripped.is_none());
        assert!((p.state.log_e - 1.5).abs() < 1e-9 && p.state.apis == 1);
        assert!(
            !p.changed(&s),
            "the shown evidence alone is not worth a write"
        );
        let four: Vec<Contribution> = ["a", "b", "c", "d"]
            .iter()
            .map(|api| running(api, 0, 1.5))
            .collect();
        let p = plan(&settings(), &s, &four, t(10));
        let [BreakerAction::Tripped(trip)] = p.actions.as_slice() else {
            panic!("{:?}", p.actions);
        };
        assert_eq!(trip.apis, ["a", "b", "c", "d"]);
        assert!(
            trip.reason.starts_with("pooled evidence of 4 APIs"),
            "{}",
            trip.reason
        );
        assert!(p.changed(&s));
        // Tripped stays tripped, however the evidence falls, and alerts once.
        let calm = [running("a", 0, -3.0)];
        let again = plan(&settings(), &p.state, &calm, t(20));
        assert!(again.actions.is_empty());
        assert_eq!(again.state.tripped.as_ref(), Some(trip));
    }

    #[test]
    fn other_clusters_rollouts_before_the_episode_and_long_ended_ones_do_not_count() {
        let mut s = BreakerState::new("cilium");
        s.since = Some(t(100));
        let mut other = running("x", 200, 9.0);
        other.cluster = "calico".into();
        let before_reset = running("y", 50, 9.0);
        let mut long_ended = running("z", 150, 9.0);
        long_ended.ended_at = Some(t(150));
        let now = t(150 + 24 * 60 + 1);
        let p = plan(
            &settings(),
            &s,
            &[other, before_reset, long_ended.clone()],
            now,
        );
        assert!(p.state.tripped.is_none());
        assert_eq!(p.state.apis, 0);
        // Ended within the evidence window: it counts (a stopped e-process keeps its value),
        // at most at its cap: one API alone, however strong, never trips the cluster.
        let p = plan(&settings(), &s, &[long_ended], t(150 + 60));
        assert_eq!(p.state.apis, 1);
        assert!((p.state.log_e - settings().cap_log_e()).abs() < 1e-9);
        assert!(p.state.tripped.is_none());
    }

    #[test]
    fn three_automatic_rollbacks_within_the_window_trip_each_counted_once() {
        let s = BreakerState::new("cilium");
        let p = plan(&settings(), &s, &[rolled_back("a", 0, 10)], t(11));
        assert_eq!(p.state.rollbacks.len(), 1);
        // Seen again at the next look: not counted twice.
        let p = plan(&settings(), &p.state, &[rolled_back("a", 0, 10)], t(12));
        assert_eq!(p.state.rollbacks.len(), 1);
        assert!(p.actions.is_empty());
        // The first one has left the hour when the third comes: no trip.
        let cs = [rolled_back("b", 0, 40), rolled_back("c", 0, 75)];
        let late = plan(&settings(), &p.state, &cs, t(75));
        assert!(late.state.tripped.is_none());
        assert_eq!(late.state.rollbacks.len(), 2);
        let cs = [rolled_back("b", 0, 40), rolled_back("c", 0, 65)];
        let p = plan(&settings(), &p.state, &cs, t(65));
        let [BreakerAction::Tripped(trip)] = p.actions.as_slice() else {
            panic!("{:?}", p.actions);
        };
        assert_eq!(trip.reason, "3 rollbacks within 1h");
        assert_eq!(trip.apis, ["a", "b", "c"]);
        // An operator's or the breaker's own rollback is not counted (`rolled_back_at` unset).
        let mut by_hand = rolled_back("d", 0, 10);
        by_hand.rolled_back_at = None;
        let off = BreakerSettings {
            max_rollbacks: 1,
            ..settings()
        };
        assert!(plan(&off, &s, &[by_hand], t(11)).state.tripped.is_none());
    }

    #[test]
    fn a_reset_clears_the_trip_and_starts_an_episode_that_ignores_the_rollouts_before_it() {
        let four: Vec<Contribution> = ["a", "b", "c", "d"]
            .iter()
            .map(|api| running(api, 0, 1.5))
            .collect();
        let tripped = plan(&settings(), &BreakerState::new("cilium"), &four, t(10)).state;
        let mut asked = tripped.clone();
        asked.reset_requested_by = Some("alice".into());
        let p = plan(&settings(), &asked, &four, t(30));
        let [BreakerAction::Reset(reset)] = p.actions.as_slice() else {
            panic!("{:?}", p.actions);
        };
        assert_eq!(reset.by, "alice");
        let cleared = reset.cleared.as_ref().unwrap();
        assert!(cleared.reason.starts_with("pooled evidence"), "{cleared:?}");
        assert_eq!(p.state.tripped, None);
        assert_eq!(p.state.since, Some(t(30)));
        assert_eq!(p.state.reset_requested_by, None);
        assert_eq!(
            p.state.apis, 0,
            "the rollouts that tripped it are not pooled again"
        );
        // New rollouts after the reset count again.
        let after: Vec<Contribution> = ["e", "f", "g", "h"]
            .iter()
            .map(|api| running(api, 31, 1.5))
            .collect();
        assert!(plan(&settings(), &p.state, &after, t(40))
            .state
            .tripped
            .is_some());
    }

    #[test]
    fn a_contribution_names_the_cluster_the_rollout_moves_onto() {
        let mut p = policy();
        p.clusters = crate::policy::Clusters {
            blue: Some("calico".into()),
            green: Some("cilium".into()),
        };
        let mut s = RolloutState::started(&p, t(0));
        let c = contribution(&p, &s).expect("a rollout onto green");
        assert_eq!(c.cluster, "cilium");
        assert_eq!(c.ended_at, None);
        // Promoted: the colour it moved onto is now the stable one.
        s.promote("done".into());
        s.phase_since = Some(t(90));
        let c = contribution(&p, &s).unwrap();
        assert_eq!((c.cluster.as_str(), c.ended_at), ("cilium", Some(t(90))));
        assert_eq!(c.rolled_back_at, None);
        // No cluster named for the candidate's colour, or no rollout: nothing to pool.
        p.clusters.green = None;
        assert_eq!(contribution(&p, &RolloutState::started(&p, t(0))), None);
        assert_eq!(contribution(&p, &RolloutState::new(&p)), None);
    }

    #[test]
    fn a_rollout_onto_a_tripped_cluster_is_told_why_and_how_to_lift_it() {
        let mut p = policy();
        p.clusters.green = Some("cilium".into());
        let s = RolloutState::started(&p, t(0));
        let mut tripped = BTreeMap::new();
        assert_eq!(hold_for(&p, &s, &tripped, OnTrip::Hold), None);
        tripped.insert(
            "cilium".to_string(),
            TripRecord {
                at: t(5),
                reason: "3 rollbacks within 1h".into(),
                apis: vec![],
                more_apis: 0,
                log_e: 0.0,
            },
        );
        let held = hold_for(&p, &s, &tripped, OnTrip::Rollback).unwrap();
        assert!(held.roll_back);
        assert_eq!(held.by, "breaker:cilium");
        assert!(
            held.reason.contains("(3 rollbacks within 1h)"),
            "{}",
            held.reason
        );
        assert!(held
            .reason
            .ends_with("`greenlight breaker reset cilium` lifts it"));
    }

    #[test]
    fn a_trip_on_a_cluster_of_many_apis_names_fifty_and_counts_the_rest() {
        let many: Vec<Contribution> = (0..130)
            .map(|i| running(&format!("api{i:03}"), 0, 1.5))
            .collect();
        let p = plan(&settings(), &BreakerState::new("cilium"), &many, t(10));
        let trip = p.state.tripped.expect("tripped");
        assert_eq!(trip.apis.len(), MAX_TRIP_APIS);
        assert_eq!(trip.more_apis, 130 - MAX_TRIP_APIS);
        assert!(
            trip.apis_text().ends_with("api049, … and 80 more"),
            "{}",
            trip.apis_text()
        );
        assert!(
            trip.reason.starts_with("pooled evidence of 130 APIs"),
            "{}",
            trip.reason
        );
    }

    #[test]
    fn a_trip_whose_write_failed_stands_until_written_and_yields_to_a_stored_one_or_a_later_reset()
    {
        let four: Vec<Contribution> = ["a", "b", "c", "d"]
            .iter()
            .map(|api| running(api, 0, 1.5))
            .collect();
        let stored = BreakerState::new("cilium");
        let decided = plan(&settings(), &stored, &four, t(10)).state;
        let unsaved = decided.tripped.clone().unwrap();
        // The write failed; at the next look the evidence has fallen: the trip still stands,
        // as it was decided (same time, so the same alert), and nothing new is announced.
        let standing = with_unsaved_trip(&stored, Some(&unsaved));
        assert_eq!(standing.tripped.as_ref(), Some(&unsaved));
        let calm = [running("a", 0, -3.0)];
        let next = plan(&settings(), &standing, &calm, t(11));
        assert!(next.actions.is_empty(), "{:?}", next.actions);
        assert!(next.changed(&stored), "still to be written");
        // An operator's reset, requested meanwhile, clears it (and resolves its alert).
        let mut asked = stored.clone();
        asked.reset_requested_by = Some("bob".into());
        let reset = plan(
            &settings(),
            &with_unsaved_trip(&asked, Some(&unsaved)),
            &calm,
            t(12),
        );
        let [BreakerAction::Reset(r)] = reset.actions.as_slice() else {
            panic!("{:?}", reset.actions);
        };
        assert_eq!(r.cleared.as_ref(), Some(&unsaved));
        // Once reset (after the trip), the unsaved trip is gone for good.
        assert!(with_unsaved_trip(&reset.state, Some(&unsaved))
            .tripped
            .is_none());
        // A trip stored meanwhile (by another leader) wins.
        let mut theirs = stored.clone();
        theirs.tripped = Some(TripRecord {
            at: t(9),
            ..unsaved.clone()
        });
        assert_eq!(
            with_unsaved_trip(&theirs, Some(&unsaved)).tripped,
            theirs.tripped
        );
        assert_eq!(with_unsaved_trip(&stored, None), stored);
    }
}
