//! Per-app platform settings, kept as `MAR_*` config vars (as Dokku keeps `DOKKU_*` ones), so
//! that changing one makes a release and restarts the app with it, like any config change.
//! Parsing is pure and checked at `config:set`, so a bad value never reaches a deploy.

use std::collections::BTreeMap;
use std::time::Duration;

use mar_supervisor::Limits;

/// Seconds a web process has to accept connections on `$PORT`.
pub const BOOT_TIMEOUT: &str = "MAR_BOOT_TIMEOUT";
/// Seconds between SIGTERM and SIGKILL.
pub const STOP_TIMEOUT: &str = "MAR_STOP_TIMEOUT";
/// Longest wait, in seconds, for requests in flight to an old instance before it is stopped.
pub const WAIT_TO_RETIRE: &str = "MAR_WAIT_TO_RETIRE";
/// Memory per instance: `512M`, `1G`.
pub const MEMORY_LIMIT: &str = "MAR_MEMORY_LIMIT";
/// Processes and threads per instance.
pub const PIDS_LIMIT: &str = "MAR_PIDS_LIMIT";
/// Open files per process.
pub const NOFILE_LIMIT: &str = "MAR_NOFILE_LIMIT";
/// What an instance may write to its (ephemeral) home: `512M`, `2G`.
pub const DISK_LIMIT: &str = "MAR_DISK_LIMIT";
/// CPU per instance, in cores: `0.5`, `2`, `500m`.
pub const CPU_LIMIT: &str = "MAR_CPU_LIMIT";
/// The config vars `mar ps:resize` sets.
pub const LIMIT_VARS: [&str; 5] = [
    MEMORY_LIMIT,
    CPU_LIMIT,
    PIDS_LIMIT,
    NOFILE_LIMIT,
    DISK_LIMIT,
];
/// The CPU an instance gets unless its app says otherwise, in thousandths of a core: one
/// core, so that one busy app cannot take a whole machine from the platform and the others.
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
/// Seconds without a WebSocket frame after which the router closes the connection.
pub const WS_IDLE_TIMEOUT: &str = "MAR_WEBSOCKET_IDLE_TIMEOUT";
/// `router` makes the router ping WebSocket clients itself; `app` (default) leaves it to the app.
pub const WS_KEEPALIVE: &str = "MAR_WEBSOCKET_KEEPALIVE";
/// Largest WebSocket message (all fragments).
pub const WS_MAX_MESSAGE: &str = "MAR_WEBSOCKET_MAX_MESSAGE";
/// Largest request body.
pub const MAX_BODY_SIZE: &str = "MAR_MAX_BODY_SIZE";
/// WASM apps: seconds one request may run in the guest before it is stopped (503, H12).
pub const WASM_TIMEOUT: &str = "MAR_WASM_TIMEOUT";
/// WASM apps: linear memory per instance, summed over its memories: `128M`.
pub const WASM_MEMORY: &str = "MAR_WASM_MEMORY";
/// WASM apps: requests running in guests at once; more wait for a slot.
pub const WASM_CONCURRENCY: &str = "MAR_WASM_CONCURRENCY";
/// WASM apps: `true` keeps a wasi:http instance for the next request instead of a fresh one.
pub const WASM_INSTANCE_REUSE: &str = "MAR_WASM_INSTANCE_REUSE";
/// The most memory a WASM app may ask for per instance (the engine's ceiling).
pub const WASM_MAX_MEMORY: u64 = 1 << 30;

/// The settings in force for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// See [`BOOT_TIMEOUT`].
    pub boot_timeout: Duration,
    /// See [`STOP_TIMEOUT`].
    pub stop_timeout: Duration,
    /// See [`WAIT_TO_RETIRE`].
    pub wait_to_retire: Duration,
    /// Memory, processes, open files and CPU per instance.
    pub limits: Limits,
    /// What an instance may write to its home, in bytes.
    pub disk_bytes: u64,
    /// What the router enforces for this app.
    pub router: mar_router::AppOptions,
    /// What a WASM app's guests may use.
    pub wasm: mar_wasm::Limits,
}

