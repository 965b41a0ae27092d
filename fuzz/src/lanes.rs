//! Lane JWTs and queued envelopes: tokens as a consumer verifies them (RPC calls and queued
//! events), call contexts as they arrive in JSON, and envelopes as a queue's storage hands them
//! back.

use std::sync::LazyLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use shoal_lanes::{
    CallContext, Envelope, LaneAuth, LaneClaims, StoredEnvelope, Subject, TargetKind, payload_hash,
};

const HMAC_SECRET: &[u8] = b"fuzzing-secret-of-at-least-32-bytes!";
const ED25519_PRIVATE: &[u8] =
    include_bytes!("../../crates/shoal-lanes/tests/keys/ed25519-private.pem");
const ED25519_PUBLIC: &[u8] =
    include_bytes!("../../crates/shoal-lanes/tests/keys/ed25519-public.pem");
const P256_PRIVATE: &[u8] = include_bytes!("../../crates/shoal-lanes/tests/keys/p256-private.pem");
const P256_PUBLIC: &[u8] = include_bytes!("../../crates/shoal-lanes/tests/keys/p256-public.pem");

/// Year 2100, in Unix seconds: the round trips use times a clock can show.
const LATEST: i64 = 4_102_444_800;

/// One auth per scheme, each able to sign and verify (keys are parsed once): HMAC, EdDSA, ES256.
static AUTHS: LazyLock<[LaneAuth; 3]> = LazyLock::new(|| {
    [
        LaneAuth::hmac(HMAC_SECRET).expect("a long secret"),
        LaneAuth::eddsa()
            .with_private_key_pem(ED25519_PRIVATE)
            .and_then(|a| a.with_public_key_pem(ED25519_PUBLIC))
            .expect("the Ed25519 test keys"),
        LaneAuth::es256()
            .with_private_key_pem(P256_PRIVATE)
            .and_then(|a| a.with_public_key_pem(P256_PUBLIC))
            .expect("the P-256 test keys"),
    ]
});

/// The fixed subject of the asymmetric tokens.
const FIXED: (&str, &str, &[u8]) = ("orders", "orders:created", b"{\"id\":1}");

/// One token per asymmetric scheme for the fixed subject at [`FIXED_NOW`], signed and verified
/// once: their signatures cost milliseconds in this build, so inputs only tamper with them.
static SIGNED: LazyLock<[String; 2]> = LazyLock::new(|| {
    let context = CallContext::new();
    let subject = fixed_subject(&context);
    [1, 2].map(|i| {
        let token = AUTHS[i]
            .sign_at(&subject, FIXED_NOW)
            .expect("signing works")
            .expect("a token");
        AUTHS[i]
            .verify_call_at(Some(&token), &subject, FIXED_NOW)
            .expect("our own asymmetric token verifies");
        token
    })
});

const FIXED_NOW: i64 = 1_800_000_000;

fn fixed_subject(context: &CallContext) -> Subject<'_> {
    Subject {
        lane: FIXED.0,
        kind: TargetKind::Event,
        target: FIXED.1,
        payload: FIXED.2,
        context,
    }
}

/// `token` with the byte at `at` replaced by `byte`, when that makes another string.
fn tamper(token: &str, at: usize, byte: u8) -> Option<String> {
    let mut bytes = token.as_bytes().to_vec();
    *bytes.get_mut(at)? = byte;
    String::from_utf8(bytes).ok().filter(|t| t != token)
}

/// The claims a verifier accepted are about `subject` and within its time rules at `now`.
fn accepted_claims_fit(claims: &LaneClaims, subject: &Subject<'_>) {
    assert_eq!(claims.lane, subject.lane);
    assert_eq!(claims.kind, subject.kind);
    assert_eq!(claims.target, subject.target);
    assert_eq!(claims.hash, payload_hash(subject.payload));
}

/// A context read from JSON writes back to JSON that reads the same.
fn check_context(text: &str) -> CallContext {
    let Some(context) = CallContext::from_json(text) else {
        return CallContext::new();
    };
    let json = context.to_json();
    assert_eq!(CallContext::from_json(&json).as_ref(), Some(&context));
    context
}

