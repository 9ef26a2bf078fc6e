//! The last hour of each app's figures, for the web console's charts: every 10 s the router's
//! counters are read, and what changed since the previous reading becomes a sample (requests
//! by status class, p50 and p99 latency from the histogram's buckets), beside the open
//! WebSockets, each instance's memory and the app's restarts. Kept in memory (360 samples an
//! app, about 100 kB): no time-series service needed, and a restart of `mar serve` starts
//! the charts afresh.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mar_core::AppName;
use mar_router::metrics::{BUCKETS, Snapshot};
use serde::Serialize;

/// Time between samples.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: an hour.
const KEEP: usize = 360;

/// One interval of one app.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Sample {
    /// Its end, in Unix seconds.
    pub t: u64,
    /// Requests finished within it, by status class (`2xx`…).
    pub requests: BTreeMap<&'static str, u64>,
    /// Median latency within it, in milliseconds (`None` without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: Option<f64>,
    /// WebSockets open at its end.
    pub websockets: i64,
    /// Each instance's memory at its end, in bytes.
    pub memory: BTreeMap<String, u64>,
    /// Restarts after a crash of the app's instances since `mar serve` started, whichever
    /// instances they were: it never goes down, so its rise is what happened.
    pub restarts: u64,
}

/// What an app's instances are at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Instances {
    /// Memory by instance (`web.1`).
    pub memory: BTreeMap<String, u64>,
    /// Each instance's restarts after a crash so far, by its unique id: a deploy or a
    /// `ps:restart` replaces instances, and their counts with them.
    pub restarts: BTreeMap<u64, u32>,
}

#[derive(Default)]
struct History {
    last: Snapshot,
    samples: VecDeque<Sample>,
    /// The restarts counted so far, and each instance's count when last looked at.
    restarts: Restarts,
}

/// Restarts kept as a running total across instances that come and go.
#[derive(Debug, Clone, Default)]
struct Restarts {
    total: u64,
    seen: BTreeMap<u64, u32>,
}

impl Restarts {
    /// The total once `now`'s counts are taken in; each instance adds what it gained since it
    /// was last seen (all of its count when it is new).
    fn add(&self, now: &BTreeMap<u64, u32>) -> Self {
        let gained: u64 = now
            .iter()
            .map(|(id, n)| u64::from(n.saturating_sub(self.seen.get(id).copied().unwrap_or(0))))
            .sum();
        Self {
            total: self.total + gained,
            seen: now.clone(),
        }
    }
}

/// Every app's last hour.
#[derive(Default)]
pub(crate) struct MetricsHistory {
    apps: Mutex<HashMap<AppName, History>>,
}

impl MetricsHistory {
    /// Closes the current interval of `app` at `now`.
    pub(crate) fn record(&self, app: &AppName, now: Snapshot, instances: Instances, t: u64) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let h = apps.entry(app.clone()).or_default();
        h.restarts = h.restarts.add(&instances.restarts);
        let s = sample(&h.last, &now, instances.memory, h.restarts.total, t);
        h.last = now;
        h.samples.push_back(s);
        while h.samples.len() > KEEP {
            h.samples.pop_front();
        }
    }

    /// The last hour of `app`, with the interval still open as its last sample (so traffic
    /// shows at once).
    pub(crate) fn series(
        &self,
        app: &AppName,
        now: Snapshot,
        instances: Instances,
        t: u64,
    ) -> Vec<Sample> {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let (last, mut samples, restarts) = match apps.get(app) {
            Some(h) => (
                h.last,
                h.samples.iter().cloned().collect::<Vec<_>>(),
                h.restarts.add(&instances.restarts),
            ),
            None => (
                Snapshot::default(),
                Vec::new(),
                Restarts::default().add(&instances.restarts),
            ),
        };
        samples.push(sample(&last, &now, instances.memory, restarts.total, t));
        samples
    }

    /// Keeps the history of these apps only (the others were destroyed).
    pub(crate) fn retain(&self, apps: &[AppName]) {
        let mut all = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|a, _| apps.contains(a));
    }
}

/// The sample of the interval from `prev` to `now`.
fn sample(
    prev: &Snapshot,
    now: &Snapshot,
    memory: BTreeMap<String, u64>,
    restarts: u64,
    t: u64,
) -> Sample {
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let requests = classes
        .iter()
        .zip(now.by_class.iter().zip(&prev.by_class))
        .map(|(c, (n, p))| (*c, n.saturating_sub(*p)))
        .collect();
    let buckets: [u64; BUCKETS.len()] =
        std::array::from_fn(|i| now.buckets[i].saturating_sub(prev.buckets[i]));
    let count = now.count.saturating_sub(prev.count);
    Sample {
        t,
        requests,
        p50_ms: percentile(&buckets, count, 0.50),
        p99_ms: percentile(&buckets, count, 0.99),
        websockets: now.websockets,
        memory,
        restarts,
    }
}

