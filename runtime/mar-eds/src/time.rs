//! Times as Enginio wrote them: ISO 8601 in UTC with milliseconds (`2013-06-28T16:38:32.369Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A Unix time in milliseconds (the Node SDK's `$type: time`).
pub fn rfc3339_from_millis(ms: f64) -> String {
    let t = if ms >= 0.0 && ms.is_finite() {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn milliseconds_and_z() {
        assert_eq!(
            super::rfc3339_from_millis(1_372_437_512_369.0),
            "2013-06-28T16:38:32.369Z"
        );
        assert!(super::now().ends_with('Z'));
    }
}
