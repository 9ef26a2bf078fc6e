//! App processes: one actor task per instance (`web.1`, `worker.2`) that spawns it through
//! `bash -c` in its own process group, captures its output into the app's log, waits for a web
//! instance to accept connections on `$PORT`, restarts it when it crashes, and stops it with
//! SIGTERM to the group, then SIGKILL after a grace period.
//!
//! Invariant: `mar-supervisor` knows nothing about HTTP, releases or routing; it reports state
//! changes as [`Event`]s and the runtime decides what they mean for traffic.

pub mod attached;
mod cgroup;
mod firewall;
pub mod listener;
pub mod output;
mod sandbox;
pub mod terminal;
pub mod users;

pub use cgroup::{Cgroups, InstanceGroup, Limits};
pub use firewall::Firewall;
pub use sandbox::{EphemeralHome, Sandbox};

/// Arranges for `cmd`'s child to run in `sandbox` and in `group`'s control groups: for
/// processes that are not instances (a build's scripts), confined as an instance is.
pub fn confine(
    cmd: &mut tokio::process::Command,
    sandbox: &Sandbox,
    group: Option<&InstanceGroup>,
) -> std::io::Result<()> {
    sandbox::apply(cmd, sandbox, group.map_or(&[][..], |g| g.procs.as_slice()))
}

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use mar_core::AppName;
use mar_logs::Logs;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncRead;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Everything needed to run one instance.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The app.
    pub app: AppName,
    /// The process type (`web`, `worker`).
    pub process_type: String,
    /// 1-based instance number: `web.1`.
    pub index: u32,
    /// The Procfile command, run by `bash -c`.
    pub command: String,
    /// The unpacked slug: working directory and `HOME`.
    pub dir: PathBuf,
    /// Config vars and attached-service variables.
    pub env: BTreeMap<String, String>,
    /// How long a web instance has to accept connections on `$PORT`.
    pub boot_timeout: Duration,
    /// Time between SIGTERM and SIGKILL on stop.
    pub stop_grace: Duration,
    /// The release this instance runs, for messages.
    pub release: i64,
    /// User, private /tmp, open-files limit.
    pub sandbox: Sandbox,
    /// Memory and process-count limits, enforced through `cgroups`.
    pub limits: Limits,
    /// Where instances get their control groups; `None` runs without them.
    pub cgroups: Option<Cgroups>,
    /// Keeps other users off a web instance's port; `None` leaves it open.
    pub firewall: Option<Firewall>,
    /// How long a process must stay up for its crashes to count from zero again (and its
    /// next restart to come at once): [`STABLE_AFTER`] for apps.
    pub stable_after: Duration,
}

impl ProcessSpec {
    /// `web.1`.
    pub fn dyno(&self) -> String {
        format!("{}.{}", self.process_type, self.index)
    }

    fn is_web(&self) -> bool {
        self.process_type == "web"
    }
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Spawned, not yet accepting connections (web) or just spawned.
    Starting,
    /// Running; a web instance accepts connections on `port`.
    Up {
        /// Process id of the `bash` leading the group.
        pid: u32,
        /// `$PORT`, for web instances.
        port: Option<u16>,
        /// When it came up.
        since: std::time::SystemTime,
    },
    /// Exited or failed to boot; waiting to be restarted.
    Crashed {
        /// Why, in words.
        reason: String,
    },
    /// Stopped on purpose.
    Down,
}

impl State {
    /// `starting`, `up`, `crashed`, `down`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Up { .. } => "up",
            State::Crashed { .. } => "crashed",
            State::Down => "down",
        }
    }
}

/// A state change of an instance, sent to whoever routes traffic.
#[derive(Debug, Clone)]
pub struct Event {
    /// The app.
    pub app: AppName,
    /// The instance's unique id.
    pub instance: u64,
    /// Its new state.
    pub state: State,
}

/// Why an instance's first boot failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BootError {
    /// The web process did not accept connections within the boot timeout (Heroku's R10).
    #[error(
        "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {0} seconds of launch"
    )]
    Timeout(u64),
    /// The process exited before it was up.
    #[error("process exited during boot: {0}")]
    Exited(String),
    /// A one-off process ran past its time limit and was killed.
    #[error("process ran longer than {0} seconds and was stopped")]
    RanTooLong(u64),
    /// It was stopped before it came up.
    #[error("stopped before it came up")]
    Stopped,
    /// It could not be spawned at all.
    #[error("cannot start process: {0}")]
    Spawn(String),
    /// Something answered on `$PORT`, but not a process of this instance (another process took
    /// the port first).
    #[error(
        "Port {0} is held by a process outside this instance; no traffic goes there, and the instance restarts on a new port"
    )]
    PortTaken(u16),
}

