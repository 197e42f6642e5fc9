//! `greenlight sync` in sticky mode: green's share (from the weights in Consul) and the
//! rollout's salt (from the salt key, read in the same transaction) set in each node's API map,
//! and the subset maps kept equal to the policy's members, replaced atomically when not. A
//! reloaded node comes back with its map files (share 0): the next pass sets it again and counts
//! a drift repair.

use super::{NodeMemory, SyncTarget, Syncer};
use crate::policy::{Policy, Sticky, Weights};
use crate::traffic::sticky::api_map;
use crate::traffic::sticky_maps::{api_entries, salt_matters, share_of};
use crate::traffic::{HaproxyRuntime, RuntimeAddr, TrafficError};

/// A share between nobody and everyone needs the rollout's salt: without it each node would
/// draw with whatever salt its map file holds, and nothing is applied. The salt key, if so.
pub(super) fn missing_salt(
    policy: &Policy,
    weights: Weights,
    salt: Option<&str>,
) -> Option<String> {
    let key = policy.traffic.sticky.as_ref()?.salt_key.as_ref()?;
    (salt.is_none() && salt_matters(share_of(weights))).then(|| key.clone())
}

impl Syncer {
    /// Brings one node's maps in line with Consul: the API map's share and salt, then each
    /// subset map.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn sync_share(
        &self,
        target: &SyncTarget,
        sticky: &Sticky,
        addr: &RuntimeAddr,
        runtime: &HaproxyRuntime,
        desired: Weights,
        salt: Option<&str>,
        memory: &mut NodeMemory,
    ) -> Result<(), TrafficError> {
        let api = target.api();
        let node = addr.to_string();
        let map = api_map(sticky, api);
        let share = share_of(desired);
        let wanted = api_entries(share, salt);
        if let Some(before) = runtime.ensure_entries(addr, &map, &wanted).await? {
            let found: Vec<String> = before.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if memory.shares.get(&node) == Some(&wanted) {
                self.metrics.drift_repaired(api, &node);
                share_repaired(api, &node, &found.join(" "), share);
            } else {
                share_applied(api, &node, &found.join(" "), share);
            }
        }
        let replaced = runtime.ensure_subsets(addr, &target.policy, sticky).await?;
        if memory.subsets.contains(&node) {
            for map in &replaced {
                self.metrics.drift_repaired(api, &node);
                tracing::warn!(api, node = %node, map = %map, "An HAProxy subset map drifted from the policy; replaced it.");
            }
        }
        memory.subsets.insert(node.clone());
        self.metrics.verified_share(api, &node, share);
        memory.shares.insert(node, wanted);
        Ok(())
    }
}

fn share_applied(api: &str, node: &str, found: &str, share: u32) {
    tracing::info!(
        api,
        node,
        found,
        share,
        "Applied Consul's share to the HAProxy map."
    );
}

fn share_repaired(api: &str, node: &str, found: &str, share: u32) {
    tracing::warn!(
        api,
        node,
        found,
        share,
        "HAProxy's share map drifted from Consul (a reload?); set it again."
    );
}
