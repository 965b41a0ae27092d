//! RPC lanes over gRPC in one process (server and caller are two `Lanes`), plus local-simulated
//! and transparent RPC.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

#[path = "../src/bin/peer/billing.rs"]
mod billing;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use billing::{AUDIT, AUDITS, CHARGE, Charge, ChargeError, LOCAL_ONLY, Receipt, WHOAMI};
use common::{ED_PRIVATE, ED_PUBLIC, HMAC_SECRET};
use shoal_lanes::*;

const EDGE: &str = "edge-token-for-tests";

async fn serve(auth: LaneAuth, exposure: impl FnOnce(ExposureConfig) -> ExposureConfig) -> Lanes {
    let mut registry = Registry::new();
    billing::serve(&mut registry);
    let topology = Topology::new()
        .rpc_lane(billing::lane())
        .profile("billing", Profile::new().serve("billing"))
        .bind_rpc(
            RpcBinding::new("billing")
                .auth(auth)
                .allow_context(["tenant"]),
        );
    let config = ExposureConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        EdgeAuth::Tokens(vec![EDGE.into()]),
    );
    Lanes::builder(registry, topology, "billing")
        .exposure(exposure(config))
        .start()
        .await
        .unwrap()
}

fn communicator(server: &Lanes, edge: Option<&str>) -> GrpcCommunicator {
    let c = GrpcCommunicator::lazy(&format!("http://{}", server.exposure_addr().unwrap())).unwrap();
    match edge {
        Some(token) => c.edge_token(token).unwrap(),
        None => c,
    }
}

async fn caller(server: &Lanes, auth: LaneAuth) -> Lanes {
    let mut registry = Registry::new();
    billing::declare(&mut registry);
    let topology = Topology::new()
        .rpc_lane(billing::lane())
        .profile("api", Profile::new())
        .bind_rpc(
            RpcBinding::new("billing")
                .communicator(Arc::new(communicator(server, Some(EDGE))))
                .auth(auth)
                .allow_context(["tenant"]),
        );
    Lanes::builder(registry, topology, "api")
        .start()
        .await
        .unwrap()
}

fn hmac() -> LaneAuth {
    LaneAuth::hmac(HMAC_SECRET).unwrap()
}

fn sign(
    auth: &LaneAuth,
    kind: TargetKind,
    target: &str,
    payload: &[u8],
    context: &CallContext,
) -> Option<String> {
    auth.sign(&Subject {
        lane: "billing",
        kind,
        target,
        payload,
        context,
    })
    .unwrap()
}

fn call(target: &str, payload: &[u8], token: Option<String>) -> RemoteCall {
    RemoteCall {
        target: target.into(),
        payload: bytes::Bytes::copy_from_slice(payload),
        token,
        context: CallContext::new(),
    }
}

/// Scenario 21: not served → through the communicator; served → local. Events too.
#[tokio::test]
async fn rpc_routing_by_serve() {
    let server = serve(hmac(), |c| c).await;
    let api = caller(&server, hmac()).await;
    // Remote: the caller has no handler at all.
    let receipt = api.run_task(CHARGE, Charge { cents: 250 }).await.unwrap();
    assert_eq!(
        receipt,
        Receipt {
            id: "r-250".into(),
            cents: 250
        }
    );
    // Served: local on the server.
    assert_eq!(
        server
            .run_task(CHARGE, Charge { cents: 1 })
            .await
            .unwrap()
            .id,
        "r-1"
    );
    // Events: remote emit runs the server's handler before returning.
    api.emit(AUDIT, "line".into()).await.unwrap();
    assert_eq!(api.run_task(AUDITS, ()).await.unwrap(), 1);
    server.emit(AUDIT, "local".into()).await.unwrap();
    assert_eq!(server.run_task(AUDITS, ()).await.unwrap(), 2);
    // A task on no lane runs locally; the caller has no handler for it.
    let err = api.run_task(LOCAL_ONLY, ()).await.unwrap_err();
    assert_eq!(err.call_error().unwrap().id(), "lanes-handler-missing");
    api.shutdown().await;
    server.shutdown().await;
}

