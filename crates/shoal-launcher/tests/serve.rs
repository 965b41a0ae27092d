//! `serve_unix`: the worker side of the contract, in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{PATIENCE, health};
use shoal_launcher::{
    Announce, ServeError, StopReason, UnixServeOptions, connect_unix, serve_unix,
};
use tonic::transport::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn router() -> tonic::transport::server::Router {
    Server::builder().add_routes(Default::default())
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ss")
        .tempdir_in("/tmp")
        .unwrap()
}

async fn reflected_services(socket: &std::path::Path) -> Vec<String> {
    let mut client = ServerReflectionClient::new(connect_unix(socket).await.unwrap());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test]
async fn announces_once_after_binding_0600_and_serves_health_and_reflection() {
    let dir = tempdir();
    let given = dir.path().join("sub/../w.sock");
    let expected = dir.path().join("w.sock");
    let announced = Captured::default();
    let seen_by_hook = Arc::new(Mutex::new(None));

    let options = UnixServeOptions::new(&given)
        .announce(Announce::Writer(Box::new(announced.clone())))
        .on_bound({
            let seen = seen_by_hook.clone();
            let announced = announced.clone();
            move |path| {
                let listening = std::os::unix::net::UnixStream::connect(path).is_ok();
                let before_announcement = announced.0.lock().unwrap().is_empty();
                *seen.lock().unwrap() = Some((path.to_path_buf(), listening, before_announcement));
            }
        });
    let server = serve_unix(router(), options).await.unwrap();

    assert_eq!(server.path(), expected);
    assert_eq!(
        String::from_utf8(announced.0.lock().unwrap().clone()).unwrap(),
        format!("UNIX:{}\n", expected.display())
    );
    assert_eq!(
        *seen_by_hook.lock().unwrap(),
        Some((expected.clone(), true, true)),
        "the hook runs once the socket listens, before the announcement"
    );
    let meta = std::fs::symlink_metadata(&expected).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    assert_eq!(health(&expected).await, ServingStatus::Serving);
    let services = reflected_services(&expected).await;
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.reflection.v1.ServerReflection".to_owned()),
        "{services:?}"
    );

    server.stop();
    let reason = tokio::time::timeout(PATIENCE, server.done())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, StopReason::Stopped);
    assert!(!expected.exists(), "the socket is unlinked on stop");
}

#[tokio::test]
async fn stops_after_the_idle_timeout_once_the_last_connection_closes() {
    let dir = tempdir();
    let socket = dir.path().join("w.sock");
    let options = UnixServeOptions::new(&socket)
        .announce(Announce::Silent)
        .startup_grace(Duration::ZERO)
        .idle_timeout(Some(Duration::from_millis(200)));
    let server = serve_unix(router(), options).await.unwrap();

    let channel = connect_unix(&socket).await.unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(server.open_connections(), 1);
    drop(client);

    let reason = tokio::time::timeout(PATIENCE, server.done())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, StopReason::IdleTimeout);
    assert!(!socket.exists());
}

#[tokio::test]
async fn refuses_a_regular_file_and_a_live_socket_but_replaces_a_stale_one() {
    let dir = tempdir();

    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"precious").unwrap();
    let error = serve_unix(
        router(),
        UnixServeOptions::new(&file).announce(Announce::Silent),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ServeError::NotASocket { .. }), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let error = serve_unix(
        router(),
        UnixServeOptions::new(&live).announce(Announce::Silent),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, ServeError::AlreadyServing { .. }),
        "{error}"
    );
    assert!(live.exists());

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let server = serve_unix(
        router(),
        UnixServeOptions::new(&stale).announce(Announce::Silent),
    )
    .await
    .unwrap();
    assert_eq!(health(&stale).await, ServingStatus::Serving);
    server.stop();
    server.done().await.unwrap();
}

#[tokio::test]
async fn stop_leaves_a_socket_that_replaced_ours_alone() {
    let dir = tempdir();
    let socket = dir.path().join("w.sock");
    let server = serve_unix(
        router(),
        UnixServeOptions::new(&socket).announce(Announce::Silent),
    )
    .await
    .unwrap();
    // Another worker took the path over (our file was removed and a new socket bound there).
    std::fs::remove_file(&socket).unwrap();
    let _successor = std::os::unix::net::UnixListener::bind(&socket).unwrap();

    server.stop();
    server.done().await.unwrap();
    assert!(
        socket.exists(),
        "the successor's socket must survive our stop"
    );
}
