//! Launcher `.meta` files: written by this launcher or by the TypeScript and Python ones, read
//! back tolerantly by `shoal launcher status` and the reuse checks.

use shoal_launcher::{Meta, MetaFields};

/// Reads `data` as a `.meta` file; a well-formed one reads the same whichever way it is read,
/// and what this launcher writes reads back the same.
pub fn check(data: &[u8]) {
    let fields = MetaFields::parse(data);
    // Well-formed: JSON text (UTF-8; serde_json does not check the strings of fields it
    // ignores, so `Meta` alone would take invalid text in an unknown field).
    let Some(meta) = std::str::from_utf8(data)
        .ok()
        .and_then(|text| serde_json::from_str::<Meta>(text).ok())
    else {
        return;
    };
    assert_eq!(fields.cmd, meta.cmd);
    assert_eq!(fields.cwd, meta.cwd);
    assert_eq!(fields.started_at, Some(meta.started_at.as_secs_f64()));
    assert_eq!(fields.launcher_pid, Some(meta.launcher_pid));

    let json = meta.to_json();
    assert!(!json.ends_with('\n'));
    let back: Meta = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("what we write does not read back: {e}\n{json}"));
    assert_eq!(back, meta, "a .meta file changed on a round trip:\n{json}");
    assert_eq!(MetaFields::parse(json.as_bytes()), fields);
}
