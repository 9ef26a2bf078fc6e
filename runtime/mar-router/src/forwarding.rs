//! The forwarding rules both paths apply to every request they send on, to an app behind a
//! port or to an in-process handler: which headers are hop-by-hop, which the router sets
//! (`X-Forwarded-*`, `X-Request-Id`, `X-Request-Start`, `Via`), which request ids are kept,
//! and where a request came in. The fast path writes them as bytes (`fast_path/head.rs`), the
//! general path into a header map (here); both read the lists below.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Where a request came in: for `X-Forwarded-*`, the access log and in-process handlers'
/// [`mar_http::Connection`].
#[derive(Debug, Clone, Copy)]
pub struct Inbound {
    /// The client's address.
    pub client: SocketAddr,
    /// The listener's address.
    pub local: SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// The accepted socket's descriptor (for in-process handlers that take the connection
    /// over: see [`mar_http::ClientSocket`]).
    pub fd: Option<std::os::fd::RawFd>,
}

impl Inbound {
    /// `http` or `https`.
    pub fn scheme(&self) -> mar_http::Scheme {
        if self.tls {
            mar_http::Scheme::Https
        } else {
            mar_http::Scheme::Http
        }
    }
}

/// Headers that only make sense on one connection (RFC 9110 §7.6.1), besides the framing
/// headers each path handles itself.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Headers the router sets itself; a client's own values are dropped (`X-Forwarded-For` is
/// appended to instead).
pub(crate) const SET_BY_ROUTER: [&str; 4] = [
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-request-id",
    "x-request-start",
];

/// Whether `name` is hop-by-hop.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a token of a `Connection` header removes the header it names. Never the framing
/// headers (which would let a client change how the app reads the body), `Host`, nor
/// `X-Forwarded-For` (the chain the router appends to, as the fast path does), and the `close`
/// and `keep-alive` options are options, not names.
pub(crate) fn connection_may_remove(token: &str) -> bool {
    !token.is_empty()
        && !token.eq_ignore_ascii_case("content-length")
        && !token.eq_ignore_ascii_case("transfer-encoding")
        && !token.eq_ignore_ascii_case("host")
        && !token.eq_ignore_ascii_case("x-forwarded-for")
        && !token.eq_ignore_ascii_case("close")
        && !token.eq_ignore_ascii_case("keep-alive")
}

/// A usable incoming `X-Request-Id`: 20 to 200 safe characters, as Heroku accepts.
pub(crate) fn valid_request_id(v: &str) -> bool {
    (20..=200).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=/-_".contains(&b))
}

/// What the router adds to a request it sends on.
pub(crate) struct Forwarded<'a> {
    pub client_ip: IpAddr,
    pub port: u16,
    pub tls: bool,
    pub request_id: &'a str,
    /// `X-Request-Start`, ms since the Unix epoch.
    pub start_ms: u128,
}

impl<'a> Forwarded<'a> {
    /// The headers for a request that came in on `inbound` with id `request_id`, starting now.
    pub fn now(inbound: &Inbound, request_id: &'a str) -> Self {
        Self {
            client_ip: inbound.client.ip(),
            port: inbound.local.port(),
            tls: inbound.tls,
            request_id,
            start_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        }
    }

    /// `http` or `https`.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Removes hop-by-hop headers from a header map: `Connection` and what it may remove, the
/// fixed list, and `Transfer-Encoding` (hyper frames bodies again on the general path).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| connection_may_remove(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Adds the forwarded headers to a header map, as the fast path writes them.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let ip = fwd.client_ip.to_string();
    let prev: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let xff = if prev.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prev.join(", "))
    };
    for name in SET_BY_ROUTER {
        headers.remove(name);
    }
    let pairs = [
        ("x-forwarded-for", xff),
        ("x-forwarded-proto", fwd.proto().to_owned()),
        ("x-forwarded-port", fwd.port.to_string()),
        ("x-request-id", fwd.request_id.to_owned()),
        ("x-request-start", fwd.start_ms.to_string()),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    headers.append(header::VIA, HeaderValue::from_static("1.1 mar"));
}

/// A usable incoming `X-Request-Id`, or a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        && valid_request_id(v)
    {
        return v.to_owned();
    }
    new_request_id()
}

/// A fresh 32-hex-digit request id. Ids need to be unique, not secret, so a per-thread
/// xorshift generator seeded once from the OS stands in for a syscall per request.
pub(crate) fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new({
            let mut seed = [0u8; 16];
            if getrandom::fill(&mut seed).is_err() {
                let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
                seed = t.to_le_bytes();
            }
            let a = u64::from_le_bytes([seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7]]);
            let b = u64::from_le_bytes([seed[8], seed[9], seed[10], seed[11], seed[12], seed[13], seed[14], seed[15]]);
            (a | 1, b | 1)
        });
    }
    let next = || {
        STATE.with(|st| {
            let (mut a, b) = st.get();
            let out = a.wrapping_add(b);
            a ^= a << 23;
            let n = a ^ b ^ (a >> 17) ^ (b >> 26);
            st.set((b, n));
            out
        })
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for word in [next(), next()] {
        for i in (0..16).rev() {
            id.push(HEX[((word >> (i * 4)) & 0xF) as usize] as char);
        }
    }
    id
}

/// The request's Host: the header, else the authority of an absolute-form target.
pub(crate) fn host_of<B>(req: &http::Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
}

