//! The HAProxy side of sticky mode: the backend rules `greenlight haproxy-config` prints, the
//! map files they read, and the Runtime API lines that move green's share.
//!
//! Everything is decided in HAProxy from per-API runtime maps, so every node gives a user the
//! same colour without shared state: the bucket is `xxh32(user key ":" salt) mod 10000`, and a
//! request goes to green iff its bucket is below the share (hundredths of a percent) held in the
//! API's map. Raising the share only adds users; share 0 (rollback) sends everyone to blue.

use std::fmt::Write as _;

use crate::policy::sticky::{Fallback, KeySource, Subset, SubsetColour};
use crate::policy::{Policy, Sticky};

/// Number of buckets: the share is kept in hundredths of a percent.
pub const BUCKETS: u32 = 10_000;

/// The map of one API: keys `share` (0–10000) and `salt`.
pub fn api_map(sticky: &Sticky, api: &str) -> String {
    format!("{}/{api}.map", sticky.map_dir)
}

/// The map of one named subset: member → colour.
pub fn subset_map(sticky: &Sticky, api: &str, subset: &Subset) -> String {
    format!("{}/{api}.{}.map", sticky.map_dir, subset.name)
}

/// Green's share in buckets for `percent` of the users (rounded, within 0..=10000).
pub fn share_buckets(percent: f64) -> u32 {
    if !percent.is_finite() || percent <= 0.0 {
        return 0;
    }
    ((percent * 100.0).round() as u32).min(BUCKETS)
}

/// The Runtime API lines that set the API's share and salt (`set map` on keys the map file
/// declares, see [`initial_maps`]). The salt goes first: a new rollout changes its salt while
/// its share is still 0.
pub fn share_commands(sticky: &Sticky, api: &str, percent: f64, salt: &str) -> Vec<String> {
    let map = api_map(sticky, api);
    vec![
        format!("set map {map} salt {salt}"),
        format!("set map {map} share {}", share_buckets(percent)),
    ]
}

/// The map files to install before HAProxy (re)loads: path and contents. The API's map starts
/// at share 0 (everyone on blue) with the salt given.
pub fn initial_maps(policy: &Policy, salt: &str) -> Option<Vec<(String, String)>> {
    let sticky = policy.traffic.sticky.as_ref()?;
    let mut maps = vec![(
        api_map(sticky, &policy.api),
        format!("share 0\nsalt {salt}\n"),
    )];
    for s in &sticky.subsets {
        let colour = match s.colour {
            SubsetColour::Green => "green",
            SubsetColour::Blue => "blue",
        };
        let mut text = String::new();
        for m in &s.members {
            let _ = writeln!(text, "{m} {colour}");
        }
        maps.push((subset_map(sticky, &policy.api, s), text));
    }
    Some(maps)
}

fn fetch(key: &KeySource) -> String {
    match key {
        KeySource::Header(h) => format!("req.hdr({h})"),
        KeySource::Cookie(c) => format!("req.cook({c})"),
    }
}

