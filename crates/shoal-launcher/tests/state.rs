//! The state directory rules, status and GC, with real sockets and lock holders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::Sandbox;
use shoal_launcher::{
    GcOptions, LaunchError, LaunchOutcome, Meta, StartedAt, StateDir, StateDirError, TupleHash,
    gc_state_dir, launch, status_rows, try_acquire,
};

const PROBE: Duration = Duration::from_secs(2);

fn hash(text: &str) -> TupleHash {
    text.parse().unwrap()
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("theirs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Needs root (the test machines run as root); a failure here is loud, never skipped.
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534))
        .expect("chown to uid 65534 needs root: run the tests as root");

    let error = StateDir::open(&dir).unwrap_err();
    assert!(
        matches!(error, StateDirError::NotOwned { owner: 65534, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("uid 65534"));
}

#[tokio::test]
async fn launch_refuses_a_foreign_state_dir() {
    let sandbox = Sandbox::new();
    std::fs::create_dir(&sandbox.state_dir).unwrap();
    std::os::unix::fs::chown(&sandbox.state_dir, Some(65534), None)
        .expect("chown to uid 65534 needs root: run the tests as root");
    let error = launch(&sandbox.config(&[])).await.unwrap_err();
    assert!(
        matches!(error, LaunchError::StateDir(StateDirError::NotOwned { .. })),
        "{error}"
    );
    assert!(sandbox.started().is_empty());
}

#[test]
fn a_group_or_world_writable_state_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    for mode in [0o777, 0o770, 0o702, 0o1777] {
        let dir = root.path().join(format!("d{mode:o}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let error = StateDir::open(&dir).unwrap_err();
        assert!(
            matches!(error, StateDirError::Writable { mode: m, .. } if m == mode),
            "{mode:o}: {error}"
        );
        // Not "fixed" behind the user's back: someone may have planted files there.
        let now = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(now, mode);
    }
}

#[test]
fn a_missing_state_dir_is_created_0700_and_a_readable_one_tightened() {
    let root = tempfile::tempdir().unwrap();
    let fresh = root.path().join("a/b/vgi-rpc-0");
    StateDir::open(&fresh).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);

    let loose = root.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    StateDir::open(&loose).unwrap();
    let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);

    let file = root.path().join("file");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        StateDir::open(&file),
        Err(StateDirError::NotADirectory { .. })
    ));
    assert_eq!(StateDir::existing(root.path().join("nope")).unwrap(), None);
}

/// A state directory path that is a symbolic link — even to a 0700 directory of ours — is
/// refused with a typed error naming the link; it is never followed (so nothing is created or
/// tightened through it), and the directory it points to still works when named directly.
#[tokio::test]
async fn a_symlinked_state_dir_is_refused() {
    let sandbox = Sandbox::new();
    let real = sandbox.root.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, &sandbox.state_dir).unwrap();
    let link = sandbox.state_dir.clone();

    let refused = |error: &StateDirError| {
        let message = error.to_string();
        assert!(
            matches!(error, StateDirError::Symlink { path, target: Some(target) }
                if *path == link && *target == real),
            "{error:?}"
        );
        assert!(message.contains("symbolic link"), "{message}");
        assert!(message.contains(link.to_str().unwrap()), "{message}");
        assert!(message.contains("remove the link"), "{message}");
    };
    refused(&StateDir::open(&link).unwrap_err());
    refused(&StateDir::existing(&link).unwrap_err());
    match launch(&sandbox.config(&[])).await.unwrap_err() {
        LaunchError::StateDir(error) => refused(&error),
        other => panic!("expected a state directory error, got {other}"),
    }
    assert!(sandbox.started().is_empty());
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);

    // A link to a directory that would need tightening: refused, and the target left alone.
    let loose = sandbox.root.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    let to_loose = sandbox.root.path().join("to-loose");
    std::os::unix::fs::symlink(&loose, &to_loose).unwrap();
    assert!(StateDir::open(&to_loose).is_err());
    let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);

    // A dangling link: refused the same way, nothing created at its target.
    let dangling = sandbox.root.path().join("dangling");
    std::os::unix::fs::symlink(sandbox.root.path().join("nowhere"), &dangling).unwrap();
    let error = StateDir::open(&dangling).unwrap_err();
    assert!(
        matches!(&error, StateDirError::Symlink { path, .. } if *path == dangling),
        "{error:?}"
    );
    assert!(matches!(
        StateDir::existing(&dangling),
        Err(StateDirError::Symlink { .. })
    ));
    assert!(!sandbox.root.path().join("nowhere").exists());

    // The real directory, named directly, is fine.
    assert_eq!(StateDir::open(&real).unwrap().path(), real);
}

