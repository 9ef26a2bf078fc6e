//! The reference of `eds-crud`: Parse Server, the open-source Backend-as-a-Service closest to
//! Enginio, from the npm registry (the version pinned by `reference/parse/package.json` and
//! its `package-lock.json`, installed with `npm ci` into a cache folder outside the repo), on
//! PostgreSQL from Debian in a private cluster: `initdb` in a temporary folder, run as the
//! `postgres` user when the bench is root (PostgreSQL refuses root), on a free port of
//! 127.0.0.1, with the durability of a default installation said out loud (`fsync=on`,
//! `synchronous_commit=on`, `full_page_writes=on`), like EDS's `synchronous=FULL`. Both are
//! stopped when the guard drops (also on panic).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

/// The install folder unless `MAR_BENCH_PARSE_DIR` names another.
pub const DEFAULT_DIR: &str = "/var/cache/mar-bench/parse";

/// The line `server.js` prints once it serves.
const READY: &str = "parse listening on ";

/// The reference's files in the repo (package.json, package-lock.json, server.js).
pub fn reference_dir() -> PathBuf {
    mar_tests::repo_root().join("tests/bench/reference/parse")
}

/// Where Parse Server is installed.
pub fn install_dir() -> PathBuf {
    std::env::var_os("MAR_BENCH_PARSE_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

/// The pinned parse-server version (from the reference's package.json).
pub fn pinned_version() -> String {
    let text = std::fs::read_to_string(reference_dir().join("package.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["dependencies"]["parse-server"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn installed_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules/parse-server/package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_owned)
}

/// Checks for Node.js and PostgreSQL and installs the pinned Parse Server (`npm ci` in the
/// install folder) when it is not there yet; returns its version and PostgreSQL's bin folder.
pub fn ensure_installed() -> (String, PathBuf) {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "no `node` on the PATH: the Parse reference needs Node.js (`apt-get install -y nodejs \
             npm`), or leave it out with --targets mar,sqlite"
        );
        std::process::exit(64);
    }
    let pg = pg_bin().unwrap_or_else(|| {
        println!("PostgreSQL is missing: apt-get install -y postgresql");
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "postgresql"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("apt-get").arg("update").status();
            assert!(install(), "apt-get install postgresql failed");
        }
        pg_bin().expect("no initdb after installing postgresql")
    });
    let dir = install_dir();
    let want = pinned_version();
    if installed_version(&dir).as_deref() != Some(want.as_str()) {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create {} ({e}): name a writable folder with MAR_BENCH_PARSE_DIR",
                dir.display()
            )
        });
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(reference_dir().join(f), dir.join(f)).unwrap();
        }
        println!("parse-server {want}: npm ci in {}", dir.display());
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "-q"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm ci failed in {}", dir.display());
    }
    (want, pg)
}

/// PostgreSQL's bin folder: `PG_BIN`, else the newest `/usr/lib/postgresql/N/bin` with
/// `initdb` (Debian's layout).
pub fn pg_bin() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(b));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A PostgreSQL command, as the `postgres` user when we are root.
fn pg_cmd(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        // Where the postgres user may stand (it cannot read the working tree's folders).
        c.current_dir("/");
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private PostgreSQL cluster.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The postmaster's pid.
    pub pid: u32,
    /// `postgres --version`.
    pub version: String,
}

impl Postgres {
    /// `initdb` in `dir/pgdata`, then starts it on a free port with a database `parse`.
    pub fn start(bin: &Path, dir: &Path) -> Self {
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).unwrap();
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data));
        }
        run(pg_cmd(bin, "initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]));
        let port = crate::nginx::free_port();
        // Durability as EDS's synchronous=FULL: every acknowledged commit is on disk (these
        // are PostgreSQL's defaults, written out so that nobody has to trust that).
        let conf = format!(
            "\n# eds-crud\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nfsync = on\nsynchronous_commit = on\n\
             full_page_writes = on\nlogging_collector = off\n",
            data.display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        run(pg_cmd(bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(data.join("server.log"))
            .args(["-w", "-t", "60", "start"]));
        let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("no pid in postmaster.pid");
        let version = run(Command::new(bin.join("postgres")).arg("--version"))
            .trim()
            .to_owned();
        let pg = Self {
            bin: bin.to_owned(),
            data,
            port,
            pid,
            version,
        };
        pg.psql("CREATE DATABASE parse");
        pg
    }

    /// Runs one SQL statement in database `parse` (or `postgres` for CREATE DATABASE); its
    /// output, unaligned.
    pub fn psql(&self, sql: &str) -> String {
        let db = if sql.starts_with("CREATE DATABASE") {
            "postgres"
        } else {
            "parse"
        };
        run(pg_cmd(&self.bin, "psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-At", "-d", db])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql))
    }

    /// The URI Parse Server connects with.
    pub fn uri(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/parse", self.port)
    }

    /// The postmaster and every process under it (backends, WAL writer, checkpointer, ...).
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.pid];
        v.extend(procfs::descendants(self.pid));
        v
    }

    /// `SHOW name`.
    pub fn setting(&self, name: &str) -> String {
        self.psql(&format!("SHOW {name}")).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_cmd(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A running Parse Server (`node server.js` in the install folder).
pub struct ParseServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ParseServer {
    /// Starts it against `database_uri` with this app id and master key, logs in `logs`.
    pub fn start(database_uri: &str, app_id: &str, master_key: &str, logs: &Path) -> Self {
        let dir = install_dir();
        std::fs::copy(reference_dir().join("server.js"), dir.join("server.js")).unwrap();
        let port = crate::nginx::free_port();
        let mut child = Command::new("node")
            .arg("server.js")
            .args(["--port", &port.to_string(), "--database", database_uri])
            .args(["--app-id", app_id, "--master-key", master_key])
            .arg("--logs")
            .arg(logs)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(a) = line.trim().strip_prefix(READY) {
                let addr = a.parse().unwrap();
                // Keep reading its stdout so that it never blocks on a full pipe.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while out.read_line(&mut sink).unwrap_or(0) > 0 {
                        sink.clear();
                    }
                });
                return Self { child, addr };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "parse-server did not start (last line {line:?}); see its logs in {}",
            logs.display()
        );
    }

    /// The node process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ParseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
