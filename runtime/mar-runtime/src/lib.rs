//! The composition root: `Config` → a running platform. It owns the data directory, the
//! admin token, the listener and the one shutdown path (stop accepting, drain requests, stop
//! every app process, exit).

pub mod api;
pub mod apps;
mod build_logs;
pub mod config;
mod eds_sink;
mod eds_users;
mod gateway_links;
pub mod healthcheck;
mod metrics_history;
pub mod paths;
mod private_files;
pub mod settings;
pub mod tls;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use mar_git::GitServer;
use mar_logs::Logs;
use mar_router::{Handler, InProcessTarget, Proxy, RouteTable};
use mar_store::Store;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, Overrides};
pub use paths::Paths;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/buildpacks.rs"));
}

/// Binds `n` listening sockets to `addr`: the first picks the port when `addr`'s is 0, and with
/// more than one, SO_REUSEPORT has the kernel spread new connections over them (one per router
/// thread, as nginx's workers with `reuseport`). Listening starts here, so connections queue
/// from now on, before the router threads run.
fn listen(
    addr: SocketAddr,
    n: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), RuntimeError> {
    if n > 1 && addr.port() != 0 {
        // Sockets that all set SO_REUSEPORT share a port without complaint: another server on
        // it (or `https_listen` equal to `listen`) would silently take a share of the
        // connections. A plain bind first fails on a port in use, as one listener would.
        drop(
            std::net::TcpListener::bind(addr)
                .map_err(|source| RuntimeError::Bind { addr, source })?,
        );
    }
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let err = |source| RuntimeError::Bind { addr, source };
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        if n > 1 {
            socket.set_reuseport(true).map_err(err)?;
        }
        socket.bind(bound).map_err(err)?;
        let listener = socket.listen(1024).map_err(err)?;
        bound = listener.local_addr().map_err(err)?;
        listeners.push(listener.into_std().map_err(err)?);
    }
    Ok((listeners, bound))
}

/// What every router thread builds its proxy from.
#[derive(Clone)]
struct RouterParts {
    routes: Arc<RouteTable>,
    platform: InProcessTarget,
    sink: Option<mar_router::LogSink>,
    metrics: Arc<mar_router::Metrics>,
    shutdown: CancellationToken,
    timeouts: mar_router::Timeouts,
    limits: mar_router::ServerLimits,
    admission: Arc<mar_router::Admission>,
    /// The HTTPS listener's port, if there is one.
    https_port: Option<u16>,
}

/// Starts router thread `i`: its own current-thread runtime serving its listeners until
/// shutdown, with its own proxy, so its connections to apps stay on its own event loop and no
/// request waits on another thread. A current-thread runtime has one FIFO run queue, fair to a
/// thousand busy connections (tokio's multi-thread scheduler parks tasks past a worker's
/// 256-slot local queue in a global queue it visits only every 61 polls), and no cross-thread
/// wakeups. The receiver resolves when the thread is done.
fn router_thread(
    i: usize,
    plain: std::net::TcpListener,
    secure: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    parts: RouterParts,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (exited, exit) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("mar-router-{i}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mar: router thread {i}: cannot start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = |l| match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        eprintln!("mar: router thread {i}: {e}");
                        None
                    }
                };
                let (Some(plain), secure) = (
                    listener(plain),
                    secure.and_then(|(l, a)| Some((listener(l)?, a))),
                ) else {
                    return;
                };
                let proxy = Arc::new(
                    Proxy::new(
                        parts.routes,
                        parts.platform,
                        parts.sink,
                        parts.metrics,
                        parts.shutdown.clone(),
                        parts.timeouts,
                    )
                    .with_https_port(parts.https_port),
                );
                let (shutdown, limits) = (parts.shutdown, parts.limits);
                let serve_plain = mar_router::serve(
                    plain,
                    proxy.clone(),
                    shutdown.clone(),
                    DRAIN_GRACE,
                    limits,
                    None,
                    parts.admission.clone(),
                );
                match secure {
                    Some((l, acceptor)) => {
                        let serve_secure = mar_router::serve(
                            l,
                            proxy,
                            shutdown,
                            DRAIN_GRACE,
                            limits,
                            Some(acceptor),
                            parts.admission,
                        );
                        tokio::join!(serve_plain, serve_secure);
                    }
                    None => serve_plain.await,
                }
            });
            let _ = exited.send(());
        })?;
    Ok(exit)
}

