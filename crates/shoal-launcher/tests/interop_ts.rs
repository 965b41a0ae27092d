//! Interop with the TypeScript launcher (`@query-farm/vgi-rpc` from npm, run by node).
//!
//! Needs `node` and `npm`; without them the tests FAIL with a message saying what is missing (they
//! are never skipped). The package is installed once into the target directory and reused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{PATIENCE, Sandbox, health};
use serde_json::json;
use shoal_launcher::{
    LaunchOutcome, StateDir, compute_hash, launch, socket_paths, state_dir_path_from, status_rows,
    try_acquire,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tonic_health::pb::health_check_response::ServingStatus;

const PACKAGE: &str = "@query-farm/vgi-rpc@0.25.4";

/// Computes hashes, socket paths and the default state dir with the TypeScript functions.
const HASH_SCRIPT: &str = r#"
import { readFileSync, writeFileSync } from "node:fs";
import * as vgi from "@query-farm/vgi-rpc";
const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const c of input.cases) {
  const hash = await vgi.launcherComputeHash(c.argv, c.cwd, c.env);
  results.push({ hash, paths: vgi.socketPaths(input.stateDir, hash) });
}
writeFileSync(input.out, JSON.stringify({ results, defaultStateDir: vgi.defaultStateDir() }));
"#;

/// `launch` with the TypeScript launcher from node's working directory.
const LAUNCH_SCRIPT: &str = r#"
import { readFileSync, writeFileSync } from "node:fs";
import * as vgi from "@query-farm/vgi-rpc";
const input = JSON.parse(readFileSync(0, "utf8"));
const socket = await vgi.launch({
  workerArgv: input.argv, stateDir: input.stateDir, idleTimeout: 60, workerStartupTimeout: 30,
});
const rows = await vgi.statusRows(input.stateDir);
writeFileSync(input.out, JSON.stringify({ socket, rows }));
// The TypeScript launcher keeps node alive as long as the worker runs; leave explicitly.
process.exit(0);
"#;

/// Takes the TypeScript (PID stamp) lock, reports, holds it until stdin closes, releases.
const LOCK_SCRIPT: &str = r#"
import * as vgi from "@query-farm/vgi-rpc";
const lockPath = process.argv[2];
const first = vgi.tryAcquireLock(lockPath);
console.log(first ? "ACQUIRED" : "HELD");
if (!first) process.exit(0);
process.stdin.resume();
process.stdin.on("end", () => { first.release(); console.log("RELEASED"); process.exit(0); });
"#;

/// Fails loudly when a tool is missing.
fn require(tool: &str) {
    match std::process::Command::new(tool).arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`{tool} --version` failed ({}): the TypeScript interop tests need node and npm",
            output.status
        ),
        Err(error) => panic!(
            "`{tool}` is not available ({error}): the TypeScript interop tests need node and npm \
             on PATH (for example `apt-get install nodejs npm`); they are never skipped"
        ),
    }
}

/// The directory holding `node_modules/@query-farm/vgi-rpc`, installing it on first use.
async fn package_dir() -> PathBuf {
    require("node");
    require("npm");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vgi-rpc-npm-0.25.4");
    std::fs::create_dir_all(&dir).unwrap();
    // Tests run as parallel processes: one installs, the others wait.
    let _lock = shoal_launcher::acquire(&dir.join("install.lock"), Duration::from_secs(600))
        .await
        .unwrap();
    let installed = dir.join("node_modules/@query-farm/vgi-rpc/package.json");
    if !installed.exists() {
        std::fs::write(
            dir.join("package.json"),
            r#"{"name":"shoal-launcher-interop","private":true,"type":"module"}"#,
        )
        .unwrap();
        let output = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                PACKAGE,
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "npm install {PACKAGE} failed (is the npm registry reachable?):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            installed.exists(),
            "npm install did not produce {installed:?}"
        );
    }
    for (name, script) in [
        ("hash.mjs", HASH_SCRIPT),
        ("launch.mjs", LAUNCH_SCRIPT),
        ("lock.mjs", LOCK_SCRIPT),
    ] {
        // Other test processes may be running node on these very files: never truncate one in
        // place (node would read an empty script and exit 0 with no output). A changed script is
        // written beside it and renamed over it, atomically.
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(script.as_bytes()) {
            let fresh = dir.join(format!("{name}.{}.tmp", std::process::id()));
            std::fs::write(&fresh, script).unwrap();
            std::fs::rename(&fresh, &path).unwrap();
        }
    }
    dir
}

