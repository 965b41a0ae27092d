//! Optional TLS and token authentication between runners.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use shoal_protocol::proto::runner::v1 as pb;
use shoal_sharding::{CallErrorKind, CallOptions};
use shoal_socket::{ServeOptions, SocketConfig, SocketError, SocketRunner, TlsConfig};
use shoal_storage::{MemoryRunnerStorage, RunnerStorage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured() {
    let secured = SocketConfig {
        auth_token: Some("s3cret-token".to_owned()),
        ..SocketConfig::default()
    };
    let (runner, client, storage) = one_runner(secured).await;
    let counters = client.sharding().client::<Counter>();
    assert_eq!(
        counters
            .call(
                "t",
                Increment {
                    by: 1,
                    pad: String::new()
                }
            )
            .await
            .unwrap(),
        1
    );

    for token in [None, Some("wrong".to_owned())] {
        let stranger = SocketRunner::client_only(
            fast_config().build().unwrap(),
            SocketConfig {
                auth_token: token.clone(),
                ..SocketConfig::default()
            },
            storage.clone(),
        )
        .await
        .unwrap();
        let err = stranger
            .sharding()
            .client::<Counter>()
            .call_with("t", WhoAmI, CallOptions::timeout(Duration::from_secs(2)))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), CallErrorKind::Unauthenticated),
            "token {token:?}: {err:?}"
        );
        stranger.shutdown().await;
    }
    client.shutdown().await;
    runner.shutdown().await;
}

struct Pki {
    _dir: tempfile::TempDir,
    /// A runner's material: a certificate signed by the cluster CA, and that CA.
    tls: TlsConfig,
    /// Another CA (that signed nothing of the cluster).
    other_ca: std::path::PathBuf,
    /// A stranger's material: trusts the cluster CA, but its certificate is signed by the
    /// other CA.
    stranger: TlsConfig,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = other_params.self_signed(&other_key).unwrap();
    let other_issuer = rcgen::Issuer::new(other_params, other_key);
    let stranger_key = KeyPair::generate().unwrap();
    let stranger_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&stranger_key, &other_issuer)
        .unwrap();

    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let tls = TlsConfig {
        cert: write("runner.pem", cert.pem()),
        key: write("runner.key", key.serialize_pem()),
        ca: write("ca.pem", ca.pem()),
        domain: Some("localhost".to_owned()),
    };
    let other_ca = write("other-ca.pem", other.pem());
    let stranger = TlsConfig {
        cert: write("stranger.pem", stranger_cert.pem()),
        key: write("stranger.key", stranger_key.serialize_pem()),
        ..tls.clone()
    };
    Pki {
        _dir: dir,
        tls,
        other_ca,
        stranger,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_between_runners() {
    let pki = pki();
    let socket = SocketConfig {
        tls: Some(pki.tls.clone()),
        ..SocketConfig::default()
    };
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let runner = RunnerProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        storage.clone(),
        fast_config().build().unwrap(),
        socket.clone(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "shards held", || {
        runner.active_shards() == 60
    })
    .await;

    let client = SocketRunner::client_only(fast_config().build().unwrap(), socket, storage.clone())
        .await
        .unwrap();
    let counters = client.sharding().client::<Counter>();
    assert_eq!(
        counters
            .call(
                "tls",
                Increment {
                    by: 4,
                    pad: String::new()
                }
            )
            .await
            .unwrap(),
        4
    );

    // A caller that does not trust the runner's CA, or speaks plain text, cannot reach it.
    for config in [
        SocketConfig {
            tls: Some(TlsConfig {
                ca: pki.other_ca.clone(),
                ..pki.tls.clone()
            }),
            ..SocketConfig::default()
        },
        SocketConfig::default(),
    ] {
        let stranger =
            SocketRunner::client_only(fast_config().build().unwrap(), config, storage.clone())
                .await
                .unwrap();
        let err = stranger
            .sharding()
            .client::<Counter>()
            .call_with(
                "tls",
                WhoAmI,
                CallOptions::timeout(Duration::from_millis(800)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                CallErrorKind::RunnerUnavailable { .. } | CallErrorKind::Timeout { .. }
            ),
            "{err:?}"
        );
        stranger.shutdown().await;
    }
    client.shutdown().await;
    runner.shutdown().await;
}

/// A runner on 127.0.0.1 with TLS, holding every shard.
async fn tls_runner(tls: &TlsConfig, storage: Arc<dyn RunnerStorage>) -> RunnerProcess {
    let runner = RunnerProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        storage,
        fast_config().build().unwrap(),
        SocketConfig {
            tls: Some(tls.clone()),
            ..SocketConfig::default()
        },
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "shards held", || {
        runner.active_shards() == 60
    })
    .await;
    runner
}

