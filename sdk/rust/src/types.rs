//! Wire types of the platform API: the JSON that `mar serve` sends and the CLI reads.
//!
//! These are DTOs kept apart from the server's internal types, so the server can change its
//! internals without breaking clients.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A list response, in the Qt Cloud Services convention: a JSON object, never a bare array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results<T> {
    /// The items.
    pub results: Vec<T>,
}

/// An app, with the fields of the old MAR API (`id`, `name`, `state`, `structure`) and ours.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppInfo {
    /// Same as `name` (the MAR API called it the instance id).
    pub id: String,
    /// The app's name.
    pub name: String,
    /// `running`, `crashed`, `idle` (no release or no processes) or `starting`.
    pub state: String,
    /// Process type → instance count (the formation).
    pub structure: BTreeMap<String, u32>,
    /// Where the app is served.
    pub web_url: String,
    /// Where it is served over HTTPS, when `mar serve` listens for HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_url: Option<String>,
    /// Where to `git push`.
    pub git_url: String,
    /// The current release's version, if any.
    pub release: Option<i64>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// For a WebAssembly app, the interface its module exports and its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmInfo>,
    /// The limits each of its instances runs under, its config vars over the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsInfo>,
}

/// The limits an app's instances run under (`mar ps:resize`), as they apply now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsInfo {
    /// Memory per instance, in bytes (`MAR_MEMORY_LIMIT`).
    pub memory_bytes: u64,
    /// CPU per instance, in thousandths of a core (`MAR_CPU_LIMIT`).
    pub cpu_millis: u64,
    /// Processes and threads per instance (`MAR_PIDS_LIMIT`).
    pub pids: u64,
    /// Open files per process (`MAR_NOFILE_LIMIT`).
    pub nofile: u64,
    /// The instance's writable layer, in bytes (`MAR_DISK_LIMIT`).
    pub disk_bytes: u64,
    /// The config vars among these that the app sets; the others are the defaults.
    pub set: Vec<String>,
}

/// A WebAssembly app's module and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WasmInfo {
    /// `wasi-http` or `wagi`.
    pub interface: String,
    /// What that means, in words.
    pub description: String,
    /// Seconds a request may run in the guest.
    pub timeout_secs: u64,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: u64,
    /// Requests running at once.
    pub concurrency: usize,
    /// Whether instances are reused between requests.
    pub instance_reuse: bool,
}

/// A WebAssembly app's figures now (in `mar ps`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WasmStats {
    /// Requests in flight through the router.
    pub in_flight: usize,
    /// Running in a guest.
    pub running: usize,
    /// Waiting for a slot.
    pub waiting: usize,
    /// The app's concurrency limit.
    pub concurrency: usize,
    /// Instances in use over all apps.
    pub pool_in_use: usize,
    /// The pool's size.
    pub pool_size: usize,
    /// Requests since the release started.
    pub requests: u64,
    /// Of which failed in the guest.
    pub failures: u64,
    /// Instances made.
    pub instantiations: u64,
    /// Requests that reused an instance.
    pub reused: u64,
    /// Mean instantiation time, in microseconds.
    pub mean_instantiation_us: u64,
    /// The last instantiation's time, in microseconds.
    pub last_instantiation_us: u64,
}

/// Body of `POST /v1/apps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateApp {
    /// The new app's name.
    pub name: String,
}

/// A release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// `N` of `vN`.
    pub version: i64,
    /// What made it.
    pub description: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// The deployed commit.
    pub commit: Option<String>,
    /// Slug size in bytes.
    pub slug_size: u64,
    /// Process type → command.
    pub process_types: BTreeMap<String, String>,
    /// The buildpacks that built it.
    pub buildpacks: Vec<String>,
    /// Whether it is the release running now.
    pub current: bool,
    /// Its config vars (only in the single-release view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
}

/// One process type's instance count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormationEntry {
    /// `web`.
    #[serde(rename = "type")]
    pub process_type: String,
    /// Instances.
    pub quantity: u32,
    /// The Procfile command, when the current release declares the type.
    pub command: Option<String>,
}

