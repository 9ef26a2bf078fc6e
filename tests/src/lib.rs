//! Test support for the end-to-end suite: start the real `mar` binary on port 0 with a
//! temporary data directory, push example apps with the real `git` in a hermetic environment,
//! and talk HTTP and WebSocket to the router. Nothing here is a mock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The `mar` binary under test: `MAR_BIN`, else `target/debug/mar` next to this test binary.
pub fn mar_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MAR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // A test binary is target/debug/deps/e2e-HASH, a benchmark target/debug/NAME: look beside
    // it, then one level up, for target/debug/mar.
    let dir = exe.parent().unwrap();
    let bin = [dir.join("mar"), dir.parent().unwrap().join("mar")]
        .into_iter()
        .find(|p| p.is_file());
    bin.unwrap_or_else(|| {
        panic!(
            "no mar binary near {}: run `cargo build --workspace --bins` first",
            exe.display()
        )
    })
}

/// Where test data directories go: `target/tmp`, not `/tmp`, because apps get a private `/tmp`
/// mounted over the real one, which would hide a data directory that lives there.
pub fn scratch_root() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe
        .ancestors()
        .find(|a| {
            a.file_name()
                .is_some_and(|n| n == "debug" || n == "release")
        })
        .unwrap_or_else(|| exe.parent().unwrap());
    let root = profile.parent().unwrap().join("tmp");
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// A running `mar serve`. Dropping it kills the server (and prints its stderr when the test
/// failed); [`MarServer::stop`] is the graceful path and checks the exit status.
pub struct MarServer {
    /// The temporary directory holding the data directory and work trees.
    pub tmp: Arc<tempfile::TempDir>,
    /// `MAR_HOME`.
    pub data_dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it listens for HTTPS, when started with `--https-listen`.
    pub https_addr: Option<SocketAddr>,
    extra: Vec<String>,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl MarServer {
    /// Starts a server with a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server whose data directory holds `mar_yaml` as `mar.yaml`.
    pub fn start_with(mar_yaml: Option<&str>) -> Self {
        Self::start_with_args(mar_yaml, &[])
    }

    /// Starts a server with `mar.yaml` and extra `mar serve` arguments.
    pub fn start_with_args(mar_yaml: Option<&str>, extra: &[&str]) -> Self {
        let (tmp, data_dir) = new_data_dir();
        if let Some(y) = mar_yaml {
            std::fs::write(data_dir.join("mar.yaml"), y).unwrap();
        }
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::start_in_with(Arc::new(tmp), data_dir, extra)
    }

    /// Starts a server that inherited `leak` as an open descriptor it did not ask for.
    pub fn start_leaking(leak: &Path) -> Self {
        let (tmp, data_dir) = new_data_dir();
        let (child, addr, https_addr, stderr) = spawn_serve_leaking(&data_dir, &[], Some(leak))
            .unwrap_or_else(|e| panic!("mar serve did not start: {e}"));
        Self {
            tmp: Arc::new(tmp),
            data_dir,
            addr,
            https_addr,
            extra: Vec::new(),
            child: Some(child),
            stderr,
        }
    }

    /// Starts a server on an existing data directory (a restart).
    pub fn start_in(tmp: Arc<tempfile::TempDir>, data_dir: PathBuf) -> Self {
        Self::start_in_with(tmp, data_dir, Vec::new())
    }

    fn start_in_with(tmp: Arc<tempfile::TempDir>, data_dir: PathBuf, extra: Vec<String>) -> Self {
        let (child, addr, https_addr, stderr) = spawn_serve(&data_dir, &extra)
            .unwrap_or_else(|e| panic!("mar serve did not start: {e}"));
        Self {
            tmp,
            data_dir,
            addr,
            https_addr,
            extra,
            child: Some(child),
            stderr,
        }
    }

    /// Stops the server with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().unwrap()
    }

    /// Stops this server and starts another on the same data directory.
    pub fn restart(self) -> Self {
        let (tmp, data_dir, extra) = (self.tmp.clone(), self.data_dir.clone(), self.extra.clone());
        let status = self.stop();
        assert!(status.success(), "mar serve exited with {status}");
        Self::start_in_with(tmp, data_dir, extra)
    }

