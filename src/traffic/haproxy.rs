//! Weights set directly through the HAProxy Runtime API on every node, checked first and read
//! back after (in sticky mode, each node's share map: `haproxy_maps.rs`).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::haproxy_node::{
    classify, node_write, parse_node_reply, unix_now, NodeWeights, NodeWrite, Seen,
};
use super::{Retry, TrafficError};
use crate::consul::Fence;
use crate::policy::{Policy, TrafficTarget, Weights};

/// Where one HAProxy node's Runtime API listens: `tcp://host:port` or `unix:///path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for RuntimeAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hostport) = s.strip_prefix("tcp://") {
            if hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Ok(RuntimeAddr::Tcp(hostport.to_string()));
            }
            return Err(format!("{s:?}: expected tcp://host:port"));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(RuntimeAddr::Unix(PathBuf::from(path)));
            }
            return Err(format!("{s:?}: expected unix:///absolute/path"));
        }
        Err(format!(
            "{s:?}: a Runtime API address is tcp://host:port or unix:///path"
        ))
    }
}

impl fmt::Display for RuntimeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeAddr::Tcp(hp) => write!(f, "tcp://{hp}"),
            RuntimeAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// One exchange with a node's Runtime API: a command line in, everything the node answered
/// out (one attempt; a node that does not answer is [`TrafficError::Unreachable`]). The
/// sockets in production, simulated nodes in the world simulator.
pub trait RuntimeIo: Clone + fmt::Debug + Send + Sync {
    fn exchange(
        &self,
        node: &RuntimeAddr,
        line: &str,
    ) -> impl Future<Output = Result<String, TrafficError>> + Send;
}

/// The Runtime API over TCP or Unix sockets, each exchange (connect, write, read to EOF)
/// bounded by a timeout.
#[derive(Debug, Clone)]
pub struct Sockets {
    timeout: Duration,
}

impl RuntimeIo for Sockets {
    async fn exchange(&self, node: &RuntimeAddr, line: &str) -> Result<String, TrafficError> {
        let exchange = async {
            match node {
                RuntimeAddr::Tcp(hostport) => {
                    let stream = tokio::net::TcpStream::connect(hostport.as_str()).await?;
                    exchange(stream, line).await
                }
                RuntimeAddr::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    exchange(stream, line).await
                }
            }
        };
        let unreachable = |reason: String| TrafficError::Unreachable {
            target: format!("HAProxy {node}"),
            attempts: 1,
            reason,
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer within {:?}", self.timeout))),
        }
    }
}

/// The HAProxy Runtime API actuator over one or more nodes.
#[derive(Debug, Clone)]
pub struct HaproxyRuntime<R: RuntimeIo = Sockets> {
    nodes: Vec<RuntimeAddr>,
    io: R,
    retry: Retry,
    pub(super) seen: Seen,
}

impl HaproxyRuntime {
    /// Drives every node in `nodes` (at least one for anything to happen).
    pub fn new(nodes: Vec<RuntimeAddr>) -> Self {
        Self::with_io(
            nodes,
            Sockets {
                timeout: Duration::from_secs(5),
            },
        )
    }

    /// Parses `tcp://…` / `unix://…` node addresses.
    pub fn from_urls<S: AsRef<str>>(urls: &[S]) -> Result<Self, String> {
        let nodes = urls
            .iter()
            .map(|u| u.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(nodes))
    }

    /// Bounds one command exchange (connect, write, read to EOF).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.io.timeout = timeout;
        self
    }
}

impl<R: RuntimeIo> HaproxyRuntime<R> {
    /// Drives `nodes` through `io`.
    pub fn with_io(nodes: Vec<RuntimeAddr>, io: R) -> Self {
        HaproxyRuntime {
            nodes,
            io,
            retry: Retry::default(),
            seen: Seen::default(),
        }
    }

