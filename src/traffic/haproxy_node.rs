//! What each HAProxy node reports in one read: the process that answered and both servers'
//! weights, and the memory of which process each node had, to tell a reload from a hand edit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::haproxy::{collect, parse_get_weight, RuntimeAddr};
use super::TrafficError;
use crate::policy::Weights;

/// One node's view of a backend's blue and green servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWeights {
    /// The node's Runtime API address.
    pub node: String,
    /// Current weights.
    pub weights: Weights,
    /// The weights in HAProxy's configuration (what a reload comes back with).
    pub initial: Weights,
    /// The process that answered.
    pub process: Process,
    /// Restarted since this runtime last looked, and still at the configured weights: the
    /// weights greenlight set were lost with the old process, not changed by hand.
    pub reloaded: bool,
}

/// An HAProxy process, from `show info`: a reload or restart starts a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Start time in Unix seconds (`Start_time_sec`, or now minus `Uptime_sec`).
    pub started: u64,
}

impl Process {
    /// Same process: same PID and the same start (within the rounding of `Uptime_sec`; a
    /// container restart may reuse the PID but not the start time).
    fn same_as(&self, other: &Process) -> bool {
        self.pid == other.pid && self.started.abs_diff(other.started) <= 2
    }
}

/// What this runtime last saw of each (node, backend): the process, and whether that process
/// came back from a restart at its configured weights and has not been written since. Shared
/// by clones.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    inner: Arc<Mutex<SeenMap>>,
}

/// (node, backend) → (last process, restarted at configured weights and not written since).
type SeenMap = HashMap<(String, String), (Process, bool)>;

impl Seen {
    fn map(&self) -> MutexGuard<'_, SeenMap> {
        // Plain data: a panic elsewhere leaves nothing half-updated worth refusing.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `process` for (node, backend); true if it is a restart (now or earlier, not yet
    /// written) and the weights are still the configured ones. Without an earlier look, a
    /// process started after `written` (greenlight's weights were on the node then) is one.
    pub(super) fn observe(
        &self,
        node: &RuntimeAddr,
        backend: &str,
        process: Process,
        at_initial: bool,
        written: Option<u64>,
    ) -> bool {
        let key = (node.to_string(), backend.to_string());
        let mut map = self.map();
        let restarted = match map.get(&key) {
            Some((before, reset)) => !before.same_as(&process) || *reset,
            None => written.is_some_and(|t| process.started > t),
        };
        let reloaded = at_initial && restarted;
        map.insert(key, (process, reloaded));
        reloaded
    }

