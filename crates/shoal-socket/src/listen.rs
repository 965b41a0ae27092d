//! Where a runner listens.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::SocketError;

/// A TCP `host:port` (port 0: any free port) or a Unix socket path (`unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// TCP.
    Tcp {
        /// Host name or IP to bind (for example `0.0.0.0` or `127.0.0.1`).
        host: String,
        /// Port; 0 picks a free one.
        port: u16,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl ListenAddress {
    pub(crate) fn resolve(&self) -> Result<SocketAddr, SocketError> {
        let Self::Tcp { host, port } = self else {
            return Err(SocketError::InvalidAddress {
                address: self.to_string(),
                reason: "not a TCP address".to_owned(),
            });
        };
        (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| SocketError::InvalidAddress {
                address: self.to_string(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| SocketError::InvalidAddress {
                address: self.to_string(),
                reason: "the host resolves to no address".to_owned(),
            })
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for ListenAddress {
    type Err = SocketError;

    fn from_str(s: &str) -> Result<Self, SocketError> {
        let invalid = |reason: &str| SocketError::InvalidAddress {
            address: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("empty socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected host:port or unix:/path"))?;
        let port = port.parse().map_err(|_| invalid("invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_tcp_ipv6_and_unix_addresses() {
        assert_eq!(
            "127.0.0.1:0".parse::<ListenAddress>().unwrap(),
            ListenAddress::Tcp {
                host: "127.0.0.1".to_owned(),
                port: 0
            }
        );
        assert_eq!(
            "runner-1.internal:7400".parse::<ListenAddress>().unwrap(),
            ListenAddress::Tcp {
                host: "runner-1.internal".to_owned(),
                port: 7400
            }
        );
        let v6: ListenAddress = "[::1]:7400".parse().unwrap();
        assert_eq!(
            v6,
            ListenAddress::Tcp {
                host: "::1".to_owned(),
                port: 7400
            }
        );
        assert_eq!(v6.to_string(), "[::1]:7400");
        let unix: ListenAddress = "unix:/run/shoal/runner.sock".parse().unwrap();
        assert_eq!(
            unix,
            ListenAddress::Unix(PathBuf::from("/run/shoal/runner.sock"))
        );
        assert_eq!(unix.to_string(), "unix:/run/shoal/runner.sock");
    }

    #[test]
    fn refuses_incomplete_addresses() {
        for bad in [
            "",
            "unix:",
            "localhost",
            "host:port",
            ":7400",
            "[]:1",
            "host:70000",
        ] {
            assert!(
                matches!(
                    bad.parse::<ListenAddress>(),
                    Err(SocketError::InvalidAddress { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }
}
