//! The cohort header of sticky mode on a real HAProxy running the generated rules: every request
//! reaches its server carrying the cohort that server stands for (`blue`, `random` on green,
//! `pinned` on the pinned server), whatever value the client sent.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use greenlight::policy::Policy;
use greenlight::traffic::sticky::{haproxy_config, initial_maps, share_commands};
use support::free_port;
use support::haproxy::{runtime_tcp, spawn, TinyServer};

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
fn ask(app: SocketAddr, headers: &[(&str, &str)]) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&app, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = String::from("GET / HTTP/1.1\r\nHost: checkout\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let header = |name: &str| {
        raw.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {raw}"))
    };
    (header("X-Served-By"), header("X-Seen-Cohort"))
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
    let dir = tempfile::tempdir().unwrap();
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "global\n    stats socket ipv4@{admin} level admin\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe_app\n    bind {app}\n    default_backend api_checkout\nbackend api_checkout\n    http-response set-header X-Served-By %[srv_name]\n{rules}\
         \n    server blue {b} weight 100\n    server green {g} weight 0\n    server green_pinned {g} weight 0\n",
        b = blue.addr,
        g = green.addr
    );
    let _haproxy = spawn(&cfg, dir.path(), admin);
    let sticky = policy.traffic.sticky.as_ref().unwrap();

    for share in [50.0, 0.0] {
        for line in share_commands(sticky, "checkout", share, "s1") {
            let reply = runtime_tcp(admin, &line).unwrap();
            assert!(reply.trim().is_empty(), "{line}: {reply}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let user = format!("user-{i}");
            for spoofed in [None, Some("pinned"), Some("random")] {
                let mut headers = vec![("X-User-Id", user.as_str())];
                headers.extend(spoofed.map(|v| ("X-Greenlight-Cohort", v)));
                let (server, cohort) = ask(app, &headers);
                assert_eq!(cohort, expected_cohort(&server), "{user} {spoofed:?}");
                seen.insert(cohort);
            }
        }
        let pinned = ask(app, &[("X-User-Id", "beta-1")]);
        let never = ask(
            app,
            &[("X-User-Id", "never-1"), ("X-Greenlight-Cohort", "random")],
        );
        let anonymous = ask(app, &[("X-Greenlight-Cohort", "pinned")]);
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
