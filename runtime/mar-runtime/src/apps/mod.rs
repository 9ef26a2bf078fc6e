//! The app lifecycle: deploys (build → slug → release phase → boot → health checks → release →
//! switch → drain → stop old), config changes, scaling, rolling restarts, rollbacks, one-off
//! processes, bringing apps back at start, and stopping everything at shutdown.
//!
//! Traffic only moves once every new web instance accepts connections and passes its health
//! checks; a deploy that fails at any step leaves the previous release serving. One deploy,
//! config change, scale, restart or rollback per app runs at a time.
//!
//! This module holds the shared state (`Apps`, what runs for each app, the per-app locks) and
//! the helpers every operation uses; each concern lives in its own submodule:
//! - `create_destroy`: creating an app and destroying it with everything it owns;
//! - `receive`: receiving a pushed tree into a build's work space;
//! - `deploy`: pushes, the release phase, config changes and rollbacks (everything that makes a
//!   release), and `launch`, which boots a release and switches traffic to it;
//! - `domains`: custom domains;
//! - `operations`: scaling, rolling restarts and one-off commands (no new release);
//! - `retire`: stopping instances that lost their traffic, and pruning old slugs;
//! - `instances`: turning a release into process specs and running instances;
//! - `workspace`: the app's directories on disk (run directories, ownership, modes);
//! - `route_target`: the pure policy that turns instance states into a route target;
//! - `wasm`: WebAssembly releases (compiling a pushed module, loading its handler);
//! - `start_stop`: bringing apps back when `mar serve` starts, stopping them at the end.

mod create_destroy;
mod deploy;
mod domains;
mod instances;
mod operations;
mod receive;
mod retire;
mod route_target;
mod start_stop;
mod wasm;
mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mar_build::Output;
use mar_core::AppName;
use mar_logs::Logs;
use mar_router::RouteTable;
use mar_store::{Release, Store, StoreError};
use mar_supervisor::{Cgroups, Event, Instance, State};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::paths::Paths;
use crate::settings::{AppSettings, Defaults};

