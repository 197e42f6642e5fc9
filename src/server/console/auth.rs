//! Who is asking, and what they may do: identities from a trusted sign-in proxy's headers or
//! from API tokens (sent as `Authorization: Bearer`, or once at `/signin` for a browser
//! session), roles from the policy's `owners`, `viewers` and `approvers` and the config's
//! admin groups (deny by default), and the CSRF checks of browser writes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::signin::{Sessions, SESSION_COOKIE};

use crate::policy::{ConsoleConfig, Policy, ProxyConfig};

/// A token's owner, with the token's hash (the token itself is never kept).
#[derive(Debug, Clone)]
struct Token {
    user: String,
    groups: Vec<String>,
    sha256: [u8; 32],
}

/// Sign-in settings, resolved at start (token hashes read from their files).
#[derive(Debug, Clone)]
pub struct Auth {
    admin_groups: Vec<String>,
    proxy: Option<ProxyConfig>,
    tokens: Vec<Token>,
    /// Key of the CSRF tokens (random per process).
    csrf_key: [u8; 32],
    /// Browsers signed in with a token at `/signin`.
    sessions: Arc<Sessions>,
}

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// No sign-in configured: everyone reads, nobody writes.
    Anonymous,
    /// Headers of the trusted sign-in proxy (a browser session: writes need the CSRF token).
    Proxy,
    /// `Authorization: Bearer` with a configured token.
    Token,
    /// A browser session opened at `/signin` with a configured token (writes need the CSRF
    /// token).
    Session,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Anonymous => "anonymous",
            Via::Proxy => "proxy",
            Via::Token => "token",
            Via::Session => "session",
        }
    }
}

/// The signed-in user (or the anonymous reader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub via: Via,
}

/// Why a request carries no usable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Sign-in is configured and the request has no credentials.
    Missing,
    /// A bearer token that matches no configured hash.
    BadToken,
}

/// What a user may do on one API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Not even see it.
    None,
    Viewer,
    /// See it and approve gates.
    Approver,
    /// See it and act.
    Owner,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Owner => "owner",
            Role::Admin => "admin",
        }
    }
}

