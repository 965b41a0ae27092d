//! Making sure the Postgres the tests need is up.
//!
//! Uses `DATABASE_URL` when set, else `postgres://postgres@127.0.0.1:5432/test`. When nothing
//! answers and the URL points at this machine, starts the local cluster with `pg_ctlcluster`
//! (Debian's wrapper) and waits for it. Never skips: if Postgres cannot be reached, this fails
//! with what was tried.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The database the tests use when `DATABASE_URL` is not set.
pub(crate) const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Returns the database URL to hand to tests, after making sure it answers.
pub(crate) fn ensure() -> Result<String> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let (host, port) = host_port(&url)?;
    println!("==> postgres: checking {host}:{port} ({})", redact(&url));
    if reachable(&host, port) {
        return check_query(&url);
    }
    if !is_local(&host) {
        bail!(
            "Postgres at {host}:{port} does not answer and is not on this machine, so it cannot be \
             started from here. Start it, or set DATABASE_URL to one that runs."
        );
    }
    start_local_cluster()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if reachable(&host, port) {
            return check_query(&url);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("started the local Postgres cluster, but {host}:{port} still does not answer after 60 s")
}

pub(crate) fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .with_context(|| format!("DATABASE_URL {url:?} is not a postgres:// URL"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse()
                .with_context(|| format!("bad port in DATABASE_URL {url:?}"))?,
        ),
        _ => (hostport.trim_matches(['[', ']']).to_owned(), 5432),
    };
    let host = if host.is_empty() {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    Ok((host, port))
}

fn redact(url: &str) -> String {
    // Hide a password if there is one: scheme://user:secret@host -> scheme://user:***@host.
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let colon = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..colon], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn reachable(host: &str, port: u16) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

fn is_local(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.starts_with("127.")
}

fn start_local_cluster() -> Result<()> {
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context(
            "Postgres is not running and no local cluster is installed (/etc/postgresql is \
             missing). Install PostgreSQL (Debian: apt-get install postgresql) or set DATABASE_URL.",
        )?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let version = versions
        .iter()
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .context("no Postgres cluster version found under /etc/postgresql")?;
    println!("==> postgres: not answering; starting cluster {version}/main with pg_ctlcluster");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", "start"])
        .status()
        .context("could not run pg_ctlcluster (Debian's postgresql-common)")?;
    if !status.success() {
        bail!("pg_ctlcluster {version} main start failed ({status})");
    }
    Ok(())
}

/// Runs `select 1` through `psql` when it is installed, so a wrong database name or role fails
/// here, clearly, instead of in the middle of the tests.
fn check_query(url: &str) -> Result<String> {
    match Command::new("psql")
        .args([url, "-qAtc", "select 1"])
        .output()
    {
        Ok(out) if out.status.success() => {
            println!("==> postgres: ready");
            Ok(url.to_owned())
        }
        Ok(out) => bail!(
            "Postgres answers, but `select 1` on {} failed: {}",
            redact(url),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(_) => {
            println!("==> postgres: port answers (psql not installed; query check skipped)");
            Ok(url.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test").unwrap(),
            ("127.0.0.1".to_owned(), 5432)
        );
        assert_eq!(
            host_port("postgresql://u:p@db.example:6000/x?sslmode=disable").unwrap(),
            ("db.example".to_owned(), 6000)
        );
        assert_eq!(
            host_port("postgres://localhost/test").unwrap(),
            ("localhost".to_owned(), 5432)
        );
        assert!(host_port("mysql://x").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
