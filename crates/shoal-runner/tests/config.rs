//! Settings: precedence (file < environment < flags), validation errors that name the setting
//! and its origin, and the documentation of every setting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use shoal_runner::config::{
    Flag, MaxConnections, MetricsListen, Role, RunnerConfig, RunnerConfigError, SETTINGS, Sources,
    setting,
};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn flags(
    pairs: &[(&'static str, &'static str)],
) -> Vec<(&'static shoal_runner::config::Setting, &'static str)> {
    pairs
        .iter()
        .map(|(k, v)| (setting(k).unwrap(), *v))
        .collect()
}

const FILE: &str = r#"
lease_ttl = "5s"
shards_per_group = 32
runner_weight = 2
assigned_groups = ["default", "eu"]
available_groups = ["default", "eu"]
gateway_max_body = "64KiB"
log_format = "json"
"#;

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let sources = Sources::new()
        .with_file_text(Path::new("shoal.toml"), FILE)
        .unwrap()
        .with_env(env(&[
            ("SHOAL_LEASE_TTL", "3s"),
            ("SHOAL_SHARDS_PER_GROUP", "64"),
            ("PATH", "/bin"),
        ]))
        .with_flags(flags(&[("lease_ttl", "4s")]));
    let config = RunnerConfig::resolve(&sources).unwrap();
    assert_eq!(config.sharding.lease_ttl(), Duration::from_secs(4)); // flag
    assert_eq!(config.sharding.shards_per_group().get(), 64); // env
    assert_eq!(config.sharding.runner_weight().get(), 2); // file
    assert_eq!(config.sharding.assigned_groups().len(), 2); // file list
    assert_eq!(config.gateway.unwrap().max_body, 64 << 10); // file size
    assert_eq!(
        config.sharding.entity_max_idle_time(),
        Duration::from_secs(60)
    ); // default

    // Each layer alone.
    let file_only = Sources::new()
        .with_file_text(Path::new("shoal.toml"), FILE)
        .unwrap();
    assert_eq!(
        RunnerConfig::resolve(&file_only)
            .unwrap()
            .sharding
            .lease_ttl(),
        Duration::from_secs(5)
    );
    let env_only = Sources::new().with_env(env(&[("SHOAL_LEASE_TTL", "3s")]));
    assert_eq!(
        RunnerConfig::resolve(&env_only)
            .unwrap()
            .sharding
            .lease_ttl(),
        Duration::from_secs(3)
    );
}