    /// Kills the server with SIGKILL (no shutdown path runs) and starts another on the same
    /// data directory: what survives is what was durable.
    pub fn kill9_and_restart(mut self) -> Self {
        let (tmp, data_dir, extra) = (self.tmp.clone(), self.data_dir.clone(), self.extra.clone());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self);
        Self::start_in_with(tmp, data_dir, extra)
    }

    /// The process id of `mar serve`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The admin token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Runs the `mar` CLI against this server.
    pub fn mar(&self, args: &[&str]) -> CmdOutput {
        self.mar_in(args, self.tmp.path())
    }

    /// Creates a service instance with the CLI; its `--json` view.
    pub fn create_service(&self, kind: &str, name: &str) -> serde_json::Value {
        let out = self.mar(&["services:create", kind, name, "--json"]);
        assert!(out.ok(), "{}", out.all());
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["kind"], kind);
        assert_eq!(v["id"].as_str().unwrap().len(), 24);
        v
    }

    /// Runs the `mar` CLI with `input` on its standard input.
    pub fn mar_with_input(&self, args: &[&str], input: &str) -> CmdOutput {
        self.mar_with_input_bytes(args, input.as_bytes())
    }

    /// Runs the `mar` CLI with `input` (any bytes) on its standard input.
    pub fn mar_with_input_bytes(&self, args: &[&str], input: &[u8]) -> CmdOutput {
        use std::io::Write;
        let mut child = Command::new(mar_bin())
            .args(args)
            .current_dir(self.tmp.path())
            .env("MAR_HOME", &self.data_dir)
            .env_remove("MAR_API_URL")
            .env_remove("MAR_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input).unwrap();
        }
        CmdOutput::from(child.wait_with_output().unwrap())
    }

    /// Runs the `mar` CLI in `dir`.
    pub fn mar_in(&self, args: &[&str], dir: &Path) -> CmdOutput {
        let out = Command::new(mar_bin())
            .args(args)
            .current_dir(dir)
            .env("MAR_HOME", &self.data_dir)
            .env_remove("MAR_API_URL")
            .env_remove("MAR_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        CmdOutput::from(out)
    }

    /// Creates an app through the CLI.
    pub fn create_app(&self, name: &str) {
        let out = self.mar(&["apps:create", name]);
        assert!(out.ok(), "apps:create {name}: {}", out.all());
    }

    /// Makes `app`'s builds install Python packages only from the wheels the test setup
    /// fetched into [`OFFLINE_PACKAGES`] (pip's own `PIP_NO_INDEX` and `PIP_FIND_LINKS`, as
    /// config vars), never from the network: a failed install then means what it says.
    pub fn offline_pip(&self, app: &str) {
        let wheels = Path::new(OFFLINE_PACKAGES).join("wheels");
        assert!(
            wheels.is_dir(),
            "no {}: run `bash scripts/test.sh`, which fetches the examples' packages",
            wheels.display()
        );
        let out = self.mar(&[
            "config:set",
            "PIP_NO_INDEX=1",
            &format!("PIP_FIND_LINKS={}", wheels.display()),
            "-a",
            app,
        ]);
        assert!(out.ok(), "{}", out.all());
    }

    /// Gives `app` a warm npm build cache (a copy of the one the test setup filled in
    /// [`OFFLINE_PACKAGES`]) and makes npm work offline (`npm_config_offline`), so its build
    /// never reaches the network.
    pub fn offline_npm(&self, app: &str) {
        let cache = Path::new(OFFLINE_PACKAGES).join("npm");
        assert!(
            cache.is_dir(),
            "no {}: run `bash scripts/test.sh`, which fetches the examples' packages",
            cache.display()
        );
        let dest = self.data_dir.join("apps").join(app).join("cache");
        std::fs::create_dir_all(&dest).unwrap();
        let status = Command::new("cp")
            .arg("-r")
            .arg(&cache)
            .arg(dest.join("npm"))
            .status()
            .unwrap();
        assert!(status.success(), "copying the npm cache failed");
        let out = self.mar(&["config:set", "npm_config_offline=true", "-a", app]);
        assert!(out.ok(), "{}", out.all());
    }

    /// Creates `app`, sets `config` (`K=V` pairs) and pushes the lifecycle fixture app, whose
    /// routes the lifecycle, isolation and router tests use.
    pub fn deploy_lifecycle(&self, app: &str, config: &[&str]) {
        self.create_app(app);
        if !config.is_empty() {
            let mut args = vec!["config:set"];
            args.extend_from_slice(config);
            args.extend_from_slice(&["-a", app]);
            let out = self.mar(&args);
            assert!(out.ok(), "{}", out.all());
        }
        let repo = self.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"));
        let push = repo.push(&self.git_url(app), "main");
        assert!(push.ok(), "{}", push.all());
    }

    /// Copies `src` (an example or fixture) into a new git repository, committed on `main`.
    pub fn repo_from(&self, src: &Path) -> GitRepo {
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(self.tmp.path())
            .unwrap()
            .keep();
        copy_tree(src, &dir);
        let repo = GitRepo::new(dir, self.tmp.path().join("home"));
        repo.git(&["init", "-q", "-b", "main"]);
        repo.commit("initial");
        repo
    }

    /// The push URL of `app`, with the token as password.
    pub fn git_url(&self, app: &str) -> String {
        format!("http://git:{}@{}/{app}.git", self.token(), self.addr)
    }

    /// Sends a request through the router with `host` as the Host header.
    pub async fn http(&self, method: &str, host: &str, path: &str, body: &str) -> Resp {
        http(
            self.addr,
            method,
            host,
            path,
            &[],
            Bytes::from(body.to_owned()),
        )
        .await
    }

    /// `GET` through the router.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.http("GET", host, path, "").await
    }

    /// An API call with the admin token.
    pub async fn api(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {}", self.token());
        http(
            self.addr,
            method,
            "localhost",
            path,
            &[("authorization", &auth)],
            Bytes::from(body.to_owned()),
        )
        .await
    }
}

