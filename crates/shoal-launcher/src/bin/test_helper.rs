//! Test helper for shoal-launcher's integration tests and benchmark — not a product.
//!
//! - `serve [--log FILE] [--never-announce] [--wrong-announcement] [--exit-early CODE] [--slow-start MS] [--grace MS]
//!   --unix PATH --idle-timeout SECS`: a worker serving gRPC health and reflection through
//!   `serve_unix`. `--log` appends `start <pid>` when the process starts and `stop <pid>` when it
//!   stops serving; the other flags misbehave on purpose (never print the announcement, exit with
//!   a message on stderr, announce another path, start slowly).
//! - `launch [--state-dir D] [--startup-timeout MS] [--connect-timeout MS] [--idle-timeout MS]
//!   [--stderr FILE] -- ARGV...`: calls `launch` once and prints one JSON line,
//!   `{"socket": ..., "spawned_pid": ...}` or `{"error": ...}` (exit status 1).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use shoal_launcher::{
    LaunchConfig, LaunchOutcome, UnixServeOptions, WorkerArgs, WorkerStderr, launch, serve_unix,
};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let mode = args.next().and_then(|m| m.into_string().ok());
    let rest: Vec<OsString> = args.collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => fail(&format!("tokio runtime: {error}")),
    };
    match mode.as_deref() {
        Some("serve") => runtime.block_on(serve(rest)),
        Some("launch") => runtime.block_on(launch_once(rest)),
        _ => fail("usage: shoal-launcher-test-helper serve|launch ..."),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

fn millis(value: Option<OsString>, flag: &str) -> Duration {
    value
        .and_then(|v| v.into_string().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| fail(&format!("{flag} needs a number of milliseconds")))
}

async fn serve(args: Vec<OsString>) {
    let worker = WorkerArgs::parse(args).unwrap_or_else(|e| fail(&e.to_string()));
    let mut log = None;
    let mut never_announce = false;
    let mut wrong_announcement = false;
    let mut exit_early = None;
    let mut slow_start = Duration::ZERO;
    let mut grace = Duration::ZERO;
    let mut rest = worker.rest.clone().into_iter();
    while let Some(flag) = rest.next() {
        match flag.to_str().unwrap_or_default() {
            "--log" => log = rest.next().map(PathBuf::from),
            "--never-announce" => never_announce = true,
            "--wrong-announcement" => wrong_announcement = true,
            "--exit-early" => {
                exit_early = rest
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .and_then(|v| v.parse::<i32>().ok());
            }
            "--slow-start" => slow_start = millis(rest.next(), "--slow-start"),
            "--grace" => grace = millis(rest.next(), "--grace"),
            other => fail(&format!("unknown flag {other}")),
        }
    }
    let pid = std::process::id();
    let note = |what: &str| {
        if let Some(log) = &log {
            let line = format!("{what} {pid}\n");
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(error) = appended {
                fail(&format!("writing {log:?}: {error}"));
            }
        }
    };
    note("start");

    if let Some(code) = exit_early {
        eprintln!("test worker: failing on purpose with exit code {code}");
        std::process::exit(code);
    }
    if never_announce {
        eprintln!("test worker: never announcing");
        std::future::pending::<()>().await;
    }
    if wrong_announcement {
        println!("UNIX:/somewhere/else.sock");
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(slow_start).await;

    let options: UnixServeOptions = worker
        .serve_options()
        .unwrap_or_else(|e| fail(&e.to_string()))
        .startup_grace(grace)
        .stop_on_signals(true);
    let router = tonic::transport::Server::builder().add_routes(Default::default());
    let server = serve_unix(router, options)
        .await
        .unwrap_or_else(|e| fail(&format!("serve_unix: {e}")));
    let reason = server.done().await;
    note("stop");
    if let Err(error) = reason {
        fail(&format!("server failed: {error}"));
    }
}

async fn launch_once(args: Vec<OsString>) {
    let mut args = args.into_iter();
    let mut state_dir = None;
    let mut startup = None;
    let mut connect = None;
    let mut idle = None;
    let mut stderr = None;
    let mut argv = Vec::new();
    while let Some(flag) = args.next() {
        match flag.to_str().unwrap_or_default() {
            "--state-dir" => state_dir = args.next().map(PathBuf::from),
            "--startup-timeout" => startup = Some(millis(args.next(), "--startup-timeout")),
            "--connect-timeout" => connect = Some(millis(args.next(), "--connect-timeout")),
            "--idle-timeout" => idle = Some(millis(args.next(), "--idle-timeout")),
            "--stderr" => stderr = args.next().map(PathBuf::from),
            "--" => {
                argv = args
                    .by_ref()
                    .map(|a| a.into_string().unwrap_or_else(|_| fail("non-UTF-8 argv")))
                    .collect();
            }
            other => fail(&format!("unknown flag {other}")),
        }
    }
    let mut config = LaunchConfig::new(argv);
    if let Some(dir) = state_dir {
        config = config.state_dir(dir);
    }
    if let Some(timeout) = startup {
        config = config.worker_startup_timeout(timeout);
    }
    if let Some(timeout) = connect {
        config = config.connect_timeout(timeout);
    }
    if let Some(timeout) = idle {
        config = config.idle_timeout(timeout);
    }
    if let Some(file) = stderr {
        config = config.worker_stderr(WorkerStderr::Append(file));
    }
    let line = match launch(&config).await {
        Ok(launched) => serde_json::json!({
            "socket": launched.socket,
            "spawned_pid": match launched.outcome {
                LaunchOutcome::Spawned { pid } => Some(pid),
                LaunchOutcome::Reused => None,
            },
        }),
        Err(error) => serde_json::json!({ "error": error.to_string() }),
    };
    println!("{line}");
    if line.get("error").is_some() {
        std::process::exit(1);
    }
}
