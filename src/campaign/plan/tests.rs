//! Table-like tests of [`plan`]: order, caps, stop versus skip, schedule windows, pause, and
//! recovery from a crash between the two writes.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};

use super::*;

fn t0() -> Timestamp {
    // 12:00 in Paris (winter): outside a 22:00-06:00 window.
    "2026-01-15T11:00:00Z".parse().unwrap()
}

fn at(minutes: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(minutes)
}

/// Eight APIs in two waves of four, at most two at once.
fn campaign(on_rollback: &str, extra: &str) -> (Campaign, Vec<Vec<String>>) {
    let text = format!(
        "name = \"cni\"\nmax_concurrent = 2\non_rollback = \"{on_rollback}\"\n{extra}\n\
         [[wave]]\nname = \"one\"\napis = [\"a1\", \"a2\", \"a3\", \"a4\"]\n\
         [[wave]]\nname = \"two\"\napis = [\"b1\", \"b2\", \"b3\", \"b4\"]\n"
    );
    let c = Campaign::from_toml(&text, Path::new("c.toml"), None).unwrap();
    let waves = c
        .waves
        .iter()
        .map(|w| w.apis.iter().map(|(a, _)| a.clone()).collect())
        .collect();
    (c, waves)
}

fn pending() -> ApiView {
    ApiView {
        phase: Phase::Pending,
        start_pending: false,
        rollout_started_at: None,
    }
}

fn all_pending() -> BTreeMap<String, ApiView> {
    ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"]
        .iter()
        .map(|a| (a.to_string(), pending()))
        .collect()
}

fn started(state: &CampaignState) -> CampaignState {
    let mut s = state.clone();
    s.intent = Some(CampaignIntent::Start);
    s.intent_by = Some("alice".into());
    s
}

fn starts(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            CampaignAction::StartApi { api, .. } => Some(api.clone()),
            _ => None,
        })
        .collect()
}

/// The views after the executor wrote the start intents of `p`.
fn apply_starts(p: &Plan, views: &mut BTreeMap<String, ApiView>) {
    for api in starts(p) {
        views.get_mut(&api).unwrap().start_pending = true;
    }
}

/// The views after each API's evaluation obeyed its start intent at `now`.
fn evaluate(views: &mut BTreeMap<String, ApiView>, now: Timestamp) {
    for v in views.values_mut() {
        if v.start_pending {
            *v = ApiView {
                phase: Phase::Progressing,
                start_pending: false,
                rollout_started_at: Some(now),
            };
        }
    }
}

fn set(views: &mut BTreeMap<String, ApiView>, api: &str, phase: Phase) {
    views.get_mut(api).unwrap().phase = phase;
}

#[test]
fn an_idle_campaign_does_nothing_until_started() {
    let (c, waves) = campaign("stop", "");
    let s = CampaignState::new("cni");
    let p = plan(&c, &waves, &s, &all_pending(), t0());
    assert!(p.actions.is_empty());
    assert!(!p.changed(&s));
}

#[test]
fn apis_start_in_order_two_at_a_time_and_waves_follow_each_other() {
    let (c, waves) = campaign("stop", "");
    let mut views = all_pending();
    let p = plan(
        &c,
        &waves,
        &started(&CampaignState::new("cni")),
        &views,
        t0(),
    );
    assert_eq!(p.actions[0], CampaignAction::Started);
    assert_eq!(starts(&p), ["a1", "a2"]);
    assert_eq!(p.state.status, CampaignStatus::Running);
    assert_eq!(p.state.revision, 1);
    apply_starts(&p, &mut views);
    evaluate(&mut views, at(1));

    // Nothing frees a slot: nothing starts.
    let p2 = plan(&c, &waves, &p.state, &views, at(2));
    assert!(p2.actions.is_empty(), "{:?}", p2.actions);
    assert!(!p2.changed(&p.state));

    // a2 promoted: a3 takes its slot.
    set(&mut views, "a2", Phase::Promoted);
    let p3 = plan(&c, &waves, &p2.state, &views, at(3));
    assert_eq!(starts(&p3), ["a3"]);
    assert_eq!(p3.state.apis["a2"].outcome, Some(ApiOutcome::Promoted));
    apply_starts(&p3, &mut views);
    evaluate(&mut views, at(4));

    // The rest of wave one, then wave two never before wave one is done.
    for api in ["a1", "a3"] {
        set(&mut views, api, Phase::Promoted);
    }
    let p4 = plan(&c, &waves, &p3.state, &views, at(5));
    assert_eq!(starts(&p4), ["a4"]);
    apply_starts(&p4, &mut views);
    evaluate(&mut views, at(6));
    let p5 = plan(&c, &waves, &p4.state, &views, at(7));
    assert!(
        starts(&p5).is_empty(),
        "a slot is free but wave one is not done"
    );
    set(&mut views, "a4", Phase::Promoted);
    let p6 = plan(&c, &waves, &p5.state, &views, at(8));
    assert_eq!(p6.actions[0], CampaignAction::WaveDone { wave: 0 });
    assert_eq!(starts(&p6), ["b1", "b2"]);
    assert_eq!(p6.state.wave, 1);
    apply_starts(&p6, &mut views);
    evaluate(&mut views, at(9));
    for api in ["b1", "b2"] {
        set(&mut views, api, Phase::Promoted);
    }
    let p7 = plan(&c, &waves, &p6.state, &views, at(10));
    assert_eq!(starts(&p7), ["b3", "b4"]);
    apply_starts(&p7, &mut views);
    evaluate(&mut views, at(11));
    for api in ["b3", "b4"] {
        set(&mut views, api, Phase::Promoted);
    }
    let p8 = plan(&c, &waves, &p7.state, &views, at(12));
    assert_eq!(
        p8.actions,
        [
            CampaignAction::WaveDone { wave: 1 },
            CampaignAction::Finished
        ]
    );
    assert_eq!(p8.state.status, CampaignStatus::Finished);
    assert_eq!(p8.state.count(ApiOutcome::Promoted), 8);
}