impl Auth {
    /// Reads the token hashes named by `config`; an unreadable or malformed one is an error.
    pub fn from_config(config: &ConsoleConfig) -> Result<Auth, String> {
        let mut tokens = Vec::new();
        for t in &config.tokens {
            let sha256 = t
                .sha256
                .resolve()
                .map_err(|e| format!("console token of {}: {e}", t.user))?;
            tokens.push(Token {
                user: t.user.clone(),
                groups: t.groups.clone(),
                sha256,
            });
        }
        let mut csrf_key = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut csrf_key);
        Ok(Auth {
            admin_groups: config.admin_groups.clone(),
            proxy: config.proxy.clone(),
            tokens,
            csrf_key,
            sessions: Arc::new(Sessions::new(config.session_lifetime)),
        })
    }

    /// No sign-in: read-only for everyone.
    pub fn read_only() -> Auth {
        Auth::from_config(&ConsoleConfig::default()).unwrap_or_else(|_| unreachable!())
    }

    pub fn configured(&self) -> bool {
        self.proxy.is_some() || !self.tokens.is_empty()
    }

    /// Whether API tokens are configured (and so the `/signin` page offered).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The owner of `token`, compared in constant time against every configured hash.
    pub fn token_identity(&self, token: &str) -> Option<Identity> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every hash is compared in full, whichever matches.
        let found = self.tokens.iter().fold(None, |found, t| {
            found.or(constant_eq(&t.sha256, &hash).then_some(t))
        })?;
        Some(Identity {
            user: found.user.clone(),
            groups: found.groups.clone(),
            via: Via::Token,
        })
    }

    /// The identity of a request from `peer` with `headers`, now.
    pub fn identify(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        self.identify_at(peer, headers, Timestamp::now())
    }

    /// The identity of a request from `peer` with `headers` at `now`: a bearer token, else the
    /// proxy's headers (only from the configured proxy addresses; from anywhere else they are
    /// ignored), else a session cookie from `/signin`.
    pub fn identify_at(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
        now: Timestamp,
    ) -> Result<Identity, AuthError> {
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or(AuthError::BadToken)?;
            return self.token_identity(token).ok_or(AuthError::BadToken);
        }
        if let (Some(proxy), Some(peer)) = (&self.proxy, peer) {
            if proxy.addresses.iter().any(|net| net.contains(peer)) {
                let user = headers
                    .get(proxy.user_header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|u| !u.is_empty());
                if let Some(user) = user {
                    let groups = headers
                        .get_all(proxy.groups_header.as_str())
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(','))
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect();
                    return Ok(Identity {
                        user: user.to_string(),
                        groups,
                        via: Via::Proxy,
                    });
                }
            }
        }
        if self.has_tokens() {
            let session =
                cookie(headers, SESSION_COOKIE).and_then(|id| self.sessions.identity(&id, now));
            if let Some(who) = session {
                return Ok(who);
            }
        }
        if self.configured() {
            Err(AuthError::Missing)
        } else {
            Ok(Identity {
                user: "anonymous".into(),
                groups: Vec::new(),
                via: Via::Anonymous,
            })
        }
    }

    pub fn is_admin(&self, who: &Identity) -> bool {
        who.groups.iter().any(|g| self.admin_groups.contains(g))
    }

    /// What `who` may do on `policy`'s API (`None`: an API without a loaded policy, visible to
    /// admins and, without sign-in, to everyone).
    pub fn role(&self, who: &Identity, policy: Option<&Policy>) -> Role {
        if who.via == Via::Anonymous {
            return Role::Viewer;
        }
        if self.is_admin(who) {
            return Role::Admin;
        }
        let Some(policy) = policy else {
            return Role::None;
        };
        let member = |list: &[String]| who.groups.iter().any(|g| list.contains(g));
        if member(&policy.access.owners) {
            Role::Owner
        } else if member(&policy.access.approvers) {
            Role::Approver
        } else if member(&policy.access.viewers) {
            Role::Viewer
        } else {
            Role::None
        }
    }

    /// The CSRF token of `user`'s browser session.
    pub fn csrf_token(&self, user: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.csrf_key).expect("any key length");
        mac.update(b"greenlight-csrf\0");
        mac.update(user.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `who` is a browser session (whose writes need the CSRF checks).
    pub fn is_browser(who: &Identity) -> bool {
        matches!(who.via, Via::Proxy | Via::Session)
    }

    /// Refuses a request from another site: its Origin (or Sec-Fetch-Site) must be this
    /// console.
    pub fn same_origin(&self, headers: &HeaderMap) -> Result<(), String> {
        let host = headers
            .get("x-forwarded-host")
            .or_else(|| headers.get(axum::http::header::HOST))
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
            if host.is_empty() || !authority.eq_ignore_ascii_case(host) {
                return Err(format!(
                    "cross-site request refused: it comes from {origin}, not from this console"
                ));
            }
        } else if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("");
            if site != "same-origin" && site != "none" {
                return Err(format!(
                    "cross-site request refused (Sec-Fetch-Site: {site})"
                ));
            }
        }
        Ok(())
    }

    /// Checks a browser write: same origin (Origin or Sec-Fetch-Site), and the session's CSRF
    /// token both in the `X-CSRF-Token` header and in the `SameSite=Strict` cookie. Bearer-token
    /// requests need none of this (a browser cannot send them cross-site).
    pub fn check_csrf(&self, who: &Identity, headers: &HeaderMap) -> Result<(), String> {
        let header = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.check_form_csrf(who, headers, header)
    }

    /// [`Auth::check_csrf`] for a form post, whose CSRF token is the `field` it sent.
    pub fn check_form_csrf(
        &self,
        who: &Identity,
        headers: &HeaderMap,
        header: &str,
    ) -> Result<(), String> {
        if !Auth::is_browser(who) {
            return Ok(());
        }
        self.same_origin(headers)?;
        let expected = self.csrf_token(&who.user);
        let cookie = cookie(headers, CSRF_COOKIE).unwrap_or_default();
        if !constant_eq(header.as_bytes(), expected.as_bytes())
            || !constant_eq(cookie.as_bytes(), expected.as_bytes())
        {
            return Err(
                "missing or wrong CSRF token: reload the console page and try again".into(),
            );
        }
        Ok(())
    }
}

