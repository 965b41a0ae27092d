//! Runner configuration: every setting comes from the built-in default, a TOML file
//! (`--config shoal.toml`), the environment (`SHOAL_*`) or a flag, in rising precedence, and is
//! validated with errors that name the setting and where its value came from.
//!
//! ```
//! use std::path::Path;
//! use std::time::Duration;
//! use shoal_runner::config::{RunnerConfig, Sources};
//!
//! let sources = Sources::new()
//!     .with_file_text(Path::new("shoal.toml"), "lease_ttl = \"5s\"\nshards_per_group = 64")?
//!     .with_env([("SHOAL_LEASE_TTL".to_owned(), "3s".to_owned())]);
//! let config = RunnerConfig::resolve(&sources)?;
//! assert_eq!(config.sharding.lease_ttl(), Duration::from_secs(3)); // env over file
//! assert_eq!(config.sharding.shards_per_group().get(), 64);
//!
//! let bad = Sources::new().with_env([("SHOAL_LEASE_TTL".to_owned(), "abc".to_owned())]);
//! let error = RunnerConfig::resolve(&bad).unwrap_err().to_string();
//! assert!(error.starts_with("invalid value for lease_ttl (SHOAL_LEASE_TTL=abc)"));
//! # Ok::<(), shoal_runner::config::RunnerConfigError>(())
//! ```

mod entities;
mod error;
mod flags;
mod parse;
mod settings;
mod sources;

use std::time::Duration;

use shoal_sharding::ShardingConfig;
use shoal_socket::{ListenAddress, SocketConfig, TlsConfig};
use shoal_storage::{StorageOptions, TablePrefix};

pub use entities::{WorkerEntityConfig, WorkerEntityOptions, WorkerSourceConfig};
pub use error::RunnerConfigError;
pub use flags::{MigrateScope, RunScope, Scope, SettingFlags, StatusScope};
pub use settings::{Flag, SETTINGS, Scopes, Setting, setting};
pub use sources::{Origin, Sourced, Sources};

use parse::Parsed;

/// Everything `shoal run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Runner storage.
    pub storage: StorageConfig,
    /// A full runner or a client-only gateway.
    pub role: Role,
    /// Whether the built-in demo entities are registered.
    pub builtin_entities: bool,
    /// Entity types implemented by worker processes (`[[entity]]` sections of the file).
    pub entities: Vec<WorkerEntityConfig>,
    /// Sharding settings.
    pub sharding: ShardingConfig,
    /// Transport settings (token, TLS, insecure_transport, message size).
    pub socket: SocketConfig,
    /// The HTTP gateway (`None`: off).
    pub gateway: Option<GatewayConfig>,
    /// Where `/metrics` is served.
    pub metrics: MetricsListen,
    /// How long to keep serving after SIGTERM, with `/readyz` failing, before handing off.
    pub shutdown_delay: Duration,
    /// Logs.
    pub log: LogConfig,
}

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The storage URL (may hold a password: show [`StorageConfig::redacted_url`]).
    pub url: String,
    /// Table prefix.
    pub table_prefix: TablePrefix,
    /// Apply migrations when connecting.
    pub migrate: bool,
    /// Pool size.
    pub max_connections: u32,
    /// Deadline of each storage call.
    pub call_timeout: Duration,
}

impl StorageConfig {
    /// The options to connect with.
    pub fn options(&self) -> StorageOptions {
        StorageOptions::new()
            .with_table_prefix(self.table_prefix.clone())
            .with_migrate(self.migrate)
            .with_max_connections(self.max_connections)
            .with_call_timeout(self.call_timeout)
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 && url[s + 3..at].contains(':') => {
            let colon = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..colon], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// What this process is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A full runner: serves other runners, holds shards, hosts entities.
    Runner {
        /// Where it listens.
        listen: ListenAddress,
        /// The host it is reached at (default: the listen host).
        advertise_host: Option<String>,
        /// The TCP port it is reached at (default: the port bound).
        advertise_port: Option<u16>,
    },
    /// Routes calls only: holds no shards, hosts no entities, listens only for HTTP.
    ClientOnly,
}

/// HTTP gateway settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `HOST:PORT`.
    pub listen: String,
    /// Bearer token required on `/v1` calls.
    pub token: Option<String>,
    /// Largest accepted body, in bytes.
    pub max_body: usize,
    /// How long a client may take to send a request head (and an idle keep-alive connection
    /// stays open).
    pub header_timeout: Duration,
    /// How long a call's request body may take to arrive, after its head.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: MaxConnections,
}

/// The gateway's connection cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConnections {
    /// Derived from the open-file limit when the gateway starts: half of it, at most 10,000
    /// ([`crate::gateway::max_connections_for_open_files`]).
    Auto,
    /// This many (at least 1).
    Fixed(usize),
}

