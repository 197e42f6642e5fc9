//! A policy's `[labels]` table: key → value pairs (team, tier…) that campaigns select APIs by.

use std::collections::BTreeMap;

use toml::Spanned;

use super::located::{shown, Errors};
use super::values::Table;

/// A `[labels]` table as written: key → located value.
pub(super) type RawLabels = Spanned<Table<BTreeMap<String, Spanned<String>>>>;

/// Most labels one policy may carry.
pub(super) const MAX_LABELS: usize = 32;
/// Longest label key or value, in characters.
pub(super) const MAX_LABEL_CHARS: usize = 63;

/// Whether `s` is a usable label key or value: 1 to 63 letters, digits, `_`, `-`, `.` or `/`.
pub(super) fn is_label_text(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_LABEL_CHARS
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

/// The validated labels (empty when the table is absent); every problem located.
pub(super) fn validate_labels(
    raw: Option<&RawLabels>,
    errors: &mut Errors<'_>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let Some(raw) = raw else {
        return labels;
    };
    if raw.get_ref().len() > MAX_LABELS {
        errors.at(
            raw.span(),
            format!(
                "[labels] holds {} labels; at most {MAX_LABELS} are allowed",
                raw.get_ref().len()
            ),
        );
    }
    for (key, value) in raw.get_ref().iter() {
        let mut ok = true;
        if !is_label_text(key) {
            errors.at(
                value.span(),
                format!(
                    "label key {} must be 1 to {MAX_LABEL_CHARS} letters, digits, '_', '-', '.' or '/'",
                    shown(key)
                ),
            );
            ok = false;
        }
        if !is_label_text(value.get_ref()) {
            errors.at(
                value.span(),
                format!(
                    "label {key}: value {} must be 1 to {MAX_LABEL_CHARS} letters, digits, '_', '-', '.' or '/'",
                    shown(value.get_ref())
                ),
            );
            ok = false;
        }
        if ok {
            labels.insert(key.clone(), value.get_ref().clone());
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::Policy;

    const POLICY: &str = r#"
api = "checkout"
[traffic]
consul_keys = { blue = "w/blue", green = "w/green" }
[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(r{cluster="{color}"}[{interval}]))'
errors = 'sum(increase(e{cluster="{color}"}[{interval}]))'
"#;

    #[test]
    fn labels_are_read_into_the_policy() {
        let text = format!("{POLICY}[labels]\nteam = \"payments\"\ntier = \"1\"\n");
        let p = Policy::from_toml(&text, Path::new("c.toml"), None).unwrap();
        assert_eq!(p.labels.get("team").map(String::as_str), Some("payments"));
        assert_eq!(p.labels.get("tier").map(String::as_str), Some("1"));
        let p = Policy::from_toml(POLICY, Path::new("c.toml"), None).unwrap();
        assert!(p.labels.is_empty());
    }

    #[test]
    fn a_bad_label_is_reported_where_it_is_written() {
        let text = format!("{POLICY}[labels]\nteam = \"pay ments\"\ntier = 1\n");
        let errors = Policy::from_toml(&text, Path::new("c.toml"), None).unwrap_err();
        // The non-string value is a TOML type error, located at its line.
        assert!(
            errors[0].to_string().starts_with("c.toml:12:8:"),
            "{errors:?}"
        );
        let text = format!("{POLICY}[labels]\nteam = \"pay ments\"\n");
        let errors = Policy::from_toml(&text, Path::new("c.toml"), None).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("c.toml:11:8: label team: value"),
            "{}",
            errors[0]
        );
    }
}
