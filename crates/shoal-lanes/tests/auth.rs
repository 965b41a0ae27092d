//! Lane token primitives (scenario 26) and the refusals the brief lists, each with its typed error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::{ED_PRIVATE, ED_PUBLIC, HMAC_SECRET, OTHER_ED_PUBLIC, P256_PRIVATE, P256_PUBLIC};
use shoal_lanes::*;

const NOW: i64 = 1_800_000_000;

fn subject<'a>(payload: &'a [u8], context: &'a CallContext) -> Subject<'a> {
    Subject {
        lane: "billing",
        kind: TargetKind::Task,
        target: "billing:charge",
        payload,
        context,
    }
}

fn reason(result: Result<Option<LaneClaims>, AuthError>) -> Unauthorized {
    let err = result.unwrap_err();
    assert_eq!(err.id(), "lanes-auth-unauthorized");
    err.reason().unwrap()
}

fn all_schemes() -> Vec<(&'static str, LaneAuth)> {
    vec![
        ("hmac", LaneAuth::hmac(HMAC_SECRET).unwrap()),
        (
            "eddsa",
            LaneAuth::eddsa()
                .with_private_key_pem(ED_PRIVATE)
                .unwrap()
                .with_public_key_pem(ED_PUBLIC)
                .unwrap(),
        ),
        (
            "es256",
            LaneAuth::es256()
                .with_private_key_pem(P256_PRIVATE)
                .unwrap()
                .with_public_key_pem(P256_PUBLIC)
                .unwrap(),
        ),
    ]
}

/// Scenario 26: issue and verify; target, kind and hash enforced; verifiable repeatedly.
#[test]
fn token_primitives() {
    let cx = CallContext::new();
    for (name, auth) in all_schemes() {
        let token = auth
            .sign_at(&subject(b"{\"cents\":5}", &cx), NOW)
            .unwrap()
            .unwrap();
        let claims = auth
            .verify_call_at(Some(&token), &subject(b"{\"cents\":5}", &cx), NOW)
            .unwrap()
            .unwrap();
        assert_eq!(claims.lane, "billing", "{name}");
        assert_eq!(claims.kind, TargetKind::Task);
        assert_eq!(claims.target, "billing:charge");
        assert_eq!(claims.hash, payload_hash(b"{\"cents\":5}"));
        assert_eq!((claims.iat, claims.exp), (NOW, NOW + 60));
        assert_eq!(claims.jti.len(), 32);
        assert_eq!(claims.ctx, None);
        // No replay cache at this level: the same token verifies again while valid.
        assert!(
            auth.verify_call_at(Some(&token), &subject(b"{\"cents\":5}", &cx), NOW + 10)
                .is_ok()
        );

        // Tampered payload.
        assert_eq!(
            reason(auth.verify_call_at(Some(&token), &subject(b"{\"cents\":500}", &cx), NOW)),
            Unauthorized::PayloadHashMismatch
        );
        // Wrong lane.
        let other_lane = Subject {
            lane: "refunds",
            ..subject(b"{\"cents\":5}", &cx)
        };
        assert_eq!(
            reason(auth.verify_call_at(Some(&token), &other_lane, NOW)),
            Unauthorized::LaneMismatch
        );
        // Wrong target.
        let other_target = Subject {
            target: "billing:refund",
            ..subject(b"{\"cents\":5}", &cx)
        };
        assert_eq!(
            reason(auth.verify_call_at(Some(&token), &other_target, NOW)),
            Unauthorized::TargetMismatch
        );
        // Wrong kind.
        let as_event = Subject {
            kind: TargetKind::Event,
            ..subject(b"{\"cents\":5}", &cx)
        };
        assert_eq!(
            reason(auth.verify_call_at(Some(&token), &as_event, NOW)),
            Unauthorized::KindMismatch
        );
        // Context added after signing.
        let tenant = CallContext::new().with("tenant", "acme");
        assert_eq!(
            reason(auth.verify_call_at(Some(&token), &subject(b"{\"cents\":5}", &tenant), NOW)),
            Unauthorized::ContextMismatch
        );
        // Expired (past TTL + skew), issued in the future.
        assert_eq!(
            reason(auth.verify_call_at(
                Some(&token),
                &subject(b"{\"cents\":5}", &cx),
                NOW + 60 + 31
            )),
            Unauthorized::Expired
        );
        assert!(
            auth.verify_call_at(Some(&token), &subject(b"{\"cents\":5}", &cx), NOW + 60 + 29)
                .is_ok(),
            "within the skew"
        );
        assert_eq!(
            reason(auth.verify_call_at(Some(&token), &subject(b"{\"cents\":5}", &cx), NOW - 31)),
            Unauthorized::IssuedInFuture
        );
        // Missing and malformed tokens.
        assert_eq!(
            reason(auth.verify_call_at(None, &subject(b"{\"cents\":5}", &cx), NOW)),
            Unauthorized::MissingToken
        );
        assert_eq!(
            reason(auth.verify_call_at(Some("no"), &subject(b"{\"cents\":5}", &cx), NOW)),
            Unauthorized::Malformed
        );
        // A flipped signature byte.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(
            matches!(
                reason(auth.verify_call_at(Some(&forged), &subject(b"{\"cents\":5}", &cx), NOW)),
                Unauthorized::BadSignature | Unauthorized::Malformed
            ),
            "{name}"
        );
    }
}

