//! `[console]`: who may sign in to the console and the JSON API, and how.
//!
//! ```toml
//! [console]
//! admin_groups = ["platform"]
//! [console.proxy]                      # a sign-in proxy such as oauth2-proxy in front
//! addresses = ["10.0.0.7/32"]          # only requests from these addresses carry identities
//! user_header = "X-Forwarded-User"
//! groups_header = "X-Forwarded-Groups"
//! [[console.token]]                    # API tokens for scripts
//! user = "deploy-bot"
//! groups = ["payments"]
//! sha256 = "9f86d081…"                 # SHA-256 of the token, hex; or { file = "…" }
//! session_lifetime = "12h"             # a browser signed in with a token at /signin stays so
//! ```
//! Without `[console.proxy]` and `[[console.token]]` the console is read-only for everyone and
//! `listen` must be a loopback address.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::config_raw::RawSecret;
use super::limits::{duration_in, DurationRange};
use super::located::{shown, Errors};
use super::secret::Secret;
use super::validate::validate_groups;
use super::values::{HumanDuration, Table};

/// How long a browser signed in with a token (`/signin`) stays signed in, by default.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// `console.session_lifetime`.
const SESSION_LIFETIME: DurationRange = DurationRange {
    min: Duration::from_secs(1),
    max: Duration::from_secs(7 * 86_400),
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    /// The URL people reach the console at (behind a proxy: the proxy's), for links in
    /// alerts. Default: none (alerts carry no console link).
    #[serde(default)]
    pub(super) public_url: Option<Spanned<String>>,
    /// Groups that may see and act on every API. Default: none.
    #[serde(default)]
    pub(super) admin_groups: Vec<Spanned<String>>,
    /// `[console.proxy]`: identities from a sign-in proxy's headers.
    #[serde(default)]
    pub(super) proxy: Option<Spanned<Table<RawProxy>>>,
    /// `[[console.token]]`: API tokens.
    #[serde(default, rename = "token")]
    pub(super) tokens: Vec<Spanned<Table<RawToken>>>,
    /// How long a browser stays signed in after `/signin` with a token. Default `"12h"`.
    #[serde(default)]
    pub(super) session_lifetime: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    /// Addresses or CIDR ranges of the proxy. Required.
    pub(super) addresses: Vec<Spanned<String>>,
    /// Default `"X-Forwarded-User"`.
    #[serde(default)]
    pub(super) user_header: Option<Spanned<String>>,
    /// Comma-separated groups. Default `"X-Forwarded-Groups"`.
    #[serde(default)]
    pub(super) groups_header: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) user: Spanned<String>,
    #[serde(default)]
    pub(super) groups: Vec<Spanned<String>>,
    /// Hex SHA-256 of the token, or a file holding it: `{ file = "…" }`.
    pub(super) sha256: Spanned<RawHash>,
}

/// A token hash written in place or kept in a file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawHash {
    Hex(String),
    File(RawSecret),
}

/// The validated `[console]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleConfig {
    /// The URL people reach the console at, without a trailing `/`; alerts link to
    /// `<public_url>/apis/<api>`. Default: none.
    pub public_url: Option<String>,
    pub admin_groups: Vec<String>,
    pub proxy: Option<ProxyConfig>,
    pub tokens: Vec<TokenConfig>,
    /// How long a browser stays signed in after `/signin` with a token.
    pub session_lifetime: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> ConsoleConfig {
        ConsoleConfig {
            public_url: None,
            admin_groups: Vec::new(),
            proxy: None,
            tokens: Vec::new(),
            session_lifetime: DEFAULT_SESSION_LIFETIME,
        }
    }
}

impl ConsoleConfig {
    /// Whether anyone can sign in; without it the console is read-only.
    pub fn auth_configured(&self) -> bool {
        self.proxy.is_some() || !self.tokens.is_empty()
    }
}

/// A trusted sign-in proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub addresses: Vec<IpNet>,
    /// Header names, lower case.
    pub user_header: String,
    pub groups_header: String,
}