/// How a one-off process ended, in the last line of its output stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Its exit status (128 + signal when killed); `None` if it could not run.
    pub exit_code: Option<i32>,
    /// Why it could not run.
    pub error: Option<String>,
}

/// The first message of a terminal session: `GET /v1/apps/APP/terminal` upgraded to a
/// WebSocket, for `mar run` typed at a terminal. After it, binary frames carry the terminal's
/// bytes both ways, a text frame from the client is a [`TerminalControl`], and the server's
/// last text frame is the [`RunResult`] before it closes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TerminalStart {
    /// The command line, as `POST /v1/apps/APP/run` takes it.
    pub command: String,
    /// The terminal's width in columns.
    pub cols: u16,
    /// Its height in rows.
    pub rows: u16,
    /// The client's `TERM`.
    #[serde(default)]
    pub term: Option<String>,
    /// `false`: no terminal, the process's stdin, stdout and stderr are pipes (`mar run` in a
    /// pipe or a script). The client's binary frames are then its stdin and `"eof"` closes it;
    /// the server's binary frames start with 1 (stdout) or 2 (stderr), the data after it.
    #[serde(default = "at_a_terminal")]
    pub tty: bool,
}

fn at_a_terminal() -> bool {
    true
}

/// A terminal session's control message (a text frame from the client).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalControl {
    /// The client's window has a new size: `{"resize": {"cols": 120, "rows": 40}}`.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Without a terminal: the client's input ended (`"eof"`), the process's stdin is closed.
    Eof,
}

/// One process instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// `web.1`.
    pub dyno: String,
    /// `web`.
    #[serde(rename = "type")]
    pub process_type: String,
    /// `starting`, `up`, `crashed`, `down`.
    pub state: String,
    /// The Procfile command.
    pub command: String,
    /// The release it runs.
    pub release: i64,
    /// Its `$PORT`, for web instances.
    pub port: Option<u16>,
    /// Process id of its group leader.
    pub pid: Option<u32>,
    /// Seconds since it came up.
    pub uptime_secs: Option<u64>,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Memory in use by the instance's processes, in bytes.
    pub memory_bytes: Option<u64>,
    /// For a WebAssembly app's one entry (`wasm`), its handler's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmStats>,
}

/// A log line in the MAR API's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    /// RFC 3339 time.
    pub time: String,
    /// `source: text`, e.g. `app[web.1]: listening`.
    pub log: String,
}

/// An error body: `{"error":{"reason":"…","message":"…"}}` (the hosted MWS form).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A short machine-readable reason: `NotFound`, `Unauthorized`, `BadRequest`, `Conflict`.
    pub reason: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// The last line of a build stream says how the deploy ended. It starts with this byte so it
/// cannot be confused with build output, and the hook does not print it.
pub const BUILD_RESULT_MARK: char = '\u{1}';

/// How a deploy ended, carried in the build stream's last line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildResult {
    /// Whether the new release is serving.
    pub ok: bool,
    /// The new release, on success.
    pub release: Option<i64>,
}

/// A service instance (`/v1/services`): an MWS gateway or an EDS backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its name.
    pub name: String,
    /// `mws` or `eds`.
    pub kind: String,
    /// Its id: in a gateway's URLs (`/v1/gateways/ID/`), or a backend's
    /// `Enginio-Backend-Id`.
    pub id: String,
    /// The secret that opens its API (`Authorization: Bearer SECRET`): a backend's master
    /// key.
    pub secret: String,
    /// An EDS backend's API key (`Enginio-Backend-Secret` of 2013 clients: no more than an
    /// anonymous client may do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Where its API is served (the platform's address).
    pub address: String,
    /// Its access mode (`none`: public sockets and messages; `custom`: the secret only).
    pub access: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// A service instance attached to an app, and the config vars it owns there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// The service instance.
    pub service: String,
    /// Its kind (`mws`).
    pub kind: String,
    /// The app.
    pub app: String,
    /// The variables it puts in the app's environment (`MWS_ADDRESS`, `MWS_GATEWAY_ID`,
    /// `MWS_SECRET`).
    pub vars: Vec<String>,
}
