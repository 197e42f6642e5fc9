//! `greenlight rollback API --now`: the break-glass rollback. It does not wait for the daemon:
//! it sends all traffic to the stable colour itself (or to `--to`'s), by compare-and-set on the policy's traffic target
//! (Consul KV keys or the HAProxy Runtime API), then records the rollback and why in the state
//! (a state that cannot be decoded is kept under another key and replaced by a fresh
//! rolled-back one), then alerts through the policy's rollback channels.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

use super::act::audit_log;
use super::ops::RollbackArgs;
use super::ops::{actuator, finish_output, policy_of, store};
use crate::alert::{channel, channels_from_config, AlertEvent, EventKind, Notifier};
use crate::audit::{ActionKind, Actor, AuditEntry};
use crate::daemon::{StateStore, StoreError};
use crate::engine::{decode_state, stable_of_undecodable, Phase, RolloutState};
use crate::policy::{Colour, Config, Policy, Weights};
use crate::traffic::{Actuator, TrafficError};

/// Compare-and-set rounds against weights or a state that keep changing under us.
const ROUNDS: usize = 5;

pub fn rollback_now(config: Option<&Path>, actor: &Actor, args: &RollbackArgs) -> i32 {
    let (api, reason) = (args.api.as_str(), args.reason.as_str());
    let to: Option<Colour> = args.to.as_deref().and_then(|c| c.parse().ok());
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = match policy_of(&config, api) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = match store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let actuator = match actuator(&config, &store, &policy) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_CONFIG;
        }
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let to = match target_colour(&policy, &store, to).await {
            Ok(c) => c,
            Err(why) => {
                eprintln!("error: {api}: {why}. Nothing changed.");
                return super::EXIT_FAILURE;
            }
        };
        run(&config, &policy, &store, &actuator, actor, (reason, to)).await
    })
}

/// The colour a break-glass rollback sends all traffic to: `to`, or the stored state's stable
/// colour (blue for an API without a state). A rollout in progress is only ever rolled back to
/// its stable colour; a promoted one may be sent back to the previous stable colour.
async fn target_colour(
    policy: &Policy,
    store: &StateStore,
    to: Option<Colour>,
) -> Result<Colour, String> {
    let stored = store.load_raw(&policy.api).await;
    let state = match stored {
        Ok(None) => return Ok(to.unwrap_or(Colour::Blue)),
        Ok(Some((bytes, _))) => match decode_state(&bytes) {
            Ok(state) => Ok(state),
            Err(e) => match (to, stable_of_undecodable(&bytes)) {
                (None, Some(stable)) => return Ok(stable),
                _ => Err(e.to_string()),
            },
        },
        Err(e) => Err(e.to_string()),
    };
    match (state, to) {
        (Ok(s), None) => Ok(s.releases.stable),
        (Ok(s), Some(to)) if to == s.releases.stable || s.phase == Phase::Promoted => Ok(to),
        (Ok(s), Some(to)) => Err(format!(
            "{to} is the candidate of the rollout in progress ({}); a break-glass rollback sends \
             all traffic to the stable colour, {}",
            s.phase.as_str(),
            s.releases.stable
        )),
        (Err(_), Some(to)) => Ok(to),
        (Err(e), None) => Err(format!(
            "the stable colour could not be read from the state ({e}); say where all traffic \
             goes with `--to blue` or `--to green`"
        )),
    }
}

