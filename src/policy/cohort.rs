//! Cohorts in sticky mode: which of green's users a check reads, and what a query's `{color}`
//! and `{cohort}` become on each side of it.
//!
//! In sticky mode green serves two cohorts through two HAProxy servers of the same address: the
//! users whose bucket is below the share (the green server, the *random* cohort) and the users
//! pinned to green by a subset or the override header (`pinned_server`, the *pinned* cohort).
//! Only the random cohort is a random sample of the users, so the comparison checks
//! (`error_rate`, `latency_histogram`) compare it alone with blue; a `threshold` check with
//! `cohort = "pinned"` guards the pinned cohort. HAProxy also names each request's cohort in a
//! header (`cohort_header`: `blue`, `random` or `pinned`) so that applications can label their
//! histograms with it.
//!
//! | mode, check | blue `{color}` / `{cohort}` | green `{color}` / `{cohort}` |
//! |---|---|---|
//! | weighted | `blue` / — | `green` / — |
//! | sticky, comparison or guard | blue server / `blue` | green server / `random` |
//! | sticky, `cohort = "pinned"` guard | blue server / `blue` | `pinned_server` / `pinned` |

use serde::{Deserialize, Serialize};

use super::raw::RawTraffic;
use super::sticky::{SubsetColour, TrafficMode};
use super::{Check, CheckKind, Policy, Traffic};

/// Which of green's users a check reads in sticky mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cohort {
    /// The users whose bucket is below green's share: a random sample, compared with blue.
    #[default]
    Random,
    /// The users a subset (or the override header) pins to green: not a random sample, only
    /// guarded by thresholds of its own.
    Pinned,
}

impl Cohort {
    /// The value `{cohort}` takes on green's side, and the cohort header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cohort::Random => "random",
            Cohort::Pinned => "pinned",
        }
    }
}

/// The cohort header's value (and `{cohort}`) on blue's side.
pub const BLUE_COHORT: &str = "blue";

/// What `{color}` and `{cohort}` become in one side's queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub color: String,
    /// Empty in weighted mode, where validation refuses `{cohort}`.
    pub cohort: &'static str,
}

/// Blue's and green's [`Side`] of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sides {
    pub blue: Side,
    pub green: Side,
}

impl Check {
    /// The cohort of green this check reads: pinned only for a `cohort = "pinned"` guard.
    pub fn cohort(&self) -> Cohort {
        match &self.kind {
            CheckKind::Threshold { cohort, .. } => *cohort,
            _ => Cohort::Random,
        }
    }
}

impl Policy {
    /// What `{color}` and `{cohort}` become on each side of `check` (see the module table).
    pub fn sides(&self, check: &Check) -> Sides {
        let servers = self.traffic.haproxy_servers();
        let (Some(sticky), Some(servers)) = (&self.traffic.sticky, servers) else {
            return Sides {
                blue: Side {
                    color: "blue".into(),
                    cohort: "",
                },
                green: Side {
                    color: "green".into(),
                    cohort: "",
                },
            };
        };
        let cohort = check.cohort();
        let green = match cohort {
            Cohort::Random => servers.green,
            Cohort::Pinned => sticky.pinned_server.clone(),
        };
        Sides {
            blue: Side {
                color: servers.blue,
                cohort: BLUE_COHORT,
            },
            green: Side {
                color: green,
                cohort: cohort.as_str(),
            },
        }
    }
}

/// What a policy lets its checks say about cohorts (known while validating).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CohortRules {
    /// `traffic.mode = "sticky"`: `{cohort}` and the `cohort` field apply.
    pub sticky: bool,
    /// Some user can be pinned to green (a green subset or the override header). `None`: the
    /// `[traffic.sticky]` table has errors of its own, so it is not known.
    pub pinnable: Option<bool>,
}

