//! Where setting values come from: defaults, a TOML file, the environment and flags, in rising
//! precedence.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::entities::WorkerEntityConfig;
use super::error::RunnerConfigError;
use super::settings::{SETTINGS, Setting, setting};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A key in a configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// A raw (not yet parsed) value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced {
    /// The setting.
    pub setting: &'static Setting,
    /// The value as text.
    pub value: String,
    /// Its origin.
    pub origin: Origin,
}

impl Sourced {
    /// How a message shows the value and its origin, for example `SHOAL_LEASE_TTL=abc`,
    /// `--lease-ttl abc` or `lease_ttl = "abc" in shoal.toml`. Secrets are never shown.
    pub fn describe(&self) -> String {
        let value = if self.setting.secret {
            "<redacted>".to_owned()
        } else {
            self.value.clone()
        };
        match &self.origin {
            Origin::Default => format!("default {value:?}"),
            Origin::File(path) => format!("{} = {value:?} in {}", self.setting.key, path.display()),
            Origin::Env(var) => format!("{var}={value}"),
            Origin::Flag(flag) => format!("--{flag} {value}"),
        }
    }
}

/// The layers of configuration, merged with flags over environment over file over defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    file: BTreeMap<&'static str, Sourced>,
    env: BTreeMap<&'static str, Sourced>,
    flags: BTreeMap<&'static str, Sourced>,
    entities: Vec<WorkerEntityConfig>,
    warnings: Vec<String>,
}

impl Sources {
    /// No file, no environment, no flags: the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `path` as a TOML configuration file.
    pub fn with_file(self, path: &Path) -> Result<Self, RunnerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RunnerConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        self.with_file_text(path, &text)
    }

    /// Reads `text` as the TOML configuration file at `path` (for tests and embedding).
    pub fn with_file_text(mut self, path: &Path, text: &str) -> Result<Self, RunnerConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| RunnerConfigError::ParseFile {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        for (key, value) in table {
            if key == "entity" {
                self.entities = super::entities::parse_sections(path, &value)?;
                continue;
            }
            let Some(setting) = setting(&key) else {
                return Err(RunnerConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    suggestion: closest(&key).map(|s| s.key),
                    key,
                });
            };
            let value = toml_text(&value).ok_or_else(|| RunnerConfigError::Invalid {
                setting: setting.key,
                origin: format!("{} in {}", setting.key, path.display()),
                reason: "expected a string, a whole number, a boolean or a list of strings"
                    .to_owned(),
            })?;
            self.file.insert(
                setting.key,
                Sourced {
                    setting,
                    value,
                    origin: Origin::File(path.to_path_buf()),
                },
            );
        }
        Ok(self)
    }

    /// Takes `SHOAL_*` variables from `vars` (for example `std::env::vars()`). Unknown `SHOAL_*`
    /// variables are reported by [`Sources::warnings`], not refused, since other tools may share
    /// the prefix.
    pub fn with_env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        for (name, value) in vars {
            if !name.starts_with("SHOAL_") {
                continue;
            }
            match SETTINGS.iter().find(|s| s.env == name) {
                Some(setting) => {
                    self.env.insert(
                        setting.key,
                        Sourced {
                            setting,
                            value,
                            origin: Origin::Env(setting.env),
                        },
                    );
                }
                None if IGNORED_ENV.contains(&name.as_str()) => {}
                None => {
                    let hint = closest(&name["SHOAL_".len()..].to_lowercase())
                        .map(|s| format!(" (did you mean {}?)", s.env))
                        .unwrap_or_default();
                    self.warnings.push(format!(
                        "ignoring unknown environment variable {name}{hint}"
                    ));
                }
            }
        }
        self
    }

    /// Takes flag values: `(setting key, value)` pairs, as [`super::SettingFlags`] collects them.
    pub fn with_flags<'a>(
        mut self,
        flags: impl IntoIterator<Item = (&'static Setting, &'a str)>,
    ) -> Self {
        for (setting, value) in flags {
            let Some(name) = setting.flag.name() else {
                continue;
            };
            self.flags.insert(
                setting.key,
                Sourced {
                    setting,
                    value: value.to_owned(),
                    origin: Origin::Flag(name),
                },
            );
        }
        self
    }

    /// The value of `key` from the highest layer that sets it, if any.
    pub fn raw(&self, key: &str) -> Option<&Sourced> {
        self.flags
            .get(key)
            .or_else(|| self.env.get(key))
            .or_else(|| self.file.get(key))
    }

    /// The value of `setting` with its origin, falling back to the default.
    pub fn effective(&self, setting: &'static Setting) -> Option<Sourced> {
        self.raw(setting.key).cloned().or_else(|| {
            setting.default.map(|value| Sourced {
                setting,
                value: value.to_owned(),
                origin: Origin::Default,
            })
        })
    }

    /// The `[[entity]]` sections of the file: entity types implemented by worker processes.
    pub fn entities(&self) -> &[WorkerEntityConfig] {
        &self.entities
    }

    /// Things worth a warning (unknown `SHOAL_*` variables), to log once logging is set up.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// `SHOAL_*` variables that are not settings but are known (so not warned about).
const IGNORED_ENV: &[&str] = &["SHOAL_CONFIG"];

fn toml_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

/// The setting whose key is closest to `key` (a likely typo), if any is close.
fn closest(key: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .map(|s| (edit_distance(key, s.key), s))
        .filter(|(d, _)| *d <= 2.max(key.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, s)| s)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("lease_tll", "lease_ttl"), 1);
        assert_eq!(edit_distance("ttl_lease", "lease_ttl"), 8);
        assert_eq!(edit_distance("lease_ttl", "lease_ttl"), 0);
        assert_eq!(closest("lease_tl").map(|s| s.key), Some("lease_ttl"));
        assert_eq!(closest("zzzzzzzzzzzz").map(|s| s.key), None);
    }
}
