//! The cohort header of sticky mode on a real HAProxy running the generated rules: every request
//! reaches its server carrying the cohort that server stands for (`blue`, `random` on green,
//! `pinned` on the pinned server), whatever value the client sent.

mod support;

use greenlight::policy::Policy;
use greenlight::traffic::sticky::{haproxy_config, initial_maps, share_commands};
use support::haproxy::TinyServer;
use support::sticky::{node, Client, Node};

fn policy(map_dir: &std::path::Path) -> Policy {
    let text = format!(
        r#"api = "checkout"
steps = [50, 100]
[traffic]
haproxy = {{ backend = "api_checkout", blue = "blue", green = "green" }}
mode = "sticky"
[traffic.sticky]
key = {{ header = "X-User-Id" }}
map_dir = "{}"
[[traffic.sticky.subset]]
name = "beta"
colour = "green"
members = ["beta-1"]
[[traffic.sticky.subset]]
name = "never"
colour = "blue"
members = ["never-1"]
[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(haproxy_server_http_responses_total{{server="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(haproxy_server_http_responses_total{{server="{{color}}",code="5xx"}}[{{interval}}]))'
"#,
        map_dir.display()
    );
    Policy::from_toml(&text, std::path::Path::new("checkout.toml"), None).expect("policy")
}

/// The server that answered and the cohort header it received (echoed by HAProxy).
fn ask(node: &Node, headers: &[(&str, &str)]) -> (String, String) {
    let answer = Client::connect(node.app).get(headers);
    let seen = answer
        .headers
        .get("x-seen-cohort")
        .cloned()
        .unwrap_or_else(|| panic!("no X-Seen-Cohort from {}", answer.server));
    (answer.server, seen)
}

fn expected_cohort(server: &str) -> &'static str {
    match server {
        "blue" => "blue",
        "green" => "random",
        "green_pinned" => "pinned",
        other => panic!("unexpected server {other}"),
    }
}

#[test]
fn every_request_carries_the_cohort_of_the_server_it_reaches() {
    let maps = tempfile::tempdir().unwrap();
    let policy = policy(maps.path());
    for (path, text) in initial_maps(&policy, "s1").unwrap() {
        std::fs::write(path, text).unwrap();
    }
    let rules = haproxy_config(&policy).unwrap();
    // What the server receives, echoed back: read after the generated rules, before routing.
    let at = rules.find("    use-server").expect("use-server rules");
    let rules = format!(
        "{}    http-request set-var(txn.seen) req.hdr(X-Greenlight-Cohort)\n    http-response set-header X-Seen-Cohort %[var(txn.seen)]\n{}",
        &rules[..at],
        &rules[at..]
    );
    let (blue, green) = (TinyServer::start("blue"), TinyServer::start("green"));
    let node = node(&rules, blue.addr, green.addr);
    let sticky = policy.traffic.sticky.as_ref().unwrap();

    for share in [50.0, 0.0] {
        for line in share_commands(sticky, "checkout", share, "s1") {
            let reply = node.runtime(&line);
            assert!(reply.trim().is_empty(), "{line}: {reply}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let user = format!("user-{i}");
            for spoofed in [None, Some("pinned"), Some("random")] {
                let mut headers = vec![("X-User-Id", user.as_str())];
                headers.extend(spoofed.map(|v| ("X-Greenlight-Cohort", v)));
                let (server, cohort) = ask(&node, &headers);
                assert_eq!(cohort, expected_cohort(&server), "{user} {spoofed:?}");
                seen.insert(cohort);
            }
        }
        let pinned = ask(&node, &[("X-User-Id", "beta-1")]);
        let never = ask(
            &node,
            &[("X-User-Id", "never-1"), ("X-Greenlight-Cohort", "random")],
        );
        let anonymous = ask(&node, &[("X-Greenlight-Cohort", "pinned")]);
        for (server, cohort) in [&pinned, &never, &anonymous] {
            assert_eq!(cohort, expected_cohort(server), "{server}");
        }
        assert_eq!(never.1, "blue");
        if share > 0.0 {
            assert_eq!(pinned.1, "pinned");
            assert_eq!(seen.iter().collect::<Vec<_>>(), ["blue", "random"]);
        } else {
            // Rollback: everyone on blue, and labelled so.
            assert_eq!(pinned.1, "blue");
            assert_eq!(seen.iter().collect::<Vec<_>>(), ["blue"]);
        }
    }
}
