//! Which process opened a TCP connection on this machine: every connection between runners comes
//! from 127.0.0.1, so a proxy tells runners apart by the process behind the peer's ephemeral port.
//!
//! `/proc/net/tcp` (and `tcp6`) map a socket's local and remote address to its inode;
//! `/proc/<pid>/fd/*` links read `socket:[inode]` for the sockets a process holds. Works for the
//! processes of the same user (or any, as root).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The pid, among `candidates`, of the process that holds the TCP socket whose local address is
/// `peer` and whose remote address is `local` (the far end of a connection accepted on `local`
/// from `peer`). `None` when no candidate holds it (or it is already closed).
pub(crate) fn pid_of(peer: SocketAddr, local: SocketAddr, candidates: &[u32]) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            find_inode(&text, peer, local)
        })?;
    let wanted = format!("socket:[{inode}]");
    candidates.iter().copied().find(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str().to_str() == Some(&wanted))
        })
    })
}

/// The inode of the socket in a `/proc/net/tcp{,6}` table whose local address is `local` and
/// remote address is `remote`.
pub(crate) fn find_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let (l, r, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        let matches = same(parse_address(l)?, local) && same(parse_address(r)?, remote);
        matches.then(|| inode.parse().ok()).flatten()
    })
}

/// Whether two socket addresses are the same, an IPv4-mapped IPv6 address equal to its IPv4 one.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), as the kernel prints them: each
/// 32-bit word in host byte order (little-endian here), the port in big-endian hex.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [word] => IpAddr::V4(Ipv4Addr::from(word.to_le_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn reads_the_kernel_tables() {
        let proxy: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        assert_eq!(find_inode(TABLE, peer, proxy), Some(2222));
        assert_eq!(find_inode(TABLE, proxy, peer), Some(3333));
        assert_eq!(
            find_inode(TABLE, peer, "127.0.0.1:1".parse().unwrap()),
            None
        );
        assert_eq!(
            parse_address("0000000000000000FFFF00000100007F:1F90"),
            Some("[::ffff:127.0.0.1]:8080".parse().unwrap())
        );
        assert!(same(
            "[::ffff:127.0.0.1]:8080".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        ));
    }

    #[test]
    fn finds_the_process_behind_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = TcpStream::connect(local).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = std::process::id();
        assert_eq!(pid_of(peer, local, &[1, me]), Some(me));
        assert_eq!(pid_of(peer, local, &[1]), None);
        drop(client);
    }
}