/// A handler run on another runtime than the router thread that called it: the platform's
/// handler runs on the platform's runtime, because its SQLite calls block and must not stall a
/// router thread's event loop. A handler that panics there fails its request (H500), not the
/// router thread.
struct OnRuntime {
    inner: Arc<dyn Handler>,
    runtime: tokio::runtime::Handle,
}

/// The platform's host as the router calls it: the services' APIs on the router's own thread
/// (see [`api::ServicesHandler`]), the rest (the API, git) on the platform's runtime.
struct PlatformEntry {
    services: api::ServicesHandler,
    rest: OnRuntime,
}

impl Handler for PlatformEntry {
    fn call(&self, req: http::Request<mar_router::Body>) -> mar_router::ResponseFuture {
        if api::ServicesHandler::serves(req.uri().path()) {
            self.services.call(req)
        } else {
            self.rest.call(req)
        }
    }
}

/// Aborts a task when its result is no longer wanted (the client went away).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Handler for OnRuntime {
    fn call(&self, req: http::Request<mar_router::Body>) -> mar_router::ResponseFuture {
        let mut task = AbortOnDrop(self.runtime.spawn(self.inner.call(req)));
        Box::pin(async move {
            match (&mut task.0).await {
                Ok(resp) => resp,
                // The panic is the router's to report, as for a handler it calls directly.
                Err(e) => std::panic::resume_unwind(match e.try_into_panic() {
                    Ok(payload) => payload,
                    Err(_) => Box::new("handler task cancelled"),
                }),
            }
        })
    }
}

/// Errors starting the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A router thread could not be started.
    #[error("cannot start a router thread: {0}")]
    Thread(std::io::Error),
    /// The state database failed to open.
    #[error(transparent)]
    Store(#[from] mar_store::StoreError),
    /// The git setup failed.
    #[error(transparent)]
    Git(#[from] mar_git::GitError),
    /// As root, the apps' users could not reach the data directory, so apps would run as root.
    #[error(
        "as root, mar serve runs every app as a user of its own, who must pass through every directory above the data directory {data_dir}; {blocking} is not searchable by other users. Use a data directory they can reach (as root the default is /var/lib/mar: --data-dir or MAR_HOME), or chmod o+x {blocking}. Apps never run as root"
    )]
    Unreachable {
        /// The data directory.
        data_dir: String,
        /// The directory on its path that others cannot search.
        blocking: String,
    },
    /// As root, a part of the apps' isolation cannot be had here.
    #[error("cannot isolate apps: {0}; mar serve does not run apps without it")]
    Isolation(String),
    /// Another `mar serve` holds the data directory.
    #[error(
        "another `mar serve` (pid {pid}, {url}) is using the data directory {data_dir}; stop it first, or give this one another --data-dir"
    )]
    AlreadyServing {
        /// The data directory.
        data_dir: String,
        /// The other server's pid, as its `serve.json` says.
        pid: String,
        /// Its address.
        url: String,
    },
}

/// Takes the data directory's lock (`flock` on `serve.lock`) for as long as the server runs: a
/// second server on the same directory would take the first one's apps for leftovers of a
/// crashed run and kill them. The lock goes with the process, so a crash never leaves it held.
fn lock_data_dir(paths: &Paths) -> Result<nix::fcntl::Flock<std::fs::File>, RuntimeError> {
    use nix::fcntl::{Flock, FlockArg};
    let data_dir = paths.root().display().to_string();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(paths.root().join("serve.lock"))
        .map_err(|source| RuntimeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            // The holder's pid, so that a client run while this server starts (`mar serve &
            // mar apps:create`) knows to wait for `serve.json` rather than give up.
            use std::io::Write as _;
            let mut f: &std::fs::File = &lock;
            let recorded = f
                .set_len(0)
                .and_then(|()| f.write_all(std::process::id().to_string().as_bytes()));
            if let Err(e) = recorded {
                tracing::warn!("cannot record the pid in serve.lock: {e}");
            }
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let info: serde_json::Value = std::fs::read_to_string(paths.serve_file())
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            let field = |k: &str| match &info[k] {
                serde_json::Value::Null => "unknown".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            Err(RuntimeError::AlreadyServing {
                data_dir,
                pid: field("pid"),
                url: field("url"),
            })
        }
        Err((_, e)) => Err(RuntimeError::DataDir {
            path: data_dir,
            source: std::io::Error::from(e),
        }),
    }
}