/// Why a lifecycle operation failed; each message is for the user.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Another operation on the same app is running.
    #[error("another deploy of {0} is in progress; try again when it has finished")]
    Busy(String),
    /// The build failed.
    #[error(transparent)]
    Build(#[from] mar_build::BuildError),
    /// New instances did not come up or failed their health checks.
    #[error("{0}")]
    Boot(String),
    /// The release phase failed.
    #[error("{0}")]
    ReleasePhase(String),
    /// The request does not make sense for this app (unknown process type, no release...).
    #[error("{0}")]
    Invalid(String),
    /// A value the user gave is malformed or not allowed (a config var name, a host name, a
    /// reserved app name), whatever the app's state.
    #[error("{0}")]
    BadInput(String),
    /// Receiving a pushed tree failed on this side (disk), not because of what was sent.
    #[error("receiving source: {0}")]
    Receive(std::io::Error),
    /// A repository could not be created or removed.
    #[error(transparent)]
    Git(#[from] mar_git::GitError),
    /// State error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File system error.
    #[error("deploy I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The pushed source is over `max_source_size`.
    #[error("{0}")]
    TooLarge(String),
}

/// One running instance, the count of requests in flight to it, and the signal that closes
/// its WebSockets when it is retired.
#[derive(Clone)]
struct Slot {
    instance: Instance,
    load: Arc<AtomicUsize>,
    retire: CancellationToken,
}

/// What runs a release's code: processes, one slot per instance, or an in-process handler
/// (a WASM release), which has no slots. Matching on this enum everywhere (instead of
/// reaching for a slot list) makes every operation decide what it means for each kind.
enum Workload {
    /// Process instances started from the release's slug, per its formation.
    Processes(Vec<Slot>),
    /// A WebAssembly module served in-process.
    Handler(wasm::WasmRunning),
}

/// The release an app runs now and what runs it.
struct Running {
    release: Release,
    workload: Workload,
}

impl Running {
    /// A release running as processes.
    fn processes(release: Release, slots: Vec<Slot>) -> Self {
        Self {
            release,
            workload: Workload::Processes(slots),
        }
    }
}

/// All apps' processes and lifecycle operations. Shared behind an `Arc`.
pub struct Apps {
    cfg: Arc<Config>,
    paths: Paths,
    store: Arc<Store>,
    logs: Arc<Logs>,
    routes: Arc<RouteTable>,
    running: Mutex<HashMap<AppName, Running>>,
    deploying: Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
    events: mpsc::UnboundedSender<Event>,
    cgroups: Option<Cgroups>,
    /// Keeps apps off each other's instance ports (as root, where nftables works).
    firewall: Option<mar_supervisor::Firewall>,
    isolate: bool,
    one_offs: AtomicU32,
    /// The WebAssembly host, made when the first WASM release is loaded.
    wasm_host: Mutex<Option<Arc<mar_wasm::Host>>>,
}

/// A pushed tree, unpacked and ready to build.
pub struct Source {
    /// The unpacked tree; the build happens in place.
    pub build_dir: PathBuf,
    /// Scratch space for the build.
    pub work_dir: PathBuf,
    /// The pushed commit.
    pub commit: String,
    /// How long receiving the tree took (for the timings line).
    pub received: Duration,
}

/// What a successful deploy reports.
pub struct Deployed {
    /// The new release.
    pub release: Release,
}

/// First uid given to apps when `mar` runs as root.
const APP_UID_BASE: u32 = 20_000;

impl Apps {
    /// Creates the manager, kills what a previous run of `mar serve` left behind, and starts
    /// the task that turns instance events into routes.
    pub async fn new(
        cfg: Arc<Config>,
        store: Arc<Store>,
        logs: Arc<Logs>,
        routes: Arc<RouteTable>,
        router_ports: &[u16],
    ) -> Arc<Self> {
        let (events, mut rx) = mpsc::unbounded_channel::<Event>();
        let isolate = can_isolate(&cfg);
        let cgroups = nix::unistd::geteuid()
            .is_root()
            .then(|| Cgroups::detect(&cgroup_name(&cfg.data_dir)))
            .filter(Cgroups::available);
        if let Some(cg) = &cgroups {
            let killed = cg.sweep();
            if killed > 0 {
                eprintln!("mar: stopped {killed} app processes left by a previous run");
            }
        }
        let firewall = match isolate {
            true => {
                mar_supervisor::Firewall::setup(
                    &cgroup_name(&cfg.data_dir).replace('-', "_"),
                    APP_UID_BASE..=APP_UID_BASE + mar_supervisor::users::SPAN,
                    router_ports,
                )
                .await
            }
            false => None,
        };
        let apps = Arc::new(Self {
            paths: Paths::new(&cfg.data_dir),
            cfg,
            store,
            logs,
            routes,
            running: Mutex::new(HashMap::new()),
            deploying: Mutex::new(HashMap::new()),
            events,
            cgroups,
            firewall,
            isolate,
            one_offs: AtomicU32::new(0),
            wasm_host: Mutex::new(None),
        });
        let weak = Arc::downgrade(&apps);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Some(apps) = weak.upgrade() else { break };
                apps.publish(&ev.app);
            }
        });
        apps
    }

    /// What isolation is missing though apps run with users of their own (as root): then
    /// the platform does not start, rather than run apps that can reach each other's ports
    /// or exhaust the machine.
    pub fn missing_isolation(&self) -> Option<String> {
        if !self.isolate {
            return None;
        }
        match (&self.cgroups, &self.firewall) {
            (None, _) => Some(
                "no writable cgroup hierarchy under /sys/fs/cgroup: app memory, process and CPU limits cannot be enforced".into(),
            ),
            (_, None) => Some(
                "nftables is not usable: apps could connect to each other's ports directly; install it (apt-get install nftables)".into(),
            ),
            _ => None,
        }
    }

    /// Where a new app's own uid starts, when apps get one.
    pub fn uid_base(&self) -> Option<u32> {
        self.isolate.then_some(APP_UID_BASE)
    }

    /// Takes the app's lifecycle lock, or says another operation holds it.
    pub fn lock(&self, app: &AppName) -> Result<tokio::sync::OwnedMutexGuard<()>, DeployError> {
        let m = self
            .deploying
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.clone())
            .or_default()
            .clone();
        m.try_lock_owned()
            .map_err(|_| DeployError::Busy(app.to_string()))
    }

    /// The running-apps map; a panic elsewhere while it was held leaves nothing half-written
    /// that matters more than serving on, so a poisoned lock is taken as is.
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<AppName, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn defaults(&self) -> Defaults {
        Defaults {
            boot_timeout: self.cfg.boot_timeout,
            stop_timeout: self.cfg.stop_timeout,
            router: self.cfg.router.clone(),
        }
    }

    /// An app's settings: its config vars over the server's defaults.
    pub(crate) fn settings(&self, config: &BTreeMap<String, String>) -> AppSettings {
        AppSettings::from_config(config, &self.defaults())
    }

    fn next_version(&self, app: &AppName) -> Result<i64, DeployError> {
        Ok(self
            .store
            .current_release(app)?
            .map_or(1, |r| r.version + 1))
    }

    /// An output whose lines go to the app's log (for operations not started by a push).
    fn log_output(&self, app: &AppName) -> Output {
        let (out, mut rx) = Output::channel();
        let logs = self.logs.clone();
        let name = app.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                logs.append(&name, "mar[api]", line.trim());
            }
        });
        out
    }

    /// Recomputes where `app`'s traffic goes from its running instances and publishes it.
    pub fn publish(&self, app: &AppName) {
        if self.store.get_app(app).is_err() {
            self.routes.remove(app);
            return;
        }
        let running = self.running();
        let run = running.get(app);
        let target = route_target::route_target(app, run.map(route_target::ReleaseWeb::of));
        let options = run
            .map(|r| self.settings(&r.release.config).router)
            .unwrap_or_else(|| self.cfg.router.clone());
        self.routes.set_with(app, target, options);
    }

    /// Publishes every custom domain to the router.
    pub fn publish_domains(&self) {
        match self.store.all_domains() {
            Ok(all) => {
                let map = all
                    .into_iter()
                    .filter_map(|(host, app)| AppName::parse(&app).ok().map(|a| (host, a)))
                    .collect();
                self.routes.set_custom_domains(map);
            }
            Err(e) => tracing::error!("cannot read custom domains: {e}"),
        }
    }

    /// Instances of `app` now running, in process type and index order.
    pub fn instances(&self, app: &AppName) -> Vec<Instance> {
        let mut v: Vec<Instance> = match self.running().get(app).map(|r| &r.workload) {
            Some(Workload::Processes(slots)) => slots.iter().map(|s| s.instance.clone()).collect(),
            Some(Workload::Handler(_)) | None => Vec::new(),
        };
        v.sort_by(|a, b| {
            (&a.spec().process_type, a.spec().index).cmp(&(&b.spec().process_type, b.spec().index))
        });
        v
    }

    /// One word for the state of the app's instances: `idle` (none), `running` (all up),
    /// `crashed` (one crashed), or `starting`.
    pub fn state(&self, app: &AppName) -> &'static str {
        if self.wasm(app).is_some() {
            return "running";
        }
        let instances = self.instances(app);
        if instances.is_empty() {
            "idle"
        } else if instances
            .iter()
            .all(|i| matches!(i.state(), State::Up { .. }))
        {
            "running"
        } else if instances
            .iter()
            .any(|i| matches!(i.state(), State::Crashed { .. }))
        {
            "crashed"
        } else {
            "starting"
        }
    }

    /// The WASM handler serving `app` now, if it runs a WASM release.
    pub fn wasm(&self, app: &AppName) -> Option<mar_wasm::WasmApp> {
        match self.running().get(app).map(|r| &r.workload) {
            Some(Workload::Handler(w)) => Some(w.app.clone()),
            _ => None,
        }
    }

    /// The WASM handler serving `app`, its requests in flight through the router, and its
    /// release's version.
    pub fn wasm_serving(&self, app: &AppName) -> Option<(mar_wasm::WasmApp, usize, i64)> {
        match self.running().get(app) {
            Some(Running {
                release,
                workload: Workload::Handler(w),
            }) => Some((w.app.clone(), w.target.in_flight(), release.version)),
            _ => None,
        }
    }

    /// `http://APP.DOMAIN:PORT/`.
    pub fn web_url(&self, app: &AppName) -> String {
        format!(
            "http://{app}.{}{}/",
            self.cfg.domain,
            port_suffix(self.cfg.listen.port())
        )
    }
}

