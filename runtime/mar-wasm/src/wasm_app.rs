//! One release of one WASM app as a [`mar_http::Handler`]: every call runs on the host's
//! executor (never on the router thread that calls it), waits for a slot of the app's
//! concurrency and then of the pool (queueing, not failing, past either), and ends in an
//! [`Outcome`] that becomes a status and a log line. Its [`Stats`] feed `mar ps`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use mar_http::{Body, Handler, ResponseFuture};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::I32Exit;

use crate::component::{self, plain};
use crate::host::{Host, Loaded};
use crate::log_lines::LogSink;
use crate::outbound::AllowedHosts;
use crate::{Interface, Limits, describe, wagi};

/// What the runtime knows of one release of a WASM app.
pub struct AppSpec {
    /// Its name: argv\[0\] of WAGI modules, and in the host's own logs.
    pub name: String,
    /// The environment guests see: the release's config vars.
    pub env: Vec<(String, String)>,
    /// Its limits.
    pub limits: Limits,
    /// Where its guests' output and failures go.
    pub log: LogSink,
    /// Hosts its components may call.
    pub allowed_outbound_hosts: AllowedHosts,
    /// A directory of the slug guests may read (mounted at `/`), or none; a handle, opened
    /// by the caller without following symlinks, so the guests see that directory even if its
    /// path is changed afterwards.
    pub files: Option<OwnedFd>,
}

/// How one request's run in a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Returned, or exited with status 0.
    Done,
    /// A WAGI module exited with this non-zero status.
    Exit(i32),
    /// The epoch deadline (or the host's timer) ended it.
    Timeout,
    /// It failed after the memory cap refused a growth.
    Memory,
    /// It trapped, or the host could not run it.
    Trap(String),
    /// A WAGI module printed something that is not a CGI response.
    BadOutput(String),
}

impl Outcome {
    /// Classifies a guest call's result; `exceeded` says whether the memory cap refused it.
    pub(crate) fn of(r: wasmtime::Result<()>, exceeded: bool) -> Self {
        let Err(e) = r else { return Outcome::Done };
        if let Some(exit) = e.downcast_ref::<I32Exit>() {
            return match exit.0 {
                0 => Outcome::Done,
                code => Outcome::Exit(code),
            };
        }
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return Outcome::Timeout;
        }
        if exceeded {
            return Outcome::Memory;
        }
        Outcome::Trap(describe(&e))
    }

    /// What to tell the app's log.
    pub(crate) fn describe(&self, limits: &Limits) -> String {
        match self {
            Outcome::Done => "done".into(),
            Outcome::Exit(code) => format!("the handler exited with status {code}"),
            Outcome::Timeout => format!(
                "the handler ran past its deadline of {}s (MAR_WASM_TIMEOUT) and was stopped",
                limits.timeout.as_secs_f64()
            ),
            Outcome::Memory => format!(
                "the handler reached its memory limit of {} MiB (MAR_WASM_MEMORY) and failed",
                limits.memory >> 20
            ),
            Outcome::Trap(msg) => format!("the handler failed: {msg}"),
            Outcome::BadOutput(msg) => format!("the handler's output is not a CGI response: {msg}"),
        }
    }
}

/// The app's and the pool's slot, held for as long as a guest runs.
pub(crate) struct Permits {
    _app: OwnedSemaphorePermit,
    _pool: OwnedSemaphorePermit,
}

