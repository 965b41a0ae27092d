//! Optional TLS and token authentication between runners.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use shoal_sharding::{CallError, CallOptions};
use shoal_socket::{SocketConfig, SocketRunner, TlsConfig};
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
            matches!(err, CallError::Unauthenticated { .. }),
            "token {token:?}: {err:?}"
        );
        stranger.shutdown().await;
    }
    client.shutdown().await;
    runner.shutdown().await;
}

struct Pki {
    _dir: tempfile::TempDir,
    tls: TlsConfig,
    other_ca: std::path::PathBuf,
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
    Pki {
        _dir: dir,
        tls,
        other_ca,
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
                err,
                CallError::RunnerUnavailable { .. } | CallError::Timeout { .. }
            ),
            "{err:?}"
        );
        stranger.shutdown().await;
    }
    client.shutdown().await;
    runner.shutdown().await;
}
