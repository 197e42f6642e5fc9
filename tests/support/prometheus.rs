//! A real Prometheus on 127.0.0.1 with a temp TSDB, for PromQL response shapes.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::{binary, free_port, wait_ready, Proc};

/// A running Prometheus server (stopped on drop). It scrapes nothing.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with an empty scrape configuration and waits for `/-/ready`.
    pub fn start() -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1s\nscrape_configs: []\n",
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(binary("prometheus"));
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom").display()
            ))
            .arg("--storage.tsdb.retention.time=1d")
            .arg(format!("--web.listen-address={addr}"));
        let mut proc = Proc::spawn("prometheus", cmd, dir.path());
        wait_ready(&mut proc, addr, "/-/ready", Duration::from_secs(30));
        Prometheus {
            proc,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
