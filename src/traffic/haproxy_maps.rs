//! Sticky mode on HAProxy nodes: each node's API map (green's share and the rollout's salt)
//! and subset maps, read, compared, set and read back, for `greenlight sync` and the direct
//! HAProxy target. Runtime maps live in memory: a reloaded node comes back with its map files.

use super::haproxy::{HaproxyRuntime, RuntimeAddr, RuntimeIo};
use super::haproxy_node::{classify, parse_process, unix_now, NodeWeights};
use super::sticky::{api_map, subset_map};
use super::sticky_maps::{
    api_entries, entry_commands, live_share, parse_prepared, parse_show_map, replace_commands,
    salt_matters, same_entries, share_of, subset_entries, weights_of_share, Entry,
};
use super::TrafficError;
use crate::policy::{Policy, Sticky, Weights};

/// One node's sticky view: the weights its share stands for (with the process that answered
/// and whether it came back from a reload with its map file's share 0), its share and salt,
/// and whether that salt is not the rollout's while it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeShare {
    pub node: NodeWeights,
    pub share: u32,
    pub salt: Option<String>,
    pub stale_salt: bool,
}

fn describe(entries: &[Entry]) -> String {
    let shown: Vec<String> = entries
        .iter()
        .take(5)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    match entries.len() {
        0 => "no entries".to_string(),
        n if n > 5 => format!("{} … ({n} entries)", shown.join(" ")),
        _ => shown.join(" "),
    }
}

impl<R: RuntimeIo> HaproxyRuntime<R> {
    /// The entries of `map` on `node` (`show map <file>`).
    pub async fn show_map(
        &self,
        node: &RuntimeAddr,
        map: &str,
    ) -> Result<Vec<Entry>, TrafficError> {
        let command = format!("show map {map}");
        let reply = self.command_retried(node, &command).await?;
        parse_show_map(&reply).map_err(|message| TrafficError::Haproxy {
            node: node.to_string(),
            command,
            message,
        })
    }

    /// Sends each line; each command in it must answer nothing but its empty line.
    async fn send_quiet(&self, node: &RuntimeAddr, lines: &[String]) -> Result<(), TrafficError> {
        for line in lines {
            let reply = self.command_retried(node, line).await?;
            if !reply.trim().is_empty() {
                return Err(TrafficError::Haproxy {
                    node: node.to_string(),
                    command: line.chars().take(200).collect(),
                    message: reply.trim().chars().take(200).collect(),
                });
            }
        }
        Ok(())
    }

    /// Gives the wanted keys of `map` on `node` their values (other keys are left), then
    /// reads the map back. The entries found before when something was set; `None` when the
    /// map had them already.
    pub async fn ensure_entries(
        &self,
        node: &RuntimeAddr,
        map: &str,
        wanted: &[Entry],
    ) -> Result<Option<Vec<Entry>>, TrafficError> {
        let live = self.show_map(node, map).await?;
        let lines = entry_commands(map, &live, wanted);
        if lines.is_empty() {
            return Ok(None);
        }
        self.send_quiet(node, &[lines.join("; ")]).await?;
        let after = self.show_map(node, map).await?;
        if !entry_commands(map, &after, wanted).is_empty() {
            return Err(TrafficError::MapReadBack {
                node: node.to_string(),
                map: map.to_string(),
                wrote: describe(wanted),
                found: describe(&after),
            });
        }
        Ok(Some(live))
    }

    /// Replaces `map` on `node` with exactly `wanted` when its entries differ, atomically: a
    /// new version is prepared, filled and committed (HAProxy 2.4+), so requests see either the
    /// old members or the new ones. Reads it back; true if it was replaced.
    pub async fn ensure_subset(
        &self,
        node: &RuntimeAddr,
        map: &str,
        wanted: &[Entry],
    ) -> Result<bool, TrafficError> {
        let live = self.show_map(node, map).await?;
        if same_entries(&live, wanted) {
            return Ok(false);
        }
        let command = format!("prepare map {map}");
        let reply = self.command_retried(node, &command).await?;
        let version = parse_prepared(&reply).map_err(|message| TrafficError::Haproxy {
            node: node.to_string(),
            command,
            message,
        })?;
        self.send_quiet(node, &replace_commands(map, version, wanted))
            .await?;
        let after = self.show_map(node, map).await?;
        if !same_entries(&after, wanted) {
            return Err(TrafficError::MapReadBack {
                node: node.to_string(),
                map: map.to_string(),
                wrote: describe(wanted),
                found: describe(&after),
            });
        }
        tracing::info!(%node, map, from = live.len(), to = wanted.len(), "Replaced a subset map.");
        Ok(true)
    }

