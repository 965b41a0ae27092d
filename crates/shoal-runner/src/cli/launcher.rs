//! `shoal launcher ...`: the worker launcher from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use shoal_launcher::{
    DEFAULT_PROBE_TIMEOUT, GcOptions, LaunchConfig, LaunchOutcome, StateDir, StatusRow,
    UnixServeOptions, WorkerStderr, canonical_payload, default_state_dir_path, gc_state_dir,
    hash_for_current_process, hashed_env_of_process, launch, serve_unix, socket_paths, status_rows,
};

/// `shoal launcher`.
#[derive(Debug, Args)]
pub(crate) struct LauncherArgs {
    #[command(subcommand)]
    command: LauncherCommand,
}

#[derive(Debug, Subcommand)]
enum LauncherCommand {
    /// Print the socket of a live worker for CMD, starting it when none answers.
    Launch(LaunchArgs),
    /// List the workers of the state directory (read-only).
    Status(StatusArgs),
    /// Remove the files of workers that are gone (a slot in use is left alone).
    Gc(GcArgs),
    /// Print the tuple hash and socket path of CMD for this directory and environment.
    Hash(HashArgs),
    /// A minimal worker (gRPC health and reflection) to try the launcher with.
    DemoWorker(DemoWorkerArgs),
}

#[derive(Debug, Args)]
struct StateDirArgs {
    /// The state directory [default: $XDG_RUNTIME_DIR/vgi-rpc, else $TMPDIR/vgi-rpc-<uid>]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl StateDirArgs {
    fn path(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(default_state_dir_path)
    }
}

#[derive(Debug, Args)]
struct LaunchArgs {
    /// Seconds the worker stays up without connections (0: forever).
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = seconds)]
    idle_timeout: Duration,
    /// Seconds to wait while another launcher starts the same worker.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    connect_timeout: Duration,
    /// Seconds the worker has to print its `UNIX:` line.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds)]
    startup_timeout: Duration,
    /// Append the worker's stderr to this file (default: discarded).
    #[arg(long, value_name = "FILE")]
    worker_stderr: Option<PathBuf>,
    #[command(flatten)]
    state_dir: StateDirArgs,
    /// Use this socket path instead of a slot in the state directory.
    #[arg(long, value_name = "PATH", conflicts_with = "state_dir")]
    socket: Option<PathBuf>,
    /// Print a JSON object (socket, hash, outcome, pid) instead of the socket path.
    #[arg(long)]
    json: bool,
    /// The worker command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    state_dir: StateDirArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct GcArgs {
    #[command(flatten)]
    state_dir: StateDirArgs,
    /// Examine at most this many slots.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HashArgs {
    /// Hash as if launched from this directory [default: the current directory].
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    #[command(flatten)]
    state_dir: StateDirArgs,
    /// Print a JSON object, including the canonical payload that is hashed.
    #[arg(long)]
    json: bool,
    /// The worker command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct DemoWorkerArgs {
    /// The socket to listen on (given by the launcher).
    #[arg(long, value_name = "PATH")]
    unix: PathBuf,
    /// Seconds without connections before exiting (0: never).
    #[arg(
        long,
        value_name = "SECS",
        default_value = "300",
        allow_negative_numbers = true
    )]
    idle_timeout: f64,
    /// Seconds before the idle timer starts.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    startup_grace: Duration,
}

