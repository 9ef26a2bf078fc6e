//! Object ids as Enginio handed them out: 24 lowercase hex digits, MongoDB ObjectIds (a
//! 4-byte timestamp, 5 random bytes drawn once per process, a 3-byte counter starting at a
//! random value), so ids sort by creation within a process and never repeat within it.
//!
//! As in MongoDB, the random part is the process's, not the id's: a backend's ids then grow
//! monotonically, so each insert appends to the right edge of the id index instead of
//! dirtying a random page of it (a page is 4 KiB of WAL per commit). Ids are not secrets;
//! access control, not obscurity, guards objects.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The process's random part and the counter's start.
fn process_random() -> &'static ([u8; 5], u32) {
    static RANDOM: OnceLock<([u8; 5], u32)> = OnceLock::new();
    RANDOM.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Without entropy the counter still keeps this process's ids apart.
        let _ = getrandom::fill(&mut bytes);
        let [a, b, c, d, e, f, g, h] = bytes;
        ([a, b, c, d, e], u32::from_be_bytes([0, f, g, h]))
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new id.
pub fn new_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let (random, start) = process_random();
    let n = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)) & 0x00ff_ffff;
    let mut bytes = Vec::with_capacity(12);
    bytes.extend_from_slice(&secs.to_be_bytes());
    bytes.extend_from_slice(random);
    bytes.extend_from_slice(&n.to_be_bytes()[1..]);
    hex(&bytes)
}

pub use mar_http::credentials::{hex, random_hex};

/// Whether `s` looks like an id (24 hex digits, either case).
pub fn valid(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_24_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_ne!(a, b);
        assert!(!valid("xyz"));
        assert!(!valid("0123456789abcdef0123456g"));
    }

    #[test]
    fn ids_share_the_process_part_and_count_up() {
        let a = new_id();
        let b = new_id();
        // Same process: the random middle is the same, and the counter went up (by one, or
        // a few if other tests made ids between the two; modulo its 24 bits).
        assert_eq!(a[8..18], b[8..18]);
        let count = |id: &str| u32::from_str_radix(&id[18..], 16).unwrap_or(0);
        let step = count(&b).wrapping_sub(count(&a)) & 0xff_ffff;
        assert!((1..1000).contains(&step), "{a} then {b}");
    }
}
