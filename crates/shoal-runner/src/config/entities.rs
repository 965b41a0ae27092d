//! `[[entity]]` sections of the configuration file: entity types implemented by worker processes.
//!
//! ```toml
//! [[entity]]
//! type = "py_counter"                                  # the type the worker describes
//! worker = ["python3", "examples/python/counter_worker.py"]
//! stderr = "/var/log/shoal/py_counter.log"           # optional
//!
//! [[entity]]
//! type = "billing"
//! socket = "/run/billing-worker.sock"                  # a worker someone else runs
//! request_timeout = "5s"
//! ```
//!
//! Each section names one entity type and where its worker comes from: `worker`, a command the
//! runner launches (and reuses, and starts again when it dies), or `socket`, a worker already
//! listening there. Several sections may name the same worker (one section per entity type it
//! implements); the launcher runs one process for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_protocol::EntityType;

use super::error::RunnerConfigError;
use super::parse;

/// One `[[entity]]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEntityConfig {
    /// The entity type (one the worker describes).
    pub entity_type: EntityType,
    /// Where the worker comes from.
    pub source: WorkerSourceConfig,
    /// How the runner talks to the worker.
    pub options: WorkerEntityOptions,
    /// The file and section it was read from, for messages (`shoal.toml [[entity]] #2`).
    pub origin: String,
}

/// Where a worker comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSourceConfig {
    /// `worker = ["cmd", "arg", ...]`: the runner launches it.
    Command {
        /// The command line, program first.
        argv: Vec<String>,
        /// `cwd`: the working directory to start it in (default: the runner's).
        cwd: Option<PathBuf>,
        /// `stderr`: a file its stderr is appended to (default: discarded).
        stderr: Option<PathBuf>,
        /// `idle_timeout`: the worker exits after this long without connections (default 300 s).
        idle_timeout: Option<Duration>,
        /// `startup_timeout`: how long it has to announce its socket (default 60 s).
        startup_timeout: Option<Duration>,
        /// `state_dir`: the launcher's state directory (default: `$XDG_RUNTIME_DIR/vgi-rpc` or
        /// `$TMPDIR/vgi-rpc-$EUID`).
        state_dir: Option<PathBuf>,
    },
    /// `socket = "/path"`: a worker already listening there.
    Socket(PathBuf),
}

/// How the runner talks to a worker (unset: the host's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerEntityOptions {
    /// `request_timeout`: how long a call waits for the worker's reply (default 30 s).
    pub request_timeout: Option<Duration>,
    /// `connect_timeout`: deadline of connecting and of the worker's `Describe` (default 10 s).
    pub connect_timeout: Option<Duration>,
    /// `concurrency`: calls one entity may run at once when the worker declares none (default 1).
    pub concurrency: Option<usize>,
    /// `max_in_flight`: calls the worker may run at once over all its entities (default: no
    /// limit).
    pub max_in_flight: Option<usize>,
    /// `heartbeat_interval`: how often the runner checks the worker is alive (default 5 s).
    pub heartbeat_interval: Option<Duration>,
    /// `heartbeat_timeout`: a worker silent this long is restarted (default 15 s).
    pub heartbeat_timeout: Option<Duration>,
}

/// The keys a section accepts.
const KEYS: &[&str] = &[
    "type",
    "worker",
    "socket",
    "cwd",
    "stderr",
    "idle_timeout",
    "startup_timeout",
    "state_dir",
    "request_timeout",
    "connect_timeout",
    "concurrency",
    "max_in_flight",
    "heartbeat_interval",
    "heartbeat_timeout",
];

/// Keys that only make sense for a launched worker.
const COMMAND_KEYS: &[&str] = &[
    "cwd",
    "stderr",
    "idle_timeout",
    "startup_timeout",
    "state_dir",
];

/// Reads the value of the file's `entity` key: an array of tables.
pub(super) fn parse_sections(
    path: &Path,
    value: &toml::Value,
) -> Result<Vec<WorkerEntityConfig>, RunnerConfigError> {
    let Some(sections) = value.as_array() else {
        return Err(RunnerConfigError::Entity {
            origin: format!("{} entity", path.display()),
            key: "entity",
            reason: "expected [[entity]] sections (an array of tables)".to_owned(),
        });
    };
    sections
        .iter()
        .enumerate()
        .map(|(index, section)| {
            let origin = format!("{} [[entity]] #{}", path.display(), index + 1);
            let table = section
                .as_table()
                .ok_or_else(|| RunnerConfigError::Entity {
                    origin: origin.clone(),
                    key: "entity",
                    reason: "expected a table of settings".to_owned(),
                })?;
            parse_section(origin, table)
        })
        .collect()
}