/// A WASM app's figures, for `mar ps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests running in a guest now.
    pub running: usize,
    /// Requests waiting for a slot.
    pub waiting: usize,
    /// The app's concurrency limit.
    pub concurrency: usize,
    /// Instances in use over all apps, and the pool's size.
    pub pool_in_use: usize,
    /// The pool's size.
    pub pool_size: usize,
    /// Requests served since this release started.
    pub requests: u64,
    /// Of which failed in the guest (trap, deadline, memory, exit status, bad output).
    pub failures: u64,
    /// Instances made, and instances reused instead.
    pub instantiations: u64,
    /// Requests that reused an instance.
    pub reused: u64,
    /// Mean time to instantiate, in microseconds.
    pub mean_instantiation_us: u64,
    /// The last instantiation's time, in microseconds.
    pub last_instantiation_us: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    waiting: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    instantiations: AtomicU64,
    reused: AtomicU64,
    instantiation_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn instantiated(&self, took: Duration, reused: bool) {
        if reused {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.instantiations.fetch_add(1, Ordering::Relaxed);
        self.instantiation_ns.fetch_add(ns, Ordering::Relaxed);
        self.last_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every request of one release shares.
pub(crate) struct Shared {
    pub(crate) host: Arc<Host>,
    pub(crate) name: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) limits: Limits,
    pub(crate) log: LogSink,
    pub(crate) allowed: Arc<AllowedHosts>,
    /// `/proc/self/fd/N` of `_files_fd`, which WASI opens per instance: the directory the
    /// handle holds, whatever its path has become.
    pub(crate) files: Option<PathBuf>,
    _files_fd: Option<OwnedFd>,
    pub(crate) stats: Counters,
    concurrency: Arc<Semaphore>,
    /// Instances kept for reuse, each holding a permit of the host's idle budget.
    idle: Mutex<Vec<(component::Instance, OwnedSemaphorePermit)>>,
    program: Loaded,
}

impl Shared {
    pub(crate) fn log_line(&self, line: &str) {
        (self.log)(line);
    }

    /// Sets the store's deadline to the app's timeout from now. The guest yields its thread
    /// at every tick until then (so a computing guest shares the executor), and is
    /// interrupted after it.
    pub(crate) fn arm_deadline<T: 'static>(&self, store: &mut Store<T>) {
        let deadline = Instant::now() + self.limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                // tokio's own yield, which puts the task behind the others: a plain
                // self-wake would land in the worker's LIFO slot and starve them.
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
    }

    /// The response for a request whose guest failed before its response head, after
    /// logging why. A deadline becomes the router's own timeout page (503, H12).
    pub(crate) fn failed(&self, outcome: Outcome) -> Response<Body> {
        self.finished(&outcome);
        match outcome {
            Outcome::Timeout => {
                let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable\n");
                r.extensions_mut().insert(mar_http::TimedOut);
                r
            }
            _ => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error\n",
            ),
        }
    }

    /// Logs how a guest's run ended, unless it ended well.
    pub(crate) fn finished(&self, outcome: &Outcome) {
        if *outcome != Outcome::Done {
            self.stats.failed();
            self.log_line(&outcome.describe(&self.limits));
        }
    }

    /// An instance kept for reuse, if any (its idle permit goes back as it starts running).
    pub(crate) fn take_idle(&self) -> Option<component::Instance> {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .map(|(instance, _permit)| instance)
    }

    /// Keeps a finished instance for the next request, if the host's idle budget and the
    /// app's concurrency allow; otherwise it is dropped.
    pub(crate) fn put_idle(
        &self,
        store: wasmtime::Store<component::ComponentState>,
        proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    ) {
        let Ok(permit) = self.host.idle.clone().try_acquire_owned() else {
            return;
        };
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.limits.concurrency {
            idle.push(((store, proxy), permit));
        }
    }

    async fn serve(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let app = self.concurrency.clone().acquire_owned().await;
        let pool = self.host.slots.clone().acquire_owned().await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        let (Ok(app), Ok(pool)) = (app, pool) else {
            // The semaphores are never closed; if one were, fail this request only.
            return plain(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable\n");
        };
        let permits = Permits {
            _app: app,
            _pool: pool,
        };
        match self.program.clone() {
            Loaded::Component(pre) => component::serve(self, pre, req, permits).await,
            Loaded::Module(pre) => wagi::serve(self, pre, req, permits).await,
        }
    }
}

/// One release of a WASM app, ready to serve.
#[derive(Clone)]
pub struct WasmApp {
    shared: Arc<Shared>,
}

impl WasmApp {
    /// Prepares a release of an app from its loaded program.
    pub fn new(host: &Arc<Host>, program: Loaded, spec: AppSpec) -> Self {
        let mut limits = spec.limits;
        limits.memory = limits.memory.min(host.options.max_instance_memory);
        limits.concurrency = limits.concurrency.max(1);
        Self {
            shared: Arc::new(Shared {
                host: host.clone(),
                name: spec.name,
                env: spec.env,
                concurrency: Arc::new(Semaphore::new(limits.concurrency)),
                limits,
                log: spec.log,
                allowed: Arc::new(spec.allowed_outbound_hosts),
                files: spec
                    .files
                    .as_ref()
                    .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))),
                _files_fd: spec.files,
                stats: Counters::default(),
                idle: Mutex::new(Vec::new()),
                program,
            }),
        }
    }

    /// The interface its binary exports.
    pub fn interface(&self) -> Interface {
        self.shared.program.interface()
    }

    /// Its limits, as applied (the memory cap at most the host's ceiling).
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Its figures now.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let c = &s.stats;
        let inst = c.instantiations.load(Ordering::Relaxed);
        let pool_size = s.host.options.pool_instances as usize;
        Stats {
            running: s.limits.concurrency
                - s.concurrency.available_permits().min(s.limits.concurrency),
            waiting: c.waiting.load(Ordering::Relaxed),
            concurrency: s.limits.concurrency,
            pool_in_use: pool_size - s.host.slots.available_permits().min(pool_size),
            pool_size,
            requests: c.requests.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            instantiations: inst,
            reused: c.reused.load(Ordering::Relaxed),
            mean_instantiation_us: c
                .instantiation_ns
                .load(Ordering::Relaxed)
                .checked_div(inst)
                .unwrap_or(0)
                / 1000,
            last_instantiation_us: c.last_ns.load(Ordering::Relaxed) / 1000,
        }
    }
}

/// Aborts a task when its result is no longer wanted (the client went away while it waited
/// for a slot); a guest already running has a task of its own, which its deadline bounds.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Handler for WasmApp {
    fn call(&self, req: Request<Body>) -> ResponseFuture {
        let shared = self.shared.clone();
        let mut task = AbortOnDrop(self.shared.host.executor().spawn(shared.serve(req)));
        Box::pin(async move {
            match (&mut task.0).await {
                Ok(resp) => resp,
                // A panic is the router's to report (H500), as for a handler it calls directly.
                Err(e) => match e.try_into_panic() {
                    Ok(payload) => std::panic::resume_unwind(payload),
                    Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable\n"),
                },
            }
        })
    }
}
