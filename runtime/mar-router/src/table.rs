//! The route table: which Host goes where. Pure data and matching, no I/O.
//!
//! Invariant: route matching does no I/O; the runtime publishes changes here and the proxy
//! only reads.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mar_core::AppName;
use tokio_util::sync::CancellationToken;

use crate::relay::WsOptions;
use mar_http::Handler;

/// Why an app cannot take traffic right now, with the Heroku-style code users search for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// `H14`, `H10`, `H20`...
    pub code: &'static str,
    /// One-line description: `No web processes running`.
    pub desc: &'static str,
    /// What to do about it.
    pub hint: String,
}

impl Unavailable {
    /// H20: a web instance is starting and should be up shortly, so the router holds the
    /// request for it (up to `Timeouts::boot_wait`) instead of answering at once.
    pub fn booting(&self) -> bool {
        self.code == "H20"
    }
}

/// One upstream instance.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its dyno name (`web.1`) for logs.
    pub dyno: String,
    /// Requests (and WebSockets) in flight to it, so that a deploy can wait for them before
    /// stopping the instance. Shared by every copy of this upstream.
    pub load: Arc<AtomicUsize>,
    /// Cancelled when the instance is retired: its WebSockets get a Close (1012).
    pub retire: CancellationToken,
    /// Until when (ms since the Unix epoch) it is set aside after refusing a connection.
    pub refused_until: Arc<AtomicU64>,
}

impl Upstream {
    /// An upstream with no requests in flight.
    pub fn new(addr: SocketAddr, dyno: impl Into<String>) -> Self {
        Self {
            addr,
            dyno: dyno.into(),
            load: Arc::new(AtomicUsize::new(0)),
            retire: CancellationToken::new(),
            refused_until: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sets the instance aside for a moment after it refused a connection, so that the
    /// requests right after go to the others.
    pub fn set_aside(&self) {
        self.refused_until
            .store(now_ms() + SET_ASIDE_MS, Ordering::Relaxed);
    }

    fn set_aside_now(&self, now: u64) -> bool {
        self.refused_until.load(Ordering::Relaxed) > now
    }
}

/// How long a refusing instance is skipped.
const SET_ASIDE_MS: u64 = 2_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A handler inside this process that takes an app's traffic (a WASM app), or the platform's.
/// Its requests are counted in flight like an instance's, so a switch away from it can wait
/// for them, and they get the router's timeouts and the app's body limit unless it is
/// `patient`.
#[derive(Clone)]
pub struct InProcessTarget {
    /// Its name in logs, where an instance has its dyno (`web.1`).
    pub name: String,
    /// The handler.
    pub handler: Arc<dyn Handler>,
    /// Requests in flight to it.
    pub load: Arc<AtomicUsize>,
    /// No first-byte timeout, idle window or body limit: for the platform, whose pushes run a
    /// whole build before they answer, whose log tails stay quiet for minutes, and whose API
    /// bounds its own uploads.
    pub patient: bool,
}

impl InProcessTarget {
    /// A target with no requests in flight, under the router's timeouts and limits.
    pub fn new(name: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        Self {
            name: name.into(),
            handler,
            load: Arc::new(AtomicUsize::new(0)),
            patient: false,
        }
    }

    /// Without the router's timeouts and body limit; see [`InProcessTarget::patient`].
    pub fn patient(mut self) -> Self {
        self.patient = true;
        self
    }

    /// Requests in flight to it now.
    pub fn in_flight(&self) -> usize {
        self.load.load(Ordering::Acquire)
    }

    /// Counts one request in flight until the guard is dropped.
    pub(crate) fn count(&self) -> InFlight {
        self.load.fetch_add(1, Ordering::AcqRel);
        InFlight(self.load.clone())
    }
}

/// Per-app router settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppOptions {
    /// WebSocket idle timeout, keepalive and limits.
    pub ws: WsOptions,
    /// Largest request body, in bytes (413 past it).
    pub max_body: u64,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            ws: WsOptions::default(),
            max_body: 100 << 20,
        }
    }
}

/// Counts one request in flight to an upstream until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where an app's traffic goes.
#[derive(Clone)]
pub enum AppTarget {
    /// Web instances listening on ports, balanced round-robin.
    Upstreams(Vec<Upstream>),
    /// A handler inside this process (WASM apps).
    InProcess(InProcessTarget),
    /// Nothing can serve it now.
    Unavailable(Unavailable),
}

