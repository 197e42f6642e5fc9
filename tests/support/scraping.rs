//! A real VictoriaMetrics that scrapes targets every second (`-promscrape.config`), as in
//! production, instead of being fed by imports.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::{binary, free_port, http, wait_ready, Proc};

/// A VictoriaMetrics that scrapes `targets` every second (stopped by PID on drop).
pub struct ScrapingVictoria {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ScrapingVictoria {
    /// Starts VictoriaMetrics with `-promscrape.config` listing `targets` as `job → addresses`
    /// (1 s scrape interval), no latency offset and no result cache; waits for `/health`.
    pub fn start(targets: &[(&str, Vec<SocketAddr>)]) -> ScrapingVictoria {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = scrape_config(targets);
        let config_path = dir.path().join("scrape.yml");
        std::fs::write(&config_path, config).expect("write scrape.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(binary("victoria-metrics"));
        cmd.arg(format!(
            "-storageDataPath={}",
            dir.path().join("vm").display()
        ))
        .arg(format!("-httpListenAddr={addr}"))
        .arg(format!("-promscrape.config={}", config_path.display()))
        .arg("-retentionPeriod=1d")
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache")
        .arg("-loggerLevel=WARN");
        let mut proc = Proc::spawn("victoria-metrics", cmd, dir.path());
        wait_ready(&mut proc, addr, "/health", Duration::from_secs(20));
        ScrapingVictoria {
            proc,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /internal/force_flush`: makes the newest scraped samples searchable now.
    pub fn force_flush(&self) -> bool {
        matches!(
            http(self.addr, "GET", "/internal/force_flush", b""),
            Ok((200, _))
        )
    }

    /// The value of an instant query returning one series, if it does.
    pub fn scalar(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", super::victoria::encode(query));
        let (status, body) = http(self.addr, "GET", &path, b"").ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

/// A Prometheus scrape configuration: one job per entry, every target scraped each second.
pub fn scrape_config(targets: &[(&str, Vec<SocketAddr>)]) -> String {
    let mut out =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (job, addrs) in targets {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        out.push_str(&format!(
            "  - job_name: \"{job}\"\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ));
    }
    out
}
