//! Every start-time guard rail, each with its typed error and stable id.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::sync::Arc;

use common::{ED_PRIVATE, ED_PUBLIC, HMAC_SECRET};
use shoal_lanes::*;

const CREATED: EventDef<u64> = EventDef::new("orders:created");
const SHIPPED: EventDef<u64> = EventDef::new("orders:shipped");
const CHARGE: TaskDef<i64, String> = TaskDef::new("billing:charge");

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .on(CREATED, "audit", |_p, _cx| async move { Ok(()) })
        .on(SHIPPED, "audit", |_p, _cx| async move { Ok(()) })
        .task(CHARGE, |cents, _cx| async move {
            Ok::<_, TaskFailure<NoError>>(format!("{cents}"))
        });
    registry
}

fn memory() -> Arc<dyn EventQueue> {
    Arc::new(MemoryQueue::new("q"))
}

async fn start_err(
    registry: Registry,
    topology: Topology,
    profile: &str,
    mode: Mode,
) -> Vec<LanesConfigError> {
    match Lanes::builder(registry, topology, profile)
        .mode(mode)
        .start()
        .await
    {
        Ok(_) => panic!("start should fail"),
        Err(err) => {
            let errors = err.config_errors().to_vec();
            assert!(!errors.is_empty(), "expected config errors, got {err}");
            assert_eq!(err.id(), errors[0].id());
            errors
        }
    }
}

fn ids(errors: &[LanesConfigError]) -> Vec<&'static str> {
    errors.iter().map(LanesConfigError::id).collect()
}

#[tokio::test]
async fn invalid_lane_ids_are_refused() {
    for bad in ["", "app.lanes", "with space", "ünïcode"] {
        let topology = Topology::new()
            .event_lane(EventLane::new(bad))
            .profile("p", Profile::new());
        let errors = start_err(registry(), topology, "p", Mode::Network).await;
        assert!(
            errors.iter().any(
                |e| matches!(e, LanesConfigError::InvalidId { kind: IdKind::Lane, id, .. } if id == bad)
            ),
            "{errors:?}"
        );
        assert_eq!(errors[0].id(), "lanes-invalid-id");
    }
}

