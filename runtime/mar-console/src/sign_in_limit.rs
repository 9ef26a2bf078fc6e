//! Failed sign-ins, limited per client address: a console password can be guessed, so an
//! address that failed [`MAX_FAILURES`] times is refused until [`WINDOW`] has passed since its
//! first failure. At most [`MAX_TRACKED`] addresses are remembered (those whose window is over
//! go first, then the oldest), so the table cannot be grown without bound by many addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins an address may make within [`WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// How long failures count.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);
/// Most addresses remembered at once.
const MAX_TRACKED: usize = 4096;

/// The failed sign-ins of each address (see the module's doc).
#[derive(Debug, Default)]
pub struct SignInLimit {
    /// Address → failures in its window, and when the window began.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl SignInLimit {
    /// How long `ip` must still wait before it may try again, if it is refused now.
    pub fn refused(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (count, since) = failures.get(&ip)?;
        let over = since.checked_add(WINDOW)?;
        (*count >= MAX_FAILURES && now < over).then(|| over - now)
    }

    /// Counts a failed sign-in of `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            failures.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
            if failures.len() >= MAX_TRACKED
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(ip, _)| *ip)
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// Forgets `ip`'s failures: it signed in.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_passes() {
        let limit = SignInLimit::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(limit.refused(a, t0), None, "after {i} failures");
            limit.failed(a, t0);
        }
        let wait = limit.refused(a, t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(wait, WINDOW - Duration::from_secs(60));
        assert_eq!(limit.refused(b, t0), None, "another address is not");
        assert_eq!(limit.refused(a, t0 + WINDOW), None, "the window passed");
        // A failure after the window starts a new one.
        limit.failed(a, t0 + WINDOW);
        assert_eq!(limit.refused(a, t0 + WINDOW), None);
        // Signing in forgets the failures.
        for _ in 0..MAX_FAILURES {
            limit.failed(b, t0);
        }
        limit.succeeded(b);
        assert_eq!(limit.refused(b, t0), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let limit = SignInLimit::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limit.failed(ip, t0 + Duration::from_millis(u64::from(i)));
        }
        let len = limit.failures.lock().unwrap().len();
        assert!(len <= MAX_TRACKED, "{len}");
    }
}
