//! Configuration errors: each names the setting and where its value came from.

use std::path::PathBuf;

/// A configuration of the runner ([`RunnerConfig`](super::RunnerConfig): file, environment and
/// flags) that was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("configuration file {} is not valid TOML: {message}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The configuration file has a key that is not a setting.
    #[error(
        "unknown setting `{key}` in {}{} (docs/configuration.md lists the settings)",
        path.display(),
        suggestion.map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The closest known key, if one is close.
        suggestion: Option<&'static str>,
    },
    /// A value does not parse or is out of range.
    #[error("invalid value for {setting} ({origin}): {reason}")]
    Invalid {
        /// The setting's key.
        setting: &'static str,
        /// The value and where it came from, for example `SHOAL_LEASE_TTL=abc`.
        origin: String,
        /// What was expected.
        reason: String,
    },
    /// An `[[entity]]` section of the configuration file is refused.
    #[error("invalid setting {key} in {origin}: {reason}")]
    Entity {
        /// The file and section, for example `shoal.toml [[entity]] #2`.
        origin: String,
        /// The key at fault (`entity` for the section as a whole).
        key: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Values that do not fit together.
    #[error("invalid setting {setting}: {reason}")]
    Conflict {
        /// The setting at fault.
        setting: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
}