struct AppEntry {
    target: AppTarget,
    options: Arc<AppOptions>,
    next: AtomicUsize,
}

/// What a request's Host resolved to.
pub enum Resolved {
    /// The platform (API, git, health).
    Platform,
    /// An app, with the chosen target.
    App {
        /// The app.
        app: AppName,
        /// Where to send the request.
        target: Resolution,
        /// The app's router settings.
        options: Arc<AppOptions>,
    },
    /// `APP.DOMAIN` for an app that does not exist, or a Host we do not serve.
    NoSuchApp(String),
}

/// A resolved app target, with one upstream already picked.
pub enum Resolution {
    /// Send to this instance; the guard counts the request as in flight.
    Upstream(Upstream, InFlight),
    /// Call this handler; the guard counts the request as in flight.
    InProcess(InProcessTarget, InFlight),
    /// Answer with this error.
    Unavailable(Unavailable),
}

/// Host → app routes. Cheap to share.
pub struct RouteTable {
    domain: String,
    apps: RwLock<HashMap<AppName, Arc<AppEntry>>>,
    /// Custom domains: exact host → app.
    custom: RwLock<HashMap<String, AppName>>,
    /// Requests held for booting apps: per app, what wakes them when its target is
    /// published, and how many there are (the entry goes with the last).
    held: Mutex<HashMap<AppName, (Arc<tokio::sync::Notify>, usize)>>,
}

/// Most requests held for one booting app; past it they get H20 at once, so an app that never
/// comes up cannot take every connection the router admits.
pub const MAX_HELD_PER_APP: usize = 64;

/// The app of a resolution that says it is booting.
fn booting_app(resolved: &Resolved) -> Option<AppName> {
    match resolved {
        Resolved::App {
            app,
            target: Resolution::Unavailable(u),
            ..
        } if u.booting() => Some(app.clone()),
        _ => None,
    }
}

/// One request's place among those held for an app; given back when dropped.
struct Hold<'a> {
    table: &'a RouteTable,
    app: AppName,
    changed: Arc<tokio::sync::Notify>,
}

impl<'a> Hold<'a> {
    /// A place, unless the app has [`MAX_HELD_PER_APP`] held already. Counted under the
    /// lock, so a publish and the last place's return cannot miss each other.
    fn take(table: &'a RouteTable, app: &AppName) -> Option<Self> {
        let mut held = table.held.lock().unwrap_or_else(|e| e.into_inner());
        let (changed, count) = held.entry(app.clone()).or_default();
        if *count >= MAX_HELD_PER_APP {
            return None;
        }
        *count += 1;
        Some(Self {
            table,
            app: app.clone(),
            changed: changed.clone(),
        })
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = held.get_mut(&self.app) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.app);
            }
        }
    }
}

impl RouteTable {
    /// A table serving apps at `APP.domain`.
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_ascii_lowercase(),
            apps: RwLock::new(HashMap::new()),
            custom: RwLock::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The platform's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Publishes where `app`'s traffic goes now, with default settings.
    pub fn set(&self, app: &AppName, target: AppTarget) {
        self.set_with(app, target, AppOptions::default());
    }

    /// Publishes where `app`'s traffic goes now and its settings. Takes effect for the next
    /// request.
    pub fn set_with(&self, app: &AppName, target: AppTarget, options: AppOptions) {
        let entry = Arc::new(AppEntry {
            target,
            options: Arc::new(options),
            next: AtomicUsize::new(0),
        });
        self.apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(app.clone(), entry);
        self.wake(Some(app));
    }

