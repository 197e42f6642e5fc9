//! The release lifecycle: which colour is stable, which release each colour runs, and the rules
//! for starting a rollout.
//!
//! A rollout moves traffic from the **stable** colour (it serves all traffic at rest) to the
//! other one, the **candidate**. Promotion makes the candidate the stable colour; a rollback
//! returns all traffic to the stable one. So consecutive releases alternate colours: release A
//! onto green (green becomes stable), release B onto blue, release C onto green again. The
//! statistics always compare the candidate against the stable copy, whatever their colours.

use serde::{Deserialize, Serialize};

use super::state::Phase;
use crate::policy::{Colour, Policy, Weights};

/// How many rolled-back release ids the state remembers.
pub const ROLLED_BACK_KEPT: usize = 20;

/// Longest release id accepted (it becomes a metric label and part of alerts).
pub const MAX_RELEASE_LEN: usize = 128;

/// Which colour is stable and which release each side runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Releases {
    /// The colour that serves all traffic at rest; the rollout moves traffic from it.
    #[serde(default)]
    pub stable: Colour,
    /// The stable colour's release id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_release: Option<String>,
    /// The candidate's release id in the current (or last) rollout, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_release: Option<String>,
    /// Releases that were rolled back, oldest first (at most [`ROLLED_BACK_KEPT`]): none of
    /// them is started again automatically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<String>,
}

/// What `greenlight start API [--release ID] [--to COLOUR]` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StartRequest {
    /// The colour to move traffic onto (default: the one not stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Colour>,
    /// The candidate's release id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

impl Releases {
    /// The colour a rollout moves traffic onto.
    pub fn candidate(&self) -> Colour {
        self.stable.other()
    }

    /// `colour` as people read it in this rollout: `stable (blue)` or `candidate (green)`.
    pub fn role(&self, colour: Colour) -> String {
        if colour == self.stable {
            format!("stable ({colour})")
        } else {
            format!("candidate ({colour})")
        }
    }

    /// The release id of `colour`, when known.
    pub fn release_of(&self, colour: Colour) -> Option<&str> {
        if colour == self.stable {
            self.stable_release.as_deref()
        } else {
            self.candidate_release.as_deref()
        }
    }

    /// The candidate is promoted: it becomes the stable colour, with its release, and the old
    /// stable colour (still running its release until the next deploy) the candidate side.
    /// Undoing a promotion is the same swap.
    pub(crate) fn swap(&mut self) {
        self.stable = self.candidate();
        std::mem::swap(&mut self.stable_release, &mut self.candidate_release);
    }

    /// The candidate is rolled back: its release is remembered as such.
    pub(crate) fn roll_back(&mut self) {
        if let Some(r) = &self.candidate_release {
            self.rolled_back.retain(|x| x != r);
            self.rolled_back.push(r.clone());
            if self.rolled_back.len() > ROLLED_BACK_KEPT {
                let extra = self.rolled_back.len() - ROLLED_BACK_KEPT;
                self.rolled_back.drain(..extra);
            }
        }
    }

    /// Repairs a state written before the stable colour was recorded: a promoted rollout's
    /// stable colour is the one serving all traffic.
    pub(crate) fn repair(&mut self, phase: Phase, weights: Weights) {
        let (stable, other) = (self.stable, self.stable.other());
        if phase == Phase::Promoted && weights.of(stable) == 0 && weights.of(other) > 0 {
            self.stable = other;
        }
    }
}

/// The stable colour of a stored state that cannot be decoded as a whole, when its JSON still
/// says (or, for a state written before colours were recorded, implies) it: what a break-glass
/// rollback needs to send traffic the right way. `None` when the bytes are not JSON.
pub fn stable_of_undecodable(bytes: &[u8]) -> Option<Colour> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let v = v.as_object()?;
    if let Some(stable) = v.get("releases").and_then(|r| r.get("stable")) {
        return stable.as_str()?.parse().ok();
    }
    let promoted = v.get("phase").and_then(|p| p.as_str()) == Some("promoted");
    let weight = |c: &str| {
        v.get("weights")
            .and_then(|w| w.get(c))
            .and_then(|x| x.as_u64())
    };
    Some(
        if promoted && weight("blue") == Some(0) && weight("green").is_some_and(|g| g > 0) {
            Colour::Green
        } else {
            Colour::Blue
        },
    )
}

