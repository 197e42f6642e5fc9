//! Sticky mode on two real HAProxy nodes running the rules `greenlight haproxy-config` prints:
//! 10,000 users at every step keep their colour on both nodes and on repeated requests, the
//! green set only grows and matches the share, named subsets ride (or skip) green as declared,
//! a spoofed override header from an untrusted address changes nothing, and a rollback (share 0)
//! sends keyed and anonymous users alike back to blue.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use greenlight::policy::load_file;
use greenlight::traffic::sticky::share_commands;
use support::haproxy::{runtime_tcp, TinyServer};
use support::sticky::{colour, colours, config, node, served, Client, Node};

const USERS: usize = 10_000;

fn policy(map_dir: &std::path::Path) -> String {
    format!(
        r#"
api = "checkout"
interval = "2s"
steps = [1, 10, 50, 100]

[traffic]
haproxy = {{ backend = "api_checkout", blue = "blue", green = "green" }}
mode = "sticky"

[traffic.sticky]
key = {{ header = "X-User-Id" }}
map_dir = "{dir}"
override_header = "X-Greenlight-Colour"
trusted_sources = ["10.1.0.0/16"]

[[traffic.sticky.subset]]
name = "beta"
colour = "green"
members = ["beta-1", "beta-2"]

[[traffic.sticky.subset]]
name = "never"
colour = "blue"
members = ["never-1"]

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{{cluster="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(http_requests_total{{cluster="{{color}}",code="500"}}[{{interval}}]))'
"#,
        dir = map_dir.display()
    )
}

/// Sets green's share on every node through the Runtime API lines greenlight uses.
fn set_share(nodes: &[Node], sticky: &greenlight::policy::Sticky, percent: f64, salt: &str) {
    for n in nodes {
        for line in share_commands(sticky, "checkout", percent, salt) {
            let reply = runtime_tcp(n.admin, &line).unwrap();
            assert!(reply.trim().is_empty(), "{line}: {reply}");
        }
    }
}

#[test]
fn users_keep_their_colour_on_every_node_and_the_green_set_only_grows() {
    let maps = tempfile::tempdir().unwrap();
    let file = maps.path().join("checkout.toml");
    std::fs::write(&file, policy(maps.path())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args(["haproxy-config"])
        .arg(&file)
        .arg("--maps")
        .arg(maps.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8(out.stdout).unwrap();

    let (blue, green) = (TinyServer::start("blue"), TinyServer::start("green"));
    // The generated configuration is valid for `haproxy -c`.
    let check_dir = tempfile::tempdir().unwrap();
    let cfg_path = check_dir.path().join("haproxy.cfg");
    let cfg = config(
        &rules,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        blue.addr,
        green.addr,
    );
    std::fs::write(&cfg_path, cfg).unwrap();
    let check = Command::new(support::binary("haproxy"))
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c refused the generated rules:\n{}\n{rules}",
        String::from_utf8_lossy(&check.stderr)
    );

    let nodes = [
        node(&rules, blue.addr, green.addr),
        node(&rules, blue.addr, green.addr),
    ];
    let policy = load_file(&file, None).expect("policy loads");
    let sticky = policy.traffic.sticky.clone().expect("sticky mode");

    // Before the first step: everyone on blue, subsets included.
    let before = colours(&nodes, USERS / 10, false);
    assert!(before.values().all(|c| *c == "blue"));
    assert_eq!(served(&nodes[0], &[("X-User-Id", "beta-1")]), "blue");

    let mut previous: BTreeSet<String> = BTreeSet::new();
    let anon = Client::connect(nodes[0].app).get(&[]);
    let anon_cookie = anon.cookie.expect("an anonymous user gets an id cookie");
    for share in [1.0, 10.0, 50.0] {
        set_share(&nodes, &sticky, share, "r1");
        let now = colours(&nodes, USERS, share == 1.0);
        let green: BTreeSet<String> = now
            .iter()
            .filter(|(_, c)| **c == "green")
            .map(|(u, _)| u.clone())
            .collect();
        assert!(
            previous.is_subset(&green),
            "at {share}%: {} users left green",
            previous.difference(&green).count()
        );
        let percent = 100.0 * green.len() as f64 / USERS as f64;
        assert!(
            (percent - share).abs() <= 1.0,
            "at {share}%: {percent}% of users on green"
        );
        previous = green;
        // Subsets: beta on green (its own server) from the first step, never-users on blue.
        assert_eq!(
            served(&nodes[1], &[("X-User-Id", "beta-2")]),
            "green_pinned"
        );
        assert_eq!(served(&nodes[0], &[("X-User-Id", "never-1")]), "blue");
        // A forced colour from an untrusted address changes nothing.
        for (user, forced) in [("never-1", "green"), ("beta-1", "blue")] {
            let honest = served(&nodes[0], &[("X-User-Id", user)]);
            let spoofed = served(
                &nodes[0],
                &[("X-User-Id", user), ("X-Greenlight-Colour", forced)],
            );
            assert_eq!(honest, spoofed, "{user} forced to {forced}");
        }
        // The anonymous user keeps its colour with its cookie, on both nodes.
        let cookie = [("Cookie", anon_cookie.as_str())];
        let a = Client::connect(nodes[0].app).get(&cookie);
        let b = Client::connect(nodes[1].app).get(&cookie);
        assert!(a.cookie.is_none(), "a known id is not replaced");
        assert_eq!(colour(&a.server), colour(&b.server));
    }

    // Promotion: everyone on green, never-users included.
    set_share(&nodes, &sticky, 100.0, "r1");
    assert!(colours(&nodes, USERS / 10, false)
        .values()
        .all(|c| *c == "green"));
    assert_eq!(
        colour(&served(&nodes[0], &[("X-User-Id", "never-1")])),
        "green"
    );

    // Rollback: share 0 sends every user back at once, keyed, pinned and anonymous.
    set_share(&nodes, &sticky, 0.0, "r1");
    assert!(colours(&nodes, USERS, false).values().all(|c| *c == "blue"));
    for headers in [
        vec![("X-User-Id", "beta-1")],
        vec![("Cookie", anon_cookie.as_str())],
        vec![],
    ] {
        for n in &nodes {
            assert_eq!(served(n, &headers), "blue", "{headers:?}");
        }
    }
}
