//! Which cluster each colour runs on (`clusters = { blue = "calico-eu1", green = "cilium-eu1" }`,
//! or `green_cluster = "cilium-eu1"`): the cluster breaker pools the evidence of every rollout
//! onto one cluster, keyed by the candidate colour's cluster.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::located::{shown, Errors};
use super::values::Table;
use super::Colour;

/// `clusters = { blue = "...", green = "..." }` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClusters {
    #[serde(default)]
    pub(super) blue: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) green: Option<Spanned<String>>,
}

/// Longest cluster name, in characters.
pub const MAX_CLUSTER_CHARS: usize = 63;

/// The cluster each colour runs on; a colour without one is not pooled by the breaker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Clusters {
    pub blue: Option<String>,
    pub green: Option<String>,
}

impl Clusters {
    /// The cluster `colour` runs on, if named.
    pub fn of(&self, colour: Colour) -> Option<&str> {
        match colour {
            Colour::Blue => self.blue.as_deref(),
            Colour::Green => self.green.as_deref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.blue.is_none() && self.green.is_none()
    }
}

/// Whether `name` is a usable cluster name: 1 to 63 letters, digits, `_`, `-` or `.` (it is
/// part of a Consul key and a metric label).
pub fn is_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_CLUSTER_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The message for a cluster name that is not one (`None`: it is).
pub fn cluster_name_problem(what: &str, name: &str) -> Option<String> {
    (!is_cluster_name(name)).then(|| {
        format!(
            "{what} must be 1 to {MAX_CLUSTER_CHARS} letters, digits, '_', '-' or '.', got {}",
            shown(name)
        )
    })
}

/// `clusters` and its shorthand `green_cluster`, every problem located.
pub(super) fn validate_clusters(
    clusters: Option<&Spanned<Table<RawClusters>>>,
    green_cluster: Option<&Spanned<String>>,
    errors: &mut Errors<'_>,
) -> Clusters {
    let mut out = Clusters::default();
    let named =
        |what: &str, value: &Spanned<String>, errors: &mut Errors<'_>| match cluster_name_problem(
            what,
            value.get_ref(),
        ) {
            Some(problem) => {
                errors.at(value.span(), problem);
                None
            }
            None => Some(value.get_ref().clone()),
        };
    if let Some(table) = clusters {
        if let Some(b) = &table.get_ref().blue {
            out.blue = named("clusters.blue", b, errors);
        }
        if let Some(g) = &table.get_ref().green {
            out.green = named("clusters.green", g, errors);
        }
    }
    if let Some(g) = green_cluster {
        if clusters.is_some_and(|t| t.get_ref().green.is_some()) {
            errors.at(
                g.span(),
                "green_cluster and clusters.green both name green's cluster; keep one",
            );
        } else {
            out.green = named("green_cluster", g, errors);
        }
    }
    if let (Some(b), Some(g)) = (&out.blue, &out.green) {
        if b == g {
            let span = clusters
                .map(|t| t.span())
                .or(green_cluster.map(|g| g.span()))
                .unwrap_or(0..0);
            errors.at(
                span,
                format!(
                    "blue and green both run on cluster {}; a rollout moves traffic between two clusters",
                    shown(b)
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::{Colour, Policy};

    // The cluster keys come first: later keys would land in the [traffic] table.
    const POLICY: &str = r#"api = "checkout"
[traffic]
consul_keys = { blue = "w/blue", green = "w/green" }
[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(r{cluster="{color}"}[{interval}]))'
errors = 'sum(increase(e{cluster="{color}"}[{interval}]))'
"#;

    fn with(line: &str) -> String {
        format!("{line}\n{POLICY}")
    }

    fn errors(line: &str) -> Vec<String> {
        Policy::from_toml(&with(line), Path::new("c.toml"), None)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn both_clusters_or_the_green_shorthand_are_read_into_the_policy() {
        let p = Policy::from_toml(
            &with(r#"clusters = { blue = "calico-eu1", green = "cilium-eu1" }"#),
            Path::new("c.toml"),
            None,
        )
        .unwrap();
        assert_eq!(p.clusters.of(Colour::Blue), Some("calico-eu1"));
        assert_eq!(p.clusters.of(Colour::Green), Some("cilium-eu1"));
        let p = Policy::from_toml(
            &with(r#"green_cluster = "cilium-eu1""#),
            Path::new("c.toml"),
            None,
        )
        .unwrap();
        assert_eq!(p.clusters.of(Colour::Green), Some("cilium-eu1"));
        assert_eq!(p.clusters.of(Colour::Blue), None);
        let p = Policy::from_toml(POLICY, Path::new("c.toml"), None).unwrap();
        assert!(p.clusters.is_empty());
    }

    #[test]
    fn bad_cluster_names_are_reported_where_they_are_written() {
        for (line, expected) in [
            (
                r#"green_cluster = "cilium/eu1""#,
                r#"c.toml:1:17: green_cluster must be 1 to 63 letters, digits, '_', '-' or '.', got "cilium/eu1""#,
            ),
            (
                r#"clusters = { blue = "", green = "x" }"#,
                r#"c.toml:1:21: clusters.blue must be 1 to 63 letters, digits, '_', '-' or '.', got """#,
            ),
            (
                r#"clusters = { green = "a" }
green_cluster = "b""#,
                "c.toml:2:17: green_cluster and clusters.green both name green's cluster; keep one",
            ),
            (
                r#"clusters = { blue = "a", green = "a" }"#,
                r#"c.toml:1:12: blue and green both run on cluster "a"; a rollout moves traffic between two clusters"#,
            ),
        ] {
            assert_eq!(errors(line), vec![expected.to_string()], "{line}");
        }
        let e = errors(r#"clusters = { red = "a" }"#);
        assert!(
            e[0].starts_with("c.toml:1:14: unknown field `red`"),
            "{e:?}"
        );
    }
}
