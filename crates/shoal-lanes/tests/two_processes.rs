//! RPC lanes across two real processes: this test and a spawned `shoal-lanes-peer` serving the
//! billing lane over gRPC on 127.0.0.1 (port 0, announced on its stdout).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

#[path = "../src/bin/peer/billing.rs"]
mod billing;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use billing::{AUDIT, AUDITS, CHARGE, Charge, ChargeError, WHOAMI};
use common::{ED_PRIVATE, HMAC_SECRET};
use shoal_lanes::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const EDGE: &str = "two-process-edge-token";

struct Peer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Peer {
    async fn spawn(auth: &str, key: &[u8]) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, key).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-lanes-peer"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--auth",
                auth,
                "--edge-token",
                EDGE,
                "--key-file",
            ])
            .arg(&key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the peer binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await.unwrap();
        let addr = line
            .trim()
            .strip_prefix("LISTEN ")
            .unwrap_or_else(|| panic!("unexpected announcement {line:?}"))
            .parse()
            .unwrap();
        Peer {
            child,
            addr,
            _dir: dir,
        }
    }

    fn communicator(&self) -> GrpcCommunicator {
        GrpcCommunicator::lazy(&format!("http://{}", self.addr))
            .unwrap()
            .edge_token(EDGE)
            .unwrap()
    }

    async fn caller(&self, auth: LaneAuth) -> Result<Lanes, LanesStartError> {
        let mut registry = Registry::new();
        billing::declare(&mut registry);
        let topology = Topology::new()
            .rpc_lane(billing::lane())
            .profile("api", Profile::new())
            .bind_rpc(
                RpcBinding::new("billing")
                    .communicator(Arc::new(self.communicator()))
                    .auth(auth)
                    .allow_context(["tenant"]),
            );
        Lanes::builder(registry, topology, "api").start().await
    }

    /// Closes the peer's stdin: it shuts down and exits cleanly.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "peer exited with {status}");
    }
}

fn call(target: &str, payload: &[u8], token: Option<String>) -> RemoteCall {
    RemoteCall {
        target: target.into(),
        payload: bytes::Bytes::copy_from_slice(payload),
        token,
        context: CallContext::new(),
    }
}

async fn exercise(peer: &Peer, auth: LaneAuth) {
    let api = peer.caller(auth.clone()).await.unwrap();
    assert_eq!(
        api.run_task(CHARGE, Charge { cents: 120 })
            .await
            .unwrap()
            .id,
        "r-120"
    );
    assert!(matches!(
        api.run_task(CHARGE, Charge { cents: -1 }).await,
        Err(RunError::Task(ChargeError::Declined { .. }))
    ));
    let masked = api.run_task(CHARGE, Charge { cents: 0 }).await.unwrap_err();
    assert_eq!(masked.call_error().unwrap().id(), "lanes-internal");
    assert!(!masked.to_string().contains("hunter2"));
    let cx = CallContext::new()
        .with("tenant", "acme")
        .with("password", "x");
    assert_eq!(
        api.run_task_with(WHOAMI, (), cx).await.unwrap().as_deref(),
        Some("acme")
    );
    let before = api.run_task(AUDITS, ()).await.unwrap();
    api.emit(AUDIT, "line".into()).await.unwrap();
    assert_eq!(api.run_task(AUDITS, ()).await.unwrap(), before + 1);

    // Refusals, each with its typed error on the caller's side.
    let raw = peer.communicator();
    let body = serde_json::to_vec(&Charge { cents: 5 }).unwrap();
    let none = CallContext::new();
    let subject = |lane, payload| Subject {
        lane,
        kind: TargetKind::Task,
        target: "billing:charge",
        payload,
        context: &none,
    };
    let token = auth.sign(&subject("billing", &body)).unwrap();
    assert!(
        raw.run_task(call("billing:charge", &body, token.clone()))
            .await
            .is_ok()
    );
    let tampered = serde_json::to_vec(&Charge { cents: 5_000 }).unwrap();
    assert_eq!(
        raw.run_task(call("billing:charge", &tampered, token)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    assert_eq!(
        raw.run_task(call("billing:charge", &body, None)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    let wrong_lane = auth.sign(&subject("refunds", &body)).unwrap();
    assert_eq!(
        raw.run_task(call("billing:charge", &body, wrong_lane))
            .await,
        Err(RemoteError::LaneUnauthorized)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = auth.sign_at(&subject("billing", &body), now - 600).unwrap();
    assert_eq!(
        raw.run_task(call("billing:charge", &body, expired)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    let no_edge = GrpcCommunicator::lazy(&format!("http://{}", peer.addr)).unwrap();
    assert_eq!(
        no_edge.run_task(call("billing:charge", &body, None)).await,
        Err(RemoteError::EdgeUnauthorized)
    );
    api.shutdown().await;
}

#[tokio::test]
async fn rpc_lanes_across_two_processes_with_hmac() {
    let peer = Peer::spawn("hmac", HMAC_SECRET).await;
    exercise(&peer, LaneAuth::hmac(HMAC_SECRET).unwrap()).await;
    // A caller with another secret is refused.
    let stranger = peer
        .caller(LaneAuth::hmac(b"not-the-secret-but-long-enough-0123456789").unwrap())
        .await
        .unwrap();
    let err = stranger
        .run_task(CHARGE, Charge { cents: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.call_error().unwrap().id(), "lanes-auth-unauthorized");
    stranger.shutdown().await;
    peer.stop().await;
}

#[tokio::test]
async fn rpc_lanes_across_two_processes_with_eddsa() {
    // The peer holds only the public key; the caller only the private key.
    let peer = Peer::spawn("eddsa", common::ED_PUBLIC).await;
    exercise(
        &peer,
        LaneAuth::eddsa().with_private_key_pem(ED_PRIVATE).unwrap(),
    )
    .await;
    // A producer holding only a public key cannot start.
    let err = peer
        .caller(
            LaneAuth::eddsa()
                .with_public_key_pem(common::ED_PUBLIC)
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.id(), "lanes-auth-signer-missing");
    // An HMAC-signed call is refused by the EdDSA lane.
    let wrong = peer
        .caller(LaneAuth::hmac(HMAC_SECRET).unwrap())
        .await
        .unwrap();
    let err = wrong
        .run_task(CHARGE, Charge { cents: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.call_error().unwrap().id(), "lanes-auth-unauthorized");
    wrong.shutdown().await;
    peer.stop().await;
}

#[tokio::test]
async fn a_serving_peer_holding_only_a_private_key_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, ED_PRIVATE).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-lanes-peer"))
        .args(["--listen", "127.0.0.1:0", "--auth", "eddsa", "--key-file"])
        .arg(&key_file)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    // The peer loads the file as its verifying (public) key: a private key is refused at start.
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Pem"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
