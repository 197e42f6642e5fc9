//! Weights set directly through the HAProxy Runtime API on every node, checked first and read
//! back after.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Retry, TrafficError};
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

/// The HAProxy Runtime API actuator over one or more nodes.
#[derive(Debug, Clone)]
pub struct HaproxyRuntime {
    nodes: Vec<RuntimeAddr>,
    timeout: Duration,
    retry: Retry,
}

impl HaproxyRuntime {
    /// Drives every node in `nodes` (at least one for anything to happen).
    pub fn new(nodes: Vec<RuntimeAddr>) -> Self {
        HaproxyRuntime {
            nodes,
            timeout: Duration::from_secs(5),
            retry: Retry::default(),
        }
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
        self.timeout = timeout;
        self
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

    /// [`Self::command`] with retries while the node is unreachable.
    async fn command_retried(
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
        let (b, _) = self.get_weight(node, backend, blue).await?;
        let (g, _) = self.get_weight(node, backend, green).await?;
        Ok(Weights { blue: b, green: g })
    }

    /// Sets both absolute weights on `node` in one command line, then reads them back. Both
    /// servers are looked up first, so a wrong name never leaves one weight changed.
    async fn set_node(
        &self,
        node: &RuntimeAddr,
        backend: &str,
        blue: &str,
        green: &str,
        weights: Weights,
    ) -> Result<(), TrafficError> {
        self.node_weights(node, backend, blue, green).await?;
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
        let found = self.node_weights(node, backend, blue, green).await?;
        if found != weights {
            return Err(TrafficError::ReadBack {
                node: node.to_string(),
                wrote: weights,
                found,
            });
        }
        tracing::debug!(%node, backend, blue = weights.blue, green = weights.green, "Set HAProxy weights.");
        Ok(())
    }

    /// Sets the weights on every node without comparing first (for mirroring Consul into
    /// HAProxy). Every node is attempted; failures are reported together.
    pub async fn apply(
        &self,
        backend: &str,
        blue: &str,
        green: &str,
        weights: Weights,
    ) -> Result<(), TrafficError> {
        let mut errors = Vec::new();
        for node in &self.nodes {
            if let Err(e) = self.set_node(node, backend, blue, green, weights).await {
                tracing::warn!(%node, error = %e, "Could not set HAProxy weights.");
                errors.push(e);
            }
        }
        collect(errors)
    }

    fn target(policy: &Policy) -> Result<(&str, &str, &str), TrafficError> {
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

    /// Weights on every node; they must agree.
    async fn all_weights(
        &self,
        backend: &str,
        blue: &str,
        green: &str,
    ) -> Result<Vec<(String, Weights)>, TrafficError> {
        let mut found = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            found.push((
                node.to_string(),
                self.node_weights(node, backend, blue, green).await?,
            ));
        }
        Ok(found)
    }

    pub(crate) async fn read(&self, policy: &Policy) -> Result<Weights, TrafficError> {
        let (backend, blue, green) = Self::target(policy)?;
        let found = self.all_weights(backend, blue, green).await?;
        match found.first() {
            None => Err(TrafficError::Missing {
                keys: vec![format!("{backend} (no HAProxy nodes configured)")],
            }),
            Some((_, first)) if found.iter().all(|(_, w)| w == first) => Ok(*first),
            Some(_) => Err(TrafficError::Diverged(found)),
        }
    }

    /// Compare-and-set over all nodes: every node is checked before any is written.
    pub(crate) async fn write(
        &self,
        policy: &Policy,
        expected: Weights,
        new: Weights,
    ) -> Result<(), TrafficError> {
        let (backend, blue, green) = Self::target(policy)?;
        let found = self.all_weights(backend, blue, green).await?;
        if let Some((node, w)) = found.iter().find(|(_, w)| *w != expected) {
            tracing::debug!(%node, "HAProxy weights differ from the expected ones.");
            return Err(TrafficError::Override { found: *w });
        }
        self.apply(backend, blue, green, new).await
    }
}

fn collect(mut errors: Vec<TrafficError>) -> Result<(), TrafficError> {
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
fn parse_get_weight(reply: &str) -> Option<(u32, u32)> {
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