    /// Every subset map of `policy` on `node` brought to the policy's members; the maps that
    /// had to be replaced.
    pub async fn ensure_subsets(
        &self,
        node: &RuntimeAddr,
        policy: &Policy,
        sticky: &Sticky,
    ) -> Result<Vec<String>, TrafficError> {
        let mut replaced = Vec::new();
        for subset in &sticky.subsets {
            let map = subset_map(sticky, &policy.api, subset);
            if self
                .ensure_subset(node, &map, &subset_entries(subset))
                .await?
            {
                replaced.push(map);
            }
        }
        Ok(replaced)
    }

    /// One node's share map and the process that answered, from one exchange (`show info;
    /// show map <api map>`). A process restarted since the last look (or, on first contact,
    /// started after `written`) whose share is its map file's 0 was reloaded.
    pub(crate) async fn read_node_share(
        &self,
        node: &RuntimeAddr,
        policy: &Policy,
        sticky: &Sticky,
        salt: Option<&str>,
        written: Option<u64>,
    ) -> Result<NodeShare, TrafficError> {
        let (backend, _, _) = Self::target(policy)?;
        let map = api_map(sticky, &policy.api);
        let command = format!("show info; show map {map}");
        let reply = self.command_retried(node, &command).await?;
        let error = |message: String| TrafficError::Haproxy {
            node: node.to_string(),
            command: command.clone(),
            message,
        };
        let (info, rest) = reply.split_once("\n\n").unwrap_or((&reply, ""));
        let process = parse_process(info, unix_now()).map_err(error)?;
        let entries = parse_show_map(rest).map_err(error)?;
        let (share, live_salt) = live_share(&entries).map_err(error)?;
        let reloaded = self
            .seen
            .observe(node, backend, process, share == 0, written);
        if reloaded {
            tracing::info!(%node, api = %policy.api, pid = process.pid, "HAProxy restarted with its map file's share.");
        }
        let stale_salt = !reloaded
            && salt_matters(share)
            && salt.is_some_and(|s| live_salt.as_deref() != Some(s));
        Ok(NodeShare {
            node: NodeWeights {
                node: node.to_string(),
                weights: weights_of_share(&policy.traffic, share),
                initial: weights_of_share(&policy.traffic, 0),
                process,
                reloaded,
            },
            share,
            salt: live_salt,
            stale_salt,
        })
    }

    /// The split every node's share map agrees on, in the policy's weights (see
    /// [`super::haproxy_node::classify`] for reloads, divergence and nodes down). Nodes whose
    /// salt is not the rollout's `salt` while it matters: [`TrafficError::StaleSalt`].
    pub(crate) async fn read_sticky(
        &self,
        policy: &Policy,
        sticky: &Sticky,
        written: Option<jiff::Timestamp>,
        salt: Option<&str>,
    ) -> Result<Weights, TrafficError> {
        let (backend, _, _) = Self::target(policy)?;
        let written = written.and_then(|t| u64::try_from(t.as_second()).ok());
        let mut found = Vec::with_capacity(self.nodes().len());
        let mut down = Vec::new();
        for node in self.nodes() {
            match self
                .read_node_share(node, policy, sticky, salt, written)
                .await
            {
                Ok(n) => found.push(n),
                Err(e @ TrafficError::Unreachable { .. }) => down.push((node.to_string(), e)),
                Err(e) => return Err(e),
            }
        }
        let nodes: Vec<NodeWeights> = found.iter().map(|n| n.node.clone()).collect();
        let live = classify(&nodes, down, backend)?;
        let stale: Vec<String> = found
            .iter()
            .filter(|n| n.stale_salt)
            .map(|n| n.node.node.clone())
            .collect();
        if !stale.is_empty() {
            return Err(TrafficError::StaleSalt {
                found: live,
                places: stale,
            });
        }
        Ok(live)
    }

    /// Sets `new`'s share (and `salt` when given) in the API map of `node`, reads it back
    /// from the same process, and brings the subset maps to the policy's members.
    pub(crate) async fn set_node_share(
        &self,
        node: &RuntimeAddr,
        policy: &Policy,
        sticky: &Sticky,
        new: Weights,
        salt: Option<&str>,
    ) -> Result<(), TrafficError> {
        let (backend, _, _) = Self::target(policy)?;
        let map = api_map(sticky, &policy.api);
        let wanted = api_entries(share_of(new), salt);
        let live = self.show_map(node, &map).await?;
        let lines = entry_commands(&map, &live, &wanted);
        if !lines.is_empty() {
            self.send_quiet(node, &[lines.join("; ")]).await?;
        }
        let after = self
            .read_node_share(node, policy, sticky, salt, None)
            .await?;
        if after.share != share_of(new) || after.stale_salt {
            return Err(TrafficError::MapReadBack {
                node: node.to_string(),
                map,
                wrote: describe(&wanted),
                found: format!(
                    "share={} salt={}",
                    after.share,
                    after.salt.as_deref().unwrap_or("(none)")
                ),
            });
        }
        self.ensure_subsets(node, policy, sticky).await?;
        self.seen.applied(node, backend);
        tracing::debug!(%node, api = %policy.api, share = after.share, "Set the HAProxy share map.");
        Ok(())
    }
}