impl Drop for MarServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- mar serve stderr ---\n{}\n---", self.stderr());
                let logs = self.data_dir.join("logs");
                if let Ok(entries) = std::fs::read_dir(&logs) {
                    for e in entries.flatten() {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        let tail: Vec<&str> = text
                            .lines()
                            .rev()
                            .take(40)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        eprintln!("--- {} ---\n{}", e.path().display(), tail.join("\n"));
                    }
                }
            }
        }
    }
}

type Spawned = (Child, SocketAddr, Option<SocketAddr>, Arc<Mutex<String>>);

/// A fresh temporary directory (searchable by others: apps' users must reach their files
/// under it) with an empty data directory in it.
fn new_data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = scratch_dir();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    (tmp, data_dir)
}

fn spawn_serve(data_dir: &Path, extra: &[String]) -> Result<Spawned, String> {
    spawn_serve_leaking(data_dir, extra, None)
}

/// Spawns `mar serve`, with `leak` open as descriptor 7 without close-on-exec when given, as a
/// careless service manager or shell would hand it over.
fn spawn_serve_leaking(
    data_dir: &Path,
    extra: &[String],
    leak: Option<&Path>,
) -> Result<Spawned, String> {
    let mut cmd = match leak {
        None => Command::new(mar_bin()),
        Some(file) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("exec 7<\"$0\" && exec \"$@\"")
                .arg(file)
                .arg(mar_bin());
            sh
        }
    };
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("MAR_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let want_https = extra.iter().any(|a| a == "--https-listen");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut http, mut https) = (None, None);
    // Readiness is the line the server prints once its listeners are bound: no sleeping.
    for line in lines.by_ref() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(url) = line.strip_prefix("mar listening on http://") {
            http = Some(
                url.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{url}: {e}"))?,
            );
        } else if let Some(url) = line.strip_prefix("mar listening on https://") {
            https = Some(
                url.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{url}: {e}"))?,
            );
        }
        if let Some(addr) = http
            && (!want_https || https.is_some())
        {
            std::thread::spawn(move || for _ in lines {});
            return Ok((child, addr, https, stderr));
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Err(format!(
        "exited with {status} before listening; stderr: {}",
        stderr.lock().unwrap()
    ))
}

/// A command's result.
#[derive(Debug)]
pub struct CmdOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<std::process::Output> for CmdOutput {
    fn from(o: std::process::Output) -> Self {
        Self {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl CmdOutput {
    /// Asserts that stderr (where git shows `remote:` lines) says each of `expected`.
    pub fn assert_says(&self, expected: &[&str]) {
        for e in expected {
            assert!(
                self.stderr.contains(e),
                "missing {e:?} in:\n{}",
                self.stderr
            );
        }
    }

    /// Exit status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    /// Both streams.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A git work tree used to push, with a hermetic environment: its own HOME, no system or
/// global config, no prompts.
pub struct GitRepo {
    /// The work tree.
    pub dir: PathBuf,
    home: PathBuf,
}

impl GitRepo {
    fn new(dir: PathBuf, home: PathBuf) -> Self {
        std::fs::create_dir_all(&home).unwrap();
        Self { dir, home }
    }

    /// A `git` command in this repository.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(&self.dir)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("GIT_DIR")
            .stdin(Stdio::null());
        c
    }

    /// Runs git and asserts success.
    pub fn git(&self, args: &[&str]) -> CmdOutput {
        let out = CmdOutput::from(self.cmd(args).output().unwrap());
        assert!(out.ok(), "git {args:?}: {}", out.all());
        out
    }

    /// Stages everything and commits.
    pub fn commit(&self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
    }

    /// Writes a file (relative path) into the work tree.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// `git push URL REFSPEC`, returning its output (the `remote:` lines are on stderr).
    pub fn push(&self, url: &str, refspec: &str) -> CmdOutput {
        CmdOutput::from(
            self.cmd(&["push", "--force", url, refspec])
                .output()
                .unwrap(),
        )
    }
}

fn copy_tree(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".git" || name == "node_modules" || name == "__pycache__" {
            continue;
        }
        let (from, to) = (entry.path(), dest.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&from, &to);
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

/// Where the test setup (`scripts/test.sh`) keeps the packages the examples' builds install:
/// `wheels/` for pip, `npm/` an npm cache.
pub const OFFLINE_PACKAGES: &str = "/var/cache/mar-tests";

/// An HTTP response, body read in full.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Resp {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One `GET` on a fresh connection, reporting failures instead of panicking (for load loops).
pub async fn try_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    try_request(addr, "GET", host, path, Bytes::new()).await
}

/// One request on a fresh connection; connection errors are `Err`, not panics.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Steady traffic to one host until stopped: every failure (connection error or a status
/// other than 200) is recorded with what went wrong.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Load {
    /// Sends `GET path` to `host` through `addr` every `every`, one request at a time per worker,
    /// with `workers` workers.
    pub fn start(
        addr: SocketAddr,
        host: &str,
        path: &str,
        every: Duration,
        workers: usize,
    ) -> Self {
        Self::start_with(addr, host, path, every, workers, false)
    }

    /// Like [`Load::start`], but each request is a `POST` (which the router never sends twice)
    /// with a body, to `path?id=W-N`: unique ids, so the app's log can show each was handled
    /// once. The answer must be `done W-N`.
    pub fn start_posts(
        addr: SocketAddr,
        host: &str,
        path: &str,
        every: Duration,
        workers: usize,
    ) -> Self {
        Self::start_with(addr, host, path, every, workers, true)
    }

    fn start_with(
        addr: SocketAddr,
        host: &str,
        path: &str,
        every: Duration,
        workers: usize,
        posts: bool,
    ) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for worker in 0..workers {
            let (stop, host, path) = (stop.clone(), host.to_owned(), path.to_owned());
            tasks.push(tokio::spawn(async move {
                let (mut sent, mut failures) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sent += 1;
                    let id = format!("{worker}-{sent}");
                    let answer = if posts {
                        let sep = if path.contains('?') { '&' } else { '?' };
                        try_request(
                            addr,
                            "POST",
                            &host,
                            &format!("{path}{sep}id={id}"),
                            Bytes::from_static(b"payload"),
                        )
                        .await
                    } else {
                        try_get(addr, &host, &path).await
                    };
                    match answer {
                        Ok((200, body)) if posts && body != format!("done {id}") => {
                            failures.push(format!("{id} answered {body:?}"));
                        }
                        Ok((200, _)) => {}
                        Ok((status, body)) => failures.push(format!(
                            "{status}: {}",
                            body.chars().take(200).collect::<String>()
                        )),
                        Err(e) => failures.push(e),
                    }
                    tokio::time::sleep(every).await;
                }
                (sent, failures)
            }));
        }
        let task = tokio::spawn(async move {
            let (mut sent, mut failures) = (0, Vec::new());
            for t in tasks {
                let (s, f) = t.await.unwrap();
                sent += s;
                failures.extend(f);
            }
            (sent, failures)
        });
        Self { stop, task }
    }

    /// Stops the traffic; returns how many requests were sent and the failures.
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Pids of the processes whose working directory is `dir` or below it: app processes run in
/// their slug under the data directory, which is how a test finds them (their command lines
/// do not name the data directory).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            cwd.starts_with(&dir).then_some(pid)
        })
        .collect()
}