/// Pings `address` over TLS trusting `ca`, presenting `identity` (cert, key) if given.
async fn raw_tls_ping(
    address: &str,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<(), String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let port = address.rsplit_once(':').unwrap().1;
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = pb::runner_service_client::RunnerServiceClient::new(channel);
    tokio::time::timeout(Duration::from_secs(2), client.ping(pb::PingRequest {}))
        .await
        .map_err(|_| "ping timed out".to_owned())?
        .map(|_| ())
        .map_err(|status| format!("ping: {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_requires_a_client_certificate_signed_by_the_ca() {
    let pki = pki();
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let runner = tls_runner(&pki.tls, storage.clone()).await;

    // A caller with the cluster's own material gets through.
    raw_tls_ping(
        &runner.address,
        &pki.tls.ca,
        Some((&pki.tls.cert, &pki.tls.key)),
    )
    .await
    .unwrap();

    // A caller that trusts the runner but presents no certificate is refused.
    let anonymous = raw_tls_ping(&runner.address, &pki.tls.ca, None).await;
    assert!(anonymous.is_err(), "a caller without a certificate got in");

    // A caller whose certificate another CA signed is refused.
    let stranger = raw_tls_ping(
        &runner.address,
        &pki.tls.ca,
        Some((&pki.stranger.cert, &pki.stranger.key)),
    )
    .await;
    assert!(
        stranger.is_err(),
        "a caller with a foreign certificate got in"
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_with_a_foreign_certificate_is_refused() {
    let pki = pki();
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let runner = tls_runner(&pki.tls, storage.clone()).await;
    let stranger = SocketRunner::client_only(
        fast_config().build().unwrap(),
        SocketConfig {
            tls: Some(pki.stranger.clone()),
            ..SocketConfig::default()
        },
        storage.clone(),
    )
    .await
    .unwrap();
    let err = stranger
        .sharding()
        .client::<Counter>()
        .call_with(
            "mtls",
            WhoAmI,
            CallOptions::timeout(Duration::from_millis(800)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            CallErrorKind::RunnerUnavailable { .. } | CallErrorKind::Timeout { .. }
        ),
        "{err:?}"
    );
    stranger.shutdown().await;
    runner.shutdown().await;
}

/// Starts a runner listening on `listen` (advertised as 127.0.0.1).
async fn serve_on(listen: &str, socket: SocketConfig) -> Result<SocketRunner, SocketError> {
    SocketRunner::serve(
        ServeOptions {
            listen: listen.parse().unwrap(),
            advertise_host: Some("127.0.0.1".to_owned()),
            advertise_port: None,
            sharding: fast_config().build().unwrap(),
            socket,
        },
        Arc::new(MemoryRunnerStorage::new()),
        |builder| builder.entity(definition()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_other_hosts_can_reach_needs_a_token_or_mutual_tls() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let error = match serve_on(listen, SocketConfig::default()).await {
            Ok(runner) => {
                runner.shutdown().await;
                panic!("{listen}: a runner open to every host started without authentication");
            }
            Err(error) => error,
        };
        assert!(
            matches!(error, SocketError::InsecureTransport { .. }),
            "{listen}: {error:?}"
        );
        let text = error.to_string();
        for hint in ["runner_token", "tls", "insecure_transport = true"] {
            assert!(text.contains(hint), "{listen}: {hint} not in {text:?}");
        }
    }
    // A token, mutual TLS, or the explicit setting lets it start.
    let pki = pki();
    for socket in [
        SocketConfig {
            auth_token: Some("s3cret-token".to_owned()),
            ..SocketConfig::default()
        },
        SocketConfig {
            tls: Some(pki.tls.clone()),
            ..SocketConfig::default()
        },
        SocketConfig {
            insecure_transport: true,
            ..SocketConfig::default()
        },
    ] {
        serve_on("0.0.0.0:0", socket.clone())
            .await
            .unwrap_or_else(|e| panic!("{socket:?}: {e}"))
            .shutdown()
            .await;
    }
    // Loopback addresses only this machine reaches need nothing.
    for listen in ["127.0.0.1:0", "127.0.0.2:0", "localhost:0"] {
        serve_on(listen, SocketConfig::default())
            .await
            .unwrap_or_else(|e| panic!("{listen}: {e}"))
            .shutdown()
            .await;
    }
}