    /// Replaces the backoff used when a node cannot be reached.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    pub fn nodes(&self) -> &[RuntimeAddr] {
        &self.nodes
    }

    /// Sends one command line to `node` and returns everything it answered (read to EOF).
    /// One attempt; a connection failure is [`TrafficError::Unreachable`].
    pub async fn command(&self, node: &RuntimeAddr, line: &str) -> Result<String, TrafficError> {
        self.io.exchange(node, line).await
    }

    /// [`Self::command`] with retries while the node is unreachable.
    pub(super) async fn command_retried(
        &self,
        node: &RuntimeAddr,
        line: &str,
    ) -> Result<String, TrafficError> {
        self.retry
            .run(
                "haproxy",
                |e| matches!(e, TrafficError::Unreachable { .. }),
                || self.command(node, line),
            )
            .await
            .map_err(|(e, attempts)| match e {
                TrafficError::Unreachable { target, reason, .. } => TrafficError::Unreachable {
                    target,
                    attempts,
                    reason,
                },
                other => other,
            })
    }

    /// `get weight backend/server` on `node`: (current, initial).
    pub async fn get_weight(
        &self,
        node: &RuntimeAddr,
        backend: &str,
        server: &str,
    ) -> Result<(u32, u32), TrafficError> {
        let command = format!("get weight {backend}/{server}");
        let reply = self.command_retried(node, &command).await?;
        parse_get_weight(&reply).ok_or_else(|| TrafficError::Haproxy {
            node: node.to_string(),
            command,
            message: reply.trim().to_string(),
        })
    }

    /// Blue's and green's current weights on `node`.
    pub async fn node_weights(
        &self,
        node: &RuntimeAddr,
        backend: &str,
        blue: &str,
        green: &str,
    ) -> Result<Weights, TrafficError> {
        Ok(self.read_node(node, backend, blue, green).await?.weights)
    }

    /// One exchange with `node`: which process answered (`show info`) and both servers' current
    /// and configured weights, all from the same connection and so the same process. Records
    /// the process and tells whether it was restarted since the last look and came back at its
    /// configured weights (a reload, not a human edit).
    pub async fn read_node(
        &self,
        node: &RuntimeAddr,
        backend: &str,
        blue: &str,
        green: &str,
    ) -> Result<NodeWeights, TrafficError> {
        self.read_node_since(node, backend, blue, green, None).await
    }

    /// [`Self::read_node`]; on first contact with (node, backend), a process started after
    /// `written` (Unix seconds: when greenlight's weights were last known on every node) and
    /// at its configured weights also counts as reloaded.
    async fn read_node_since(
        &self,
        node: &RuntimeAddr,
        backend: &str,
        blue: &str,
        green: &str,
        written: Option<u64>,
    ) -> Result<NodeWeights, TrafficError> {
        let command =
            format!("show info; get weight {backend}/{blue}; get weight {backend}/{green}");
        let reply = self.command_retried(node, &command).await?;
        let (process, weights, initial) =
            parse_node_reply(&reply, unix_now()).map_err(|message| TrafficError::Haproxy {
                node: node.to_string(),
                command,
                message,
            })?;
        let reloaded = self
            .seen
            .observe(node, backend, process, weights == initial, written);
        if reloaded {
            tracing::info!(%node, backend, pid = process.pid, blue = weights.blue, green = weights.green, "HAProxy restarted with its configured weights.");
        }
        Ok(NodeWeights {
            node: node.to_string(),
            weights,
            initial,
            process,
            reloaded,
        })
    }

    /// Sets both absolute weights on `node` in one command line, then reads them back (which
    /// also confirms the same process still answers).
    async fn set_node(
        &self,
        node: &RuntimeAddr,
        backend: &str,
        blue: &str,
        green: &str,
        weights: Weights,
    ) -> Result<(), TrafficError> {
        let command = format!(
            "set weight {backend}/{blue} {}; set weight {backend}/{green} {}",
            weights.blue, weights.green
        );
        let reply = self.command_retried(node, &command).await?;
        if !reply.trim().is_empty() {
            return Err(TrafficError::Haproxy {
                node: node.to_string(),
                command,
                message: reply.trim().to_string(),
            });
        }
        let found = self.read_node(node, backend, blue, green).await?;
        if found.weights != weights {
            return Err(TrafficError::ReadBack {
                node: node.to_string(),
                wrote: weights,
                found: found.weights,
            });
        }
        self.seen.applied(node, backend);
        tracing::debug!(%node, backend, blue = weights.blue, green = weights.green, "Set HAProxy weights.");
        Ok(())
    }

    /// Sets the weights on every node without comparing first (for mirroring Consul into
    /// HAProxy). Both servers are looked up first, so a wrong name never leaves one weight
    /// changed. Every node is attempted; failures are reported together.
    pub async fn apply(
        &self,
        backend: &str,
        blue: &str,
        green: &str,
        weights: Weights,
    ) -> Result<(), TrafficError> {
        let mut errors = Vec::new();
        for node in &self.nodes {
            let set = async {
                self.read_node(node, backend, blue, green).await?;
                self.set_node(node, backend, blue, green, weights).await
            };
            if let Err(e) = set.await {
                tracing::warn!(%node, error = %e, "Could not set HAProxy weights.");
                errors.push(e);
            }
        }
        collect(errors)
    }

    pub(super) fn target(policy: &Policy) -> Result<(&str, &str, &str), TrafficError> {
        match &policy.traffic.target {
            TrafficTarget::Haproxy {
                backend,
                blue,
                green,
            } => Ok((backend, blue, green)),
            TrafficTarget::ConsulKeys { .. } => Err(TrafficError::WrongTarget {
                api: policy.api.clone(),
                wanted: "HAProxy",
            }),
        }
    }

    /// The weights every node agrees on, or why there are none ([`classify`]).
    ///
    /// `written` is when greenlight last knew its weights to be on every node: a node this
    /// runtime has not seen before (after a restart of greenlight, or with `run --once`) whose
    /// process started later and shows its configured weights was reloaded in between.
    pub(crate) async fn read(
        &self,
        policy: &Policy,
        written: Option<jiff::Timestamp>,
    ) -> Result<Weights, TrafficError> {
        self.read_split(policy, written, None).await
    }

    /// [`Self::read`]; in sticky mode the split is each node's share map (see
    /// [`Self::read_sticky`]), checked against the rollout's `salt` when given.
    pub(crate) async fn read_split(
        &self,
        policy: &Policy,
        written: Option<jiff::Timestamp>,
        salt: Option<&str>,
    ) -> Result<Weights, TrafficError> {
        if let Some(sticky) = &policy.traffic.sticky {
            return self.read_sticky(policy, sticky, written, salt).await;
        }
        let (backend, blue, green) = Self::target(policy)?;
        let written = written.and_then(|t| u64::try_from(t.as_second()).ok());
        let mut found = Vec::with_capacity(self.nodes.len());
        let mut down = Vec::new();
        for node in &self.nodes {
            match self
                .read_node_since(node, backend, blue, green, written)
                .await
            {
                Ok(n) => found.push(n),
                Err(e @ TrafficError::Unreachable { .. }) => down.push((node.to_string(), e)),
                Err(e) => return Err(e),
            }
        }
        classify(&found, down, backend)
    }

    /// Compare-and-set over all nodes, node by node: a node already at `new` is left as it is,
    /// a node at `expected` or just restarted at its configured weights is written, any other
    /// node was changed by hand.
    ///
    /// A change that keeps traffic on green checks every node before writing any: one node
    /// changed by hand ([`TrafficError::Override`]) or unreachable, and nothing is written. A
    /// change that takes green out of service (`new.green == 0`: rollback, abort) is written
    /// to every node it can reach even when others are down or changed by hand, and
    /// [`TrafficError::Partial`] names the nodes that have it and why the others do not.
    ///
    /// With a `fence`, nothing is written once the lock is known lost
    /// ([`TrafficError::LockLost`]); it is checked again before each node.
    pub(crate) async fn write(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        self.write_split(policy, expected, new, None, fence).await
    }

    /// [`Self::write`]; in sticky mode each node's share map is compared and set instead of
    /// the server weights (the share of `new`, and the rollout's `salt` when given), and its
    /// subset maps are brought to the policy's members.
    pub(crate) async fn write_split(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
        salt: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<(), TrafficError> {
        let lock_held = || fence.is_none_or(|f| f.is_held());
        if !lock_held() {
            return Err(TrafficError::LockLost);
        }
        let (backend, blue, green) = Self::target(policy)?;
        let drains_green = new.green == 0;
        let mut applied = Vec::new();
        let mut writable = Vec::new();
        let mut failed: Vec<(String, TrafficError)> = Vec::new();
        for node in &self.nodes {
            let read = match &policy.traffic.sticky {
                Some(sticky) => self
                    .read_node_share(node, policy, sticky, salt, None)
                    .await
                    .map(|n| (n.node, n.stale_salt)),
                None => self
                    .read_node(node, backend, blue, green)
                    .await
                    .map(|n| (n, false)),
            };
            match read {
                Ok((n, stale)) => match node_write(&n, stale, expected, new) {
                    NodeWrite::Applied => {
                        self.seen.applied(node, backend);
                        applied.push(n.node);
                    }
                    NodeWrite::Write => writable.push(node),
                    NodeWrite::Changed(found) => {
                        tracing::debug!(%node, "HAProxy weights differ from the expected ones.");
                        failed.push((n.node, TrafficError::Override { found }));
                    }
                },
                Err(e) => failed.push((node.to_string(), e)),
            }
        }
        if !drains_green && !failed.is_empty() {
            // Nothing written: a human edit first (it pauses), else the unreachable nodes.
            if let Some(i) = failed
                .iter()
                .position(|(_, e)| matches!(e, TrafficError::Override { .. }))
            {
                return Err(failed.swap_remove(i).1);
            }
            return Err(collect(failed.into_iter().map(|(_, e)| e).collect()).unwrap_err());
        }
        for node in writable {
            if !lock_held() {
                tracing::warn!(api = %policy.api, applied = ?applied, "Lock lost while writing HAProxy weights; stopped.");
                return Err(TrafficError::LockLost);
            }
            let set = match &policy.traffic.sticky {
                Some(sticky) => self.set_node_share(node, policy, sticky, new, salt).await,
                None => self.set_node(node, backend, blue, green, new).await,
            };
            match set {
                Ok(()) => applied.push(node.to_string()),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "Could not set HAProxy weights.");
                    failed.push((node.to_string(), e));
                }
            }
        }
        match (applied.is_empty(), failed.len()) {
            (_, 0) => Ok(()),
            (true, 1) => Err(failed.remove(0).1),
            _ => Err(TrafficError::Partial { applied, failed }),
        }
    }
}