/// Defaults that apply where an app sets nothing.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Boot timeout.
    pub boot_timeout: Duration,
    /// Stop grace period.
    pub stop_timeout: Duration,
    /// Router settings from `mar.yaml`.
    pub router: mar_router::AppOptions,
}

/// Parses `512M`, `1G`, `1048576` (bytes) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(mult))
}

/// Parses a CPU amount in cores (`0.5`, `2`, `1.25`) or thousandths of a core (`500m`) into
/// thousandths of a core, from 10m (a hundredth of a core) to 1024 cores.
pub fn parse_cpu(s: &str) -> Option<u64> {
    let s = s.trim();
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().ok()?
    } else {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let frac: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse().ok()?
        };
        whole.checked_mul(1000)?.checked_add(frac)?
    };
    (10..=1024 * 1000).contains(&millis).then_some(millis)
}

fn seconds(name: &str, v: &str, max: u64) -> Result<Duration, String> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            format!("{name} must be a whole number of seconds from 0 to {max}, not {v:?}")
        })
}

fn count(name: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{name} must be a whole number from {min} to {max}, not {v:?}"))
}

/// Checks one config var that is a setting; other names pass.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    match name {
        BOOT_TIMEOUT => seconds(name, value, 3600).map(drop),
        STOP_TIMEOUT => seconds(name, value, 3600).map(drop),
        WAIT_TO_RETIRE => seconds(name, value, 3600).map(drop),
        MEMORY_LIMIT => match parse_size(value) {
            Some(b) if b >= 16 << 20 => Ok(()),
            _ => Err(format!(
                "{name} must be a size of at least 16M, like 512M or 1G, not {value:?}"
            )),
        },
        PIDS_LIMIT => count(name, value, 8, 1 << 20).map(drop),
        WS_IDLE_TIMEOUT => match seconds(name, value, 86_400) {
            Ok(d) if d.as_secs() >= 1 => Ok(()),
            _ => Err(format!(
                "{name} must be a whole number of seconds from 1 to 86400, not {value:?}"
            )),
        },
        WS_KEEPALIVE => match value {
            "router" | "app" => Ok(()),
            _ => Err(format!(
                "{name} must be `router` (the router pings clients) or `app`, not {value:?}"
            )),
        },
        WS_MAX_MESSAGE | MAX_BODY_SIZE => parse_size(value)
            .map(drop)
            .ok_or_else(|| format!("{name} must be a size like 10M, not {value:?}")),
        NOFILE_LIMIT => count(name, value, 64, 1 << 20).map(drop),
        DISK_LIMIT => match parse_size(value) {
            Some(b) if b >= 16 << 20 => Ok(()),
            _ => Err(format!(
                "{name} must be a size of at least 16M, like 512M or 2G, not {value:?}"
            )),
        },
        WASM_TIMEOUT => match seconds(name, value, 3600) {
            Ok(d) if d.as_secs() >= 1 => Ok(()),
            _ => Err(format!(
                "{name} must be a whole number of seconds from 1 to 3600, not {value:?}"
            )),
        },
        WASM_MEMORY => match parse_size(value) {
            Some(b) if (1 << 20..=WASM_MAX_MEMORY).contains(&b) => Ok(()),
            _ => Err(format!(
                "{name} must be a size from 1M to 1G, like 128M, not {value:?}"
            )),
        },
        WASM_CONCURRENCY => count(name, value, 1, 1024).map(drop),
        WASM_INSTANCE_REUSE => match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("{name} must be true or false, not {value:?}")),
        },
        CPU_LIMIT => parse_cpu(value).map(drop).ok_or_else(|| {
            format!("{name} must be an amount of CPU from 0.01 to 1024 cores, like 0.5, 2 or 500m, not {value:?}")
        }),
        _ => Ok(()),
    }
}

