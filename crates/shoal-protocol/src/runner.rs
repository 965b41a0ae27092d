//! Runner addresses, runner descriptions and machine ids.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::name::ShardGroup;

/// Where a runner can be reached: a TCP `host:port` or a Unix socket path.
///
/// The text form round-trips: `host:port`, `[v6addr]:port`, or `unix:/absolute/path`.
///
/// ```
/// use shoal_protocol::{RunnerAddress, RunnerEndpoint};
///
/// let tcp: RunnerAddress = "10.0.0.7:34431".parse()?;
/// assert_eq!(tcp.endpoint(), RunnerEndpoint::Tcp { host: "10.0.0.7", port: 34431 });
/// let v6: RunnerAddress = "[::1]:9000".parse()?;
/// assert_eq!(v6.to_string(), "[::1]:9000");
/// let unix: RunnerAddress = "unix:/run/shoal/runner.sock".parse()?;
/// assert!(matches!(unix.endpoint(), RunnerEndpoint::Unix(_)));
/// # Ok::<(), shoal_protocol::ParseRunnerAddressError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunnerAddress {
    /// The canonical text form; equality, ordering and hashing use it.
    text: Arc<str>,
    /// For TCP addresses, the byte offset of the `:` before the port; 0 for Unix sockets.
    port_sep: usize,
}

/// A borrowed view of a [`RunnerAddress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerEndpoint<'a> {
    /// A TCP endpoint. `host` is a name or an IP address, without IPv6 brackets.
    Tcp {
        /// Host name or IP address.
        host: &'a str,
        /// TCP port.
        port: u16,
    },
    /// A Unix domain socket at this absolute path.
    Unix(&'a Path),
}

/// Why a runner address could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseRunnerAddressError {
    /// A TCP address without `:port`.
    #[error("runner address {0:?} has no port (expected `host:port` or `unix:/path`)")]
    MissingPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("runner address {0:?} has an invalid port")]
    InvalidPort(String),
    /// The host part is empty or contains whitespace or control characters.
    #[error("runner address {0:?} has an invalid host")]
    InvalidHost(String),
    /// A Unix socket path that is not absolute.
    #[error("unix socket address {0:?} must be an absolute path (`unix:/path/to/socket`)")]
    RelativeUnixPath(String),
    /// A Unix socket path that is not valid UTF-8 (the text form could not carry it).
    #[error("unix socket path {0:?} is not valid UTF-8")]
    NonUtf8Path(String),
}

impl RunnerAddress {
    const UNIX_PREFIX: &'static str = "unix:";

    /// A TCP address.
    pub fn tcp(host: &str, port: u16) -> Result<Self, ParseRunnerAddressError> {
        let text = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        text.parse()
    }

    /// A Unix socket address; the path must be absolute and valid UTF-8.
    pub fn unix(path: impl AsRef<Path>) -> Result<Self, ParseRunnerAddressError> {
        let path = path.as_ref();
        let text = path
            .to_str()
            .ok_or_else(|| ParseRunnerAddressError::NonUtf8Path(path.display().to_string()))?;
        format!("{}{text}", Self::UNIX_PREFIX).parse()
    }