pub(super) fn collect(mut errors: Vec<TrafficError>) -> Result<(), TrafficError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(TrafficError::Nodes(errors)),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    line: &str,
) -> std::io::Result<String> {
    stream.write_all(line.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    stream.flush().await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Parses `"<current> (initial <initial>)"`.
pub(super) fn parse_get_weight(reply: &str) -> Option<(u32, u32)> {
    let text = reply.trim();
    let (current, rest) = text.split_once(' ')?;
    let initial = rest.strip_prefix("(initial ")?.strip_suffix(')')?;
    Some((current.parse().ok()?, initial.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_weight_replies_parse() {
        assert_eq!(parse_get_weight("10 (initial 0)\n\n"), Some((10, 0)));
        assert_eq!(parse_get_weight("256 (initial 100)\n"), Some((256, 100)));
        assert_eq!(parse_get_weight("No such server.\n"), None);
    }

    #[test]
    fn node_addresses_parse() {
        assert_eq!(
            "tcp://127.0.0.1:9999".parse(),
            Ok(RuntimeAddr::Tcp("127.0.0.1:9999".into()))
        );
        assert_eq!(
            "unix:///run/haproxy/admin.sock".parse(),
            Ok(RuntimeAddr::Unix("/run/haproxy/admin.sock".into()))
        );
        assert!("127.0.0.1:9999".parse::<RuntimeAddr>().is_err());
        assert!("tcp://nohost".parse::<RuntimeAddr>().is_err());
        assert!("unix://relative".parse::<RuntimeAddr>().is_err());
    }
}
