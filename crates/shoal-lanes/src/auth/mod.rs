//! Lane JWTs: who may put a task call or an event on a lane.
//!
//! A producer signs one token per call or event, bound to the lane, the kind of target (`task` or
//! `event`), the target id, a SHA-256 of the serialized payload and, when context is forwarded, a
//! SHA-256 of the context. A consumer verifies all of it. Three schemes: none, HMAC (HS256) and
//! asymmetric (EdDSA, or ES256 in the standard JOSE `r‖s` signature format), where producers
//! hold the private key and consumers only the public key.

mod claims;
mod error;
mod replay;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};

pub(crate) use claims::constant_time_eq as claims_constant_time_eq;
pub use claims::{LaneClaims, Subject, TargetKind, context_hash, payload_hash};
pub use error::{AuthError, KeyError, Unauthorized};
pub use replay::DEFAULT_REPLAY_CAPACITY;
pub(crate) use replay::{ReplayGuard, ReplayRefusal};

/// Signature algorithms a lane can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC with SHA-256: one shared secret signs and verifies.
    Hs256,
    /// Ed25519 signatures: the private key signs, the public key verifies.
    EdDsa,
    /// ECDSA on P-256 with SHA-256, signature in the JOSE `r‖s` form (64 bytes).
    Es256,
}

impl Algorithm {
    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

#[derive(Clone)]
enum Scheme {
    None,
    Hmac {
        encoding: EncodingKey,
        decoding: DecodingKey,
    },
    Asymmetric {
        algorithm: Algorithm,
        signer: Option<(EncodingKey, Option<String>)>,
        verifiers: Vec<(Option<String>, DecodingKey)>,
    },
}

/// The longest lifetime (`exp - iat`) of a call token accepted by default: one hour.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Shortest HMAC secret accepted, in bytes (the output size of SHA-256).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// The auth of one lane binding: scheme, key material, token lifetime and clock tolerance.
///
/// ```
/// use std::time::Duration;
/// use shoal_lanes::LaneAuth;
///
/// let auth = LaneAuth::hmac(b"0123456789abcdef0123456789abcdef")?
///     .ttl(Duration::from_secs(30))
///     .clock_skew(Duration::from_secs(5));
/// assert!(auth.can_sign() && auth.can_verify());
/// # Ok::<(), shoal_lanes::KeyError>(())
/// ```
#[derive(Clone)]
pub struct LaneAuth {
    scheme: Scheme,
    ttl: Duration,
    clock_skew: Duration,
    max_message_age: Duration,
    max_token_lifetime: Duration,
}

impl fmt::Debug for LaneAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints key material.
        f.debug_struct("LaneAuth")
            .field("mode", &self.mode_name())
            .field("can_sign", &self.can_sign())
            .field("can_verify", &self.can_verify())
            .field("ttl", &self.ttl)
            .field("clock_skew", &self.clock_skew)
            .field("max_message_age", &self.max_message_age)
            .field("max_token_lifetime", &self.max_token_lifetime)
            .finish()
    }
}

