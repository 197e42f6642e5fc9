//! The console's side of the harness: a daemon with sign-in configured, tokens and their
//! hashes, and HTTP requests with headers and a chosen source address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::eventually;

/// Token of the `payments` team's deploy bot (owner of `checkout`).
pub const OWNER_TOKEN: &str = "gl-owner-7f3a9c-not-a-real-secret";
/// Token of a `search` team member (viewer of `checkout`).
pub const VIEWER_TOKEN: &str = "gl-viewer-21be0d-not-a-real-secret";
/// Token of a `billing` member (may not see `checkout` at all).
pub const OUTSIDER_TOKEN: &str = "gl-outsider-90aa11-not-a-real-secret";

pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Top-level policy lines giving `checkout` to `payments`, read-only to `search`.
pub const ACCESS: &str = r#"owners = ["payments"]
viewers = ["search"]
approvers = ["release-managers"]"#;

/// A `[console]` section: the proxy on 127.0.0.1 only, and the three tokens.
pub fn console_section() -> String {
    format!(
        r#"
[console]
admin_groups = ["platform"]
[console.proxy]
addresses = ["127.0.0.1/32"]
[[console.token]]
user = "deploy-bot"
groups = ["payments"]
sha256 = "{}"
[[console.token]]
user = "sam"
groups = ["search"]
sha256 = "{}"
[[console.token]]
user = "bill"
groups = ["billing"]
sha256 = "{}"
"#,
        sha256_hex(OWNER_TOKEN),
        sha256_hex(VIEWER_TOKEN),
        sha256_hex(OUTSIDER_TOKEN)
    )
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request to `addr`, from `from` (a loopback source address) when given.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    from: Option<IpAddr>,
) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .local_address(from)
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client.request(method, format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        // Not listening (yet): status 0.
        let Ok(resp) = req.send().await else {
            return Answer {
                status: 0,
                headers: Default::default(),
                body: String::new(),
            };
        };
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap_or_default(),
        }
    })
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(addr, "GET", path, headers, None, None)
}

/// `POST /api/v1/rollouts/<api>/actions` with a JSON body and a bearer token.
pub fn act(addr: SocketAddr, token: &str, api: &str, body: &str) -> Answer {
    let auth = format!("Bearer {token}");
    request(
        addr,
        "POST",
        &format!("/api/v1/rollouts/{api}/actions"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
        None,
    )
}

/// Waits until the daemon at `addr` answers `/healthz` and knows `api`.
pub fn wait_ready(addr: SocketAddr, token: &str, api: &str) {
    let auth = format!("Bearer {token}");
    eventually("the console", Duration::from_secs(30), || {
        let ok = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        if !ok {
            return None;
        }
        let a = get(
            addr,
            &format!("/api/v1/rollouts/{api}"),
            &[("Authorization", &auth)],
        );
        (a.status == 200).then_some(())
    });
}

/// The `Set-Cookie` header of `answer` that sets cookie `name`, whole (value and attributes).
pub fn set_cookie(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(String::from)
}

/// The value a `Set-Cookie` header gives its cookie.
pub fn cookie_value(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap_or("");
    first
        .split_once('=')
        .map(|(_, v)| v)
        .unwrap_or("")
        .to_string()
}

/// `%`-encodes a form field.
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `content` of the page's `<meta name="csrf-token">`.
pub fn page_csrf(html: &str) -> Option<String> {
    let rest = html.split(r#"<meta name="csrf-token" content=""#).nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

/// Signs in at `/signin` with `token` as a browser would: fetches the form (its CSRF cookie
/// and field), then posts it from this console's origin. The answer to the post.
pub fn sign_in(addr: SocketAddr, token: &str) -> Answer {
    let form = get(
        addr,
        "/signin?next=%2Fapis%2Fcheckout",
        &[("Accept", "text/html")],
    );
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = cookie_value(&set_cookie(&form, "greenlight_signin").expect("the form's cookie"));
    assert!(
        form.body
            .contains(&format!(r#"name="csrf" value="{csrf}""#)),
        "{}",
        form.body
    );
    let body = format!(
        "csrf={}&next=%2Fapis%2Fcheckout&token={}",
        form_encode(&csrf),
        form_encode(token)
    );
    let origin = format!("http://{addr}");
    let cookie = format!("greenlight_signin={csrf}");
    request(
        addr,
        "POST",
        "/signin",
        &[
            ("Origin", &origin),
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(&body),
        None,
    )
}
