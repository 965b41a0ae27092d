//! A Postgres server of the run's own, for faults that disturb the server (`pg-restart`): the
//! machine's shared Postgres is never restarted or slowed. `initdb` and `pg_ctl` from the
//! PostgreSQL installation make a cluster in the run's directory, on a free port, with trust
//! authentication; it is stopped at the end, and its files removed unless `--keep`. As root, the
//! server runs as the `postgres` user (Postgres refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian and Ubuntu install the server binaries (the newest version is used).
const INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// A running Postgres server of this run.
pub(crate) struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Run the server's tools as this user (when the harness runs as root).
    user: Option<&'static str>,
    keep: bool,
}

impl PgServer {
    /// Makes a cluster in `dir/pg` and starts it on a free port.
    pub(crate) fn start(dir: &Path, keep: bool) -> Result<Self> {
        let bin = server_bin()?;
        let root = dir.join("pg");
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let user = rustix::process::getuid().is_root().then_some("postgres");
        if let Some(user) = user {
            let status = Command::new("chown")
                .args([&format!("{user}:"), root.to_str().context("bad path")?])
                .status()
                .context("could not run chown")?;
            if !status.success() {
                bail!(
                    "chown {user} {} failed (is there a {user} user?)",
                    root.display()
                );
            }
        }
        let server = Self {
            bin,
            data: root.join("data"),
            port: free_port()?,
            user,
            keep,
        };
        let data = server.data.to_str().context("bad path")?.to_owned();
        server.tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            server.port,
            root.display()
        );
        let log = server.log();
        server.tool(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                log.to_str().context("bad path")?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(server)
    }

    /// The admin URL (database `postgres`).
    pub(crate) fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Where it listens.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Where its files are.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log file.
    fn log(&self) -> PathBuf {
        self.data.with_file_name("postgres.log")
    }

    /// Restarts the server in fast mode (open sessions are disconnected, transactions rolled
    /// back) and waits until it accepts connections again; returns how long that took.
    pub(crate) fn restart(&self) -> Result<Duration> {
        let started = Instant::now();
        let data = self.data.to_str().context("bad path")?;
        let log = self.log();
        // With its log file: a server left on pg_ctl's output would keep the pipe this reads open.
        self.tool(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().context("bad path")?,
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ],
        )?;
        Ok(started.elapsed())
    }

    /// Runs one of the server's tools (as the `postgres` user when the harness is root).
    fn tool(&self, name: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(name);
        let mut command = match self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        // Not in the run's directory: the postgres user may not read the harness's cwd.
        let out = command
            .args(args)
            .stdin(std::process::Stdio::null())
            .current_dir("/")
            .output()
            .with_context(|| format!("could not run {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{name} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(data) = self.data.to_str()
            && let Err(e) = self.tool("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"])
        {
            eprintln!("warning: could not stop the run's Postgres server: {e:#}");
        }
        if !self.keep
            && let Some(root) = self.data.parent()
        {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// The `bin` directory of the newest installed server version.
fn server_bin() -> Result<PathBuf> {
    let newest = std::fs::read_dir(INSTALL_ROOT)
        .with_context(|| {
            format!(
                "no PostgreSQL server installed under {INSTALL_ROOT} (the run needs its own \
                 server for pg-restart: install the postgresql package)"
            )
        })?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("bin/initdb").exists())
        .max_by_key(|e| {
            e.file_name()
                .to_str()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .with_context(|| format!("no initdb under {INSTALL_ROOT}/*/bin"))?;
    Ok(newest.path().join("bin"))
}

/// A TCP port nothing listens on now.
pub(crate) fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free TCP port")?;
    Ok(listener.local_addr()?.port())
}