struct Shared {
    id: u64,
    spec: ProcessSpec,
    group: std::sync::Mutex<Option<InstanceGroup>>,
    state: watch::Sender<State>,
    restarts: std::sync::atomic::AtomicU32,
    first_boot: watch::Sender<Option<Result<(), BootError>>>,
}

/// A handle on one running instance. Dropping it does not stop the process; call [`stop`].
///
/// [`stop`]: Instance::stop
#[derive(Clone)]
pub struct Instance {
    shared: Arc<Shared>,
    stop: CancellationToken,
    done: watch::Receiver<bool>,
}

/// Restart delays after consecutive crashes: immediately, then growing up to a cap.
fn backoff(crashes: u32) -> Duration {
    match crashes {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs((1u64 << (n - 2).min(5)).min(20)),
    }
}

/// Uptime after which a crash no longer counts as part of a crash loop.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Instance {
    /// Starts the instance's actor. State changes go to `events` and to the app's log.
    pub fn spawn(spec: ProcessSpec, logs: Arc<Logs>, events: mpsc::UnboundedSender<Event>) -> Self {
        let (state, _) = watch::channel(State::Starting);
        let (first_boot, _) = watch::channel(None);
        let (done_tx, done) = watch::channel(false);
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            spec,
            group: std::sync::Mutex::new(None),
            state,
            restarts: Default::default(),
            first_boot,
        });
        let stop = CancellationToken::new();
        let actor = Actor {
            shared: shared.clone(),
            logs,
            events,
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            actor.run().await;
            let _ = done_tx.send(true);
        });
        Self { shared, stop, done }
    }

    /// Unique id of this instance.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Its spec.
    pub fn spec(&self) -> &ProcessSpec {
        &self.shared.spec
    }

    /// Its current state.
    pub fn state(&self) -> State {
        self.shared.state.borrow().clone()
    }

    /// Memory in use by all of the instance's processes, in bytes.
    pub fn memory(&self) -> Option<u64> {
        let from_group = self
            .shared
            .group
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(InstanceGroup::memory);
        from_group.or_else(|| match self.state() {
            State::Up { pid, .. } => Some(group_rss(pid)),
            _ => None,
        })
    }

    /// How many times it was restarted after crashing.
    pub fn restarts(&self) -> u32 {
        self.shared
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for the outcome of the first boot: `Ok` once up (for web: accepting on `$PORT`).
    pub async fn first_boot(&self) -> Result<(), BootError> {
        let mut rx = self.shared.first_boot.subscribe();
        loop {
            if let Some(res) = rx.borrow_and_update().clone() {
                return res;
            }
            if rx.changed().await.is_err() {
                return Err(BootError::Stopped);
            }
        }
    }

    /// Stops the instance (SIGTERM, then SIGKILL after the grace period) and waits until it is
    /// gone.
    pub async fn stop(&self) {
        self.stop.cancel();
        let mut done = self.done.clone();
        while !*done.borrow_and_update() {
            if done.changed().await.is_err() {
                break;
            }
        }
    }
}

struct Actor {
    shared: Arc<Shared>,
    logs: Arc<Logs>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
}

enum Ended {
    Stopped,
    Crashed(String),
    /// Another process bound the port between its pick and the app's bind: our race, not the
    /// app's crash; it starts again at once on a new port.
    PortTaken,
}

impl Actor {
    fn spec(&self) -> &ProcessSpec {
        &self.shared.spec
    }

    fn log(&self, text: &str) {
        let spec = self.spec();
        self.logs
            .append(&spec.app, &format!("mar[{}]", spec.dyno()), text);
    }

    fn set_state(&self, state: State) {
        let old = self.shared.state.borrow().name();
        if old != state.name() {
            self.log(&format!("State changed from {old} to {}", state.name()));
        }
        self.shared.state.send_replace(state.clone());
        let _ = self.events.send(Event {
            app: self.spec().app.clone(),
            instance: self.shared.id,
            state,
        });
    }

