//! `shoal launcher ...` end to end: the binary, its demo worker, a temporary state directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use shoal_launcher::{compute_hash, hashed_env_of_process};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

fn shoal(cwd: &Path, args: &[&str]) -> Output {
    Command::new(SHOAL)
        .args(args)
        .current_dir(cwd)
        .env("XDG_RUNTIME_DIR", cwd.join("xdg"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "shoal failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Waits by pidfd until `pid` has exited.
fn wait_exit(pid: u32) {
    let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let Ok(fd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    let timeout = rustix::event::Timespec {
        tv_sec: 60,
        tv_nsec: 0,
    };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap(),
        1,
        "{pid} did not exit"
    );
}

fn kill(pid: u32, signal: rustix::process::Signal) {
    let _ =
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), signal);
}

#[test]
fn hash_prints_the_tuple_hash_and_socket_path() {
    let dir = tempfile::Builder::new()
        .prefix("sc")
        .tempdir_in("/tmp")
        .unwrap();
    let cwd = dir.path();
    let argv = ["python", "-m", "worker", "héllo"];
    let expected = compute_hash(
        &argv,
        cwd.to_str().unwrap(),
        hashed_env_of_process().unwrap(),
    );

    let mut args = vec!["launcher", "hash", "--"];
    args.extend(argv);
    let text = stdout(&shoal(cwd, &args));
    let socket = cwd.join(format!("xdg/vgi-rpc/{expected}.sock"));
    assert_eq!(text, format!("{expected}\n{}\n", socket.display()));

    // --cwd hashes for another directory; --json shows the payload.
    let mut args = vec![
        "launcher",
        "hash",
        "--json",
        "--cwd",
        "/",
        "--state-dir",
        "/s",
        "--",
    ];
    args.extend(argv);
    let json: serde_json::Value = serde_json::from_str(&stdout(&shoal(cwd, &args))).unwrap();
    let expected = compute_hash(&argv, "/", hashed_env_of_process().unwrap());
    assert_eq!(json["hash"], expected.as_str());
    assert_eq!(json["socket"], format!("/s/{expected}.sock"));
    assert!(
        json["payload"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"cmd":["python","-m","worker","héllo"],"cwd":"/","env":{"#)
    );
}

#[test]
fn launch_status_and_gc_with_the_demo_worker() {
    let dir = tempfile::Builder::new()
        .prefix("sc")
        .tempdir_in("/tmp")
        .unwrap();
    let cwd = dir.path();
    let state = cwd.join("state");
    let state = state.to_str().unwrap();
    let launch = |json: bool| {
        let mut args = vec![
            "launcher",
            "launch",
            "--state-dir",
            state,
            "--idle-timeout",
            "60",
        ];
        if json {
            args.push("--json");
        }
        args.extend([
            "--",
            SHOAL,
            "launcher",
            "demo-worker",
            "--startup-grace",
            "0",
        ]);
        stdout(&shoal(cwd, &args))
    };

    let first: serde_json::Value = serde_json::from_str(&launch(true)).unwrap();
    assert_eq!(first["outcome"], "spawned");
    let pid = first["pid"].as_u64().unwrap() as u32;
    let socket = first["socket"].as_str().unwrap().to_owned();
    assert_eq!(
        launch(false),
        format!("{socket}\n"),
        "the second launch reuses the worker"
    );

    let rows: serde_json::Value = serde_json::from_str(&stdout(&shoal(
        cwd,
        &["launcher", "status", "--json", "--state-dir", state],
    )))
    .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["alive"], true);
    assert_eq!(rows[0]["hash_id"], first["hash"]);
    assert_eq!(rows[0]["cmd"][1], "launcher");
    let table = stdout(&shoal(cwd, &["launcher", "status", "--state-dir", state]));
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("HASH"));
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(first["hash"].as_str().unwrap()) && row.contains(" yes "),
        "{table}"
    );

    // A live worker survives GC; a killed one is collected.
    let gc: serde_json::Value = serde_json::from_str(&stdout(&shoal(
        cwd,
        &["launcher", "gc", "--json", "--state-dir", state],
    )))
    .unwrap();
    assert_eq!(gc["alive"], serde_json::json!([first["hash"]]));
    kill(pid, rustix::process::Signal::KILL);
    wait_exit(pid);
    let gc: serde_json::Value = serde_json::from_str(&stdout(&shoal(
        cwd,
        &["launcher", "gc", "--json", "--state-dir", state],
    )))
    .unwrap();
    assert_eq!(gc["cleaned"], serde_json::json!([first["hash"]]));
    assert!(!Path::new(&socket).exists());
    let table = stdout(&shoal(cwd, &["launcher", "status", "--state-dir", state]));
    assert_eq!(table, format!("no workers in {state}\n"));
}

#[test]
fn the_demo_worker_idles_out_and_unlinks_its_socket() {
    let dir = tempfile::Builder::new()
        .prefix("sc")
        .tempdir_in("/tmp")
        .unwrap();
    let cwd = dir.path();
    let state = cwd.join("state");
    let args = [
        "launcher",
        "launch",
        "--json",
        "--state-dir",
        state.to_str().unwrap(),
        "--idle-timeout",
        "0.2",
        "--",
        SHOAL,
        "launcher",
        "demo-worker",
        "--startup-grace",
        "0",
    ];
    let launched: serde_json::Value = serde_json::from_str(&stdout(&shoal(cwd, &args))).unwrap();
    wait_exit(launched["pid"].as_u64().unwrap() as u32);
    assert!(!Path::new(launched["socket"].as_str().unwrap()).exists());
}

#[test]
fn failures_exit_1_with_an_actionable_message() {
    let dir = tempfile::Builder::new()
        .prefix("sc")
        .tempdir_in("/tmp")
        .unwrap();
    let output = shoal(
        dir.path(),
        &[
            "launcher",
            "launch",
            "--state-dir",
            "state",
            "--",
            "/nonexistent/worker",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("shoal: could not start worker `/nonexistent/worker`"),
        "{stderr}"
    );

    let output = shoal(dir.path(), &["launcher", "launch"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "usage error: CMD is required"
    );
}