/// Descriptors kept for the platform's own work (its database, logs, builds, processes) when
/// the router is at its connection limit.
const FD_HEADROOM: u64 = 1024;

/// The router's connection caps: `max_connections` (by default as many as the open-files
/// limit allows, two descriptors each, a client's and an app's, less [`FD_HEADROOM`]) and
/// `max_connections_per_client` (by default a quarter of that). The soft open-files limit is
/// raised to the hard one first, as servers do.
fn connection_caps(cfg: &Config) -> Arc<mar_router::Admission> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nofile = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard))
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() =>
        {
            hard
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    let fits = usize::try_from(nofile.saturating_sub(FD_HEADROOM) / 2).unwrap_or(usize::MAX);
    let total = cfg.max_connections.unwrap_or(fits).max(1);
    let per_client = cfg.max_connections_per_client.unwrap_or(total / 4).max(1);
    mar_router::Admission::new(total, per_client)
}

/// Time in-flight requests get to finish at shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How long router access log lines wait to be written together.
const ACCESS_LOG_LINGER: Duration = Duration::from_millis(50);
/// Most access log lines written in one go.
const ACCESS_LOG_BATCH: usize = 4096;

/// Reads the admin token, creating it (mode 0600) on first start.
pub fn load_or_create_token(paths: &Paths) -> std::io::Result<String> {
    load_or_create_secret(&paths.token())
}

/// Reads a secret token from `path`, creating it (24 random bytes in hex, mode 0600) on first
/// start.
fn load_or_create_secret(path: &std::path::Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token =
        mar_http::credentials::random_hex(24).map_err(|e| std::io::Error::other(e.to_string()))?;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

use std::os::unix::fs::OpenOptionsExt;

fn unpack_buildpacks(paths: &Paths) -> std::io::Result<()> {
    let root = paths.buildpacks();
    for (rel, bytes, exec) in embedded::FILES {
        let dest = root.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, bytes)?;
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A started platform.
pub struct Started {
    /// The address the listener got (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// The HTTPS listener's address, if there is one.
    pub https_addr: Option<SocketAddr>,
    /// The certificates `mar.yaml` names, when there is an HTTPS listener and some are named.
    certificates: Option<Arc<tls::NamedCertificates>>,
    done: tokio::task::JoinHandle<bool>,
}

/// How often the certificates `mar.yaml` names are looked at for a renewal (a few `stat`s).
const CERTIFICATES_CHECK: Duration = Duration::from_secs(5);

/// A lifecycle event on stderr, as the server's others are, whatever the log level; written,
/// not printed, so a closed terminal (its SIGHUP now reloads) cannot make it panic.
fn tell(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "mar: {line}");
}

/// Reloads the configured certificates and logs the outcome.
async fn reload_certificates(named: Arc<tls::NamedCertificates>) {
    match tokio::task::spawn_blocking(move || named.reload()).await {
        Ok(Ok(n)) => tell(&format!(
            "TLS: reloaded the {n} certificate(s) mar.yaml names"
        )),
        Ok(Err(e)) => {
            tracing::error!("{e}; the certificates loaded before are still served")
        }
        Err(e) => tracing::error!("TLS: the reload failed: {e}"),
    }
}

/// Reloads the configured certificates whenever one of their files changes, until shutdown.
async fn watch_certificates(named: Arc<tls::NamedCertificates>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CERTIFICATES_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let n = named.clone();
        let changed = tokio::task::spawn_blocking(move || n.changed_on_disk())
            .await
            .unwrap_or(false);
        if changed {
            reload_certificates(named.clone()).await;
        }
    }
}

impl Started {
    /// Reads the certificates `mar.yaml` names again (SIGHUP); a set that does not load whole
    /// leaves the served one in place, and the log says why.
    pub async fn reload_certificates(&self) {
        match &self.certificates {
            Some(named) => reload_certificates(named.clone()).await,
            None => tell("TLS: no certificates named in mar.yaml to reload"),
        }
    }

    /// Waits until the platform has shut down completely. `false` when it stopped because a
    /// router thread failed, not because it was asked to.
    pub async fn wait(self) -> bool {
        self.done.await.unwrap_or(false)
    }
}

