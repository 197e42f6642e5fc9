//! Documents of the whole fleet in Consul KV (campaign states, cluster breakers): one JSON
//! document per name under `<prefix>/<kind>/<name>`, always written by compare-and-set. The
//! leader's writes are fenced by its lock and carry the document's alerts into the shared
//! outbox (`<prefix>/outbox/<kind>.<name>/`) in the same transaction. Operators' requests
//! (`greenlight campaign start|pause|resume|stop`, `greenlight breaker reset`) are written by
//! compare-and-set, retried on a race, and obeyed at the leader's next look.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::outbox;
use super::store::{cas_txn, StoreError};
use jiff::Timestamp;

use super::env::AlertIo;
use crate::alert::{AlertEvent, OutboxEntry};
use crate::campaign::{CampaignIntent, CampaignState};
use crate::consul::{ConsulClient, Fence};
use crate::engine::breaker::BreakerState;

/// How often a request that lost a compare-and-set race is tried again.
const ROUNDS: usize = 5;

/// A kind of fleet document.
pub trait Doc: Serialize + DeserializeOwned {
    /// The key segment (`campaign`, `breaker`); `.` never occurs in an API name, so the outbox
    /// folder `<kind>.<name>` never meets an API's.
    const KIND: &'static str;
    /// The document of a name never written.
    fn fresh(name: &str) -> Self;
    fn name(&self) -> &str;
}

impl Doc for CampaignState {
    const KIND: &'static str = "campaign";
    fn fresh(name: &str) -> Self {
        CampaignState::new(name)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Doc for BreakerState {
    const KIND: &'static str = "breaker";
    fn fresh(name: &str) -> Self {
        BreakerState::new(name)
    }
    fn name(&self) -> &str {
        &self.cluster
    }
}

/// Reads and writes the documents of one kind.
#[derive(Debug)]
pub struct DocStore<T> {
    client: ConsulClient,
    prefix: String,
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for DocStore<T> {
    fn clone(&self) -> Self {
        DocStore {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            kind: PhantomData,
        }
    }
}

/// Campaign states.
pub type CampaignStore = DocStore<CampaignState>;
/// Cluster breakers.
pub type BreakerStore = DocStore<BreakerState>;

impl<T: Doc> DocStore<T> {
    pub fn new(client: ConsulClient, prefix: &str) -> Self {
        DocStore {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            kind: PhantomData,
        }
    }

    /// The key holding `name`'s document.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{}/{name}", self.prefix, T::KIND)
    }

    /// The shared outbox folder of `name`'s alerts.
    pub fn outbox_folder(&self, name: &str) -> String {
        outbox::api_prefix(&self.prefix, &format!("{}.{name}", T::KIND))
    }

    fn what(name: &str) -> String {
        format!("{} {name}", T::KIND)
    }

    /// The stored document `name` and its ModifyIndex, or a fresh one and 0.
    pub async fn load(&self, name: &str) -> Result<(T, u64), StoreError> {
        let key = self.key(name);
        match self.client.get(&key).await? {
            None => Ok((T::fresh(name), 0)),
            Some(entry) => serde_json::from_slice(&entry.value)
                .map(|s| (s, entry.modify_index))
                .map_err(|e| StoreError::Corrupt {
                    api: Self::what(name),
                    key,
                    index: entry.modify_index,
                    reason: e.to_string(),
                }),
        }
    }

    /// The names with a stored document.
    pub async fn names(&self) -> Result<Vec<String>, StoreError> {
        let folder = format!("{}/{}/", self.prefix, T::KIND);
        let keys = self.client.keys(&folder).await?;
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix(&folder))
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .map(str::to_string)
            .collect())
    }

    /// Writes `doc` if the stored one still has ModifyIndex `index` (0: absent), fenced when
    /// given, with `alerts` in the shared outbox in the same transaction. Returns the new
    /// ModifyIndex and the alerts that did not fit (for the local outbox).
    pub async fn save(
        &self,
        doc: &T,
        index: u64,
        fence: Option<&Fence>,
        alerts: Vec<OutboxEntry>,
    ) -> Result<(u64, Vec<OutboxEntry>), StoreError> {
        let name = doc.name();
        let body = serde_json::to_vec(doc).map_err(|e| StoreError::Encode {
            api: Self::what(name),
            reason: e.to_string(),
        })?;
        let (ops, spilled) = if alerts.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let folder = self.outbox_folder(name);
            let existing = self.client.keys(&folder).await.unwrap_or_default();
            let plan = outbox::plan(&folder, &existing, index, alerts);
            (plan.ops(), plan.spilled)
        };
        let index = cas_txn(
            &self.client,
            &self.key(name),
            &body,
            index,
            fence,
            ops,
            &Self::what(name),
        )
        .await?;
        Ok((index, spilled))
    }

    /// [`DocStore::save`] by the leader with `events` for `channels`: the events go into the
    /// shared outbox in the same transaction, those that do not fit through `alerts` (the
    /// local outbox). Returns the new ModifyIndex.
    pub(super) async fn save_alerting(
        &self,
        doc: &T,
        index: u64,
        fence: &Fence,
        (events, channels): (&[AlertEvent], &[String]),
        now: Timestamp,
        alerts: &impl AlertIo,
    ) -> Result<u64, StoreError> {
        let entries: Vec<OutboxEntry> = events
            .iter()
            .flat_map(|e| channels.iter().map(move |ch| OutboxEntry::new(ch, e, now)))
            .collect();
        let (index, spilled) = self.save(doc, index, Some(fence), entries).await?;
        for entry in spilled {
            if let Err(e) = alerts
                .notify(&entry.event, std::slice::from_ref(&entry.channel))
                .await
            {
                tracing::error!(what = %Self::what(doc.name()), error = %e, "Could not record an alert.");
            }
        }
        Ok(index)
    }

    /// Changes document `name` with `change` (compare-and-set, retried on a race). Returns
    /// the document as written.
    pub async fn update(&self, name: &str, change: impl Fn(&mut T)) -> Result<T, StoreError> {
        for _ in 0..ROUNDS {
            let (mut doc, index) = self.load(name).await?;
            change(&mut doc);
            match self.save(&doc, index, None, Vec::new()).await {
                Ok(_) => return Ok(doc),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            api: Self::what(name),
        })
    }
}

impl CampaignStore {
    /// Records `intent` by `by` on campaign `name`; the leader obeys it at its next look.
    pub async fn request(
        &self,
        name: &str,
        intent: CampaignIntent,
        by: &str,
    ) -> Result<CampaignState, StoreError> {
        self.update(name, |state| {
            state.intent = Some(intent);
            state.intent_by = Some(by.to_string());
        })
        .await
    }
}

impl BreakerStore {
    /// Asks for a reset of cluster `name`'s breaker by `by`; the leader obeys at its next look.
    pub async fn request_reset(&self, name: &str, by: &str) -> Result<BreakerState, StoreError> {
        self.update(name, |state| {
            state.reset_requested_by = Some(by.to_string())
        })
        .await
    }
}
