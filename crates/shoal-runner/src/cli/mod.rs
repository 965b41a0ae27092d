//! The `shoal` command line: one module per subcommand group, dispatched from [`run`].
//!
//! To add a command group, add a variant to [`Command`] wrapping the group's clap `Args`, a module
//! next to `launcher.rs`, and a match arm in [`dispatch`].

mod config;
mod launcher;
mod migrate;
mod run;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shoal: sharded, stateful entities on a cluster of runners.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// More logging on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a runner: join the cluster, host entities, serve the HTTP gateway.
    #[command(
        long_about = "Run a runner: register in storage, take a share of the shards, host \
        entities, and serve the HTTP gateway (POST /v1/entities/{type}/{id}/{tag}, /healthz, \
        /readyz, /metrics).\n\n\
        Settings come from flags, then SHOAL_* environment variables, then the --config file, \
        then defaults; docs/configuration.md lists them all. With no settings at all it runs a \
        one-node cluster on ./shoal.db (SQLite) with the gateway on 127.0.0.1:8080.\n\n\
        SIGTERM or SIGINT stops gracefully (shards are handed off at once); a second signal \
        exits immediately."
    )]
    Run(run::RunArgs),
    /// Show the runners and the shard distribution, as storage has them.
    Status(status::StatusArgs),
    /// Apply the storage migrations (create or upgrade the tables).
    Migrate(migrate::MigrateArgs),
    /// Print the effective settings of `shoal run` and where each value comes from.
    Config(config::ConfigArgs),
    /// Start, reuse, inspect and clean up worker processes on Unix sockets (vgi-rpc compatible).
    #[command(
        long_about = "Start, reuse, inspect and clean up worker processes on Unix sockets.\n\n\
        A worker is identified by (argv, working directory, VGI_RPC_* environment) and lives in a \
        per-user state directory shared with the vgi-rpc launchers (Python, TypeScript, C++): \
        $XDG_RUNTIME_DIR/vgi-rpc, else $TMPDIR/vgi-rpc-<uid>. See docs/launcher.md."
    )]
    Launcher(launcher::LauncherArgs),
}

/// Parses the command line, runs the command and maps failures to exit status 1.
pub(crate) fn run() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command, cli.verbose) {
        Ok(code) => code,
        Err(error) => {
            // The one place the binary talks to the user about a failure.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("shoal: {}", error_chain(&error));
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already includes.
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

fn dispatch(command: Command, verbose: u8) -> anyhow::Result<ExitCode> {
    // `shoal run` sets up logging from its own settings.
    if !matches!(command, Command::Run(_)) {
        init_tracing(verbose);
    }
    match command {
        Command::Run(args) => run::run(args, verbose),
        Command::Status(args) => status::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Config(args) => config::run(args, verbose),
        Command::Launcher(args) => launcher::run(args),
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A current-thread tokio runtime for commands that do I/O.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
