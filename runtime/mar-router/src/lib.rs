//! The router: one HTTP listener that sends `APP.DOMAIN` to the app's web instances (HTTP/1.1
//! and HTTP/2 from clients, keep-alive pool to backends, WebSocket upgrades relayed) and the
//! bare domain to the platform's in-process handler.
//!
//! Invariant: `mar-router` knows nothing about how apps are built or run. It reads the
//! [`RouteTable`] the runtime publishes and maps every failure to one error page.

mod connector;
pub mod frames;
mod h1;
mod idle;
pub mod metrics;
mod pages;
mod proxy;
pub mod relay;
mod server;
mod table;
mod tracked;
mod upload;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub use metrics::Metrics;
pub use pages::error_response;
pub use proxy::{Inbound, Proxy, Timeouts};
pub use relay::WsOptions;
pub use server::{ServerLimits, serve};
pub use table::{AppOptions, AppTarget, Resolution, Resolved, RouteTable, Unavailable, Upstream};
pub use tracked::LogSink;

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body of any origin (upstream, in-process handler, error page).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A boxed response future.
pub type ResponseFuture = Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;

/// A request handler that runs inside this process instead of behind a port: the platform's
/// own API, and later WASM apps.
pub trait InProcess: Send + Sync {
    /// Handles one request. `client` is the peer address. Errors must already be responses.
    fn call(&self, req: http::Request<Incoming>, client: std::net::SocketAddr) -> ResponseFuture;
}

/// Makes a body from anything that converts to bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
