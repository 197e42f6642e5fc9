//! The pure side of driving sticky mode's runtime maps: green's share from the decided weights,
//! the rollout's salt, HAProxy's `show map` answers, and the Runtime API lines that bring a
//! node's maps to the wanted entries.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::sticky::BUCKETS;
use crate::policy::sticky::{Subset, SubsetColour};
use crate::policy::{Traffic, Weights};

/// Longest Runtime API line sent when replacing a subset map: HAProxy reads a command line
/// into one buffer (`tune.bufsize`, 16 KiB by default), so the `add map` lines go in chunks.
pub const MAX_LINE: usize = 8 * 1024;

/// One map entry: key and value.
pub type Entry = (String, String);

/// Green's share in buckets (0–10000) of the decided weights: green / (blue + green), rounded.
pub fn share_of(weights: Weights) -> u32 {
    let total = u64::from(weights.blue) + u64::from(weights.green);
    if total == 0 {
        return 0;
    }
    let buckets = (u64::from(weights.green) * u64::from(BUCKETS) * 2 + total) / (2 * total);
    buckets.min(u64::from(BUCKETS)) as u32
}

/// The weights a share stands for, in the policy's `total_weight` (the inverse of
/// [`share_of`] for the weights greenlight decides).
pub fn weights_of_share(traffic: &Traffic, share: u32) -> Weights {
    traffic.weights_for(f64::from(share.min(BUCKETS)) / 100.0)
}

/// The salt of the rollout of `api` that started at `started`: the same on every instance and
/// after every restart, new for each rollout (a fresh draw of users). Before any rollout the
/// salt is the API's own (green has no share then, so it routes nobody).
pub fn rollout_salt(api: &str, started: Option<Timestamp>) -> String {
    let mut h = Sha256::new();
    h.update(b"greenlight sticky salt\0");
    h.update(api.as_bytes());
    h.update(b"\0");
    if let Some(t) = started {
        h.update(t.as_nanosecond().to_string().as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the salt matters for routing at `share`: at 0 everyone is on blue and at 10000
/// everyone on green, whatever the salt.
pub fn salt_matters(share: u32) -> bool {
    share > 0 && share < BUCKETS
}

/// The entries of the API's map for `share` and `salt` (the salt first: a new rollout changes
/// its salt while its share is still 0). Without a salt, only the share.
pub fn api_entries(share: u32, salt: Option<&str>) -> Vec<Entry> {
    let mut e = Vec::with_capacity(2);
    if let Some(s) = salt {
        e.push(("salt".to_string(), s.to_string()));
    }
    e.push(("share".to_string(), share.min(BUCKETS).to_string()));
    e
}

/// A subset's wanted map: member → colour.
pub fn subset_entries(subset: &Subset) -> Vec<Entry> {
    let colour = match subset.colour {
        SubsetColour::Green => "green",
        SubsetColour::Blue => "blue",
    };
    subset
        .members
        .iter()
        .map(|m| (m.clone(), colour.to_string()))
        .collect()
}

/// The entries of a `show map <file>` answer (`<pointer> <key> <value>` per line, in the
/// map's order); anything else is HAProxy's error text.
pub fn parse_show_map(reply: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for line in reply.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parsed = line.split_once(' ').and_then(|(ptr, rest)| {
            ptr.starts_with("0x").then(|| match rest.split_once(' ') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (rest.to_string(), String::new()),
            })
        });
        match parsed {
            Some(e) => entries.push(e),
            None => return Err(reply.trim().chars().take(200).collect()),
        }
    }
    Ok(entries)
}

/// The value HAProxy's `map()` converter finds for `key` (the first entry with it).
pub fn value<'a>(live: &'a [Entry], key: &str) -> Option<&'a str> {
    live.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The lines that give each wanted key its value: `set map` where the key exists with another