#[test]
fn the_context_is_bound_to_the_token() {
    let auth = LaneAuth::hmac(HMAC_SECRET).unwrap();
    let tenant = CallContext::new().with("tenant", "acme");
    let token = auth.sign_at(&subject(b"1", &tenant), NOW).unwrap().unwrap();
    let claims = auth
        .verify_call_at(Some(&token), &subject(b"1", &tenant), NOW)
        .unwrap()
        .unwrap();
    assert_eq!(claims.ctx, context_hash(&tenant));
    let evil = CallContext::new().with("tenant", "evil");
    assert_eq!(
        reason(auth.verify_call_at(Some(&token), &subject(b"1", &evil), NOW)),
        Unauthorized::ContextMismatch
    );
    assert_eq!(
        reason(auth.verify_call_at(Some(&token), &subject(b"1", &CallContext::new()), NOW)),
        Unauthorized::ContextMismatch
    );
}

#[test]
fn mode_none_issues_nothing_and_checks_nothing() {
    let auth = LaneAuth::none();
    let cx = CallContext::new();
    assert_eq!(auth.sign_at(&subject(b"1", &cx), NOW).unwrap(), None);
    assert_eq!(
        auth.verify_call_at(None, &subject(b"1", &cx), NOW).unwrap(),
        None
    );
    assert_eq!(
        auth.verify_call_at(Some("garbage"), &subject(b"1", &cx), NOW)
            .unwrap(),
        None
    );
}