/// Runs `node <script>` with `input` on stdin and returns the JSON it writes to the file named
/// by `input.out` (a file rather than stdout, so that nothing else node or a worker it spawns
/// prints can mix with the result).
async fn node_json(
    script: &Path,
    cwd: &Path,
    env: &[(&str, Option<&Path>)],
    mut input: serde_json::Value,
) -> serde_json::Value {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out.json");
    input["out"] = json!(out);
    let mut command = Command::new("node");
    command
        .arg(script)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("TMP")
        .env_remove("TEMP");
    for (key, value) in env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "node {script:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read(&out).unwrap_or_default();
    serde_json::from_slice(&written).unwrap_or_else(|error| {
        panic!(
            "node {script:?} wrote no JSON to {out:?} ({error}): {:?}\nstdout: {:?}\nstderr: {}",
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn typescript_hash_socket_paths_and_state_dir_agree_with_ours() {
    let dir = package_dir().await;
    let scratch = tempfile::tempdir().unwrap();
    let state_dir = "/tmp/vgi-rpc-test-state";
    let cases = json!([
        { "argv": ["python"], "cwd": "/tmp", "env": {} },
        { "argv": ["node", "/opt/w.mjs", "--flag=1"], "cwd": "/home/u/proj",
          "env": { "VGI_RPC_TOKEN": "x", "PATH": "/bin", "vgi_rpc_lower": "no" } },
        { "argv": ["python", "héllo"], "cwd": "/tmp/café", "env": { "VGI_RPC_NAME": "über" } },
        { "argv": ["x", "日本語", "🚀"], "cwd": "/tmp/日本", "env": { "VGI_RPC_E": "😀" } },
        { "argv": ["x", "\u{0}\u{1}\u{1f}", "\u{8}\u{c}", "del\u{7f}", "a\u{2028}b"], "cwd": "/", "env": {} },
        { "argv": ["echo", "a\"b\\c", "tab\there"], "cwd": "/tmp/has \"quotes\"",
          "env": { "VGI_RPC_FOO": "a\"b\\c\nd" } },
        { "argv": [], "cwd": "", "env": {} },
        { "argv": ["w"], "cwd": "/w",
          "env": { "VGI_RPC_Z": "z", "VGI_RPC_a": "1", "VGI_RPC__": "_", "VGI_RPC_": "" } },
    ]);
    let xdg = scratch.path().join("xdg");
    let output = node_json(
        &dir.join("hash.mjs"),
        scratch.path(),
        &[("XDG_RUNTIME_DIR", Some(&xdg))],
        json!({ "cases": cases, "stateDir": state_dir }),
    )
    .await;

    let results = output["results"].as_array().unwrap();
    assert_eq!(results.len(), cases.as_array().unwrap().len());
    for (case, ts) in cases.as_array().unwrap().iter().zip(results) {
        let argv: Vec<String> = serde_json::from_value(case["argv"].clone()).unwrap();
        let env: Vec<(String, String)> = case["env"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let ours = compute_hash(&argv, case["cwd"].as_str().unwrap(), env);
        assert_eq!(ours.as_str(), ts["hash"], "hash of {case}");
        let paths = socket_paths(Path::new(state_dir), &ours);
        assert_eq!(
            paths.socket.to_str().unwrap(),
            ts["paths"]["sockPath"],
            "{case}"
        );
        assert_eq!(
            paths.lock.to_str().unwrap(),
            ts["paths"]["lockPath"],
            "{case}"
        );
        assert_eq!(
            paths.meta.unwrap().to_str().unwrap(),
            ts["paths"]["metaPath"],
            "{case}"
        );
    }

    // Default state directory: XDG_RUNTIME_DIR first, else TMPDIR plus the euid.
    let euid = rustix::process::geteuid().as_raw();
    let ours = state_dir_path_from(Some(xdg.clone().into()), None, euid);
    assert_eq!(ours.to_str().unwrap(), output["defaultStateDir"]);
    let tmpdir = scratch.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let output = node_json(
        &dir.join("hash.mjs"),
        scratch.path(),
        &[("XDG_RUNTIME_DIR", None), ("TMPDIR", Some(&tmpdir))],
        json!({ "cases": [], "stateDir": state_dir }),
    )
    .await;
    let ours = state_dir_path_from(None, Some(tmpdir.clone().into()), euid);
    assert_eq!(ours.to_str().unwrap(), output["defaultStateDir"]);
    assert_eq!(ours, tmpdir.join(format!("vgi-rpc-{euid}")));
}

#[tokio::test]
async fn typescript_and_shoal_launchers_share_workers_both_ways() {
    let dir = package_dir().await;
    let sandbox = Sandbox::new();
    let state_dir = StateDir::open(&sandbox.state_dir).unwrap();

    // TypeScript spawns our Rust worker; Shoal reuses it.
    let argv = sandbox.worker_argv(&[]);
    let ts = node_json(
        &dir.join("launch.mjs"),
        &sandbox.cwd,
        &[],
        json!({ "argv": argv, "stateDir": sandbox.state_dir }),
    )
    .await;
    let started = sandbox.started();
    assert_eq!(started.len(), 1, "TypeScript spawned one worker");
    let launched = launch(&sandbox.config(&[])).await.unwrap();
    assert_eq!(launched.outcome, LaunchOutcome::Reused);
    assert_eq!(launched.socket.to_str().unwrap(), ts["socket"]);
    assert_eq!(health(&launched.socket).await, ServingStatus::Serving);
    let rows = status_rows(&state_dir, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].alive);
    assert_eq!(rows[0].cmd, argv, "we read the TypeScript .meta");

    // Shoal spawns; TypeScript reuses, and its status sees our slot (lock marker + .meta).
    let other = sandbox.config(&["--slow-start", "0"]);
    let ours = launch(&other).await.unwrap();
    let LaunchOutcome::Spawned { pid } = ours.outcome else {
        panic!("expected a spawn");
    };
    let ts = node_json(
        &dir.join("launch.mjs"),
        &sandbox.cwd,
        &[],
        json!({ "argv": other.worker_argv(), "stateDir": sandbox.state_dir }),
    )
    .await;
    assert_eq!(ts["socket"], ours.socket.to_str().unwrap());
    assert_eq!(sandbox.started(), vec![started[0], pid], "no second worker");
    let ts_row = ts["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["hashId"] == ours.hash.unwrap().as_str())
        .unwrap_or_else(|| panic!("TypeScript status misses our slot: {ts}"));
    assert_eq!(ts_row["alive"], true);
    assert_eq!(ts_row["cmd"], json!(other.worker_argv()));
}

#[tokio::test]
async fn typescript_pid_stamp_and_our_lock_exclude_each_other() {
    let dir = package_dir().await;
    let scratch = tempfile::tempdir().unwrap();
    let lock = scratch.path().join("0123456789abcdef.lock");

    // We hold it: the TypeScript launcher sees it held.
    let guard = try_acquire(&lock).unwrap().unwrap();
    let mut node = spawn_lock_script(&dir, &lock);
    assert_eq!(next_line(&mut node).await, "HELD");
    node.child.wait().await.unwrap();
    drop(guard);
    assert_eq!(
        std::fs::read(&lock).unwrap(),
        b"",
        "release clears our stamp"
    );

    // TypeScript holds it: we see it held until it releases.
    let mut node = spawn_lock_script(&dir, &lock);
    assert_eq!(next_line(&mut node).await, "ACQUIRED");
    assert!(try_acquire(&lock).unwrap().is_none());
    drop(node.child.stdin.take());
    assert_eq!(next_line(&mut node).await, "RELEASED");
    node.child.wait().await.unwrap();
    assert!(try_acquire(&lock).unwrap().is_some());
}

struct NodeProcess {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

fn spawn_lock_script(dir: &Path, lock: &Path) -> NodeProcess {
    let mut child = Command::new("node")
        .arg(dir.join("lock.mjs"))
        .arg(lock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    NodeProcess { child, lines }
}

async fn next_line(node: &mut NodeProcess) -> String {
    tokio::time::timeout(PATIENCE, node.lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default()
}
