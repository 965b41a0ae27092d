//! The claims of a lane token and what they are bound to.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::Unauthorized;
use crate::context::CallContext;

/// What a token authorizes: running a task or emitting an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A task (RPC lanes).
    Task,
    /// An event (event lanes, or events routed over an RPC lane).
    Event,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Task => "task",
            TargetKind::Event => "event",
        })
    }
}

/// What a token is about: signed by producers, checked by consumers.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The lane id.
    pub lane: &'a str,
    /// Task or event.
    pub kind: TargetKind,
    /// The task or event id.
    pub target: &'a str,
    /// The serialized payload (task input or event payload), byte for byte as sent.
    pub payload: &'a [u8],
    /// The forwarded context (after filtering by the lane's allowed keys).
    pub context: &'a CallContext,
}

/// `base64url(sha256(payload))`, without padding.
pub fn payload_hash(payload: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(payload))
}

/// `base64url(sha256(context JSON))` of a non-empty context; `None` for an empty one.
pub fn context_hash(context: &CallContext) -> Option<String> {
    (!context.is_empty()).then(|| payload_hash(context.to_json().as_bytes()))
}

/// The claims of a lane JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneClaims {
    /// The lane id.
    pub lane: String,
    /// Task or event.
    pub kind: TargetKind,
    /// The task or event id.
    pub target: String,
    /// [`payload_hash`] of the serialized payload.
    pub hash: String,
    /// [`context_hash`] of the forwarded context, when one is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// A unique token id (random, 128 bits), for replay protection.
    pub jti: String,
}

impl LaneClaims {
    pub(crate) fn for_subject(subject: &Subject<'_>, iat: i64, exp: i64) -> Self {
        LaneClaims {
            lane: subject.lane.to_owned(),
            kind: subject.kind,
            target: subject.target.to_owned(),
            hash: payload_hash(subject.payload),
            ctx: context_hash(subject.context),
            iat,
            exp,
            jti: format!("{:032x}", rand::random::<u128>()),
        }
    }

    pub(crate) fn check_subject(&self, subject: &Subject<'_>) -> Result<(), Unauthorized> {
        if self.lane != subject.lane {
            return Err(Unauthorized::LaneMismatch);
        }
        if self.kind != subject.kind {
            return Err(Unauthorized::KindMismatch);
        }
        if self.target != subject.target {
            return Err(Unauthorized::TargetMismatch);
        }
        if !constant_time_eq(
            self.hash.as_bytes(),
            payload_hash(subject.payload).as_bytes(),
        ) {
            return Err(Unauthorized::PayloadHashMismatch);
        }
        if self.ctx != context_hash(subject.context) {
            return Err(Unauthorized::ContextMismatch);
        }
        Ok(())
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