/// Retries `check` until it returns `Some`, for up to `patience`: the one place where the
/// suite polls, for state that changes in the background (a process restarting).
pub async fn eventually<T, F, Fut>(patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of the processes whose `/proc/PID` directory satisfies `pred`.
pub fn pids_where(pred: impl Fn(&Path) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            pred(&e.path()).then_some(pid)
        })
        .collect()
}

/// Processes whose command line is exactly `cmdline` (arguments joined by spaces).
pub fn processes_running(cmdline: &str) -> Vec<u32> {
    pids_where(|p| {
        let raw = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.join(" ") == cmdline
    })
}

/// A push of `repo` to `url` whose build hangs (the `hanging` buildpack), returned once the
/// build runs: the child and the rest of its error output, with what it printed so far.
pub fn start_hanging_push(repo: &GitRepo, url: &str) -> (Child, std::process::ChildStderr, String) {
    let mut push = repo
        .cmd(&["push", "--force", url, "main"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = push.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("Hanging on purpose") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "the push ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (push, stderr, seen)
}

/// A WebSocket to `app`'s `/ws` through the router, upgraded (101).
pub async fn websocket(
    mar: &MarServer,
    app: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", mar.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", format!("{app}.localhost").parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// A JSON call to the platform host through the router, as the old service clients make it
/// (no Content-Type; a null `body` sends none): the status, and the answer as JSON (null when
/// it is not).
pub async fn json_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: serde_json::Value,
) -> Resp {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    http(addr, method, "localhost", path, headers, body).await
}

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` on `host` through the router at `addr`.
pub async fn ws_connect(addr: SocketAddr, host: &str, path: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// The next text frame (pings and pongs skipped), within 5 s.
pub async fn next_text(ws: &mut Ws) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// A fresh temporary directory under [`scratch_root`], searchable by others (apps' users must
/// reach their files under it).
pub fn scratch_dir() -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("mar-e2e-")
        .tempdir_in(scratch_root())
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// Runs `node SCRIPT ARGS…` in `dir` with `env` added, off the async runtime (a driver may
/// run for a minute); its output, once it exited 0 (else the test fails with both streams).
pub async fn run_node(
    dir: &Path,
    script: &str,
    args: Vec<String>,
    env: Vec<(&str, String)>,
) -> CmdOutput {
    let mut cmd = Command::new("node");
    cmd.arg(script).args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let out = CmdOutput::from(out);
    assert!(out.ok(), "{}", out.all());
    out
}

/// The browser drivers' directory (`tests/fixtures/browser`), once playwright-core and Debian's
/// Chromium are there.
pub fn browser_drivers() -> PathBuf {
    let dir = repo_root().join("tests/fixtures/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "no playwright-core in {} or no /usr/bin/chromium: run `bash scripts/test.sh`, which installs them",
        dir.display()
    );
    dir
}