impl MaxConnections {
    /// The number of connections, reading the open-file limit for [`MaxConnections::Auto`].
    pub fn resolve(self) -> usize {
        match self {
            MaxConnections::Auto => crate::gateway::auto_max_connections().0,
            MaxConnections::Fixed(n) => n,
        }
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// On the gateway's listener.
    Gateway,
    /// On a listener of its own at `HOST:PORT`.
    Separate(String),
    /// Not served (and no recorder installed).
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Format.
    pub format: LogFormat,
    /// Filter (`info`, `warn,shoal_sharding=debug`, ...).
    pub level: String,
}

/// Reads settings out of [`Sources`], parsing each with the origin at hand for messages.
struct Resolver<'a> {
    sources: &'a Sources,
}

impl Resolver<'_> {
    fn setting(&self, key: &'static str) -> Result<&'static Setting, RunnerConfigError> {
        setting(key).ok_or(RunnerConfigError::Conflict {
            setting: key,
            reason: "not a known setting (this is a bug in shoal)".to_owned(),
        })
    }

    /// The value (or default) of `key`, `None` when unset without default.
    fn get<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Parsed<T>,
    ) -> Result<Option<T>, RunnerConfigError> {
        let setting = self.setting(key)?;
        let Some(raw) = self.sources.effective(setting) else {
            return Ok(None);
        };
        parse(&raw.value)
            .map(Some)
            .map_err(|reason| RunnerConfigError::Invalid {
                setting: setting.key,
                origin: raw.describe(),
                reason,
            })
    }

    /// The value (or default) of a setting that has a default.
    fn req<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Parsed<T>,
    ) -> Result<T, RunnerConfigError> {
        self.get(key, parse)?.ok_or(RunnerConfigError::Conflict {
            setting: key,
            reason: "must be set".to_owned(),
        })
    }

    /// Where `key`'s value came from, for a cross-setting error.
    fn origin_of(&self, key: &str) -> Option<String> {
        self.sources.raw(key).map(Sourced::describe)
    }
}

impl RunnerConfig {
    /// Parses and validates every setting `shoal run` uses.
    pub fn resolve(sources: &Sources) -> Result<Self, RunnerConfigError> {
        let r = Resolver { sources };
        let storage = StorageConfig::resolve(sources)?;
        let sharding = sharding_config(&r)?;
        let role = if r.req("client_only", parse::boolean)? {
            Role::ClientOnly
        } else {
            Role::Runner {
                listen: r.req("listen", parse::listen)?,
                advertise_host: r.get("advertise_host", parse::text)?,
                advertise_port: r.get("advertise_port", parse::port)?,
            }
        };
        let gateway = match r.req("gateway", parse::gateway)? {
            Some(listen) => Some(GatewayConfig {
                listen,
                token: r.get("gateway_token", parse::text)?,
                max_body: r.req("gateway_max_body", parse::size)?,
                header_timeout: r.req("gateway_header_timeout", parse::limit_timeout)?,
                body_timeout: r.req("gateway_body_timeout", parse::limit_timeout)?,
                max_connections: r.req("gateway_max_connections", parse::max_connections)?,
            }),
            None => None,
        };
        let metrics = r.req("metrics", parse::metrics)?;
        if metrics == MetricsListen::Gateway
            && gateway.is_none()
            && r.sources.raw("metrics").is_some()
        {
            return Err(RunnerConfigError::Conflict {
                setting: "metrics",
                reason: "metrics = gateway needs the gateway; with gateway = off, give metrics \
                         an address (HOST:PORT) or off"
                    .to_owned(),
            });
        }
        let metrics = match (&metrics, &gateway) {
            // The default follows the gateway: off with it.
            (MetricsListen::Gateway, None) => MetricsListen::Off,
            _ => metrics,
        };
        let socket = socket_config(&r)?;
        let builtin_entities = r.req("builtin_entities", parse::boolean)?;
        let builtin_types: &[&str] = if builtin_entities {
            crate::entities::BUILTIN_TYPES
        } else {
            &[]
        };
        entities::check_all(sources.entities(), builtin_types)?;
        Ok(Self {
            storage,
            role,
            builtin_entities,
            entities: sources.entities().to_vec(),
            sharding,
            socket,
            gateway,
            metrics,
            shutdown_delay: r.req("shutdown_delay", parse::duration)?,
            log: LogConfig {
                format: r.req("log_format", parse::log_format)?,
                level: r.req("log_level", parse::log_level)?,
            },
        })
    }
}

impl StorageConfig {
    /// Parses the storage settings (all that `shoal migrate` and `shoal status` need).
    pub fn resolve(sources: &Sources) -> Result<Self, RunnerConfigError> {
        let r = Resolver { sources };
        Ok(Self {
            url: r.req("storage", parse::storage_url)?,
            table_prefix: r.req("table_prefix", parse::table_prefix)?,
            migrate: r.req("migrate", parse::boolean)?,
            max_connections: r.req("storage_max_connections", parse::count::<u32>)?,
            call_timeout: r.req("storage_timeout", parse::duration)?,
        })
    }
}

/// The shard layout settings `shoal status` needs to count unowned shards.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    /// Shards per group.
    pub shards_per_group: u32,
    /// Every group.
    pub groups: Vec<shoal_protocol::ShardGroup>,
}