    /// The address of a bound TCP socket.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        let text = addr.to_string();
        let port_sep = text.rfind(':').unwrap_or(0);
        Self {
            text: Arc::from(text),
            port_sep,
        }
    }

    /// The endpoint this address names.
    pub fn endpoint(&self) -> RunnerEndpoint<'_> {
        if self.port_sep == 0 {
            RunnerEndpoint::Unix(Path::new(&self.text[Self::UNIX_PREFIX.len()..]))
        } else {
            let host = &self.text[..self.port_sep];
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            // The port was validated when the address was built.
            let port = self.text[self.port_sep + 1..].parse().unwrap_or_default();
            RunnerEndpoint::Tcp { host, port }
        }
    }

    /// True for a Unix socket address.
    pub fn is_unix(&self) -> bool {
        self.port_sep == 0
    }

    /// The canonical text form.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for RunnerAddress {
    type Err = ParseRunnerAddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix(Self::UNIX_PREFIX) {
            if !path.starts_with('/') || path.chars().any(char::is_control) {
                return Err(ParseRunnerAddressError::RelativeUnixPath(text.to_owned()));
            }
            return Ok(Self {
                text: Arc::from(text),
                port_sep: 0,
            });
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| ParseRunnerAddressError::MissingPort(text.to_owned()))?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseRunnerAddressError::InvalidPort(text.to_owned()));
        }
        port.parse::<u16>()
            .map_err(|_| ParseRunnerAddressError::InvalidPort(text.to_owned()))?;
        let bare = match host.strip_prefix('[') {
            Some(inner) => {
                let inner = inner
                    .strip_suffix(']')
                    .ok_or_else(|| ParseRunnerAddressError::InvalidHost(text.to_owned()))?;
                // Bracketed hosts must be IPv6 literals.
                match inner.parse::<IpAddr>() {
                    Ok(IpAddr::V6(_)) => inner,
                    _ => return Err(ParseRunnerAddressError::InvalidHost(text.to_owned())),
                }
            }
            None => host,
        };
        let host_ok = !bare.is_empty()
            && !bare.chars().any(|c| c.is_whitespace() || c.is_control())
            && (host.starts_with('[') || !bare.contains(':'));
        if !host_ok {
            return Err(ParseRunnerAddressError::InvalidHost(text.to_owned()));
        }
        Ok(Self {
            text: Arc::from(text),
            port_sep: host.len(),
        })
    }
}

impl fmt::Display for RunnerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for RunnerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunnerAddress({})", self.text)
    }
}

impl Serialize for RunnerAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for RunnerAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A runner as it registers itself: where to reach it, which shard groups it serves, and its
/// weight (a runner of weight 2 is given about twice the shards of a runner of weight 1).
///
/// Its JSON form is stable and is what storage keeps:
///
/// ```
/// use shoal_protocol::{Runner, ShardGroup};
/// use std::num::NonZeroU32;
///
/// let runner = Runner::new(
///     "10.0.0.7:34431".parse()?,
///     [ShardGroup::default_group()],
///     NonZeroU32::MIN,
/// );
/// assert_eq!(
///     runner.to_json(),
///     r#"{"address":"10.0.0.7:34431","groups":["default"],"weight":1}"#
/// );
/// assert_eq!(Runner::from_json(&runner.to_json())?, runner);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runner {
    /// Where the runner is reached.
    pub address: RunnerAddress,
    /// The shard groups it serves, sorted and without duplicates.
    #[serde(deserialize_with = "sorted_groups")]
    pub groups: Vec<ShardGroup>,
    /// Its relative share of shards.
    pub weight: NonZeroU32,
}

fn sorted_groups<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ShardGroup>, D::Error> {
    let mut groups = Vec::<ShardGroup>::deserialize(d)?;
    groups.sort();
    groups.dedup();
    Ok(groups)
}

impl Runner {
    /// A runner description; groups are sorted and de-duplicated.
    pub fn new(
        address: RunnerAddress,
        groups: impl IntoIterator<Item = ShardGroup>,
        weight: NonZeroU32,
    ) -> Self {
        let mut groups: Vec<ShardGroup> = groups.into_iter().collect();
        groups.sort();
        groups.dedup();
        Self {
            address,
            groups,
            weight,
        }
    }

    /// Whether this runner serves `group`.
    pub fn serves(&self, group: &ShardGroup) -> bool {
        self.groups.binary_search(group).is_ok()
    }

    /// The stable JSON encoding stored by runner storage.
    pub fn to_json(&self) -> String {
        // Serializing this struct cannot fail: every field is a string, a list of strings or an
        // integer.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the JSON encoding.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// A process's machine id: the 10 bits it stamps into the [`crate::Snowflake`] ids it makes.
/// Leased from storage (the lowest id no live process holds) and renewed while the process
/// lives, so no two live processes, runners or client-only, share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MachineId(pub i64);

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One start of a process: a random 64-bit value made when the runtime starts. A runner is
/// identified by its advertised address *and* its incarnation, so that a restarted process, or a
/// second process given the same address, is never mistaken for the one before it: a lease is
/// "ours" only for the incarnation that took it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Incarnation(u64);

impl Incarnation {
    /// A fresh incarnation: random, never 0.
    pub fn random() -> Self {
        use std::hash::{BuildHasher, RandomState};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // `RandomState` is seeded from the operating system's randomness; the time, the process
        // id and a counter make values in one process differ too.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let value = RandomState::new().hash_one((
            nanos,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        ));
        Self(value.max(1))
    }

