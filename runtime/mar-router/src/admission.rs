//! Admission of client connections, as nginx's `limit_conn`: at most so many at once in all,
//! and at most so many from one client address, so that one client holding thousands of
//! connections cannot take every descriptor and starve everyone else (and the platform, whose
//! own work needs descriptors too). A refused connection gets a short 503 (H11) and is closed
//! before anything is read from it.
//!
//! One `Admission` is shared by every router thread; a connection holds an [`Admitted`]
//! ticket for as long as it is open, WebSocket sessions included.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Connection caps; see the module docs.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused so far, for the metrics.
    refused: AtomicU64,
    /// When (ms since start of the process) a refusal was last logged, so a flood logs one line
    /// a second at most.
    last_warned: AtomicU64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The router holds `max_total` connections.
    Total,
    /// This client holds `max_per_client`.
    Client,
}

/// An admitted connection's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Admission {
    /// Caps of `max_total` connections in all and `max_per_client` from one address.
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            last_warned: AtomicU64::new(0),
        })
    }

    /// No caps (tests, and callers that enforce their own).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX, usize::MAX)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits a connection from `client`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Refused> {
        let client = client_key(client);
        let refuse = |why| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.warn(client, why);
            Err(why)
        };
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return refuse(Refused::Total);
        }
        let mut per = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(client).or_insert(0);
        if *n >= self.max_per_client {
            drop(per);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return refuse(Refused::Client);
        }
        *n += 1;
        Ok(Admitted {
            admission: Arc::clone(self),
            client,
        })
    }

    fn warn(&self, client: IpAddr, why: Refused) {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1000;
        let last = self.last_warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            match why {
                Refused::Total => tracing::warn!(
                    "refusing connections: {} are open (max_connections)",
                    self.max_total
                ),
                Refused::Client => tracing::warn!(
                    "refusing connections from {client}: it holds {} (max_connections_per_client)",
                    self.max_per_client
                ),
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per = self
            .admission
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.client);
            }
        }
        drop(per);
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The address a client is counted under: an IPv6 client by its /64 (one host can pick any
/// address in its prefix), an IPv4-mapped address as the IPv4 one. (Apps on this host, which
/// could rotate through 127.0.0.0/8, are held to a count of their own by the platform's
/// nftables rules.)
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_loopback() => ip,
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// What a refused plain-HTTP connection is told before it is closed.
pub(crate) fn refusal(why: Refused) -> &'static [u8] {
    match why {
        Refused::Total => b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 62\r\n\r\nH11: the router is at its connection limit; try again shortly\n",
        Refused::Client => b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 62\r\n\r\nH11: too many connections from your address; close some first\n",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn caps_hold_and_tickets_give_places_back() {
        let a = Admission::new(3, 2);
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refused::Client);
        let _y1 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), Refused::Total);
        assert_eq!((a.open(), a.refused()), (3, 2));
        drop(x1);
        let _x3 = a.admit(x).unwrap();
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_prefix() {
        let a = Admission::new(100, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _one = a.admit(ip("2001:db8::1")).unwrap();
        let _two = a.admit(ip("2001:db8::ffff:2")).unwrap();
        assert_eq!(a.admit(ip("2001:db8::3")).unwrap_err(), Refused::Client);
        let _other = a.admit(ip("2001:db8:0:1::1")).unwrap();
        let _v4 = a.admit(ip("::ffff:10.0.0.1")).unwrap();
        let _v4b = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refused::Client);
    }

    #[test]
    fn refusals_are_well_formed_http() {
        for why in [Refused::Total, Refused::Client] {
            let text = std::str::from_utf8(refusal(why)).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{why:?}");
        }
    }
}