#[tokio::test]
async fn invalid_target_profile_and_handler_ids_are_refused() {
    const BAD_TASK: TaskDef<(), ()> = TaskDef::new("bad.task");
    const BAD_EVENT: EventDef<()> = EventDef::new("");
    let mut registry = Registry::new();
    registry.declare_task(BAD_TASK).declare_event(BAD_EVENT).on(
        CREATED,
        "bad handler",
        |_p, _cx| async move { Ok(()) },
    );
    let topology = Topology::new()
        .profile("bad profile", Profile::new())
        .profile("p", Profile::new());
    let errors = start_err(registry, topology, "p", Mode::Network).await;
    let kinds: Vec<IdKind> = errors
        .iter()
        .filter_map(|e| match e {
            LanesConfigError::InvalidId { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect();
    for kind in [
        IdKind::Task,
        IdKind::Event,
        IdKind::Handler,
        IdKind::Profile,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} missing from {errors:?}");
    }
}

#[tokio::test]
async fn duplicate_definitions_and_handlers_are_refused() {
    const SAME_AS_EVENT: TaskDef<(), ()> = TaskDef::new("orders:created");
    const RETYPED: EventDef<String> = EventDef::new("orders:shipped");
    let mut registry = registry();
    registry
        .declare_task(SAME_AS_EVENT)
        .declare_event(RETYPED)
        .task(CHARGE, |c, _cx| async move { Ok(format!("{c}")) })
        .on(CREATED, "audit", |_p, _cx| async move { Ok(()) });
    let errors = start_err(
        registry,
        Topology::new().profile("p", Profile::new()),
        "p",
        Mode::Network,
    )
    .await;
    let ids = ids(&errors);
    assert_eq!(
        ids.iter()
            .filter(|i| **i == "lanes-duplicate-definition")
            .count(),
        2,
        "{errors:?}"
    );
    assert_eq!(
        ids.iter()
            .filter(|i| **i == "lanes-duplicate-handler")
            .count(),
        2,
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_lane_id_defined_twice_is_refused_across_systems() {
    let topology = Topology::new()
        .event_lane(EventLane::new("orders"))
        .rpc_lane(RpcLane::new("orders"))
        .profile("p", Profile::new());
    let errors = start_err(registry(), topology, "p", Mode::Transparent).await;
    assert_eq!(
        errors,
        vec![LanesConfigError::DuplicateLane {
            lane: "orders".into()
        }]
    );
    assert_eq!(errors[0].id(), "lanes-duplicate-lane");
}

#[tokio::test]
async fn apply_to_unknown_targets_and_wrong_kinds_are_refused() {
    let topology = Topology::new()
        .event_lane(EventLane::new("events").apply_to(["nope:missing", CHARGE.id()]))
        .rpc_lane(RpcLane::new("rpc").apply_to(["nope:also-missing"]))
        .profile("p", Profile::new());
    let errors = start_err(registry(), topology, "p", Mode::Transparent).await;
    assert!(errors.contains(&LanesConfigError::UnknownTarget {
        lane: "events".into(),
        target: "nope:missing".into()
    }));
    assert!(errors.contains(&LanesConfigError::UnknownTarget {
        lane: "rpc".into(),
        target: "nope:also-missing".into()
    }));
    assert!(errors.contains(&LanesConfigError::TargetKind {
        lane: "events".into(),
        target: "billing:charge".into(),
        expected: "an event"
    }));
    assert!(ids(&errors).contains(&"lanes-unknown-target"));
    assert!(ids(&errors).contains(&"lanes-target-kind"));
}

#[tokio::test]
async fn a_definition_in_two_lanes_of_one_system_is_refused() {
    let topology = Topology::new()
        .event_lane(EventLane::new("a").apply_to([CREATED]))
        .event_lane(EventLane::new("b").apply_when(|t| t.id.starts_with("orders:")))
        .rpc_lane(RpcLane::new("r1").apply_to([CHARGE]))
        .rpc_lane(RpcLane::new("r2").apply_to([CHARGE]))
        .profile("p", Profile::new());
    let errors = start_err(registry(), topology, "p", Mode::Transparent).await;
    assert!(
        errors.contains(&LanesConfigError::AssignmentConflict {
            target: "orders:created".into(),
            first: "a".into(),
            second: "b".into()
        }),
        "{errors:?}"
    );
    assert!(
        errors.contains(&LanesConfigError::AssignmentConflict {
            target: "billing:charge".into(),
            first: "r1".into(),
            second: "r2".into()
        }),
        "{errors:?}"
    );
    assert_eq!(errors[0].id(), "lanes-assignment-conflict");
}

#[tokio::test]
async fn the_same_lane_naming_a_target_twice_is_fine() {
    let topology = Topology::new()
        .event_lane(EventLane::new("a").apply_to([CREATED, CREATED]))
        .profile("p", Profile::new());
    let lanes = Lanes::builder(registry(), topology, "p")
        .mode(Mode::Transparent)
        .start()
        .await
        .unwrap();
    lanes.shutdown().await;
}

#[tokio::test]
async fn an_event_in_both_systems_is_refused() {
    let topology = Topology::new()
        .event_lane(EventLane::new("events").apply_to([CREATED]))
        .rpc_lane(
            RpcLane::new("rpc")
                .apply_when(|t| t.kind == TargetKind::Event && t.id == "orders:created"),
        )
        .profile("p", Profile::new());
    let errors = start_err(registry(), topology, "p", Mode::Transparent).await;
    assert_eq!(
        errors,
        vec![LanesConfigError::EventInBothSystems {
            event: "orders:created".into(),
            event_lane: "events".into(),
            rpc_lane: "rpc".into()
        }]
    );
    assert_eq!(errors[0].id(), "lanes-event-in-both-systems");
}

#[tokio::test]
async fn a_missing_profile_is_refused_in_every_mode() {
    for mode in [Mode::Network, Mode::Transparent, Mode::LocalSimulated] {
        let errors = start_err(
            registry(),
            Topology::new().profile("api", Profile::new()),
            "worker",
            mode,
        )
        .await;
        assert_eq!(
            errors,
            vec![LanesConfigError::ProfileNotFound {
                profile: "worker".into()
            }]
        );
        assert_eq!(errors[0].id(), "lanes-profile-not-found");
    }
}

#[tokio::test]
async fn profiles_and_bindings_naming_unknown_lanes_are_refused() {
    let topology = Topology::new()
        .event_lane(EventLane::new("events"))
        .rpc_lane(RpcLane::new("rpc"))
        .profile(
            "p",
            Profile::new()
                .consume("rpc")
                .serve("events")
                .consume("ghost"),
        )
        .bind_event(EventBinding::new("rpc", memory()))
        .bind_rpc(RpcBinding::new("ghost"));
    let errors = start_err(registry(), topology, "p", Mode::Network).await;
    assert_eq!(
        ids(&errors)
            .iter()
            .filter(|i| **i == "lanes-unknown-lane")
            .count(),
        5,
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_lane_listed_twice_in_a_profile_is_refused() {
    let q = memory();
    let topology = Topology::new()
        .event_lane(EventLane::new("events").apply_to([CREATED]))
        .rpc_lane(RpcLane::new("rpc").apply_to([CHARGE]))
        .profile(
            "p",
            Profile::new()
                .consume("events")
                .consume("events")
                .serve("rpc")
                .serve("rpc"),
        )
        .bind_event(EventBinding::new("events", q))
        .bind_rpc(RpcBinding::new("rpc"));
    let errors = start_err(registry(), topology, "p", Mode::Network).await;
    assert_eq!(
        errors,
        vec![
            LanesConfigError::DuplicateProfileEntry {
                profile: "p".into(),
                lane: "events".into()
            },
            LanesConfigError::DuplicateProfileEntry {
                profile: "p".into(),
                lane: "rpc".into()
            },
        ]
    );
}

#[tokio::test]
async fn a_handler_allow_list_naming_an_unknown_handler_is_refused() {
    let topology = Topology::new()
        .event_lane(EventLane::new("events").apply_to([CREATED]))
        .profile(
            "p",
            Profile::new().consume_only("events", ["audit", "nope"]),
        )
        .bind_event(EventBinding::new("events", memory()));
    let errors = start_err(registry(), topology, "p", Mode::Network).await;
    assert_eq!(
        errors,
        vec![LanesConfigError::UnknownHandler {
            profile: "p".into(),
            lane: "events".into(),
            handler: "nope".into()
        }]
    );
    assert_eq!(errors[0].id(), "lanes-unknown-handler");
}

/// Scenario 5 (binding validation): missing, duplicate and invalid retry policies.
#[tokio::test]
async fn binding_validation() {
    // Missing binding of a routed lane.
    let topology = Topology::new()
        .event_lane(EventLane::new("events").apply_to([CREATED]))
        .rpc_lane(RpcLane::new("rpc").apply_to([CHARGE]))
        .profile("p", Profile::new());
    let errors = start_err(registry(), topology, "p", Mode::Network).await;
    assert_eq!(
        errors[0].to_string(),
        "event lane \"events\" has no binding"
    );
    assert_eq!(errors[1].to_string(), "RPC lane \"rpc\" has no binding");
    assert_eq!(errors[0].id(), "lanes-binding-missing");

    // Duplicate binding.
    let topology = Topology::new()
        .event_lane(EventLane::new("events").apply_to([CREATED]))
        .profile("p", Profile::new())
        .bind_event(EventBinding::new("events", memory()))
        .bind_event(EventBinding::new("events", memory()));
    let errors = start_err(registry(), topology, "p", Mode::Network).await;
    assert!(
        errors[0]
            .to_string()
            .contains("is bound multiple times; define exactly one binding per lane")
    );
    assert_eq!(errors[0].id(), "lanes-duplicate-binding");

    // Invalid policy.
    let topology = Topology::new()
        .event_lane(EventLane::new("events").apply_to([CREATED]))
        .profile("p", Profile::new())
        .bind_event(
            EventBinding::new("events", memory())
                .max_attempts(0)
                .prefetch(0),
        );
    let errors = start_err(registry(), topology, "p", Mode::Network).await;
    assert!(
        errors[0].to_string().contains("field \"max_attempts\""),
        "{errors:?}"
    );
    assert!(
        errors[1].to_string().contains("field \"prefetch\""),
        "{errors:?}"
    );
    assert_eq!(errors[0].id(), "lanes-invalid-policy");
}

#[tokio::test]
async fn a_network_mode_rpc_caller_without_a_communicator_is_refused() {
    let topology = Topology::new()
        .rpc_lane(RpcLane::new("rpc").apply_to([CHARGE]))
        .profile("api", Profile::new())
        .bind_rpc(RpcBinding::new("rpc"));
    let errors = start_err(registry(), topology, "api", Mode::Network).await;
    assert_eq!(
        errors,
        vec![LanesConfigError::CommunicatorMissing {
            lane: "rpc".into(),
            profile: "api".into()
        }]
    );
    assert_eq!(errors[0].id(), "lanes-communicator-missing");
}

#[tokio::test]
async fn a_served_task_without_a_handler_is_refused() {
    const REMOTE_ONLY: TaskDef<(), ()> = TaskDef::new("billing:refund");
    let mut registry = registry();
    registry.declare_task(REMOTE_ONLY);
    let topology = Topology::new()
        .rpc_lane(RpcLane::new("rpc").apply_to([REMOTE_ONLY]))
        .profile("billing", Profile::new().serve("rpc"))
        .bind_rpc(RpcBinding::new("rpc"));
    let errors = start_err(registry, topology, "billing", Mode::Network).await;
    assert_eq!(
        errors,
        vec![LanesConfigError::HandlerMissing {
            profile: "billing".into(),
            lane: "rpc".into(),
            task: "billing:refund".into()
        }]
    );
}

/// Scenario 4: a profile consuming only part of a shared queue fails fast; all of it is fine.
#[tokio::test]
async fn a_partially_consumed_shared_queue_fails_fast() {
    let shared = memory();
    let topology = |profile: Profile| {
        Topology::new()
            .event_lane(EventLane::new("created").apply_to([CREATED]))
            .event_lane(EventLane::new("shipped").apply_to([SHIPPED]))
            .profile("worker", profile)
            .bind_event(EventBinding::new("created", shared.clone()))
            .bind_event(EventBinding::new("shipped", shared.clone()))
    };
    let errors = start_err(
        registry(),
        topology(Profile::new().consume("created")),
        "worker",
        Mode::Network,
    )
    .await;
    assert_eq!(errors[0].id(), "lanes-shared-queue-partial-consume");
    assert!(
        matches!(&errors[0], LanesConfigError::SharedQueuePartialConsume { missing, .. } if missing == &vec!["shipped".to_owned()])
    );
    // Checked in every mode: the topology is shared by all processes.
    let errors = start_err(
        registry(),
        topology(Profile::new().consume("created")),
        "worker",
        Mode::Transparent,
    )
    .await;
    assert_eq!(errors[0].id(), "lanes-shared-queue-partial-consume");
    let lanes = Lanes::builder(
        registry(),
        topology(Profile::new().consume("created").consume("shipped")),
        "worker",
    )
    .start()
    .await
    .unwrap();
    lanes.shutdown().await;
}

#[tokio::test]
async fn exposure_outside_network_mode_is_refused() {
    let topology = Topology::new().profile("p", Profile::new());
    for mode in [Mode::Transparent, Mode::LocalSimulated] {
        let err = Lanes::builder(registry(), topology.clone(), "p")
            .mode(mode)
            .exposure(ExposureConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                EdgeAuth::AllowAnonymous,
            ))
            .start()
            .await
            .unwrap_err();
        assert_eq!(err.id(), "lanes-exposure-mode");
    }
}

/// Scenario 16 (auth readiness).
#[tokio::test]
async fn auth_readiness() {
    let public_only = || LaneAuth::eddsa().with_public_key_pem(ED_PUBLIC).unwrap();
    let private_only = || LaneAuth::eddsa().with_private_key_pem(ED_PRIVATE).unwrap();
    let event_topology = |auth: LaneAuth, consumer: bool| {
        let profile = if consumer {
            Profile::new().consume("events")
        } else {
            Profile::new()
        };
        Topology::new()
            .event_lane(EventLane::new("events").apply_to([CREATED]))
            .profile("p", profile)
            .bind_event(EventBinding::new("events", memory()).auth(auth))
    };
    // A producer holding only a public key cannot start.
    let errors = start_err(
        registry(),
        event_topology(public_only(), false),
        "p",
        Mode::Network,
    )
    .await;
    assert_eq!(errors[0].id(), "lanes-auth-signer-missing");
    // A consumer holding only a private key cannot start.
    let errors = start_err(
        registry(),
        event_topology(private_only(), true),
        "p",
        Mode::Network,
    )
    .await;
    assert_eq!(errors[0].id(), "lanes-auth-verifier-missing");
    // A consumer with only the public key starts (it verifies; it cannot emit on the lane).
    let lanes = Lanes::builder(registry(), event_topology(public_only(), true), "p")
        .start()
        .await
        .unwrap();
    let err = lanes.emit(CREATED, 1).await.unwrap_err();
    assert_eq!(err.id(), "lanes-auth-signer-missing");
    lanes.shutdown().await;
    // Local-simulated needs both halves.
    let errors = start_err(
        registry(),
        event_topology(public_only(), false),
        "p",
        Mode::LocalSimulated,
    )
    .await;
    assert_eq!(ids(&errors), vec!["lanes-auth-signer-missing"]);
    let errors = start_err(
        registry(),
        event_topology(private_only(), false),
        "p",
        Mode::LocalSimulated,
    )
    .await;
    assert_eq!(ids(&errors), vec!["lanes-auth-verifier-missing"]);
    // Transparent checks nothing.
    let lanes = Lanes::builder(registry(), event_topology(public_only(), false), "p")
        .mode(Mode::Transparent)
        .start()
        .await
        .unwrap();
    lanes.shutdown().await;

    // RPC: a caller needs a signer, a server a verifier.
    let rpc_topology = |auth: LaneAuth, serve: bool| {
        let profile = if serve {
            Profile::new().serve("rpc")
        } else {
            Profile::new()
        };
        let communicator = GrpcCommunicator::lazy("http://127.0.0.1:9").unwrap();
        Topology::new()
            .rpc_lane(RpcLane::new("rpc").apply_to([CHARGE]))
            .profile("p", profile)
            .bind_rpc(
                RpcBinding::new("rpc")
                    .auth(auth)
                    .communicator(Arc::new(communicator)),
            )
    };
    let errors = start_err(
        registry(),
        rpc_topology(public_only(), false),
        "p",
        Mode::Network,
    )
    .await;
    assert_eq!(errors[0].id(), "lanes-auth-signer-missing");
    let errors = start_err(
        registry(),
        rpc_topology(private_only(), true),
        "p",
        Mode::Network,
    )
    .await;
    assert_eq!(errors[0].id(), "lanes-auth-verifier-missing");
    let hmac = LaneAuth::hmac(HMAC_SECRET).unwrap();
    let lanes = Lanes::builder(registry(), rpc_topology(hmac, true), "p")
        .start()
        .await
        .unwrap();
    lanes.shutdown().await;
}

#[tokio::test]
async fn every_problem_is_reported_not_just_the_first() {
    let topology = Topology::new()
        .event_lane(EventLane::new("bad.id"))
        .event_lane(EventLane::new("events").apply_to(["nope"]))
        .profile("p", Profile::new());
    let errors = start_err(registry(), topology, "missing", Mode::Network).await;
    assert_eq!(
        ids(&errors),
        vec![
            "lanes-invalid-id",
            "lanes-unknown-target",
            "lanes-profile-not-found"
        ]
    );
}

#[test]
fn weak_hmac_secrets_and_wrong_keys_are_refused() {
    assert_eq!(
        LaneAuth::hmac(b"short").unwrap_err(),
        KeyError::WeakSecret {
            len: 5,
            min: MIN_HMAC_SECRET_LEN
        }
    );
    assert!(matches!(
        LaneAuth::eddsa().with_private_key_pem(b"not a pem"),
        Err(KeyError::Pem(_))
    ));
    assert!(matches!(
        LaneAuth::eddsa().with_public_key_pem(common::P256_PUBLIC),
        Err(KeyError::Pem(_))
    ));
    assert_eq!(
        LaneAuth::hmac(HMAC_SECRET)
            .unwrap()
            .with_public_key_pem(ED_PUBLIC)
            .unwrap_err(),
        KeyError::NotAsymmetric
    );
}
