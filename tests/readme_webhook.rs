//! The README documents the generic webhook payload and its signature header: its example body
//! is a valid payload of the current schema, and its signature example is what greenlight sends.

use greenlight::alert::channel::{signature, SIGNATURE_HEADER, WEBHOOK_SCHEMA_VERSION};
use greenlight::alert::AlertEvent;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The first ```json block after `heading`.
fn json_block_after(text: &str, heading: &str) -> String {
    let section = &text[text.find(heading).expect("heading")..];
    let start = section.find("```json\n").expect("a json block") + "```json\n".len();
    let end = section[start..].find("```").unwrap();
    section[start..start + end].to_string()
}

#[test]
fn readme_webhook_example_is_a_valid_payload() {
    let text = readme();
    let block = json_block_after(&text, "### Webhook payload and signature");
    let v: serde_json::Value = serde_json::from_str(&block).expect("the example parses");
    assert_eq!(v["version"], WEBHOOK_SCHEMA_VERSION);
    let event: AlertEvent = serde_json::from_value(v["event"].clone()).expect("an AlertEvent");
    assert_eq!(event.kind.as_str(), "rollback");
    // Every field of the event is shown in the example.
    let shown = v["event"].as_object().unwrap();
    let all = serde_json::to_value(&event).unwrap();
    for key in all.as_object().unwrap().keys() {
        assert!(shown.contains_key(key), "the README example lacks {key}");
    }
}

#[test]
fn readme_signature_example_matches_what_greenlight_sends() {
    let text = readme();
    let expected = signature("s3cret", br#"{"version":1}"#);
    assert!(
        text.contains(&format!("{SIGNATURE_HEADER}: {expected}")),
        "README lacks `{SIGNATURE_HEADER}: {expected}`"
    );
}