/// The lines to put in the API's HAProxy backend, before its `server` lines; `None` when the
/// policy is not in sticky mode.
pub fn haproxy_config(policy: &Policy) -> Option<String> {
    let sticky = policy.traffic.sticky.as_ref()?;
    let servers = policy.traffic.haproxy_servers()?;
    let api = &policy.api;
    let map = api_map(sticky, api);
    let user = fetch(&sticky.key);
    let mut c = String::new();
    let w = &mut c;
    let _ = writeln!(
        w,
        "# greenlight sticky canary for API {api:?}: paste into `backend {}`, before its server lines.",
        servers.backend
    );
    let _ = writeln!(
        w,
        "# Install the map files first (`greenlight haproxy-config --maps DIR`); greenlight sets their entries."
    );
    let _ = writeln!(
        w,
        "# Add the pinned cohort's server, same address as {green}: server {pinned} <address of {green}> weight 0",
        green = servers.green,
        pinned = sticky.pinned_server
    );
    let _ = writeln!(
        w,
        "    # Green's share in buckets (0-10000) and this rollout's salt."
    );
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_share) str(share),map({map},0)"
    );
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_salt) str(salt),map({map},)"
    );
    let _ = writeln!(w, "    # The user key.");
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_uid) {user} if {{ {user} -m found }}"
    );
    if sticky.fallback == Fallback::Cookie {
        let cookie = &sticky.cookie;
        let _ = writeln!(
            w,
            "    # Without a key: the id HAProxy gave this browser earlier, else a new random one in a cookie."
        );
        let _ = writeln!(
            w,
            "    http-request set-var(txn.gl_uid) req.cook({cookie}) if !{{ var(txn.gl_uid) -m found }} {{ req.cook({cookie}) -m found }}"
        );
        let _ = writeln!(
            w,
            "    http-request set-var(txn.gl_new) uuid if !{{ var(txn.gl_uid) -m found }}"
        );
        let _ = writeln!(
            w,
            "    http-request set-var(txn.gl_uid) var(txn.gl_new) if {{ var(txn.gl_new) -m found }}"
        );
        let _ = writeln!(
            w,
            "    http-response add-header Set-Cookie \"{cookie}=%[var(txn.gl_new)]; Max-Age=31536000; Path=/; HttpOnly; Secure; SameSite=Lax\" if {{ var(txn.gl_new) -m found }}"
        );
    }
    let _ = writeln!(
        w,
        "    # The user's bucket, 0-9999, fresh for each rollout's salt."
    );
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_bucket) var(txn.gl_uid),concat(:,txn.gl_salt,),xxh32,mod({BUCKETS}) if {{ var(txn.gl_uid) -m found }}"
    );
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_diff) var(txn.gl_bucket),sub(txn.gl_share) if {{ var(txn.gl_bucket) -m found }}"
    );
    if !sticky.subsets.is_empty() {
        let _ = writeln!(w, "    # Named subsets, first match wins.");
    }
    for s in &sticky.subsets {
        let key = s
            .key
            .as_ref()
            .map(fetch)
            .unwrap_or_else(|| "var(txn.gl_uid)".into());
        let _ = writeln!(
            w,
            "    http-request set-var(txn.gl_pin) {key},map({}) if !{{ var(txn.gl_pin) -m found }} {{ {key} -m found }}",
            subset_map(sticky, api, s)
        );
    }
    if let Some(h) = &sticky.override_header {
        let _ = writeln!(
            w,
            "    # A forced colour, from trusted addresses only; it takes precedence over subsets."
        );
        let _ = writeln!(
            w,
            "    http-request set-var(txn.gl_pin) req.hdr({h}) if {{ src {} }} {{ req.hdr({h}) -m str blue green }}",
            sticky.trusted_sources.join(" ")
        );
    }
    let _ = writeln!(w, "    acl gl_active var(txn.gl_share) -m int gt 0");
    let _ = writeln!(
        w,
        "    acl gl_promoted var(txn.gl_share) -m int ge {BUCKETS}"
    );
    let _ = writeln!(w, "    acl gl_pin_green var(txn.gl_pin) -m str green");
    let _ = writeln!(w, "    acl gl_pin_blue var(txn.gl_pin) -m str blue");
    let _ = writeln!(w, "    acl gl_bucket_green var(txn.gl_diff) -m int lt 0");
    cohort_header(w, &sticky.cohort_header);
    let _ = writeln!(
        w,
        "    # Pinned users ride green while it has any share (share 0, a rollback, sends them back)."
    );
    let _ = writeln!(
        w,
        "    use-server {} if gl_active gl_pin_green",
        sticky.pinned_server
    );
    let _ = writeln!(
        w,
        "    use-server {} if gl_pin_blue !gl_promoted",
        servers.blue
    );
    let _ = writeln!(w, "    use-server {} if gl_bucket_green", servers.green);
    let _ = writeln!(w, "    use-server {} if TRUE", servers.blue);
    Some(c)
}

/// The lines naming each request's cohort in `header`, in the precedence of the `use-server`
/// rules after them (the last match wins): `pinned`, else `blue` for blue-pinned users before
/// promotion, else `random` below the share, else `blue`. A client's own value is replaced.
fn cohort_header(w: &mut String, header: &str) {
    let _ = writeln!(
        w,
        "    # The request's cohort for applications' histograms: blue, random (green by bucket) or pinned."
    );
    let _ = writeln!(w, "    http-request set-var(txn.gl_cohort) str(blue)");
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_cohort) str(random) if gl_bucket_green"
    );
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_cohort) str(blue) if gl_pin_blue !gl_promoted"
    );
    let _ = writeln!(
        w,
        "    http-request set-var(txn.gl_cohort) str(pinned) if gl_active gl_pin_green"
    );
    let _ = writeln!(
        w,
        "    http-request set-header {header} %[var(txn.gl_cohort)]"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_whole_buckets_within_range() {
        assert_eq!(share_buckets(0.0), 0);
        assert_eq!(share_buckets(1.0), 100);
        assert_eq!(share_buckets(2.5), 250);
        assert_eq!(share_buckets(33.333), 3333);
        assert_eq!(share_buckets(100.0), 10_000);
        assert_eq!(share_buckets(150.0), 10_000);
        assert_eq!(share_buckets(-1.0), 0);
        assert_eq!(share_buckets(f64::NAN), 0);
    }
}
