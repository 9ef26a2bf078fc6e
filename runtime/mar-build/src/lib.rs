//! Builds: the Heroku classic buildpack API (`bin/detect`, `bin/compile`, `bin/release`),
//! `.buildpacks` and `BUILDPACK_URL`, `.slugignore`, the Procfile, and the slug archive.
//!
//! Invariant: `mar-build` knows nothing about sockets, git or releases. It turns a source
//! directory into a built directory plus process types, streaming what it does as lines.

mod exec;
mod ownership;
pub mod procfile;
mod pushed;
pub mod slugignore;

pub use ownership::chown_tree;
pub use pushed::{PushedFileError, open_pushed_dir, read_pushed, read_pushed_bytes};

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use procfile::ProcfileError;

/// What the built-in wasm buildpack's `bin/detect` prints: a build it took part in made a
/// WebAssembly app, which the runtime serves in-process.
pub const WASM_BUILDPACK: &str = "WebAssembly";

/// An exit status as a number (`1`), or the signal that ended the process (`signal 9`):
/// `ExitStatus`'s own text already says "exit status".
fn exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// The built-in buildpacks, in detection order.
pub const BUILTIN_ORDER: &[&str] = &["wasm", "python", "nodejs", "qt", "procfile"];

/// Why a build failed. Each message is meant for the pusher.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No buildpack's `bin/detect` accepted the app.
    #[error(
        "Unable to select a buildpack: no built-in buildpack ({}) detected this app; add a Procfile, or set BUILDPACK_URL",
        BUILTIN_ORDER.join(", ")
    )]
    NoBuildpack,
    /// A buildpack named by BUILDPACK_URL or .buildpacks could not be fetched.
    #[error("cannot fetch buildpack {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An explicitly chosen buildpack's detect refused the app.
    #[error("App not compatible with buildpack: {0}")]
    NotCompatible(String),
    /// `bin/compile` exited non-zero.
    #[error(
        "{buildpack} buildpack failed to compile the app (exit status {status}); its output above says why"
    )]
    Compile {
        /// The buildpack's name.
        buildpack: String,
        /// Its exit status.
        status: String,
    },
    /// `bin/release` failed or printed something that is not the expected YAML.
    #[error("{buildpack} buildpack's bin/release failed: {reason}")]
    Release {
        /// The buildpack's name.
        buildpack: String,
        /// What went wrong.
        reason: String,
    },
    /// The Procfile is malformed.
    #[error(transparent)]
    Procfile(#[from] ProcfileError),
    /// The build ran past its time limit and was killed.
    #[error("build timed out after {0:?} and was stopped")]
    TimedOut(Duration),
    /// The build was cancelled.
    #[error("build cancelled")]
    Cancelled,
    /// A script could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: io::Error,
    },
    /// A file operation of the build failed.
    #[error("build I/O: {0}")]
    Io(#[from] io::Error),
    /// A file of the pushed tree that the platform reads is not a plain file inside it.
    #[error(transparent)]
    Pushed(#[from] PushedFileError),
}

/// Where build output goes: one line at a time, as the pusher sees it. At most
/// [`OUTPUT_BACKLOG`] lines wait for a slow reader; past that, lines are dropped (and counted,
/// and the count said once the reader catches up) rather than held in the platform's memory.
#[derive(Clone)]
pub struct Output {
    tx: mpsc::Sender<String>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Lines of output that may wait for the reader.
pub const OUTPUT_BACKLOG: usize = 1024;

impl Output {
    /// An output and the receiving end of its lines.
    pub fn channel() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(OUTPUT_BACKLOG);
        (
            Self {
                tx,
                dropped: Default::default(),
            },
            rx,
        )
    }

    /// Sends one line (no trailing newline), or drops it when the reader is too far behind.
    pub fn line(&self, line: impl Into<String>) {
        use std::sync::atomic::Ordering;
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0
            && self
                .tx
                .try_send(format!(" !     ({dropped} lines of output dropped: they came faster than they were read)"))
                .is_err()
        {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        // The receiver only goes away when the pusher disconnected; the build's cancel token
        // handles that case.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(line.into()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a line that must not be dropped (a build's result), waiting for room.
    pub async fn line_surely(&self, line: impl Into<String>) {
        let _ = self.tx.send(line.into()).await;
    }

    /// A token cancelled when the reader goes away (the pusher hung up: stop the work rather
    /// than finish it for nobody), and the task that watches; abort it once the work is done,
    /// or the output never ends (it holds a sender).
    pub fn cancel_when_gone(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let (out, cancel) = (self.clone(), CancellationToken::new());
        let token = cancel.clone();
        let watcher = tokio::spawn(async move {
            out.closed().await;
            cancel.cancel();
        });
        (token, watcher)
    }

    /// Resolves when the receiving end is gone (the pusher disconnected).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// A Heroku-style step line: `-----> text`.
    pub fn step(&self, text: impl AsRef<str>) {
        self.line(format!("-----> {}", text.as_ref()));
    }

    /// A Heroku-style detail line, indented by 7 spaces.
    pub fn detail(&self, text: impl AsRef<str>) {
        self.line(format!("       {}", text.as_ref()));
    }
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The pushed tree, without `.git`. The build happens in place.
    pub build_dir: PathBuf,
    /// The app's build cache, kept between builds.
    pub cache_dir: PathBuf,
    /// Scratch space for this build only (ENV_DIR, HOME, fetched buildpacks).
    pub work_dir: PathBuf,
    /// The folder holding the built-in buildpacks.
    pub builtin_buildpacks: PathBuf,
    /// The app's config vars (written to ENV_DIR).
    pub config: BTreeMap<String, String>,
    /// The commit being built (`SOURCE_VERSION`).
    pub source_version: String,
    /// Environment the platform gives every buildpack script (from `mar.yaml`).
    pub platform_env: BTreeMap<String, String>,
    /// The build's time limit.
    pub timeout: Duration,
    /// Run buildpack scripts as this uid/gid (set when `mar` runs as root).
    pub run_as: Option<(u32, u32)>,
    /// The sandbox and control groups every process of the build runs in (set when `mar`
    /// runs as root): the app's user, private temporary directories, no new privileges, and
    /// memory, process and CPU limits; whatever a script leaves running is killed when it ends.
    pub confinement: Option<Confinement>,
}

/// How a build's processes are confined; see [`BuildSpec::confinement`].
#[derive(Debug, Clone)]
pub struct Confinement {
    /// The user (the app's), private temporary directories, open-files limit.
    pub sandbox: mar_supervisor::Sandbox,
    /// The build's control groups, with its limits; `None` where cgroups are not writable.
    pub group: Option<mar_supervisor::InstanceGroup>,
}

impl BuildSpec {
    /// Makes `cmd` run as the build's user, confined when the build is.
    fn as_build_user(&self, cmd: &mut Command) -> io::Result<()> {
        match (&self.confinement, self.run_as) {
            // The sandbox drops to the user itself, after joining the groups as root.
            (Some(c), _) => mar_supervisor::confine(cmd, &c.sandbox, c.group.as_ref()),
            (None, Some((uid, gid))) => {
                cmd.uid(uid).gid(gid);
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// The build's control groups, if it has any.
    fn group(&self) -> Option<&mar_supervisor::InstanceGroup> {
        self.confinement.as_ref().and_then(|c| c.group.as_ref())
    }
}

/// What a successful build yields.
#[derive(Debug, Clone)]
pub struct Built {
    /// Process type → command (buildpack defaults, overridden by the Procfile).
    pub process_types: BTreeMap<String, String>,
    /// Names of the buildpacks that ran.
    pub buildpacks: Vec<String>,
    /// Config var defaults from `bin/release` that the app does not set.
    pub config_defaults: BTreeMap<String, String>,
}

struct Buildpack {
    dir: PathBuf,
    /// How the user named it (URL or built-in name), for messages.
    label: String,
}

/// Runs the buildpacks over `spec.build_dir`.
pub async fn build(
    spec: &BuildSpec,
    out: &Output,
    cancel: &CancellationToken,
) -> Result<Built, BuildError> {
    let deadline = Instant::now() + spec.timeout;
    let env_dir = spec.work_dir.join("env");
    let home = spec.work_dir.join("home");
    // Config vars are secrets: their directory is private before they are written. (The
    // cache's parents are the app's directory, which its user must be able to pass through.)
    std::fs::create_dir_all(&spec.cache_dir)?;
    for d in [&env_dir, &home] {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)?;
    }
    // Buildpacks fetched with git are cloned as the app's user, whoever owns a local source
    // repository the app names: what that user can read is all it can get. git refuses other
    // owners' repositories unless told (the settings that could run commands from a served
    // repository, such as `uploadpack.packObjectsHook`, are only honoured from protected
    // configuration anyway). Written while the work space is still root's alone.
    std::fs::write(home.join(".gitconfig"), "[safe]\n\tdirectory = *\n")?;
    for (k, v) in &spec.config {
        // Config var names were validated at the API; still refuse anything path-like here.
        if !k.contains('/') && k != "." && k != ".." {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(env_dir.join(k))?
                .write_all(v.as_bytes())?;
        }
    }

    if let Some(text) = read_pushed(&spec.build_dir, ".slugignore")? {
        let removed = slugignore::SlugIgnore::parse(&text).apply(&spec.build_dir)?;
        if !removed.is_empty() {
            out.step(format!(
                "Removed {} paths listed in .slugignore",
                removed.len()
            ));
        }
    }

    // Handed to the build's user before any buildpack runs (detect too runs as that user).
    if let Some((uid, gid)) = spec.run_as {
        for d in [&spec.build_dir, &spec.cache_dir, &spec.work_dir] {
            chown_tree(d, uid, gid)?;
        }
        // Another app's build runs as another user: nothing of this one is open to it.
        use std::os::unix::fs::PermissionsExt;
        for d in [&spec.cache_dir, &spec.work_dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
    }

    let chosen = choose_buildpacks(spec, out, deadline, cancel).await?;

    let mut names = Vec::new();
    let mut exports: Vec<PathBuf> = Vec::new();
    let mut process_types = BTreeMap::new();
    let mut config_defaults = BTreeMap::new();
    for (i, bp) in chosen.iter().enumerate() {
        let name = match detect(spec, bp, &home, &exports, deadline, cancel, out).await? {
            Some(name) => name,
            // Auto-detected buildpacks said yes already; an explicit one that says no is an error.
            None => return Err(BuildError::NotCompatible(bp.label.clone())),
        };
        out.step(format!("{name} app detected"));
        let mut cmd = script(spec, bp, "compile", &home, &exports)?;
        cmd.arg(&spec.build_dir).arg(&spec.cache_dir).arg(&env_dir);
        let (status, _) = finish(
            exec::run(cmd, out, "", false, deadline, cancel, spec.group()).await?,
            spec,
        )?;
        if !status.success() {
            return Err(BuildError::Compile {
                buildpack: name,
                status: exit_text(status),
            });
        }
        let mut cmd = script(spec, bp, "release", &home, &exports)?;
        cmd.arg(&spec.build_dir);
        let (status, yaml) = finish(
            exec::run(cmd, out, "       ", true, deadline, cancel, spec.group()).await?,
            spec,
        )?;
        if !status.success() {
            return Err(BuildError::Release {
                buildpack: name,
                reason: format!("exit status {}", exit_text(status)),
            });
        }
        let release = parse_release(&yaml).map_err(|reason| BuildError::Release {
            buildpack: name.clone(),
            reason,
        })?;
        // Later buildpacks' defaults win, as in Heroku's multi-buildpack.
        process_types.extend(release.default_process_types);
        config_defaults.extend(release.config_vars);
        let export = bp.dir.join("export");
        if i + 1 < chosen.len() && export.is_file() {
            exports.push(export);
        }
        names.push(name);
    }

    out.step("Discovering process types");
    if !process_types.is_empty() {
        let list: Vec<&str> = process_types.keys().map(String::as_str).collect();
        out.detail(format!(
            "Default types for buildpack -> {}",
            list.join(", ")
        ));
    }
    match read_pushed(&spec.build_dir, "Procfile")? {
        Some(text) => {
            let declared = procfile::parse(&text)?;
            let list: Vec<&str> = declared.keys().map(String::as_str).collect();
            out.detail(format!("Procfile declares types -> {}", list.join(", ")));
            process_types.extend(declared);
        }
        None => out.detail("No Procfile; using the buildpack's default process types"),
    }
    // A WebAssembly app is served in-process, with no web process.
    if !process_types.contains_key("web") && !names.iter().any(|n| n == WASM_BUILDPACK) {
        out.detail("Warning: no `web` process type, so this app will receive no HTTP traffic.");
        out.detail("Add a line such as `web: ./server --port $PORT` to your Procfile.");
    }
    config_defaults.retain(|k, _| !spec.config.contains_key(k));
    Ok(Built {
        process_types,
        buildpacks: names,
        config_defaults,
    })
}

fn finish(
    res: Result<(std::process::ExitStatus, String), exec::Stop>,
    spec: &BuildSpec,
) -> Result<(std::process::ExitStatus, String), BuildError> {
    res.map_err(|stop| match stop {
        exec::Stop::TimedOut => BuildError::TimedOut(spec.timeout),
        exec::Stop::Cancelled => BuildError::Cancelled,
    })
}

/// A command running one of a buildpack's scripts, with the build environment and the
/// `export` files of earlier buildpacks sourced first (the multi-buildpack contract).
fn script(
    spec: &BuildSpec,
    bp: &Buildpack,
    name: &str,
    home: &Path,
    exports: &[PathBuf],
) -> io::Result<Command> {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("for e in \"${@:1:$MAR_EXPORT_COUNT}\"; do . \"$e\"; done; shift \"$MAR_EXPORT_COUNT\"; unset MAR_EXPORT_COUNT; exec \"$@\"")
        .arg("buildpack")
        .args(exports)
        .arg(bp.dir.join("bin").join(name))
        .env_clear()
        .env("PATH", mar_core::SYSTEM_PATH)
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .env("STACK", mar_core::STACK)
        .env("SOURCE_VERSION", &spec.source_version)
        .env("MAR_EXPORT_COUNT", exports.len().to_string())
        .envs(&spec.platform_env)
        .current_dir(&spec.build_dir);
    spec.as_build_user(&mut cmd)?;
    Ok(cmd)
}

async fn detect(
    spec: &BuildSpec,
    bp: &Buildpack,
    home: &Path,
    exports: &[PathBuf],
    deadline: Instant,
    cancel: &CancellationToken,
    out: &Output,
) -> Result<Option<String>, BuildError> {
    let mut cmd = script(spec, bp, "detect", home, exports)?;
    cmd.arg(&spec.build_dir);
    let (status, stdout) = finish(
        exec::run(cmd, out, "       ", true, deadline, cancel, spec.group()).await?,
        spec,
    )?;
    if !status.success() {
        return Ok(None);
    }
    let name = stdout.lines().next().unwrap_or("").trim().to_owned();
    Ok(Some(if name.is_empty() {
        bp.label.clone()
    } else {
        name
    }))
}

async fn choose_buildpacks(
    spec: &BuildSpec,
    out: &Output,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Vec<Buildpack>, BuildError> {
    let mut urls: Vec<String> = Vec::new();
    if let Some(url) = spec
        .config
        .get("BUILDPACK_URL")
        .filter(|u| !u.trim().is_empty())
    {
        urls.push(url.trim().to_owned());
    } else if let Some(text) = read_pushed(&spec.build_dir, ".buildpacks")? {
        urls.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if !urls.is_empty() {
        let mut packs = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            packs.push(fetch(spec, url, i, out, deadline, cancel).await?);
        }
        return Ok(packs);
    }
    let home = spec.work_dir.join("home");
    for name in BUILTIN_ORDER {
        let bp = Buildpack {
            dir: spec.builtin_buildpacks.join(name),
            label: (*name).to_owned(),
        };
        if detect(spec, &bp, &home, &[], deadline, cancel, out)
            .await?
            .is_some()
        {
            return Ok(vec![bp]);
        }
    }
    Err(BuildError::NoBuildpack)
}

/// Resolves a buildpack reference: a built-in name, a local directory, or a git URL with an
/// optional `#ref`.
/// Runs one step of fetching a buildpack (a copy, a clone) as the build's user, with its
/// output shown to the pusher.
async fn fetch_step(
    spec: &BuildSpec,
    mut cmd: Command,
    out: &Output,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<std::process::ExitStatus, BuildError> {
    spec.as_build_user(&mut cmd)?;
    let (status, _) = finish(
        exec::run(cmd, out, "       ", false, deadline, cancel, spec.group()).await?,
        spec,
    )?;
    Ok(status)
}

async fn fetch(
    spec: &BuildSpec,
    url: &str,
    index: usize,
    out: &Output,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Buildpack, BuildError> {
    let fail = |reason: String| BuildError::Fetch {
        url: url.to_owned(),
        reason,
    };
    if BUILTIN_ORDER.contains(&url) {
        return Ok(Buildpack {
            dir: spec.builtin_buildpacks.join(url),
            label: url.to_owned(),
        });
    }
    let local = Path::new(url);
    if local.is_absolute() {
        // A private copy, as a clone would be: buildpacks write their `export` file into
        // their own directory. Made by the build's user, so a path the app names can only
        // bring in what that user may read (never root's files), and symlinks stay symlinks.
        let dest = spec.work_dir.join(format!("buildpack-{index}"));
        let mut cmd = Command::new("cp");
        cmd.args(["-R", "-P", "--"])
            .arg(local)
            .arg(&dest)
            .env_clear()
            .env("PATH", mar_core::SYSTEM_PATH);
        if !fetch_step(spec, cmd, out, deadline, cancel)
            .await?
            .success()
        {
            return Err(fail(
                "cannot copy it (it must exist and be readable by the app's user)".into(),
            ));
        }
        if !dest.join("bin/compile").is_file() {
            return Err(fail("it has no bin/compile".into()));
        }
        return Ok(Buildpack {
            dir: dest,
            label: url.to_owned(),
        });
    }
    let (repo, reference) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (url, None),
    };
    if repo.starts_with('-') {
        return Err(fail("not a URL".into()));
    }
    let dest = spec.work_dir.join(format!("buildpack-{index}"));
    out.step(format!("Fetching buildpack {url}"));
    let mut cmd = Command::new("git");
    cmd.args(["clone", "--quiet", "--depth", "1"]);
    if let Some(r) = reference {
        cmd.args(["--branch", r]);
    }
    // Cloned by the build's user, into its own work space.
    cmd.arg("--")
        .arg(repo)
        .arg(&dest)
        .env_clear()
        .env("PATH", mar_core::SYSTEM_PATH)
        .env("HOME", spec.work_dir.join("home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0");
    let status = fetch_step(spec, cmd, out, deadline, cancel).await?;
    if !status.success() {
        return Err(fail(format!("git clone exited with {status}")));
    }
    if !dest.join("bin/compile").is_file() {
        return Err(fail("it has no bin/compile".into()));
    }
    Ok(Buildpack {
        dir: dest,
        label: url.to_owned(),
    })
}

#[derive(serde::Deserialize, Default)]
struct ReleaseYaml {
    #[serde(default)]
    default_process_types: Option<BTreeMap<String, String>>,
    #[serde(default)]
    config_vars: Option<BTreeMap<String, serde_yaml::Value>>,
}

struct ReleaseInfo {
    default_process_types: BTreeMap<String, String>,
    config_vars: BTreeMap<String, String>,
}

fn parse_release(yaml: &str) -> Result<ReleaseInfo, String> {
    let parsed: ReleaseYaml = if yaml.trim().is_empty() {
        ReleaseYaml::default()
    } else {
        serde_yaml::from_str(yaml)
            .map_err(|e| format!("its output is not valid release YAML: {e}"))?
    };
    let mut config_vars = BTreeMap::new();
    for (k, v) in parsed.config_vars.unwrap_or_default() {
        let v = match v {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Null => String::new(),
            other => serde_yaml::to_string(&other)
                .map_err(|e| e.to_string())?
                .trim()
                .to_owned(),
        };
        config_vars.insert(k, v);
    }
    Ok(ReleaseInfo {
        default_process_types: parsed.default_process_types.unwrap_or_default(),
        config_vars,
    })
}

/// Who reads the tree a slug is packed from.
#[derive(Debug, Clone, Copy)]
pub enum Packer<'a> {
    /// This process (not root, or apps without users of their own).
    Platform,
    /// `tar`, as the app's user, confined as its build was when `confinement` is given. The
    /// tree is the app's, and its processes (a build's leftovers, the running app) can swap a
    /// directory for a symlink while it is read: as the app's user, the walk can read nothing
    /// that is not the app's own, where root's walk would have packed whatever the symlink
    /// pointed to (the admin token) into the app's slug.
    App {
        /// The app's uid and gid.
        run_as: (u32, u32),
        /// The build's sandbox and control groups.
        confinement: Option<&'a Confinement>,
    },
}

/// Packs `dir` into a gzip'd tar at `dest` and returns its size in bytes: within `timeout`,
/// and at most `max_bytes` of slug (a sparse file of terabytes must not keep the platform
/// compressing zeros, nor fill its disk).
pub async fn pack_slug(
    dir: &Path,
    dest: &Path,
    packer: Packer<'_>,
    timeout: Duration,
    max_bytes: u64,
) -> io::Result<u64> {
    let tmp = dest.with_extension("partial");
    let packed = tokio::time::timeout(timeout, async {
        match packer {
            Packer::Platform => {
                let (d, t) = (dir.to_owned(), tmp.clone());
                tokio::task::spawn_blocking(move || pack_here(&d, &t))
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?
            }
            Packer::App {
                run_as,
                confinement,
            } => pack_as_app(dir, &tmp, run_as, confinement, max_bytes).await,
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(io::Error::other(format!(
            "packing the slug took longer than {}s",
            timeout.as_secs()
        )))
    });
    if let Err(e) = packed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let size = std::fs::metadata(&tmp)?.len();
    if size > max_bytes {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::other(format!(
            "the slug is larger than {}",
            human_size(max_bytes)
        )));
    }
    std::fs::rename(&tmp, dest)?;
    Ok(size)
}

/// Packs by walking the tree here (no symlink followed).
fn pack_here(dir: &Path, tmp: &Path) -> io::Result<()> {
    let file = std::fs::File::create(tmp)?;
    // Fast compression: the slug is kept for rollbacks, and push-to-serve time matters more
    // than a few megabytes of disk.
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)?;
    tar.into_inner()?.finish()?.sync_all()
}

/// Packs with `tar` (and its `gzip`) running as the app's user; its errors are read while it
/// runs, so a tree full of unreadable files cannot block it on a full pipe.
async fn pack_as_app(
    dir: &Path,
    tmp: &Path,
    (uid, gid): (u32, u32),
    confinement: Option<&Confinement>,
    max_bytes: u64,
) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut cmd = Command::new("tar");
    // `--hard-dereference`: hard links go in as files, so the slug unpacks without any, and
    // handing the unpacked tree to the app skips none (`chown_tree` leaves linked files alone).
    cmd.args([
        "--create",
        "--gzip",
        "--hard-dereference",
        "--file=-",
        "--directory",
    ])
    .arg(dir)
    .arg(".")
    .env_clear()
    .env("PATH", mar_core::SYSTEM_PATH)
    .env("LANG", "C.UTF-8")
    .env("GZIP", "-1")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    match confinement {
        Some(c) => mar_supervisor::confine(&mut cmd, &c.sandbox, c.group.as_ref())?,
        None => {
            cmd.uid(uid).gid(gid);
        }
    }
    let mut child = cmd.spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("tar has no stdout"))?;
    let stderr = child.stderr.take();
    let errors = tokio::spawn(async move {
        let mut kept = Vec::new();
        if let Some(mut e) = stderr {
            let _ = (&mut e).take(16 << 10).read_to_end(&mut kept).await;
            let _ = tokio::io::copy(&mut e, &mut tokio::io::sink()).await;
        }
        kept
    });
    let mut file = tokio::fs::File::create(tmp).await?;
    let copied = tokio::io::copy(&mut (&mut stdout).take(max_bytes + 1), &mut file).await?;
    if copied > max_bytes {
        return Err(io::Error::other(format!(
            "the slug is larger than {}",
            human_size(max_bytes)
        )));
    }
    file.sync_all().await?;
    let status = child.wait().await?;
    let kept = errors.await.unwrap_or_default();
    if !status.success() {
        return Err(io::Error::other(format!(
            "packing the slug failed: {}",
            String::from_utf8_lossy(&kept).trim()
        )));
    }
    Ok(())
}

/// Unpacks a slug made by [`pack_slug`] into `dest`.
pub fn unpack_slug(slug: &Path, dest: &Path) -> io::Result<()> {
    let file = std::fs::File::open(slug)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    // Files are unpacked by root: no setuid, setgid or sticky bit survives, whatever the slug
    // says, so nothing root-owned and setuid is ever left in an app's directory.
    archive.set_mask(0o7000);
    std::fs::create_dir_all(dest)?;
    archive.unpack(dest)
}

/// A size as Heroku prints it: `1.2M`, `340K`.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1}M", b / (1024.0 * 1024.0))
    } else {
        format!("{:.0}K", (b / 1024.0).ceil())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_yaml() {
        let r = parse_release(
            "---\ndefault_process_types:\n  web: python app.py\nconfig_vars:\n  A: 1\n",
        )
        .unwrap();
        assert_eq!(r.default_process_types["web"], "python app.py");
        assert_eq!(r.config_vars["A"], "1");
        assert!(
            parse_release("default_process_types: {}\n")
                .unwrap()
                .default_process_types
                .is_empty()
        );
        assert!(parse_release("").unwrap().config_vars.is_empty());
        assert!(parse_release("default_process_types: [1, 2]").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(1_300_000), "1.2M");
        assert_eq!(human_size(2048), "2K");
    }

    #[test]
    fn slug_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
        let slug = d.path().join("s.tar.gz");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let packed = rt.block_on(pack_slug(
            &src,
            &slug,
            Packer::Platform,
            Duration::from_secs(30),
            1 << 30,
        ));
        assert!(packed.unwrap() > 0);
        let dest = d.path().join("out");
        unpack_slug(&slug, &dest).unwrap();
        assert!(dest.join("bin/run").is_file());
    }

    /// The attack on slug packing: while the slug is packed, a process of the app's swaps a
    /// directory of its build for a symlink to a root-only directory, in a loop. Packed by
    /// root, the secret landed in the slug; packed as the app's user, it cannot.
    #[test]
    fn a_slug_packed_as_the_app_never_holds_what_a_swapped_symlink_points_to() {
        use std::os::unix::fs::PermissionsExt;
        if !crate::ownership::attack::as_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("token"), "root's secret").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        for i in 0..50 {
            std::fs::write(src.join(format!("sub/f{i}")), "app's own").unwrap();
        }
        std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
        chown_tree(&src, 4242, 4242).unwrap();
        let swapper = crate::ownership::attack::swap_in_a_loop(src.join("sub"), src.join("link"));
        let slug = d.path().join("s.tar.gz");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut leaked = 0;
        for _ in 0..400 {
            // A read that hits the swap mid-way may fail; what matters is what gets packed.
            let packer = Packer::App {
                run_as: (4242, 4242),
                confinement: None,
            };
            if rt
                .block_on(pack_slug(
                    &src,
                    &slug,
                    packer,
                    Duration::from_secs(30),
                    1 << 30,
                ))
                .is_err()
            {
                continue;
            }
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
                std::fs::File::open(&slug).unwrap(),
            ));
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let mut content = String::new();
                let _ = std::io::Read::read_to_string(&mut entry, &mut content);
                if content.contains("root's secret") {
                    leaked += 1;
                }
            }
        }
        drop(swapper);
        assert_eq!(
            leaked, 0,
            "the root-only file was packed into the app's slug"
        );
    }
}
