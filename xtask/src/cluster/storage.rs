//! The shared storage of one run: a fresh Postgres database (created with `psql`, dropped at the
//! end unless `--keep`) or a SQLite file in the run's directory.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::options::StorageKind;

/// The storage the runners share.
pub(crate) struct ClusterStorage {
    /// The URL the runners get.
    pub(crate) url: String,
    /// What the report says about it.
    pub(crate) label: String,
    /// `(admin URL, database)` to drop at the end.
    drop_database: Option<(String, String)>,
}

impl ClusterStorage {
    pub(crate) fn create(kind: StorageKind, dir: &Path, keep: bool) -> Result<Self> {
        match kind {
            StorageKind::Sqlite => {
                let path = dir.join("cluster.db");
                Ok(Self {
                    url: format!("sqlite://{}", path.display()),
                    label: format!("sqlite ({})", path.display()),
                    drop_database: None,
                })
            }
            StorageKind::Postgres => {
                let admin = crate::postgres::ensure()?;
                let name = format!("shoal_cluster_{}", std::process::id());
                psql(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
                psql(&admin, &format!("CREATE DATABASE {name}"))?;
                let base = admin
                    .split('?')
                    .next()
                    .and_then(|u| u.rsplit_once('/'))
                    .map(|(base, _)| base)
                    .context("DATABASE_URL has no database name")?;
                let label = if keep {
                    format!("postgres (database {name}, kept)")
                } else {
                    format!("postgres (database {name}, dropped afterwards)")
                };
                Ok(Self {
                    url: format!("{base}/{name}"),
                    label,
                    drop_database: (!keep).then_some((admin, name)),
                })
            }
        }
    }
}

impl Drop for ClusterStorage {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.drop_database
            && let Err(e) = psql(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
        {
            eprintln!("warning: could not drop database {name}: {e:#}");
        }
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .context("could not run psql (install the PostgreSQL client, or use --storage sqlite)")?;
    if !out.status.success() {
        bail!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
