//! The shared storage of one run: a fresh Postgres database (created with `psql`, dropped at the
//! end unless `--keep`) on the test Postgres or, when a fault disturbs the server, on a server of
//! the run's own; or a SQLite file in the run's directory.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::options::StorageKind;
use super::pgserver::PgServer;

/// The storage the runners share.
pub(crate) struct ClusterStorage {
    /// The URL of the database (what the harness reads with; the runners get it, or the storage
    /// proxy's address in its place).
    pub(crate) url: String,
    /// What the report says about it.
    pub(crate) label: String,
    /// `(admin URL, database)` to drop at the end.
    drop_database: Option<(String, String)>,
    /// The run's own Postgres server, when it has one.
    pub(crate) server: Option<Arc<PgServer>>,
}

impl ClusterStorage {
    /// A database on a Postgres server of the run's own, started in `dir`.
    pub(crate) fn own_server(dir: &Path, keep: bool) -> Result<Self> {
        let server =
            PgServer::start(dir, keep).context("cannot start the run's Postgres server")?;
        let admin = server.admin_url();
        psql(&admin, "CREATE DATABASE shoal_cluster")?;
        let label = format!(
            "postgres (a server of the run's own on 127.0.0.1:{}, {}{})",
            server.port(),
            server.data_dir().display(),
            if keep {
                ", kept"
            } else {
                ", removed afterwards"
            }
        );
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Ok(Self {
            url: format!("{base}/shoal_cluster"),
            label,
            drop_database: None,
            server: Some(Arc::new(server)),
        })
    }

    /// Where the database server listens (`None` for SQLite).
    pub(crate) fn server_address(&self) -> Result<Option<SocketAddr>> {
        if !self.url.starts_with("postgres") {
            return Ok(None);
        }
        let (host, port) = crate::postgres::host_port(&self.url)?;
        let address = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}:{port}"))?
            .next()
            .with_context(|| format!("{host}:{port} resolves to nothing"))?;
        Ok(Some(address))
    }

    pub(crate) fn create(kind: StorageKind, dir: &Path, keep: bool) -> Result<Self> {
        match kind {
            StorageKind::Sqlite => {
                let path = dir.join("cluster.db");
                Ok(Self {
                    url: format!("sqlite://{}", path.display()),
                    label: format!("sqlite ({})", path.display()),
                    drop_database: None,
                    server: None,
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
                    server: None,
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