    /// greenlight's weights are on (node, backend) again.
    pub(super) fn applied(&self, node: &RuntimeAddr, backend: &str) {
        if let Some((_, reset)) = self.map().get_mut(&(node.to_string(), backend.to_string())) {
            *reset = false;
        }
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses the reply to `show info; get weight <blue>; get weight <green>`: the `Key: value`
/// block of `show info`, then one `<current> (initial <initial>)` line per server. Anything
/// else is the error text HAProxy printed.
pub(super) fn parse_node_reply(
    reply: &str,
    now: u64,
) -> Result<(Process, Weights, Weights), String> {
    let (info, rest) = reply.split_once("\n\n").unwrap_or((reply, ""));
    let process = parse_process(info, now)?;
    let lines: Vec<&str> = rest
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [b, g] => match (parse_get_weight(b), parse_get_weight(g)) {
            (Some((b, bi)), Some((g, gi))) => Ok((
                process,
                Weights { blue: b, green: g },
                Weights {
                    blue: bi,
                    green: gi,
                },
            )),
            _ => Err(error_text(lines)),
        },
        _ => Err(error_text(lines)),
    }
}

/// The process in a `show info` block (`Pid`, and `Start_time_sec` or now minus `Uptime_sec`).
pub(super) fn parse_process(info: &str, now: u64) -> Result<Process, String> {
    let field = |name: &str| {
        info.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    let pid = field("Pid").and_then(|p| u32::try_from(p).ok());
    let started =
        field("Start_time_sec").or_else(|| field("Uptime_sec").map(|up| now.saturating_sub(up)));
    let (Some(pid), Some(started)) = (pid, started) else {
        let text: String = info.trim().chars().take(200).collect();
        return Err(format!("no Pid and start time in show info: {text}"));
    };
    Ok(Process { pid, started })
}

/// HAProxy's error lines, each said once ("No such backend." comes back for both servers).
fn error_text(mut lines: Vec<&str>) -> String {
    lines.dedup();
    lines.join("; ")
}

/// The live split of one backend from what each node answered (`found`) and the nodes that
/// did not answer (`down`): the weights every node agrees on. [`TrafficError::Reloaded`] when
/// nodes came back from a restart at their configured weights (unless a node that was not
/// restarted shows the same weights everywhere), [`TrafficError::Diverged`] with every node's
/// weights when they disagree otherwise. With nodes unreachable while the others agree (none of
/// them reloaded): [`TrafficError::NodesDown`] with those weights, so a rollback can still be
/// decided and written to the nodes that answer.
pub(crate) fn classify(
    found: &[NodeWeights],
    mut down: Vec<(String, TrafficError)>,
    backend: &str,
) -> Result<Weights, TrafficError> {
    let first = match found.first() {
        Some(first) => first.weights,
        None if down.is_empty() => {
            return Err(TrafficError::Missing {
                keys: vec![format!("{backend} (no HAProxy nodes configured)")],
            })
        }
        None => return Err(collect(down.into_iter().map(|(_, e)| e).collect()).unwrap_err()),
    };
    let agree = found.iter().all(|n| n.weights == first);
    let steady = found.iter().any(|n| !n.reloaded);
    let reloaded = found.iter().any(|n| n.reloaded);
    if !down.is_empty() {
        if agree && !reloaded {
            return Err(TrafficError::NodesDown {
                weights: first,
                down,
            });
        }
        return Err(down.remove(0).1);
    }
    let per_node = || found.iter().map(|n| (n.node.clone(), n.weights)).collect();
    if agree && steady {
        return Ok(first);
    }
    if reloaded {
        return Err(TrafficError::Reloaded {
            nodes: found
                .iter()
                .filter(|n| n.reloaded)
                .map(|n| n.node.clone())
                .collect(),
            found: per_node(),
        });
    }
    Err(TrafficError::Diverged(per_node()))
}

/// What a compare-and-set from `expected` to `new` does on one node (`stale`: in sticky mode,
/// the node's salt is not the rollout's, so its users are drawn anew: it needs writing even
/// at `new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeWrite {
    /// The node has `new` already.
    Applied,
    /// The node is at `expected`, or just restarted at its configured weights: write it.
    Write,
    /// Someone changed the node by hand: these are its weights.
    Changed(Weights),
}

pub(crate) fn node_write(
    node: &NodeWeights,
    stale: bool,
    expected: Weights,
    new: Weights,
) -> NodeWrite {
    if node.weights == new && !stale {
        NodeWrite::Applied
    } else if node.weights == new || node.weights == expected || node.reloaded {
        NodeWrite::Write
    } else {
        NodeWrite::Changed(node.weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "Name: HAProxy\nVersion: 2.6.12\nPid: 4242\nUptime_sec: 30\nStart_time_sec: 1700000000\nTainted: 0\n\n";

    #[test]
    fn node_replies_tell_the_process_and_both_weights() {
        let reply = format!("{INFO}90 (initial 100)\n\n10 (initial 0)\n\n");
        assert_eq!(
            parse_node_reply(&reply, 1_700_000_030),
            Ok((
                Process {
                    pid: 4242,
                    started: 1_700_000_000
                },
                Weights {
                    blue: 90,
                    green: 10
                },
                Weights {
                    blue: 100,
                    green: 0
                },
            ))
        );
        // Without Start_time_sec (older 2.6 releases) the start is now minus the uptime.
        let old = INFO.replace("Start_time_sec: 1700000000\n", "");
        let reply = format!("{old}1 (initial 1)\n\n0 (initial 0)\n\n");
        assert_eq!(
            parse_node_reply(&reply, 1_700_000_100).unwrap().0.started,
            1_700_000_070
        );
        // HAProxy's error text comes back as the message.
        let reply = format!("{INFO}No such server.\n\n0 (initial 0)\n\n");
        assert_eq!(
            parse_node_reply(&reply, 0),
            Err("No such server.; 0 (initial 0)".to_string())
        );
        assert!(parse_node_reply("Permission denied\n", 0).is_err());
    }

    #[test]
    fn a_restart_is_told_from_the_same_process() {
        let seen = Seen::default();
        let node = RuntimeAddr::Tcp("127.0.0.1:9999".into());
        let p = |pid, started| Process { pid, started };
        // First contact: nothing to compare with.
        assert!(!seen.observe(&node, "api_a", p(10, 1000), true, None));
        // Same process, at its configured weights: a hand edit, not a reload.
        assert!(!seen.observe(&node, "api_a", p(10, 1001), true, None));
        // New PID: a reload.
        assert!(seen.observe(&node, "api_a", p(11, 2000), true, None));
        // Reported until greenlight writes the node again.
        assert!(seen.observe(&node, "api_a", p(11, 2000), true, None));
        seen.applied(&node, "api_a");
        assert!(!seen.observe(&node, "api_a", p(11, 2000), true, None));
        // A container restart keeps PID 1 but not its start time.
        assert!(!seen.observe(&node, "api_a", p(1, 3000), false, None));
        assert!(seen.observe(&node, "api_a", p(1, 5000), true, None));
        // Restarted with other weights than the configured ones (a state file): not a reset.
        assert!(!seen.observe(&node, "api_a", p(2, 6000), false, None));
        // Each backend is followed on its own: another API sees the same reload.
        assert!(!seen.observe(&node, "api_b", p(10, 1000), true, None));
        assert!(seen.observe(&node, "api_b", p(2, 6000), true, None));
        // First contact, told when greenlight's weights were last on the node: a process
        // started later and at its configured weights was reloaded since.
        assert!(seen.observe(&node, "api_c", p(3, 7000), true, Some(6999)));
        assert!(!seen.observe(&node, "api_d", p(3, 7000), true, Some(7000)));
        assert!(!seen.observe(&node, "api_e", p(3, 7000), false, Some(6999)));
    }

    #[test]
    fn a_node_with_a_stale_salt_is_written_even_at_the_new_split() {
        let w = |green| Weights {
            blue: 100 - green,
            green,
        };
        let n = |green, reloaded| NodeWeights {
            node: "tcp://127.0.0.1:9999".into(),
            weights: w(green),
            initial: w(0),
            process: Process { pid: 1, started: 1 },
            reloaded,
        };
        assert_eq!(
            node_write(&n(10, false), false, w(1), w(10)),
            NodeWrite::Applied
        );
        assert_eq!(
            node_write(&n(10, false), true, w(1), w(10)),
            NodeWrite::Write
        );
        assert_eq!(
            node_write(&n(1, false), true, w(1), w(10)),
            NodeWrite::Write
        );
        assert_eq!(
            node_write(&n(0, true), false, w(1), w(10)),
            NodeWrite::Write
        );
        // A split that is neither greenlight's old nor new one was set by hand, salt or not.
        assert_eq!(
            node_write(&n(25, false), true, w(1), w(10)),
            NodeWrite::Changed(w(25))
        );
    }
}
