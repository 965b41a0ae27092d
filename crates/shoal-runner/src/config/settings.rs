//! The table of every setting: its file key, environment variable, flag, default and meaning.
//!
//! This table is the single source of truth: the `shoal run` flags are generated from it, the
//! file and environment readers accept exactly its keys, `shoal config` prints it, and a test
//! checks that `docs/configuration.md` documents every entry.

/// Which commands accept a setting as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// `shoal run` (and `shoal config`).
    pub const RUN: Scopes = Scopes(1);
    /// `shoal status`.
    pub const STATUS: Scopes = Scopes(2);
    /// `shoal migrate`.
    pub const MIGRATE: Scopes = Scopes(4);

    const fn with(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    /// Whether every scope of `other` is in `self`.
    pub const fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }
}

const ALL: Scopes = Scopes::RUN.with(Scopes::STATUS).with(Scopes::MIGRATE);
const RUN_STATUS: Scopes = Scopes::RUN.with(Scopes::STATUS);

/// How a setting is given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `--name VALUE`.
    Value(&'static str),
    /// `--name` alone, which sets the value `sets`.
    Switch {
        /// The flag's name (without `--`).
        name: &'static str,
        /// The value it sets.
        sets: &'static str,
    },
    /// No flag (secrets: flags show up in process listings).
    None,
}

impl Flag {
    /// The flag's name without `--`, if it has one.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Flag::Value(name) | Flag::Switch { name, .. } => Some(name),
            Flag::None => None,
        }
    }
}

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The key in the TOML file, and the setting's name in messages.
    pub key: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The command-line flag.
    pub flag: Flag,
    /// The default, as text (`None`: unset by default).
    pub default: Option<&'static str>,
    /// The value's form, for help texts (`DURATION`, `SIZE`, ...).
    pub value_name: &'static str,
    /// What it means.
    pub help: &'static str,
    /// Whether values are hidden in messages and `shoal config`.
    pub secret: bool,
    /// Commands that take it as a flag.
    pub scopes: Scopes,
}

const fn s(
    key: &'static str,
    env: &'static str,
    flag: Flag,
    default: Option<&'static str>,
    value_name: &'static str,
    help: &'static str,
    scopes: Scopes,
) -> Setting {
    Setting {
        key,
        env,
        flag,
        default,
        value_name,
        help,
        secret: false,
        scopes,
    }
}

const fn secret(mut setting: Setting) -> Setting {
    setting.secret = true;
    setting
}

use Flag::{Switch, Value};