impl AppSettings {
    /// The settings from an app's config vars over the defaults. Values were validated when
    /// set; one that does not parse (edited by hand) falls back to the default.
    pub fn from_config(config: &BTreeMap<String, String>, defaults: &Defaults) -> Self {
        let get = |k: &str| config.get(k).map(String::as_str);
        Self {
            boot_timeout: get(BOOT_TIMEOUT)
                .and_then(|v| seconds(BOOT_TIMEOUT, v, 3600).ok())
                .unwrap_or(defaults.boot_timeout),
            stop_timeout: get(STOP_TIMEOUT)
                .and_then(|v| seconds(STOP_TIMEOUT, v, 3600).ok())
                .unwrap_or(defaults.stop_timeout),
            wait_to_retire: get(WAIT_TO_RETIRE)
                .and_then(|v| seconds(WAIT_TO_RETIRE, v, 3600).ok())
                .unwrap_or(Duration::from_secs(30)),
            limits: Limits {
                memory_bytes: Some(get(MEMORY_LIMIT).and_then(parse_size).unwrap_or(512 << 20)),
                pids: Some(
                    get(PIDS_LIMIT)
                        .and_then(|v| count(PIDS_LIMIT, v, 8, 1 << 20).ok())
                        .unwrap_or(512),
                ),
                nofile: Some(
                    get(NOFILE_LIMIT)
                        .and_then(|v| count(NOFILE_LIMIT, v, 64, 1 << 20).ok())
                        .unwrap_or(10_000),
                ),
                cpu_millis: Some(
                    get(CPU_LIMIT)
                        .and_then(parse_cpu)
                        .unwrap_or(DEFAULT_CPU_MILLIS),
                ),
            },
            disk_bytes: get(DISK_LIMIT)
                .and_then(parse_size)
                .filter(|b| *b >= 16 << 20)
                .unwrap_or(512 << 20),
            router: {
                let mut r = defaults.router.clone();
                if let Some(d) = get(WS_IDLE_TIMEOUT)
                    .and_then(|v| seconds(WS_IDLE_TIMEOUT, v, 86_400).ok())
                    .filter(|d| !d.is_zero())
                {
                    r.ws.idle_timeout = d;
                }
                if let Some(k) = get(WS_KEEPALIVE) {
                    r.ws.keepalive = k == "router";
                }
                if let Some(m) = get(WS_MAX_MESSAGE).and_then(parse_size) {
                    r.ws.max_message = m;
                    r.ws.max_frame = r.ws.max_frame.min(m);
                }
                if let Some(b) = get(MAX_BODY_SIZE).and_then(parse_size) {
                    r.max_body = b;
                }
                r
            },
            wasm: {
                let d = mar_wasm::Limits::default();
                mar_wasm::Limits {
                    timeout: get(WASM_TIMEOUT)
                        .and_then(|v| seconds(WASM_TIMEOUT, v, 3600).ok())
                        .filter(|d| !d.is_zero())
                        .unwrap_or(d.timeout),
                    memory: get(WASM_MEMORY)
                        .and_then(parse_size)
                        .filter(|b| (1 << 20..=WASM_MAX_MEMORY).contains(b))
                        .and_then(|b| usize::try_from(b).ok())
                        .unwrap_or(d.memory),
                    concurrency: get(WASM_CONCURRENCY)
                        .and_then(|v| count(WASM_CONCURRENCY, v, 1, 1024).ok())
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(d.concurrency),
                    reuse: get(WASM_INSTANCE_REUSE).map_or(d.reuse, |v| v == "true"),
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu("0.5"), Some(500));
        assert_eq!(parse_cpu("2"), Some(2000));
        assert_eq!(parse_cpu("1.25"), Some(1250));
        assert_eq!(parse_cpu(".1"), Some(100));
        assert_eq!(parse_cpu("500m"), Some(500));
        for bad in [
            "", "0", "0.001", "5m", "-1", "1.2345", "1,5", "x", "2000", "1.5m",
        ] {
            assert_eq!(parse_cpu(bad), None, "{bad}");
        }
        assert!(validate(CPU_LIMIT, "0.5").is_ok());
        assert!(
            validate(CPU_LIMIT, "lots")
                .unwrap_err()
                .contains("like 0.5, 2 or 500m")
        );
        let s = AppSettings::from_config(
            &BTreeMap::new(),
            &Defaults {
                boot_timeout: Duration::from_secs(60),
                stop_timeout: Duration::from_secs(30),
                router: mar_router::AppOptions::default(),
            },
        );
        assert_eq!(s.limits.cpu_millis, Some(DEFAULT_CPU_MILLIS));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["", "M", "-1M", "1.5G", "0", "lots"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_names_the_setting() {
        assert!(validate(MEMORY_LIMIT, "256M").is_ok());
        assert!(
            validate(MEMORY_LIMIT, "1M")
                .unwrap_err()
                .contains("at least 16M")
        );
        assert!(
            validate(BOOT_TIMEOUT, "soon")
                .unwrap_err()
                .contains("MAR_BOOT_TIMEOUT")
        );
        assert!(validate(PIDS_LIMIT, "2").is_err());
        assert!(validate("GREETING", "anything").is_ok());
    }

    #[test]
    fn wasm_limits() {
        let defaults = Defaults {
            boot_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            router: mar_router::AppOptions::default(),
        };
        let d = AppSettings::from_config(&BTreeMap::new(), &defaults).wasm;
        assert_eq!(d, mar_wasm::Limits::default());
        let mut config = BTreeMap::new();
        for (k, v) in [
            (WASM_TIMEOUT, "2"),
            (WASM_MEMORY, "64M"),
            (WASM_CONCURRENCY, "3"),
            (WASM_INSTANCE_REUSE, "true"),
        ] {
            assert!(validate(k, v).is_ok(), "{k}={v}");
            config.insert(k.to_owned(), v.to_owned());
        }
        let w = AppSettings::from_config(&config, &defaults).wasm;
        assert_eq!(w.timeout, Duration::from_secs(2));
        assert_eq!(w.memory, 64 << 20);
        assert_eq!(w.concurrency, 3);
        assert!(w.reuse);
        for (k, v) in [
            (WASM_TIMEOUT, "0"),
            (WASM_MEMORY, "2G"),
            (WASM_MEMORY, "512K"),
            (WASM_CONCURRENCY, "0"),
            (WASM_INSTANCE_REUSE, "yes"),
        ] {
            assert!(validate(k, v).unwrap_err().contains(k), "{k}={v}");
        }
    }

    #[test]
    fn config_over_defaults() {
        let d = Defaults {
            boot_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            router: mar_router::AppOptions::default(),
        };
        let c = BTreeMap::from([
            (BOOT_TIMEOUT.to_owned(), "5".to_owned()),
            (MEMORY_LIMIT.to_owned(), "1G".to_owned()),
        ]);
        let s = AppSettings::from_config(&c, &d);
        assert_eq!(s.boot_timeout, Duration::from_secs(5));
        assert_eq!(s.stop_timeout, Duration::from_secs(30));
        assert_eq!(s.limits.memory_bytes, Some(1 << 30));
        assert_eq!(s.limits.pids, Some(512));
        assert_eq!(s.router.ws.idle_timeout, Duration::from_secs(60));
        let c = BTreeMap::from([
            (WS_IDLE_TIMEOUT.to_owned(), "5".to_owned()),
            (WS_KEEPALIVE.to_owned(), "router".to_owned()),
        ]);
        let s = AppSettings::from_config(&c, &d);
        assert_eq!(s.router.ws.idle_timeout, Duration::from_secs(5));
        assert!(s.router.ws.keepalive);
        assert!(validate(WS_KEEPALIVE, "sometimes").is_err());
        assert!(validate(WS_IDLE_TIMEOUT, "0").is_err());
    }
}
