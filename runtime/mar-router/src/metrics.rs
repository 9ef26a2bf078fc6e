//! Router metrics in the Prometheus text format: requests by app and status class, a latency
//! histogram, open WebSockets, and bytes in and out. Counters are atomics, so recording costs
//! a few uncontended increments per request.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mar_core::AppName;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// One app's counters.
#[derive(Default)]
pub struct AppMetrics {
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    websockets: AtomicI64,
}

impl AppMetrics {
    /// Records one finished request.
    pub fn request(&self, status: u16, took: Duration, bytes_in: u64, bytes_out: u64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.bytes(bytes_in, bytes_out);
    }

    /// Adds relayed bytes.
    pub fn bytes(&self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// A WebSocket opened (+1) or closed (-1).
    pub fn websocket(&self, delta: i64) {
        self.websockets.fetch_add(delta, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: a request finishing meanwhile may be counted
    /// in one and not yet in another).
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            by_class: std::array::from_fn(|i| load(&self.by_class[i])),
            buckets: std::array::from_fn(|i| load(&self.buckets[i])),
            count: load(&self.count),
            websockets: self.websockets.load(Ordering::Relaxed).max(0),
        }
    }
}

/// One app's counters at one moment ([`AppMetrics::snapshot`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests by status class, 1xx to 5xx.
    pub by_class: [u64; 5],
    /// Requests by latency bucket ([`BUCKETS`]; slower ones are counted only in `count`).
    pub buckets: [u64; BUCKETS.len()],
    /// All requests.
    pub count: u64,
    /// WebSockets open.
    pub websockets: i64,
}

/// All apps' counters.
#[derive(Default)]
pub struct Metrics {
    apps: RwLock<HashMap<AppName, Arc<AppMetrics>>>,
}

impl Metrics {
    /// The counters of `app`, created on first use.
    pub fn app(&self, app: &AppName) -> Arc<AppMetrics> {
        if let Some(m) = self.apps.read().unwrap_or_else(|e| e.into_inner()).get(app) {
            return m.clone();
        }
        self.apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.clone())
            .or_default()
            .clone()
    }

    /// Forgets a destroyed app.
    pub fn remove(&self, app: &AppName) {
        self.apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&AppName> = apps.keys().collect();
        names.sort();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP mar_http_requests_total Requests routed to apps, by status class.\n# TYPE mar_http_requests_total counter"
        );
        for name in &names {
            for (i, c) in apps[*name].by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "mar_http_requests_total{{app=\"{name}\",status=\"{}xx\"}} {}",
                    i + 1,
                    c.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mar_http_request_duration_seconds Time to the end of the response.\n# TYPE mar_http_request_duration_seconds histogram"
        );
        for name in &names {
            let m = &apps[*name];
            let mut acc = 0;
            for (b, c) in BUCKETS.iter().zip(&m.buckets) {
                acc += c.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "mar_http_request_duration_seconds_bucket{{app=\"{name}\",le=\"{b}\"}} {acc}"
                );
            }
            let count = m.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "mar_http_request_duration_seconds_bucket{{app=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "mar_http_request_duration_seconds_sum{{app=\"{name}\"}} {}",
                m.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "mar_http_request_duration_seconds_count{{app=\"{name}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP mar_websockets_open WebSocket connections open now.\n# TYPE mar_websockets_open gauge"
        );
        for name in &names {
            let _ = writeln!(
                out,
                "mar_websockets_open{{app=\"{name}\"}} {}",
                apps[*name].websockets.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mar_bytes_total Bytes relayed, in from clients and out to them.\n# TYPE mar_bytes_total counter"
        );
        for name in &names {
            let m = &apps[*name];
            let _ = writeln!(
                out,
                "mar_bytes_total{{app=\"{name}\",direction=\"in\"}} {}",
                m.bytes_in.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "mar_bytes_total{{app=\"{name}\",direction=\"out\"}} {}",
                m.bytes_out.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        let app = AppName::parse("echo").unwrap();
        m.app(&app).request(200, Duration::from_millis(3), 10, 20);
        m.app(&app).request(503, Duration::from_secs(2), 0, 5);
        m.app(&app).websocket(1);
        let text = m.render();
        assert!(
            text.contains("mar_http_requests_total{app=\"echo\",status=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("mar_http_requests_total{app=\"echo\",status=\"5xx\"} 1"));
        assert!(
            text.contains("mar_http_request_duration_seconds_bucket{app=\"echo\",le=\"0.005\"} 1")
        );
        assert!(text.contains("mar_http_request_duration_seconds_bucket{app=\"echo\",le=\"5\"} 2"));
        assert!(text.contains("mar_http_request_duration_seconds_count{app=\"echo\"} 2"));
        assert!(text.contains("mar_websockets_open{app=\"echo\"} 1"));
        assert!(text.contains("mar_bytes_total{app=\"echo\",direction=\"out\"} 25"));
    }
}
