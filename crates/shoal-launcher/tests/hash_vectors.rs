//! The tuple hash against the vgi-rpc vectors (`tests/vectors/launcher-hash-vectors.json`).
//!
//! `hash` is what the TypeScript launcher, the C++ DuckDB extension and Query.Farm's Rust client
//! compute, and what we must match. `python_hash` is what Python's `vgi_rpc.launcher` computes: it
//! escapes non-ASCII characters (`ensure_ascii=True`), so it differs exactly for the rows with a
//! non-ASCII character in argv, cwd or a `VGI_RPC_*` value. We match `hash` everywhere and record
//! the divergence instead of papering over it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use shoal_launcher::{canonical_payload, compute_hash};

#[derive(Debug, Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    argv: Vec<String>,
    cwd: String,
    env: serde_json::Map<String, serde_json::Value>,
    hash: String,
    python_hash: String,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors/launcher-hash-vectors.json");
    serde_json::from_str::<Vectors>(text).unwrap().vectors
}

fn env_pairs(env: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn is_ascii(v: &Vector) -> bool {
    v.argv.iter().all(|a| a.is_ascii())
        && v.cwd.is_ascii()
        && env_pairs(&v.env)
            .iter()
            .all(|(k, v)| k.is_ascii() && v.is_ascii())
}

#[test]
fn every_vector_matches_the_typescript_cpp_and_rust_client_hash() {
    let vectors = vectors();
    assert!(vectors.len() >= 18, "the vector file lost rows");
    for v in &vectors {
        let ours = compute_hash(&v.argv, &v.cwd, env_pairs(&v.env));
        assert_eq!(
            ours.as_str(),
            v.hash,
            "{}: payload {}",
            v.name,
            canonical_payload(&v.argv, &v.cwd, env_pairs(&v.env))
        );
    }
}

#[test]
fn python_differs_exactly_on_non_ascii_input() {
    let mut divergent = Vec::new();
    for v in vectors() {
        if is_ascii(&v) {
            assert_eq!(
                v.hash, v.python_hash,
                "{}: ASCII input hashes alike everywhere",
                v.name
            );
        } else {
            assert_ne!(v.hash, v.python_hash, "{}", v.name);
            divergent.push(v.name);
        }
    }
    assert_eq!(
        divergent,
        [
            "unicode_latin1_arg",
            "unicode_astral_emoji_arg",
            "unicode_cwd"
        ]
    );
}

/// argv, cwd, env, expected hash.
type Case = (
    &'static [&'static str],
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// More rows from the reference notes (`C++ ext / vgi-rust` column; TypeScript agrees except
/// where noted).
#[test]
fn reference_table_rows() {
    let cases: &[Case] = &[
        // DEL and C0 controls (Python: 18344e1010766ee9).
        (
            &["x", "\u{0}\u{1}\u{1f}", "\u{8}\u{c}", "del\u{7f}"],
            "/tmp",
            &[],
            "0c618114ee4eeae7",
        ),
        (
            &["/usr/bin/env", "a/b</script>"],
            "/",
            &[],
            "50b66c4ac20b4652",
        ),
        (
            &["python"],
            "/tmp",
            &[("VGI_RPC_", ""), ("VGI_RPC_EMPTY", "")],
            "cd4f2e4096e02222",
        ),
        (
            &["python"],
            "/tmp",
            &[("VGI_RPC_FOO", "a\"b\\c\nd")],
            "8fa8aeab208ab663",
        ),
        (
            &["w"],
            "/w",
            &[
                ("VGI_RPC_a", "1"),
                ("VGI_RPC_B", "2"),
                ("VGI_RPC__", "3"),
                ("VGI_RPC_1", "4"),
            ],
            "e0bb765a37020564",
        ),
        (
            &["java", "-jar", "/opt/foo.jar", "-Dlog.level=INFO"],
            "/var/folders/work",
            &[
                ("VGI_RPC_TOKEN", "secret"),
                ("VGI_RPC_REGION", "us-west-2"),
                ("VGI_RPC_BUCKET", "my-bucket"),
            ],
            "8abb635d646af180",
        ),
        (&["python", "日本語"], "/tmp", &[], "aef81a05b52433a0"),
        (
            &["python"],
            "/tmp",
            &[("VGI_RPC_NAME", "über")],
            "76ba8c1a38f0fc0b",
        ),
        (&["x", "a\u{2028}b"], "/tmp", &[], "8eadea9ce85e1037"),
        // Keys sorted by UTF-8 bytes (C++, Rust client); TypeScript sorts by UTF-16 code unit and
        // gets 58b4875751ed9a89 for this one pathological pair (U+FFFD vs an astral character).
        (
            &["x"],
            "/tmp",
            &[("VGI_RPC_\u{fffd}", "bmp"), ("VGI_RPC_\u{1f600}", "astral")],
            "8b271d5cddacee45",
        ),
    ];
    for (argv, cwd, env, expected) in cases {
        assert_eq!(
            compute_hash(argv, cwd, env.iter().copied()).as_str(),
            *expected,
            "{argv:?}"
        );
    }
}