impl Default for LaneAuth {
    fn default() -> Self {
        Self::none()
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl LaneAuth {
    fn with_scheme(scheme: Scheme) -> Self {
        LaneAuth {
            scheme,
            ttl: Duration::from_secs(60),
            clock_skew: Duration::from_secs(30),
            max_message_age: Duration::from_secs(7 * 24 * 3600),
            max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }

    /// No tokens: nothing is signed or checked.
    pub fn none() -> Self {
        Self::with_scheme(Scheme::None)
    }

    /// HS256 with a shared secret of at least [`MIN_HMAC_SECRET_LEN`] bytes (both signs and
    /// verifies).
    pub fn hmac(secret: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(KeyError::WeakSecret {
                len: secret.len(),
                min: MIN_HMAC_SECRET_LEN,
            });
        }
        Ok(Self::with_scheme(Scheme::Hmac {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }))
    }

    /// EdDSA (Ed25519) without keys yet: add a private key to produce, public keys to consume.
    pub fn eddsa() -> Self {
        Self::asymmetric(Algorithm::EdDsa)
    }

    /// ES256 (P-256) without keys yet: add a private key to produce, public keys to consume.
    pub fn es256() -> Self {
        Self::asymmetric(Algorithm::Es256)
    }

    fn asymmetric(algorithm: Algorithm) -> Self {
        Self::with_scheme(Scheme::Asymmetric {
            algorithm,
            signer: None,
            verifiers: Vec::new(),
        })
    }

    /// Adds the signing key (a PKCS#8 PEM private key) of an asymmetric scheme.
    pub fn with_private_key_pem(mut self, pem: &[u8]) -> Result<Self, KeyError> {
        let Scheme::Asymmetric {
            algorithm, signer, ..
        } = &mut self.scheme
        else {
            return Err(KeyError::NotAsymmetric);
        };
        let key = match algorithm {
            Algorithm::EdDsa => EncodingKey::from_ed_pem(pem),
            Algorithm::Es256 => EncodingKey::from_ec_pem(pem),
            Algorithm::Hs256 => return Err(KeyError::NotAsymmetric),
        }
        .map_err(|e| KeyError::Pem(e.to_string()))?;
        let kid = signer.take().and_then(|(_, kid)| kid);
        *signer = Some((key, kid));
        Ok(self)
    }

    /// Sets the `kid` header of the tokens this auth signs (so consumers can pick the right key
    /// during a rotation). Call after [`LaneAuth::with_private_key_pem`].
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        if let Scheme::Asymmetric {
            signer: Some((_, slot)),
            ..
        } = &mut self.scheme
        {
            *slot = Some(kid.into());
        }
        self
    }

    /// Adds a verifying key (an SPKI PEM public key) of an asymmetric scheme, used for tokens
    /// without a `kid` (and as the fallback).
    pub fn with_public_key_pem(self, pem: &[u8]) -> Result<Self, KeyError> {
        self.add_public_key(None, pem)
    }

    /// Adds a verifying key for tokens whose header names `kid`.
    pub fn with_public_key_pem_for_kid(
        self,
        kid: impl Into<String>,
        pem: &[u8],
    ) -> Result<Self, KeyError> {
        self.add_public_key(Some(kid.into()), pem)
    }

    fn add_public_key(mut self, kid: Option<String>, pem: &[u8]) -> Result<Self, KeyError> {
        let Scheme::Asymmetric {
            algorithm,
            verifiers,
            ..
        } = &mut self.scheme
        else {
            return Err(KeyError::NotAsymmetric);
        };
        let key = match algorithm {
            Algorithm::EdDsa => DecodingKey::from_ed_pem(pem),
            Algorithm::Es256 => DecodingKey::from_ec_pem(pem),
            Algorithm::Hs256 => return Err(KeyError::NotAsymmetric),
        }
        .map_err(|e| KeyError::Pem(e.to_string()))?;
        verifiers.push((kid, key));
        Ok(self)
    }

    /// How long a token is valid after it is signed (default 60 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Tolerated clock difference between producer and consumer (default 30 s).
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    /// The oldest queued event a consumer accepts (default 7 days). Queued events are checked
    /// against the time they were enqueued, not the time they are consumed, so a backlog longer
    /// than the token TTL is still delivered; this bound keeps an old message from being valid
    /// forever.
    pub fn max_message_age(mut self, age: Duration) -> Self {
        self.max_message_age = age;
        self
    }

    /// The longest lifetime (`exp - iat`) a call token may claim on an RPC lane (default
    /// [`DEFAULT_MAX_TOKEN_LIFETIME`], one hour); a longer one is refused as
    /// [`Unauthorized::LifetimeTooLong`]. The bound in force is never shorter than this auth's
    /// own [`LaneAuth::ttl`], so a consumer accepts tokens minted with its own settings. It keeps
    /// a token with an absurd `exp` from being valid (and remembered by the replay guard) for
    /// ever. Queued events are bounded by [`LaneAuth::max_message_age`] instead.
    pub fn max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_token_lifetime = lifetime;
        self
    }

