//! The router: one HTTP listener that sends `APP.DOMAIN` to the app's web instances (HTTP/1.1
//! and HTTP/2 from clients, keep-alive pool to backends, WebSocket upgrades relayed) or to its
//! in-process handler, and the bare domain to the platform's in-process handler.
//!
//! One direction through it: the accept loop (`server.rs`, which admits connections under the
//! caps of `admission.rs`) hands each connection to the
//! HTTP/1.1 fast path (`fast_path/`) or the general hyper path (`general_path.rs`, which calls
//! in-process handlers through `in_process.rs`); both use the shared parts below them: the
//! exchange's context and accounting (`shared.rs`), the one failure table (`failure.rs`), the
//! forwarding rules (`forwarding.rs`), the route table (`table.rs`) and the pool of app
//! connections (`pool.rs`).
//!
//! Invariant: `mar-router` knows nothing about how apps are built or run. It reads the
//! [`RouteTable`] the runtime publishes and maps every failure to one error page. In-process
//! services reach it only through `mar-http`'s [`Handler`].

mod admission;
mod connector;
mod failure;
mod fast_path;
mod forwarding;
pub mod frames;
mod general_path;
mod idle;
mod in_process;
pub mod metrics;
mod pages;
mod pool;
pub mod relay;
mod server;
mod shared;
mod table;
mod tracked;
mod upload;

#[cfg(test)]
mod tests;

pub use admission::Admission;
pub use forwarding::Inbound;
pub use mar_http::{Body, BoxError, Handler, ResponseFuture, full};
pub use metrics::Metrics;
pub use pages::error_response;
pub use relay::WsOptions;
pub use server::{Proxy, serve};
pub use shared::{ServerLimits, Timeouts};
pub use table::{
    AppOptions, AppTarget, InProcessTarget, MAX_HELD_PER_APP, Resolution, Resolved, RouteTable,
    Unavailable, Upstream,
};
pub use tracked::LogSink;