/// The `q` quantile of `count` requests from the histogram's buckets, in milliseconds,
/// interpolated within its bucket; past the last bucket, the last bound (a lower bound).
fn percentile(buckets: &[u64; BUCKETS.len()], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = ((q * count as f64).ceil() as u64).max(1);
    let mut below = 0u64;
    let mut lower = 0.0;
    for (bound, n) in BUCKETS.iter().zip(buckets) {
        if below + n >= rank && *n > 0 {
            let within = (rank - below) as f64 / *n as f64;
            return Some((lower + (bound - lower) * within) * 1000.0);
        }
        below += n;
        lower = *bound;
    }
    Some(lower * 1000.0)
}

/// Samples every app every [`INTERVAL`] until `stop`.
pub(crate) fn spawn_sampler(
    history: Arc<MetricsHistory>,
    metrics: Arc<mar_router::Metrics>,
    apps: Arc<crate::apps::Apps>,
    store: Arc<mar_store::Store>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let names: Vec<AppName> = match store.list_apps() {
                Ok(list) => list.into_iter().map(|a| a.name).collect(),
                Err(_) => continue,
            };
            let t = unix_now();
            for app in &names {
                let snapshot = metrics.app(app).snapshot();
                history.record(app, snapshot, instances(&apps, app), t);
            }
            history.retain(&names);
        }
    });
}

/// Memory and restarts of `app`'s instances now.
pub(crate) fn instances(apps: &crate::apps::Apps, app: &AppName) -> Instances {
    let mut out = Instances::default();
    for i in apps.instances(app) {
        out.restarts.insert(i.id(), i.restarts());
        if let Some(m) = i.memory() {
            out.memory.insert(i.spec().dyno(), m);
        }
    }
    out
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets_of_the_interval() {
        // 100 requests: 90 under 1 ms, 10 between 100 and 250 ms.
        let mut b = [0u64; BUCKETS.len()];
        b[0] = 90;
        b[7] = 10;
        let p50 = percentile(&b, 100, 0.5).unwrap();
        assert!(p50 > 0.0 && p50 <= 1.0, "{p50}");
        let p99 = percentile(&b, 100, 0.99).unwrap();
        assert!(p99 > 100.0 && p99 <= 250.0, "{p99}");
        assert_eq!(percentile(&b, 0, 0.5), None);
        // Slower than the last bucket: its bound, as a lower bound.
        assert_eq!(percentile(&[0; BUCKETS.len()], 3, 0.5), Some(5000.0));
    }

    #[test]
    fn a_sample_counts_what_changed_and_the_open_interval_shows_at_once() {
        let h = MetricsHistory::default();
        let app = AppName::parse("charted").unwrap();
        let mut s = Snapshot::default();
        s.by_class[1] = 5;
        s.buckets[0] = 5;
        s.count = 5;
        h.record(&app, s, Instances::default(), 10);
        s.by_class[1] = 12;
        s.by_class[4] = 1;
        s.buckets[0] = 13;
        s.count = 13;
        s.websockets = 2;
        let series = h.series(&app, s, Instances::default(), 15);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].requests["2xx"], 5);
        assert_eq!(series[1].requests["2xx"], 7);
        assert_eq!(series[1].requests["5xx"], 1);
        assert_eq!(series[1].websockets, 2);
        assert_eq!(series[1].t, 15);
        h.retain(&[]);
        assert_eq!(
            h.series(&app, s, Instances::default(), 20)[0].requests["2xx"],
            12
        );
    }

    /// A crashed instance's restarts stay counted when a deploy or `ps:restart` replaces it
    /// with one whose count starts again at 0.
    #[test]
    fn restarts_never_go_down_when_instances_are_replaced() {
        let h = MetricsHistory::default();
        let app = AppName::parse("crashy").unwrap();
        let at = |pairs: &[(u64, u32)]| Instances {
            memory: BTreeMap::new(),
            restarts: pairs.iter().copied().collect(),
        };
        h.record(&app, Snapshot::default(), at(&[(1, 0), (2, 0)]), 10);
        h.record(&app, Snapshot::default(), at(&[(1, 2), (2, 0)]), 20);
        // Instance 1 replaced by 3 (starting at 0), 2 crashed once more.
        h.record(&app, Snapshot::default(), at(&[(3, 0), (2, 1)]), 30);
        let series = h.series(&app, Snapshot::default(), at(&[(3, 1), (2, 1)]), 35);
        let totals: Vec<u64> = series.iter().map(|s| s.restarts).collect();
        assert_eq!(totals, [0, 2, 3, 4]);
        // The open interval counts without taking it in.
        let again = h.series(&app, Snapshot::default(), at(&[(3, 1), (2, 1)]), 36);
        assert_eq!(again.last().unwrap().restarts, 4);
    }

    #[test]
    fn an_hour_is_kept() {
        let h = MetricsHistory::default();
        let app = AppName::parse("long").unwrap();
        for t in 0..(KEEP as u64 + 50) {
            h.record(&app, Snapshot::default(), Instances::default(), t);
        }
        let series = h.series(&app, Snapshot::default(), Instances::default(), 9999);
        assert_eq!(series.len(), KEEP + 1);
        assert_eq!(series[0].t, 50);
    }
}
