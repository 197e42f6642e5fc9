//! A small W3C WebDriver client over reqwest, driving the Debian `chromium` headless through
//! `chromedriver` (both from apt; nothing is downloaded). Screenshots go to
//! `target/screenshots/`, which CI keeps.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::{binary, eventually, free_port, Proc};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; chromedriver and the browser stop on drop.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    session: String,
    _driver: Proc,
    _dir: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = std::process::Command::new(binary("chromedriver"));
        cmd.arg(format!("--port={port}"));
        let driver = Proc::spawn("chromedriver", cmd, dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = {
            let _in_runtime = rt.enter();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
        };
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver", Duration::from_secs(20), || {
            let r = rt
                .block_on(async { client.get(format!("{base}/status")).send().await })
                .ok()?;
            let v: Value = rt.block_on(r.json()).ok()?;
            (v["value"]["ready"] == true).then_some(())
        });
        let profile = dir.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary("chromium").to_string_lossy(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let r = rt
            .block_on(async {
                client
                    .post(format!("{base}/session"))
                    .json(&caps)
                    .send()
                    .await
            })
            .expect("new session");
        let v: Value = rt.block_on(r.json()).unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser {
            rt,
            client,
            base,
            session,
            _driver: driver,
            _dir: dir,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = self
            .rt
            .block_on(async { req.send().await })
            .expect("webdriver request");
        let v: Value = self.rt.block_on(r.json()).unwrap_or(Value::Null);
        v["value"].clone()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None)
    }

    /// Every request the browser makes from now on carries `headers` (what a sign-in proxy
    /// in front of the console adds).
    pub fn set_headers(&self, headers: &[(&str, &str)]) {
        let map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Network.enable", "params": {}}),
        );
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Network.setExtraHTTPHeaders", "params": {"headers": map}}),
        );
    }

    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// The page's HTML now.
    pub fn source(&self) -> String {
        self.get("/source").as_str().unwrap_or("").to_string()
    }

    /// Waits until the page's HTML satisfies `f`.
    pub fn wait_source(&self, what: &str, deadline: Duration, f: impl Fn(&str) -> bool) -> String {
        eventually(what, deadline, || Some(self.source()).filter(|s| f(s)))
    }

    fn element(&self, css: &str) -> Option<String> {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().map(String::from)
    }

    /// Waits for the element matching `css`.
    pub fn find(&self, css: &str) -> String {
        eventually(css, Duration::from_secs(10), || self.element(css))
    }

    pub fn exists(&self, css: &str) -> bool {
        self.element(css).is_some()
    }

    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.post(&format!("/element/{id}/click"), json!({}));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.post(&format!("/element/{id}/clear"), json!({}));
        self.post(&format!("/element/{id}/value"), json!({ "text": text }));
    }

    pub fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.get(&format!("/element/{id}/text"))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Runs `script` (an async function body calling `arguments[0]` with its result).
    pub fn run_async(&self, script: &str) -> Value {
        self.post("/execute/async", json!({"script": script, "args": []}))
    }

    /// Accepts a `confirm()` dialog, if one is open.
    pub fn accept_dialog(&self) -> bool {
        let v = self.post("/alert/accept", json!({}));
        v.is_null()
    }

    /// Saves a PNG of the page under `target/screenshots/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.get("/screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("screenshot"))
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The cookies the browser holds for the current page (HttpOnly ones included), as
    /// WebDriver reports them (`name`, `value`, `httpOnly`, `sameSite`, `secure`, `expiry`).
    pub fn cookies(&self) -> Vec<Value> {
        self.get("/cookie").as_array().cloned().unwrap_or_default()
    }

    /// The page's URL now.
    pub fn url(&self) -> String {
        self.get("/url").as_str().unwrap_or("").to_string()
    }

    /// Makes the window `width` × `height` (before a screenshot).
    pub fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height}));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self
            .rt
            .block_on(async { self.client.delete(url).send().await });
    }
}