async fn run(
    config: &Config,
    policy: &Policy,
    store: &StateStore,
    actuator: &Actuator,
    actor: &Actor,
    (reason, to): (&str, Colour),
) -> i32 {
    let api = &policy.api;
    let target = policy.traffic.weights_toward(to.other(), 0.0);
    // 1. Traffic first: the stable colour takes everything even if nothing else below works.
    let before = match set_weights(policy, actuator, target).await {
        Ok(before) => before,
        Err(e) => {
            eprintln!("error: {api}: could not set the weights to blue={} green={}: {e}. Nothing changed.", target.blue, target.green);
            return super::EXIT_FAILURE;
        }
    };
    let mut code = 0;
    let mut lines = vec![if before == target {
        format!(
            "{api}: all traffic was already on {to} (blue={} green={}).",
            target.blue, target.green
        )
    } else {
        format!(
            "{api}: all traffic on {to} now: weights blue={} green={} (were blue={} green={}), set by compare-and-set.",
            target.blue, target.green, before.blue, before.green
        )
    }];
    // 2. The state says why, so that the daemon holds and `status` tells.
    let why = format!("Break-glass rollback (`greenlight rollback --now`): {reason}");
    let (recorded, written) = match record(policy, store, &why, to).await {
        Ok((recorded, written)) => (Ok(recorded), Some(written)),
        Err(e) => (Err(e), None),
    };
    match &recorded {
        Ok(Recorded::Updated { revision }) => lines.push(format!(
            "Recorded in the state as rolled back (revision {revision})."
        )),
        Ok(Recorded::Replaced { kept_at, reason }) => lines.push(format!(
            "The stored state could not be decoded ({reason}); its bytes are kept at {kept_at} and a fresh rolled-back state was written."
        )),
        Err(e) => {
            code = super::EXIT_FAILURE;
            eprintln!("error: {api}: traffic is on {to}, but the rollback could not be recorded in the state: {e}");
        }
    }
    // 3. Tell people, and keep the audit entry.
    let event = alert(policy, (before, target, to), reason, &recorded);
    lines.extend(send(config, policy, &event).await);
    let written = written.unwrap_or_else(|| {
        // Not recorded in the state: the entry still says what happened to the weights.
        let mut was = RolloutState::new(policy);
        was.weights = before;
        let mut now = was.clone();
        now.record_break_glass(policy, &why, to, Timestamp::now());
        Written {
            before: was,
            after: now,
            index: 0,
        }
    });
    let entry = AuditEntry::new(
        policy,
        actor,
        ActionKind::RollbackNow,
        reason,
        &written.before,
        &written.after,
        written.index,
        Timestamp::now(),
    );
    if let Some(e) = audit_log(config, store).record(policy, &entry).await {
        lines.push(format!("The audit entry could not be written: {e}."));
    }
    let text = lines.join("\n");
    let printed = finish_output({
        use std::io::Write;
        writeln!(std::io::stdout().lock(), "{text}")
    });
    if code == 0 {
        printed
    } else {
        code
    }
}

/// Compare-and-set to `target` from whatever the weights are; returns what they were.
async fn set_weights(
    policy: &Policy,
    actuator: &Actuator,
    target: Weights,
) -> Result<Weights, TrafficError> {
    let mut last = None;
    for _ in 0..ROUNDS {
        let live = match actuator.read(policy).await {
            Ok(w) => w,
            Err(TrafficError::Missing { .. }) => {
                if let Actuator::ConsulKv(kv) = actuator {
                    kv.initialize(policy, target).await?;
                }
                actuator.read(policy).await?
            }
            Err(e) => return Err(e),
        };
        if live == target {
            return Ok(live);
        }
        match actuator.write(policy, live, target).await {
            Ok(()) => return Ok(live),
            // Changed between the read and the write: read again.
            Err(TrafficError::Override { found }) => last = Some(found),
            Err(e) => return Err(e),
        }
    }
    Err(TrafficError::Override {
        found: last.unwrap_or(target),
    })
}

enum Recorded {
    Updated { revision: u64 },
    Replaced { kept_at: String, reason: String },
}

/// The state before and after the break-glass rollback, and the ModifyIndex written.
struct Written {
    before: RolloutState,
    after: RolloutState,
    index: u64,
}

/// Writes the rollback into the state (compare-and-set, retried on conflicts).
async fn record(
    policy: &Policy,
    store: &StateStore,
    why: &str,
    to: Colour,
) -> Result<(Recorded, Written), StoreError> {
    let mut last = None;
    for _ in 0..ROUNDS {
        let now = Timestamp::now();
        // The stored state and its index (a fresh state at 0 when there is none), or the
        // bytes that cannot be decoded.
        let stored = match store.load_raw(&policy.api).await? {
            None => Ok((RolloutState::new(policy), 0)),
            Some((bytes, index)) => match decode_state(&bytes) {
                Ok(state) => Ok((state, index)),
                Err(e) => Err((e.to_string(), bytes, index)),
            },
        };
        let attempt = match stored {
            Ok((before, index)) => {
                let mut state = before.clone();
                state.reconcile(policy);
                state.record_break_glass(policy, why, to, now);
                let revision = state.revision;
                store.save(&state, index, None).await.map(|index| {
                    let written = Written {
                        before,
                        after: state,
                        index,
                    };
                    (Recorded::Updated { revision }, written)
                })
            }
            Err((reason, bytes, index)) => {
                let before = RolloutState::new(policy);
                let mut state = before.clone();
                let kept = store.undecodable_key(&policy.api, index);
                state.record_break_glass(
                    policy,
                    &format!(
                        "{why} (the previous state could not be decoded: {reason}; kept at {kept})"
                    ),
                    to,
                    now,
                );
                store
                    .replace_undecodable(&state, index, &bytes)
                    .await
                    .map(|(kept_at, index)| {
                        let written = Written {
                            before,
                            after: state,
                            index,
                        };
                        (Recorded::Replaced { kept_at, reason }, written)
                    })
            }
        };
        match attempt {
            Err(StoreError::Conflict { api }) => last = Some(StoreError::Conflict { api }),
            other => return other,
        }
    }
    Err(last.unwrap_or(StoreError::Conflict {
        api: policy.api.clone(),
    }))
}

