//! Two or more real HAProxy nodes running the rules `greenlight haproxy-config` prints, and a
//! keep-alive client that tells which colour each user reaches.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::haproxy::{runtime_tcp, spawn};
use super::{free_port, Proc};

/// One HAProxy node running the generated rules in backend `api_checkout`.
pub struct Node {
    pub proc: Proc,
    pub app: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Starts a node with `rules` in front of the blue and green servers.
pub fn node(rules: &str, blue: SocketAddr, green: SocketAddr) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config(rules, app, admin, blue, green);
    let proc = spawn(&cfg, dir.path(), admin);
    Node {
        proc,
        app,
        admin,
        dir,
    }
}

impl Node {
    /// `tcp://<admin>`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.admin)
    }

    /// One Runtime API line.
    pub fn runtime(&self, line: &str) -> String {
        runtime_tcp(self.admin, line).expect("Runtime API command")
    }

    /// Reloads the node as `haproxy -sf <pid>` does: a new process on the same configuration
    /// (and so the map files' contents) takes over; returns once it answers and the old one
    /// has exited.
    pub fn reload(&mut self) {
        super::haproxy::reload(&mut self.proc, self.dir.path(), self.admin);
    }
}

/// The whole HAProxy configuration of a node.
pub fn config(
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
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// The server that answered, the cookie HAProxy set (if any), and every answer header
/// (names in lower case).
pub struct Answer {
    pub server: String,
    pub cookie: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn get(&mut self, headers: &[(&str, &str)]) -> Answer {
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
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            headers.insert(name.clone(), value.to_string());
            match name.as_str() {
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
            headers,
        }
    }
}

/// The colour a server stands for.
pub fn colour(server: &str) -> &'static str {
    match server {
        "blue" => "blue",
        "green" | "green_pinned" => "green",
        other => panic!("unexpected server {other}"),
    }
}

/// The colour of each of the first `users` users, checked to be the same on both nodes (and,
/// with `repeat`, on a second request to the first node).
pub fn colours(nodes: &[Node], users: usize, repeat: bool) -> BTreeMap<String, &'static str> {
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

/// The server one request with `headers` reaches.
pub fn served(node: &Node, headers: &[(&str, &str)]) -> String {
    Client::connect(node.app).get(headers).server
}
