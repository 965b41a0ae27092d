//! `launch` with real worker processes (the helper binary), in temporary state directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::FileTypeExt;
use std::process::Stdio;
use std::time::Duration;

use common::{HELPER, PATIENCE, Sandbox, health, signal, wait_exit};
use rustix::process::Signal;
use shoal_launcher::{
    LaunchError, LaunchOutcome, LockError, StateDir, WorkerStderr, compute_hash,
    hashed_env_of_process, launch, pid_alive, socket_paths, try_acquire,
};
use tonic_health::pb::health_check_response::ServingStatus;

/// Runs `n` helper processes that each call `launch` once, all at the same time, from the
/// sandbox's working directory. Returns their JSON outputs.
async fn launch_from_processes(sandbox: &Sandbox, n: usize) -> Vec<serde_json::Value> {
    let mut children = Vec::new();
    for _ in 0..n {
        let mut command = tokio::process::Command::new(HELPER);
        command
            .arg("launch")
            .arg("--state-dir")
            .arg(&sandbox.state_dir)
            .arg("--idle-timeout")
            .arg("60000")
            .arg("--")
            .args(sandbox.worker_argv(&[]))
            .current_dir(&sandbox.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        children.push(command.spawn().unwrap());
    }
    let mut outputs = Vec::new();
    for child in children {
        let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "launch failed: {text}");
        outputs.push(serde_json::from_str(text.trim()).unwrap());
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_launch_processes_share_one_worker() {
    let sandbox = Sandbox::new();

    let first = launch_from_processes(&sandbox, 16).await;
    let socket = first[0]["socket"].as_str().unwrap().to_owned();
    assert!(first.iter().all(|o| o["socket"] == socket.as_str()));
    let spawned: Vec<u64> = first
        .iter()
        .filter_map(|o| o["spawned_pid"].as_u64())
        .collect();
    assert_eq!(spawned.len(), 1, "exactly one process spawns: {first:?}");
    assert_eq!(sandbox.started(), vec![spawned[0] as u32]);

    // The socket is where every vgi-rpc launcher would look for this tuple from this cwd.
    let hash = compute_hash(
        &sandbox.worker_argv(&[]),
        sandbox.cwd.to_str().unwrap(),
        hashed_env_of_process().unwrap(),
    );
    let state_dir = StateDir::open(&sandbox.state_dir).unwrap();
    assert_eq!(
        socket_paths(state_dir.path(), &hash).socket.to_str(),
        Some(socket.as_str())
    );
    assert_eq!(health(socket.as_ref()).await, ServingStatus::Serving);

    // A second round reuses the worker.
    let second = launch_from_processes(&sandbox, 16).await;
    assert!(second.iter().all(|o| o["socket"] == socket.as_str()));
    assert!(
        second.iter().all(|o| o["spawned_pid"].is_null()),
        "{second:?}"
    );
    assert_eq!(sandbox.started().len(), 1);

    // The metadata names the tuple; the lock file stays as an empty slot marker.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.paths(&hash).meta.unwrap()).unwrap())
            .unwrap();
    assert_eq!(meta["cmd"], serde_json::json!(sandbox.worker_argv(&[])));
    assert_eq!(meta["cwd"], sandbox.cwd.to_str().unwrap());
    assert_eq!(meta["socket"], socket.as_str());
    assert_eq!(std::fs::read(state_dir.paths(&hash).lock).unwrap(), b"");

    signal(spawned[0] as u32, Signal::TERM);
    wait_exit(spawned[0] as u32).await;
    assert!(!std::path::Path::new(&socket).exists());
}

#[tokio::test]
async fn worker_exits_after_its_idle_timeout_and_unlinks_its_socket() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&[]).idle_timeout(Duration::from_millis(300));
    let launched = launch(&config).await.unwrap();
    let LaunchOutcome::Spawned { pid } = launched.outcome else {
        panic!("expected a spawn, got {launched:?}");
    };
    assert_eq!(health(&launched.socket).await, ServingStatus::Serving);

    wait_exit(pid).await;
    assert!(!launched.socket.exists());
    assert_eq!(sandbox.stopped(), vec![pid]);
}