    fn boot_result(&self, res: Result<(), BootError>) {
        self.shared.first_boot.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(res);
                true
            } else {
                false
            }
        });
    }

    async fn run(self) {
        let mut crashes: u32 = 0;
        let mut port_races: u32 = 0;
        loop {
            // A new port at every start: a crashed instance's port may have been taken by
            // another process meanwhile (an app squatting it), and must not keep this one
            // from coming back.
            let mut port = if self.spec().is_web() {
                free_port()
            } else {
                None
            };
            // Only this app's user (and root) may connect to it, from before it listens.
            let guarded = self.guard_port(port).await;
            let started = Instant::now();
            let ended = self.run_once(&mut port).await;
            self.release_group();
            if let (Some(fw), Some((p, uid))) = (&self.spec().firewall, guarded) {
                fw.release(p, uid).await;
            }
            match ended {
                Ended::Stopped => break,
                Ended::PortTaken if port_races < MAX_PORT_RACES => port_races += 1,
                Ended::PortTaken => {
                    let err = BootError::Spawn("every port tried was taken".into());
                    self.boot_result(Err(err.clone()));
                    self.set_state(State::Crashed {
                        reason: err.to_string(),
                    });
                    break;
                }
                Ended::Crashed(reason) => {
                    port_races = 0;
                    // A process that ran for a while before crashing starts a fresh series:
                    // restart it at once, as after its first crash.
                    if started.elapsed() >= self.spec().stable_after {
                        crashes = 0;
                    }
                    crashes += 1;
                    self.set_state(State::Crashed {
                        reason: reason.clone(),
                    });
                    let delay = backoff(crashes);
                    if !delay.is_zero() {
                        self.log(&format!(
                            "Restarting in {}s after {crashes} crashes",
                            delay.as_secs()
                        ));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.cancelled() => break,
                    }
                    self.shared
                        .restarts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        self.boot_result(Err(BootError::Stopped));
        self.set_state(State::Down);
    }

    fn command(&self, port: Option<u16>) -> Command {
        let mut cmd = command(self.spec(), port);
        sandbox::new_session(&mut cmd);
        cmd
    }

    /// Closes `port` to every user but the app's own and root's; returns what to release.
    async fn guard_port(&self, port: Option<u16>) -> Option<(u16, u32)> {
        let spec = self.spec();
        let (fw, p, (uid, _)) = (spec.firewall.as_ref()?, port?, spec.sandbox.user?);
        match fw.guard(p, uid).await {
            Ok(()) => Some((p, uid)),
            Err(e) => {
                self.log(&format!("Cannot close port {p} to other apps: {e}"));
                None
            }
        }
    }

    /// The pids of this instance's processes: its control groups' members, or the leader.
    fn pids(&self, leader: u32) -> Vec<u32> {
        let group = self.shared.group.lock().unwrap_or_else(|e| e.into_inner());
        let mut pids: Vec<u32> = group.as_ref().map(|g| g.pids()).unwrap_or_default();
        if pids.is_empty() {
            pids.push(leader);
        }
        pids
    }

    async fn run_once(&self, port: &mut Option<u16>) -> Ended {
        let spec = self.spec().clone();
        self.set_state(State::Starting);
        self.log(&format!("Starting process with command `{}`", spec.command));
        let mut cmd = self.command(*port);
        let group = match &spec.cgroups {
            Some(cg) => match cg.create(
                &format!("{}-{}-{}", spec.app, spec.dyno(), self.shared.id),
                &spec.limits,
            ) {
                Ok(g) => g,
                // Limits that can be had but not set are not skipped: the start fails.
                Err(e) => {
                    let err = BootError::Spawn(format!("cannot create its control group: {e}"));
                    self.log(&err.to_string());
                    self.boot_result(Err(err.clone()));
                    return Ended::Crashed(err.to_string());
                }
            },
            None => None,
        };
        let procs = group.as_ref().map(|g| g.procs.clone()).unwrap_or_default();
        if let Err(e) = sandbox::apply(&mut cmd, &spec.sandbox, &procs) {
            self.boot_result(Err(BootError::Spawn(e.to_string())));
            return Ended::Crashed(format!("cannot sandbox: {e}"));
        }
        let oom_before = group.as_ref().map_or(0, InstanceGroup::oom_kills);
        // Counted from before the spawn: a process that hits its limit in its first
        // milliseconds (before it is up) is reported too.
        let hits_before = group.as_ref().map_or(0, InstanceGroup::limit_hits);
        *self.shared.group.lock().unwrap_or_else(|e| e.into_inner()) = group;
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.boot_result(Err(BootError::Spawn(e.to_string())));
                return Ended::Crashed(format!("cannot start: {e}"));
            }
        };
        let pid = child.id().unwrap_or(0);
        let source = format!("app[{}]", spec.dyno());
        let (logs, app) = (self.logs.clone(), spec.app.clone());
        pump_output(&mut child, move |line| logs.append(&app, &source, &line));

        if let Some(p) = *port {
            let started = Instant::now();
            tokio::select! {
                ready = wait_ready(p, spec.boot_timeout) => {
                    if !ready {
                        let err = BootError::Timeout(spec.boot_timeout.as_secs());
                        self.log(&err.to_string());
                        self.log("Stopping process with SIGKILL");
                        kill(&child, Signal::SIGKILL);
                        let _ = child.wait().await;
                        self.boot_result(Err(err.clone()));
                        return Ended::Crashed(err.to_string());
                    }
                    // What answers on the port must be this instance, not a process that took
                    // the port first: traffic never goes to another app's listener.
                    if listener::held_by(p, &self.pids(pid)) != Some(true) {
                        let err = BootError::PortTaken(p);
                        self.log(&err.to_string());
                        kill(&child, Signal::SIGKILL);
                        let _ = child.wait().await;
                        self.boot_result(Err(err.clone()));
                        return Ended::Crashed(err.to_string());
                    }
                }
                status = child.wait() => {
                    let status = describe(status);
                    self.log(&format!("Process exited with status {status}"));
                    // Another process may have taken the port between our pick and the app's
                    // bind; that is our race, not the app's crash, so pick another port.
                    if !port_is_free(p) && started.elapsed() < spec.boot_timeout {
                        self.log(&format!("Port {p} was taken by another process; retrying on a new port"));
                        return Ended::PortTaken;
                    }
                    self.boot_result(Err(BootError::Exited(status.clone())));
                    return Ended::Crashed(format!("exited with status {status}"));
                }
                _ = self.stop.cancelled() => {
                    self.terminate(&mut child).await;
                    return Ended::Stopped;
                }
            }
        }
        self.set_state(State::Up {
            pid,
            port: *port,
            since: std::time::SystemTime::now(),
        });
        self.boot_result(Ok(()));
        let mut hits = hits_before;
        let mut monitor = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = describe(status);
                    if self.group_stat(InstanceGroup::oom_kills) > oom_before {
                        self.log(&format!(
                            "Error R15 (Memory quota vastly exceeded) -> a process used more than the {} memory limit and was killed",
                            spec.limits.memory_bytes.map_or("configured".to_owned(), human_bytes)
                        ));
                    }
                    self.log(&format!("Process exited with status {status}"));
                    return Ended::Crashed(format!("exited with status {status}"));
                }
                _ = monitor.tick() => {
                    let now = self.group_stat(InstanceGroup::limit_hits);
                    if now > hits {
                        self.log(&format!(
                            "Error R14 (Memory quota exceeded) -> memory use reached the {} limit",
                            spec.limits.memory_bytes.map_or("configured".to_owned(), human_bytes)
                        ));
                        hits = now;
                    }
                }
                _ = self.stop.cancelled() => {
                    self.terminate(&mut child).await;
                    return Ended::Stopped;
                }
            }
        }
    }

    fn group_stat(&self, f: impl Fn(&InstanceGroup) -> u64) -> u64 {
        self.shared
            .group
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, f)
    }

    /// Kills whatever the last run left in its group (daemonized children) and removes it.
    fn release_group(&self) {
        let group = self
            .shared
            .group
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(g) = group {
            g.kill_all();
            g.remove();
        }
    }

    /// SIGTERM to the whole group, then waits for every process of the group (not just the
    /// `bash` leader, which exits at once while the app may still be finishing requests) for
    /// the grace period, then SIGKILL to whatever is left.
    async fn terminate(&self, child: &mut Child) {
        let grace = self.spec().stop_grace;
        let pgid = child.id();
        self.log("Stopping all processes with SIGTERM");
        kill(child, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let status = tokio::time::timeout_at(deadline, child.wait()).await;
        let mut gone = status.is_ok();
        if let Some(pgid) = pgid {
            while gone && group_alive(pgid) {
                if tokio::time::Instant::now() >= deadline {
                    gone = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        match status {
            Ok(status) if gone => {
                self.log(&format!("Process exited with status {}", describe(status)))
            }
            _ => {
                self.log(&format!(
                    "Error R12 (Exit timeout) -> At least one process failed to exit within {} seconds of SIGTERM",
                    grace.as_secs()
                ));
                self.log("Stopping remaining processes with SIGKILL");
                if let Some(pgid) = pgid {
                    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
                }
                let _ = child.wait().await;
            }
        }
    }
}

/// Whether any live (not zombie) process is left in the process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    group_members(pgid).any(|(state, _)| state != "Z")
}

/// `(state, rss pages)` of every process in the process group `pgid`, from /proc.
fn group_members(pgid: u32) -> impl Iterator<Item = (String, u64)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the command name, which is in parentheses and may contain spaces:
            // state (3), ppid (4), pgrp (5), ... rss (24).
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            (fields.get(2)?.parse::<u32>().ok()? == pgid).then(|| {
                (
                    fields[0].to_owned(),
                    fields.get(21).and_then(|f| f.parse().ok()).unwrap_or(0),
                )
            })
        })
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}G", b >> 30)
    } else {
        format!("{}M", b >> 20)
    }
}

