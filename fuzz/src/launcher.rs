//! Launcher `.meta` files: written by this launcher or by the TypeScript and Python ones, read
//! back tolerantly by `shoal launcher status` and the reuse checks.

use std::time::{Duration, UNIX_EPOCH};

use shoal_launcher::{Meta, MetaFields, StartedAt};

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

    // What this launcher writes (a launch time in whole milliseconds) reads back exactly, through
    // both readers.
    let millis = meta.started_at.as_secs_f64() * 1000.0;
    if millis.is_finite() && (0.0..1e15).contains(&millis) {
        let written = Meta {
            started_at: StartedAt::from_system_time(
                UNIX_EPOCH + Duration::from_millis(millis.round() as u64),
            ),
            ..meta.clone()
        };
        let json = written.to_json();
        assert!(!json.ends_with('\n'));
        let back: Meta = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("what we write does not read back: {e}\n{json}"));
        assert_eq!(
            back, written,
            "a .meta file changed on a round trip:\n{json}"
        );
        let fields = MetaFields::parse(json.as_bytes());
        assert_eq!(fields.cmd, written.cmd);
        assert_eq!(fields.started_at, Some(written.started_at.as_secs_f64()));
    }
    // Any other time reads back within serde_json's float parsing (without its
    // `float_roundtrip` feature, a 17-digit number may come back one unit in the last place off).
    let json = meta.to_json();
    let back: Meta = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("what we write does not read back: {e}\n{json}"));
    let (a, b) = (back.started_at.as_secs_f64(), meta.started_at.as_secs_f64());
    assert!(
        a == b || (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs()),
        "started_at {b} read back as {a}"
    );
    assert_eq!(
        Meta {
            started_at: meta.started_at,
            ..back
        },
        meta,
        "a .meta file changed on a round trip:\n{json}"
    );
}