/// Seconds as a decimal number (`300`, `2.5`).
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}`: {e}"))
}

pub(crate) fn run(args: LauncherArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let mut out = std::io::stdout().lock();
    match args.command {
        LauncherCommand::Launch(args) => runtime.block_on(launch_command(args, &mut out)),
        LauncherCommand::Status(args) => runtime.block_on(status_command(args, &mut out)),
        LauncherCommand::Gc(args) => runtime.block_on(gc_command(args, &mut out)),
        LauncherCommand::Hash(args) => hash_command(args, &mut out),
        LauncherCommand::DemoWorker(args) => runtime.block_on(demo_worker(args)),
    }
}

async fn launch_command(args: LaunchArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut config = LaunchConfig::new(args.command)
        .idle_timeout(args.idle_timeout)
        .connect_timeout(args.connect_timeout)
        .worker_startup_timeout(args.startup_timeout);
    if let Some(file) = args.worker_stderr {
        config = config.worker_stderr(WorkerStderr::Append(file));
    }
    if let Some(dir) = args.state_dir.state_dir {
        config = config.state_dir(dir);
    }
    if let Some(socket) = args.socket {
        config = config.socket_path(socket);
    }
    let launched = launch(&config).await?;
    if args.json {
        let (outcome, pid) = match launched.outcome {
            LaunchOutcome::Reused => ("reused", None),
            LaunchOutcome::Spawned { pid } => ("spawned", Some(pid)),
        };
        let json = serde_json::json!({
            "socket": launched.socket,
            "hash": launched.hash,
            "outcome": outcome,
            "pid": pid,
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "{}", launched.socket.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn status_command(args: StatusArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let path = args.state_dir.path();
    let rows = match StateDir::existing(&path)? {
        Some(dir) => status_rows(&dir, DEFAULT_PROBE_TIMEOUT)
            .await
            .with_context(|| format!("listing {}", path.display()))?,
        None => Vec::new(),
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else if rows.is_empty() {
        writeln!(out, "no workers in {}", path.display())?;
    } else {
        write_table(out, &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_table(out: &mut impl Write, rows: &[StatusRow]) -> std::io::Result<()> {
    let header = ["HASH", "ALIVE", "STARTED", "LAUNCHER", "CWD", "COMMAND"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            [
                row.hash.to_string(),
                if row.alive { "yes" } else { "no" }.to_owned(),
                row.started_at
                    .map(format_time)
                    .unwrap_or_else(|| "-".into()),
                row.launcher_pid
                    .map(|pid| pid.to_string())
                    .unwrap_or_else(|| "-".into()),
                if row.cwd.is_empty() {
                    "-".into()
                } else {
                    row.cwd.clone()
                },
                display_command(&row.cmd),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                writeln!(out, "{cell}")?;
            } else {
                write!(out, "{cell:<width$}  ", width = widths[i])?;
            }
        }
        Ok(())
    };
    line(out, &header)?;
    for row in &cells {
        line(out, &row.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

fn format_time(secs: f64) -> String {
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// The argv as a shell-like line (arguments with spaces or quotes are quoted).
fn display_command(cmd: &[String]) -> String {
    if cmd.is_empty() {
        return "-".into();
    }
    cmd.iter()
        .map(|arg| {
            if arg.is_empty()
                || arg
                    .chars()
                    .any(|c| c.is_whitespace() || "\"'\\$".contains(c))
            {
                format!("{arg:?}")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn gc_command(args: GcArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let path = args.state_dir.path();
    let Some(dir) = StateDir::existing(&path)? else {
        writeln!(out, "no state directory at {}", path.display())?;
        return Ok(ExitCode::SUCCESS);
    };
    let mut options = GcOptions::default();
    if let Some(limit) = args.limit {
        options.limit = limit;
    }
    let report = gc_state_dir(&dir, &options).await?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let list = |hashes: &[shoal_launcher::TupleHash]| {
            hashes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            out,
            "cleaned: {} {}",
            report.cleaned.len(),
            list(&report.cleaned)
        )?;
        writeln!(
            out,
            "in use:  {} {}",
            report.skipped_in_use.len(),
            list(&report.skipped_in_use)
        )?;
        writeln!(
            out,
            "alive:   {} {}",
            report.alive.len(),
            list(&report.alive)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn hash_command(args: HashArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let cwd = match &args.cwd {
        // The physical path, as getcwd() reports it to a launcher started in that directory.
        Some(cwd) => std::fs::canonicalize(cwd)
            .with_context(|| format!("resolving --cwd {}", cwd.display()))?,
        None => std::env::current_dir().context("reading the working directory")?,
    };
    let hash = hash_for_current_process(&args.command, Some(&cwd))?;
    let state_dir = args.state_dir.path();
    let paths = socket_paths(&state_dir, &hash);
    if args.json {
        let cwd_text = cwd.to_string_lossy();
        let json = serde_json::json!({
            "hash": hash,
            "socket": paths.socket,
            "lock": paths.lock,
            "meta": paths.meta,
            "state_dir": state_dir,
            "payload": canonical_payload(&args.command, &cwd_text, hashed_env_of_process()?),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        writeln!(out, "{hash}")?;
        writeln!(out, "{}", paths.socket.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn demo_worker(args: DemoWorkerArgs) -> anyhow::Result<ExitCode> {
    let idle = if args.idle_timeout > 0.0 {
        Duration::try_from_secs_f64(args.idle_timeout).ok()
    } else {
        None
    };
    let options = UnixServeOptions::new(&args.unix)
        .idle_timeout(idle)
        .startup_grace(args.startup_grace)
        .stop_on_signals(true);
    let router = tonic::transport::Server::builder().add_routes(Default::default());
    let server = serve_unix(router, options).await?;
    let reason = server.done().await?;
    tracing::info!(?reason, "demo worker stopped");
    Ok(ExitCode::SUCCESS)
}