#[test]
fn a_wave_cap_below_the_campaigns_holds() {
    let (mut c, waves) = campaign("stop", "");
    c.waves[0].max_concurrent = Some(1);
    let p = plan(
        &c,
        &waves,
        &started(&CampaignState::new("cni")),
        &all_pending(),
        t0(),
    );
    assert_eq!(starts(&p), ["a1"]);
}

#[test]
fn a_rollback_stops_the_campaign_with_stop_and_is_skipped_with_skip() {
    for (rule, expect_stop) in [("stop", true), ("skip", false)] {
        let (c, waves) = campaign(rule, "");
        let mut views = all_pending();
        let p = plan(
            &c,
            &waves,
            &started(&CampaignState::new("cni")),
            &views,
            t0(),
        );
        apply_starts(&p, &mut views);
        evaluate(&mut views, at(1));
        set(&mut views, "a1", Phase::RolledBack);
        let p2 = plan(&c, &waves, &p.state, &views, at(2));
        if expect_stop {
            assert_eq!(
                p2.actions,
                [CampaignAction::Stopped {
                    reason: "a1 rolled back.".into()
                }]
            );
            assert_eq!(p2.state.status, CampaignStatus::Stopped);
            // Stopped: nothing more starts, even when a2 is done; a2's outcome still counts.
            set(&mut views, "a2", Phase::Promoted);
            let p3 = plan(&c, &waves, &p2.state, &views, at(3));
            assert!(starts(&p3).is_empty());
            assert_eq!(p3.state.apis["a2"].outcome, Some(ApiOutcome::Promoted));
            // A resume skips a1 and goes on with a3 and a4.
            let mut resumed = p3.state.clone();
            resumed.intent = Some(CampaignIntent::Resume);
            let p4 = plan(&c, &waves, &resumed, &views, at(4));
            assert_eq!(p4.state.apis["a1"].outcome, Some(ApiOutcome::Skipped));
            assert_eq!(starts(&p4), ["a3", "a4"]);
        } else {
            assert_eq!(starts(&p2), ["a3"], "a1's slot goes to the next API");
            assert_eq!(p2.state.apis["a1"].outcome, Some(ApiOutcome::Skipped));
            assert_eq!(p2.state.status, CampaignStatus::Running);
        }
    }
}

#[test]
fn no_api_starts_outside_the_schedule_windows() {
    let (c, waves) = campaign(
        "stop",
        "[schedule]\ntimezone = \"Europe/Paris\"\nwindows = [\"22:00-06:00\"]\n",
    );
    let s = started(&CampaignState::new("cni"));
    let p = plan(&c, &waves, &s, &all_pending(), t0());
    assert_eq!(p.state.status, CampaignStatus::Running);
    assert!(starts(&p).is_empty());
    // 23:00 in Paris.
    let night: Timestamp = "2026-01-15T22:00:00Z".parse().unwrap();
    let p2 = plan(&c, &waves, &p.state, &all_pending(), night);
    assert_eq!(starts(&p2), ["a1", "a2"]);
}

