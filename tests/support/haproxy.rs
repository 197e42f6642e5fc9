//! A real HAProxy 2.6 in front of two tiny in-test HTTP servers (blue and green), with its
//! Runtime API on a TCP port and a unix socket.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{binary, eventually, free_port, Proc};

pub const BACKEND: &str = "api_checkout";

/// An HTTP server answering 200 `ok` to everything, on a background thread.
pub struct TinyServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TinyServer {
    pub fn start(name: &'static str) -> TinyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tiny server");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || answer(&mut conn, name));
            }
        });
        TinyServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

fn answer(conn: &mut TcpStream, name: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    // Read the request head (health checks connect and close without sending anything).
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = format!("ok from {name}\n");
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.shutdown(Shutdown::Write);
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// HAProxy with backend `api_checkout` (servers `blue` weight 100, `green` weight 0).
pub struct Haproxy {
    pub proc: Proc,
    pub app: SocketAddr,
    pub admin: SocketAddr,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    pub blue: TinyServer,
    pub green: TinyServer,
}

impl Haproxy {
    pub fn start() -> Haproxy {
        Haproxy::start_with(false)
    }

    /// With `server-state-file <dir>/server-state` and `load-server-state-from-file global`, the
    /// setup the README recommends (see [`Haproxy::save_server_state`]).
    pub fn start_with_state_file() -> Haproxy {
        Haproxy::start_with(true)
    }

    fn start_with(state_file: bool) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let blue = TinyServer::start("blue");
        let green = TinyServer::start("green");
        let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stats_port = free_port();
        let socket = dir.path().join("admin.sock");
        let (global_state, defaults_state) = if state_file {
            let path = dir.path().join("server-state");
            (
                format!("    server-state-file {}\n", path.display()),
                "    load-server-state-from-file global\n",
            )
        } else {
            (String::new(), "")
        };
        let cfg = format!(
            "global
    stats socket {sock} mode 600 level admin
    stats socket ipv4@{admin} level admin
    stats timeout 30s
    log stderr format raw local0 info
{global_state}defaults
{defaults_state}    mode http
    log global
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe_app
    bind {app}
    option httplog
    default_backend {BACKEND}
backend {BACKEND}
    balance roundrobin
    http-response set-header X-Served-By %[srv_name]
    server blue  {blue} weight 100 check inter 1s
    server green {green} weight 0   check inter 1s
frontend fe_stats
    bind 127.0.0.1:{stats_port}
    no log
    http-request use-service prometheus-exporter if {{ path /metrics }}
",
            sock = socket.display(),
            blue = blue.addr,
            green = green.addr,
        );
        let proc = spawn(&cfg, dir.path(), admin);
        Haproxy {
            proc,
            app,
            admin,
            socket,
            dir,
            blue,
            green,
        }
    }

    /// `tcp://127.0.0.1:<admin port>`.
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.admin)
    }

    /// The PID in `show info`: the process that answers the Runtime API.
    pub fn answering_pid(&self) -> Option<u32> {
        let info = runtime_tcp(self.admin, "show info").ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid: "))?
            .trim()
            .parse()
            .ok()
    }

    /// Writes `show servers state` to `<dir>/server-state`, as an operator's reload hook does.
    pub fn save_server_state(&self) {
        let state = self.runtime("show servers state");
        assert!(state.starts_with("1\n"), "unexpected server state: {state}");
        std::fs::write(self.dir.path().join("server-state"), state).expect("write server state");
    }

    /// Reloads HAProxy as an operator's `haproxy -sf <pid>` (or a service reload) does: a new
    /// process on the same configuration takes over the sockets and the old one finishes.
    /// Returns once the new process answers the Runtime API and the old one has exited.
    pub fn reload(&mut self) {
        reload(&mut self.proc, self.dir.path(), self.admin);
    }

    /// `unix://<temp dir>/admin.sock`.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Sends one raw Runtime API line over TCP, as an operator with socat would.
    pub fn runtime(&self, line: &str) -> String {
        runtime_tcp(self.admin, line).expect("Runtime API command")
    }

    /// One request through the frontend; the server named in `X-Served-By`.
    pub fn served_by(&self) -> String {
        let mut s = TcpStream::connect_timeout(&self.app, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: checkout\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read response");
        assert!(
            raw.starts_with("HTTP/1.1 200"),
            "unexpected response: {raw}"
        );
        raw.lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-served-by")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no X-Served-By in {raw}"))
    }

    /// Sends `n` requests and counts them per serving server.
    pub fn split(&self, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            *counts.entry(self.served_by()).or_insert(0) += 1;
        }
        counts
    }
}

/// Writes `cfg` to `dir/haproxy.cfg`, starts HAProxy in the foreground and waits (with a
/// deadline) until its Runtime API answers on `admin`.
pub fn spawn(cfg: &str, dir: &Path, admin: SocketAddr) -> Proc {
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).expect("write haproxy.cfg");
    let mut cmd = Command::new(binary("haproxy"));
    cmd.arg("-db").arg("-f").arg(&cfg_path);
    let mut proc = Proc::spawn("haproxy", cmd, dir);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        proc.assert_running();
        if runtime_tcp(admin, "show info").is_ok_and(|r| r.contains("Name: HAProxy")) {
            return proc;
        }
        if Instant::now() > until {
            panic!(
                "haproxy Runtime API not ready on {admin}; output:\n{}",
                proc.output()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Reloads the HAProxy `proc` (configuration `dir/haproxy.cfg`, Runtime API on `admin`) as
/// an operator's `haproxy -sf <pid>` (or a service reload) does: a new process on the same
/// configuration takes over the sockets and the old one finishes. Returns once the new process
/// answers the Runtime API and the old one has exited.
pub fn reload(proc: &mut Proc, dir: &Path, admin: SocketAddr) {
    let old = proc.pid();
    let mut cmd = Command::new(binary("haproxy"));
    cmd.arg("-db")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .arg("-sf")
        .arg(old.to_string());
    let mut new = Proc::spawn(&format!("haproxy-after-{old}"), cmd, dir);
    let pid = format!("Pid: {}", new.pid());
    eventually(
        "the reloaded HAProxy to answer and the old one to exit",
        Duration::from_secs(15),
        || {
            new.assert_running();
            let old_gone = matches!(proc.child.try_wait(), Ok(Some(_)));
            let answers =
                runtime_tcp(admin, "show info").is_ok_and(|i| i.lines().any(|l| l == pid));
            (old_gone && answers).then_some(())
        },
    );
    *proc = new;
}

/// Sends one Runtime API line over TCP and reads the reply to EOF.
pub fn runtime_tcp(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sends one raw Runtime API line over a unix socket.
pub fn runtime_unix(path: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