/// Resident memory of every process in the process group `pgid`.
fn group_rss(pgid: u32) -> u64 {
    group_members(pgid).map(|(_, pages)| pages * 4096).sum()
}

/// The command line of a process: `bash -c` sourcing `.profile.d` first, in the slug, with a
/// cleared environment. The caller puts it in a process group of its own (or a session of its
/// own, for a terminal), so that signals reach everything it forks.
fn command(spec: &ProcessSpec, port: Option<u16>) -> Command {
    // `.profile.d` scripts come first, as on Heroku; the command then runs in the same
    // shell so its exports apply.
    let script = format!(
        "for f in .profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\n{}",
        spec.command
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(&spec.dir)
        .env_clear()
        .env("PATH", mar_core::SYSTEM_PATH)
        .env("LANG", "C.UTF-8")
        .envs(&spec.env)
        .env("HOME", &spec.dir)
        .env("DYNO", spec.dyno())
        .env("PS", spec.dyno())
        .env("STACK", mar_core::STACK)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(port) = port {
        cmd.env("PORT", port.to_string());
    }
    cmd
}

/// Runs a one-off process (`mar run`, the release phase) in the same confinement as the app's
/// processes, giving each output line to `out` (which must not grow without bound: a process
/// may print forever), and returns its exit code (128 + signal when killed). `cancel` or
/// `timeout` kill its whole group.
pub async fn one_off(
    spec: &ProcessSpec,
    out: impl Fn(String) + Clone + Send + 'static,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<i32, BootError> {
    let mut cmd = command(spec, None);
    sandbox::new_session(&mut cmd);
    let (mut child, group) = spawn_one_off(spec, cmd)?;
    let pumps = pump_output(&mut child, out);
    let result = wait_one_off(&mut child, timeout, cancel).await;
    end_one_off(group);
    for p in pumps {
        let _ = p.await;
    }
    result
}

/// Spawns a one-off's command in a control group of its own (when the platform has them) and
/// in the app's sandbox.
fn spawn_one_off(
    spec: &ProcessSpec,
    mut cmd: Command,
) -> Result<(Child, Option<InstanceGroup>), BootError> {
    let group = match &spec.cgroups {
        Some(cg) => cg
            .create(
                &format!(
                    "{}-{}-{}",
                    spec.app,
                    spec.dyno(),
                    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ),
                &spec.limits,
            )
            .map_err(|e| BootError::Spawn(e.to_string()))?,
        None => None,
    };
    let procs = group.as_ref().map(|g| g.procs.clone()).unwrap_or_default();
    sandbox::apply(&mut cmd, &spec.sandbox, &procs).map_err(|e| BootError::Spawn(e.to_string()))?;
    let child = cmd.spawn().map_err(|e| BootError::Spawn(e.to_string()))?;
    Ok((child, group))
}

/// Waits for a one-off to exit, killing its process group at `timeout` or `cancel`.
async fn wait_one_off(
    child: &mut Child,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<i32, BootError> {
    // Its group's id (it leads its group or session), known before it is reaped.
    let group = child.id();
    tokio::select! {
        status = child.wait() => {
            use std::os::unix::process::ExitStatusExt;
            // What it left running in its group ends with it, control groups or not (a
            // group's id is not reused while the group has members).
            if let Some(pid) = group {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            match status {
                Ok(s) => Ok(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))),
                Err(e) => Err(BootError::Spawn(e.to_string())),
            }
        }
        _ = tokio::time::sleep(timeout) => {
            kill(child, Signal::SIGKILL);
            let _ = child.wait().await;
            Err(BootError::RanTooLong(timeout.as_secs()))
        }
        _ = cancel.cancelled() => {
            kill(child, Signal::SIGKILL);
            let _ = child.wait().await;
            Err(BootError::Stopped)
        }
    }
}

/// Waits for a one-off's output readers to hand over what is left once its processes are
/// gone. A reader waiting for its caller (a slow client) is waited for as long as that takes
/// (a caller that hangs up ends it); one still waiting on its pipe two seconds after the
/// process ended (something outside the process's group holds the pipe) is stopped.
pub(crate) async fn drain_readers(readers: Vec<(tokio::task::JoinHandle<()>, Arc<AtomicBool>)>) {
    for (mut reader, on_pipe) in readers {
        loop {
            match tokio::time::timeout(Duration::from_secs(2), &mut reader).await {
                Ok(_) => break,
                Err(_) if on_pipe.load(std::sync::atomic::Ordering::Relaxed) => {
                    reader.abort();
                    break;
                }
                Err(_) => {}
            }
        }
    }
}

/// Whatever a one-off left running in its control group (a daemon it started) dies with it.
fn end_one_off(group: Option<InstanceGroup>) {
    if let Some(g) = group {
        g.kill_all();
        g.remove();
    }
}

/// Sends every line the child writes to stdout or stderr to `sink`, from two tasks that end
/// with the streams.
fn pump_output(
    child: &mut Child,
    sink: impl Fn(String) + Clone + Send + 'static,
) -> Vec<tokio::task::JoinHandle<()>> {
    [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let sink = sink.clone();
        tokio::spawn(output::for_each_line(stream, sink))
    })
    .collect()
}