/// Every setting, in the order `shoal config` and the docs list them.
pub const SETTINGS: &[Setting] = &[
    // Storage.
    s(
        "storage",
        "SHOAL_STORAGE",
        Value("storage"),
        Some("sqlite://shoal.db"),
        "URL",
        "Runner storage: sqlite://FILE (one machine), postgres://USER@HOST/DB (clusters), memory: (this process only)",
        ALL,
    ),
    s(
        "table_prefix",
        "SHOAL_TABLE_PREFIX",
        Value("table-prefix"),
        Some("shoal"),
        "NAME",
        "Prefix of the storage tables, so that several clusters can share one database",
        ALL,
    ),
    s(
        "migrate",
        "SHOAL_MIGRATE",
        Switch {
            name: "no-migrate",
            sets: "false",
        },
        Some("true"),
        "BOOL",
        "Apply storage migrations on start (--no-migrate: only check that the database answers)",
        Scopes::RUN,
    ),
    s(
        "storage_max_connections",
        "SHOAL_STORAGE_MAX_CONNECTIONS",
        Value("storage-max-connections"),
        Some("8"),
        "N",
        "Largest number of pooled storage connections",
        Scopes::RUN,
    ),
    // This runner.
    s(
        "listen",
        "SHOAL_LISTEN",
        Value("listen"),
        Some("127.0.0.1:34431"),
        "ADDR",
        "Where the runner serves other runners: HOST:PORT (port 0: any free port) or unix:/PATH",
        Scopes::RUN,
    ),
    s(
        "advertise_host",
        "SHOAL_ADVERTISE_HOST",
        Value("advertise-host"),
        None,
        "HOST",
        "The host other runners use to reach this one (default: the listen host; required when listening on 0.0.0.0)",
        Scopes::RUN,
    ),
    s(
        "advertise_port",
        "SHOAL_ADVERTISE_PORT",
        Value("advertise-port"),
        None,
        "PORT",
        "The TCP port other runners use to reach this one (default: the port bound; set it behind a port mapping or proxy)",
        Scopes::RUN,
    ),
    s(
        "client_only",
        "SHOAL_CLIENT_ONLY",
        Switch {
            name: "client-only",
            sets: "true",
        },
        Some("false"),
        "BOOL",
        "Hold no shards and host no entities: only route gateway calls to the runners",
        Scopes::RUN,
    ),
    s(
        "builtin_entities",
        "SHOAL_BUILTIN_ENTITIES",
        Switch {
            name: "no-builtin-entities",
            sets: "false",
        },
        Some("true"),
        "BOOL",
        "Register the built-in demo entities (counter)",
        Scopes::RUN,
    ),
    // Sharding.
    s(
        "shards_per_group",
        "SHOAL_SHARDS_PER_GROUP",
        Value("shards-per-group"),
        Some("300"),
        "N",
        "Shards in each group; the same on every runner of a cluster, forever",
        RUN_STATUS,
    ),
    s(
        "available_groups",
        "SHOAL_AVAILABLE_GROUPS",
        Value("available-groups"),
        Some("default"),
        "LIST",
        "Every shard group of the cluster (comma-separated)",
        RUN_STATUS,
    ),
    s(
        "assigned_groups",
        "SHOAL_ASSIGNED_GROUPS",
        Value("assigned-groups"),
        Some("default"),
        "LIST",
        "The groups this runner serves (comma-separated; empty: none)",
        Scopes::RUN,
    ),
    s(
        "runner_weight",
        "SHOAL_RUNNER_WEIGHT",
        Value("runner-weight"),
        Some("1"),
        "N",
        "This runner's relative share of shards",
        Scopes::RUN,
    ),
    s(
        "lease_ttl",
        "SHOAL_LEASE_TTL",
        Value("lease-ttl"),
        Some("2s"),
        "DURATION",
        "Shard lease lifetime without refresh; bounds failover after a crash",
        Scopes::RUN,
    ),
    s(
        "lease_refresh_interval",
        "SHOAL_LEASE_REFRESH_INTERVAL",
        Value("lease-refresh-interval"),
        Some("500ms"),
        "DURATION",
        "How often leases are refreshed (effective: at most lease_ttl / 3)",
        Scopes::RUN,
    ),
    s(
        "assignment_refresh_interval",
        "SHOAL_ASSIGNMENT_REFRESH_INTERVAL",
        Value("assignment-refresh-interval"),
        Some("250ms"),
        "DURATION",
        "How often runners and leases are read from storage",
        Scopes::RUN,
    ),
    s(
        "storage_timeout",
        "SHOAL_STORAGE_TIMEOUT",
        Value("storage-timeout"),
        Some("750ms"),
        "DURATION",
        "Deadline of each storage call (at most lease_ttl / 2)",
        ALL,
    ),
    s(
        "entity_mailbox_capacity",
        "SHOAL_ENTITY_MAILBOX_CAPACITY",
        Value("entity-mailbox-capacity"),
        Some("4096"),
        "N",
        "Requests queued per entity before calls fail with mailbox_full (HTTP 429)",
        Scopes::RUN,
    ),
    s(
        "entity_max_idle_time",
        "SHOAL_ENTITY_MAX_IDLE_TIME",
        Value("entity-max-idle-time"),
        Some("60s"),
        "DURATION",
        "Idle time before an entity is passivated",
        Scopes::RUN,
    ),
    s(
        "entity_termination_timeout",
        "SHOAL_ENTITY_TERMINATION_TIMEOUT",
        Value("entity-termination-timeout"),
        Some("15s"),
        "DURATION",
        "How long stopping entities may finish their running request (shard handoff, shutdown)",
        Scopes::RUN,
    ),
    s(
        "max_resident_entities",
        "SHOAL_MAX_RESIDENT_ENTITIES",
        Value("max-resident-entities"),
        Some("100000"),
        "N",
        "Live entity instances per runner",
        Scopes::RUN,
    ),
    s(
        "send_retry_interval",
        "SHOAL_SEND_RETRY_INTERVAL",
        Value("send-retry-interval"),
        Some("50ms"),
        "DURATION",
        "Retry delay while a shard has no reachable owner",
        Scopes::RUN,
    ),
    s(
        "default_call_timeout",
        "SHOAL_DEFAULT_CALL_TIMEOUT",
        Value("default-call-timeout"),
        Some("30s"),
        "DURATION",
        "A call's deadline, retries included, when the caller gives none (gateway: x-shoal-timeout-ms)",
        Scopes::RUN,
    ),
    s(
        "health_check_interval",
        "SHOAL_HEALTH_CHECK_INTERVAL",
        Value("health-check-interval"),
        Some("500ms"),
        "DURATION",
        "How often each runner probes the others; one that most others cannot reach (two failed probes in a row) loses its shards",
        Scopes::RUN,
    ),
    s(
        "defect_max_retries",
        "SHOAL_DEFECT_MAX_RETRIES",
        Value("defect-max-retries"),
        Some("3"),
        "N",
        "Replays of a request after its entity failed with a defect",
        Scopes::RUN,
    ),
    s(
        "defect_backoff",
        "SHOAL_DEFECT_BACKOFF",
        Value("defect-backoff"),
        Some("200ms"),
        "DURATION",
        "Restart delay after a defect (doubled each time)",
        Scopes::RUN,
    ),
    // Transport between runners.
    secret(s(
        "runner_token",
        "SHOAL_RUNNER_TOKEN",
        Flag::None,
        None,
        "TOKEN",
        "Shared secret runners require from each other (file or environment only)",
        Scopes::RUN,
    )),
    s(
        "tls_cert",
        "SHOAL_TLS_CERT",
        Value("tls-cert"),
        None,
        "FILE",
        "This runner's TLS certificate chain (PEM); with tls_key and tls_ca enables TLS between runners",
        Scopes::RUN,
    ),
    s(
        "tls_key",
        "SHOAL_TLS_KEY",
        Value("tls-key"),
        None,
        "FILE",
        "This runner's TLS private key (PEM)",
        Scopes::RUN,
    ),
    s(
        "tls_ca",
        "SHOAL_TLS_CA",
        Value("tls-ca"),
        None,
        "FILE",
        "The CA that signs the runners' certificates (PEM)",
        Scopes::RUN,
    ),
    s(
        "tls_domain",
        "SHOAL_TLS_DOMAIN",
        Value("tls-domain"),
        None,
        "NAME",
        "The name to expect in other runners' certificates (default: the host being called)",
        Scopes::RUN,
    ),
    s(
        "insecure_transport",
        "SHOAL_INSECURE_TRANSPORT",
        Switch {
            name: "insecure-transport",
            sets: "true",
        },
        Some("false"),
        "BOOL",
        "Allow listening on a non-loopback address with neither runner_token nor TLS (anything that reaches the port can then send requests)",
        Scopes::RUN,
    ),
    s(
        "max_message_size",
        "SHOAL_MAX_MESSAGE_SIZE",
        Value("max-message-size"),
        Some("4MiB"),
        "SIZE",
        "Largest request or reply between runners",
        Scopes::RUN,
    ),
    // Gateway.
    s(
        "gateway",
        "SHOAL_GATEWAY",
        Value("gateway"),
        Some("127.0.0.1:8080"),
        "ADDR",
        "Where the HTTP gateway listens (HOST:PORT, port 0: any free port), or off",
        Scopes::RUN,
    ),
    secret(s(
        "gateway_token",
        "SHOAL_GATEWAY_TOKEN",
        Flag::None,
        None,
        "TOKEN",
        "Bearer token the gateway requires on /v1 calls (file or environment only)",
        Scopes::RUN,
    )),
    s(
        "gateway_max_body",
        "SHOAL_GATEWAY_MAX_BODY",
        Value("gateway-max-body"),
        Some("1MiB"),
        "SIZE",
        "Largest request body the gateway accepts (larger: HTTP 413)",
        Scopes::RUN,
    ),
    s(
        "gateway_header_timeout",
        "SHOAL_GATEWAY_HEADER_TIMEOUT",
        Value("gateway-header-timeout"),
        Some("10s"),
        "DURATION",
        "A gateway client must send a request's whole head within this, or the connection is closed; also how long an idle keep-alive connection stays open",
        Scopes::RUN,
    ),
    s(
        "gateway_body_timeout",
        "SHOAL_GATEWAY_BODY_TIMEOUT",
        Value("gateway-body-timeout"),
        Some("30s"),
        "DURATION",
        "A gateway call's whole request body must arrive within this after its head (later: HTTP 408 and the connection is closed)",
        Scopes::RUN,
    ),
    s(
        "gateway_max_connections",
        "SHOAL_GATEWAY_MAX_CONNECTIONS",
        Value("gateway-max-connections"),
        Some("auto"),
        "N",
        "Most connections the gateway holds open at once; past it new connections wait until one closes (auto: half the open-file limit, at most 10000)",
        Scopes::RUN,
    ),
    s(
        "metrics",
        "SHOAL_METRICS",
        Value("metrics"),
        Some("gateway"),
        "ADDR",
        "Where /metrics is served: gateway (on the gateway's address), HOST:PORT (a separate listener), or off",
        Scopes::RUN,
    ),
    s(
        "shutdown_delay",
        "SHOAL_SHUTDOWN_DELAY",
        Value("shutdown-delay"),
        Some("0s"),
        "DURATION",
        "After SIGTERM, keep serving this long with /readyz failing (lets load balancers stop routing here) before handing shards off",
        Scopes::RUN,
    ),
    // Logs.
    s(
        "log_format",
        "SHOAL_LOG_FORMAT",
        Value("log-format"),
        Some("text"),
        "FORMAT",
        "Log format on stderr: text or json",
        Scopes::RUN,
    ),
    s(
        "log_level",
        "SHOAL_LOG_LEVEL",
        Value("log-level"),
        Some("info"),
        "FILTER",
        "Log filter: a level (error, warn, info, debug, trace), optionally with per-target levels (info,shoal_sharding=debug)",
        Scopes::RUN,
    ),
];

/// The setting with this file key.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_follow_one_rule() {
        let mut keys = HashSet::new();
        for s in SETTINGS {
            assert!(keys.insert(s.key), "duplicate key {}", s.key);
            assert_eq!(
                s.env,
                format!("SHOAL_{}", s.key.to_uppercase()),
                "{}",
                s.key
            );
            if let Flag::Value(name) = s.flag {
                assert_eq!(name, s.key.replace('_', "-"), "{}", s.key);
            }
            assert!(
                s.secret == (s.flag == Flag::None),
                "{}: secrets (and only they) have no flag",
                s.key
            );
        }
    }
}
