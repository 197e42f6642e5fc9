//! Campaign states in Consul KV: one JSON document per campaign under `<prefix>/campaign/<name>`,
//! always written by compare-and-set; the leader's writes are fenced by its lock and carry the
//! campaign's alerts into the shared outbox (`<prefix>/outbox/campaign.<name>/`) in the same
//! transaction. Operators' requests (`greenlight campaign start|pause|resume|stop`) are intents
//! written by compare-and-set, obeyed at the leader's next look.

use super::outbox;
use super::store::{cas_txn, StoreError};
use crate::alert::OutboxEntry;
use crate::campaign::{decode_state, encode_state, CampaignIntent, CampaignState};
use crate::consul::{ConsulClient, Fence};

/// How often a request that lost a compare-and-set race is tried again.
const ROUNDS: usize = 5;

/// Reads and writes campaign states.
#[derive(Debug, Clone)]
pub struct CampaignStore {
    client: ConsulClient,
    prefix: String,
}

impl CampaignStore {
    pub fn new(client: ConsulClient, prefix: &str) -> Self {
        CampaignStore {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The key holding `name`'s state.
    pub fn key(&self, name: &str) -> String {
        format!("{}/campaign/{name}", self.prefix)
    }

    /// The shared outbox folder of `name`'s alerts (`.` cannot occur in an API name, so it
    /// never meets an API's folder).
    pub fn outbox_folder(&self, name: &str) -> String {
        outbox::api_prefix(&self.prefix, &format!("campaign.{name}"))
    }

    /// The stored state of campaign `name` and its ModifyIndex, or a fresh (idle) state and 0.
    pub async fn load(&self, name: &str) -> Result<(CampaignState, u64), StoreError> {
        let key = self.key(name);
        match self.client.get(&key).await? {
            None => Ok((CampaignState::new(name), 0)),
            Some(entry) => decode_state(&entry.value)
                .map(|s| (s, entry.modify_index))
                .map_err(|e| StoreError::Corrupt {
                    api: format!("campaign {name}"),
                    key,
                    index: entry.modify_index,
                    reason: e.to_string(),
                }),
        }
    }

    /// Writes `state` if the stored one still has ModifyIndex `index` (0: absent), fenced when
    /// given, with `alerts` in the shared outbox in the same transaction. Returns the new
    /// ModifyIndex and the alerts that did not fit (for the local outbox).
    pub async fn save(
        &self,
        state: &CampaignState,
        index: u64,
        fence: Option<&Fence>,
        alerts: Vec<OutboxEntry>,
    ) -> Result<(u64, Vec<OutboxEntry>), StoreError> {
        let body = encode_state(state).map_err(|e| StoreError::Encode {
            api: format!("campaign {}", state.name),
            reason: e.to_string(),
        })?;
        let (ops, spilled) = if alerts.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let folder = self.outbox_folder(&state.name);
            let existing = self.client.keys(&folder).await.unwrap_or_default();
            let plan = outbox::plan(&folder, &existing, index, alerts);
            (plan.ops(), plan.spilled)
        };
        let name = format!("campaign {}", state.name);
        let index = cas_txn(
            &self.client,
            &self.key(&state.name),
            &body,
            index,
            fence,
            ops,
            &name,
        )
        .await?;
        Ok((index, spilled))
    }

    /// Records `intent` by `by` on campaign `name` (compare-and-set, retried on a race); the
    /// leader obeys it at its next look. Returns the state as written.
    pub async fn request(
        &self,
        name: &str,
        intent: CampaignIntent,
        by: &str,
    ) -> Result<CampaignState, StoreError> {
        for _ in 0..ROUNDS {
            let (mut state, index) = self.load(name).await?;
            state.intent = Some(intent);
            state.intent_by = Some(by.to_string());
            match self.save(&state, index, None, Vec::new()).await {
                Ok(_) => return Ok(state),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            api: format!("campaign {name}"),
        })
    }
}
