//! Command-line flags generated from the settings table, so every setting has exactly one flag
//! name and the help text shows its environment variable and default.

use std::fmt;
use std::marker::PhantomData;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use super::settings::{Flag, SETTINGS, Scopes, Setting};

/// Which command's settings a [`SettingFlags`] takes.
pub trait Scope: Send + Sync + 'static {
    /// The command's scope in the settings table.
    const SCOPES: Scopes;
}

/// The settings of `shoal run`.
#[derive(Debug, Clone, Copy)]
pub struct RunScope;
impl Scope for RunScope {
    const SCOPES: Scopes = Scopes::RUN;
}

/// The settings of `shoal status`.
#[derive(Debug, Clone, Copy)]
pub struct StatusScope;
impl Scope for StatusScope {
    const SCOPES: Scopes = Scopes::STATUS;
}

/// The settings of `shoal migrate`.
#[derive(Debug, Clone, Copy)]
pub struct MigrateScope;
impl Scope for MigrateScope {
    const SCOPES: Scopes = Scopes::MIGRATE;
}

/// The setting flags given on a command line (flatten into a clap command).
pub struct SettingFlags<S> {
    values: Vec<(&'static Setting, String)>,
    _scope: PhantomData<fn() -> S>,
}

impl<S> Clone for SettingFlags<S> {
    fn clone(&self) -> Self {
        Self {
            values: self.values.clone(),
            _scope: PhantomData,
        }
    }
}

impl<S> Default for SettingFlags<S> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            _scope: PhantomData,
        }
    }
}

impl<S> fmt::Debug for SettingFlags<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.iter().map(|(s, v)| {
                let shown = if s.secret { "<redacted>" } else { v.as_str() };
                (s.key, shown)
            }))
            .finish()
    }
}

impl<S: Scope> SettingFlags<S> {
    /// The flags that were given, as `(setting, value)`.
    pub fn values(&self) -> impl Iterator<Item = (&'static Setting, &str)> {
        self.values.iter().map(|(s, v)| (*s, v.as_str()))
    }

    /// Sets a flag value by setting key (for callers adding flags of their own, like `-v`).
    pub fn set_if_absent(&mut self, key: &str, value: &str) {
        if self.values.iter().any(|(s, _)| s.key == key) {
            return;
        }
        if let Some(setting) = SETTINGS.iter().find(|s| s.key == key) {
            self.values.push((setting, value.to_owned()));
        }
    }

    fn settings() -> impl Iterator<Item = &'static Setting> {
        SETTINGS
            .iter()
            .filter(|s| s.scopes.contains(S::SCOPES) && s.flag != Flag::None)
    }
}

impl<S: Scope> FromArgMatches for SettingFlags<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut values = Vec::new();
        for setting in Self::settings() {
            match setting.flag {
                Flag::Value(_) => {
                    if let Some(v) = matches.get_one::<String>(setting.key) {
                        values.push((setting, v.clone()));
                    }
                }
                Flag::Switch { sets, .. } => {
                    if matches.get_flag(setting.key) {
                        values.push((setting, sets.to_owned()));
                    }
                }
                Flag::None => {}
            }
        }
        Ok(Self {
            values,
            _scope: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<S: Scope> Args for SettingFlags<S> {
    fn augment_args(mut cmd: Command) -> Command {
        for setting in Self::settings() {
            let default = setting
                .default
                .map(|d| format!(" [default: {d}]"))
                .unwrap_or_default();
            let switch = match setting.flag {
                Flag::Switch { sets, .. } => format!("Sets {} to {sets}. ", setting.key),
                _ => String::new(),
            };
            let help = format!("{switch}{} [env: {}]{default}", setting.help, setting.env);
            let arg = match setting.flag {
                Flag::Value(name) => Arg::new(setting.key)
                    .long(name)
                    .value_name(setting.value_name)
                    .value_parser(clap::value_parser!(String))
                    .action(ArgAction::Set),
                Flag::Switch { name, .. } => {
                    Arg::new(setting.key).long(name).action(ArgAction::SetTrue)
                }
                Flag::None => continue,
            };
            cmd = cmd.arg(arg.help(help).help_heading("Settings"));
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