    /// How many requests are held for `app` now.
    pub fn held(&self, app: &AppName) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(app).map_or(0, |(_, count)| *count)
    }

    /// Wakes the requests held for `app` (every app's: `None`) to look again.
    fn wake(&self, app: Option<&AppName>) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match app {
            Some(app) => {
                if let Some((changed, _)) = held.get(app) {
                    changed.notify_waiters();
                }
            }
            None => held
                .values()
                .for_each(|(changed, _)| changed.notify_waiters()),
        }
    }

    /// Replaces the custom domains (host → app).
    pub fn set_custom_domains(&self, domains: HashMap<String, AppName>) {
        *self.custom.write().unwrap_or_else(|e| e.into_inner()) = domains;
        // A held request's host may lead elsewhere now.
        self.wake(None);
    }

    /// Forgets an app (destroyed).
    pub fn remove(&self, app: &AppName) {
        self.apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
        self.wake(Some(app));
    }

    /// Resolves `host`, and while its app is booting (H20) waits for the app's target to be
    /// published anew, for at most `wait` or until `stop`: the resolution once it is no
    /// longer booting, or the H20 (at once when `wait` is zero or [`MAX_HELD_PER_APP`]
    /// requests wait already).
    pub async fn resolve_after_boot(
        &self,
        host: Option<&str>,
        wait: std::time::Duration,
        stop: &CancellationToken,
    ) -> Resolved {
        let resolved = self.resolve(host);
        let Some(app) = booting_app(&resolved).filter(|_| !wait.is_zero()) else {
            return resolved;
        };
        let Some(hold) = Hold::take(self, &app) else {
            return resolved;
        };
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(wait)
            .unwrap_or(now + std::time::Duration::from_secs(3600));
        loop {
            // Registered before looking, so a publish between the look and the wait wakes it.
            let changed = hold.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let resolved = self.resolve(host);
            if booting_app(&resolved).is_none() {
                return resolved;
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline) => return resolved,
                _ = stop.cancelled() => return resolved,
            }
        }
    }

    /// Resolves a Host header value.
    pub fn resolve(&self, host: Option<&str>) -> Resolved {
        let Some(host) = host.map(strip_port) else {
            return Resolved::Platform;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        // The bare domain, IP hosts, and every reserved label (`api.`, `mws.`, `eds.`, `www.`,
        // `mar.`): no app can have those names, so the platform answers them.
        let label = host
            .strip_suffix(self.domain.as_str())
            .and_then(|h| h.strip_suffix('.'));
        if host.parse::<IpAddr>().is_ok()
            || host == self.domain
            || label.is_some_and(mar_core::is_reserved)
        {
            return Resolved::Platform;
        }
        let custom = self
            .custom
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
            .cloned();
        let app = match custom {
            Some(app) => app,
            None => {
                let Some(label) = host
                    .strip_suffix(self.domain.as_str())
                    .and_then(|h| h.strip_suffix('.'))
                else {
                    return Resolved::NoSuchApp(host);
                };
                let Ok(app) = AppName::parse(label) else {
                    return Resolved::NoSuchApp(host);
                };
                app
            }
        };
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = apps.get(&app) else {
            return Resolved::NoSuchApp(host);
        };
        let target = match &entry.target {
            AppTarget::Upstreams(ups) if !ups.is_empty() => {
                let start = entry.next.fetch_add(1, Ordering::Relaxed);
                let now = now_ms();
                // Round-robin, skipping instances set aside after a refused connection (unless
                // every one is).
                let i = (0..ups.len())
                    .map(|k| (start + k) % ups.len())
                    .find(|i| !ups[*i].set_aside_now(now))
                    .unwrap_or(start % ups.len());
                let up = ups[i].clone();
                // Counted before the table lock is released (see `set`), so a deploy that
                // switches away from this upstream and then waits for its load to reach zero
                // cannot miss this request.
                up.load.fetch_add(1, Ordering::AcqRel);
                let guard = InFlight(up.load.clone());
                Resolution::Upstream(up, guard)
            }
            AppTarget::Upstreams(_) => Resolution::Unavailable(Unavailable {
                code: "H14",
                desc: "No web processes running",
                hint: format!(
                    "Scale up with `mar ps:scale web=1 -a {app}`, or push code with a web process type."
                ),
            }),
            // Counted under the table's lock, as an upstream's request is.
            AppTarget::InProcess(t) => Resolution::InProcess(t.clone(), t.count()),
            AppTarget::Unavailable(u) => Resolution::Unavailable(u.clone()),
        };
        Resolved::App {
            app,
            target,
            options: entry.options.clone(),
        }
    }
}

