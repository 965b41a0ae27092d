//! Auth errors, each with a stable id.

use thiserror::Error;

/// Why a lane token was refused. Every reason has the id `lanes-auth-unauthorized`; the reason is
/// logged by the consumer and never sent back to a remote caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// The lane requires a token and none came.
    MissingToken,
    /// The token is not a well-formed JWT with lane claims.
    Malformed,
    /// The token's algorithm is not the lane's.
    AlgorithmNotAllowed,
    /// The token names a key id (`kid`) this consumer does not know.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// The token was signed for another lane.
    LaneMismatch,
    /// The token was signed for a task and presented for an event, or the reverse.
    KindMismatch,
    /// The token was signed for another task or event.
    TargetMismatch,
    /// The payload is not the one that was signed (tampered, or the token was replayed with
    /// another body).
    PayloadHashMismatch,
    /// The forwarded context is not the one that was signed.
    ContextMismatch,
    /// The token had expired (when the call arrived, or when the event was enqueued).
    Expired,
    /// The token claims to be issued later than it arrived.
    IssuedInFuture,
    /// A queued event is older than the lane's max message age.
    MessageTooOld,
    /// The token id was already used (replay protection).
    Replayed,
    /// The token's lifetime (`exp - iat`) is longer than the lane accepts for a call (see
    /// [`crate::LaneAuth::max_token_lifetime`]).
    LifetimeTooLong,
}

impl Unauthorized {
    /// A short description.
    pub fn as_str(self) -> &'static str {
        match self {
            Unauthorized::MissingToken => "missing lane token",
            Unauthorized::Malformed => "malformed lane token",
            Unauthorized::AlgorithmNotAllowed => "token algorithm not allowed on this lane",
            Unauthorized::UnknownKey => "token key id unknown",
            Unauthorized::BadSignature => "invalid token signature",
            Unauthorized::LaneMismatch => "token lane claim mismatch",
            Unauthorized::KindMismatch => "token kind claim mismatch",
            Unauthorized::TargetMismatch => "token target claim mismatch",
            Unauthorized::PayloadHashMismatch => "token payload hash mismatch",
            Unauthorized::ContextMismatch => "token context hash mismatch",
            Unauthorized::Expired => "token expired",
            Unauthorized::IssuedInFuture => "token issued in the future",
            Unauthorized::MessageTooOld => "message older than the lane's max message age",
            Unauthorized::Replayed => "token already used",
            Unauthorized::LifetimeTooLong => "token lifetime longer than the lane accepts",
        }
    }
}

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lane auth failure.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuthError {
    /// This process must sign for the lane but holds no signing material (for example only a
    /// public key).
    #[error(
        "lane \"{lane}\" requires {mode} signing material to produce, but no signer is configured"
    )]
    SignerMissing {
        /// The lane.
        lane: String,
        /// The auth scheme.
        mode: &'static str,
    },
    /// This process must verify for the lane but holds no verifying material (for example only
    /// a private key).
    #[error(
        "lane \"{lane}\" requires {mode} verification material to consume, but no verifier is configured"
    )]
    VerifierMissing {
        /// The lane.
        lane: String,
        /// The auth scheme.
        mode: &'static str,
    },
    /// A token was refused.
    #[error("lane \"{lane}\": unauthorized ({reason})")]
    Unauthorized {
        /// The lane.
        lane: String,
        /// Why.
        reason: Unauthorized,
    },
    /// Replay protection is on and its guard already holds as many unexpired token ids as it
    /// may; the call is refused (it did not run) rather than forgetting an unexpired id, which
    /// would allow that token to be replayed. Retry later with a fresh token, or raise
    /// [`crate::ExposureConfig::replay_capacity`].
    #[error(
        "lane \"{lane}\": the replay guard is full ({capacity} unexpired token ids); the call was refused, retry later or raise the exposure's replay capacity"
    )]
    ReplayGuardFull {
        /// The lane.
        lane: String,
        /// The guard's capacity.
        capacity: usize,
    },
    /// Signing failed (a key the backend cannot use).
    #[error("signing a lane token failed: {0}")]
    Signing(String),
}

impl AuthError {
    pub(crate) fn unauthorized(lane: &str, reason: Unauthorized) -> Self {
        AuthError::Unauthorized {
            lane: lane.to_owned(),
            reason,
        }
    }

    /// The stable id of the error.
    pub fn id(&self) -> &'static str {
        match self {
            AuthError::SignerMissing { .. } => "lanes-auth-signer-missing",
            AuthError::VerifierMissing { .. } => "lanes-auth-verifier-missing",
            AuthError::Unauthorized { .. } => "lanes-auth-unauthorized",
            AuthError::ReplayGuardFull { .. } => "lanes-replay-guard-full",
            AuthError::Signing(_) => "lanes-auth-signing-failed",
        }
    }

    /// The refusal reason, for [`AuthError::Unauthorized`].
    pub fn reason(&self) -> Option<Unauthorized> {
        match self {
            AuthError::Unauthorized { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// Bad key material given to [`crate::LaneAuth`].
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KeyError {
    /// The HMAC secret is too short.
    #[error("HMAC secret is {len} bytes; at least {min} are required")]
    WeakSecret {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A PEM key did not parse for the scheme's algorithm.
    #[error("key does not parse: {0}")]
    Pem(String),
    /// Asymmetric keys were given to a scheme that is not asymmetric.
    #[error("private and public keys only apply to the asymmetric schemes (EdDSA, ES256)")]
    NotAsymmetric,
}