    /// Wraps a raw value (for example read back from storage).
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Incarnation({self})")
    }
}

/// A running process of a runner: its advertised address and the incarnation serving it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunnerId {
    /// Where other runners reach it.
    pub address: RunnerAddress,
    /// Which start of the process.
    pub incarnation: Incarnation,
}

impl RunnerId {
    /// The runner at `address` in its `incarnation`.
    pub fn new(address: RunnerAddress, incarnation: Incarnation) -> Self {
        Self {
            address,
            incarnation,
        }
    }
}

impl fmt::Display for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (incarnation {})", self.address, self.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_round_trips() {
        for text in [
            "localhost:34431",
            "10.0.0.1:0",
            "[::1]:65535",
            "runner-0.svc:1",
        ] {
            let a: RunnerAddress = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
            assert!(!a.is_unix());
        }
        let a = RunnerAddress::tcp("::1", 80).unwrap();
        assert_eq!(a.as_str(), "[::1]:80");
        assert_eq!(
            a.endpoint(),
            RunnerEndpoint::Tcp {
                host: "::1",
                port: 80
            }
        );
    }

    #[test]
    fn unix_round_trips() {
        let a = RunnerAddress::unix("/tmp/x y/r.sock").unwrap();
        assert_eq!(a.as_str(), "unix:/tmp/x y/r.sock");
        assert_eq!(a.to_string().parse::<RunnerAddress>().unwrap(), a);
        assert_eq!(
            a.endpoint(),
            RunnerEndpoint::Unix(Path::new("/tmp/x y/r.sock"))
        );
    }

    #[test]
    fn refuses_bad_addresses() {
        use ParseRunnerAddressError as E;
        assert!(matches!(
            "localhost".parse::<RunnerAddress>(),
            Err(E::MissingPort(_))
        ));
        assert!(matches!(
            "h:70000".parse::<RunnerAddress>(),
            Err(E::InvalidPort(_))
        ));
        assert!(matches!(
            "h:".parse::<RunnerAddress>(),
            Err(E::InvalidPort(_))
        ));
        assert!(matches!(
            ":80".parse::<RunnerAddress>(),
            Err(E::InvalidHost(_))
        ));
        assert!(matches!(
            "::1:80".parse::<RunnerAddress>(),
            Err(E::InvalidHost(_))
        ));
        assert!(matches!(
            "[x]:80".parse::<RunnerAddress>(),
            Err(E::InvalidHost(_))
        ));
        assert!(matches!(
            "a b:80".parse::<RunnerAddress>(),
            Err(E::InvalidHost(_))
        ));
        assert!(matches!(
            "unix:rel.sock".parse::<RunnerAddress>(),
            Err(E::RelativeUnixPath(_))
        ));
    }

    #[test]
    fn incarnations_differ() {
        let all: std::collections::HashSet<Incarnation> =
            (0..1000).map(|_| Incarnation::random()).collect();
        assert_eq!(all.len(), 1000);
        assert!(all.iter().all(|i| i.raw() != 0));
        assert_eq!(Incarnation::from_raw(255).to_string(), "00000000000000ff");
    }

    #[test]
    fn runner_json_is_stable_and_normalised() {
        let r =
            Runner::from_json(r#"{"address":"h:1","groups":["b","a","b"],"weight":2}"#).unwrap();
        assert_eq!(
            r.to_json(),
            r#"{"address":"h:1","groups":["a","b"],"weight":2}"#
        );
        assert!(r.serves(&ShardGroup::new("a").unwrap()));
        assert!(Runner::from_json(r#"{"address":"h:1","groups":[],"weight":0}"#).is_err());
        assert!(Runner::from_json(r#"{"address":"h","groups":[],"weight":1}"#).is_err());
        assert!(Runner::from_json("not json").is_err());
    }
}
