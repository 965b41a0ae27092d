//! Unix socket files: created with mode 0600, a stale file replaced, a live one or a non-socket
//! refused, the file removed on shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use shoal_socket::{Bound, ListenAddress, ServeOptions, SocketConfig, SocketError, SocketRunner};
use shoal_storage::MemoryRunnerStorage;

async fn serve_at(path: &std::path::Path) -> Result<SocketRunner, SocketError> {
    SocketRunner::serve(
        ServeOptions {
            listen: ListenAddress::Unix(path.to_path_buf()),
            advertise_host: None,
            advertise_port: None,
            sharding: fast_config().build().unwrap(),
            socket: SocketConfig::default(),
        },
        Arc::new(MemoryRunnerStorage::new()),
        |builder| builder.entity(definition()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_file_is_private_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runner.sock");
    let runner = serve_at(&path).await.unwrap();
    assert_eq!(runner.bound(), Some(&Bound::Unix(path.clone())));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert_eq!(
        runner.sharding().runner_address().unwrap().to_string(),
        format!("unix:{}", path.display())
    );
    runner.shutdown().await;
    assert!(!path.exists(), "the socket file outlived the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runner.sock");
    let first = serve_at(&path).await.unwrap();
    let second = serve_at(&path).await;
    assert!(
        matches!(&second, Err(SocketError::SocketInUse(p)) if *p == path),
        "{second:?}"
    );
    // The first server still owns and serves its socket.
    assert!(path.exists());
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runner.sock");
    // A socket file nobody listens on any more (its process died).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let runner = serve_at(&path).await.unwrap();
    // The new server answers on the path.
    tokio::net::UnixStream::connect(&path).await.unwrap();
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runner.sock");
    std::fs::write(&path, b"important").unwrap();
    let result = serve_at(&path).await;
    assert!(
        matches!(&result, Err(SocketError::NotASocket(p)) if *p == path),
        "{result:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"important");
}
