//! The tuple hash: which worker a `(argv, cwd, VGI_RPC_* env)` tuple maps to.
//!
//! The hash is the first 16 lowercase hex digits of SHA-256 over a canonical JSON document:
//!
//! ```text
//! {"cmd":[<argv>...],"cwd":"<cwd>","env":{<VGI_RPC_* keys, sorted by bytes>}}
//! ```
//!
//! No whitespace; strings escape only `"`, `\` and U+0000..=U+001F (`\b \f \n \r \t` short forms,
//! otherwise `\u00xx` in lowercase); every other character, DEL and non-ASCII included, is written
//! as raw UTF-8. This is what the TypeScript launcher (`@query-farm/vgi-rpc`), the C++ DuckDB
//! extension and Query.Farm's Rust client compute.
//!
//! Known divergences, kept on purpose:
//! - Python's `vgi_rpc.launcher.compute_hash` escapes non-ASCII (`\u00e9`) and DEL, so its hash
//!   differs for any non-ASCII argv, cwd or env value. ASCII input hashes identically.
//! - The TypeScript launcher sorts env keys by UTF-16 code unit; we sort by UTF-8 bytes (code
//!   point order, as C++, Rust and Python do). The two orders differ only when two keys differ first
//!   at a character in U+E000..=U+FFFF against one above U+FFFF.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The prefix an environment variable needs to be part of the tuple (exact, case-sensitive).
pub const ENV_PREFIX: &str = "VGI_RPC_";

/// Number of hex digits in a [`TupleHash`].
pub const HASH_LEN: usize = 16;

/// A tuple hash: 16 lowercase hex digits naming `<hash>.lock`, `<hash>.sock` and `<hash>.meta`.
///
/// ```
/// use shoal_launcher::TupleHash;
///
/// let hash: TupleHash = "13ddf92fa852a381".parse()?;
/// assert_eq!(hash.as_str(), "13ddf92fa852a381");
/// assert!("13DDF92FA852A381".parse::<TupleHash>().is_err());
/// # Ok::<(), shoal_launcher::InvalidTupleHash>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TupleHash([u8; HASH_LEN]);

impl TupleHash {
    /// The hash as text.
    pub fn as_str(&self) -> &str {
        // Construction only admits ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TupleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for TupleHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Debug for TupleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TupleHash({})", self.as_str())
    }
}

/// A string that is not 16 lowercase hex digits was given as a [`TupleHash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a tuple hash (expected {HASH_LEN} lowercase hex digits)")]
pub struct InvalidTupleHash(pub String);

impl FromStr for TupleHash {
    type Err = InvalidTupleHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let valid = bytes.len() == HASH_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        match <[u8; HASH_LEN]>::try_from(bytes) {
            Ok(array) if valid => Ok(Self(array)),
            _ => Err(InvalidTupleHash(s.to_owned())),
        }
    }
}

/// Computes the tuple hash of `argv` run from `cwd` with environment `env`.
///
/// `env` is the whole environment (any iterator of pairs); only keys with the exact prefix
/// [`ENV_PREFIX`] are hashed, and for a key given twice the **first** occurrence wins (as in
/// Python's `os.environ`, Node's `process.env` and the C++ launcher).
///
/// ```
/// use shoal_launcher::compute_hash;
///
/// let hash = compute_hash(&["python"], "/tmp", [("VGI_RPC_FOO", "bar"), ("PATH", "/bin")]);
/// assert_eq!(hash.as_str(), "70118f0ad5ea8bf3");
/// ```
pub fn compute_hash<A, I, K, V>(argv: &[A], cwd: &str, env: I) -> TupleHash
where
    A: AsRef<str>,
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    hash_payload(&canonical_payload(argv, cwd, env))
}

/// The canonical JSON document [`compute_hash`] hashes (useful to debug a mismatch).
///
/// ```
/// use shoal_launcher::canonical_payload;
///
/// let env: [(&str, &str); 0] = [];
/// assert_eq!(canonical_payload(&["a\"b"], "/tmp", env), r#"{"cmd":["a\"b"],"cwd":"/tmp","env":{}}"#);
/// ```
pub fn canonical_payload<A, I, K, V>(argv: &[A], cwd: &str, env: I) -> String
where
    A: AsRef<str>,
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut hashed: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in env {
        let key = key.as_ref();
        if key.starts_with(ENV_PREFIX) && !hashed.contains_key(key) {
            hashed.insert(key.to_owned(), value.as_ref().to_owned());
        }
    }

    let mut out = String::with_capacity(64);
    out.push_str("{\"cmd\":[");
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, arg.as_ref());
    }
    out.push_str("],\"cwd\":");
    push_json_string(&mut out, cwd);
    out.push_str(",\"env\":{");
    for (i, (key, value)) in hashed.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, key);
        out.push(':');
        push_json_string(&mut out, value);
    }
    out.push_str("}}");
    out
}