fn kill(child: &Child, sig: Signal) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), sig);
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => c.to_string(),
            (None, Some(sig)) => format!("{} (signal)", sig + 128),
            _ => s.to_string(),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

/// Port races in a row after which an instance gives up.
const MAX_PORT_RACES: u32 = 10;

/// A port that was free a moment ago. The app binds it later, so this can race with another
/// process; the actor detects that case and retries with a new port.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`): a port the kernel hands
/// out for outgoing connections (the router's own to apps, among them) could be taken by one
/// between the pick and the app's bind; one below the range is taken only by a deliberate
/// bind. Falls back to a kernel-chosen port when that range is full or absent.
fn free_port() -> Option<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1));
    if high > low {
        let mut seed = [0u8; 2];
        let span = u32::from(high - low) + 1;
        for _ in 0..64 {
            if getrandom::fill(&mut seed).is_err() {
                break;
            }
            let offset = u32::from(u16::from_le_bytes(seed)) % span;
            let port = low + offset as u16;
            if port_is_free(port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Some(port);
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// Polls until something accepts TCP connections on `port`, or `timeout` passes.
async fn wait_ready(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(10), Duration::from_secs(20));
    }

    fn spec(dir: &std::path::Path, ty: &str, command: &str) -> ProcessSpec {
        ProcessSpec {
            app: AppName::parse("t").unwrap(),
            process_type: ty.into(),
            index: 1,
            command: command.into(),
            dir: dir.to_owned(),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            boot_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(2),
            release: 1,
            sandbox: Sandbox::default(),
            limits: Limits::default(),
            cgroups: None,
            firewall: None,
            stable_after: STABLE_AFTER,
        }
    }

    /// The restart back-off grows with each crash in a row, and starts again from nothing
    /// once a process has stayed up for `stable_after`.
    #[tokio::test]
    async fn the_restart_back_off_resets_after_a_stable_run() {
        let d = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::open(&d.path().join("logs")).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = spec(
            d.path(),
            "worker",
            "n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); echo $n > count; echo \"run $n\"; \
             case $n in 1|2|3|5) exit 1;; 4) sleep 1.5; exit 1;; *) exec sleep 30;; esac",
        );
        s.stable_after = Duration::from_secs(1);
        let inst = Instance::spawn(s, logs.clone(), tx);
        let app = AppName::parse("t").unwrap();
        let mut lines = Vec::new();
        for _ in 0..200 {
            lines = logs
                .recent(&app, 100, 0)
                .unwrap()
                .into_iter()
                .map(|l| l.render())
                .collect::<Vec<_>>();
            if lines.iter().any(|l| l.ends_with("run 6")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        inst.stop().await;
        let waits: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split("Restarting in ").nth(1))
            .collect();
        // Three quick crashes: at once, 1 s, 2 s. Then a run longer than `stable_after`: its
        // crash is the first of a new series (at once, no line), and the next waits 1 s again.
        assert_eq!(
            waits,
            [
                "1s after 2 crashes",
                "2s after 3 crashes",
                "1s after 2 crashes"
            ],
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.ends_with("run 6")), "{lines:#?}");
    }

    #[tokio::test]
    async fn web_instance_boots_on_port_and_stops() {
        let d = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::open(&d.path().join("logs")).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let inst = Instance::spawn(
            spec(
                d.path(),
                "web",
                "echo \"greeting=$GREETING dyno=$DYNO\"; exec python3 -m http.server $PORT --bind 127.0.0.1",
            ),
            logs.clone(),
            tx,
        );
        inst.first_boot().await.unwrap();
        let State::Up {
            port: Some(port), ..
        } = inst.state()
        else {
            panic!("not up")
        };
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        inst.stop().await;
        assert_eq!(inst.state(), State::Down);
        let app = AppName::parse("t").unwrap();
        let text: Vec<String> = logs
            .recent(&app, 100, 0)
            .unwrap()
            .into_iter()
            .map(|l| l.render())
            .collect();
        let all = text.join("\n");
        assert!(all.contains("app[web.1]: greeting=hi dyno=web.1"), "{all}");
        assert!(
            all.contains("mar[web.1]: State changed from starting to up"),
            "{all}"
        );
    }

    #[tokio::test]
    async fn web_that_never_binds_fails_boot() {
        let d = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::open(&d.path().join("logs")).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = spec(d.path(), "web", "sleep 30");
        s.boot_timeout = Duration::from_millis(300);
        let inst = Instance::spawn(s, logs, tx);
        assert!(matches!(
            inst.first_boot().await,
            Err(BootError::Timeout(_))
        ));
        inst.stop().await;
    }

    #[tokio::test]
    async fn sigterm_ignorer_is_killed_after_grace() {
        let d = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::open(&d.path().join("logs")).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let ready = d.path().join("trap-set");
        let command = format!(
            "trap '' TERM; touch {}; while true; do sleep 0.1; done",
            ready.display()
        );
        let mut s = spec(d.path(), "worker", &command);
        s.stop_grace = Duration::from_millis(300);
        let inst = Instance::spawn(s, logs, tx);
        inst.first_boot().await.unwrap();
        // Stop only once the shell ignores SIGTERM, or it dies of the first signal.
        for _ in 0..100 {
            if ready.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ready.exists(), "the worker never set its trap");
        let State::Up { pid, .. } = inst.state() else {
            panic!("not up")
        };
        let started = std::time::Instant::now();
        inst.stop().await;
        // Not before the grace period: an immediate SIGKILL would pass the rest.
        assert!(started.elapsed() >= Duration::from_millis(300));
        // The whole group is gone: signal 0 to the group fails. The leader is reaped by the
        // time `stop` returns; the group's other member (`sleep`), killed by the same
        // SIGKILL, is reaped by init a moment later, and a zombie still takes signal 0.
        let mut gone = false;
        for _ in 0..100 {
            if killpg(Pid::from_raw(pid as i32), None).is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the process group outlived its SIGKILL by 2 s");
    }

    /// A root group of the test's own (`name`): tests run at once, and one's sweep must not
    /// kill another's processes. Limits need root and a writable cgroup hierarchy, which this
    /// project's machines and CI have: without root the test fails, unless
    /// `MAR_TESTS_WITHOUT_ROOT=1` says to skip what needs it (a green run must not hide a
    /// test that did not run).
    fn confined(name: &str) -> Option<Cgroups> {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("MAR_TESTS_WITHOUT_ROOT").is_some(),
                "this test needs root; set MAR_TESTS_WITHOUT_ROOT=1 to skip it knowingly"
            );
            eprintln!("skipped: needs root (MAR_TESTS_WITHOUT_ROOT is set)");
            return None;
        }
        let cg = Cgroups::detect(&format!("mar-unit-{}-{name}", std::process::id()));
        assert!(
            cg.available(),
            "this machine has cgroups: they must be writable for root"
        );
        Some(cg)
    }

    #[tokio::test]
    async fn memory_limit_kills_with_r15_and_user_tmp_and_nofile_apply() {
        let Some(cg) = confined("memory") else { return };
        let d = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::open(&d.path().join("logs")).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = spec(
            d.path(),
            "worker",
            "echo \"uid=$(id -u) tmp=$(ls -A /tmp | wc -l) nofile=$(ulimit -n)\"; sleep 0.2; exec python3 -c 'b = [bytearray(8 << 20) for _ in range(64)]'",
        );
        s.sandbox = Sandbox {
            user: Some((65534, 65534)),
            private_tmp: true,
            nofile: Some(256),
            home: None,
        };
        s.limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(64),
            nofile: Some(256),
            cpu_millis: None,
        };
        s.cgroups = Some(cg.clone());
        let inst = Instance::spawn(s, logs.clone(), tx);
        inst.first_boot().await.unwrap();
        let app = AppName::parse("t").unwrap();
        let mut text = String::new();
        for _ in 0..100 {
            text = logs
                .recent(&app, 100, 0)
                .unwrap()
                .into_iter()
                .map(|l| l.render())
                .collect::<Vec<_>>()
                .join("\n");
            if text.contains("Error R15") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        inst.stop().await;
        assert!(text.contains("uid=65534 tmp=0 nofile=256"), "{text}");
        assert!(
            text.contains("Error R15 (Memory quota vastly exceeded)"),
            "{text}"
        );
        assert_eq!(cg.sweep(), 0, "nothing is left in the groups after a stop");
        cg.remove_root();
    }

    /// Page cache counts towards the memory limit: a process that reads a file larger than its
    /// limit makes the kernel reclaim at the limit (no kill, as cache can be dropped), which
    /// the monitor reports as R14 while the process keeps running.
    #[tokio::test]
    async fn memory_at_the_limit_without_a_kill_is_r14() {
        let Some(cg) = confined("r14") else { return };
        // On a disk-backed file system (beside the test binary), not /tmp, which may be a
        // tmpfs whose pages stay charged to their writer.
        let exe = std::env::current_exe().unwrap();
        let d = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // 160 MiB on disk, dropped from the page cache, so the instance's read charges it.
        let big = d.path().join("big");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&big).unwrap();
            let block = vec![7u8; 1 << 20];
            for _ in 0..160 {
                f.write_all(&block).unwrap();
            }
            f.sync_all().unwrap();
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let r = std::fs::File::open(&big).unwrap();
        nix::fcntl::posix_fadvise(
            &r,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let logs = Arc::new(Logs::open(&d.path().join("logs")).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = spec(
            d.path(),
            "worker",
            &format!("echo read $(cat {} | wc -c); exec sleep 30", big.display()),
        );
        s.sandbox = Sandbox {
            user: Some((65534, 65534)),
            private_tmp: false,
            nofile: Some(256),
            home: None,
        };
        s.limits = Limits {
            memory_bytes: Some(48 << 20),
            pids: Some(64),
            nofile: Some(256),
            cpu_millis: None,
        };
        s.cgroups = Some(cg.clone());
        let inst = Instance::spawn(s, logs.clone(), tx);
        inst.first_boot().await.unwrap();
        let app = AppName::parse("t").unwrap();
        let mut text = String::new();
        for _ in 0..100 {
            text = logs
                .recent(&app, 100, 0)
                .unwrap()
                .into_iter()
                .map(|l| l.render())
                .collect::<Vec<_>>()
                .join("\n");
            if text.contains("Error R14") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let still_up = matches!(inst.state(), State::Up { .. });
        inst.stop().await;
        assert!(text.contains("read 167772160"), "{text}");
        assert!(
            text.contains("Error R14 (Memory quota exceeded) -> memory use reached the 48M limit"),
            "{text}"
        );
        assert!(!text.contains("Error R15"), "{text}");
        assert!(still_up, "the process was not killed: {text}");
        cg.remove_root();
    }

    /// A process that spins gets no more CPU than its limit: measured from its own CPU time
    /// in /proc over a second of wall time.
    #[tokio::test]
    async fn cpu_limit_caps_a_spinning_process() {
        let Some(cg) = confined("cpu") else { return };
        let d = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::open(&d.path().join("logs")).unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut s = spec(d.path(), "worker", "while :; do :; done");
        s.limits = Limits {
            cpu_millis: Some(200),
            ..Limits::default()
        };
        s.cgroups = Some(cg.clone());
        let inst = Instance::spawn(s, logs, tx);
        inst.first_boot().await.unwrap();
        let State::Up { pid, .. } = inst.state() else {
            panic!("not up")
        };
        let ticks = || -> u64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after_name.split(' ').collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as f64;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (t0, w0) = (ticks(), std::time::Instant::now());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let used = (ticks() - t0) as f64 / hz / w0.elapsed().as_secs_f64();
        inst.stop().await;
        cg.remove_root();
        assert!(used < 0.3, "a 0.2-core limit let it use {used:.2} cores");
        assert!(used > 0.1, "it should still run: {used:.2} cores");
    }
}
