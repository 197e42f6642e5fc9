//! Small in-test HTTP servers standing in for broken metrics backends and alert receivers: a
//! fixed answer to every request (recording what was sent), or a server that accepts and never
//! answers.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// How the server answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Every request gets this status, content type and body.
    Answer {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Connections are accepted and read, never answered (held open until the server stops).
    Silent,
    /// Requests are forwarded to `upstream` and its answers returned, except requests whose
    /// body contains `hang_on`: those are read and never answered (a backend that hangs for one
    /// API's queries only).
    Proxy {
        upstream: SocketAddr,
        hang_on: String,
    },
}

/// A running fake server, stopped on drop.
pub struct FakeHttp {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHttp {
    /// Starts on a free port.
    pub fn start(behaviour: Behaviour) -> FakeHttp {
        FakeHttp::start_on(0, behaviour)
    }

    /// Starts on `port` (0: any free port), e.g. a port a client was pointed at earlier.
    pub fn start_on(port: u16, behaviour: Behaviour) -> FakeHttp {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake HTTP server");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (received2, stop2) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                match &behaviour {
                    Behaviour::Silent => held.push(conn),
                    Behaviour::Proxy { upstream, hang_on } => {
                        let (upstream, hang_on) = (*upstream, hang_on.clone());
                        let received = received2.clone();
                        std::thread::spawn(move || proxy(conn, upstream, &hang_on, &received));
                    }
                    Behaviour::Answer {
                        status,
                        content_type,
                        body,
                    } => {
                        let (status, content_type, body) = (*status, *content_type, body.clone());
                        let received = received2.clone();
                        std::thread::spawn(move || {
                            answer(conn, status, content_type, &body, &received)
                        });
                    }
                }
            }
        });
        FakeHttp {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request; records it and returns it with its content type.
fn read_request(
    conn: &mut TcpStream,
    received: &Mutex<Vec<Received>>,
) -> Option<(Received, String)> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |wanted: &str| {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted)
                .then(|| value.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let end = buf.len().min(head_end + length);
    let request = Received {
        method,
        path,
        body: String::from_utf8_lossy(&buf[head_end..end]).to_string(),
    };
    received.lock().unwrap().push(request.clone());
    Some((request, header("content-type").unwrap_or_default()))
}

fn answer(
    mut conn: TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    received: &Mutex<Vec<Received>>,
) {
    if read_request(&mut conn, received).is_none() {
        return;
    }
    let reason = match status {
        200 => "OK",
        422 => "Unprocessable Entity",
        _ => "Status",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.shutdown(Shutdown::Write);
}

fn proxy(
    mut conn: TcpStream,
    upstream: SocketAddr,
    hang_on: &str,
    received: &Mutex<Vec<Received>>,
) {
    let Some((request, content_type)) = read_request(&mut conn, received) else {
        return;
    };
    if request.body.contains(hang_on) || request.path.contains(hang_on) {
        // Hold the connection open, unanswered, until the client gives up.
        let mut sink = [0u8; 1024];
        let _ = conn.set_read_timeout(None);
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
        return;
    }
    let Ok(mut up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return;
    };
    let _ = write!(
        up,
        "{} {} HTTP/1.1\r\nHost: {upstream}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        request.method,
        request.path,
        request.body.len(),
        request.body
    );
    let mut answer = Vec::new();
    let _ = up.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = up.read_to_end(&mut answer);
    let _ = conn.write_all(&answer);
    let _ = conn.shutdown(Shutdown::Write);
}
