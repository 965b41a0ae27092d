//! `shoal run`: a runner process, until SIGTERM or SIGINT.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shoal_runner::config::{MetricsListen, RunScope, RunnerConfig, SettingFlags};
use shoal_runner::node::{Addresses, Node};
use shoal_runner::telemetry;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// `shoal run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Read settings from this TOML file (flags and SHOAL_* variables override it).
    #[arg(long, short = 'c', value_name = "FILE", env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingFlags<RunScope>,
}

pub(crate) fn run(args: RunArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let mut flags = args.settings;
    match verbose {
        0 => {}
        1 => flags.set_if_absent("log_level", "debug"),
        _ => flags.set_if_absent("log_level", "trace"),
    }
    let sources = super::config::load_sources(args.config.as_deref(), &flags)?;
    let config = RunnerConfig::resolve(&sources)?;
    telemetry::init_logging(&config.log)?;
    for warning in sources.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// Waits for the next signal and returns its number.
    async fn next(&mut self) -> u8 {
        tokio::select! {
            _ = self.term.recv() => 15,
            _ = self.int.recv() => 2,
        }
    }
}

fn signal_name(signo: u8) -> &'static str {
    if signo == 15 { "SIGTERM" } else { "SIGINT" }
}

async fn serve(config: RunnerConfig) -> anyhow::Result<ExitCode> {
    // Installed first, so a signal during startup is not lost (or fatal).
    let mut signals = Signals::install()?;
    let metrics = match config.metrics {
        MetricsListen::Off => None,
        _ => Some(telemetry::install_metrics()?),
    };
    let node = tokio::select! {
        node = Node::start(&config, metrics) => node?,
        signo = signals.next() => {
            tracing::warn!(signal = signal_name(signo), "stopped during startup");
            return Ok(ExitCode::from(128 + signo));
        }
    };
    announce(node.addresses());

    let signo = tokio::select! {
        signo = signals.next() => signo,
        () = node.sharding().stopped() => {
            // The runtime stopped on its own: another process took this runner's address.
            tracing::error!("the runner stopped serving (see the errors above); exiting");
            node.shutdown().await;
            return Ok(ExitCode::FAILURE);
        }
    };
    tracing::info!(
        signal = signal_name(signo),
        "shutting down gracefully; send the signal again to exit at once"
    );
    tokio::spawn(async move {
        let signo = signals.next().await;
        tracing::warn!(
            signal = signal_name(signo),
            "second signal: exiting at once without finishing the handoff"
        );
        std::process::exit(128 + i32::from(signo));
    });
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Prints one JSON line on stdout saying where the process listens (for scripts and tests; logs
/// go to stderr).
fn announce(addresses: &Addresses) {
    let line = serde_json::json!({
        "event": "started",
        "pid": std::process::id(),
        "runner": addresses.runner,
        "gateway": addresses.gateway.map(|a| a.to_string()),
        "metrics": addresses.metrics.map(|a| a.to_string()),
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
