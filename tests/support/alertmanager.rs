//! Alertmanager 0.25 for integration tests: started on 127.0.0.1 with a temp dir, alerts read back.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::{binary, free_port, http, wait_ready, Proc};

/// A running Alertmanager, stopped by PID on drop.
pub struct Alertmanager {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts on a free port. With `webhook`, every alert is routed to that URL (group_wait and
    /// group_interval 1 s, resolved notifications on); without, to a receiver that drops them.
    pub fn start(webhook: Option<&str>) -> Alertmanager {
        Alertmanager::start_on(free_port(), webhook)
    }

    /// Starts on `port` (e.g. a port a client was already pointed at) and waits for `/-/ready`.
    pub fn start_on(port: u16, webhook: Option<&str>) -> Alertmanager {
        let dir = tempfile::tempdir().expect("temp dir");
        let receiver = match webhook {
            Some(url) => format!(
                "  - name: \"test\"\n    webhook_configs:\n      - url: \"{url}\"\n        send_resolved: true\n"
            ),
            None => "  - name: \"test\"\n".to_string(),
        };
        let config = format!(
            "route:\n  receiver: \"test\"\n  group_by: [\"alertname\", \"api\"]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n{receiver}"
        );
        let config_path = dir.path().join("am.yml");
        std::fs::write(&config_path, config).expect("write am.yml");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut cmd = Command::new(binary("prometheus-alertmanager"));
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=");
        let mut proc = Proc::spawn("alertmanager", cmd, dir.path());
        wait_ready(&mut proc, addr, "/-/ready", Duration::from_secs(20));
        Alertmanager {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:9093`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /api/v2/alerts` with one `filter=` per matcher (e.g. `api="checkout"`) plus `extra`
    /// raw query parameters (e.g. `active=false`).
    pub fn alerts(&self, matchers: &[&str], extra: &str) -> Vec<serde_json::Value> {
        let mut query: Vec<String> = matchers
            .iter()
            .map(|m| format!("filter={}", encode(m)))
            .collect();
        if !extra.is_empty() {
            query.push(extra.to_string());
        }
        let path = format!("/api/v2/alerts?{}", query.join("&"));
        let (status, body) = http(self.addr, "GET", &path, b"").expect("GET alerts");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("alerts JSON ({e}): {body}"))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