/// The release id in a `release_query` answer: the `label` value its series agree on. No series:
/// `Ok(None)` (nothing reports a release); series without the label, several different values
/// or an invalid id: an error saying which.
pub fn release_from_answer<'a>(
    label: &str,
    series: impl IntoIterator<Item = &'a std::collections::BTreeMap<String, String>>,
) -> Result<Option<String>, String> {
    let mut found: Vec<&str> = Vec::new();
    for labels in series {
        let Some(v) = labels.get(label) else {
            return Err(format!("a series of the answer has no `{label}` label"));
        };
        if !found.contains(&v.as_str()) {
            found.push(v);
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => validate_release(one).map(|()| Some(one.to_string())),
        many => Err(format!(
            "the candidate reports {} releases at once ({})",
            many.len(),
            many.join(", ")
        )),
    }
}

/// The start request with its release id taken from what the candidate reports, when the
/// request names none. What could not be read leaves it without an id (and says why).
pub fn with_discovered_release(
    mut request: StartRequest,
    discovered: Result<Option<String>, String>,
) -> (StartRequest, Option<String>) {
    if request.release.is_some() {
        return (request, None);
    }
    match discovered {
        Ok(found) => {
            request.release = found;
            (request, None)
        }
        Err(why) => (request, Some(why)),
    }
}

/// ` (release ID)`, or nothing without an id: how messages name a side's release.
pub fn release_suffix(release: Option<&str>) -> String {
    release
        .map(|r| format!(" (release {r})"))
        .unwrap_or_default()
}

/// Checks a release id given by a person or read from the metrics.
pub fn validate_release(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a release id cannot be empty".into());
    }
    if id.len() > MAX_RELEASE_LEN {
        return Err(format!(
            "a release id has at most {MAX_RELEASE_LEN} characters (this one has {})",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | ':' | '/')))
    {
        return Err(format!(
            "a release id is made of letters, digits and . - _ + : / (found {c:?} in {id:?})"
        ));
    }
    Ok(())
}

