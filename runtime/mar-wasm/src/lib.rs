//! mini-MAR's WebAssembly host: serves apps whose code is a WebAssembly binary in-process, with
//! no port and no process, behind the router's [`mar_http::Handler`] seam.
//!
//! Two guest interfaces, told apart from the binary itself ([`artifact::inspect`]):
//! - **wasi:http components** exporting `wasi:http/incoming-handler` (the `proxy` world, as
//!   `wasmtime serve`, Spin and wasmCloud run them), with the WASI 0.2 interfaces that
//!   componentize-py and componentize-js components also import linked in, backed by nothing
//!   the app was not granted ([`component`]);
//! - **WAGI modules**: WASI preview1 command modules that get the request as CGI/1.1
//!   variables and stdin and answer with a CGI response on stdout ([`wagi`], [`cgi`]), run
//!   through wasmtime's native preview1 support, never converted to components.
//!
//! How a request runs: one [`Host`] per server owns the `Engine` (epoch interruption, the
//! pooling allocator with copy-on-write memory images, or on-demand allocation where the host
//! cannot reserve the address space), the linkers and an executor of its own, so a guest never
//! computes on a router thread. A [`WasmApp`] holds one release's `InstancePre` and the app's
//! [`Limits`]: each request waits for a slot (the app's concurrency and the pool's size, so a
//! burst queues rather than fails), gets a fresh instance (or, opted in, a reused one), runs
//! until its epoch deadline, and may use at most its memory cap summed over its memories.
//!
//! Boundary: this crate knows nothing of apps, builds or the router: it is given bytes to
//! compile, an artifact to load, an environment, limits and a place to write log lines.

pub mod artifact;
pub mod cgi;
mod component;
mod host;
mod limits;
mod log_lines;
pub mod outbound;
mod wagi;
mod wasm_app;

#[cfg(test)]
mod tests;

pub use artifact::{Compiled, Interface};
pub use host::{Host, HostOptions, Loaded};
pub use limits::Limits;
pub use log_lines::LogSink;
pub use outbound::AllowedHosts;
pub use wasm_app::{AppSpec, Stats, WasmApp};

/// Why a binary could not become a servable app, or an artifact could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The bytes are not a WebAssembly binary at all.
    #[error("not a WebAssembly binary: {0}")]
    NotWasm(String),
    /// WebAssembly, but not valid (wasmtime refused to compile it).
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// Valid, but it exports neither `wasi:http/incoming-handler` nor a WASI command's `_start`.
    #[error("{0}")]
    Unsupported(String),
    /// It imports something mini-MAR does not provide.
    #[error("cannot be linked: {0}")]
    Link(String),
    /// Reading or writing an artifact failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The engine or its executor could not be set up.
    #[error("WebAssembly engine: {0}")]
    Engine(String),
}

/// Every wasmtime error in a message, its causes after colons.
fn describe(e: &wasmtime::Error) -> String {
    let mut s = String::new();
    for (i, cause) in e.chain().enumerate() {
        if i > 0 {
            s.push_str(": ");
        }
        s.push_str(&cause.to_string());
    }
    s
}
