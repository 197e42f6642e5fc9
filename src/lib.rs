//! greenlight: a metrics-driven automatic canary progressor.
//!
//! Layout, in data-flow order:
//!
//! - [`policy`]: per-API policy files and the daemon configuration (TOML), validated into typed
//!   values with `file:line:col` errors.
//! - [`metrics`]: PromQL client (VictoriaMetrics / Prometheus), query templating and data-quality
//!   classification; produces an [`engine::Observation`] per interval.
//! - [`stats`]: anytime-valid e-processes and fixed-horizon tests; pure numeric code.
//! - [`engine`]: the per-API rollout state machine and the pure [`engine::decide`] function.
//! - [`campaign`]: migration campaigns (APIs in waves with concurrency caps) and their pure plan.
//! - [`consul`]: Consul HTTP client (KV, txn, sessions, locks, blocking queries).
//! - [`traffic`]: weight actuators (Consul KV with CAS, HAProxy Runtime API) with read-back;
//!   sticky mode's share maps and salt.
//! - [`alert`]: notifiers (Alertmanager, Slack, webhook) with retries and a durable outbox.
//! - [`daemon`]: the I/O shell: fetch → decide → apply → persist → alert, per policy.
//! - [`audit`]: human actions (one compare-and-set path for the CLI and the console) and their
//!   audit trail in Consul KV.
//! - [`server`]: the progressor's own HTTP endpoints (`/metrics`, `/healthz`, `/api/v1/…`).
//! - [`sim`]: synthetic blue/green worlds driving the real engine (`simulate`, benchmarks).
//! - [`demo`]: the demo HTTP service and load generator of the real-stack demo.
//! - [`cli`]: the command-line front used by the `greenlight` binary.
//!
//! `policy`, `stats`, `engine` and `sim` are synchronous and free of I/O; only the daemon awaits.
//!
//! # Example
//!
//! Validate a policy and let the real engine roll it out in a synthetic world:
//!
//! ```
//! use std::path::Path;
//! use greenlight::policy::Policy;
//! use greenlight::sim::{simulate, Outcome, SimConfig};
//!
//! let text = r#"
//! api = "checkout"
//! steps = [5, 25, 100]
//! [traffic]
//! consul_keys = { blue = "weights/blue", green = "weights/green" }
//! [[check]]
//! name = "errors"
//! kind = "error_rate"
//! requests = 'sum(increase(http_requests_total{cluster="{color}"}[{interval}]))'
//! errors = 'sum(increase(http_requests_total{cluster="{color}",code=~"5.."}[{interval}]))'
//! "#;
//! let policy = Policy::from_toml(text, Path::new("checkout.toml"), None).unwrap();
//!
//! let bad = SimConfig { scenario: "errors=5x".parse().unwrap(), ..SimConfig::default() };
//! assert_eq!(simulate(&policy, &bad).outcome, Outcome::RolledBack);
//!
//! // A typo is reported with its location.
//! let errors = Policy::from_toml(&text.replace("[5, 25, 100]", "[25, 5, 100]"), Path::new("checkout.toml"), None)
//!     .unwrap_err();
//! assert!(errors[0].to_string().starts_with("checkout.toml:3:"));
//! ```

pub mod alert;
pub mod audit;
pub mod campaign;
pub mod cli;
pub mod consul;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod sim;
pub mod stats;
pub mod traffic;
