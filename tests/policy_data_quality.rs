//! The data-quality keys of a policy file: defaults, values, errors and alert routes.

use std::path::Path;
use std::time::Duration;

use greenlight::policy::{GreenMissingAction, Policy};

const BASE: &str = r#"
api = "checkout"
[traffic]
consul_keys = { blue = "b", green = "g" }
[[check]]
name = "errors"
kind = "error_rate"
requests = 'r{color}[{interval}]'
errors = 'e{color}[{interval}]'
"#;

fn parse(top: &str) -> Result<Policy, String> {
    Policy::from_toml(&format!("{top}\n{BASE}"), Path::new("p.toml"), None).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[test]
fn data_quality_defaults_roll_back_after_five_minutes_of_missing_green_data() {
    let p = parse("").unwrap();
    assert_eq!(
        p.data_quality.on_green_data_missing,
        GreenMissingAction::Rollback
    );
    assert_eq!(
        p.data_quality.green_data_missing_for,
        Duration::from_secs(300)
    );
    assert_eq!(p.data_quality.max_requests_per_second, 1e7);
    assert!(p.data_quality.check_traffic_split);
}

#[test]
fn data_quality_keys_are_read() {
    let text = format!(
        "on_green_data_missing = \"hold\"\ngreen_data_missing_for = \"15m\"\n\
         max_requests_per_second = 5e7\ncheck_traffic_split = false\nalerts = [\"oncall\"]\n{BASE}\n[alert_routes]\n\
         green_data_missing = [\"pager\"]\ntraffic_split_mismatch = []\n"
    );
    let p = Policy::from_toml(&text, Path::new("p.toml"), None).unwrap();
    assert_eq!(
        p.data_quality.on_green_data_missing,
        GreenMissingAction::Hold
    );
    assert_eq!(
        p.data_quality.green_data_missing_for,
        Duration::from_secs(900)
    );
    assert_eq!(p.data_quality.max_requests_per_second, 5e7);
    assert!(!p.data_quality.check_traffic_split);
    assert_eq!(p.alert_channels("green_data_missing"), ["pager"]);
    assert!(p.alert_channels("traffic_split_mismatch").is_empty());
    assert_eq!(p.alert_channels("rollback"), ["oncall"]);
}

#[test]
fn bad_data_quality_values_are_errors_with_their_location() {
    let e = parse("on_green_data_missing = \"panic\"").unwrap_err();
    assert!(e.contains("p.toml:1:"), "{e}");
    assert!(e.contains("hold") && e.contains("rollback"), "{e}");
    let e = parse("max_requests_per_second = -1.0").unwrap_err();
    assert!(
        e.contains("max_requests_per_second must be between 1 and"),
        "{e}"
    );
    let e = parse("green_data_missing_for = \"0s\"").unwrap_err();
    assert!(
        e.contains("green_data_missing_for must be between 1s and"),
        "{e}"
    );
}