/// Whether a rollout may start as `request` asks, and onto which colour. `automatic` is a start
/// nobody typed (a policy's `auto_start`, a campaign): it never re-runs a rolled-back release.
pub fn check_start(
    policy: &Policy,
    releases: &Releases,
    request: &StartRequest,
    automatic: bool,
) -> Result<Colour, String> {
    let candidate = releases.candidate();
    if let Some(to) = request.to {
        if to == releases.stable {
            return Err(format!(
                "{to} is the stable colour (it serves all traffic{}); a rollout moves traffic \
                 onto the other one: `--to {candidate}`",
                releases
                    .stable_release
                    .as_deref()
                    .map(|r| format!(", release {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(release) = &request.release {
        validate_release(release)?;
        if releases.stable_release.as_deref() == Some(release.as_str()) {
            return Err(format!(
                "release {release} is already stable on {}: there is nothing to roll out",
                releases.stable
            ));
        }
        if automatic && releases.rolled_back.iter().any(|r| r == release) {
            return Err(format!(
                "release {release} was rolled back: it is not started again automatically \
                 (`greenlight start {} --release {release}` starts it by hand)",
                policy.api
            ));
        }
    }
    if candidate == Colour::Blue && policy.traffic.sticky.is_some() {
        return Err(format!(
            "{} is a sticky canary, whose cohorts move onto green only; green is stable now, so \
             the next release must be deployed to green behind a fresh rollout \
             (`greenlight rollback` returns all traffic to blue first)",
            policy.api
        ));
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn releases(stable: Colour, stable_release: Option<&str>) -> Releases {
        Releases {
            stable,
            stable_release: stable_release.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn promotion_makes_the_candidate_stable_and_rollback_remembers_the_release() {
        let mut r = releases(Colour::Blue, Some("a"));
        r.candidate_release = Some("b".into());
        r.swap();
        assert_eq!(
            (r.stable, r.stable_release.as_deref()),
            (Colour::Green, Some("b"))
        );
        assert_eq!(r.release_of(Colour::Blue), Some("a"), "blue still runs a");
        assert_eq!(r.candidate(), Colour::Blue);
        r.candidate_release = Some("c".into());
        r.roll_back();
        r.roll_back();
        assert_eq!(r.rolled_back, vec!["c".to_string()]);
        assert_eq!(
            r.stable,
            Colour::Green,
            "a rollback keeps the stable colour"
        );
    }

    #[test]
    fn the_rolled_back_list_is_bounded() {
        let mut r = Releases::default();
        for i in 0..(ROLLED_BACK_KEPT + 5) {
            r.candidate_release = Some(format!("r{i}"));
            r.roll_back();
        }
        assert_eq!(r.rolled_back.len(), ROLLED_BACK_KEPT);
        assert_eq!(r.rolled_back.last().map(String::as_str), Some("r24"));
    }

    #[test]
    fn start_goes_onto_the_colour_not_stable_and_refuses_the_stable_one() {
        let p = crate::engine::tests::policy();
        let r = releases(Colour::Green, Some("a"));
        assert_eq!(
            check_start(&p, &r, &StartRequest::default(), false),
            Ok(Colour::Blue)
        );
        let to_green = StartRequest {
            to: Some(Colour::Green),
            release: None,
        };
        let err = check_start(&p, &r, &to_green, false).unwrap_err();
        assert!(err.contains("green is the stable colour"), "{err}");
        assert!(err.contains("--to blue"), "{err}");
    }

    #[test]
    fn start_refuses_the_stable_release_and_automatic_restarts_of_rolled_back_ones() {
        let p = crate::engine::tests::policy();
        let mut r = releases(Colour::Blue, Some("a"));
        r.rolled_back.push("b".into());
        let of = |id: &str| StartRequest {
            to: None,
            release: Some(id.into()),
        };
        let err = check_start(&p, &r, &of("a"), false).unwrap_err();
        assert!(err.contains("already stable on blue"), "{err}");
        let err = check_start(&p, &r, &of("b"), true).unwrap_err();
        assert!(err.contains("was rolled back"), "{err}");
        assert_eq!(check_start(&p, &r, &of("b"), false), Ok(Colour::Green));
        assert!(check_start(&p, &r, &of("bad id"), false).is_err());
        assert!(check_start(&p, &r, &of(""), false).is_err());
    }

    #[test]
    fn the_stable_colour_of_an_undecodable_state_is_read_when_its_json_says_it() {
        let broken = br#"{"revision":null,"releases":{"stable":"green"}}"#;
        assert_eq!(stable_of_undecodable(broken), Some(Colour::Green));
        let old = br#"{"phase":"promoted","weights":{"blue":0,"green":100},"x":null}"#;
        assert_eq!(stable_of_undecodable(old), Some(Colour::Green));
        let old = br#"{"phase":"progressing","weights":{"blue":90,"green":10}}"#;
        assert_eq!(stable_of_undecodable(old), Some(Colour::Blue));
        assert_eq!(stable_of_undecodable(b"\x00garbage"), None);
        assert_eq!(
            stable_of_undecodable(br#"{"releases":{"stable":"purple"}}"#),
            None
        );
    }

    #[test]
    fn a_release_is_read_from_the_label_the_candidate_series_agree_on() {
        use std::collections::BTreeMap;
        let s = |v: &str| BTreeMap::from([("version".to_string(), v.to_string())]);
        assert_eq!(
            release_from_answer("version", &[s("v7"), s("v7")]),
            Ok(Some("v7".into()))
        );
        assert_eq!(release_from_answer("version", &[]), Ok(None));
        let err = release_from_answer("version", &[s("v7"), s("v8")]).unwrap_err();
        assert!(err.contains("2 releases at once (v7, v8)"), "{err}");
        assert!(release_from_answer("version", &[BTreeMap::new()]).is_err());
        assert!(release_from_answer("version", &[s("bad id")]).is_err());
        // A release given at start wins; an unreadable one leaves none, with the reason.
        let given = StartRequest {
            to: None,
            release: Some("x".into()),
        };
        assert_eq!(
            with_discovered_release(given.clone(), Ok(Some("v7".into()))).0,
            given
        );
        let (r, why) = with_discovered_release(StartRequest::default(), Err("down".into()));
        assert_eq!((r.release, why.as_deref()), (None, Some("down")));
    }

    #[test]
    fn an_old_promoted_state_is_repaired_to_green_stable() {
        let mut r = Releases::default();
        r.repair(
            Phase::Promoted,
            Weights {
                blue: 0,
                green: 100,
            },
        );
        assert_eq!(r.stable, Colour::Green);
        let mut r = Releases::default();
        r.repair(
            Phase::RolledBack,
            Weights {
                blue: 100,
                green: 0,
            },
        );
        assert_eq!(r.stable, Colour::Blue);
    }
}