/// Starts the platform; it runs until `shutdown` fires, then drains and stops every app.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Started, RuntimeError> {
    let paths = Paths::new(&cfg.data_dir);
    let data_dir = cfg.data_dir.display().to_string();
    let dd = |source| RuntimeError::DataDir {
        path: data_dir.clone(),
        source,
    };
    for d in [
        paths.root().to_owned(),
        paths.logs(),
        paths.builds(),
        paths.root().join("apps"),
    ] {
        std::fs::create_dir_all(&d).map_err(dd)?;
    }
    // Absolute from here on: the apps' passwd entries name it, and processes run elsewhere.
    let mut cfg = cfg;
    cfg.data_dir = std::fs::canonicalize(&cfg.data_dir).map_err(dd)?;
    let paths = Paths::new(&cfg.data_dir);
    // Before anything is cleared or killed as a previous run's leftovers.
    let lock = lock_data_dir(&paths)?;
    // Fail closed: apps never run as root because their own users cannot reach their files.
    if nix::unistd::geteuid().is_root()
        && let Some(blocking) = apps::unreachable_ancestor(paths.root())
    {
        return Err(RuntimeError::Unreachable {
            data_dir: data_dir.clone(),
            blocking: blocking.display().to_string(),
        });
    }
    // Leftovers of builds interrupted by a crash or kill of the previous run.
    if let Ok(entries) = std::fs::read_dir(paths.builds()) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // Builds run as an unprivileged user that must reach its build directory, its cache under
    // apps/APP/cache and the buildpacks, and nothing else: logs and repositories stay private,
    // apps/ can be traversed but not listed.
    for (dir, mode) in [
        (paths.logs(), 0o700),
        (paths.repos(), 0o700),
        (paths.root().join("apps"), 0o711),
        // Builds' users must reach their own build, and never list the others.
        (paths.builds(), 0o711),
    ] {
        std::fs::create_dir_all(&dir).map_err(dd)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).map_err(dd)?;
    }
    unpack_buildpacks(&paths).map_err(dd)?;
    let token = load_or_create_token(&paths).map_err(dd)?;
    let metrics_token = load_or_create_secret(&paths.metrics_token()).map_err(dd)?;
    let store = Arc::new(Store::open(&paths.db())?);
    // The state database is the platform's alone; apps must not read it.
    for f in ["mar.db", "mar.db-wal", "mar.db-shm"] {
        let _ =
            std::fs::set_permissions(paths.root().join(f), std::fs::Permissions::from_mode(0o600));
    }
    let logs = Arc::new(Logs::open(&paths.logs()).map_err(dd)?);
    let routes = Arc::new(RouteTable::new(&cfg.domain));
    let git = GitServer::new(
        &paths.repos(),
        &paths.hooks(),
        &cfg.mar_exe,
        cfg.max_source_size,
    )?;

    let threads = cfg.router_threads;
    let (listeners, addr) = listen(cfg.listen, threads)?;
    let mut certificates = None;
    let https = match cfg.https_listen {
        Some(a) => {
            let served: tls::Served = {
                let routes = routes.clone();
                Arc::new(move |host: &str| {
                    !matches!(
                        routes.resolve(Some(host)),
                        mar_router::Resolved::NoSuchApp(_)
                    )
                })
            };
            let (acceptor, named) = tls::acceptor(
                &paths.root().join("tls"),
                &cfg.domain,
                &cfg.tls_certificates,
                served,
            )?;
            if !cfg.tls_certificates.is_empty() {
                certificates = Some(named);
            }
            let (ls, local) = listen(a, threads)?;
            Some((ls, acceptor, local))
        }
        None => None,
    };
    cfg.listen = addr;
    // The addresses bound (a port 0 asked for is a real port now), for the URLs shown.
    cfg.https_listen = https.as_ref().map(|(_, _, a)| *a);
    let cfg = Arc::new(cfg);
    let self_ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let self_url = if addr.is_ipv6() {
        format!("http://[{self_ip}]:{}", addr.port())
    } else {
        format!("http://{self_ip}:{}", addr.port())
    };
    let serve_info = serde_json::json!({ "url": self_url, "pid": std::process::id() });
    std::fs::write(paths.serve_file(), serve_info.to_string()).map_err(dd)?;

    let router_ports: Vec<u16> = std::iter::once(addr.port())
        .chain(https.as_ref().map(|(_, _, a)| a.port()))
        .collect();
    let apps = apps::Apps::new(
        cfg.clone(),
        store.clone(),
        logs.clone(),
        routes.clone(),
        &router_ports,
    )
    .await;
    // Fail closed: as root, apps run isolated or not at all.
    if let Some(missing) = apps.missing_isolation() {
        let _ = std::fs::remove_file(paths.serve_file());
        return Err(RuntimeError::Isolation(missing));
    }
    apps.restore().await;
    // The MWS gateways, back from the store with their configurations; their sockets close
    // with 1012 when the server stops. Frames a gateway forwards to its app go through the
    // router's plain listener, by the app's own host name.
    let router_addr = std::net::SocketAddr::new(
        self_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        addr.port(),
    );
    let links = Arc::new(gateway_links::GatewayLinks::new(
        &store,
        router_addr,
        &cfg.domain,
    )?);
    let eds_users = Arc::new(eds_users::EdsUsers::default());
    let gateways = {
        let store = store.clone();
        // MWS calls this on a blocking thread and answers once it returns.
        let keep: mar_mws::api::ConfigChanged = Arc::new(move |id, config| {
            if let Err(e) =
                store.set_service_config(id, config.access.as_str(), &config.settings_json())
            {
                tracing::error!("cannot keep gateway {id}'s configuration: {e}");
            }
        });
        let resolve: mar_mws::forward::Resolve = {
            let links = links.clone();
            Arc::new(move |id, app| links.resolve(id, app))
        };
        let session = mar_mws::SessionOptions {
            ping_every: cfg.mws_ping_interval,
            max_per_address: cfg.mws_sockets_per_address,
            ..mar_mws::SessionOptions::default()
        };
        mar_mws::Gateways::new(
            session,
            shutdown.clone(),
            keep,
            resolve,
            Some(eds_users.clone()),
        )
        .map_err(RuntimeError::Thread)?
    };
    for s in store.list_services()? {
        if s.kind == "mws" {
            let config = mar_mws::GatewayConfig::from_stored(&s.access, &s.settings);
            gateways.add(&s.id, &s.name, &s.secret, config);
        }
    }
    // The EDS backends, each a SQLite file under eds/ in the data directory.
    let sink = Arc::new(eds_sink::EdsSink {
        gateways: gateways.clone(),
        router: router_addr,
        domain: cfg.domain.clone(),
    });
    let backends = mar_eds::Backends::new(paths.root().join("eds"), sink).map_err(dd)?;
    let _ = eds_users.backends.set(backends.clone());
    let stream_addr = cfg
        .eds_stream_listen
        .unwrap_or(std::net::SocketAddr::new(addr.ip(), 0));
    let stream_at = backends
        .listen_stream(stream_addr)
        .map_err(|source| RuntimeError::Bind {
            addr: stream_addr,
            source,
        })?;
    tracing::info!("EDS notification stream on {stream_at}");
    for s in store.list_services()? {
        if s.kind == "eds" {
            let api_key = serde_json::from_str::<serde_json::Value>(&s.settings)
                .ok()
                .and_then(|v| v["apiKey"].as_str().map(str::to_owned));
            if let Err(e) = backends.add(&s.id, &s.name, &s.secret, api_key.as_deref()) {
                tracing::error!("cannot open EDS backend {}: {e}", s.name);
            }
        }
    }
    let gateways_at_exit = gateways.clone();
    // The router threads stop once the gateways' sessions have sent their Close 1012: those
    // sockets' connections belong to the router threads' event loops, so a router thread
    // that ended first would cut them without a word.
    let router_stop = CancellationToken::new();
    {
        let (shutdown, router_stop, gateways, backends) = (
            shutdown.clone(),
            router_stop.clone(),
            gateways.clone(),
            backends.clone(),
        );
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // A delivery cut here is posted again after the restart (its cursor stayed).
            backends.stop();
            gateways.closed(Duration::from_secs(2)).await;
            router_stop.cancel();
        });
    }
    let metrics = Arc::new(mar_router::Metrics::default());
    let history = Arc::new(metrics_history::MetricsHistory::default());
    metrics_history::spawn_sampler(
        history.clone(),
        metrics.clone(),
        apps.clone(),
        store.clone(),
        shutdown.clone(),
    );
    let logs_for_router = logs.clone();
    let platform = Arc::new(api::Platform {
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        store,
        logs,
        apps: apps.clone(),
        git,
        metrics_token,
        token,
        self_url,
        domain: cfg.domain.clone(),
        port: addr.port(),
        gateways,
        backends,
        history,
        builds: Arc::new(build_logs::BuildLogs::new(Paths::new(&cfg.data_dir))),
        console: mar_console::Sessions::new(api::CONSOLE_SESSION_LIFETIME),
        sign_in_limit: Default::default(),
        console_password: Paths::new(&cfg.data_dir).console_password(),
        password_checks: tokio::sync::Semaphore::new(2),
        account_tokens: Default::default(),
        gateway_links: links,
    });
    let services = api::ServicesHandler {
        platform: platform.clone(),
    };
    let handler = Arc::new(api::PlatformHandler {
        api: api::router(platform.clone()),
        platform,
    });
    // Access log lines leave the request path through a channel; one task writes them, so a
    // request never waits for a file write or the log's lock.
    let (access_tx, mut access_rx) =
        tokio::sync::mpsc::unbounded_channel::<(mar_core::AppName, String)>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(1024);
        while access_rx.recv_many(&mut batch, ACCESS_LOG_BATCH).await > 0 {
            // Linger before writing, as nginx's `access_log ... flush=`: the lines of a busy
            // moment go out in one write per app instead of one per request, and senders do
            // not wake this task meanwhile.
            tokio::time::sleep(ACCESS_LOG_LINGER).await;
            while batch.len() < ACCESS_LOG_BATCH {
                match access_rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            // Lines of one app stay in order; each app's run is one write.
            let mut start = 0;
            while start < batch.len() {
                let app = batch[start].0.clone();
                let end = batch[start..]
                    .iter()
                    .position(|(a, _)| *a != app)
                    .map_or(batch.len(), |n| start + n);
                logs_for_router.append_batch(
                    &app,
                    "mar[router]",
                    batch[start..end].iter().map(|(_, l)| l.as_str()),
                );
                start = end;
            }
            batch.clear();
        }
    });
    let sink: Option<mar_router::LogSink> = cfg.access_log.then(|| {
        let sink: mar_router::LogSink = Arc::new(move |app, line| {
            let _ = access_tx.send((app.clone(), line));
        });
        sink
    });
    let https_addr = https.as_ref().map(|(_, _, a)| *a);
    let parts = RouterParts {
        routes,
        platform: InProcessTarget::new(
            mar_core::PLATFORM_NAME,
            Arc::new(PlatformEntry {
                services,
                rest: OnRuntime {
                    inner: handler,
                    runtime: tokio::runtime::Handle::current(),
                },
            }),
        )
        .patient(),
        sink,
        metrics,
        shutdown: router_stop.clone(),
        timeouts: cfg.timeouts,
        limits: cfg.server_limits,
        admission: connection_caps(&cfg),
        https_port: https_addr.map(|a| a.port()),
    };
    let mut https = https.map(|(ls, acceptor, _)| (ls.into_iter(), acceptor));
    let mut exits = Vec::with_capacity(threads);
    for (i, plain) in listeners.into_iter().enumerate() {
        let secure = https
            .as_mut()
            .and_then(|(ls, acceptor)| Some((ls.next()?, acceptor.clone())));
        match router_thread(i, plain, secure, parts.clone()) {
            Ok(exit) => exits.push(exit),
            Err(e) => {
                // The apps are up and earlier threads serve: take all of it down again.
                shutdown.cancel();
                for exit in exits {
                    let _ = exit.await;
                }
                apps.stop_all().await;
                let _ = std::fs::remove_file(paths.serve_file());
                return Err(RuntimeError::Thread(e));
            }
        }
    }
    // A router thread ends at shutdown; one that ends otherwise (it could not start its event
    // loop, or it panicked) takes the server down with it rather than leave it half-deaf, and
    // `mar serve` then exits with a failure, for a service manager to restart it.
    let watchers: Vec<_> = exits
        .into_iter()
        .map(|exit| {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let clean = exit.await.is_ok() && shutdown.is_cancelled();
                if !clean {
                    eprintln!("mar: a router thread stopped; shutting down");
                }
                shutdown.cancel();
                clean
            })
        })
        .collect();
    let done = tokio::spawn(async move {
        let mut clean = true;
        for watcher in watchers {
            clean &= watcher.await.unwrap_or(false);
        }
        apps.stop_all().await;
        drop(gateways_at_exit);
        let _ = std::fs::remove_file(paths.serve_file());
        // Only now may another server take the directory.
        drop(lock);
        clean
    });
    if let Some(named) = &certificates {
        tokio::spawn(watch_certificates(named.clone(), shutdown.clone()));
    }
    Ok(Started {
        addr,
        https_addr,
        certificates,
        done,
    })
}
