//! `shoal config`: the effective settings of `shoal run`, with where each value comes from.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use shoal_runner::config::{
    Origin, RunScope, RunnerConfig, SETTINGS, Scope, SettingFlags, Sources, redact_url,
};

/// `shoal config`.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// Read settings from this TOML file (flags and SHOAL_* variables override it).
    #[arg(long, short = 'c', value_name = "FILE", env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Print a JSON object (setting -> value, origin) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: SettingFlags<RunScope>,
}

/// Layers the file (if any), the process environment and the flags.
pub(crate) fn load_sources<S: Scope>(
    file: Option<&Path>,
    flags: &SettingFlags<S>,
) -> anyhow::Result<Sources> {
    let mut sources = Sources::new();
    if let Some(path) = file {
        sources = sources.with_file(path)?;
    }
    Ok(sources
        .with_env(std::env::vars())
        .with_flags(flags.values()))
}

pub(crate) fn run(args: ConfigArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let mut flags = args.settings;
    if verbose > 0 {
        flags.set_if_absent("log_level", if verbose == 1 { "debug" } else { "trace" });
    }
    let sources = load_sources(args.config.as_deref(), &flags)?;
    // Refuse what `shoal run` would refuse.
    RunnerConfig::resolve(&sources)?;
    let mut rows = Vec::new();
    for setting in SETTINGS {
        let (value, origin) = match sources.effective(setting) {
            Some(raw) if setting.secret => ("<redacted>".to_owned(), raw.origin),
            Some(raw) if setting.key == "storage" => (redact_url(&raw.value), raw.origin),
            Some(raw) => (raw.value, raw.origin),
            None => ("(unset)".to_owned(), Origin::Default),
        };
        rows.push((setting.key, value, origin));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let map: BTreeMap<&str, serde_json::Value> = rows
            .iter()
            .map(|(key, value, origin)| {
                (
                    *key,
                    serde_json::json!({ "value": value, "origin": origin.to_string() }),
                )
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&map)?)?;
    } else {
        let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        let value_width = rows
            .iter()
            .map(|(_, v, _)| v.len())
            .max()
            .unwrap_or(0)
            .min(48);
        for (key, value, origin) in &rows {
            writeln!(out, "{key:<width$}  {value:<value_width$}  ({origin})")?;
        }
        for warning in sources.warnings() {
            writeln!(out, "warning: {warning}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