#[test]
fn a_paused_campaign_starts_nothing_until_resumed() {
    let (c, waves) = campaign("stop", "");
    let mut views = all_pending();
    let p = plan(
        &c,
        &waves,
        &started(&CampaignState::new("cni")),
        &views,
        t0(),
    );
    apply_starts(&p, &mut views);
    evaluate(&mut views, at(1));
    let mut paused = p.state.clone();
    paused.intent = Some(CampaignIntent::Pause);
    paused.intent_by = Some("bob".into());
    set(&mut views, "a1", Phase::Promoted);
    let p2 = plan(&c, &waves, &paused, &views, at(2));
    assert_eq!(p2.state.status, CampaignStatus::Paused);
    assert_eq!(p2.state.reason.as_deref(), Some("Paused by bob."));
    assert!(starts(&p2).is_empty());
    assert_eq!(p2.state.apis["a1"].outcome, Some(ApiOutcome::Promoted));
    let mut resumed = p2.state.clone();
    resumed.intent = Some(CampaignIntent::Resume);
    let p3 = plan(&c, &waves, &resumed, &views, at(3));
    assert_eq!(starts(&p3), ["a3"]);
    // A stop ends it; a start begins afresh.
    let mut stopped = p3.state.clone();
    stopped.intent = Some(CampaignIntent::Stop);
    let p4 = plan(&c, &waves, &stopped, &views, at(4));
    assert_eq!(p4.state.status, CampaignStatus::Stopped);
    let p5 = plan(&c, &waves, &started(&p4.state), &views, at(5));
    assert_eq!(p5.state.status, CampaignStatus::Running);
    assert_eq!(
        p5.state.apis["a1"].outcome,
        Some(ApiOutcome::AlreadyPromoted)
    );
}

#[test]
fn a_start_lost_in_a_crash_is_written_again_and_a_landed_one_never_twice() {
    let (c, waves) = campaign("stop", "");
    let mut views = all_pending();
    let p = plan(
        &c,
        &waves,
        &started(&CampaignState::new("cni")),
        &views,
        t0(),
    );
    assert_eq!(starts(&p), ["a1", "a2"]);
    // Crash after the campaign state was written: no intent was. The next look writes both.
    let again = plan(&c, &waves, &p.state, &views, at(1));
    assert_eq!(starts(&again), ["a1", "a2"]);
    assert!(!again.changed(&p.state));
    // Only a1's intent was written before another crash: only a2's is written again.
    views.get_mut("a1").unwrap().start_pending = true;
    let once_more = plan(&c, &waves, &p.state, &views, at(2));
    assert_eq!(starts(&once_more), ["a2"]);
    // Once both rollouts began, nothing is started again.
    views.get_mut("a2").unwrap().start_pending = true;
    evaluate(&mut views, at(3));
    let later = plan(&c, &waves, &p.state, &views, at(4));
    assert!(starts(&later).is_empty());
}

#[test]
fn an_old_rollback_or_promotion_is_not_taken_for_the_campaigns() {
    let (c, waves) = campaign("stop", "");
    let mut views = all_pending();
    // a1 was rolled back last week, a2 promoted last week.
    let old = Some(t0() - SignedDuration::from_hours(24 * 7));
    for (api, phase) in [("a1", Phase::RolledBack), ("a2", Phase::Promoted)] {
        let v = views.get_mut(api).unwrap();
        v.phase = phase;
        v.rollout_started_at = old;
    }
    let p = plan(
        &c,
        &waves,
        &started(&CampaignState::new("cni")),
        &views,
        t0(),
    );
    // a2 counts as done without a start; a1 is started again, then a3 fills the second slot.
    assert_eq!(
        p.state.apis["a2"].outcome,
        Some(ApiOutcome::AlreadyPromoted)
    );
    assert_eq!(starts(&p), ["a1", "a3"]);
    assert_eq!(
        p.state.status,
        CampaignStatus::Running,
        "the old rollback does not stop it"
    );
}

#[test]
fn intents_that_do_not_apply_are_dropped() {
    let (c, waves) = campaign("stop", "");
    let mut s = CampaignState::new("cni");
    s.intent = Some(CampaignIntent::Pause);
    let p = plan(&c, &waves, &s, &all_pending(), t0());
    assert_eq!(p.state.status, CampaignStatus::Idle);
    assert_eq!(p.state.intent, None);
    assert!(p.actions.is_empty());
}

#[test]
fn a_start_replaced_before_it_landed_on_a_promoted_api_is_written_again() {
    let (c, waves) = campaign("stop", "");
    let mut views = all_pending();
    // a1 was promoted last week and someone asked for a new rollout just before the campaign.
    let old = Some(t0() - SignedDuration::from_hours(24 * 7));
    let v = views.get_mut("a1").unwrap();
    v.phase = Phase::Promoted;
    v.rollout_started_at = old;
    v.start_pending = true;
    let p = plan(
        &c,
        &waves,
        &started(&CampaignState::new("cni")),
        &views,
        t0(),
    );
    assert_eq!(starts(&p), ["a2"], "a1's pending start is its own");
    // That start was replaced by another request before any evaluation: a1 never ran again,
    // so it is not promoted by this campaign; the campaign writes its start.
    views.get_mut("a1").unwrap().start_pending = false;
    let p2 = plan(&c, &waves, &p.state, &views, at(1));
    assert_eq!(p2.state.apis["a1"].outcome, None);
    assert_eq!(starts(&p2), ["a1", "a2"]);
}
