//! `shoal status`: runners and the shard distribution, read from storage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use shoal_runner::config::{SettingFlags, ShardLayout, StatusScope, StorageConfig};
use shoal_runner::status::ClusterStatus;
use shoal_storage::connect_runner_storage;

/// The least time each storage read gets (a command line is not in a hurry).
const MIN_DEADLINE: Duration = Duration::from_secs(5);

/// `shoal status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Read settings from this TOML file (flags and SHOAL_* variables override it).
    #[arg(long, short = 'c', value_name = "FILE", env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON (runners, groups, totals and every lease with its epoch).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: SettingFlags<StatusScope>,
}

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let sources = super::config::load_sources(args.config.as_deref(), &args.settings)?;
    let mut storage = StorageConfig::resolve(&sources)?;
    storage.migrate = false;
    storage.call_timeout = storage.call_timeout.max(MIN_DEADLINE);
    let layout = ShardLayout::resolve(&sources)?;
    let status = super::runtime()?.block_on(async {
        let url = storage.redacted_url();
        let conn = connect_runner_storage(&storage.url, storage.options())
            .await
            .with_context(|| format!("cannot open storage {url}"))?;
        ClusterStatus::read(
            &*conn,
            layout.shards_per_group,
            &layout.groups,
            storage.call_timeout,
        )
        .await
        .with_context(|| {
            format!(
                "cannot read the cluster from {url} (table prefix {}); if the tables do not \
                 exist yet, run `shoal migrate`",
                storage.table_prefix.as_str()
            )
        })
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        write!(out, "{}", status.render_text())?;
    }
    Ok(ExitCode::SUCCESS)
}