/// One API token: whose it is and the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenConfig {
    pub user: String,
    pub groups: Vec<String>,
    pub sha256: TokenHash,
}

/// Where a token's hash is.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenHash {
    /// 32 bytes.
    Inline([u8; 32]),
    /// Read (hex) at start; the daemon refuses to start when it is not 64 hex digits.
    File(Secret),
}

impl TokenHash {
    /// The 32 bytes of the hash.
    pub fn resolve(&self) -> Result<[u8; 32], String> {
        match self {
            TokenHash::Inline(h) => Ok(*h),
            TokenHash::File(s) => {
                let text = s.resolve().map_err(|e| e.to_string())?;
                parse_hex32(text.trim())
                    .ok_or_else(|| "the file does not hold a SHA-256 in hex (64 digits)".into())
            }
        }
    }
}

/// An address range: an address and the number of leading bits that must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// `10.0.0.0/8`, `::1/128`, or a bare address (all bits).
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// 64 hex digits as 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn header(
    raw: &Option<Spanned<String>>,
    default: &str,
    field: &str,
    errors: &mut Errors<'_>,
) -> String {
    let Some(h) = raw else {
        return default.to_ascii_lowercase();
    };
    let name = h.get_ref();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        errors.at(
            h.span(),
            format!(
                "{field} must be an HTTP header name such as \"{default}\", got {}",
                shown(name)
            ),
        );
    }
    name.to_ascii_lowercase()
}

