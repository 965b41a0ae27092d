//! The links of a run the harness can disturb: a proxy between the runners and Postgres
//! (`storage-latency`, `storage-cut`), and one proxy in front of each runner's runner-to-runner
//! listener (`partition`). Runners get the storage proxy's address in their storage URL and
//! advertise their own proxy's port (`--advertise-port`), so every byte between runners and to
//! storage crosses a proxy; the harness's own checks (status, psql) and the gateways do not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result};

use super::proxy::{Candidates, Mode, Proxy};

/// The proxies of a run, on a runtime of their own.
pub(crate) struct Links {
    runtime: tokio::runtime::Runtime,
    storage: Option<Proxy>,
    /// Runner number -> the proxy in front of it.
    runners: Mutex<BTreeMap<usize, Proxy>>,
    /// Whether runners get a proxy each.
    runner_proxies: bool,
    /// The pids of the runners, to tell whose connection a proxy carries.
    candidates: Candidates,
    /// The runner cut off (its number and pid), applied to proxies started meanwhile too.
    partitioned: Mutex<Option<(usize, u32)>>,
}

impl Links {
    /// Starts the storage proxy towards `storage` (when given); runners get proxies of their own
    /// when `runner_proxies`.
    pub(crate) fn start(storage: Option<SocketAddr>, runner_proxies: bool) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("proxy")
            .enable_all()
            .build()
            .context("cannot start the proxies' runtime")?;
        let storage = match storage {
            Some(target) => Some(
                runtime
                    .block_on(Proxy::start(localhost(0), target, None))
                    .with_context(|| format!("cannot start the storage proxy to {target}"))?,
            ),
            None => None,
        };
        Ok(Self {
            runtime,
            storage,
            runners: Mutex::new(BTreeMap::new()),
            runner_proxies,
            candidates: Arc::new(RwLock::new(Vec::new())),
            partitioned: Mutex::new(None),
        })
    }

    /// `url` with its host and port replaced by the storage proxy's (unchanged without one).
    pub(crate) fn storage_url(&self, url: &str) -> Result<String> {
        let Some(proxy) = &self.storage else {
            return Ok(url.to_owned());
        };
        let (scheme, rest) = url.split_once("://").context("storage URL has no scheme")?;
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (user, _) = authority
            .rsplit_once('@')
            .map_or((None, authority), |(u, h)| (Some(u), h));
        let address = proxy.local_addr();
        Ok(match user {
            Some(user) => format!("{scheme}://{user}@{address}{path}"),
            None => format!("{scheme}://{address}{path}"),
        })
    }

    /// Whether runners get a proxy each.
    pub(crate) fn runner_proxies(&self) -> bool {
        self.runner_proxies
    }

    /// Starts the proxy in front of runner `number`, which will listen on `listen_port`;
    /// returns the port to advertise.
    pub(crate) fn add_runner(&self, number: usize, listen_port: u16) -> Result<u16> {
        let proxy = self
            .runtime
            .block_on(Proxy::start(
                localhost(0),
                localhost(listen_port),
                Some(self.candidates.clone()),
            ))
            .with_context(|| format!("cannot start the proxy of runner {number}"))?;
        if let Some((cut, pid)) = *lock(&self.partitioned) {
            if cut == number {
                proxy.set_mode(Mode::Blackhole);
            } else {
                proxy.hold_peer(pid);
            }
        }
        let port = proxy.local_addr().port();
        lock(&self.runners).insert(number, proxy);
        Ok(port)
    }

    /// Records the pid of a process started, so proxies can trace connections to it.
    pub(crate) fn add_pid(&self, pid: u32) {
        if let Ok(mut pids) = self.candidates.write() {
            pids.push(pid);
        }
    }

    /// Sets what the storage proxy does.
    pub(crate) fn set_storage(&self, mode: Mode) -> Result<()> {
        self.storage
            .as_ref()
            .context("no storage proxy in this run")?
            .set_mode(mode);
        Ok(())
    }

    /// Cuts runner `number` (process `pid`) off the other runners, both ways: its proxy forwards
    /// nothing (open connections stay open, new ones are accepted and hang), and the other
    /// runners' proxies forward nothing on the connections it opened.
    pub(crate) fn partition(&self, number: usize, pid: u32) -> Result<()> {
        let runners = lock(&self.runners);
        runners
            .get(&number)
            .with_context(|| format!("runner {number} has no proxy"))?;
        *lock(&self.partitioned) = Some((number, pid));
        for (n, proxy) in runners.iter() {
            if *n == number {
                proxy.set_mode(Mode::Blackhole);
            } else {
                proxy.hold_peer(pid);
            }
        }
        Ok(())
    }

    /// Ends a partition: every runner proxy forwards again (held bytes flow on).
    pub(crate) fn heal_partition(&self) {
        *lock(&self.partitioned) = None;
        for proxy in lock(&self.runners).values() {
            proxy.set_mode(Mode::Forward);
            proxy.release_peers();
        }
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_point_at_the_proxy() {
        let links = Links::start(Some(localhost(5432)), false).unwrap();
        let port = links.storage.as_ref().unwrap().local_addr().port();
        assert_eq!(
            links
                .storage_url("postgres://postgres@127.0.0.1:5432/shoal_x")
                .unwrap(),
            format!("postgres://postgres@127.0.0.1:{port}/shoal_x")
        );
        assert_eq!(
            links.storage_url("postgres://localhost/db?x=1").unwrap(),
            format!("postgres://127.0.0.1:{port}/db?x=1")
        );
        let none = Links::start(None, false).unwrap();
        assert_eq!(
            none.storage_url("postgres://h/db").unwrap(),
            "postgres://h/db"
        );
    }
}