/// A task's typed error reaches the caller as that error; anything else as an internal error
/// without details.
#[tokio::test]
async fn typed_errors_cross_the_lane_and_internal_errors_are_masked() {
    let server = serve(hmac(), |c| c).await;
    let api = caller(&server, hmac()).await;
    match api.run_task(CHARGE, Charge { cents: -5 }).await {
        Err(RunError::Task(ChargeError::Declined { reason })) => {
            assert_eq!(reason, "negative amount")
        }
        other => panic!("expected the typed error, got {other:?}"),
    }
    let err = api.run_task(CHARGE, Charge { cents: 0 }).await.unwrap_err();
    let call_error = err.call_error().unwrap();
    assert_eq!(call_error.id(), "lanes-internal");
    assert!(!call_error.to_string().contains("hunter2"), "{call_error}");
    // The same untyped failure, called locally, keeps its details.
    let err = server
        .run_task(CHARGE, Charge { cents: 0 })
        .await
        .unwrap_err();
    assert!(err.call_error().unwrap().to_string().contains("hunter2"));
    api.shutdown().await;
    server.shutdown().await;
}

/// Scenario 22: the exposure enforces the served lane's JWT end to end.
#[tokio::test]
async fn exposure_lane_jwt_end_to_end() {
    let auth = hmac();
    let server = serve(auth.clone(), |c| c).await;
    let raw = communicator(&server, Some(EDGE));
    let body = serde_json::to_vec(&Charge { cents: 10 }).unwrap();
    let none = CallContext::new();

    // No lane token.
    assert_eq!(
        raw.run_task(call("billing:charge", &body, None)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    // A correct token.
    let token = sign(&auth, TargetKind::Task, "billing:charge", &body, &none);
    let output = raw
        .run_task(call("billing:charge", &body, token.clone()))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Receipt>(&output).unwrap().cents,
        10
    );
    // The same token with another body (tampered payload).
    let tampered = serde_json::to_vec(&Charge { cents: 10_000 }).unwrap();
    assert_eq!(
        raw.run_task(call("billing:charge", &tampered, token.clone()))
            .await,
        Err(RemoteError::LaneUnauthorized)
    );
    // A task token on the event endpoint.
    let audit_body = serde_json::to_vec("x").unwrap();
    let task_token = sign(&auth, TargetKind::Task, "billing:audit", &audit_body, &none);
    assert_eq!(
        raw.emit_event(call("billing:audit", &audit_body, task_token))
            .await,
        Err(RemoteError::LaneUnauthorized)
    );
    // A proper event token: the handler runs once.
    let event_token = sign(
        &auth,
        TargetKind::Event,
        "billing:audit",
        &audit_body,
        &none,
    );
    raw.emit_event(call("billing:audit", &audit_body, event_token.clone()))
        .await
        .unwrap();
    assert_eq!(server.run_task(AUDITS, ()).await.unwrap(), 1);
    // Scenario 23 (adapted): an event token replayed on the task endpoint is refused, and nothing runs.
    assert_eq!(
        raw.run_task(call("billing:audit", &audit_body, event_token))
            .await,
        Err(RemoteError::NotExposed("billing:audit".into()))
    );
    // A token for another target.
    let whoami_body = serde_json::to_vec(&()).unwrap();
    let wrong_target = sign(
        &auth,
        TargetKind::Task,
        "billing:audits",
        &whoami_body,
        &none,
    );
    assert_eq!(
        raw.run_task(call("billing:whoami", &whoami_body, wrong_target))
            .await,
        Err(RemoteError::LaneUnauthorized)
    );
    // A token for another lane.
    let other_lane = auth
        .sign(&Subject {
            lane: "refunds",
            kind: TargetKind::Task,
            target: "billing:charge",
            payload: &body,
            context: &none,
        })
        .unwrap();
    assert_eq!(
        raw.run_task(call("billing:charge", &body, other_lane))
            .await,
        Err(RemoteError::LaneUnauthorized)
    );
    // An expired token.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = auth
        .sign_at(
            &Subject {
                lane: "billing",
                kind: TargetKind::Task,
                target: "billing:charge",
                payload: &body,
                context: &none,
            },
            now - 3600,
        )
        .unwrap();
    assert_eq!(
        raw.run_task(call("billing:charge", &body, expired)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    assert_eq!(
        server.run_task(AUDITS, ()).await.unwrap(),
        1,
        "no refused call ran anything"
    );
    server.shutdown().await;
}

/// Only allowed context keys cross the lane, and the context is bound to the token.
#[tokio::test]
async fn context_forwarding_over_grpc() {
    let server = serve(hmac(), |c| c).await;
    let api = caller(&server, hmac()).await;
    let cx = CallContext::new()
        .with("tenant", "acme ✓")
        .with("password", "hunter2");
    assert_eq!(
        api.run_task_with(WHOAMI, (), cx).await.unwrap().as_deref(),
        Some("acme ✓")
    );
    assert_eq!(api.run_task(WHOAMI, ()).await.unwrap(), None);
    // A context swapped in transit is refused.
    let raw = communicator(&server, Some(EDGE));
    let body = serde_json::to_vec(&()).unwrap();
    let signed_for = CallContext::new().with("tenant", "acme");
    let token = sign(
        &hmac(),
        TargetKind::Task,
        "billing:whoami",
        &body,
        &signed_for,
    );
    let mut swapped = call("billing:whoami", &body, token);
    swapped.context = CallContext::new().with("tenant", "evil");
    assert_eq!(
        raw.run_task(swapped).await,
        Err(RemoteError::LaneUnauthorized)
    );
    api.shutdown().await;
    server.shutdown().await;
}

/// Scenario 25: the exposure's edge policy, allow-list, size limit and error masking.
#[tokio::test]
async fn exposure_policy() {
    let server = serve(LaneAuth::none(), |c| c.max_request_bytes(64 * 1024)).await;
    let body = serde_json::to_vec(&Charge { cents: 3 }).unwrap();
    // Edge token: missing or wrong → refused before anything else.
    for edge in [None, Some("wrong")] {
        let c = communicator(&server, edge);
        assert_eq!(
            c.run_task(call("billing:charge", &body, None)).await,
            Err(RemoteError::EdgeUnauthorized)
        );
    }
    let c = communicator(&server, Some(EDGE));
    assert!(
        c.run_task(call("billing:charge", &body, None))
            .await
            .is_ok()
    );
    // Not exposed: a task on no lane, and an unknown id.
    assert_eq!(
        c.run_task(call("billing:local-only", b"null", None)).await,
        Err(RemoteError::NotExposed("billing:local-only".into()))
    );
    assert_eq!(
        c.run_task(call("nope:nothing", b"null", None)).await,
        Err(RemoteError::NotExposed("nope:nothing".into()))
    );
    // Too large.
    let huge = vec![b' '; 128 * 1024];
    assert_eq!(
        c.run_task(call("billing:charge", &huge, None)).await,
        Err(RemoteError::TooLarge)
    );
    // Input of the wrong shape.
    assert!(matches!(
        c.run_task(call("billing:charge", b"{\"cents\":\"x\"}", None))
            .await,
        Err(RemoteError::InvalidInput(_))
    ));
    // Invalid UTF-8 in a field the input type ignores: refused, not run.
    assert!(matches!(
        c.run_task(call(
            "billing:charge",
            b"{\"cents\":5,\"memo\":\"\xff\"}",
            None
        ))
        .await,
        Err(RemoteError::InvalidInput(_))
    ));
    // Untyped failures are masked; typed ones keep their data.
    assert_eq!(
        c.run_task(call("billing:charge", b"{\"cents\":0}", None))
            .await,
        Err(RemoteError::Internal)
    );
    let typed = c
        .run_task(call("billing:charge", b"{\"cents\":-1}", None))
        .await
        .unwrap_err();
    let RemoteError::Typed(data) = typed else {
        panic!("{typed:?}")
    };
    assert_eq!(
        serde_json::from_slice::<ChargeError>(&data).unwrap(),
        ChargeError::Declined {
            reason: "negative amount".into()
        }
    );
    assert_eq!(server.exposed().len(), 4);
    server.shutdown().await;

    // Several edge tokens, and anonymous access when chosen explicitly.
    let server = serve(LaneAuth::none(), |_| {
        ExposureConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            EdgeAuth::Tokens(vec!["a".into(), EDGE.into()]),
        )
    })
    .await;
    assert!(
        communicator(&server, Some("a"))
            .run_task(call("billing:charge", &body, None))
            .await
            .is_ok()
    );
    assert!(
        communicator(&server, Some(EDGE))
            .run_task(call("billing:charge", &body, None))
            .await
            .is_ok()
    );
    server.shutdown().await;
    let server = serve(LaneAuth::none(), |_| {
        ExposureConfig::new("127.0.0.1:0".parse().unwrap(), EdgeAuth::AllowAnonymous)
    })
    .await;
    assert!(
        communicator(&server, None)
            .run_task(call("billing:charge", &body, None))
            .await
            .is_ok()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn replay_protection_refuses_a_reused_token() {
    let auth = hmac();
    let server = serve(auth.clone(), |c| c.replay_protection(true)).await;
    let raw = communicator(&server, Some(EDGE));
    let body = serde_json::to_vec(&Charge { cents: 1 }).unwrap();
    let token = sign(
        &auth,
        TargetKind::Task,
        "billing:charge",
        &body,
        &CallContext::new(),
    );
    assert!(
        raw.run_task(call("billing:charge", &body, token.clone()))
            .await
            .is_ok()
    );
    assert_eq!(
        raw.run_task(call("billing:charge", &body, token)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    // The runtime mints a fresh token per call, so normal callers are unaffected.
    let api = caller(&server, auth).await;
    for _ in 0..3 {
        api.run_task(CHARGE, Charge { cents: 2 }).await.unwrap();
    }
    api.shutdown().await;
    server.shutdown().await;
}

/// A token whose `exp` is absurdly far away (here `i64::MAX`, from a producer whose TTL is
/// `Duration::MAX`) is refused as `LifetimeTooLong`; computing its replay window must not
/// overflow, and the exposure keeps serving.
#[tokio::test]
async fn replay_protection_refuses_an_absurd_exp_without_panicking() {
    let server = serve(hmac(), |c| c.replay_protection(true)).await;
    let raw = communicator(&server, Some(EDGE));
    let body = serde_json::to_vec(&Charge { cents: 1 }).unwrap();
    let forever = hmac().ttl(std::time::Duration::MAX);
    let token = sign(
        &forever,
        TargetKind::Task,
        "billing:charge",
        &body,
        &CallContext::new(),
    );
    assert_eq!(
        raw.run_task(call("billing:charge", &body, token)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    // The server is still up, and a normal token is accepted once and refused on replay.
    let token = sign(
        &hmac(),
        TargetKind::Task,
        "billing:charge",
        &body,
        &CallContext::new(),
    );
    assert!(
        raw.run_task(call("billing:charge", &body, token.clone()))
            .await
            .is_ok()
    );
    assert_eq!(
        raw.run_task(call("billing:charge", &body, token)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    server.shutdown().await;

    // A server that accepts such lifetimes (its own TTL is unbounded) remembers the token until
    // the end of time, saturating rather than overflowing `exp + skew`, and refuses its replay.
    let server = serve(forever.clone(), |c| c.replay_protection(true)).await;
    let raw = communicator(&server, Some(EDGE));
    let token = sign(
        &forever,
        TargetKind::Task,
        "billing:charge",
        &body,
        &CallContext::new(),
    );
    assert!(
        raw.run_task(call("billing:charge", &body, token.clone()))
            .await
            .is_ok()
    );
    assert_eq!(
        raw.run_task(call("billing:charge", &body, token)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    server.shutdown().await;
}

/// The replay guard holds at most `replay_capacity` ids: once full, a new token is refused with
/// `lanes-replay-guard-full` (nothing runs), and the ids it holds are still refused as replays.
#[tokio::test]
async fn replay_guard_full_refuses_new_tokens_and_still_refuses_replays() {
    let auth = hmac();
    let server = serve(auth.clone(), |c| {
        c.replay_protection(true).replay_capacity(2)
    })
    .await;
    let raw = communicator(&server, Some(EDGE));
    let body = serde_json::to_vec(&Charge { cents: 1 }).unwrap();
    let fresh = || {
        sign(
            &auth,
            TargetKind::Task,
            "billing:charge",
            &body,
            &CallContext::new(),
        )
    };
    let first = fresh();
    assert!(
        raw.run_task(call("billing:charge", &body, first.clone()))
            .await
            .is_ok()
    );
    assert!(
        raw.run_task(call("billing:charge", &body, fresh()))
            .await
            .is_ok()
    );
    match raw.run_task(call("billing:charge", &body, fresh())).await {
        Err(RemoteError::Unavailable(message)) => {
            assert!(message.contains("replay guard is full"), "{message}");
        }
        other => panic!("expected the replay guard to be full, got {other:?}"),
    }
    assert_eq!(
        raw.run_task(call("billing:charge", &body, first)).await,
        Err(RemoteError::LaneUnauthorized)
    );
    server.shutdown().await;
}

/// Asymmetric lane: the caller holds the private key, the server only the public key.
#[tokio::test]
async fn eddsa_rpc_lane() {
    let server = serve(
        LaneAuth::eddsa().with_public_key_pem(ED_PUBLIC).unwrap(),
        |c| c,
    )
    .await;
    let api = caller(
        &server,
        LaneAuth::eddsa().with_private_key_pem(ED_PRIVATE).unwrap(),
    )
    .await;
    assert_eq!(
        api.run_task(CHARGE, Charge { cents: 9 })
            .await
            .unwrap()
            .cents,
        9
    );
    // A caller signing with HMAC is refused by the EdDSA lane.
    let wrong = caller(&server, hmac()).await;
    let err = wrong
        .run_task(CHARGE, Charge { cents: 9 })
        .await
        .unwrap_err();
    assert_eq!(err.call_error().unwrap().id(), "lanes-auth-unauthorized");
    api.shutdown().await;
    wrong.shutdown().await;
    server.shutdown().await;
}

/// Scenario 24: nothing served → no server (and a diagnostic); shutdown stops the server.
#[tokio::test]
async fn exposure_lifecycle() {
    let (captured, _guard) = common::capture();
    let mut registry = Registry::new();
    billing::declare(&mut registry);
    let topology = Topology::new()
        .rpc_lane(billing::lane())
        .profile("api", Profile::new())
        .bind_rpc(RpcBinding::new("billing").communicator(Arc::new(
            GrpcCommunicator::lazy("http://127.0.0.1:9").unwrap(),
        )));
    let api = Lanes::builder(registry, topology, "api")
        .exposure(ExposureConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            EdgeAuth::AllowAnonymous,
        ))
        .start()
        .await
        .unwrap();
    assert_eq!(api.exposure_addr(), None);
    let skipped = captured.with_diag(diagnostics::EXPOSURE_SKIPPED);
    assert_eq!(skipped[0]["reason"], "no-served-task-or-event");
    api.shutdown().await;

    let server = serve(LaneAuth::none(), |c| c).await;
    let c = communicator(&server, Some(EDGE));
    let body = serde_json::to_vec(&Charge { cents: 1 }).unwrap();
    assert!(
        c.run_task(call("billing:charge", &body, None))
            .await
            .is_ok()
    );
    server.shutdown().await;
    let err = c
        .run_task(call("billing:charge", &body, None))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Unavailable(_)), "{err:?}");
}

/// Scenarios 13 and 27: local-simulated RPC serializes, signs and verifies, touches no
/// communicator, and typed errors round-trip; transparent mode runs everything locally.
#[tokio::test]
async fn local_simulated_rpc() {
    #[derive(Debug)]
    struct NeverCalled(AtomicUsize);
    #[async_trait::async_trait]
    impl Communicator for NeverCalled {
        async fn run_task(&self, _call: RemoteCall) -> Result<bytes::Bytes, RemoteError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(RemoteError::Internal)
        }
        async fn emit_event(&self, _call: RemoteCall) -> Result<(), RemoteError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(RemoteError::Internal)
        }
    }
    for mode in [Mode::LocalSimulated, Mode::Transparent] {
        let never = Arc::new(NeverCalled(AtomicUsize::new(0)));
        let mut registry = Registry::new();
        billing::serve(&mut registry);
        let auth = LaneAuth::eddsa()
            .with_private_key_pem(ED_PRIVATE)
            .unwrap()
            .with_public_key_pem(ED_PUBLIC)
            .unwrap();
        let topology = Topology::new()
            .rpc_lane(billing::lane())
            .profile("api", Profile::new())
            .bind_rpc(
                RpcBinding::new("billing")
                    .communicator(never.clone())
                    .auth(auth)
                    .allow_context(["tenant"]),
            );
        let lanes = Lanes::builder(registry, topology, "api")
            .mode(mode)
            .start()
            .await
            .unwrap();
        assert_eq!(
            lanes
                .run_task(CHARGE, Charge { cents: 4 })
                .await
                .unwrap()
                .cents,
            4
        );
        assert!(matches!(
            lanes.run_task(CHARGE, Charge { cents: -4 }).await,
            Err(RunError::Task(ChargeError::Declined { .. }))
        ));
        let cx = CallContext::new().with("tenant", "t1").with("other", "x");
        assert_eq!(
            lanes
                .run_task_with(WHOAMI, (), cx)
                .await
                .unwrap()
                .as_deref(),
            Some("t1")
        );
        lanes.emit(AUDIT, "a".into()).await.unwrap();
        assert_eq!(lanes.run_task(AUDITS, ()).await.unwrap(), 1);
        let failure = lanes
            .run_task(CHARGE, Charge { cents: 0 })
            .await
            .unwrap_err();
        let expected = if mode == Mode::LocalSimulated {
            "lanes-internal"
        } else {
            "lanes-task-failed"
        };
        assert_eq!(failure.call_error().unwrap().id(), expected, "{mode}");
        assert_eq!(
            never.0.load(Ordering::SeqCst),
            0,
            "{mode}: the communicator is never used"
        );
        lanes.shutdown().await;
    }
}

/// Local-simulated catches a value that does not survive serialization; transparent does not
/// serialize at all.
#[tokio::test]
async fn local_simulated_catches_values_that_do_not_survive_serialization() {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Lossy {
        #[serde(skip_serializing)]
        secret: String,
    }
    const LOSSY: TaskDef<Lossy, String> = TaskDef::new("lossy:echo");
    for (mode, survives) in [(Mode::LocalSimulated, false), (Mode::Transparent, true)] {
        let mut registry = Registry::new();
        registry.task(LOSSY, |input: Lossy, _cx| async move { Ok(input.secret) });
        let topology = Topology::new()
            .rpc_lane(RpcLane::new("lossy").apply_to([LOSSY]))
            .profile("p", Profile::new())
            .bind_rpc(RpcBinding::new("lossy"));
        let lanes = Lanes::builder(registry, topology, "p")
            .mode(mode)
            .start()
            .await
            .unwrap();
        let result = lanes.run_task(LOSSY, Lossy { secret: "s".into() }).await;
        if survives {
            assert_eq!(result.unwrap(), "s");
        } else {
            assert_eq!(
                result.unwrap_err().call_error().unwrap().id(),
                "lanes-codec"
            );
        }
        lanes.shutdown().await;
    }
}