impl RawConsole {
    pub(super) fn validate(&self, base: &Path, errors: &mut Errors<'_>) -> ConsoleConfig {
        let admin_groups = validate_groups(&self.admin_groups, "console.admin_groups", errors);
        let proxy = self.proxy.as_ref().map(|p| {
            let raw = p.get_ref();
            if raw.addresses.is_empty() {
                errors.at(
                    p.span(),
                    "console.proxy.addresses must name the sign-in proxy's addresses (e.g. \"10.0.0.7/32\")",
                );
            }
            let mut addresses = Vec::new();
            for a in &raw.addresses {
                match IpNet::parse(a.get_ref()) {
                    Some(net) => addresses.push(net),
                    None => errors.at(
                        a.span(),
                        format!(
                            "console.proxy.addresses: expected an address or range such as \"10.0.0.0/8\", got {}",
                            shown(a.get_ref())
                        ),
                    ),
                }
            }
            ProxyConfig {
                addresses,
                user_header: header(&raw.user_header, "X-Forwarded-User", "console.proxy.user_header", errors),
                groups_header: header(
                    &raw.groups_header,
                    "X-Forwarded-Groups",
                    "console.proxy.groups_header",
                    errors,
                ),
            }
        });
        let mut tokens: Vec<TokenConfig> = Vec::new();
        for t in &self.tokens {
            let raw = t.get_ref();
            let user = raw.user.get_ref().trim().to_string();
            if user.is_empty() {
                errors.at(raw.user.span(), "console.token.user must not be empty");
            }
            let sha256 = match raw.sha256.get_ref() {
                RawHash::Hex(hex) => match parse_hex32(hex.trim()) {
                    Some(h) => Some(TokenHash::Inline(h)),
                    None => {
                        // Never echo it: it may be the token itself pasted by mistake.
                        errors.at(
                            raw.sha256.span(),
                            "console.token.sha256 must be the token's SHA-256 in hex (64 digits; \
                             `sha256sum < token-file`), never the token itself",
                        );
                        None
                    }
                },
                RawHash::File(secret) => match (&secret.file, &secret.env) {
                    (Some(file), None) if !file.is_empty() => Some(TokenHash::File(Secret::File(
                        super::config_fields::resolve_path(base, file),
                    ))),
                    _ => {
                        errors.at(
                            raw.sha256.span(),
                            "console.token.sha256 takes the hash in hex or { file = \"/path\" }",
                        );
                        None
                    }
                },
            };
            if let (Some(TokenHash::Inline(h)), true) = (&sha256, !user.is_empty()) {
                if tokens.iter().any(|o| o.sha256 == TokenHash::Inline(*h)) {
                    errors.at(
                        raw.sha256.span(),
                        "console.token: this hash is listed twice",
                    );
                }
            }
            let groups = validate_groups(&raw.groups, "console.token.groups", errors);
            if let Some(sha256) = sha256 {
                tokens.push(TokenConfig {
                    user,
                    groups,
                    sha256,
                });
            }
        }
        let public_url = self.public_url.as_ref().map(|u| {
            super::config_fields::validate_url(
                u,
                "console.public_url",
                "it is shown in alerts; sign-in belongs to the proxy in front",
                errors,
            )
        });
        let session_lifetime = self
            .session_lifetime
            .as_ref()
            .map(|d| duration_in(d, "console.session_lifetime", SESSION_LIFETIME, errors))
            .unwrap_or(DEFAULT_SESSION_LIFETIME);
        ConsoleConfig {
            public_url,
            admin_groups,
            proxy,
            tokens,
            session_lifetime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Config;

    use crate::policy::fixture::config_errors_of as errors_of;

    #[test]
    fn sign_in_settings_are_validated_with_locations() {
        let c = Config::from_toml(
            "listen = \"0.0.0.0:8457\"\n[console]\nadmin_groups = [\"platform\"]\n\
             [console.proxy]\naddresses = [\"10.0.0.0/8\"]\ngroups_header = \"X-Auth-Groups\"\n\
             [[console.token]]\nuser = \"bot\"\ngroups = [\"payments\"]\n\
             sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
            Path::new("conf/g.toml"),
        )
        .unwrap();
        let proxy = c.console.proxy.as_ref().unwrap();
        assert_eq!(proxy.user_header, "x-forwarded-user");
        assert_eq!(proxy.groups_header, "x-auth-groups");
        assert_eq!(c.console.tokens[0].sha256.resolve().unwrap()[0], 0x9f);
        assert!(c.console.auth_configured());
        assert_eq!(c.console.session_lifetime, DEFAULT_SESSION_LIFETIME);

        let e = errors_of(
            "[console.proxy]\naddresses = [\"proxy.internal\"]\nuser_header = \"X User\"\n\
             [[console.token]]\nuser = \"bot\"\nsha256 = \"my-secret-token\"\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("conf/g.toml:2:14: console.proxy.addresses: expected an address"));
        assert!(
            e[1].starts_with("conf/g.toml:3:15: console.proxy.user_header must be an HTTP header")
        );
        assert!(
            e[2].starts_with("conf/g.toml:6:10: console.token.sha256 must be the token's SHA-256")
        );
        assert!(
            !e[2].contains("my-secret-token"),
            "the value is never echoed"
        );
    }

    #[test]
    fn the_session_lifetime_is_a_bounded_duration() {
        let c = Config::from_toml(
            "[console]\nsession_lifetime = \"30m\"\n",
            Path::new("conf/g.toml"),
        )
        .unwrap();
        assert_eq!(c.console.session_lifetime, Duration::from_secs(1800));
        assert_eq!(
            errors_of("[console]\nsession_lifetime = \"30d\"\n"),
            vec![
                "conf/g.toml:2:20: console.session_lifetime must be between 1s and 7days, got 30days"
            ]
        );
    }

    #[test]
    fn without_sign_in_the_listen_address_must_be_loopback() {
        assert_eq!(
            errors_of("listen = \"0.0.0.0:8457\"\n"),
            vec![
                "conf/g.toml:1:10: listen 0.0.0.0:8457 is reachable from other machines, but the \
                 console has no sign-in: listen on 127.0.0.1, or configure [console.proxy] or \
                 [[console.token]]"
            ]
        );
        assert!(errors_of("listen = \"127.0.0.1:9000\"\n").is_empty());
        assert!(errors_of("listen = \"[::1]:9000\"\n").is_empty());
    }

    #[test]
    fn ranges_match_their_addresses_only() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        // An IPv4 client seen through an IPv6 socket.
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert_eq!(IpNet::parse("10.0.0.0/33"), None);
        assert_eq!(IpNet::parse("proxy.internal"), None);
    }
}