impl CohortRules {
    /// From the raw mode (the validated traffic may have errors of its own) and the validated
    /// sticky table when there is one.
    pub(super) fn of(raw: &RawTraffic, traffic: Option<&Traffic>) -> CohortRules {
        let sticky = raw
            .mode
            .as_ref()
            .is_some_and(|m| *m.get_ref() == TrafficMode::Sticky);
        let pinnable = traffic.and_then(|t| t.sticky.as_ref()).map(|s| {
            s.override_header.is_some() || s.subsets.iter().any(|x| x.colour == SubsetColour::Green)
        });
        CohortRules { sticky, pinnable }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixture::{load, refused};

    const STICKY: &str = r#"api = "checkout"
steps = [10, 50, 100]
[traffic]
haproxy = { backend = "api_checkout", blue = "b1", green = "g1" }
mode = "sticky"
[traffic.sticky]
key = { header = "X-User-Id" }
[[traffic.sticky.subset]]
name = "beta"
colour = "green"
members = ["alice", "bob"]
[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(haproxy_server_http_responses_total{server="{color}"}[{interval}]))'
errors = 'sum(increase(haproxy_server_http_responses_total{server="{color}",code="5xx"}[{interval}]))'
[[check]]
name = "latency"
kind = "latency_histogram"
buckets = 'sum by (le) (increase(http_request_duration_seconds_bucket{cohort="{cohort}"}[{interval}]))'
edges = ["0.25"]
[[check]]
name = "p99"
kind = "threshold"
query = 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{cohort="{cohort}"}[{interval}])))'
max = 0.5
[[check]]
name = "beta-errors"
kind = "threshold"
cohort = "pinned"
query = 'sum(rate(haproxy_server_http_responses_total{server="{color}",code="5xx"}[{interval}])) / sum(rate(haproxy_server_http_responses_total{server="{color}"}[{interval}]))'
max = 0.05
"#;

    fn errors(from: &str, to: &str) -> Vec<String> {
        refused(STICKY, from, to)
    }

    fn side(color: &str, cohort: &'static str) -> Side {
        Side {
            color: color.into(),
            cohort,
        }
    }

    #[test]
    fn sticky_comparisons_read_the_random_cohort_and_pinned_guards_the_pinned_server() {
        let p = load(STICKY).unwrap();
        let sides: Vec<Sides> = p.checks.iter().map(|c| p.sides(c)).collect();
        let random = Sides {
            blue: side("b1", "blue"),
            green: side("g1", "random"),
        };
        assert_eq!(sides[0], random, "error_rate");
        assert_eq!(sides[1], random, "latency_histogram");
        assert_eq!(sides[2], random, "a guard without cohort");
        assert_eq!(
            sides[3],
            Sides {
                blue: side("b1", "blue"),
                green: side("g1_pinned", "pinned"),
            },
            "a pinned guard"
        );
        assert_eq!(p.checks[3].cohort(), Cohort::Pinned);
        assert_eq!(p.checks[2].cohort(), Cohort::Random);
    }

    #[test]
    fn weighted_policies_keep_the_colour_names() {
        let p = load(crate::policy::fixture::GOOD).unwrap();
        for c in &p.checks {
            assert_eq!(
                p.sides(c),
                Sides {
                    blue: side("blue", ""),
                    green: side("green", ""),
                }
            );
        }
    }

    #[test]
    fn a_pinned_guard_needs_sticky_mode_and_someone_pinned() {
        let weighted = STICKY
            .replacen("mode = \"sticky\"\n", "", 1)
            .replacen(
                "[traffic.sticky]\nkey = { header = \"X-User-Id\" }\n[[traffic.sticky.subset]]\nname = \"beta\"\ncolour = \"green\"\nmembers = [\"alice\", \"bob\"]\n",
                "",
                1,
            );
        let e = load(&weighted).unwrap_err();
        assert_eq!(
            e,
            vec![
                "p.toml:13:11: buckets must contain {color} (replaced by the blue or green selector value)",
                "p.toml:13:79: {cohort} only applies with traffic.mode = \"sticky\" (a weighted split has no cohorts)",
                "p.toml:18:9: query must contain {color} (replaced by the blue or green selector value)",
                "p.toml:18:98: {cohort} only applies with traffic.mode = \"sticky\" (a weighted split has no cohorts)",
                "p.toml:23:10: `cohort` only applies with traffic.mode = \"sticky\" (a weighted split has no cohorts)",
            ],
        );
        assert_eq!(
            errors("colour = \"green\"", "colour = \"blue\""),
            vec!["p.toml:30:10: cohort = \"pinned\" needs a [[traffic.sticky.subset]] with colour = \"green\" or an override_header: no user is pinned to green"]
        );
        // The override header pins users to green too.
        let text = STICKY.replacen("colour = \"green\"", "colour = \"blue\"", 1).replacen(
            "key = { header = \"X-User-Id\" }",
            "key = { header = \"X-User-Id\" }\noverride_header = \"X-Colour\"\ntrusted_sources = [\"10.0.0.0/8\"]",
            1,
        );
        assert_eq!(load(&text).map(|_| ()), Ok(()));
    }

    #[test]
    fn comparison_checks_cannot_read_the_pinned_cohort() {
        assert_eq!(
            errors("kind = \"error_rate\"\n", "kind = \"error_rate\"\ncohort = \"pinned\"\n"),
            vec!["p.toml:15:10: `cohort` does not apply to kind = \"error_rate\": comparison checks read only green's random cohort, a random sample like blue; guard the pinned cohort with kind = \"threshold\" and cohort = \"pinned\""]
        );
        let e = errors("cohort = \"pinned\"", "cohort = \"everyone\"");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:30:10: unknown variant `everyone`"),
            "{e:?}"
        );
    }

    #[test]
    fn sticky_selectors_may_tell_the_sides_apart_by_cohort() {
        // {cohort} alone selects each side; a selector with neither still reads both the same.
        let e = errors(
            "cohort=\"{cohort}\"}[{interval}]))'\nedges",
            "service=\"checkout\"}[{interval}]))'\nedges",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:20:11: buckets must contain {color} or {cohort}"),
            "{e:?}"
        );
    }
}
