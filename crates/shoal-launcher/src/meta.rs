//! `<hash>.meta`: what was launched in a slot, by whom and when.
//!
//! Written as the TypeScript and Python launchers write it: the object
//! `{cmd, cwd, socket, started_at, launcher_pid}` in that order, indented by two spaces, with no
//! trailing newline, mode 0600. Read tolerantly: any field order or formatting, `started_at` as an
//! integer or a float, and anything unreadable comes back as empty values.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

/// The most of a `.meta` file a reader looks at (real ones are a few hundred bytes).
const MAX_META_BYTES: u64 = 1024 * 1024;

/// Opens `path` without following a symbolic link at it: `ELOOP` becomes an error that says so.
fn open_no_follow(path: &Path, flags: OFlags, mode: Mode) -> std::io::Result<File> {
    match rustix::fs::open(path, flags | OFlags::CLOEXEC | OFlags::NOFOLLOW, mode) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::LOOP) => Err(std::io::Error::other(format!(
            "{path:?} is a symbolic link; refusing to follow it"
        ))),
        Err(errno) => Err(errno.into()),
    }
}

/// The contents of a `.meta` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The worker's argv, without the `--unix`/`--idle-timeout` the launcher appends.
    pub cmd: Vec<String>,
    /// The launcher's working directory (the worker's too).
    pub cwd: String,
    /// The absolute socket path.
    pub socket: String,
    /// When the launch started, in Unix seconds.
    pub started_at: StartedAt,
    /// The launching process (not the worker).
    pub launcher_pid: u32,
}

/// A launch time in Unix seconds, written with millisecond precision like the TypeScript launcher
/// (`Date.now() / 1000`: an integer when the milliseconds are zero, else up to three decimals).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct StartedAt(f64);

impl StartedAt {
    /// Now.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// A time, truncated to milliseconds.
    pub fn from_system_time(time: SystemTime) -> Self {
        let millis = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        Self(millis as f64 / 1000.0)
    }

    /// Seconds since the Unix epoch.
    pub fn as_secs_f64(self) -> f64 {
        self.0
    }
}

impl Serialize for StartedAt {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // JavaScript prints an integral number without a fraction; serde_json would add ".0".
        if self.0.fract() == 0.0 && self.0.abs() < 9.0e15 {
            serializer.serialize_i64(self.0 as i64)
        } else {
            serializer.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for StartedAt {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        f64::deserialize(deserializer).map(Self)
    }
}

impl Meta {
    /// The `.meta` text: two-space indented JSON, no trailing newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes `path` (mode 0600) through a temporary sibling and a rename, so readers never see a
    /// half-written file. A symbolic link at the temporary name is not written through (the
    /// write fails and the link is removed); the rename replaces whatever sits at `path` itself.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp = PathBuf::from(path);
        tmp.set_extension(format!("meta.tmp{}", std::process::id()));
        let result = (|| {
            let mut file = open_no_follow(
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
                Mode::from_raw_mode(0o600),
            )?;
            file.write_all(self.to_json().as_bytes())?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// What a status reader gets from a `.meta` file: every field optional, nothing fails.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaFields {
    /// `cmd`, each element stringified; empty when missing or not a list.
    pub cmd: Vec<String>,
    /// `cwd`; empty when missing or not a string.
    pub cwd: String,
    /// `started_at`; `None` when missing or not a number.
    pub started_at: Option<f64>,
    /// `launcher_pid`; `None` when missing or not an integer.
    pub launcher_pid: Option<u32>,
}

impl MetaFields {
    /// Reads `path`; a missing or unparsable file gives empty fields, and so does a symbolic link
    /// (not followed) or anything but a regular file.
    pub fn read(path: &Path) -> Self {
        let read = || -> std::io::Result<Vec<u8>> {
            let file = open_no_follow(path, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
            if !file.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            let mut bytes = Vec::new();
            file.take(MAX_META_BYTES).read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        read().map(|bytes| Self::parse(&bytes)).unwrap_or_default()
    }

    /// Reads the contents of a `.meta` file as [`MetaFields::read`] does: anything that is not
    /// JSON gives empty fields, and so does each field that is missing or of another type.
    pub fn parse(bytes: &[u8]) -> Self {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map(|value| Self::from_value(&value))
            .unwrap_or_default()
    }

    fn from_value(value: &serde_json::Value) -> Self {
        use serde_json::Value;
        let cmd = match value.get("cmd") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            cmd,
            cwd: value
                .get("cwd")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            started_at: value.get("started_at").and_then(Value::as_f64),
            launcher_pid: value
                .get("launcher_pid")
                .and_then(Value::as_u64)
                .and_then(|pid| u32::try_from(pid).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_json_stringify_with_two_spaces() {
        let meta = Meta {
            cmd: vec!["node".into(), "/d/worker.mjs".into()],
            cwd: "/d".into(),
            socket: "/tmp/vgi-rpc-0/370d4d8df3163e79.sock".into(),
            started_at: StartedAt::from_system_time(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_385_575_323),
            ),
            launcher_pid: 25214,
        };
        assert_eq!(
            meta.to_json(),
            "{\n  \"cmd\": [\n    \"node\",\n    \"/d/worker.mjs\"\n  ],\n  \"cwd\": \"/d\",\n  \
             \"socket\": \"/tmp/vgi-rpc-0/370d4d8df3163e79.sock\",\n  \"started_at\": 1795385575.323,\n  \
             \"launcher_pid\": 25214\n}"
        );
        let whole = Meta {
            started_at: StartedAt::from_system_time(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_385_575),
            ),
            cmd: vec![],
            ..meta
        };
        assert!(whole.to_json().contains("\"started_at\": 1795385575,"));
        assert!(whole.to_json().contains("\"cmd\": [],"));
    }

    #[test]
    fn reads_tolerantly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.meta");
        std::fs::write(
            &path,
            r#"{"launcher_pid":7,"socket":"s","started_at":12,"cwd":"/w","cmd":["a",1]}"#,
        )
        .unwrap();
        let fields = MetaFields::read(&path);
        assert_eq!(fields.cmd, vec!["a".to_owned(), "1".to_owned()]);
        assert_eq!(fields.cwd, "/w");
        assert_eq!(fields.started_at, Some(12.0));
        assert_eq!(fields.launcher_pid, Some(7));

        std::fs::write(&path, "not json").unwrap();
        assert_eq!(MetaFields::read(&path), MetaFields::default());
        assert_eq!(
            MetaFields::read(&dir.path().join("missing")),
            MetaFields::default()
        );
    }

    #[test]
    fn write_is_0600_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.meta");
        let meta = Meta {
            cmd: vec!["w".into(), "é".into()],
            cwd: "/".into(),
            socket: "/s".into(),
            started_at: StartedAt::now(),
            launcher_pid: 1,
        };
        meta.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.ends_with('\n'));
        assert!(text.contains("\"é\""));
        let back: Meta = serde_json::from_str(&text).unwrap();
        assert_eq!(back, meta);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