/// `host[:port]` split at the port (`[::1]:8080` too); `None` for the port when there is none.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let after_name = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (name, rest) = authority.split_at(after_name);
    (name, rest.strip_prefix(':'))
}

/// An app's redirect to HTTPS made for a plain-HTTP request, pointed at the router's HTTPS
/// listener (`https_port`) when it would go to a port where no HTTPS is served, as nginx's
/// `proxy_redirect` rewrites redirects. Apps that see `DYNO` redirect to `https://` + the
/// `Host` they were asked for (Django, express-sslify, Flask-Talisman), which carries the
/// plain listener's port, or to that host on 443 (Rails): on a server whose listeners are
/// not 80 and 443, both fail. Rewritten only when the request's `Host` names a port and the
/// redirect is to the same host on that port or on none: a `Host` without a port reached
/// the router on the default one, and where 443 leads is then the operator's (a NAT in
/// front of the listener, say). The new `Location`, or `None` to leave it.
pub(crate) fn https_redirect(
    location: &[u8],
    request_host: &str,
    https_port: u16,
) -> Option<String> {
    let (name, Some(plain_port)) = split_port(request_host) else {
        return None;
    };
    let location = std::str::from_utf8(location).ok()?;
    let scheme = location.get(..8)?;
    if !scheme.eq_ignore_ascii_case("https://") {
        return None;
    }
    let rest = &location[8..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return None;
    }
    let (to_name, to_port) = split_port(authority);
    if !to_name.eq_ignore_ascii_case(name) {
        return None;
    }
    let https = https_port.to_string();
    match to_port {
        Some(p) if p == https => return None,
        Some(p) if p != plain_port => return None,
        _ => {}
    }
    Some(if https_port == 443 {
        format!("https://{to_name}{path}")
    } else {
        format!("https://{to_name}:{https}{path}")
    })
}

/// Applies [`https_redirect`] to a response's `Location`, given the request's host and the
/// HTTPS listener's port when the response is a redirect to point there
/// (`Shared::redirect_target`).
pub(crate) fn point_redirect_at_https(headers: &mut HeaderMap, target: Option<(&str, u16)>) {
    let Some((host, port)) = target else {
        return;
    };
    let rewritten = headers
        .get(header::LOCATION)
        .and_then(|v| https_redirect(v.as_bytes(), host, port))
        .and_then(|l| HeaderValue::from_str(&l).ok());
    if let Some(l) = rewritten {
        headers.insert(header::LOCATION, l);
    }
}

/// Whether error pages should be JSON rather than HTML.
pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

/// Whether the request asks to switch protocols (a WebSocket handshake).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, host, content-length"),
        );
        h.insert(header::HOST, HeaderValue::from_static("a.localhost"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "host", "x-kept"]);
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("short"));
        assert_eq!(request_id(&h).len(), 32);
        assert_ne!(request_id(&h), request_id(&h));
        h.insert(
            "x-request-id",
            HeaderValue::from_static("abcdefghijklmnopqrstuvwxyz-0123"),
        );
        assert_eq!(request_id(&h), "abcdefghijklmnopqrstuvwxyz-0123");
    }

    #[test]
    fn forwarded_headers_append_and_replace() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("spoofed"));
        h.insert("x-request-start", HeaderValue::from_static("1"));
        let inbound = Inbound {
            client: "127.0.0.1:5000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            tls: true,
            fd: None,
        };
        add_forwarded(&mut h, &Forwarded::now(&inbound, "rid"));
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["x-request-id"], "rid");
        assert_ne!(h["x-request-start"], "1");
        assert_eq!(h["via"], "1.1 mar");
    }
    #[test]
    fn redirects_to_https_are_pointed_at_the_https_listener() {
        let r = |loc: &str, host: &str, port| https_redirect(loc.as_bytes(), host, port);
        // Host copied with the plain port, or dropped (443): both to the HTTPS listener.
        assert_eq!(
            r(
                "https://app.localhost:8080/a?b=1",
                "app.localhost:8080",
                8443
            )
            .as_deref(),
            Some("https://app.localhost:8443/a?b=1")
        );
        assert_eq!(
            r("HTTPS://App.localhost/p", "app.localhost:8080", 8443).as_deref(),
            Some("https://App.localhost:8443/p")
        );
        assert_eq!(
            r("https://app.localhost:8080", "app.localhost:8080", 443).as_deref(),
            Some("https://app.localhost")
        );
        assert_eq!(
            r("https://[::1]:8080/x", "[::1]:8080", 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
        // Left alone: no port in the request's Host, already the HTTPS port, another host,
        // another explicit port, plain http, credentials, a relative redirect.
        for (loc, host) in [
            ("https://app.example.com/", "app.example.com"),
            ("https://app.localhost:8443/", "app.localhost:8080"),
            ("https://evil.example/", "app.localhost:8080"),
            ("https://app.localhost.evil.example/", "app.localhost:8080"),
            ("https://app.localhost:9000/", "app.localhost:8080"),
            ("http://app.localhost:8080/", "app.localhost:8080"),
            ("https://user@app.localhost:8080/", "app.localhost:8080"),
            ("/login", "app.localhost:8080"),
            ("https:/", "app.localhost:8080"),
        ] {
            assert_eq!(r(loc, host, 8443), None, "{loc} for {host}");
        }
    }
}
