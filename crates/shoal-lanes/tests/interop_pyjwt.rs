//! Tokens minted by another JWT implementation (PyJWT, installed from PyPI into a venv under the
//! target dir) verify here, and ours verify there. Fails loudly if python3 or pip is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ED_PRIVATE, ED_PUBLIC, HMAC_SECRET, P256_PRIVATE, P256_PUBLIC};
use shoal_lanes::*;

fn run(cmd: &mut Command, what: &str) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A venv with PyJWT and cryptography, created once per target dir.
fn python_with_pyjwt() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyjwt-venv");
    let python = dir.join("bin").join("python");
    if !python.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&dir),
            "creating the PyJWT venv (python3 -m venv)",
        );
    }
    let ready = Command::new(&python)
        .args(["-c", "import jwt, cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ready {
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "pyjwt>=2.8",
                "cryptography",
            ]),
            "installing PyJWT from PyPI",
        );
    }
    python
}

const SCRIPT: &str = r#"
import base64, hashlib, json, sys, time, uuid
import jwt

spec = json.loads(sys.argv[1])
def h(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

now = int(time.time())
claims = {
    "lane": spec["lane"], "kind": spec["kind"], "target": spec["target"],
    "hash": h(spec["payload"].encode()),
    "ctx": h(json.dumps(spec["context"], separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()),
    "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex,
}
out = {
    "HS256": jwt.encode(claims, spec["secret"], algorithm="HS256"),
    "EdDSA": jwt.encode(claims, open(spec["ed_private"], "rb").read(), algorithm="EdDSA"),
    "ES256": jwt.encode(claims, open(spec["p256_private"], "rb").read(), algorithm="ES256"),
}
verified = {}
for alg, token, key in [
    ("HS256", spec["ours"]["HS256"], spec["secret"]),
    ("EdDSA", spec["ours"]["EdDSA"], open(spec["ed_public"], "rb").read()),
    ("ES256", spec["ours"]["ES256"], open(spec["p256_public"], "rb").read()),
]:
    decoded = jwt.decode(token, key, algorithms=[alg], options={"require": ["exp", "iat"]})
    assert decoded["hash"] == claims["hash"] and decoded["ctx"] == claims["ctx"], decoded
    verified[alg] = decoded["target"]
out["verified"] = verified
print(json.dumps(out))
"#;

#[test]
fn tokens_interoperate_with_pyjwt() {
    let python = python_with_pyjwt();
    let keys = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("keys");
    let payload = r#"{"cents":42,"note":"thé"}"#;
    let context = CallContext::new()
        .with("tenant", "acmé")
        .with("region", "eu");
    let subject = Subject {
        lane: "billing",
        kind: TargetKind::Task,
        target: "billing:charge",
        payload: payload.as_bytes(),
        context: &context,
    };
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
    let ours = serde_json::json!({
        "HS256": hmac.sign(&subject).unwrap().unwrap(),
        "EdDSA": ed.sign(&subject).unwrap().unwrap(),
        "ES256": es.sign(&subject).unwrap().unwrap(),
    });
    let spec = serde_json::json!({
        "lane": "billing", "kind": "task", "target": "billing:charge", "payload": payload,
        "context": {"tenant": "acmé", "region": "eu"},
        "secret": std::str::from_utf8(HMAC_SECRET).unwrap(),
        "ed_private": keys.join("ed25519-private.pem"), "ed_public": keys.join("ed25519-public.pem"),
        "p256_private": keys.join("p256-private.pem"), "p256_public": keys.join("p256-public.pem"),
        "ours": ours,
    });
    let out = run(
        Command::new(&python)
            .args(["-c", SCRIPT])
            .arg(spec.to_string()),
        "the PyJWT script",
    );
    let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // PyJWT verified ours.
    for alg in ["HS256", "EdDSA", "ES256"] {
        assert_eq!(out["verified"][alg], "billing:charge", "{alg}");
    }
    // We verify PyJWT's.
    for (alg, auth) in [("HS256", &hmac), ("EdDSA", &ed), ("ES256", &es)] {
        let token = out[alg].as_str().unwrap();
        let claims = auth
            .verify_call(Some(token), &subject)
            .unwrap_or_else(|e| panic!("{alg}: {e}"))
            .unwrap();
        assert_eq!(claims.target, "billing:charge");
        // And a PyJWT token is still bound to its payload.
        let other = Subject {
            payload: b"{}",
            ..subject
        };
        assert_eq!(
            auth.verify_call(Some(token), &other).unwrap_err().reason(),
            Some(Unauthorized::PayloadHashMismatch),
            "{alg}"
        );
    }
}