/// value (it sets every entry of that key), `add map` where it is missing. Keys not wanted are
/// left alone. Empty when the map already has them.
pub fn entry_commands(map: &str, live: &[Entry], wanted: &[Entry]) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, val) in wanted {
        let mut found = live.iter().filter(|(k, _)| k == key).peekable();
        if found.peek().is_none() {
            lines.push(format!("add map {map} {key} {val}"));
        } else if found.any(|(_, v)| v != val) {
            lines.push(format!("set map {map} {key} {val}"));
        }
    }
    lines
}

/// Whether two maps hold the same entries, whatever their order.
pub fn same_entries(live: &[Entry], wanted: &[Entry]) -> bool {
    let mut a: Vec<&Entry> = live.iter().collect();
    let mut b: Vec<&Entry> = wanted.iter().collect();
    a.sort();
    b.sort();
    a == b
}

/// The version `prepare map` created (`New version created: N`).
pub fn parse_prepared(reply: &str) -> Result<u64, String> {
    reply
        .trim()
        .strip_prefix("New version created: ")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| reply.trim().chars().take(200).collect())
}

/// The lines that fill version `version` of `map` with `entries` and commit it, in lines of
/// at most [`MAX_LINE`] bytes (one longer entry goes on a line of its own): the map changes
/// from its old entries to the new ones at once, at the commit.
pub fn replace_commands(map: &str, version: u64, entries: &[Entry]) -> Vec<String> {
    let adds = entries
        .iter()
        .map(|(k, v)| format!("add map @{version} {map} {k} {v}"));
    let commit = std::iter::once(format!("commit map @{version} {map}"));
    let mut lines = Vec::new();
    let mut line = String::new();
    for command in adds.chain(commit) {
        if !line.is_empty() && line.len() + 2 + command.len() > MAX_LINE {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push_str("; ");
        }
        line.push_str(&command);
    }
    lines.push(line);
    lines
}