fn hash_payload(payload: &str) -> TupleHash {
    let digest = Sha256::digest(payload.as_bytes());
    let mut text = [0u8; HASH_LEN];
    // 8 digest bytes are 16 hex digits; the buffer has exactly that size.
    let _ = hex::encode_to_slice(&digest[..HASH_LEN / 2], &mut text);
    TupleHash(text)
}

/// Appends `s` as a JSON string: escapes `"`, `\` and C0 controls only; everything else raw.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The hashed part of this process's environment could not be read as UTF-8.
#[derive(Debug, thiserror::Error)]
pub enum HashInputError {
    /// The working directory is not valid UTF-8 (the reference launchers cannot represent it).
    #[error("working directory {0:?} is not valid UTF-8; run the launcher from a UTF-8 path")]
    NonUtf8Cwd(std::path::PathBuf),
    /// A `VGI_RPC_*` variable has a value that is not valid UTF-8.
    #[error("environment variable {key} has a value that is not valid UTF-8")]
    NonUtf8Env {
        /// The variable's name.
        key: String,
    },
    /// The working directory could not be read.
    #[error("cannot read the working directory: {0}")]
    CurrentDir(#[source] std::io::Error),
}

/// The `VGI_RPC_*` part of this process's environment, first occurrence first, as the hash sees it.
///
/// Keys that are not UTF-8 are skipped (they cannot carry the prefix in any launcher's view);
/// a `VGI_RPC_*` key with a non-UTF-8 value is an error rather than a silently different hash.
pub fn hashed_env_of_process() -> Result<Vec<(String, String)>, HashInputError> {
    hashed_env(std::env::vars_os())
}

pub(crate) fn hashed_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, HashInputError> {
    let mut out = Vec::new();
    for (key, value) in vars {
        let Some(key) = key.to_str() else { continue };
        if !key.starts_with(ENV_PREFIX) {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| HashInputError::NonUtf8Env {
                key: key.to_owned(),
            })?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// A path as the hash needs it: UTF-8 text.
pub(crate) fn cwd_text(cwd: &Path) -> Result<&str, HashInputError> {
    cwd.to_str()
        .ok_or_else(|| HashInputError::NonUtf8Cwd(cwd.to_path_buf()))
}

/// The tuple hash of `argv` run from `cwd` (or this process's working directory) with this
/// process's environment: the hash a launcher started here would use.
pub fn hash_for_current_process<A: AsRef<str>>(
    argv: &[A],
    cwd: Option<&Path>,
) -> Result<TupleHash, HashInputError> {
    let current;
    let cwd = match cwd {
        Some(cwd) => cwd,
        None => {
            current = std::env::current_dir().map_err(HashInputError::CurrentDir)?;
            &current
        }
    };
    Ok(compute_hash(argv, cwd_text(cwd)?, hashed_env_of_process()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_only() {
        let env: [(&str, &str); 0] = [];
        let payload = canonical_payload(
            &["\u{0}\u{1}\u{1f}", "\u{8}\u{c}", "del\u{7f}", "é/"],
            "",
            env,
        );
        assert_eq!(
            payload,
            "{\"cmd\":[\"\\u0000\\u0001\\u001f\",\"\\b\\f\",\"del\u{7f}\",\"é/\"],\"cwd\":\"\",\"env\":{}}"
        );
    }

    #[test]
    fn first_duplicate_env_key_wins_and_prefix_is_exact() {
        let payload = canonical_payload(
            &["x"],
            "/",
            [
                ("VGI_RPC_A", "first"),
                ("VGI_RPC_A", "second"),
                ("vgi_rpc_b", "no"),
                ("XVGI_RPC_C", "no"),
                ("VGI_RPC_", "yes"),
            ],
        );
        assert_eq!(
            payload,
            r#"{"cmd":["x"],"cwd":"/","env":{"VGI_RPC_":"yes","VGI_RPC_A":"first"}}"#
        );
    }

    #[test]
    fn non_utf8_values_of_hashed_keys_are_errors_and_other_keys_are_ignored() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff]);
        let ok = hashed_env([
            (OsString::from("OTHER"), bad.clone()),
            (OsString::from_vec(vec![0xff]), OsString::from("x")),
            (OsString::from("VGI_RPC_OK"), OsString::from("v")),
        ])
        .unwrap();
        assert_eq!(ok, vec![("VGI_RPC_OK".to_owned(), "v".to_owned())]);
        let err = hashed_env([(OsString::from("VGI_RPC_BAD"), bad)]).unwrap_err();
        assert!(matches!(err, HashInputError::NonUtf8Env { key } if key == "VGI_RPC_BAD"));
    }

    #[test]
    fn tuple_hash_parsing() {
        assert!("0123456789abcdef".parse::<TupleHash>().is_ok());
        assert!("0123456789abcde".parse::<TupleHash>().is_err());
        assert!("0123456789abcdeg".parse::<TupleHash>().is_err());
        assert!("0123456789abcdef0".parse::<TupleHash>().is_err());
    }
}
