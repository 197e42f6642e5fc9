//! A real HAProxy 2.6 in front of several APIs (one frontend and one blue/green backend each),
//! with its Prometheus exporter and its Runtime API on TCP.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use super::haproxy::runtime_tcp as runtime;
use super::haproxy::spawn;
use super::{free_port, Proc};

/// One API behind HAProxy: frontend `fe_<name>` → backend `api_<name>` with servers `blue`
/// (weight 100) and `green` (weight 0).
#[derive(Debug, Clone)]
pub struct ApiServers {
    pub name: String,
    pub blue: SocketAddr,
    pub green: SocketAddr,
}

/// A running HAProxy serving every [`ApiServers`] on its own port (stopped by PID on drop).
pub struct HaproxyApis {
    pub proc: Proc,
    /// API name → frontend address.
    pub frontends: BTreeMap<String, SocketAddr>,
    /// Runtime API on TCP.
    pub admin: SocketAddr,
    /// Prometheus exporter: `GET /metrics`.
    pub exporter: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// What one request through a frontend got: the status code and the `X-Served-By` server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub status: u16,
    pub server: String,
}

impl HaproxyApis {
    /// Writes the configuration, starts `haproxy -db` and waits for its Runtime API.
    pub fn start(apis: &[ApiServers]) -> HaproxyApis {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let exporter: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut frontends = BTreeMap::new();
        let mut cfg = format!(
            "global
    stats socket {sock} mode 600 level admin
    stats socket ipv4@{admin} level admin
    stats timeout 30s
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe_stats
    bind {exporter}
    no log
    http-request use-service prometheus-exporter if {{ path /metrics }}
",
            sock = dir.path().join("admin.sock").display(),
        );
        for api in apis {
            let port = free_port();
            frontends.insert(
                api.name.clone(),
                format!("127.0.0.1:{port}").parse().unwrap(),
            );
            cfg.push_str(&format!(
                "frontend fe_{name}
    bind 127.0.0.1:{port}
    default_backend api_{name}
backend api_{name}
    balance roundrobin
    http-response set-header X-Served-By %[srv_name]
    server blue  {blue} weight 100 check inter 1s
    server green {green} weight 0   check inter 1s
",
                name = api.name,
                blue = api.blue,
                green = api.green,
            ));
        }
        let proc = spawn(&cfg, dir.path(), admin);
        HaproxyApis {
            proc,
            frontends,
            admin,
            exporter,
            dir,
        }
    }

    /// `tcp://127.0.0.1:<admin port>`.
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.admin)
    }

    /// The frontend of `api`.
    pub fn frontend(&self, api: &str) -> SocketAddr {
        *self
            .frontends
            .get(api)
            .unwrap_or_else(|| panic!("no frontend for {api}"))
    }

    /// `get weight api_<api>/<server>`: the current weight.
    pub fn weight(&self, api: &str, server: &str) -> Option<u32> {
        let reply = runtime(self.admin, &format!("get weight api_{api}/{server}")).ok()?;
        reply.split_whitespace().next()?.parse().ok()
    }

    /// One request through `api`'s frontend.
    pub fn request(&self, api: &str) -> Option<Served> {
        request(self.frontend(api), api)
    }
}

/// `GET /` on `frontend` with `Host: <api>`; the status and the `X-Served-By` header.
pub fn request(frontend: SocketAddr, api: &str) -> Option<Served> {
    let mut s = TcpStream::connect_timeout(&frontend, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let server = raw.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-served-by")
            .then(|| value.trim().to_string())
    })?;
    Some(Served { status, server })
}