/// What one node's API map says: green's share (a missing entry is 0, as the rules read it)
/// and the salt. A share that is not a number of buckets is HAProxy's problem to report.
pub fn live_share(live: &[Entry]) -> Result<(u32, Option<String>), String> {
    let share = match value(live, "share") {
        None => 0,
        Some(v) => match v.parse::<u32>() {
            Ok(s) if s <= BUCKETS => s,
            _ => {
                return Err(format!(
                    "share entry {v:?} is not a number of buckets 0-{BUCKETS}"
                ))
            }
        },
    };
    Ok((share, value(live, "salt").map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: &str) -> Entry {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn the_share_follows_the_decided_weights() {
        let w = |blue, green| Weights { blue, green };
        assert_eq!(share_of(w(100, 0)), 0);
        assert_eq!(share_of(w(99, 1)), 100);
        assert_eq!(share_of(w(75, 25)), 2500);
        assert_eq!(share_of(w(0, 100)), 10_000);
        assert_eq!(share_of(w(0, 0)), 0);
        // Any total: 26 of 256 is 10.16 %.
        assert_eq!(share_of(w(230, 26)), 1016);
        assert_eq!(share_of(w(2, 1)), 3333);
        let mut p = crate::engine::tests::policy();
        for total in [1, 3, 7, 100, 256] {
            p.traffic.total_weight = total;
            for green in 0..=total {
                let weights = w(total - green, green);
                assert_eq!(
                    weights_of_share(&p.traffic, share_of(weights)),
                    weights,
                    "total {total}"
                );
            }
        }
    }

    #[test]
    fn each_rollout_has_its_own_salt() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let a = rollout_salt("checkout", Some(t(1_700_000_000)));
        assert_eq!(a, rollout_salt("checkout", Some(t(1_700_000_000))));
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, rollout_salt("checkout", Some(t(1_700_000_001))));
        assert_ne!(a, rollout_salt("payments", Some(t(1_700_000_000))));
        assert_ne!(a, rollout_salt("checkout", None));
        assert!(!salt_matters(0) && salt_matters(1) && salt_matters(9_999));
        assert!(!salt_matters(10_000));
    }

    #[test]
    fn show_map_answers_parse() {
        let reply = "0x561d19e14170 share 100\n0x561d19e141c0 salt abc\n\n";
        assert_eq!(
            parse_show_map(reply),
            Ok(vec![e("share", "100"), e("salt", "abc")])
        );
        assert_eq!(parse_show_map("\n"), Ok(vec![]));
        assert_eq!(parse_show_map("0x1 lonely\n"), Ok(vec![e("lonely", "")]));
        assert_eq!(
            parse_show_map("Unknown map identifier. Please use #<id> or <file>.\n\n"),
            Err("Unknown map identifier. Please use #<id> or <file>.".to_string())
        );
        assert_eq!(
            live_share(&[e("share", "2500"), e("salt", "s1")]),
            Ok((2500, Some("s1".to_string())))
        );
        assert_eq!(live_share(&[]), Ok((0, None)));
        assert!(live_share(&[e("share", "10001")]).is_err());
        assert_eq!(parse_prepared("New version created: 7\n\n"), Ok(7));
        assert!(parse_prepared("Unknown map identifier.\n").is_err());
    }

    #[test]
    fn only_differing_entries_are_sent() {
        let live = [e("share", "0"), e("salt", "old")];
        let wanted = api_entries(2500, Some("new"));
        assert_eq!(
            entry_commands("/m/a.map", &live, &wanted),
            vec!["set map /m/a.map salt new", "set map /m/a.map share 2500"]
        );
        assert!(
            entry_commands("/m/a.map", &[e("salt", "new"), e("share", "2500")], &wanted).is_empty()
        );
        // A map file without the keys gets them added; without a salt only the share is set.
        assert_eq!(
            entry_commands("/m/a.map", &[], &wanted),
            vec!["add map /m/a.map salt new", "add map /m/a.map share 2500"]
        );
        assert_eq!(
            entry_commands("/m/a.map", &live, &api_entries(0, None)),
            Vec::<String>::new()
        );
        // A duplicate with another value is set too (`set map` sets every entry of the key).
        assert_eq!(
            entry_commands(
                "/m/a.map",
                &[e("share", "0"), e("share", "5")],
                &api_entries(0, None)
            ),
            vec!["set map /m/a.map share 0"]
        );
    }

    #[test]
    fn subset_maps_are_replaced_in_bounded_lines_then_committed() {
        let subset = Subset {
            name: "beta".into(),
            colour: SubsetColour::Green,
            key: None,
            members: vec!["alice".into(), "bob".into()],
        };
        let wanted = subset_entries(&subset);
        assert!(same_entries(
            &[e("bob", "green"), e("alice", "green")],
            &wanted
        ));
        assert!(!same_entries(&[e("alice", "green")], &wanted));
        assert!(!same_entries(
            &[e("alice", "blue"), e("bob", "green")],
            &wanted
        ));
        assert_eq!(
            replace_commands("/m/a.beta.map", 3, &wanted),
            vec!["add map @3 /m/a.beta.map alice green; add map @3 /m/a.beta.map bob green; commit map @3 /m/a.beta.map"]
        );
        assert_eq!(
            replace_commands("/m/a.beta.map", 4, &[]),
            vec!["commit map @4 /m/a.beta.map"]
        );
        let many: Vec<Entry> = (0..2_000)
            .map(|i| e(&format!("user-{i}"), "green"))
            .collect();
        let lines = replace_commands("/m/a.beta.map", 5, &many);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
        let adds: usize = lines.iter().map(|l| l.matches("add map @5 ").count()).sum();
        assert_eq!(adds, 2_000);
        assert!(lines
            .last()
            .unwrap()
            .ends_with("commit map @5 /m/a.beta.map"));
        assert_eq!(lines.iter().filter(|l| l.contains("commit")).count(), 1);
    }
}