fn check_inner(u: &mut Unstructured<'_>) -> Result<()> {
    let [hmac, eddsa, es256] = &*AUTHS;
    let lane: &str = u.arbitrary()?;
    let kind = if u.arbitrary()? {
        TargetKind::Task
    } else {
        TargetKind::Event
    };
    let target: &str = u.arbitrary()?;
    let payload: &[u8] = u.arbitrary()?;
    let context = check_context(u.arbitrary()?);
    let now = u.int_in_range(0..=LATEST)?;
    let subject = Subject {
        lane,
        kind,
        target,
        payload,
        context: &context,
    };

    // A token signed for the subject verifies, for a call and for a queued event.
    let auth = hmac;
    let token = auth
        .sign_at(&subject, now)
        .expect("signing works")
        .expect("a token");
    let claims = auth
        .verify_call_at(Some(&token), &subject, now)
        .unwrap_or_else(|e| panic!("our own token is refused: {e}"))
        .expect("claims");
    accepted_claims_fit(&claims, &subject);
    let now_ms = now * 1000;
    auth.verify_queued(Some(&token), &subject, now_ms, now_ms)
        .unwrap_or_else(|e| panic!("our own queued token is refused: {e}"));

    // Any change to the token is refused; an HMAC token is refused by the asymmetric verifiers
    // (no algorithm confusion).
    let at = u.choose_index(token.len())?;
    let byte: u8 = u.arbitrary()?;
    if let Some(tampered) = tamper(&token, at, byte) {
        assert!(
            auth.verify_call_at(Some(&tampered), &subject, now).is_err(),
            "a tampered token was accepted: {tampered}"
        );
    }
    for other in [eddsa, es256] {
        assert!(other.verify_call_at(Some(&token), &subject, now).is_err());
    }
    // Now and then, the same for a signed asymmetric token.
    if u.ratio(1u8, 16)? {
        let which = usize::from(u.arbitrary::<bool>()?);
        let signed = &SIGNED[which];
        let context = CallContext::new();
        let fixed = fixed_subject(&context);
        let at = u.choose_index(signed.len())?;
        if let Some(tampered) = tamper(signed, at, u.arbitrary()?) {
            assert!(
                AUTHS[which + 1]
                    .verify_call_at(Some(&tampered), &fixed, FIXED_NOW)
                    .is_err(),
                "a tampered asymmetric token was accepted: {tampered}"
            );
        }
    }

    // A token from the input, checked at any time: whatever is accepted fits the subject.
    let raw: &str = u.arbitrary()?;
    let raw_now: i64 = u.arbitrary()?;
    for verifier in [hmac, eddsa, es256] {
        if let Ok(Some(claims)) = verifier.verify_call_at(Some(raw), &subject, raw_now) {
            accepted_claims_fit(&claims, &subject);
        }
    }

    // A stored envelope, read as the Postgres queue does, then checked as the consumer does.
    let stored = StoredEnvelope {
        id: u.arbitrary()?,
        lane: lane.to_owned(),
        event: target.to_owned(),
        payload: payload.to_vec(),
        source: u.arbitrary()?,
        context: u.arbitrary()?,
        auth_token: if u.arbitrary()? {
            Some(token.clone())
        } else {
            u.arbitrary()?
        },
        created_at_ms: u.arbitrary()?,
        attempts: u.arbitrary()?,
    };
    let envelope = Envelope::from(stored.clone());
    assert_eq!(envelope.id.parse::<i64>().ok(), Some(stored.id));
    assert_eq!(
        i64::from(envelope.attempts),
        i64::from(stored.attempts.max(0))
    );
    let queued_subject = Subject {
        lane: &envelope.lane,
        kind: TargetKind::Event,
        target: &envelope.event,
        payload: &envelope.payload,
        context: &envelope.context,
    };
    let now_ms: i64 = u.arbitrary()?;
    if let Ok(Some(claims)) = auth.verify_queued(
        envelope.auth_token.as_deref(),
        &queued_subject,
        envelope.created_at_ms,
        now_ms,
    ) {
        accepted_claims_fit(&claims, &queued_subject);
    }
    Ok(())
}

/// Signs, verifies and tampers with tokens, and reads contexts and envelopes, from `data`.
pub fn check(data: &[u8]) {
    let _ = check_inner(&mut Unstructured::new(data));
}