impl ShardLayout {
    /// Parses `shards_per_group` and `available_groups`.
    pub fn resolve(sources: &Sources) -> Result<Self, RunnerConfigError> {
        let r = Resolver { sources };
        Ok(Self {
            shards_per_group: r.req("shards_per_group", parse::count::<u32>)?,
            groups: r.req("available_groups", parse::groups)?,
        })
    }
}

fn sharding_config(r: &Resolver<'_>) -> Result<ShardingConfig, RunnerConfigError> {
    let b = ShardingConfig::builder()
        .shards_per_group(r.req("shards_per_group", parse::count::<u32>)?)
        .available_groups(r.req("available_groups", parse::groups)?)
        .assigned_groups(r.req("assigned_groups", parse::groups)?)
        .runner_weight(r.req("runner_weight", parse::count::<u32>)?)
        .lease_ttl(r.req("lease_ttl", parse::duration)?)
        .lease_refresh_interval(r.req("lease_refresh_interval", parse::duration)?)
        .assignment_refresh_interval(r.req("assignment_refresh_interval", parse::duration)?)
        .storage_timeout(r.req("storage_timeout", parse::duration)?)
        .entity_mailbox_capacity(r.req("entity_mailbox_capacity", parse::count::<usize>)?)
        .entity_max_idle_time(r.req("entity_max_idle_time", parse::duration)?)
        .entity_termination_timeout(r.req("entity_termination_timeout", parse::duration)?)
        .max_resident_entities(r.req("max_resident_entities", parse::count::<usize>)?)
        .send_retry_interval(r.req("send_retry_interval", parse::duration)?)
        .default_call_timeout(r.req("default_call_timeout", parse::duration)?)
        .health_check_interval(r.req("health_check_interval", parse::duration)?)
        .defect_max_retries(r.req("defect_max_retries", parse::count::<u32>)?)
        .defect_backoff(r.req("defect_backoff", parse::duration)?);
    b.build().map_err(|error| match error {
        shoal_sharding::ShardingConfigError::Invalid { setting, reason } => {
            match r.origin_of(setting) {
                Some(origin) => RunnerConfigError::Invalid {
                    setting,
                    origin,
                    reason,
                },
                None => RunnerConfigError::Conflict { setting, reason },
            }
        }
        other => RunnerConfigError::Conflict {
            setting: "sharding",
            reason: other.to_string(),
        },
    })
}

fn socket_config(r: &Resolver<'_>) -> Result<SocketConfig, RunnerConfigError> {
    let mut socket = SocketConfig {
        max_message_size: r.req("max_message_size", parse::size)?,
        auth_token: r.get("runner_token", parse::text)?,
        insecure_transport: r.req("insecure_transport", parse::boolean)?,
        ..SocketConfig::default()
    };
    if let Some(token) = &socket.auth_token
        && !token.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(RunnerConfigError::Invalid {
            setting: "runner_token",
            origin: r.origin_of("runner_token").unwrap_or_default(),
            reason: "must be printable ASCII without spaces".to_owned(),
        });
    }
    let cert = r.get("tls_cert", parse::text)?;
    let key = r.get("tls_key", parse::text)?;
    let ca = r.get("tls_ca", parse::text)?;
    let domain = r.get("tls_domain", parse::text)?;
    socket.tls = match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsConfig {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
            domain,
        }),
        (None, None, None) if domain.is_none() => None,
        (cert, key, ca) => {
            let missing: Vec<&str> = [("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k)
                .collect();
            return Err(RunnerConfigError::Conflict {
                setting: missing.first().copied().unwrap_or("tls_cert"),
                reason: format!(
                    "TLS between runners needs tls_cert, tls_key and tls_ca together; missing: {}",
                    missing.join(", ")
                ),
            });
        }
    };
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://shoal.db"), "sqlite://shoal.db");
    }

    #[test]
    fn defaults_resolve() {
        let config = RunnerConfig::resolve(&Sources::new()).unwrap();
        assert_eq!(config.storage.url, "sqlite://shoal.db");
        assert_eq!(
            config.role,
            Role::Runner {
                listen: "127.0.0.1:34431".parse().unwrap(),
                advertise_host: None,
                advertise_port: None
            }
        );
        assert_eq!(config.gateway.as_ref().unwrap().listen, "127.0.0.1:8080");
        assert_eq!(config.gateway.as_ref().unwrap().max_body, 1 << 20);
        assert_eq!(
            config.gateway.as_ref().unwrap().header_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(
            config.gateway.as_ref().unwrap().body_timeout,
            Duration::from_secs(30)
        );
        assert_eq!(
            config.gateway.as_ref().unwrap().max_connections,
            MaxConnections::Auto
        );
        assert_eq!(config.metrics, MetricsListen::Gateway);
        assert_eq!(config.sharding, ShardingConfig::default());
        assert!(config.builtin_entities);
        assert!(config.storage.migrate);
    }
}