#[test]
fn algorithm_and_key_checks_are_enforced() {
    let cx = CallContext::new();
    let hmac = LaneAuth::hmac(HMAC_SECRET).unwrap();
    let ed = LaneAuth::eddsa()
        .with_private_key_pem(ED_PRIVATE)
        .unwrap()
        .with_public_key_pem(ED_PUBLIC)
        .unwrap();
    let es = LaneAuth::es256()
        .with_private_key_pem(P256_PRIVATE)
        .unwrap()
        .with_public_key_pem(P256_PUBLIC)
        .unwrap();
    let hs_token = hmac.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    let ed_token = ed.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    // An HS256 token on an EdDSA lane (the classic alg-confusion attempt) and the reverse.
    assert_eq!(
        reason(ed.verify_call_at(Some(&hs_token), &subject(b"1", &cx), NOW)),
        Unauthorized::AlgorithmNotAllowed
    );
    assert_eq!(
        reason(hmac.verify_call_at(Some(&ed_token), &subject(b"1", &cx), NOW)),
        Unauthorized::AlgorithmNotAllowed
    );
    assert_eq!(
        reason(es.verify_call_at(Some(&ed_token), &subject(b"1", &cx), NOW)),
        Unauthorized::AlgorithmNotAllowed
    );
    // Another HMAC secret.
    let other = LaneAuth::hmac(b"another-secret-of-at-least-32-bytes!!").unwrap();
    assert_eq!(
        reason(other.verify_call_at(Some(&hs_token), &subject(b"1", &cx), NOW)),
        Unauthorized::BadSignature
    );
    // Another Ed25519 key.
    let stranger = LaneAuth::eddsa()
        .with_public_key_pem(OTHER_ED_PUBLIC)
        .unwrap();
    assert_eq!(
        reason(stranger.verify_call_at(Some(&ed_token), &subject(b"1", &cx), NOW)),
        Unauthorized::BadSignature
    );
    // The "none" algorithm is never accepted.
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(format!(r#"{{"lane":"billing","kind":"task","target":"billing:charge","hash":"{}","iat":{NOW},"exp":{},"jti":"x"}}"#, payload_hash(b"1"), NOW + 60).as_bytes())
    );
    assert!(
        hmac.verify_call_at(Some(&none_token), &subject(b"1", &cx), NOW)
            .is_err()
    );
    assert!(
        ed.verify_call_at(Some(&none_token), &subject(b"1", &cx), NOW)
            .is_err()
    );
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn es256_signatures_use_the_jose_format() {
    let cx = CallContext::new();
    let es = LaneAuth::es256()
        .with_private_key_pem(P256_PRIVATE)
        .unwrap();
    let token = es.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    let signature = token.rsplit('.').next().unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    assert_eq!(raw.len(), 64, "r‖s, not DER");
}

#[test]
fn kid_selects_the_verifying_key() {
    let cx = CallContext::new();
    let signer = LaneAuth::eddsa()
        .with_private_key_pem(ED_PRIVATE)
        .unwrap()
        .with_kid("2026-11");
    let token = signer.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    let rotating = LaneAuth::eddsa()
        .with_public_key_pem_for_kid("2026-10", OTHER_ED_PUBLIC)
        .unwrap()
        .with_public_key_pem_for_kid("2026-11", ED_PUBLIC)
        .unwrap();
    assert!(
        rotating
            .verify_call_at(Some(&token), &subject(b"1", &cx), NOW)
            .is_ok()
    );
    let only_old = LaneAuth::eddsa()
        .with_public_key_pem_for_kid("2026-10", OTHER_ED_PUBLIC)
        .unwrap();
    assert_eq!(
        reason(only_old.verify_call_at(Some(&token), &subject(b"1", &cx), NOW)),
        Unauthorized::UnknownKey
    );
}

#[test]
fn signer_and_verifier_material_is_required() {
    let cx = CallContext::new();
    let public_only = LaneAuth::eddsa().with_public_key_pem(ED_PUBLIC).unwrap();
    let err = public_only.sign_at(&subject(b"1", &cx), NOW).unwrap_err();
    assert_eq!(err.id(), "lanes-auth-signer-missing");
    let private_only = LaneAuth::eddsa().with_private_key_pem(ED_PRIVATE).unwrap();
    let token = private_only.sign_at(&subject(b"1", &cx), NOW).unwrap();
    let err = private_only
        .verify_call_at(token.as_deref(), &subject(b"1", &cx), NOW)
        .unwrap_err();
    assert_eq!(err.id(), "lanes-auth-verifier-missing");
    assert!(!public_only.can_sign() && public_only.can_verify());
    assert!(private_only.can_sign() && !private_only.can_verify());
}

/// Queued events are checked against their enqueue time (bounded by the max message age), so a
/// backlog longer than the TTL is accepted, while forged, altered or ancient messages are not.
#[test]
fn queued_events_are_checked_against_their_enqueue_time() {
    let cx = CallContext::new();
    let auth = LaneAuth::hmac(HMAC_SECRET)
        .unwrap()
        .ttl(Duration::from_secs(60))
        .clock_skew(Duration::from_secs(5))
        .max_message_age(Duration::from_secs(3600));
    let event = |payload: &'static [u8]| Subject {
        lane: "orders",
        kind: TargetKind::Event,
        target: "orders:created",
        payload,
        context: &cx,
    };
    let ms = |s: i64| s * 1000;
    let token = auth.sign_at(&event(b"1"), NOW).unwrap().unwrap();
    // Consumed 30 minutes after enqueue: the token expired long ago, the message is fine.
    assert!(
        auth.verify_queued(Some(&token), &event(b"1"), ms(NOW), ms(NOW + 1800))
            .is_ok()
    );
    // Same token, after the max message age: refused.
    assert_eq!(
        reason(auth.verify_queued(Some(&token), &event(b"1"), ms(NOW), ms(NOW + 3601))),
        Unauthorized::MessageTooOld
    );
    // A queue row claiming a later enqueue time than the token allows: refused.
    assert_eq!(
        reason(auth.verify_queued(Some(&token), &event(b"1"), ms(NOW + 600), ms(NOW + 700))),
        Unauthorized::Expired
    );
    // A rewritten enqueue time cannot revive an ancient token either.
    assert_eq!(
        reason(auth.verify_queued(Some(&token), &event(b"1"), ms(NOW + 30), ms(NOW + 7200))),
        Unauthorized::MessageTooOld
    );
    // Altered payload and missing token: refused as ever.
    assert_eq!(
        reason(auth.verify_queued(Some(&token), &event(b"2"), ms(NOW), ms(NOW + 1))),
        Unauthorized::PayloadHashMismatch
    );
    assert_eq!(
        reason(auth.verify_queued(None, &event(b"1"), ms(NOW), ms(NOW + 1))),
        Unauthorized::MissingToken
    );
    // A token minted after the enqueue time it claims: refused.
    let late = auth.sign_at(&event(b"1"), NOW + 100).unwrap().unwrap();
    assert_eq!(
        reason(auth.verify_queued(Some(&late), &event(b"1"), ms(NOW), ms(NOW + 200))),
        Unauthorized::IssuedInFuture
    );
    // A retried delivery reuses the same token: still fine.
    assert!(
        auth.verify_queued(Some(&token), &event(b"1"), ms(NOW), ms(NOW + 1900))
            .is_ok()
    );
}

/// A call token's lifetime is bounded (default one hour, never below the verifier's own TTL):
/// an absurd `exp` is refused without overflowing, whatever the clock skew.
#[test]
fn call_token_lifetime_is_bounded() {
    let cx = CallContext::new();
    let verifier = LaneAuth::hmac(HMAC_SECRET)
        .unwrap()
        .clock_skew(Duration::from_secs(u64::MAX));
    let forever = LaneAuth::hmac(HMAC_SECRET).unwrap().ttl(Duration::MAX);
    let token = forever.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    assert_eq!(
        reason(verifier.verify_call_at(Some(&token), &subject(b"1", &cx), NOW)),
        Unauthorized::LifetimeTooLong
    );
    // One hour is accepted by default, a second more is not.
    let hour = LaneAuth::hmac(HMAC_SECRET)
        .unwrap()
        .ttl(DEFAULT_MAX_TOKEN_LIFETIME);
    let token = hour.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    let default = LaneAuth::hmac(HMAC_SECRET).unwrap();
    assert!(
        default
            .verify_call_at(Some(&token), &subject(b"1", &cx), NOW)
            .is_ok()
    );
    let longer = LaneAuth::hmac(HMAC_SECRET)
        .unwrap()
        .ttl(DEFAULT_MAX_TOKEN_LIFETIME + Duration::from_secs(1));
    let token = longer.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    assert_eq!(
        reason(default.verify_call_at(Some(&token), &subject(b"1", &cx), NOW)),
        Unauthorized::LifetimeTooLong
    );
    // The verifier's own TTL raises the bound, and so does the setting.
    assert!(
        longer
            .verify_call_at(Some(&token), &subject(b"1", &cx), NOW)
            .is_ok()
    );
    let tight = default.clone().max_token_lifetime(Duration::from_secs(30));
    let token = default.sign_at(&subject(b"1", &cx), NOW).unwrap().unwrap();
    assert!(
        tight
            .verify_call_at(Some(&token), &subject(b"1", &cx), NOW)
            .is_ok(),
        "the own TTL (60 s) wins over a shorter max lifetime"
    );
}
