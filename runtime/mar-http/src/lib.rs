//! The seam between the router and every service that answers requests inside the `mar`
//! process (the platform's API, WASM apps, the MWS gateway, the EDS data store): a [`Handler`]
//! trait, the boxed [`Body`] both directions use, and the facts about the client connection a
//! handler may need, carried in the request's extensions as [`Connection`].
//!
//! Boundary: this crate knows nothing of the router, of apps or of builds, and depends only on
//! `http`, `bytes` and the body traits, so a service depends on it and never on `mar-router`.
//! The router gives every in-process request what it gives a request to an app behind a
//! port: forwarded headers, a request id, the body limit and upload idle window (the body a
//! handler reads fails with an error past them), the first-byte timeout, an access log line,
//! metrics and an in-flight count that a switch drains.
//!
//! WebSocket upgrades: a request that asks for one still carries hyper's `OnUpgrade` in its
//! extensions, so a handler answers `101 Switching Protocols` and takes the connection with
//! `hyper::upgrade::on(&mut request)`.
#![deny(missing_docs)]

pub mod credentials;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// The error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body of any origin: a client's upload, an app's answer, a handler's answer, an error page.
/// `Send` but not `Sync`, as hyper's own bodies.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The future of a handler's response.
pub type ResponseFuture = Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;

/// A service that answers requests inside this process instead of behind a port.
///
/// A handler turns every error into a response itself (a 4xx for a bad request, a 5xx for its
/// own failure): the router maps only what it sees (a handler that panics, or that does not
/// start its answer within the first-byte timeout) to its error pages.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. The request's extensions hold its [`Connection`].
    fn call(&self, req: http::Request<Body>) -> ResponseFuture;
}

/// Whether the client reached the router over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the router knows about the connection a request came in on, in the request's
/// extensions. The same facts reach apps behind ports as `X-Forwarded-*` and `X-Request-Id`
/// headers, which in-process handlers get too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The client's address (the router's peer).
    pub client: SocketAddr,
    /// The router listener's address the client connected to.
    pub local: SocketAddr,
    /// Plain or TLS.
    pub scheme: Scheme,
    /// The request's id, as sent on in `X-Request-Id` and written in the access log.
    pub request_id: String,
    /// The client connection's socket, when the router knows it.
    pub socket: Option<ClientSocket>,
}

/// The socket of a client connection, for the options a handler that takes the connection
/// over sets on it (a push gateway bounding what the kernel queues for a client that stops
/// reading). Only the descriptor's number: use it while the request's connection is open, that
/// is while its handler holds the request or the connection it upgraded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSocket(std::os::fd::RawFd);

impl ClientSocket {
    /// The socket with descriptor `fd` (the router's accepted connection).
    pub fn new(fd: std::os::fd::RawFd) -> Self {
        Self(fd)
    }

    /// Caps the kernel's send buffer at about `bytes` (`SO_SNDBUF`; Linux doubles the value
    /// for its bookkeeping, and stops growing the buffer by itself once it is set).
    pub fn cap_send_buffer(&self, bytes: usize) -> std::io::Result<()> {
        // SAFETY: the descriptor is the accepted connection's, open as long as the request or
        // its upgraded connection is held, which is when this is called (see the type's doc);
        // the borrow does not outlive this call.
        #[allow(unsafe_code)]
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBuf, &bytes)
            .map_err(std::io::Error::from)
    }
}

impl Connection {
    /// The connection facts of `req`, if the router put them there.
    pub fn of<B>(req: &http::Request<B>) -> Option<&Connection> {
        req.extensions().get::<Connection>()
    }
}

/// Put in a response's extensions by a handler whose own deadline for the request passed (a
/// WASM guest stopped at its epoch deadline): the router answers with its request-timeout page
/// and code instead (503, H12), as when an app behind a port does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// Decodes `%XX` escapes (and, for a query string's values, `+` as a space); an escape that
/// is not one, or bytes that are not UTF-8, are kept as they were (lossily). For the
/// in-process services that read paths (WAGI's `PATH_INFO`) and query parameters (MWS).
pub fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if plus_as_space && b[i] == b'+' {
            b' '
        } else {
            b[i]
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A body holding `bytes` whole.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The answer of a handler that takes a WebSocket: `101 Switching Protocols` carrying
/// `accept`, the `Sec-WebSocket-Accept` its WebSocket library derives from the client's key.
/// The handler then takes the connection with `hyper::upgrade::on`.
pub fn switching_protocols(accept: &str) -> http::Response<Body> {
    use http::header::{CONNECTION, HeaderValue, UPGRADE};
    let mut r = http::Response::new(empty());
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// Boxes any body whose errors convert to [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("/%41%zz%4", false), "/A%zz%4");
        assert_eq!(percent_decode("/caf%C3%A9", false), "/café");
        assert_eq!(percent_decode("a+b%2B", false), "a+b+");
        assert_eq!(percent_decode("a+b%2B", true), "a b+");
    }

    #[test]
    fn connection_facts_travel_in_extensions() {
        let mut req = http::Request::new(empty());
        assert!(Connection::of(&req).is_none());
        let facts = Connection {
            client: SocketAddr::from(([127, 0, 0, 1], 4000)),
            local: SocketAddr::from(([127, 0, 0, 1], 8080)),
            scheme: Scheme::Https,
            request_id: "abc".into(),
            socket: None,
        };
        req.extensions_mut().insert(facts.clone());
        assert_eq!(Connection::of(&req), Some(&facts));
        assert_eq!(facts.scheme.as_str(), "https");
    }
}