#[test]
fn switches_and_special_values() {
    let sources = Sources::new().with_flags(flags(&[
        ("migrate", "false"),
        ("client_only", "true"),
        ("builtin_entities", "false"),
        ("gateway", "off"),
        ("metrics", "127.0.0.1:9100"),
    ]));
    let config = RunnerConfig::resolve(&sources).unwrap();
    assert!(!config.storage.migrate);
    assert_eq!(config.role, Role::ClientOnly);
    assert!(!config.builtin_entities);
    assert!(config.gateway.is_none());
    assert_eq!(
        config.metrics,
        MetricsListen::Separate("127.0.0.1:9100".to_owned())
    );

    // metrics follow the gateway by default: off with it.
    let off = Sources::new().with_env(env(&[("SHOAL_GATEWAY", "off")]));
    assert_eq!(
        RunnerConfig::resolve(&off).unwrap().metrics,
        MetricsListen::Off
    );
    // ...but asking for metrics on a gateway that is off is an error.
    let conflict = Sources::new().with_env(env(&[
        ("SHOAL_GATEWAY", "off"),
        ("SHOAL_METRICS", "gateway"),
    ]));
    let error = RunnerConfig::resolve(&conflict).unwrap_err();
    assert!(
        matches!(
            error,
            RunnerConfigError::Conflict {
                setting: "metrics",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn insecure_transport_is_off_unless_set_by_file_environment_or_flag() {
    let default = RunnerConfig::resolve(&Sources::new()).unwrap();
    assert!(!default.socket.insecure_transport);
    let file = Sources::new()
        .with_file_text(Path::new("shoal.toml"), "insecure_transport = true")
        .unwrap();
    let environment = Sources::new().with_env(env(&[("SHOAL_INSECURE_TRANSPORT", "true")]));
    let flag = Sources::new().with_flags(vec![(
        setting("insecure_transport").expect("an insecure_transport setting"),
        "true",
    )]);
    for (origin, sources) in [("file", file), ("env", environment), ("flag", flag)] {
        let config = RunnerConfig::resolve(&sources).unwrap();
        assert!(config.socket.insecure_transport, "{origin}");
    }
    let bad = error_of(Sources::new().with_env(env(&[("SHOAL_INSECURE_TRANSPORT", "maybe")])));
    assert!(
        bad.starts_with("invalid value for insecure_transport (SHOAL_INSECURE_TRANSPORT=maybe)"),
        "{bad}"
    );
}

#[test]
fn the_binary_refuses_an_open_runner_port_without_authentication() {
    use rustix::process::Signal;
    let dir = tempfile::tempdir().unwrap();
    let open = [
        "run",
        "--listen",
        "0.0.0.0:0",
        "--advertise-host",
        "127.0.0.1",
        "--gateway",
        "127.0.0.1:0",
        "--storage",
        "memory:",
    ];
    let mut cmd = common::shoal(dir.path());
    cmd.args(open);
    let out = common::output(cmd);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for hint in [
        "0.0.0.0:0",
        "runner_token",
        "tls_ca",
        "insecure_transport = true",
    ] {
        assert!(stderr.contains(hint), "{hint} not in {stderr}");
    }

    // Set explicitly, it starts (and warns).
    let mut cmd = common::shoal(dir.path());
    cmd.args(open).arg("--insecure-transport");
    let mut runner = common::Runner::start(cmd, dir.path().join("stderr.log"));
    assert!(
        runner.runner.as_deref().unwrap().starts_with("127.0.0.1:"),
        "{:?}",
        runner.runner
    );
    runner.signal(Signal::TERM);
    let status = runner.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", runner.logs());
    assert!(
        runner.logs().contains("insecure_transport = true"),
        "{}",
        runner.logs()
    );
}

fn error_of(sources: Sources) -> String {
    RunnerConfig::resolve(&sources).unwrap_err().to_string()
}

#[test]
fn errors_name_the_setting_and_where_its_value_came_from() {
    assert_eq!(
        error_of(Sources::new().with_env(env(&[("SHOAL_LEASE_TTL", "abc")]))),
        "invalid value for lease_ttl (SHOAL_LEASE_TTL=abc): expected a duration like 2s, 500ms or 1m"
    );
    assert_eq!(
        error_of(Sources::new().with_flags(flags(&[("shards_per_group", "many")]))),
        "invalid value for shards_per_group (--shards-per-group many): expected a whole number"
    );
    let file = Sources::new()
        .with_file_text(Path::new("/etc/shoal.toml"), "gateway_max_body = \"huge\"")
        .unwrap();
    assert_eq!(
        error_of(file),
        "invalid value for gateway_max_body (gateway_max_body = \"huge\" in /etc/shoal.toml): \
         expected a size like 1MiB, 512KiB or 1048576"
    );
    // Gateway limits.
    assert_eq!(
        error_of(Sources::new().with_env(env(&[("SHOAL_GATEWAY_HEADER_TIMEOUT", "0s")]))),
        "invalid value for gateway_header_timeout (SHOAL_GATEWAY_HEADER_TIMEOUT=0s): must be more \
         than zero"
    );
    assert_eq!(
        error_of(Sources::new().with_flags(flags(&[("gateway_body_timeout", "2d")]))),
        "invalid value for gateway_body_timeout (--gateway-body-timeout 2d): must be at most 24h"
    );
    assert_eq!(
        error_of(Sources::new().with_flags(flags(&[("gateway_max_connections", "0")]))),
        "invalid value for gateway_max_connections (--gateway-max-connections 0): expected auto \
         or a number of connections (at least 1)"
    );
    let limits = RunnerConfig::resolve(&Sources::new().with_flags(flags(&[
        ("gateway_header_timeout", "2s"),
        ("gateway_body_timeout", "5s"),
        ("gateway_max_connections", "64"),
    ])))
    .unwrap()
    .gateway
    .unwrap();
    assert_eq!(
        (
            limits.header_timeout,
            limits.body_timeout,
            limits.max_connections
        ),
        (
            Duration::from_secs(2),
            Duration::from_secs(5),
            MaxConnections::Fixed(64)
        )
    );
    // Checks across settings name the setting and its origin too.
    let cross = error_of(Sources::new().with_flags(flags(&[("storage_timeout", "5s")])));
    assert!(
        cross.starts_with("invalid value for storage_timeout (--storage-timeout 5s):"),
        "{cross}"
    );
    assert!(cross.contains("half the lease TTL"), "{cross}");
    let groups = error_of(Sources::new().with_env(env(&[("SHOAL_ASSIGNED_GROUPS", "eu")])));
    assert!(
        groups.contains("assigned_groups (SHOAL_ASSIGNED_GROUPS=eu)"),
        "{groups}"
    );
    // Secrets are never echoed.
    let token = error_of(Sources::new().with_env(env(&[("SHOAL_RUNNER_TOKEN", "a b")])));
    assert!(token.contains("SHOAL_RUNNER_TOKEN=<redacted>"), "{token}");
    assert!(!token.contains("a b"), "{token}");
    // TLS files go together.
    let tls = error_of(Sources::new().with_flags(flags(&[("tls_cert", "cert.pem")])));
    assert!(tls.contains("tls_key, tls_ca"), "{tls}");
    // Storage URLs are checked before anything connects.
    let url = error_of(Sources::new().with_flags(flags(&[("storage", "mysql://db")])));
    assert!(
        url.starts_with("invalid value for storage (--storage mysql://db)"),
        "{url}"
    );
}

#[test]
fn the_file_refuses_unknown_keys_and_bad_toml() {
    let typo = Sources::new()
        .with_file_text(Path::new("shoal.toml"), "lease_tll = \"2s\"")
        .unwrap_err()
        .to_string();
    assert!(
        typo.contains("unknown setting `lease_tll` in shoal.toml"),
        "{typo}"
    );
    assert!(typo.contains("did you mean `lease_ttl`?"), "{typo}");

    // Other tables are not settings; `[[entity]]` sections refuse keys they do not know.
    let table = Sources::new()
        .with_file_text(Path::new("shoal.toml"), "[server]\nport = 1")
        .unwrap_err();
    assert!(
        matches!(table, RunnerConfigError::UnknownKey { .. }),
        "{table}"
    );
    let entity = Sources::new()
        .with_file_text(Path::new("shoal.toml"), "[[entity]]\nname = \"x\"")
        .unwrap_err();
    assert!(
        matches!(entity, RunnerConfigError::Entity { .. }),
        "{entity}"
    );
    assert!(
        entity.to_string().contains("unknown key `name`"),
        "{entity}"
    );

    let bad = Sources::new()
        .with_file_text(Path::new("shoal.toml"), "lease_ttl = ")
        .unwrap_err();
    assert!(matches!(bad, RunnerConfigError::ParseFile { .. }), "{bad}");

    let missing = Sources::new()
        .with_file(Path::new("/nonexistent/shoal.toml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/shoal.toml"), "{missing}");
}

#[test]
fn unknown_environment_variables_are_warned_about() {
    let sources = Sources::new().with_env(env(&[
        ("SHOAL_LEASE_TLL", "2s"),
        ("SHOAL_CONFIG", "shoal.toml"),
    ]));
    assert_eq!(
        sources.warnings(),
        ["ignoring unknown environment variable SHOAL_LEASE_TLL (did you mean SHOAL_LEASE_TTL?)"]
    );
}

#[test]
fn every_setting_is_documented() {
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    for s in SETTINGS {
        let row = docs
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", s.key)))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{}`", s.key));
        assert!(row.contains(&format!("`{}`", s.env)), "{}: {row}", s.key);
        if let Some(flag) = s.flag.name() {
            assert!(row.contains(&format!("`--{flag}`")), "{}: {row}", s.key);
        } else {
            assert!(s.flag == Flag::None);
        }
        if let Some(default) = s.default {
            assert!(row.contains(&format!("`{default}`")), "{}: {row}", s.key);
        }
    }
}

#[test]
fn the_binary_applies_the_same_precedence() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shoal.toml"), FILE).unwrap();
    let mut cmd = common::shoal(dir.path());
    cmd.args([
        "config",
        "--json",
        "--config",
        "shoal.toml",
        "--lease-ttl",
        "4s",
    ])
    .env("SHOAL_SHARDS_PER_GROUP", "64")
    .env("SHOAL_GATEWAY_TOKEN", "s3cret")
    .env("SHOAL_STORAGE", "postgres://shoal:pw@db/shoal");
    let json: serde_json::Value = serde_json::from_str(&common::stdout_of(cmd)).unwrap();
    assert_eq!(json["lease_ttl"]["value"], "4s");
    assert_eq!(json["lease_ttl"]["origin"], "flag --lease-ttl");
    assert_eq!(json["shards_per_group"]["value"], "64");
    assert_eq!(
        json["shards_per_group"]["origin"],
        "env SHOAL_SHARDS_PER_GROUP"
    );
    assert_eq!(json["runner_weight"]["value"], "2");
    assert_eq!(json["runner_weight"]["origin"], "file shoal.toml");
    assert_eq!(json["entity_max_idle_time"]["origin"], "default");
    assert_eq!(json["gateway_token"]["value"], "<redacted>");
    assert_eq!(json["storage"]["value"], "postgres://shoal:***@db/shoal");
}

#[test]
fn the_binary_refuses_bad_settings_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::shoal(dir.path());
    cmd.arg("run").env("SHOAL_LEASE_TTL", "abc");
    let out = common::output(cmd);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "shoal: invalid value for lease_ttl (SHOAL_LEASE_TTL=abc): expected a duration like 2s, \
         500ms or 1m"
    );
    // Nothing was started or created.
    assert!(!dir.path().join("shoal.db").exists());

    let mut cmd = common::shoal(dir.path());
    cmd.args(["run", "--gateway", "8080"]);
    let out = common::output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value for gateway (--gateway 8080): expected HOST:PORT"),
        "{stderr}"
    );
}
