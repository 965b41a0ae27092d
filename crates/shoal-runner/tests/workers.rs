//! `shoal run` with worker entities (`[[entity]]` sections): the Python example worker served
//! through the HTTP gateway next to the built-in counter, restarted when it dies; and the errors
//! of sections or workers that cannot be served.
//!
//! Needs `python3` with the `venv` module, and PyPI: `examples/python/setup_venv.py` creates a
//! virtual environment under the cargo target directory once (shared with the `shoal-worker`
//! tests); later runs reuse it. Without Python the test fails, saying what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Runner, output, shoal, wait_for};
use rustix::process::Signal;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The python of a virtual environment with the worker example's requirements.
fn python() -> PathBuf {
    let script = repo().join("examples/python/setup_venv.py");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test runs the Python worker example and needs python3 (with its venv \
                 module) on PATH: running python3 failed: {e}"
            )
        });
    assert!(
        out.status.success(),
        "{} {} failed ({}): the Python worker example needs python3 with the venv module and \
         access to PyPI.\n{}",
        script.display(),
        venv.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("setup_venv.py prints the python"),
    )
}

/// A directory with a short path: the worker's socket lives in it.
fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sr")
        .tempdir_in("/tmp")
        .unwrap()
}

/// An `[[entity]]` section running the Python counter worker as `entity_type`, with its launcher
/// state and stderr in `dir`.
fn python_section(dir: &Path, entity_type: &str, implements: &str) -> String {
    format!(
        r#"
[[entity]]
type = "{entity_type}"
worker = ["{python}", "{script}", "--entity-type", "{implements}"]
state_dir = "{state}"
stderr = "{log}"
idle_timeout = "2s"
request_timeout = "10s"
"#,
        python = python().display(),
        script = repo().join("examples/python/counter_worker.py").display(),
        state = dir.join("state").display(),
        log = dir.join("worker.log").display(),
    )
}

/// `shoal run --config shoal.toml` on free ports and SQLite in `dir`.
fn run_with(dir: &Path, config: &str) -> Command {
    std::fs::write(dir.join("shoal.toml"), config).unwrap();
    let mut cmd = shoal(dir);
    cmd.args([
        "run",
        "--config",
        "shoal.toml",
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        "127.0.0.1:0",
        "--storage",
        "sqlite://shoal.db",
    ]);
    cmd
}

/// The pids of worker processes whose command line mentions `dir`.
fn workers_in(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("counter_worker.py") && cmdline.contains(&needle)).then_some(pid)
        })
        .collect()
}

/// `POST` with an `Idempotency-Key`.
fn post_once(runner: &Runner, path: &str, body: &str, key: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent
        .post(&format!("{}{path}", runner.gateway))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .send(body)
        .unwrap();
    (
        response.status().as_u16(),
        response.body_mut().read_to_string().unwrap(),
    )
}

#[test]
fn shoal_run_serves_a_python_worker_entity_through_the_gateway() {
    let dir = short_tempdir();
    let config = python_section(dir.path(), "py_counter", "py_counter");
    let mut runner = Runner::start(run_with(dir.path(), &config), dir.path().join("stderr.log"));
    runner.wait_ready();
    let worker = workers_in(dir.path());
    assert_eq!(worker.len(), 1, "one worker process: {worker:?}");

    // The worker's entity type, through the gateway, next to the built-in counter.
    let post = |path: &str, body: &str| runner.post(path, body);
    assert_eq!(
        post("/v1/entities/py_counter/a/increment", r#"{"by":2}"#),
        (200, "2".to_owned())
    );
    assert_eq!(
        post("/v1/entities/py_counter/a/increment", "{}"),
        (200, "3".to_owned())
    );
    assert_eq!(
        post("/v1/entities/py_counter/a/get", ""),
        (200, "3".to_owned())
    );
    assert_eq!(
        post("/v1/entities/counter/a/increment", r#"{"by":1}"#),
        (200, "1".to_owned())
    );
    // A tag the worker did not describe; a type nobody serves.
    assert_eq!(post("/v1/entities/py_counter/a/nope", "{}").0, 400);
    assert_eq!(post("/v1/entities/js_counter/a/get", "{}").0, 404);
    // The worker's own refusal reaches the caller.
    let (code, body) = post("/v1/entities/py_counter/a/increment", r#"{"by":"x"}"#);
    assert_eq!(code, 500, "{body}");
    assert!(body.contains(r#"\"by\" must be an integer"#), "{body}");

    // Persisted and deduplicated: a retry with the same key is answered, not applied again.
    let key = "incr-7f3a";
    assert_eq!(
        post_once(
            &runner,
            "/v1/entities/py_counter/b/increment",
            r#"{"by":5}"#,
            key
        ),
        (200, "5".to_owned())
    );
    assert_eq!(
        post_once(
            &runner,
            "/v1/entities/py_counter/b/increment",
            r#"{"by":5}"#,
            key
        ),
        (200, "5".to_owned())
    );
    assert_eq!(
        post("/v1/entities/py_counter/b/get", ""),
        (200, "5".to_owned())
    );

    // The worker dies: the runner starts it again, and the counts were in entity KV.
    common_kill(worker[0]);
    wait_for(Duration::from_secs(30), "the worker to be back", || {
        post("/v1/entities/py_counter/a/get", "") == (200, "3".to_owned())
    });
    let restarted = workers_in(dir.path());
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_ne!(restarted[0], worker[0]);
    assert_eq!(
        post("/v1/entities/py_counter/a/increment", "{}"),
        (200, "4".to_owned())
    );

    // SIGTERM: the runner stops cleanly; the worker, left to its idle timeout, exits after it.
    runner.signal(Signal::TERM);
    let status = runner.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", runner.logs());
    wait_for(Duration::from_secs(30), "the idle worker to exit", || {
        workers_in(dir.path()).is_empty()
    });
}

fn common_kill(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
}

/// Runs `shoal run` with `config`, which must fail; returns its stderr.
fn refused(dir: &Path, config: &str) -> String {
    let out = output(run_with(dir, config));
    assert!(
        !out.status.success(),
        "shoal run should have refused:\n{config}"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn shoal_run_refuses_worker_entities_it_cannot_serve() {
    let dir = short_tempdir();

    // Sections that do not parse name the section and the key.
    let stderr = refused(dir.path(), "[[entity]]\ntype = \"py_counter\"\n");
    assert!(
        stderr.contains("invalid setting worker in shoal.toml [[entity]] #1: missing"),
        "{stderr}"
    );
    let stderr = refused(
        dir.path(),
        "[[entity]]\ntype = \"counter\"\nworker = [\"w\"]\n",
    );
    assert!(
        stderr.contains("counter is a built-in entity type"),
        "{stderr}"
    );

    // A worker that cannot start.
    let stderr = refused(
        dir.path(),
        &format!(
            "[[entity]]\ntype = \"ghost\"\nworker = [\"/nonexistent/worker\"]\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    );
    assert!(
        stderr.contains("entity type ghost (shoal.toml [[entity]] #1): could not launch worker"),
        "{stderr}"
    );
    assert!(stderr.contains("/nonexistent/worker"), "{stderr}");

    // A worker that does not implement the configured type.
    let stderr = refused(
        dir.path(),
        &python_section(dir.path(), "js_counter", "py_counter"),
    );
    assert!(
        stderr.contains("does not implement it; it implements: py_counter"),
        "{stderr}"
    );
    for pid in workers_in(dir.path()) {
        common_kill(pid);
    }
}
