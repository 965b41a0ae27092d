//! The "billing" RPC lane served by the peer: definitions shared with the tests that spawn it.

// Shared with the integration tests (`#[path]`), which use a different subset of it.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use shoal_lanes::{EventDef, Registry, RpcLane, TaskDef, TaskFailure};

/// A charge request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Amount in cents.
    pub cents: i64,
}

/// A charge receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Receipt id.
    pub id: String,
    /// Amount in cents.
    pub cents: i64,
}

/// The typed error of `billing:charge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChargeError {
    /// Refused.
    Declined {
        /// Why.
        reason: String,
    },
}

/// Charges an amount; negative amounts are declined (typed error), zero fails untyped.
pub const CHARGE: TaskDef<Charge, Receipt, ChargeError> = TaskDef::new("billing:charge");
/// Returns the `tenant` context key as the server saw it.
pub const WHOAMI: TaskDef<(), Option<String>> = TaskDef::new("billing:whoami");
/// Counts `billing:audit` events handled by the server.
pub const AUDITS: TaskDef<(), u64> = TaskDef::new("billing:audits");
/// An audit event, handled by the server.
pub const AUDIT: EventDef<String> = EventDef::new("billing:audit");
/// Not on any lane: never exposed.
pub const LOCAL_ONLY: TaskDef<(), ()> = TaskDef::new("billing:local-only");

/// The billing lane.
pub fn lane() -> RpcLane {
    RpcLane::new("billing").apply_to([
        "billing:charge",
        "billing:whoami",
        "billing:audits",
        "billing:audit",
    ])
}

/// Declarations for a caller (no handlers).
pub fn declare(registry: &mut Registry) {
    registry
        .declare_task(CHARGE)
        .declare_task(WHOAMI)
        .declare_task(AUDITS)
        .declare_task(LOCAL_ONLY)
        .declare_event(AUDIT);
}

/// Declarations and handlers for the serving side.
pub fn serve(registry: &mut Registry) {
    let audits = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&audits);
    registry
        .task(CHARGE, |charge: Charge, _cx| async move {
            if charge.cents < 0 {
                return Err(ChargeError::Declined {
                    reason: "negative amount".to_owned(),
                }
                .into());
            }
            if charge.cents == 0 {
                return Err(TaskFailure::internal("database password is hunter2"));
            }
            Ok(Receipt {
                id: format!("r-{}", charge.cents),
                cents: charge.cents,
            })
        })
        .task(WHOAMI, |(), cx| async move {
            Ok(cx.context().get("tenant").map(str::to_owned))
        })
        .task(AUDITS, move |(), _cx| {
            let audits = Arc::clone(&audits);
            async move { Ok(audits.load(Ordering::SeqCst)) }
        })
        .task(LOCAL_ONLY, |(), _cx| async move { Ok(()) })
        .on(AUDIT, "count", move |_line, _cx| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
}
