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
//! - [`consul`]: Consul HTTP client (KV, txn, sessions, locks, blocking queries).
//! - [`traffic`]: weight actuators (Consul KV with CAS, HAProxy Runtime API) with read-back.
//! - [`alert`]: notifiers (Alertmanager, Slack, webhook) with retries and a durable outbox.
//! - [`daemon`]: the I/O shell: fetch → decide → apply → persist → alert, per policy.
//! - [`server`]: the progressor's own HTTP endpoints (`/metrics`, `/healthz`, `/api/v1/…`).
//! - [`sim`]: synthetic blue/green worlds driving the real engine (`simulate`, benchmarks).
//! - [`demo`]: the demo HTTP service and load generator of the real-stack demo.
//! - [`cli`]: the command-line front used by the `greenlight` binary.
//!
//! `policy`, `stats`, `engine` and `sim` are synchronous and free of I/O; only the daemon awaits.

pub mod alert;
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
