//! Whose socket listens on a port: before traffic goes to an instance's `$PORT`, the
//! listener there must belong to one of the instance's own processes. Otherwise another app
//! took the port (it was free between the pick and the app's bind, or the instance failed to
//! bind and stayed alive) and would receive this app's users' requests and cookies.
//!
//! The kernel's tables in `/proc/net/tcp` and `tcp6` name each listening socket's inode; a
//! process holds the socket when one of its descriptors is `socket:[INODE]`. Parsing is pure.

use std::collections::HashSet;

/// TCP state LISTEN in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp` or `tcp6` table.
pub(crate) fn listening_inodes(table: &str, port: u16) -> HashSet<u64> {
    let hex_port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let local = f.get(1)?;
            let (_, p) = local.rsplit_once(':')?;
            (p.eq_ignore_ascii_case(&hex_port) && *f.get(3)? == LISTEN)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether one of `pids` holds a socket listening on `port`; `None` when nothing listens on
/// it at all.
pub fn held_by(port: u16, pids: &[u32]) -> Option<bool> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let held = pids.iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .ok()
                        .and_then(|l| {
                            let l = l.to_str()?.to_owned();
                            l.strip_prefix("socket:[")?
                                .strip_suffix(']')?
                                .parse::<u64>()
                                .ok()
                        })
                        .is_some_and(|inode| inodes.contains(&inode))
                })
            })
            .unwrap_or(false)
    });
    Some(held)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 99999 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inodes(table, 8080), HashSet::from([12345]));
        assert!(listening_inodes(table, 8081).is_empty());
    }

    #[test]
    fn a_listener_is_held_by_its_own_process_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(held_by(port, &[std::process::id()]), Some(true));
        // pid 1 (init) does not hold this process's socket.
        assert_eq!(held_by(port, &[1]), Some(false));
        drop(l);
        // Nothing of this process's listens there any more (another test may have taken the
        // freed port meanwhile).
        assert_ne!(held_by(port, &[std::process::id()]), Some(true));
    }
}
