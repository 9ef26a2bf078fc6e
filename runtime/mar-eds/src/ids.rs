//! Object ids as Enginio handed them out: 24 lowercase hex digits, MongoDB ObjectIds (a
//! 4-byte timestamp, 5 random bytes, a 3-byte counter), so ids sort roughly by creation and
//! never repeat within a process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new id.
pub fn new_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let mut random = [0u8; 5];
    // An id is not a secret: without entropy the counter still keeps ids apart.
    let _ = getrandom::fill(&mut random);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
    let mut bytes = Vec::with_capacity(12);
    bytes.extend_from_slice(&secs.to_be_bytes());
    bytes.extend_from_slice(&random);
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
}