impl Apps {
    /// Where the app is served over HTTPS, when `mar serve` listens for it.
    pub fn secure_url(&self, app: &AppName) -> Option<String> {
        self.cfg.https_listen.map(|a| {
            let port = if a.port() == 443 {
                String::new()
            } else {
                format!(":{}", a.port())
            };
            format!("https://{app}.{}{port}/", self.cfg.domain)
        })
    }
}

/// `:8080`, or nothing for port 80.
pub(crate) fn port_suffix(port: u16) -> String {
    if port == 80 {
        String::new()
    } else {
        format!(":{port}")
    }
}

/// One cgroup root per data directory, so that several `mar serve` on one host (the tests run
/// many) never sweep each other's processes.
fn cgroup_name(data_dir: &Path) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("mar-{h:016x}")
}

/// Apps get their own users (and a private /tmp) when `mar` runs as root (`start` has refused
/// a data directory their users could not reach). Otherwise every app runs as the current
/// user, and a warning at start says so.
fn can_isolate(_cfg: &Config) -> bool {
    // As root, `start` has refused a data directory the apps' users cannot reach, so every
    // app gets a user of its own; not as root, they all run as the current user.
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "mar: not running as root: apps run as the current user, without per-app users or limits"
        );
        return false;
    }
    true
}

/// The first directory from `dir` up that other users cannot search (pass through), if any:
/// the apps' users must reach their directories under the data directory.
pub(crate) fn unreachable_ancestor(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Some(dir);
    while let Some(p) = d {
        let searchable = std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false);
        if !searchable {
            return Some(p.to_owned());
        }
        d = p.parent();
    }
    None
}
