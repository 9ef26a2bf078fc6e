//! Runtime configuration: command-line flags and environment (parsed by the binary) layered
//! over `mar.yaml` in the data directory, over defaults. An unknown key in `mar.yaml` is an
//! error that names the key, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Errors in configuration; the binary exits 64 on these before binding anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `mar.yaml` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `mar.yaml` is malformed or has an unknown key.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `mar.yaml`: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Apps are served at `APP.<domain>`.
    pub domain: Option<String>,
    /// Seconds a web process has to bind `$PORT`.
    pub boot_timeout: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when stopping a process.
    pub stop_timeout: Option<u64>,
    /// Seconds a build may take.
    pub build_timeout: Option<u64>,
    /// How many releases keep their slug for rollbacks.
    pub keep_releases: Option<usize>,
    /// Seconds between the MWS gateways' pings to their clients (1 to 55, under the 60 s
    /// idle rule; default 45).
    pub mws_ping_interval: Option<u64>,
    /// WebSockets one client address may hold open to the MWS gateways (default 1000).
    pub mws_sockets_per_address: Option<usize>,
    /// Where EDS's notification stream listens (plain TCP, as qtenginio connects; default:
    /// the router's address with a port of the system's choosing).
    pub eds_stream_listen: Option<String>,
    /// Address for HTTPS.
    pub https_listen: Option<String>,
    /// Seconds for an app to start its response (H12).
    pub request_timeout: Option<u64>,
    /// Seconds a streamed response may pause.
    pub response_idle_timeout: Option<u64>,
    /// Seconds a request waits for a booting web process before H20 (0: H20 at once).
    pub boot_wait: Option<u64>,
    /// Seconds a client has to send its request head.
    pub header_read_timeout: Option<u64>,
    /// Largest request head, like `64K`.
    pub max_header_size: Option<String>,
    /// Largest request body, like `100M` (apps may set MAR_MAX_BODY_SIZE).
    pub max_body_size: Option<String>,
    /// Seconds without a WebSocket frame before the router closes it (apps may set
    /// MAR_WEBSOCKET_IDLE_TIMEOUT).
    pub websocket_idle_timeout: Option<u64>,
    /// TLS certificates per domain; without any, a self-signed one is made.
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Whether the router writes an access log line per request (default true; nginx's
    /// `access_log off` for very busy apps; metrics are kept either way).
    pub access_log: Option<bool>,
    /// Threads serving requests, each with its own listener and event loop (nginx's
    /// `worker_processes`); `auto` for one per core.
    pub router_threads: Option<RouterThreadsText>,
    /// Most client connections open at once (default: what the open-files limit allows).
    pub max_connections: Option<usize>,
    /// Largest push, like `512M`: the pack git receives, and the source tree unpacked.
    pub max_source_size: Option<String>,
    /// Most client connections from one address (default: a quarter of `max_connections`).
    pub max_connections_per_client: Option<usize>,
    /// Directories of Python interpreters (`python3.N`) the Python buildpack chooses from
    /// beside those on the system's PATH (as pyenv's or uv's installs).
    #[serde(default)]
    pub python_interpreters: Vec<PathBuf>,
}

/// `router_threads` as written in `mar.yaml`: a number, or a word (`auto`, or a number in
/// quotes); checked by [`RouterThreads::parse`].
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouterThreadsText {
    /// A bare number.
    Number(i64),
    /// Anything else.
    Word(String),
}

/// How many router threads: a count, or one per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterThreads {
    /// This many (1 to 256).
    Count(u16),
    /// `auto`: one per core.
    Auto,
}

impl RouterThreads {
    /// Parses a count from 1 to 256, or `auto`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "auto" => Some(Self::Auto),
            n => n
                .parse()
                .ok()
                .filter(|n| (1..=256).contains(n))
                .map(Self::Count),
        }
    }

    /// The number of threads.
    pub fn count(self) -> usize {
        match self {
            Self::Count(n) => usize::from(n),
            Self::Auto => std::thread::available_parallelism().map_or(1, |n| n.get().min(256)),
        }
    }
}

