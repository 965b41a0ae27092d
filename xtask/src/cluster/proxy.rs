//! A TCP proxy the harness puts between processes to disturb their traffic on command: forward,
//! delay every chunk, cut (drop every connection and refuse new ones), or blackhole (connections
//! stay open, new ones are accepted, and no byte moves either way — what a network partition
//! looks like to both ends; held bytes flow again, in order, when it heals). Connections from
//! given processes can be blackholed alone (see [`Proxy::hold_peer`]).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forwards at once.
    Forward,
    /// Forwards every chunk this long after it was read, in both directions.
    Delay(Duration),
    /// Drops every open connection and refuses new ones (accepted and reset at once).
    Cut,
    /// Forwards nothing: open connections stay open, new ones are accepted, bytes wait.
    Blackhole,
}

/// The rules every connection of a proxy follows.
#[derive(Debug, Clone)]
struct Rules {
    mode: Mode,
    /// Processes whose connections are blackholed whatever the mode.
    held: HashSet<u32>,
}

impl Rules {
    /// Whether a connection from `peer` is cut.
    fn cut(&self) -> bool {
        self.mode == Mode::Cut
    }

    /// Whether a connection from `peer` may move bytes now.
    fn open(&self, peer: Option<u32>) -> bool {
        match self.mode {
            Mode::Cut | Mode::Blackhole => false,
            Mode::Forward | Mode::Delay(_) => peer.is_none_or(|pid| !self.held.contains(&pid)),
        }
    }

    fn delay(&self) -> Duration {
        match self.mode {
            Mode::Delay(d) => d,
            _ => Duration::ZERO,
        }
    }
}

/// The processes a proxy looks for behind its connections (shared with the harness, which adds
/// the runners it starts).
pub(crate) type Candidates = Arc<RwLock<Vec<u32>>>;

/// A running proxy; stops (and drops its connections) when dropped.
pub(crate) struct Proxy {
    local: SocketAddr,
    rules: watch::Sender<Rules>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0: any free port) and forwards every connection to `target`.
    /// With `candidates`, each connection is traced at accept to the process that opened it,
    /// among those pids, so that [`Proxy::hold_peer`] can blackhole it.
    pub(crate) async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        candidates: Option<Candidates>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let (rules, watcher) = watch::channel(Rules {
            mode: Mode::Forward,
            held: HashSet::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, target, watcher, candidates));
        Ok(Self {
            local,
            rules,
            accept,
        })
    }

    /// Where it listens.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Applies `mode` to every connection, open or new.
    pub(crate) fn set_mode(&self, mode: Mode) {
        self.rules.send_modify(|rules| rules.mode = mode);
    }

    /// Blackholes the connections opened by process `pid` (open and new) until
    /// [`Proxy::release_peers`].
    pub(crate) fn hold_peer(&self, pid: u32) {
        self.rules.send_modify(|rules| {
            rules.held.insert(pid);
        });
    }

    /// Lets every process's connections move bytes again.
    pub(crate) fn release_peers(&self) {
        self.rules.send_modify(|rules| rules.held.clear());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Connections end when the rules' sender is gone.
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    rules: watch::Receiver<Rules>,
    candidates: Option<Candidates>,
) {
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            // Out of file descriptors or similar: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if rules.borrow().cut() {
            reset(conn);
            continue;
        }
        let rules = rules.clone();
        let candidates = candidates.clone();
        tokio::spawn(async move {
            let pid = match candidates {
                Some(candidates) => {
                    let local = conn.local_addr().ok();
                    tokio::task::spawn_blocking(move || {
                        let pids = candidates.read().map(|c| c.clone()).unwrap_or_default();
                        local.and_then(|local| super::peer::pid_of(peer, local, &pids))
                    })
                    .await
                    .ok()
                    .flatten()
                }
                None => None,
            };
            connection(conn, target, rules, pid).await;
        });
    }
}

/// Closes a connection with a reset (no orderly shutdown), as a cut link would look.
fn reset(conn: TcpStream) {
    let _ = conn.set_zero_linger();
    drop(conn);
}

/// Carries one connection until either side closes it, the proxy cuts it or is dropped.
async fn connection(
    conn: TcpStream,
    target: SocketAddr,
    mut rules: watch::Receiver<Rules>,
    peer: Option<u32>,
) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        reset(conn);
        return;
    };
    let _ = conn.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_in, client_out) = conn.into_split();
    let (server_in, server_out) = upstream.into_split();
    let up = direction(client_in, server_out, rules.clone(), peer);
    let down = direction(server_in, client_out, rules.clone(), peer);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            _ = &mut up, if !up_done => up_done = true,
            _ = &mut down, if !down_done => down_done = true,
            changed = rules.changed() => {
                if changed.is_err() || rules.borrow_and_update().cut() {
                    break;
                }
            }
        }
        if up_done && down_done {
            return;
        }
    }
    // Cut, or the proxy is gone: both directions, and their sockets, are dropped on return.
}