impl Auth {
    /// A fresh CSRF token of the sign-in form: a random nonce and its MAC.
    pub fn signin_token(&self) -> String {
        let mut nonce = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut nonce);
        let nonce = hex(&nonce);
        format!("{nonce}.{}", self.signin_mac(&nonce))
    }

    /// Whether the sign-in form sent back the token of its cookie, and it is one of ours.
    pub fn signin_token_matches(&self, field: &str, cookie: &str) -> bool {
        let Some((nonce, mac)) = field.split_once('.') else {
            return false;
        };
        constant_eq(field.as_bytes(), cookie.as_bytes())
            && constant_eq(mac.as_bytes(), self.signin_mac(nonce).as_bytes())
    }

    fn signin_mac(&self, nonce: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.csrf_key).expect("any key length");
        mac.update(b"greenlight-signin\0");
        mac.update(nonce.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

/// Name of the CSRF cookie.
pub const CSRF_COOKIE: &str = "greenlight_csrf";

/// The `Set-Cookie` value carrying `token`.
pub fn csrf_cookie(token: &str) -> String {
    format!("{CSRF_COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly")
}

/// The value of cookie `name` in `headers`.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{IpNet, TokenConfig, TokenHash};
    use axum::http::HeaderValue;

    fn auth() -> Auth {
        let config = ConsoleConfig {
            public_url: None,
            admin_groups: vec!["platform".into()],
            proxy: Some(ProxyConfig {
                addresses: vec![IpNet::parse("10.0.0.7").unwrap()],
                user_header: "x-forwarded-user".into(),
                groups_header: "x-forwarded-groups".into(),
            }),
            tokens: vec![TokenConfig {
                user: "bot".into(),
                groups: vec!["payments".into()],
                sha256: TokenHash::Inline(Sha256::digest(b"t0ken").into()),
            }],
            ..ConsoleConfig::default()
        };
        Auth::from_config(&config).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn proxy_headers_count_only_from_the_proxy() {
        let a = auth();
        let h = headers(&[
            ("x-forwarded-user", "ana"),
            ("x-forwarded-groups", "payments, search"),
        ]);
        let who = a.identify(Some("10.0.0.7".parse().unwrap()), &h).unwrap();
        assert_eq!(who.user, "ana");
        assert_eq!(who.groups, ["payments", "search"]);
        assert_eq!(
            a.identify(Some("10.0.0.8".parse().unwrap()), &h),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn tokens_are_matched_by_hash_and_a_wrong_one_is_refused() {
        let a = auth();
        let who = a
            .identify(None, &headers(&[("authorization", "Bearer t0ken")]))
            .unwrap();
        assert_eq!((who.user.as_str(), who.via), ("bot", Via::Token));
        assert_eq!(
            a.identify(None, &headers(&[("authorization", "Bearer nope")])),
            Err(AuthError::BadToken)
        );
    }

    #[test]
    fn a_session_cookie_identifies_its_browser_and_a_forged_form_token_is_refused() {
        let a = auth();
        let now = Timestamp::from_second(1_767_571_200).unwrap();
        let id = a.sessions().create("bot", &["payments".into()], now);
        let h = headers(&[("cookie", &format!("theme=dark; {SESSION_COOKIE}={id}"))]);
        let who = a.identify_at(None, &h, now).unwrap();
        assert_eq!((who.user.as_str(), who.via), ("bot", Via::Session));
        let forged = headers(&[("cookie", &format!("{SESSION_COOKIE}=00{}", &id[2..]))]);
        assert_eq!(a.identify_at(None, &forged, now), Err(AuthError::Missing));

        let t = a.signin_token();
        assert!(a.signin_token_matches(&t, &t));
        assert!(
            !a.signin_token_matches(&t, "other"),
            "field and cookie differ"
        );
        let (nonce, _) = t.split_once('.').unwrap();
        let made_up = format!("{nonce}.{}", "0".repeat(64));
        assert!(!a.signin_token_matches(&made_up, &made_up), "not our MAC");
    }

    #[test]
    fn csrf_needs_same_origin_and_the_token_in_header_and_cookie() {
        let a = auth();
        let who = Identity {
            user: "ana".into(),
            groups: vec![],
            via: Via::Proxy,
        };
        let token = a.csrf_token("ana");
        let cookie = format!("{CSRF_COOKIE}={token}");
        let ok = headers(&[
            ("host", "console.example"),
            ("origin", "https://console.example"),
            ("x-csrf-token", &token),
            ("cookie", &cookie),
        ]);
        assert_eq!(a.check_csrf(&who, &ok), Ok(()));
        let cross = headers(&[
            ("host", "console.example"),
            ("origin", "https://evil.example"),
            ("x-csrf-token", &token),
            ("cookie", &cookie),
        ]);
        assert!(a
            .check_csrf(&who, &cross)
            .unwrap_err()
            .contains("cross-site"));
        let no_cookie = headers(&[
            ("host", "console.example"),
            ("origin", "https://console.example"),
            ("x-csrf-token", &token),
        ]);
        assert!(a.check_csrf(&who, &no_cookie).unwrap_err().contains("CSRF"));
        // Another user's token does not do.
        let other = a.csrf_token("bob");
        let h = headers(&[
            ("host", "console.example"),
            ("x-csrf-token", &other),
            ("cookie", &format!("{CSRF_COOKIE}={other}")),
        ]);
        assert!(a.check_csrf(&who, &h).is_err());
    }
}
