//! Who is asking, and what they may do: identities from a trusted sign-in proxy's headers or
//! from API tokens, roles from the policy's `owners`, `viewers` and `approvers` and the config's
//! admin groups (deny by default), and the CSRF checks of browser writes.

use std::net::IpAddr;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

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
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Anonymous => "anonymous",
            Via::Proxy => "proxy",
            Via::Token => "token",
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
        })
    }

    /// No sign-in: read-only for everyone.
    pub fn read_only() -> Auth {
        Auth::from_config(&ConsoleConfig::default()).unwrap_or_else(|_| unreachable!())
    }

    pub fn configured(&self) -> bool {
        self.proxy.is_some() || !self.tokens.is_empty()
    }

    /// The identity of a request from `peer` with `headers`. Proxy headers count only from the
    /// configured proxy addresses; from anywhere else they are ignored.
    pub fn identify(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or(AuthError::BadToken)?;
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Every hash is compared in full, whichever matches.
            let found = self.tokens.iter().fold(None, |found, t| {
                found.or(constant_eq(&t.sha256, &hash).then_some(t))
            });
            return match found {
                Some(t) => Ok(Identity {
                    user: t.user.clone(),
                    groups: t.groups.clone(),
                    via: Via::Token,
                }),
                None => Err(AuthError::BadToken),
            };
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

    /// Checks a browser write: same origin (Origin or Sec-Fetch-Site), and the session's CSRF
    /// token both in the `X-CSRF-Token` header and in the `SameSite=Strict` cookie. Bearer-token
    /// requests need none of this (a browser cannot send them cross-site).
    pub fn check_csrf(&self, who: &Identity, headers: &HeaderMap) -> Result<(), String> {
        if who.via != Via::Proxy {
            return Ok(());
        }
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
        let expected = self.csrf_token(&who.user);
        let header = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
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

/// Name of the CSRF cookie.
pub const CSRF_COOKIE: &str = "greenlight_csrf";

/// The `Set-Cookie` value carrying `token`.
pub fn csrf_cookie(token: &str) -> String {
    format!("{CSRF_COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
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
