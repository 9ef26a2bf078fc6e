//! The subject: the real `mar serve` (through the `mar-tests` harness, on port 0 with a
//! temporary data directory) with generated Procfile apps pushed by `git`: one running the
//! same nginx backend as the reference on `$PORT`, one running this bench's WebSocket echo
//! server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mar_tests::{MarServer, mar_bin};

use crate::procfs;

/// The start script of the nginx app: fills in the reference backend configuration (with
/// `daemon off;`, as a supervised process must stay in the foreground) and execs nginx.
const NGINX_START: &str = r#"#!/bin/bash
set -e
P="$HOME/nginx"
mkdir -p "$P"
sed -e "s|@PREFIX@|$P|g" -e "s|@BACKEND@|$PORT|g" -e "s|^daemon on;|daemon off;|" \
  nginx-backend.conf.in > "$P/nginx.conf"
exec nginx -p "$P" -c "$P/nginx.conf" -e "$P/error.log"
"#;

/// A running `mar serve`.
pub struct Mar {
    /// The harness's handle.
    pub server: MarServer,
    /// Its pid.
    pub pid: u32,
}

impl Mar {
    /// Starts `mar serve` (`MAR_BIN`, else `target/debug/mar`) and says which binary it is.
    pub fn start() -> Self {
        Self::start_with(None, &[])
    }

    /// Like [`Mar::start`], with a `mar.yaml` and extra `mar serve` arguments
    /// (`--worker-threads 1`).
    pub fn start_with(mar_yaml: Option<&str>, extra: &[&str]) -> Self {
        check_mar_bin();
        let bin = mar_bin();
        let debug = bin.components().any(|c| c.as_os_str() == "debug");
        println!(
            "mar: {}{}",
            bin.display(),
            if debug {
                "  (a DEBUG build: its CPU figures are not the release router's; build one with \
                 `cargo build --release -p mar` and set MAR_BIN=target/release/mar)"
            } else {
                ""
            }
        );
        let server = MarServer::start_with_args(mar_yaml, extra);
        let pid = server.pid();
        Self { server, pid }
    }

    /// Where the router listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Creates `app` and pushes `files` (path, content) to it; panics if the push fails.
    pub fn deploy(&self, app: &str, files: &[(&str, String)]) {
        self.server.create_app(app);
        let src = self.server.tmp.path().join(format!("src-{app}"));
        std::fs::create_dir_all(&src).unwrap();
        for (path, text) in files {
            let p = src.join(path);
            std::fs::write(&p, text).unwrap();
            if path.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let repo = self.server.repo_from(&src);
        let t = Instant::now();
        let out = repo.push(&self.server.git_url(app), "main");
        assert!(out.ok(), "push of {app} failed:\n{}", out.all());
        println!("mar: pushed {app} in {:.1}s", t.elapsed().as_secs_f64());
    }

    /// The app processes (every descendant of `mar serve`).
    pub fn app_pids(&self) -> Vec<u32> {
        procfs::descendants(self.pid)
    }

    /// Waits until `check` passes (the app answers through the router).
    pub fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} never answered through mar's router");
    }

    /// The last `n` lines of `app`'s log and of the server's stderr.
    pub fn log_tail(&self, app: &str, n: usize) -> String {
        let log = crate::nginx::tail(&self.server.data_dir.join(format!("logs/{app}.log")), n);
        let err = self.server.stderr();
        let err: Vec<&str> = err.lines().collect();
        format!(
            "{log}\n--- mar serve stderr ---\n{}",
            err[err.len().saturating_sub(n)..].join("\n")
        )
    }

    /// Stops the server gracefully.
    pub fn stop(self) {
        let status = self.server.stop();
        if !status.success() {
            eprintln!("mar serve exited with {status}");
        }
    }
}

/// Exits with advice when `mar-tests` would not find a `mar` binary (`MAR_BIN`, else beside
/// this executable): a release build of the bench next to a debug-only `mar`, typically.
pub fn check_mar_bin() {
    if let Some(bin) = std::env::var_os("MAR_BIN") {
        let bin = std::path::PathBuf::from(bin);
        if bin.is_absolute() && bin.is_file() {
            return;
        }
        // The harness runs it from other directories: a relative path would not be found.
        eprintln!(
            "MAR_BIN must be the absolute path of a mar binary, e.g. MAR_BIN=$PWD/{}",
            bin.display()
        );
        std::process::exit(64);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let beside = [Some(dir.join("mar")), dir.parent().map(|p| p.join("mar"))];
    if beside.iter().flatten().any(|p| p.is_file()) {
        return;
    }
    let root = mar_tests::repo_root();
    let found = ["target/release/mar", "target/debug/mar"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file());
    eprintln!(
        "no mar binary beside {}: build one (`cargo build --release -p mar`) or name one with \
         MAR_BIN{}",
        exe.display(),
        found
            .map(|p| format!(", e.g. MAR_BIN={}", p.display()))
            .unwrap_or_default()
    );
    std::process::exit(64);
}

/// The files of the app whose web process is the reference nginx backend.
pub fn nginx_app(backend_conf: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Procfile", "web: bash start.sh\n".to_owned()),
        ("start.sh", NGINX_START.to_owned()),
        ("nginx-backend.conf.in", backend_conf.to_owned()),
    ]
}

/// The files of the app whose web process is this executable's `ws-echo`.
pub fn echo_app() -> Vec<(&'static str, String)> {
    let exe = std::env::current_exe().unwrap();
    vec![("Procfile", format!("web: exec {} ws-echo\n", exe.display()))]
}

/// One blocking HTTP/1.1 GET on a fresh connection: status and body.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(&crate::loadgen::request_bytes(host, path, true))
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let p = crate::loadgen::parse_response(&buf, true).ok()??;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((
        p.status,
        String::from_utf8_lossy(&buf[head_end..p.len]).into_owned(),
    ))
}