/// A certificate and key (PEM files) for some host names, picked by SNI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// Host names it serves (`example.com`, `*.example.com`).
    pub domains: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Settings given on the command line or in the environment; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--domain`.
    pub domain: Option<String>,
    /// `--https-listen`.
    pub https_listen: Option<String>,
    /// `--router-threads`.
    pub router_threads: Option<String>,
}

/// The runtime's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory (`MAR_HOME`).
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Apps are served at `APP.<domain>`.
    pub domain: String,
    /// Time a web process has to bind `$PORT`.
    pub boot_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Time a build may take.
    pub build_timeout: Duration,
    /// How many releases keep their slug for rollbacks.
    pub keep_releases: usize,
    /// Time between the MWS gateways' pings to their clients.
    pub mws_ping_interval: Duration,
    /// WebSockets one client address may hold open to the MWS gateways.
    pub mws_sockets_per_address: usize,
    /// EDS's notification stream address, if set.
    pub eds_stream_listen: Option<SocketAddr>,
    /// HTTPS listen address, if any.
    pub https_listen: Option<SocketAddr>,
    /// Certificates from `mar.yaml`.
    pub tls_certificates: Vec<TlsCertificate>,
    /// Router timeouts.
    pub timeouts: mar_router::Timeouts,
    /// Listener limits.
    pub server_limits: mar_router::ServerLimits,
    /// Router defaults for every app.
    pub router: mar_router::AppOptions,
    /// Whether the router writes access log lines.
    pub access_log: bool,
    /// Threads serving requests (1 by default).
    pub router_threads: usize,
    /// `max_connections`, when set.
    pub max_connections: Option<usize>,
    /// Largest push (pack and unpacked tree), in bytes.
    pub max_source_size: u64,
    /// `max_connections_per_client`, when set.
    pub max_connections_per_client: Option<usize>,
    /// Environment every buildpack script gets from the platform (`MAR_PYTHON_INTERPRETERS`
    /// from `python_interpreters`); an app's config var of the same name wins in the
    /// buildpacks that read config vars.
    pub build_env: std::collections::BTreeMap<String, String>,
    /// The `mar` executable, run as the git pre-receive hook.
    pub mar_exe: PathBuf,
}

impl Config {
    /// Loads `mar.yaml` from `data_dir` (if present) and applies `overrides` on top.
    pub fn load(
        data_dir: &Path,
        overrides: &Overrides,
        mar_exe: PathBuf,
    ) -> Result<Self, ConfigError> {
        let path = data_dir.join("mar.yaml");
        let file: FileConfig = match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => FileConfig::default(),
            Ok(text) => serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileConfig::default(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let listen_text = overrides
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen_text.parse().map_err(|_| ConfigError::Invalid {
            path: path.clone(),
            message: format!("listen: {listen_text:?} is not an address like 127.0.0.1:8080"),
        })?;
        let domain = overrides
            .domain
            .clone()
            .or(file.domain)
            .unwrap_or_else(|| "localhost".to_owned())
            .to_ascii_lowercase();
        if domain.is_empty() || domain.contains(['/', ':', ' ']) {
            return Err(ConfigError::Invalid {
                path,
                message: format!("domain: {domain:?} is not a host name"),
            });
        }
        let https_listen = match overrides.https_listen.clone().or(file.https_listen) {
            Some(text) => Some(text.parse().map_err(|_| ConfigError::Invalid {
                path: path.clone(),
                message: format!("https_listen: {text:?} is not an address like 127.0.0.1:8443"),
            })?),
            None => None,
        };
        let size = |key: &str, v: Option<String>, default: u64| -> Result<u64, ConfigError> {
            match v {
                None => Ok(default),
                Some(v) => crate::settings::parse_size(&v).ok_or_else(|| ConfigError::Invalid {
                    path: path.clone(),
                    message: format!("{key}: {v:?} is not a size like 64K or 10M"),
                }),
            }
        };
        let mut timeouts = mar_router::Timeouts::default();
        if let Some(s) = file.request_timeout {
            timeouts.first_byte = Duration::from_secs(s.max(1));
        }
        if let Some(s) = file.response_idle_timeout {
            timeouts.response_idle = Duration::from_secs(s.max(1));
        }
        if let Some(s) = file.boot_wait {
            // An hour at most: past it a client has long gone.
            timeouts.boot_wait = Duration::from_secs(s.min(3600));
        }
        let mut server_limits = mar_router::ServerLimits::default();
        if let Some(s) = file.header_read_timeout {
            server_limits.header_read_timeout = Duration::from_secs(s.max(1));
        }
        server_limits.max_header_bytes =
            size("max_header_size", file.max_header_size, 64 << 10)? as usize;
        let mut router = mar_router::AppOptions::default();
        router.max_body = size("max_body_size", file.max_body_size, router.max_body)?;
        if let Some(s) = file.websocket_idle_timeout {
            router.ws.idle_timeout = Duration::from_secs(s.max(1));
        }
        let (text, from) = match (&overrides.router_threads, file.router_threads) {
            (Some(t), _) => (t.clone(), "--router-threads (or MAR_ROUTER_THREADS)"),
            (None, Some(RouterThreadsText::Number(n))) => (n.to_string(), "router_threads"),
            (None, Some(RouterThreadsText::Word(w))) => (w, "router_threads"),
            (None, None) => ("1".to_owned(), "router_threads"),
        };
        let router_threads = RouterThreads::parse(&text)
            .ok_or_else(|| ConfigError::Invalid {
                path: path.clone(),
                message: format!("{from}: {text:?} is not a count from 1 to 256 or `auto`"),
            })?
            .count();
        let mut build_env = std::collections::BTreeMap::new();
        if !file.python_interpreters.is_empty() {
            let mut dirs = Vec::new();
            for dir in &file.python_interpreters {
                let text = dir
                    .to_str()
                    .filter(|t| !t.contains(':') && dir.is_absolute());
                let Some(text) = text else {
                    return Err(ConfigError::Invalid {
                        path: path.clone(),
                        message: format!(
                            "python_interpreters: {} is not an absolute path without ':'",
                            dir.display()
                        ),
                    });
                };
                dirs.push(text.to_owned());
            }
            build_env.insert("MAR_PYTHON_INTERPRETERS".to_owned(), dirs.join(":"));
        }
        Ok(Self {
            data_dir: data_dir.to_owned(),
            listen,
            domain,
            build_env,
            boot_timeout: Duration::from_secs(file.boot_timeout.unwrap_or(60)),
            stop_timeout: Duration::from_secs(file.stop_timeout.unwrap_or(30)),
            build_timeout: Duration::from_secs(file.build_timeout.unwrap_or(15 * 60)),
            keep_releases: file.keep_releases.unwrap_or(10).max(1),
            mws_ping_interval: match file.mws_ping_interval {
                None => Duration::from_secs(45),
                Some(s @ 1..=55) => Duration::from_secs(s),
                Some(s) => {
                    return Err(ConfigError::Invalid {
                        path: path.clone(),
                        message: format!(
                            "mws_ping_interval: {s} is not a number of seconds from 1 to 55 (the gateways must ping under the 60 s idle rule)"
                        ),
                    });
                }
            },
            eds_stream_listen: match &file.eds_stream_listen {
                None => None,
                Some(a) => Some(a.parse().map_err(|_| ConfigError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "eds_stream_listen: {a:?} is not an address like 127.0.0.1:8081"
                    ),
                })?),
            },
            mws_sockets_per_address: file
                .mws_sockets_per_address
                .unwrap_or(mar_mws::MAX_PER_ADDRESS)
                .max(1),
            https_listen,
            tls_certificates: file.tls_certificates,
            timeouts,
            server_limits,
            router,
            access_log: file.access_log.unwrap_or(true),
            router_threads,
            max_connections: file.max_connections,
            max_source_size: size("max_source_size", file.max_source_size, 512 << 20)?,
            max_connections_per_client: file.max_connections_per_client,
            mar_exe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration reference names every `mar.yaml` key: serde's refusal of an unknown
    /// key lists them all, so a key added to [`FileConfig`] without a line in
    /// `docs/configuration.md` fails here.
    #[test]
    fn the_configuration_reference_names_every_key() {
        let err = serde_yaml::from_str::<FileConfig>("no_such_key: 1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let keys: Vec<&str> = err
            .split_once("expected one of")
            .map(|(_, list)| list)
            .unwrap_or_default()
            .split(',')
            .map(|k| {
                k.trim()
                    .trim_matches(|c: char| c == '`' || c.is_whitespace())
            })
            .map(|k| k.split_whitespace().next().unwrap_or(k).trim_matches('`'))
            .filter(|k| !k.is_empty())
            .collect();
        assert!(keys.len() > 15, "could not read the keys from {err:?}");
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
        )
        .unwrap_or_default();
        let missing: Vec<&&str> = keys
            .iter()
            .filter(|k| !doc.contains(&format!("`{k}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md does not name {missing:?}"
        );
    }

    #[test]
    fn the_gateways_ping_under_the_idle_rule() {
        let d = tempfile::tempdir().unwrap();
        let load = |yaml: &str| {
            std::fs::write(d.path().join("mar.yaml"), yaml).unwrap();
            Config::load(d.path(), &Overrides::default(), "mar".into()).map(|c| c.mws_ping_interval)
        };
        assert_eq!(load("").unwrap(), Duration::from_secs(45));
        assert_eq!(
            load("mws_ping_interval: 5\n").unwrap(),
            Duration::from_secs(5)
        );
        for bad in ["mws_ping_interval: 0\n", "mws_ping_interval: 60\n"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("60 s idle rule"), "{bad}: {e}");
        }
    }

    #[test]
    fn router_threads_are_a_count_or_auto() {
        let d = tempfile::tempdir().unwrap();
        let load = |yaml: &str, flag: Option<&str>| {
            std::fs::write(d.path().join("mar.yaml"), yaml).unwrap();
            let o = Overrides {
                router_threads: flag.map(str::to_owned),
                ..Overrides::default()
            };
            Config::load(d.path(), &o, "mar".into()).map(|c| c.router_threads)
        };
        assert_eq!(load("", None).unwrap(), 1);
        assert_eq!(load("router_threads: 3\n", None).unwrap(), 3);
        assert_eq!(load("router_threads: 3\n", Some("2")).unwrap(), 2);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(load("router_threads: auto\n", None).unwrap(), cores);
        assert_eq!(load("", Some("auto")).unwrap(), cores);
        assert_eq!(load("router_threads: \"2\"\n", None).unwrap(), 2);
        for bad in [
            "router_threads: 0\n",
            "router_threads: many\n",
            "router_threads: 70000\n",
            "router_threads: -1\n",
        ] {
            assert!(load(bad, None).is_err(), "{bad}");
        }
        let err = load("", Some("0")).unwrap_err().to_string();
        assert!(err.contains("--router-threads"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("mar.yaml"),
            "listen: 127.0.0.1:0\nlisten_port: 9\n",
        )
        .unwrap();
        let err = Config::load(d.path(), &Overrides::default(), "mar".into()).unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn flags_win_over_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("mar.yaml"),
            "listen: 127.0.0.1:7000\ndomain: example.test\nboot_timeout: 5\n",
        )
        .unwrap();
        let c = Config::load(
            d.path(),
            &Overrides {
                listen: Some("127.0.0.1:0".into()),
                ..Default::default()
            },
            "mar".into(),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.domain, "example.test");
        assert_eq!(c.boot_timeout, Duration::from_secs(5));
    }
}
