//! What sticky mode shows in `status`, the API, the console and alerts: green's share of the
//! users, the named subsets (salt-independent facts: name, colour, member count), and one
//! sentence saying who rides green.

use serde::{Deserialize, Serialize};

use crate::engine::percent;
use crate::policy::sticky::{Subset, SubsetColour};
use crate::policy::{Policy, Sticky, Weights};

/// The sticky-mode facts of one API's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StickyView {
    /// Green's share of the users outside the subsets (random cohort), percent, from the
    /// weights: green / (blue + green) × 100.
    pub share_percent: f64,
    pub subsets: Vec<SubsetView>,
    /// Who rides green, e.g. `12 % of users (random cohort) + subset beta (250 users)`.
    pub on_green: String,
}

/// One named subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetView {
    pub name: String,
    pub colour: SubsetColour,
    /// Members listed in the policy (users, or values of the subset's own key).
    pub members: usize,
    /// The header or cookie its members are matched on, when it is not the user key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The view of `policy` at `weights`; `None` outside sticky mode.
pub fn sticky_view(policy: &Policy, weights: Weights) -> Option<StickyView> {
    let sticky = policy.traffic.sticky.as_ref()?;
    let share_percent = super::telemetry::green_share(weights);
    Some(StickyView {
        share_percent,
        subsets: sticky
            .subsets
            .iter()
            .map(|s| SubsetView {
                name: s.name.clone(),
                colour: s.colour,
                members: s.members.len(),
                key: s.key.as_ref().map(key_name),
            })
            .collect(),
        on_green: who_is_on_green(sticky, share_percent),
    })
}

fn key_name(k: &crate::policy::sticky::KeySource) -> String {
    match k {
        crate::policy::sticky::KeySource::Header(h) => h.clone(),
        crate::policy::sticky::KeySource::Cookie(c) => format!("cookie {c}"),
    }
}

/// `subset beta (250 users)`, or `(3 X-Tenant values)` for a subset with its own key.
fn subset_text(s: &Subset) -> String {
    let n = s.members.len();
    let what = match (&s.key, n) {
        (None, 1) => "user".to_string(),
        (None, _) => "users".to_string(),
        (Some(k), 1) => format!("{} value", key_name(k)),
        (Some(k), _) => format!("{} values", key_name(k)),
    };
    format!("subset {} ({n} {what})", s.name)
}

/// Who rides green at `share` percent: the random cohort, plus the green subsets while the
/// share is above 0; everyone (the blue subsets too) once promoted; `no users` at 0.
pub fn who_is_on_green(sticky: &Sticky, share: f64) -> String {
    if share.is_nan() || share <= 0.0 {
        return "no users".into();
    }
    if share >= 100.0 {
        return "all users".into();
    }
    let mut text = format!("{} % of users (random cohort)", percent(share));
    for s in sticky
        .subsets
        .iter()
        .filter(|s| s.colour == SubsetColour::Green)
    {
        text.push_str(" + ");
        text.push_str(&subset_text(s));
    }
    text
}

impl StickyView {
    /// `beta (green, 250 members), never (blue, 1 member)`; `none` without subsets.
    pub fn subsets_text(&self) -> String {
        if self.subsets.is_empty() {
            return "none".into();
        }
        let one = |s: &SubsetView| {
            let colour = match s.colour {
                SubsetColour::Green => "green",
                SubsetColour::Blue => "blue",
            };
            let plural = if s.members == 1 { "" } else { "s" };
            let by = s
                .key
                .as_ref()
                .map(|k| format!(" by {k}"))
                .unwrap_or_default();
            format!("{} ({colour}, {} member{plural}{by})", s.name, s.members)
        };
        self.subsets.iter().map(one).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(subsets: &str) -> Policy {
        let text = format!(
            r#"api = "checkout"
steps = [12, 50, 100]
[traffic]
haproxy = {{ backend = "api_checkout", blue = "blue", green = "green" }}
mode = "sticky"
[traffic.sticky]
key = {{ header = "X-User-Id" }}
{subsets}
[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(rate(r{{server="{{color}}"}}[{{interval}}]))'
errors = 'sum(rate(e{{server="{{color}}"}}[{{interval}}]))'
"#
        );
        Policy::from_toml(&text, Path::new("p.toml"), None).unwrap()
    }

    fn members(n: usize) -> String {
        let m: Vec<String> = (0..n).map(|i| format!("\"u{i}\"")).collect();
        format!("[{}]", m.join(", "))
    }

    #[test]
    fn the_share_and_the_green_subsets_say_who_is_on_green() {
        let p = policy(&format!(
            "[[traffic.sticky.subset]]\nname = \"beta\"\ncolour = \"green\"\nmembers = {}\n\
             [[traffic.sticky.subset]]\nname = \"never\"\ncolour = \"blue\"\nmembers = [\"x\"]\n\
             [[traffic.sticky.subset]]\nname = \"acme\"\ncolour = \"green\"\nkey = {{ header = \"X-Tenant\" }}\nmembers = [\"acme\"]\n",
            members(250)
        ));
        let v = sticky_view(&p, p.weights_at(0)).unwrap();
        assert_eq!(v.share_percent, 12.0);
        assert_eq!(
            v.on_green,
            "12 % of users (random cohort) + subset beta (250 users) + subset acme (1 X-Tenant value)"
        );
        assert_eq!(
            v.subsets,
            vec![
                SubsetView {
                    name: "beta".into(),
                    colour: SubsetColour::Green,
                    members: 250,
                    key: None
                },
                SubsetView {
                    name: "never".into(),
                    colour: SubsetColour::Blue,
                    members: 1,
                    key: None
                },
                SubsetView {
                    name: "acme".into(),
                    colour: SubsetColour::Green,
                    members: 1,
                    key: Some("X-Tenant".into())
                },
            ]
        );
        assert_eq!(
            v.subsets_text(),
            "beta (green, 250 members), never (blue, 1 member), acme (green, 1 member by X-Tenant)"
        );
        let rolled_back = sticky_view(
            &p,
            Weights {
                blue: 100,
                green: 0,
            },
        )
        .unwrap();
        assert_eq!(rolled_back.on_green, "no users");
        assert_eq!(rolled_back.share_percent, 0.0);
        let promoted = sticky_view(
            &p,
            Weights {
                blue: 0,
                green: 100,
            },
        )
        .unwrap();
        assert_eq!(promoted.on_green, "all users");
        let small = sticky_view(
            &p,
            Weights {
                blue: 199,
                green: 1,
            },
        )
        .unwrap();
        assert!(small.on_green.starts_with("0.5 % of users"), "{small:?}");
    }

    #[test]
    fn weighted_policies_have_no_sticky_view() {
        let mut p = policy("");
        assert!(sticky_view(&p, p.weights_at(0)).is_some());
        p.traffic.sticky = None;
        assert_eq!(sticky_view(&p, p.weights_at(0)), None);
    }
}