fn parse_section(
    origin: String,
    table: &toml::Table,
) -> Result<WorkerEntityConfig, RunnerConfigError> {
    let error = |key: &'static str, reason: String| RunnerConfigError::Entity {
        origin: origin.clone(),
        key,
        reason,
    };
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(RunnerConfigError::Entity {
                origin: origin.clone(),
                key: "entity",
                reason: format!("unknown key `{key}` (known: {})", KEYS.join(", ")),
            });
        }
    }
    let string = |key: &'static str| -> Result<Option<String>, RunnerConfigError> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(error(key, "expected a non-empty string".to_owned())),
        }
    };
    let duration = |key: &'static str| -> Result<Option<Duration>, RunnerConfigError> {
        string(key)?
            .map(|text| parse::duration(&text).map_err(|reason| error(key, reason)))
            .transpose()
    };
    let count = |key: &'static str| -> Result<Option<usize>, RunnerConfigError> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if *n >= 1 => usize::try_from(*n)
                .map(Some)
                .map_err(|_| error(key, "the number is too large".to_owned())),
            Some(_) => Err(error(
                key,
                "expected a whole number of at least 1".to_owned(),
            )),
        }
    };

    let entity_type = match string("type")? {
        Some(name) => EntityType::new(&name).map_err(|e| error("type", e.to_string()))?,
        None => {
            return Err(error(
                "type",
                "missing: name the entity type the worker implements (type = \"...\")".to_owned(),
            ));
        }
    };
    let argv = match table.get("worker") {
        None => None,
        Some(toml::Value::Array(items)) if !items.is_empty() => Some(
            items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(error(
                        "worker",
                        "every item must be a non-empty string".to_owned(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(error(
                "worker",
                "expected the command as a non-empty list of strings, for example \
                 worker = [\"python3\", \"worker.py\"]"
                    .to_owned(),
            ));
        }
    };
    let socket = string("socket")?.map(PathBuf::from);
    let source = match (argv, socket) {
        (Some(argv), None) => WorkerSourceConfig::Command {
            argv,
            cwd: string("cwd")?.map(PathBuf::from),
            stderr: string("stderr")?.map(PathBuf::from),
            idle_timeout: duration("idle_timeout")?,
            startup_timeout: duration("startup_timeout")?,
            state_dir: string("state_dir")?.map(PathBuf::from),
        },
        (None, Some(socket)) => {
            if let Some(key) = COMMAND_KEYS.iter().find(|k| table.contains_key(**k)) {
                return Err(error(
                    key,
                    "only applies to a launched worker (worker = [...]), not to socket = ..."
                        .to_owned(),
                ));
            }
            if !socket.is_absolute() {
                return Err(error(
                    "socket",
                    "expected an absolute path to a Unix socket".to_owned(),
                ));
            }
            WorkerSourceConfig::Socket(socket)
        }
        (Some(_), Some(_)) => {
            return Err(error(
                "socket",
                "give either worker = [...] (the runner launches it) or socket = \"...\" \
                 (it is already running), not both"
                    .to_owned(),
            ));
        }
        (None, None) => {
            return Err(error(
                "worker",
                "missing: give worker = [\"cmd\", \"arg\", ...] or socket = \"/path\"".to_owned(),
            ));
        }
    };
    let options = WorkerEntityOptions {
        request_timeout: duration("request_timeout")?,
        connect_timeout: duration("connect_timeout")?,
        concurrency: count("concurrency")?,
        max_in_flight: count("max_in_flight")?,
        heartbeat_interval: duration("heartbeat_interval")?,
        heartbeat_timeout: duration("heartbeat_timeout")?,
    };
    if let (Some(interval), Some(timeout)) = (options.heartbeat_interval, options.heartbeat_timeout)
        && timeout < interval
    {
        return Err(error(
            "heartbeat_timeout",
            format!("must be at least heartbeat_interval ({interval:?})"),
        ));
    }
    Ok(WorkerEntityConfig {
        entity_type,
        source,
        options,
        origin,
    })
}

/// Checks the sections together: every type once, and not a built-in one when those are on.
pub(super) fn check_all(
    entities: &[WorkerEntityConfig],
    builtin_types: &[&str],
) -> Result<(), RunnerConfigError> {
    for (i, entity) in entities.iter().enumerate() {
        if let Some(earlier) = entities[..i]
            .iter()
            .find(|e| e.entity_type == entity.entity_type)
        {
            return Err(RunnerConfigError::Entity {
                origin: entity.origin.clone(),
                key: "type",
                reason: format!(
                    "entity type {} is already configured in {}",
                    entity.entity_type, earlier.origin
                ),
            });
        }
        if builtin_types.contains(&entity.entity_type.as_str()) {
            return Err(RunnerConfigError::Entity {
                origin: entity.origin.clone(),
                key: "type",
                reason: format!(
                    "{} is a built-in entity type; choose another type, or turn the built-in \
                     entities off (builtin_entities = false)",
                    entity.entity_type
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<WorkerEntityConfig>, RunnerConfigError> {
        let table: toml::Table = text.parse().unwrap();
        parse_sections(Path::new("shoal.toml"), &table["entity"])
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_command_and_socket_workers() {
        let entities = parse(
            r#"
            [[entity]]
            type = "py_counter"
            worker = ["python3", "counter.py"]
            idle_timeout = "60s"
            stderr = "w.log"
            request_timeout = "5s"
            concurrency = 4

            [[entity]]
            type = "billing"
            socket = "/run/billing.sock"
            "#,
        )
        .unwrap();
        assert_eq!(entities.len(), 2);
        assert_eq!(entities[0].entity_type.as_str(), "py_counter");
        assert_eq!(entities[0].origin, "shoal.toml [[entity]] #1");
        match &entities[0].source {
            WorkerSourceConfig::Command {
                argv,
                idle_timeout,
                stderr,
                ..
            } => {
                assert_eq!(argv, &["python3", "counter.py"]);
                assert_eq!(*idle_timeout, Some(Duration::from_secs(60)));
                assert_eq!(stderr.as_deref(), Some(Path::new("w.log")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            entities[0].options.request_timeout,
            Some(Duration::from_secs(5))
        );
        assert_eq!(entities[0].options.concurrency, Some(4));
        assert_eq!(
            entities[1].source,
            WorkerSourceConfig::Socket("/run/billing.sock".into())
        );
    }

    #[test]
    fn errors_name_the_section_and_the_key() {
        assert_eq!(
            error("[[entity]]\nworker = [\"w\"]"),
            "invalid setting type in shoal.toml [[entity]] #1: missing: name the entity type \
             the worker implements (type = \"...\")"
        );
        let both = error("[[entity]]\ntype = \"a\"\nworker = [\"w\"]\nsocket = \"/s\"");
        assert!(
            both.starts_with("invalid setting socket in shoal.toml [[entity]] #1: give either"),
            "{both}"
        );
        let neither = error("[[entity]]\ntype = \"a\"");
        assert!(
            neither.starts_with("invalid setting worker in"),
            "{neither}"
        );
        assert!(error("[[entity]]\ntype = \"a\"\nworker = []").contains("setting worker"));
        assert!(error("[[entity]]\ntype = \"a\"\nworker = \"w\"").contains("list of strings"));
        assert!(error("[[entity]]\ntype = \"a\"\nworker = [\"w\", 3]").contains("every item"));
        assert!(error("[[entity]]\ntype = \"\"\nworker = [\"w\"]").contains("setting type"));
        let unknown = error("[[entity]]\ntype = \"a\"\nworker = [\"w\"]\ntimeout = \"1s\"");
        assert!(unknown.contains("unknown key `timeout`"), "{unknown}");
        let duration = error(
            "[[entity]]\ntype = \"a\"\nworker = [\"w\"]\n\n[[entity]]\ntype = \"b\"\nworker = [\"w\"]\nrequest_timeout = \"soon\"",
        );
        assert!(
            duration.starts_with(
                "invalid setting request_timeout in shoal.toml [[entity]] #2: expected a duration"
            ),
            "{duration}"
        );
        let launch_only = error("[[entity]]\ntype = \"a\"\nsocket = \"/s\"\ncwd = \"/\"");
        assert!(launch_only.contains("setting cwd"), "{launch_only}");
        assert!(error("[[entity]]\ntype = \"a\"\nsocket = \"s\"").contains("absolute"));
        assert!(
            error("[[entity]]\ntype = \"a\"\nworker = [\"w\"]\nconcurrency = 0")
                .contains("setting concurrency")
        );
        assert!(
            error("[[entity]]\ntype = \"a\"\nworker = [\"w\"]\nheartbeat_interval = \"5s\"\nheartbeat_timeout = \"1s\"")
                .contains("setting heartbeat_timeout")
        );
        assert!(error("entity = 3").contains("[[entity]] sections"));
    }

    #[test]
    fn types_are_unique_and_not_built_in() {
        let entities = parse(
            "[[entity]]\ntype = \"a\"\nworker = [\"w\"]\n[[entity]]\ntype = \"a\"\nsocket = \"/s\"",
        )
        .unwrap();
        let message = check_all(&entities, &[]).unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid setting type in shoal.toml [[entity]] #2: entity type a is already \
             configured in shoal.toml [[entity]] #1"
        );
        let counter = parse("[[entity]]\ntype = \"counter\"\nworker = [\"w\"]").unwrap();
        assert!(check_all(&counter, &[]).is_ok());
        let message = check_all(&counter, &["counter"]).unwrap_err().to_string();
        assert!(message.contains("builtin_entities = false"), "{message}");
    }
}
