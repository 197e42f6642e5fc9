//! A real VictoriaMetrics on 127.0.0.1 with a temp data dir, and helpers to import samples.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::{binary, eventually, free_port, http, wait_ready, Proc};

/// A running VictoriaMetrics single-node server (stopped on drop).
pub struct Victoria {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// One series to import: labels (including `__name__`) and `(unix milliseconds, value)` samples.
pub struct ImportSeries {
    pub labels: Vec<(String, String)>,
    pub samples: Vec<(i64, f64)>,
}

impl ImportSeries {
    pub fn new(name: &str, labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> ImportSeries {
        let mut all = vec![("__name__".to_string(), name.to_string())];
        all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ImportSeries {
            labels: all,
            samples,
        }
    }

    fn json_line(&self) -> String {
        let metric: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let values: Vec<f64> = self.samples.iter().map(|s| s.1).collect();
        let timestamps: Vec<i64> = self.samples.iter().map(|s| s.0).collect();
        serde_json::json!({"metric": metric, "values": values, "timestamps": timestamps})
            .to_string()
    }

    /// `{__name__="…",k="v",…}`, matching exactly this series' labels.
    pub fn selector(&self) -> String {
        let inner: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect();
        format!("{{{}}}", inner.join(","))
    }
}

impl Victoria {
    /// Starts VictoriaMetrics with the flags tests need (no latency offset, no result cache) and
    /// waits for `/health`.
    pub fn start() -> Victoria {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(binary("victoria-metrics"));
        cmd.arg(format!(
            "-storageDataPath={}",
            dir.path().join("vm").display()
        ))
        .arg(format!("-httpListenAddr={addr}"))
        .arg("-retentionPeriod=1d")
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache")
        .arg("-loggerLevel=WARN");
        let mut proc = Proc::spawn("victoria-metrics", cmd, dir.path());
        wait_ready(&mut proc, addr, "/health", Duration::from_secs(20));
        Victoria {
            proc,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Imports `series` through `/api/v1/import` (JSON lines), flushes, and waits until every
    /// imported sample can be exported back.
    pub fn import(&self, series: &[ImportSeries]) {
        let body: String = series.iter().map(|s| s.json_line() + "\n").collect();
        let (status, text) =
            http(self.addr, "POST", "/api/v1/import", body.as_bytes()).expect("import");
        assert_eq!(status, 204, "import answered {status}: {text}");
        for s in series {
            let path = format!("/api/v1/export?match[]={}", encode(&s.selector()));
            eventually(
                &format!("{} to be queryable", s.selector()),
                Duration::from_secs(20),
                || {
                    self.force_flush();
                    let (status, text) = http(self.addr, "GET", &path, b"").ok()?;
                    let exported: usize = text
                        .lines()
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .filter_map(|v| v["values"].as_array().map(|a| a.len()))
                        .sum();
                    (status == 200 && exported >= s.samples.len()).then_some(())
                },
            );
        }
    }

    /// `GET /internal/force_flush`: makes recently imported samples searchable.
    pub fn force_flush(&self) {
        let (status, text) =
            http(self.addr, "GET", "/internal/force_flush", b"").expect("force_flush");
        assert_eq!(status, 200, "force_flush answered {status}: {text}");
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
