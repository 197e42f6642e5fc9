//! Sticky mode on two real HAProxy nodes running the rules `greenlight haproxy-config` prints:
//! 10,000 users at every step keep their colour on both nodes and on repeated requests, the
//! green set only grows and matches the share, named subsets ride (or skip) green as declared,
//! a spoofed override header from an untrusted address changes nothing, and a rollback (share 0)
//! sends keyed and anonymous users alike back to blue.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use greenlight::policy::load_file;
use greenlight::traffic::sticky::share_commands;
use support::haproxy::{runtime_tcp, spawn, TinyServer};
use support::{free_port, Proc};

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

struct Node {
    _proc: Proc,
    app: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn node(rules: &str, blue: SocketAddr, green: SocketAddr) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config(rules, app, admin, blue, green);
    let proc = spawn(&cfg, dir.path(), admin);
    Node {
        _proc: proc,
        app,
        admin,
        _dir: dir,
    }
}

fn config(
    rules: &str,
    app: SocketAddr,
    admin: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
) -> String {
    format!(
        "global
    stats socket ipv4@{admin} level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe_app
    bind {app}
    default_backend api_checkout
backend api_checkout
    http-response set-header X-Served-By %[srv_name]
{rules}
    server blue {blue} weight 100
    server green {green} weight 0
    server green_pinned {green} weight 0
"
    )
}

/// One keep-alive connection sending requests one after another.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// The server that answered, and the cookie HAProxy set (if any).
struct Answer {
    server: String,
    cookie: Option<String>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn get(&mut self, headers: &[(&str, &str)]) -> Answer {
        let mut req = String::from("GET / HTTP/1.1\r\nHost: checkout\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes()).expect("send");
        let mut status = String::new();
        self.reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let (mut length, mut server, mut cookie) = (0usize, None, None);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap(),
                "x-served-by" => server = Some(value.to_string()),
                "set-cookie" => cookie = value.split(';').next().map(str::to_string),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).expect("body");
        Answer {
            server: server.expect("X-Served-By"),
            cookie,
        }
    }
}

fn colour(server: &str) -> &'static str {
    match server {
        "blue" => "blue",
        "green" | "green_pinned" => "green",
        other => panic!("unexpected server {other}"),
    }
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

/// The colour of each of the first `users` users, checked to be the same on both nodes (and,
/// with `repeat`, on a second request to the first node).
fn colours(nodes: &[Node], users: usize, repeat: bool) -> BTreeMap<String, &'static str> {
    let mut a = Client::connect(nodes[0].app);
    let mut b = Client::connect(nodes[1].app);
    let mut out = BTreeMap::new();
    for i in 0..users {
        let user = format!("user-{i}");
        let h = [("X-User-Id", user.as_str())];
        let first = colour(&a.get(&h).server);
        if repeat {
            assert_eq!(colour(&a.get(&h).server), first, "{user} flipped on node A");
        }
        assert_eq!(
            first,
            colour(&b.get(&h).server),
            "{user}: the nodes disagree"
        );
        out.insert(user, first);
    }
    out
}

fn served(node: &Node, headers: &[(&str, &str)]) -> String {
    Client::connect(node.app).get(headers).server
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