    /// The scheme's name: `none`, `hmac` or `asymmetric`.
    pub fn mode_name(&self) -> &'static str {
        match self.scheme {
            Scheme::None => "none",
            Scheme::Hmac { .. } => "hmac",
            Scheme::Asymmetric { .. } => "asymmetric",
        }
    }

    /// Whether tokens are used at all.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.scheme, Scheme::None)
    }

    /// Whether this auth can sign (always true for none and HMAC).
    pub fn can_sign(&self) -> bool {
        match &self.scheme {
            Scheme::None | Scheme::Hmac { .. } => true,
            Scheme::Asymmetric { signer, .. } => signer.is_some(),
        }
    }

    /// Whether this auth can verify (always true for none and HMAC).
    pub fn can_verify(&self) -> bool {
        match &self.scheme {
            Scheme::None | Scheme::Hmac { .. } => true,
            Scheme::Asymmetric { verifiers, .. } => !verifiers.is_empty(),
        }
    }

    pub(crate) fn skew_secs(&self) -> i64 {
        secs(self.clock_skew)
    }

    /// The configured token lifetime.
    pub fn token_ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs a token for `subject` now; `None` when the scheme is none.
    pub fn sign(&self, subject: &Subject<'_>) -> Result<Option<String>, AuthError> {
        self.sign_at(subject, now_millis() / 1000)
    }

    /// Signs a token for `subject` as of `now` (Unix seconds).
    pub fn sign_at(&self, subject: &Subject<'_>, now: i64) -> Result<Option<String>, AuthError> {
        let (header, key) = match &self.scheme {
            Scheme::None => return Ok(None),
            Scheme::Hmac { encoding, .. } => (Header::new(Algorithm::Hs256.jwt()), encoding),
            Scheme::Asymmetric {
                algorithm,
                signer: Some((key, kid)),
                ..
            } => {
                let mut header = Header::new(algorithm.jwt());
                header.kid.clone_from(kid);
                (header, key)
            }
            Scheme::Asymmetric { signer: None, .. } => {
                return Err(AuthError::SignerMissing {
                    lane: subject.lane.to_owned(),
                    mode: self.mode_name(),
                });
            }
        };
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = LaneClaims::for_subject(subject, now, now.saturating_add(ttl));
        jsonwebtoken::encode(&header, &claims, key)
            .map(Some)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Verifies the token of a synchronous call (an RPC lane) against the current time.
    pub fn verify_call(
        &self,
        token: Option<&str>,
        subject: &Subject<'_>,
    ) -> Result<Option<LaneClaims>, AuthError> {
        self.verify_call_at(token, subject, now_millis() / 1000)
    }

    /// Verifies the token of a synchronous call as of `now` (Unix seconds).
    pub fn verify_call_at(
        &self,
        token: Option<&str>,
        subject: &Subject<'_>,
        now: i64,
    ) -> Result<Option<LaneClaims>, AuthError> {
        let Some(claims) = self.verify_signature_and_subject(token, subject)? else {
            return Ok(None);
        };
        let skew = secs(self.clock_skew);
        let unauthorized = |reason| Err(AuthError::unauthorized(subject.lane, reason));
        if claims.exp.saturating_add(skew) < now {
            return unauthorized(Unauthorized::Expired);
        }
        if claims.iat > now.saturating_add(skew) {
            return unauthorized(Unauthorized::IssuedInFuture);
        }
        let max_lifetime = secs(self.max_token_lifetime).max(secs(self.ttl));
        if claims.exp.saturating_sub(claims.iat) > max_lifetime {
            return unauthorized(Unauthorized::LifetimeTooLong);
        }
        Ok(Some(claims))
    }

    /// Verifies the token of a queued event. The token must have been valid when the message was
    /// enqueued (`enqueued_at_ms`, set by the queue), and the message must be younger than the
    /// max message age; a backlog longer than the TTL is therefore accepted, while an altered,
    /// forged or ancient message is refused.
    pub fn verify_queued(
        &self,
        token: Option<&str>,
        subject: &Subject<'_>,
        enqueued_at_ms: i64,
        now_ms: i64,
    ) -> Result<Option<LaneClaims>, AuthError> {
        let Some(claims) = self.verify_signature_and_subject(token, subject)? else {
            return Ok(None);
        };
        let skew = secs(self.clock_skew);
        let enqueued = enqueued_at_ms.div_euclid(1000);
        let now = now_ms.div_euclid(1000);
        let unauthorized = |reason| Err(AuthError::unauthorized(subject.lane, reason));
        if claims.exp.saturating_add(skew) < enqueued {
            return unauthorized(Unauthorized::Expired);
        }
        if claims.iat > enqueued.saturating_add(skew) || claims.iat > now.saturating_add(skew) {
            return unauthorized(Unauthorized::IssuedInFuture);
        }
        let max_age = i64::try_from(self.max_message_age.as_millis()).unwrap_or(i64::MAX);
        if now_ms.saturating_sub(enqueued_at_ms) > max_age
            || now.saturating_sub(claims.iat) > secs(self.max_message_age) + secs(self.ttl) + skew
        {
            return unauthorized(Unauthorized::MessageTooOld);
        }
        Ok(Some(claims))
    }

    /// Signature, algorithm, key and subject checks (no time checks).
    fn verify_signature_and_subject(
        &self,
        token: Option<&str>,
        subject: &Subject<'_>,
    ) -> Result<Option<LaneClaims>, AuthError> {
        let lane = subject.lane;
        let unauthorized = |reason| AuthError::unauthorized(lane, reason);
        let (algorithm, key) = match &self.scheme {
            Scheme::None => return Ok(None),
            Scheme::Hmac { decoding, .. } => (Algorithm::Hs256, decoding),
            Scheme::Asymmetric {
                algorithm,
                verifiers,
                ..
            } => {
                if verifiers.is_empty() {
                    return Err(AuthError::VerifierMissing {
                        lane: lane.to_owned(),
                        mode: self.mode_name(),
                    });
                }
                let Some(token) = token else {
                    return Err(unauthorized(Unauthorized::MissingToken));
                };
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| unauthorized(Unauthorized::Malformed))?;
                let key = match &header.kid {
                    Some(kid) => verifiers
                        .iter()
                        .find(|(k, _)| k.as_deref() == Some(kid.as_str()))
                        .or_else(|| verifiers.iter().find(|(k, _)| k.is_none())),
                    None => verifiers
                        .iter()
                        .find(|(k, _)| k.is_none())
                        .or_else(|| verifiers.first()),
                };
                let Some((_, key)) = key else {
                    return Err(unauthorized(Unauthorized::UnknownKey));
                };
                (*algorithm, key)
            }
        };
        let Some(token) = token else {
            return Err(unauthorized(Unauthorized::MissingToken));
        };
        let mut validation = Validation::new(algorithm.jwt());
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<LaneClaims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            unauthorized(match e.kind() {
                ErrorKind::InvalidSignature => Unauthorized::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    Unauthorized::AlgorithmNotAllowed
                }
                _ => Unauthorized::Malformed,
            })
        })?;
        let claims = data.claims;
        claims.check_subject(subject).map_err(unauthorized)?;
        Ok(Some(claims))
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Process-wide crypto backend choice for `jsonwebtoken`: installs the RustCrypto provider unless
/// another one is already installed (which keeps working if another crate in the build enables
/// the `aws_lc_rs` feature too).
pub(crate) fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

pub(crate) fn now_ms() -> i64 {
    now_millis()
}
