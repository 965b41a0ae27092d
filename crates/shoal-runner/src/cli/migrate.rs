//! `shoal migrate`: creates or upgrades the storage tables.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shoal_runner::config::{MigrateScope, SettingFlags, StorageConfig};
use shoal_storage::connect_runner_storage;

/// `shoal migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Read settings from this TOML file (flags and SHOAL_* variables override it).
    #[arg(long, short = 'c', value_name = "FILE", env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingFlags<MigrateScope>,
}

pub(crate) fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let sources = super::config::load_sources(args.config.as_deref(), &args.settings)?;
    let mut storage = StorageConfig::resolve(&sources)?;
    storage.migrate = true;
    let url = storage.redacted_url();
    super::runtime()?.block_on(async {
        connect_runner_storage(&storage.url, storage.options())
            .await
            .with_context(|| format!("cannot migrate {url}"))
    })?;
    let mut out = std::io::stdout().lock();
    if storage.url.starts_with("memory:") {
        writeln!(out, "memory: storage has no tables; nothing to migrate")?;
    } else {
        writeln!(
            out,
            "storage {url} is migrated (table prefix {})",
            storage.table_prefix.as_str()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
