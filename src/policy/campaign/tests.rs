use std::path::Path;

use super::*;

fn policy(api: &str, extra: &str) -> Policy {
    let text = format!(
        r#"api = "{api}"
auto_start = false
{extra}
[traffic]
consul_keys = {{ blue = "w/{api}/blue", green = "w/{api}/green" }}
[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(r{{cluster="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(e{{cluster="{{color}}"}}[{{interval}}]))'
"#
    );
    Policy::from_toml(&text, Path::new("p.toml"), None).unwrap()
}

fn parse(text: &str) -> Result<Campaign, Vec<String>> {
    Campaign::from_toml(text, Path::new("c.toml"), Some(&["oncall".to_string()]))
        .map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

const TWO_WAVES: &str = r#"name = "cni"
max_concurrent = 2
on_rollback = "skip"
alerts = ["oncall"]

[schedule]
timezone = "Europe/Paris"
windows = ["22:00-06:00"]

[[wave]]
name = "first"
apis = ["search", "billing"]
max_concurrent = 1

[[wave]]
name = "rest"
match = ["pay-*"]
labels = { tier = "2" }
"#;

#[test]
fn a_campaign_with_waves_is_read_and_resolved_in_order() {
    let c = parse(TWO_WAVES).unwrap();
    assert_eq!(c.name, "cni");
    assert_eq!(c.max_concurrent, 2);
    assert_eq!(c.on_rollback, OnRollback::Skip);
    assert_eq!(c.waves.len(), 2);
    assert_eq!(c.waves[0].max_concurrent, Some(1));
    assert!(c.schedule.is_some());
    let policies = [
        policy("search", ""),
        policy("billing", ""),
        policy("pay-b", ""),
        policy("pay-a", ""),
        policy("orders", "[labels]\ntier = \"2\"\n"),
        policy("users", "[labels]\ntier = \"1\"\n"),
    ];
    let waves = c.resolve(&policies).unwrap();
    assert_eq!(
        waves,
        vec![
            vec!["search".to_string(), "billing".into()],
            vec!["orders".to_string(), "pay-a".into(), "pay-b".into()],
        ]
    );
}

#[test]
fn top_level_apis_make_one_wave_with_defaults() {
    let c = parse("name = \"x\"\napis = [\"b\", \"a\"]\n").unwrap();
    assert_eq!(c.max_concurrent, 1);
    assert_eq!(c.on_rollback, OnRollback::Stop);
    assert_eq!(c.waves.len(), 1);
    let waves = c.resolve(&[policy("a", ""), policy("b", "")]).unwrap();
    assert_eq!(waves, vec![vec!["b".to_string(), "a".into()]]);
}

#[test]
fn mistakes_in_the_file_are_located() {
    let bad = TWO_WAVES
        .replace("max_concurrent = 2", "max_concurrent = 0")
        .replace("\"pay-*\"", "\"pay/*\"")
        .replace("[\"oncall\"]", "[\"pager\"]");
    let errors = parse(&bad).unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with("c.toml:2:18: max_concurrent must be between 1"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("c.toml:4:11: unknown alert channel \"pager\""),
        "{errors:?}"
    );
    assert!(
        errors[2].starts_with("c.toml:17:10: match \"pay/*\""),
        "{errors:?}"
    );
    let errors = parse("name = \"x\"\non_rollback = \"pause\"\napis = [\"a\"]\n").unwrap_err();
    assert!(errors[0].starts_with("c.toml:2:15:"), "{errors:?}");
    let errors = parse("name = \"x\"\n").unwrap_err();
    assert!(
        errors[0].contains("needs apis, match or labels"),
        "{errors:?}"
    );
    let errors =
        parse("name = \"x\"\nmax_concurrent = 1\n[[wave]]\napis = [\"a\"]\nmax_concurrent = 3\n")
            .unwrap_err();
    assert!(
        errors[0].starts_with("c.toml:5:18: wave max_concurrent (3) exceeds"),
        "{errors:?}"
    );
}

#[test]
fn unknown_apis_empty_waves_and_auto_start_are_located() {
    let c = parse(TWO_WAVES).unwrap();
    let errors: Vec<String> = c
        .resolve(&[policy("search", "")])
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors[0],
        "c.toml:12:19: unknown API \"billing\": no policy has this api"
    );
    let errors: Vec<String> = c
        .resolve(&[policy("search", ""), policy("billing", "")])
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors[0].starts_with("c.toml:15:1: wave \"rest\" selects no API"),
        "{errors:?}"
    );
    let mut auto = policy("search", "");
    auto.auto_start = true;
    let errors: Vec<String> = c
        .resolve(&[auto, policy("billing", ""), policy("pay-a", "")])
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors[0].starts_with("c.toml:12:9: API \"search\" starts on its own"),
        "{errors:?}"
    );
}

#[test]
fn globs_match_runs_and_single_characters() {
    assert!(glob_matches("pay-*", "pay-a"));
    assert!(glob_matches("*", "x"));
    assert!(glob_matches("a?c", "abc"));
    assert!(glob_matches("*-api-*", "x-api-y"));
    assert!(!glob_matches("pay-*", "pay"));
    assert!(!glob_matches("a?c", "ac"));
    assert!(!glob_matches("search", "search2"));
}

#[test]
fn the_readme_example_campaign_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Campaigns").expect("a Campaigns section")..];
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an example campaign file");
    let c = parse(block).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.name, "tls-migration");
    assert_eq!(c.waves.len(), 2);
    assert_eq!(c.waves[1].labels.get("tier").map(String::as_str), Some("2"));
}