/// One direction of a connection: a reader that takes chunks while the rules let bytes move,
/// and a writer that sends each at its due time, in order.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    rules: watch::Receiver<Rules>,
    peer: Option<u32>,
) {
    // Bounded: a writer held back by a blackhole stops the reader too (as a full TCP window
    // would).
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(16);
    let mut read_rules = rules.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if wait_open(&mut read_rules, peer).await.is_err() {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = Instant::now() + read_rules.borrow().delay();
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let mut write_rules = rules;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if wait_open(&mut write_rules, peer).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The reader saw the end of the stream: pass it on.
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Waits until bytes may move for `peer`; `Err` when the connection is cut or the proxy is gone.
async fn wait_open(rules: &mut watch::Receiver<Rules>, peer: Option<u32>) -> Result<(), ()> {
    loop {
        {
            let now = rules.borrow_and_update();
            if now.cut() {
                return Err(());
            }
            if now.open(peer) {
                return Ok(());
            }
        }
        rules.changed().await.map_err(|_| ())?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    async fn proxy(candidates: Option<Candidates>) -> Proxy {
        Proxy::start("127.0.0.1:0".parse().unwrap(), echo().await, candidates)
            .await
            .unwrap()
    }

    /// Sends `text` and reads it back within `within`; `None` when nothing (or not all) came.
    async fn round_trip(conn: &mut TcpStream, text: &[u8], within: Duration) -> Option<Vec<u8>> {
        conn.write_all(text).await.ok()?;
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 1024];
            while got.len() < text.len() {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(within, read).await.ok()?;
        (got.len() == text.len()).then_some(got)
    }

    /// Whether the connection was closed or reset (a read ends without data).
    async fn closed(conn: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        let _ = conn.write_all(b"?").await;
        matches!(
            tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    const SOON: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn forwards_and_delays_both_ways() {
        let proxy = proxy(None).await;
        let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut conn, b"hello", SOON).await.as_deref(),
            Some(&b"hello"[..])
        );
        proxy.set_mode(Mode::Delay(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert!(round_trip(&mut conn, b"slow", SOON).await.is_some());
        // 150 ms on the way there, 150 ms on the way back.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        proxy.set_mode(Mode::Forward);
        let started = std::time::Instant::now();
        assert!(round_trip(&mut conn, b"fast", SOON).await.is_some());
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_cut_drops_connections_and_refuses_new_ones_until_it_heals() {
        let proxy = proxy(None).await;
        let mut open = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(round_trip(&mut open, b"a", SOON).await.is_some());
        proxy.set_mode(Mode::Cut);
        assert!(
            closed(&mut open).await,
            "an open connection survived the cut"
        );
        let mut new = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(
            closed(&mut new).await,
            "a new connection was served during the cut"
        );
        proxy.set_mode(Mode::Forward);
        let mut after = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(round_trip(&mut after, b"back", SOON).await.is_some());
    }

    #[tokio::test]
    async fn a_blackhole_holds_bytes_on_open_and_new_connections_until_it_heals() {
        let proxy = proxy(None).await;
        let mut open = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(round_trip(&mut open, b"a", SOON).await.is_some());
        proxy.set_mode(Mode::Blackhole);
        let short = Duration::from_millis(300);
        assert_eq!(round_trip(&mut open, b"held", short).await, None);
        let mut new = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(round_trip(&mut new, b"new", short).await, None);
        proxy.set_mode(Mode::Forward);
        // What was held arrives, in order, on both connections.
        let mut buf = [0u8; 4];
        tokio::time::timeout(SOON, open.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"held");
        let mut buf = [0u8; 3];
        tokio::time::timeout(SOON, new.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"new");
    }

    #[tokio::test]
    async fn holds_the_connections_of_one_process() {
        let me = std::process::id();
        let candidates: Candidates = Arc::new(RwLock::new(vec![me]));
        let proxy = proxy(Some(candidates)).await;
        let mut open = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(round_trip(&mut open, b"a", SOON).await.is_some());
        // Held: this process's connections, open and new; another pid's would still flow.
        proxy.hold_peer(me + 1);
        assert!(round_trip(&mut open, b"b", SOON).await.is_some());
        proxy.hold_peer(me);
        let short = Duration::from_millis(300);
        assert_eq!(round_trip(&mut open, b"c", short).await, None);
        let mut new = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(round_trip(&mut new, b"d", short).await, None);
        proxy.release_peers();
        let mut buf = [0u8; 1];
        tokio::time::timeout(SOON, open.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"c");
        tokio::time::timeout(SOON, new.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"d");
    }
}
