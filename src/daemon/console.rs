//! The daemon side of the console: the stored states, the one action path
//! ([`crate::audit::perform`]) and the audit trail, behind [`ConsoleBackend`].

use std::sync::Arc;

use super::status::LiveStatus;
use super::StateStore;
use crate::audit::{
    perform, ActionError, ActionOutcome, ActionRequest, Actor, AuditEntry, AuditLog,
};
use crate::engine::{DecisionRecord, RolloutState};
use crate::policy::{Config, Policy};
use crate::server::console::{auth::Auth, BoxFuture, Console, ConsoleBackend, MetricsUi};

/// How many audit entries an API page shows.
const AUDIT_SHOWN: usize = 100;

/// Actions and reads for the console, on greenlight's Consul keys.
pub struct DaemonConsole {
    store: StateStore,
    audit: AuditLog,
    status: Arc<LiveStatus>,
}

impl DaemonConsole {
    pub fn new(store: StateStore, audit: AuditLog, status: Arc<LiveStatus>) -> DaemonConsole {
        DaemonConsole {
            store,
            audit,
            status,
        }
    }
}

impl ConsoleBackend for DaemonConsole {
    fn state<'a>(
        &'a self,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<(RolloutState, u64), String>> {
        Box::pin(async move { self.store.load(policy).await.map_err(|e| e.to_string()) })
    }

    fn perform<'a>(
        &'a self,
        policy: Arc<Policy>,
        actor: Actor,
        request: ActionRequest,
    ) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            let done = perform(&self.store, &self.audit, &policy, &actor, request).await?;
            // The overview shows the pending intent at once, not after the next evaluation.
            self.status.update(&policy, &done.after);
            Ok(done)
        })
    }

    fn history<'a>(&'a self, api: &'a str) -> BoxFuture<'a, Vec<DecisionRecord>> {
        Box::pin(async move {
            match self.store.history(api).await {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(api = %api, error = %e, "Cannot read the decision history.");
                    Vec::new()
                }
            }
        })
    }

    fn audit<'a>(&'a self, api: &'a str) -> BoxFuture<'a, Vec<AuditEntry>> {
        Box::pin(async move {
            match self.audit.list(api, AUDIT_SHOWN).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(api = %api, error = %e, "Cannot read the audit trail.");
                    Vec::new()
                }
            }
        })
    }
}

/// The console the daemon serves: sign-in from `config`, actions through `store`, recorded in
/// `audit` (the shell's trail, which alerts through the daemon's one outbox).
pub fn console(
    config: &Config,
    store: StateStore,
    audit: AuditLog,
    status: Arc<LiveStatus>,
) -> Result<Console, String> {
    let auth = Auth::from_config(&config.console)?;
    let actions: Arc<dyn ConsoleBackend> = Arc::new(DaemonConsole::new(store, audit, status));
    let backend = match config.metrics.kind {
        crate::policy::MetricsBackend::VictoriaMetrics => crate::metrics::Backend::VictoriaMetrics,
        crate::policy::MetricsBackend::Prometheus => crate::metrics::Backend::Prometheus,
    };
    let ui = MetricsUi {
        url: config.metrics.url.trim_end_matches('/').to_string(),
        backend,
    };
    Ok(Console::new(auth, Some(actions), Some(ui)))
}