fn alert(
    policy: &Policy,
    (before, after, to): (Weights, Weights, Colour),
    reason: &str,
    recorded: &Result<Recorded, StoreError>,
) -> AlertEvent {
    let now = Timestamp::now();
    let state = match recorded {
        Ok(Recorded::Updated { revision }) => format!("recorded as rolled back (revision {revision})"),
        Ok(Recorded::Replaced { kept_at, reason }) => format!(
            "the stored state could not be decoded ({reason}); kept at {kept_at}, a fresh rolled-back state written"
        ),
        Err(e) => format!("not recorded: {e}"),
    };
    AlertEvent::new(
        &policy.api,
        EventKind::Rollback,
        &format!("breakglass-{}", now.as_second()),
        format!(
            "{}: an operator sent all traffic back to {to} (rollback --now): {reason}",
            policy.api
        ),
        now,
    )
    .with_description(format!(
        "Break-glass rollback by an operator, without the daemon: {reason}\n\
         Weights blue={} green={} -> blue={} green={}.\nState: {state}.\n",
        before.blue, before.green, after.blue, after.green
    ))
    .with_field(
        "weights_before",
        format!("blue={} green={}", before.blue, before.green),
    )
    .with_field(
        "weights_after",
        format!("blue={} green={}", after.blue, after.green),
    )
    .with_field("reason", reason)
    .with_field("state", state)
}

/// Sends `event` to the policy's rollback channels: through the durable outbox (so a daemon
/// sharing the state directory retries what fails), or directly when it cannot be opened.
/// Returns one line per channel.
async fn send(config: &Config, policy: &Policy, event: &AlertEvent) -> Vec<String> {
    let names = policy.alert_channels("rollback");
    if names.is_empty() {
        return vec!["No alert channel is routed rollbacks for this API.".into()];
    }
    let channels = match channels_from_config(config) {
        Ok(c) => c,
        Err(e) => return vec![format!("Alert not sent: {e}.")],
    };
    let timeout = Duration::from_secs(5);
    match Notifier::new(channels.clone(), config.state_dir.join("outbox"), timeout) {
        Ok(notifier) => match notifier.notify(event, names).await {
            Ok(report) => {
                let mut lines = vec![format!(
                    "Alert sent to {} of {} channels ({}).",
                    report.delivered,
                    names.len(),
                    names.join(", ")
                )];
                if report.retrying > 0 {
                    lines.push(format!(
                        "{} delivery failed; kept in the outbox at {} for the daemon to retry.",
                        report.retrying,
                        config.state_dir.join("outbox").display()
                    ));
                }
                if report.rejected > 0 || !report.unknown_channels.is_empty() {
                    lines.push(format!(
                        "{} rejected by the receiver, unknown channels: {:?}.",
                        report.rejected, report.unknown_channels
                    ));
                }
                lines
            }
            Err(e) => vec![format!("Alert not recorded: {e}.")],
        },
        Err(_) => {
            let Ok(client) = channel::http_client(timeout) else {
                return vec!["Alert not sent: no HTTP client.".into()];
            };
            let mut lines = Vec::new();
            for name in names {
                let line = match channels.iter().find(|c| &c.name == name) {
                    None => format!("Alert channel {name} is not configured."),
                    Some(c) => match channel::deliver(&client, c, event).await {
                        Ok(()) => format!("Alert sent to {name}."),
                        Err(e) => format!("Alert to {name} failed: {e}."),
                    },
                };
                lines.push(line);
            }
            lines
        }
    }
}