/// The files the launcher reads and writes by path inside the state directory are not followed
/// through symbolic links: the metadata's temporary file, the metadata a status reads, the
/// lock's PID stamp.
#[test]
fn slot_files_are_not_followed_through_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let state_dir = StateDir::open(root.path().join("state")).unwrap();
    let paths = state_dir.paths(&hash("13ddf92fa852a381"));
    let meta_path = paths.meta.clone().unwrap();
    let victim = root.path().join("victim");
    std::fs::write(&victim, br#"{"cmd":["planted"],"launcher_pid":1}"#).unwrap();

    // Writing the metadata does not write through a link planted at its temporary name.
    let mut tmp = meta_path.clone();
    tmp.set_extension(format!("meta.tmp{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    let meta = Meta {
        cmd: vec!["worker".to_owned()],
        cwd: "/w".to_owned(),
        socket: paths.socket.to_string_lossy().into_owned(),
        started_at: StartedAt::now(),
        launcher_pid: 1,
    };
    let error = meta.write(&meta_path).unwrap_err();
    assert!(error.to_string().contains("symbolic link"), "{error}");
    assert!(
        std::fs::symlink_metadata(&tmp).is_err(),
        "the planted link is removed"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        br#"{"cmd":["planted"],"launcher_pid":1}"#
    );
    // With the link gone, the next write works.
    meta.write(&meta_path).unwrap();
    assert_eq!(
        shoal_launcher::MetaFields::read(&meta_path).cmd,
        ["worker".to_owned()]
    );

    // Reading: a metadata file that is a link reads as empty.
    let _ = std::fs::remove_file(&meta_path);
    std::os::unix::fs::symlink(&victim, &meta_path).unwrap();
    assert_eq!(
        shoal_launcher::MetaFields::read(&meta_path).cmd,
        Vec::<String>::new()
    );

    // A lock file that is a link to a file stamped with a live PID is not read as held.
    let stamped = root.path().join("stamped");
    std::fs::write(&stamped, std::process::id().to_string()).unwrap();
    std::os::unix::fs::symlink(&stamped, &paths.lock).unwrap();
    assert_eq!(shoal_launcher::read_stamp_at(&paths.lock), None);
    // Nor locked through.
    assert!(try_acquire(&paths.lock).is_err());
    assert_eq!(
        std::fs::read_to_string(&stamped).unwrap(),
        std::process::id().to_string()
    );
}

fn write_meta(state_dir: &StateDir, hash: &TupleHash, cmd: &str) {
    let paths = state_dir.paths(hash);
    Meta {
        cmd: vec![cmd.to_owned()],
        cwd: "/w".to_owned(),
        socket: paths.socket.to_string_lossy().into_owned(),
        started_at: StartedAt::now(),
        launcher_pid: 1,
    }
    .write(&paths.meta.unwrap())
    .unwrap();
}

/// A socket file nobody listens on (what a SIGKILLed worker leaves).
fn stale_socket(path: &std::path::Path) {
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
}

#[tokio::test]
async fn status_lists_slots_and_gc_removes_only_dead_unlocked_ones() {
    let sandbox = Sandbox::new();
    let launched = launch(&sandbox.config(&[])).await.unwrap();
    assert!(matches!(launched.outcome, LaunchOutcome::Spawned { .. }));
    let live = launched.hash.unwrap();
    let state_dir = StateDir::open(&sandbox.state_dir).unwrap();

    // Dead, Shoal/TypeScript style: meta, empty lock, stale socket.
    let dead = hash("aaaa000000000000");
    write_meta(&state_dir, &dead, "dead-worker");
    std::fs::write(state_dir.paths(&dead).lock, b"").unwrap();
    stale_socket(&state_dir.paths(&dead).socket);
    // Dead, Python style: only a meta file (filelock deleted the lock).
    let meta_only = hash("cccc000000000000");
    write_meta(&state_dir, &meta_only, "py-worker");
    // In use by a TypeScript launcher: a live PID stamp.
    let stamped = hash("bbbb000000000000");
    let mut foreign = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(state_dir.paths(&stamped).lock, foreign.id().to_string()).unwrap();
    // In use by a flock holder (a Shoal, Python or C++ launcher mid-launch).
    let flocked = hash("dddd000000000000");
    let held = try_acquire(&state_dir.paths(&flocked).lock)
        .unwrap()
        .unwrap();
    // An explicit socket's lock inside the state dir is not a slot.
    let explicit_lock = sandbox.state_dir.join("mine.sock.lock");
    std::fs::write(&explicit_lock, b"").unwrap();

    let rows = status_rows(&state_dir, PROBE).await.unwrap();
    let summary: Vec<(String, bool, Vec<String>)> = rows
        .iter()
        .map(|r| (r.hash.to_string(), r.alive, r.cmd.clone()))
        .collect();
    let mut expected = vec![
        (
            "aaaa000000000000".to_owned(),
            false,
            vec!["dead-worker".to_owned()],
        ),
        ("bbbb000000000000".to_owned(), false, vec![]),
        (
            "cccc000000000000".to_owned(),
            false,
            vec!["py-worker".to_owned()],
        ),
        ("dddd000000000000".to_owned(), false, vec![]),
        (live.to_string(), true, sandbox.worker_argv(&[])),
    ];
    expected.sort();
    assert_eq!(summary, expected);
    // Status is read-only: it created no lock file for the meta-only slot.
    assert!(!state_dir.paths(&meta_only).lock.exists());

    let report = gc_state_dir(&state_dir, &GcOptions::default())
        .await
        .unwrap();
    assert_eq!(report.cleaned, vec![dead, meta_only]);
    assert_eq!(report.skipped_in_use, vec![stamped, flocked]);
    assert_eq!(report.alive, vec![live]);

    for gone in [dead, meta_only] {
        let paths = state_dir.paths(&gone);
        assert!(!paths.socket.exists() && !paths.lock.exists() && !paths.meta.unwrap().exists());
    }
    assert!(state_dir.paths(&stamped).lock.exists());
    assert!(state_dir.paths(&flocked).lock.exists());
    assert!(launched.socket.exists());
    assert!(state_dir.paths(&live).meta.unwrap().exists());
    assert!(explicit_lock.exists());

    // The GC limit bounds the work; an excluded slot is left alone.
    drop(held);
    foreign.kill().unwrap();
    foreign.wait().unwrap();
    let options = GcOptions {
        limit: 1,
        exclude: Some(live),
        ..GcOptions::default()
    };
    let report = gc_state_dir(&state_dir, &options).await.unwrap();
    assert_eq!(report.cleaned, vec![stamped], "a dead PID stamp is stale");
    assert!(report.alive.is_empty() && report.skipped_in_use.is_empty());
    let report = gc_state_dir(&state_dir, &GcOptions::default())
        .await
        .unwrap();
    assert_eq!(report.cleaned, vec![flocked]);
    assert_eq!(report.alive, vec![live]);
}

#[tokio::test]
async fn a_launch_collects_dead_slots_after_spawning() {
    let sandbox = Sandbox::new();
    let state_dir = StateDir::open(&sandbox.state_dir).unwrap();
    let dead = hash("aaaa000000000000");
    write_meta(&state_dir, &dead, "dead-worker");
    stale_socket(&state_dir.paths(&dead).socket);

    launch(&sandbox.config(&[])).await.unwrap();
    let rows = status_rows(&state_dir, PROBE).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].alive);
}