/// `host:port` → `host`, also for `[::1]:8080`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(port: u16) -> Upstream {
        Upstream::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            format!("web.{port}"),
        )
    }

    #[test]
    fn platform_hosts() {
        let t = RouteTable::new("localhost");
        for h in [
            None,
            Some("localhost"),
            Some("localhost:8080"),
            Some("api.localhost"),
            Some("mws.localhost"),
            Some("EDS.localhost:80"),
            Some("www.localhost"),
            Some("127.0.0.1:9"),
            Some("[::1]:80"),
            Some("LOCALHOST."),
        ] {
            assert!(matches!(t.resolve(h), Resolved::Platform), "{h:?}");
        }
    }

    #[test]
    fn apps_round_robin_and_unknowns() {
        let t = RouteTable::new("localhost");
        let app = AppName::parse("echo").unwrap();
        let ups = vec![up(1), up(2)];
        t.set(&app, AppTarget::Upstreams(ups.clone()));
        let mut seen = Vec::new();
        let mut guards = Vec::new();
        for _ in 0..4 {
            match t.resolve(Some("echo.localhost:8080")) {
                Resolved::App {
                    target: Resolution::Upstream(u, g),
                    ..
                } => {
                    seen.push(u.addr.port());
                    guards.push(g);
                }
                _ => panic!("not routed"),
            }
        }
        assert_eq!(seen, [1, 2, 1, 2]);
        assert_eq!(ups[0].load.load(Ordering::SeqCst), 2);
        guards.clear();
        assert_eq!(ups[0].load.load(Ordering::SeqCst), 0);
        for h in [
            "nope.localhost",
            "a.b.localhost",
            "example.com",
            "Bad_Name.localhost",
        ] {
            assert!(matches!(t.resolve(Some(h)), Resolved::NoSuchApp(_)), "{h}");
        }
        t.set(&app, AppTarget::Upstreams(vec![]));
        assert!(matches!(
            t.resolve(Some("echo.localhost")),
            Resolved::App {
                target: Resolution::Unavailable(Unavailable { code: "H14", .. }),
                ..
            }
        ));
        t.remove(&app);
        assert!(matches!(
            t.resolve(Some("echo.localhost")),
            Resolved::NoSuchApp(_)
        ));
    }

    #[test]
    fn refusing_upstream_is_set_aside() {
        let t = RouteTable::new("localhost");
        let app = AppName::parse("echo").unwrap();
        let ups = vec![up(1), up(2)];
        t.set(&app, AppTarget::Upstreams(ups.clone()));
        ups[0].set_aside();
        for _ in 0..4 {
            let Resolved::App {
                target: Resolution::Upstream(u, _),
                ..
            } = t.resolve(Some("echo.localhost"))
            else {
                panic!("not routed");
            };
            assert_eq!(u.addr.port(), 2);
        }
        // With every instance set aside, requests still go somewhere rather than nowhere.
        ups[1].set_aside();
        assert!(matches!(
            t.resolve(Some("echo.localhost")),
            Resolved::App {
                target: Resolution::Upstream(..),
                ..
            }
        ));
    }

    /// A set-aside instance is skipped only for the window: then it takes its turn again.
    #[test]
    fn a_set_aside_instance_comes_back_after_the_window() {
        let t = RouteTable::new("localhost");
        let app = AppName::parse("echo").unwrap();
        let ups = vec![up(1), up(2)];
        t.set(&app, AppTarget::Upstreams(ups.clone()));
        let ports = |n: usize| -> Vec<u16> {
            (0..n)
                .map(|_| match t.resolve(Some("echo.localhost")) {
                    Resolved::App {
                        target: Resolution::Upstream(u, _),
                        ..
                    } => u.addr.port(),
                    _ => panic!("not routed"),
                })
                .collect()
        };
        ups[0].set_aside();
        assert!(ports(4).iter().all(|p| *p == 2));
        std::thread::sleep(std::time::Duration::from_millis(SET_ASIDE_MS + 100));
        let mut back = ports(4);
        back.sort_unstable();
        assert_eq!(back, [1, 1, 2, 2], "round-robin over both again");
    }

    #[test]
    fn custom_domains_win_over_the_platform_domain_rule() {
        let t = RouteTable::new("localhost");
        let app = AppName::parse("shop").unwrap();
        t.set(&app, AppTarget::Upstreams(vec![up(7)]));
        t.set_custom_domains(HashMap::from([("www.shop.test".to_owned(), app.clone())]));
        assert!(matches!(
            t.resolve(Some("WWW.shop.test:443")),
            Resolved::App { .. }
        ));
        assert!(matches!(
            t.resolve(Some("shop.test")),
            Resolved::NoSuchApp(_)
        ));
    }
}