#[tokio::test]
async fn a_stale_socket_is_cleaned_and_a_new_worker_spawned() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&[]);
    let first = launch(&config).await.unwrap();
    let LaunchOutcome::Spawned { pid: first_pid } = first.outcome else {
        panic!("expected a spawn");
    };
    signal(first_pid, Signal::KILL);
    wait_exit(first_pid).await;
    let kind = std::fs::symlink_metadata(&first.socket)
        .unwrap()
        .file_type();
    assert!(kind.is_socket(), "SIGKILL leaves the socket file behind");

    let second = launch(&config).await.unwrap();
    let LaunchOutcome::Spawned { pid: second_pid } = second.outcome else {
        panic!("expected a new spawn, got {second:?}");
    };
    assert_ne!(first_pid, second_pid);
    assert_eq!(second.socket, first.socket);
    assert_eq!(health(&second.socket).await, ServingStatus::Serving);
    assert_eq!(
        launch(&config).await.unwrap().outcome,
        LaunchOutcome::Reused
    );
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_refused_and_kept() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&[]);
    let state_dir = StateDir::open(&sandbox.state_dir).unwrap();
    let hash = compute_hash(
        &sandbox.worker_argv(&[]),
        sandbox.cwd.to_str().unwrap(),
        hashed_env_of_process().unwrap(),
    );
    let socket = state_dir.paths(&hash).socket;
    std::fs::write(&socket, b"precious").unwrap();

    let error = launch(&config).await.unwrap_err();
    assert!(
        matches!(&error, LaunchError::NotASocket { path } if *path == socket),
        "{error}"
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"precious");
    assert!(sandbox.started().is_empty());

    // Same rule for an explicit socket path.
    let explicit = sandbox.root.path().join("explicit.sock");
    std::fs::write(&explicit, b"precious").unwrap();
    let error = launch(&sandbox.config(&[]).socket_path(&explicit))
        .await
        .unwrap_err();
    assert!(matches!(error, LaunchError::NotASocket { .. }), "{error}");
    assert_eq!(std::fs::read(&explicit).unwrap(), b"precious");
}

#[tokio::test]
async fn a_worker_that_never_announces_is_killed_after_the_startup_timeout() {
    let sandbox = Sandbox::new();
    let config = sandbox
        .config(&["--never-announce"])
        .worker_startup_timeout(Duration::from_millis(500));
    let error = launch(&config).await.unwrap_err();
    assert!(
        matches!(error, LaunchError::StartupTimeout { timeout, .. } if timeout == Duration::from_millis(500)),
        "{error}"
    );
    let started = sandbox.started();
    assert_eq!(started.len(), 1);
    // Killed and reaped: no such process (not even a zombie) remains.
    assert!(!pid_alive(started[0]));
    // Nothing half-done is left: the lock is free and there is no metadata.
    let state_dir = StateDir::open(&sandbox.state_dir).unwrap();
    let hash = compute_hash(
        config.worker_argv(),
        sandbox.cwd.to_str().unwrap(),
        hashed_env_of_process().unwrap(),
    );
    let paths = state_dir.paths(&hash);
    assert!(try_acquire(&paths.lock).unwrap().is_some());
    assert!(!paths.meta.unwrap().exists());
}

