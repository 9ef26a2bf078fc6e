//! The nginx reference: Debian's nginx started by the bench in private prefixes under a
//! temporary directory (`nginx -p PREFIX -c PREFIX/nginx.conf`) with the reference
//! configurations of `shared/reference` (copied to `tests/bench/nginx/`), on ports picked by
//! binding 127.0.0.1:0, and stopped with `-s quit` when the guard drops (also on panic).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procfs;

/// `return 200 "hello"`, one worker.
pub const BACKEND_CONF: &str = include_str!("../nginx/nginx-backend.conf");
/// Reverse proxy with an upstream keepalive pool of 64, one worker, WebSocket on `/ws`.
pub const PROXY_CONF: &str = include_str!("../nginx/nginx-proxy.conf");

/// Installs nginx (and wrk) with apt-get if `nginx` is missing.
pub fn ensure_installed() {
    if Command::new("nginx").arg("-v").output().is_ok() {
        return;
    }
    println!("nginx is missing: apt-get install -y nginx wrk");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "nginx", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        assert!(install(), "apt-get install nginx failed");
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A running private nginx.
pub struct Nginx {
    /// `backend` or `proxy`, for messages.
    pub name: String,
    /// The prefix folder.
    pub prefix: PathBuf,
    /// The port it listens on.
    pub port: u16,
    /// The master's pid.
    pub master: u32,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts `template` with `@PREFIX@` and `listen_key` (`@BACKEND@` in the backend's
    /// configuration, `@LISTEN@` in the proxy's) filled in, plus the other `subst` pairs.
    /// Retries with another port when the picked one was taken meanwhile.
    pub fn start(name: &str, template: &str, listen_key: &str, subst: &[(&str, String)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mar-bench-nginx-{name}-"))
            .tempdir()
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let prefix = dir.path().to_owned();
        let conf = prefix.join("nginx.conf");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut text = template
                .replace("@PREFIX@", &prefix.display().to_string())
                .replace(listen_key, &port.to_string());
            for (k, v) in subst {
                text = text.replace(k, v);
            }
            std::fs::write(&conf, text).unwrap();
            let out = nginx_cmd(&prefix, &conf, &[]).output().unwrap();
            if out.status.success() {
                let master = wait_master(&prefix);
                let me = Self {
                    name: name.to_owned(),
                    prefix,
                    port,
                    master,
                    _dir: dir,
                };
                me.wait_ready();
                return me;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if !last.contains("in use") {
                break;
            }
        }
        panic!("nginx {name} did not start: {last}");
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.workers().is_empty()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx {} is not accepting on {}", self.name, self.port);
    }

    /// The last `n` lines of its error log.
    pub fn error_log_tail(&self, n: usize) -> String {
        tail(&self.prefix.join("error.log"), n)
    }

    /// The worker processes.
    pub fn workers(&self) -> Vec<u32> {
        procfs::children(self.master)
    }

    /// Master and workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.master];
        v.extend(self.workers());
        v
    }
}

/// The last `n` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn nginx_cmd(prefix: &Path, conf: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("nginx");
    c.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .args(extra);
    c
}

fn wait_master(prefix: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(pid) = std::fs::read_to_string(prefix.join("nginx.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no nginx.pid in {}", prefix.display());
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let conf = self.prefix.join("nginx.conf");
        let _ = nginx_cmd(&self.prefix, &conf, &["-s", "quit"]).output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while procfs::alive(self.master) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if procfs::alive(self.master) {
            use nix::sys::signal::{Signal, kill};
            use nix::unistd::Pid;
            let pid = Pid::from_raw(self.master as i32);
            let _ = kill(pid, Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(500));
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}
