//! The two arguments a launcher appends to a worker's argv.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::options::UnixServeOptions;

/// Idle timeout of a worker started without `--idle-timeout`.
pub const DEFAULT_WORKER_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A worker's launcher-given arguments: `--unix <path>` and `--idle-timeout <seconds>` (also in
/// `--flag=value` form), with everything else kept in order in [`WorkerArgs::rest`].
///
/// ```
/// use std::time::Duration;
/// use shoal_launcher::WorkerArgs;
///
/// let args = WorkerArgs::parse(["--verbose", "--unix", "/tmp/w.sock", "--idle-timeout=2.5"])?;
/// assert_eq!(args.unix.as_deref(), Some(std::path::Path::new("/tmp/w.sock")));
/// assert_eq!(args.idle_timeout, Some(Duration::from_millis(2500)));
/// assert_eq!(args.rest, ["--verbose"]);
/// # Ok::<(), shoal_launcher::WorkerArgsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// `--unix`: where to listen.
    pub unix: Option<PathBuf>,
    /// `--idle-timeout`: `None` when it was `0` (or negative, or infinite): never idle out.
    /// Defaults to [`DEFAULT_WORKER_IDLE_TIMEOUT`] when absent.
    pub idle_timeout: Option<Duration>,
    /// Every other argument, in order.
    pub rest: Vec<OsString>,
}

/// Bad worker arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerArgsError {
    /// A flag was last, without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// `--idle-timeout` is not a number of seconds.
    #[error("--idle-timeout {0:?} is not a number of seconds")]
    BadIdleTimeout(String),
    /// `--unix` was not given.
    #[error("--unix <socket path> is required (workers are started by a launcher)")]
    MissingUnix,
}

impl WorkerArgs {
    /// Parses this process's arguments (after the program name).
    pub fn from_env() -> Result<Self, WorkerArgsError> {
        Self::parse(std::env::args_os().skip(1))
    }

    /// Parses `args` (without the program name).
    pub fn parse<I, S>(args: I) -> Result<Self, WorkerArgsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut parsed = Self {
            unix: None,
            idle_timeout: Some(DEFAULT_WORKER_IDLE_TIMEOUT),
            rest: Vec::new(),
        };
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let text = arg.to_str().unwrap_or_default();
            if text == "--unix" {
                let value = args.next().ok_or(WorkerArgsError::MissingValue("--unix"))?;
                parsed.unix = Some(PathBuf::from(value));
            } else if let Some(value) = text.strip_prefix("--unix=") {
                parsed.unix = Some(PathBuf::from(value));
            } else if text == "--idle-timeout" {
                let value = args
                    .next()
                    .ok_or(WorkerArgsError::MissingValue("--idle-timeout"))?;
                parsed.idle_timeout = parse_idle_timeout(&value.to_string_lossy())?;
            } else if let Some(value) = text.strip_prefix("--idle-timeout=") {
                parsed.idle_timeout = parse_idle_timeout(value)?;
            } else {
                parsed.rest.push(arg);
            }
        }
        Ok(parsed)
    }

    /// Serve options for these arguments (socket path and idle timeout); requires `--unix`.
    pub fn serve_options(&self) -> Result<UnixServeOptions, WorkerArgsError> {
        let path = self.unix.clone().ok_or(WorkerArgsError::MissingUnix)?;
        Ok(UnixServeOptions::new(path).idle_timeout(self.idle_timeout))
    }
}

/// Seconds in any float syntax (`300`, `300.0`, `2.5`, `1e3`); zero, negative or infinite: none.
fn parse_idle_timeout(text: &str) -> Result<Option<Duration>, WorkerArgsError> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| WorkerArgsError::BadIdleTimeout(text.to_owned()))?;
    if secs.is_nan() {
        return Err(WorkerArgsError::BadIdleTimeout(text.to_owned()));
    }
    if secs <= 0.0 {
        return Ok(None);
    }
    Ok(Duration::try_from_secs_f64(secs).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_defaults() {
        let args = WorkerArgs::parse(["--unix=/s", "x"]).unwrap();
        assert_eq!(args.unix, Some(PathBuf::from("/s")));
        assert_eq!(args.idle_timeout, Some(DEFAULT_WORKER_IDLE_TIMEOUT));
        assert_eq!(args.rest, vec![OsString::from("x")]);

        for (text, expected) in [
            ("300", Some(Duration::from_secs(300))),
            ("300.0", Some(Duration::from_secs(300))),
            ("1e3", Some(Duration::from_secs(1000))),
            ("0", None),
            ("-1", None),
            ("inf", None),
        ] {
            let args = WorkerArgs::parse(["--idle-timeout", text]).unwrap();
            assert_eq!(args.idle_timeout, expected, "{text}");
        }
        assert_eq!(
            WorkerArgs::parse(["--idle-timeout", "soon"]),
            Err(WorkerArgsError::BadIdleTimeout("soon".into()))
        );
        assert_eq!(
            WorkerArgs::parse(["--unix"]),
            Err(WorkerArgsError::MissingValue("--unix"))
        );
        assert_eq!(
            WorkerArgs::parse(["x"]).unwrap().serve_options().err(),
            Some(WorkerArgsError::MissingUnix)
        );
    }
}