#[tokio::test]
async fn a_wrong_announcement_is_refused_and_the_worker_killed() {
    let sandbox = Sandbox::new();
    let error = launch(&sandbox.config(&["--wrong-announcement"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LaunchError::UnexpectedAnnouncement { line, .. } if line == "UNIX:/somewhere/else.sock"),
        "{error}"
    );
    assert!(!pid_alive(sandbox.started()[0]));
}

#[tokio::test]
async fn a_missing_executable_is_a_typed_error() {
    let sandbox = Sandbox::new();
    let config = shoal_launcher::LaunchConfig::new(["/nonexistent/shoal-worker"])
        .state_dir(&sandbox.state_dir)
        .cwd(&sandbox.cwd);
    let error = launch(&config).await.unwrap_err();
    match &error {
        LaunchError::Spawn { program, source } => {
            assert_eq!(program, "/nonexistent/shoal-worker");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other}"),
    }
    assert!(error.to_string().contains("not found"), "{error}");
}

#[tokio::test]
async fn a_worker_exiting_early_reports_its_status_and_stderr() {
    let sandbox = Sandbox::new();
    let stderr = sandbox.root.path().join("worker.err");
    std::fs::write(&stderr, "an older line\n").unwrap();
    let config = sandbox
        .config(&["--exit-early", "3"])
        .worker_stderr(WorkerStderr::Append(stderr.clone()));
    let error = launch(&config).await.unwrap_err();
    match &error {
        LaunchError::WorkerExited {
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(status.code(), Some(3));
            let tail = stderr_tail.as_deref().unwrap();
            assert!(
                tail.contains("failing on purpose with exit code 3"),
                "{tail}"
            );
            assert!(
                !tail.contains("an older line"),
                "only this launch's output: {tail}"
            );
        }
        other => panic!("expected WorkerExited, got {other}"),
    }
    // Appended, not truncated.
    assert!(
        std::fs::read_to_string(&stderr)
            .unwrap()
            .starts_with("an older line\n")
    );

    // Without a stderr file the error says where the output went.
    let error = launch(&sandbox.config(&["--exit-early", "4"]))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("discarded"), "{error}");
}

#[tokio::test]
async fn a_lock_stamped_with_a_live_foreign_pid_blocks_launch_until_released() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&[]);
    let state_dir = StateDir::open(&sandbox.state_dir).unwrap();
    let hash = compute_hash(
        config.worker_argv(),
        sandbox.cwd.to_str().unwrap(),
        hashed_env_of_process().unwrap(),
    );
    let lock = state_dir.paths(&hash).lock;

    // A TypeScript launcher holds the slot: its PID (a live process) is in the lock file.
    let mut foreign = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(&lock, foreign.id().to_string()).unwrap();

    let error = launch(&config.clone().connect_timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LaunchError::Lock(LockError::Timeout { holder: Some(pid), .. }) if pid == foreign.id()),
        "{error}"
    );
    assert!(sandbox.started().is_empty());

    // Blocked until the stamp is cleared (the TypeScript release truncates the file).
    let waiting = tokio::spawn({
        let config = config.clone();
        async move { launch(&config).await }
    });
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_len(0)
        .unwrap();
    let launched = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(launched.outcome, LaunchOutcome::Spawned { .. }));

    // A stamp naming a dead process is stale and ignored.
    foreign.kill().unwrap();
    foreign.wait().unwrap();
    std::fs::write(&lock, foreign.id().to_string()).unwrap();
    assert_eq!(
        launch(&config).await.unwrap().outcome,
        LaunchOutcome::Reused
    );
}

#[tokio::test]
async fn explicit_socket_paths_use_a_sibling_lock_and_no_metadata() {
    let sandbox = Sandbox::new();
    let socket = sandbox.root.path().join("sub/../w.sock");
    let config = sandbox.config(&[]).socket_path(&socket);
    let launched = launch(&config).await.unwrap();
    let expected = sandbox.root.path().join("w.sock");
    assert_eq!(launched.socket, expected);
    assert_eq!(launched.hash, None);
    assert!(sandbox.root.path().join("w.sock.lock").exists());
    assert!(
        !sandbox.state_dir.exists(),
        "no state directory is involved"
    );
    assert_eq!(health(&launched.socket).await, ServingStatus::Serving);
    assert_eq!(
        launch(&config).await.unwrap().outcome,
        LaunchOutcome::Reused
    );
}

#[tokio::test]
async fn a_worker_outlives_the_process_that_launched_it() {
    let sandbox = Sandbox::new();
    let outputs = launch_from_processes(&sandbox, 1).await;
    let pid = outputs[0]["spawned_pid"].as_u64().unwrap() as u32;
    // The launcher process has exited (its output was read to the end and it was reaped).
    assert!(pid_alive(pid));
    let socket = outputs[0]["socket"].as_str().unwrap();
    assert_eq!(health(socket.as_ref()).await, ServingStatus::Serving);
    // It runs in its own process group.
    let pgid = rustix::process::getpgid(rustix::process::Pid::from_raw(pid as i32)).unwrap();
    assert_eq!(pgid.as_raw_pid(), pid as i32);
}
