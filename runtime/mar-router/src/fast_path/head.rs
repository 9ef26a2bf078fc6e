//! HTTP/1.1 message heads on the fast path: parse a request head and decide whether the fast
//! path can take it, write the head the app receives (hop-by-hop headers out, forwarded headers
//! in), parse the app's response head and write the one the client receives. Pure functions over
//! bytes, no I/O. Header names and order pass through as the client and the app wrote them.

use std::io::Write;

use crate::forwarding::{
    Forwarded, SET_BY_ROUTER, connection_may_remove, is_hop_by_hop, valid_request_id,
};

/// More headers than this and the request goes the general way (which answers 431).
const MAX_HEADERS: usize = 100;

/// How a request body is framed on the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBody {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, passed through as is.
    Chunked,
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseBody {
    /// No body (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked, passed through as is.
    Chunked,
    /// Until the app closes the connection; the client gets it chunked.
    UntilClose,
}

/// What the fast path needs from a request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Length of the head, CRLFCRLF included.
    pub len: usize,
    pub method: String,
    /// The origin-form target: path and query.
    pub target: String,
    pub host: String,
    pub body: RequestBody,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// The client prefers JSON error pages.
    pub json: bool,
    /// A usable incoming `X-Request-Id`.
    pub request_id: Option<String>,
    pub is_head: bool,
    /// A bodyless GET asking to switch protocols (WebSocket).
    pub upgrade: bool,
}

/// The outcome of parsing the bytes read so far.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A plain HTTP/1.1 request the fast path takes.
    Fast(RequestHead),
    /// Anything else (HTTP/1.0, HTTP/2's preface, `Expect`, odd framing, malformed
    /// heads): the general path answers it, errors included.
    Slow,
}

/// Parses a request head at the start of `buf`.
pub(crate) fn parse_request(buf: &[u8]) -> Parsed {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Slow,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Slow;
    };
    if !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Slow;
    }
    let mut host = None;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    let mut json = false;
    let mut request_id = None;
    let (mut upgrade_header, mut connection_upgrade) = (false, false);
    for h in req.headers.iter() {
        let name = h.name;
        let Ok(value) = std::str::from_utf8(h.value) else {
            // Only headers the fast path reads must be UTF-8; others pass through as bytes.
            if name.eq_ignore_ascii_case("host") || is_framing(name) {
                return Parsed::Slow;
            }
            continue;
        };
        if name.eq_ignore_ascii_case("host") {
            if host.replace(value.trim()).is_some() {
                return Parsed::Slow;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = content_length(value) else {
                return Parsed::Slow;
            };
            if length.replace(n).is_some() {
                return Parsed::Slow;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !value.trim_ascii().eq_ignore_ascii_case("chunked") {
                return Parsed::Slow;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            return Parsed::Slow;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("accept") {
            json = value.contains("application/json") && !value.contains("text/html");
        } else if name.eq_ignore_ascii_case("x-request-id") && valid_request_id(value) {
            request_id = Some(value.to_owned());
        }
    }
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Parsed::Slow;
    };
    let body = match (length, chunked) {
        (Some(_), true) => return Parsed::Slow,
        (Some(0), false) | (None, false) => RequestBody::Empty,
        (Some(n), false) => RequestBody::Length(n),
        (None, true) => RequestBody::Chunked,
    };
    let upgrade = upgrade_header && connection_upgrade;
    if upgrade && (method != "GET" || body != RequestBody::Empty) {
        return Parsed::Slow;
    }
    Parsed::Fast(RequestHead {
        len,
        upgrade,
        method: method.to_owned(),
        target: target.to_owned(),
        host: host.to_owned(),
        body,
        close,
        json,
        request_id,
        is_head: method == "HEAD",
    })
}

/// A `Content-Length` value: ASCII digits only (no sign, no other whitespace than around it),
/// so that the router and the app cannot read two different lengths.
fn content_length(value: &str) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// Header names a `Connection` header lists, which go with it (never the framing headers).
fn connection_named<'a>(headers: &[httparse::Header<'a>]) -> Vec<&'a str> {
    let mut named = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection")
            && let Ok(v) = std::str::from_utf8(h.value)
        {
            named.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| connection_may_remove(t)),
            );
        }
    }
    named
}

/// Writes the head the app receives for the request head `head` (already parsed once, so it
/// parses again): hop-by-hop headers dropped, `X-Forwarded-For` appended to, `X-Forwarded-Proto`,
/// `X-Forwarded-Port`, `X-Request-Id` and `X-Request-Start` set, `Via` added. With `upgrade`,
/// the `Upgrade` header stays and `Connection: upgrade` goes with it.
pub(crate) fn write_upstream_head(
    head: &[u8],
    fwd: &Forwarded<'_>,
    upgrade: bool,
    out: &mut Vec<u8>,
) {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return;
    }
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_named(req.headers);
    let mut xff: Option<Vec<u8>> = None;
    let mut framing = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            let prev = xff.get_or_insert_with(Vec::new);
            let v = h.value.trim_ascii();
            if !v.is_empty() {
                if !prev.is_empty() {
                    prev.extend_from_slice(b", ");
                }
                prev.extend_from_slice(v);
            }
            continue;
        }
        if upgrade && name.eq_ignore_ascii_case("upgrade") {
            header_line(out, name.as_bytes(), h.value);
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            // Written once, canonical: the length the router counts is the one the app reads.
            if let Some(n) = std::str::from_utf8(h.value).ok().and_then(content_length) {
                framing = Some(RequestBody::Length(n));
            }
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            framing = Some(RequestBody::Chunked);
            continue;
        }
        if is_hop_by_hop(name)
            || SET_BY_ROUTER.iter().any(|s| name.eq_ignore_ascii_case(s))
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        header_line(out, name.as_bytes(), h.value);
    }
    match framing {
        Some(RequestBody::Length(n)) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Some(RequestBody::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = xff.filter(|p| !p.is_empty()) {
        out.extend_from_slice(&prev);
        out.extend_from_slice(b", ");
    }
    let _ = write!(
        out,
        "{}\r\nx-forwarded-proto: {}\r\nx-forwarded-port: {}\r\nx-request-id: {}\r\nx-request-start: {}\r\nvia: 1.1 mar\r\n\r\n",
        fwd.client_ip,
        fwd.proto(),
        fwd.port,
        fwd.request_id,
        fwd.start_ms,
    );
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the proxy needs from a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    /// Length of the head, CRLFCRLF included.
    pub len: usize,
    pub status: u16,
    pub body: ResponseBody,
    /// The app keeps the connection open after this response.
    pub keep_alive: bool,
}

/// The outcome of parsing an app's response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseParsed {
    Partial,
    Complete(ResponseHead),
    /// Not a valid HTTP/1.x response head.
    Invalid,
}

/// Parses a response head at the start of `buf`; `to_head` when it answers a HEAD request.
pub(crate) fn parse_response(buf: &[u8], to_head: bool) -> ResponseParsed {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ResponseParsed::Partial,
        Err(_) => return ResponseParsed::Invalid,
    };
    let (Some(status), Some(version)) = (res.code, res.version) else {
        return ResponseParsed::Invalid;
    };
    let mut keep_alive = version == 1;
    let mut length = None;
    let mut chunked = None;
    for h in res.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("");
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = content_length(value) else {
                return ResponseParsed::Invalid;
            };
            if length.replace(n).is_some_and(|old| old != n) {
                return ResponseParsed::Invalid;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding decides the framing.
            chunked = Some(
                value
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")),
            );
        }
    }
    let body = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        ResponseBody::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => ResponseBody::Chunked,
            (Some(false), _) => ResponseBody::UntilClose,
            (None, Some(0)) => ResponseBody::Empty,
            (None, Some(n)) => ResponseBody::Length(n),
            (None, None) => ResponseBody::UntilClose,
        }
    };
    if body == ResponseBody::UntilClose || chunked == Some(false) {
        keep_alive = false;
    }
    ResponseParsed::Complete(ResponseHead {
        len,
        status,
        body,
        keep_alive,
    })
}

/// Writes the head the client receives for the app's response head `head` (its body framed as
/// `framing`): hop-by-hop headers dropped, `Transfer-Encoding: chunked` added when the body is
/// re-framed (and `Content-Length` dropped beside chunked), and
/// `Connection: close` when the router closes the client's connection after it. `redirect`
/// (the request's `Host` and the HTTPS listener's port) points a redirect to HTTPS at the
/// HTTPS listener (`forwarding::https_redirect`).
pub(crate) fn write_client_head(
    head: &[u8],
    framing: ResponseBody,
    close: bool,
    redirect: Option<(&str, u16)>,
    out: &mut Vec<u8>,
) {
    let rechunk = framing == ResponseBody::UntilClose;
    // A chunked body never goes out with a Content-Length beside it.
    let chunked = matches!(framing, ResponseBody::Chunked | ResponseBody::UntilClose);
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    if !matches!(res.parse(head), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        res.code.unwrap_or(502),
        res.reason.unwrap_or("")
    );
    let named = connection_named(res.headers);
    for h in res.headers.iter() {
        if is_hop_by_hop(h.name)
            || (rechunk && h.name.eq_ignore_ascii_case("transfer-encoding"))
            || (chunked && h.name.eq_ignore_ascii_case("content-length"))
            || named.iter().any(|n| n.eq_ignore_ascii_case(h.name))
        {
            continue;
        }
        if let Some((host, port)) = redirect
            && h.name.eq_ignore_ascii_case("location")
            && let Some(to) = crate::forwarding::https_redirect(h.value, host, port)
        {
            header_line(out, h.name.as_bytes(), to.as_bytes());
            continue;
        }
        header_line(out, h.name.as_bytes(), h.value);
    }
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(raw: &str) -> RequestHead {
        match parse_request(raw.as_bytes()) {
            Parsed::Fast(h) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn is_slow(raw: &str) -> bool {
        matches!(parse_request(raw.as_bytes()), Parsed::Slow)
    }

    #[test]
    fn plain_requests_take_the_fast_path() {
        let raw =
            "GET /a?b=1 HTTP/1.1\r\nHost: App.localhost\r\nAccept: application/json\r\n\r\nNEXT";
        let h = fast(raw);
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a?b=1"));
        assert_eq!(h.host, "App.localhost");
        assert_eq!(h.body, RequestBody::Empty);
        assert!(h.json && !h.close && !h.is_head);
        let h =
            fast("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\n");
        assert_eq!(h.body, RequestBody::Length(5));
        assert!(h.close);
        let h = fast("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.body, RequestBody::Chunked);
        let raw = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        assert!(fast(raw).upgrade);
        let mut out = Vec::new();
        let fwd = Forwarded {
            client_ip: "::1".parse().unwrap(),
            port: 80,
            tls: false,
            request_id: "r",
            start_ms: 1,
        };
        write_upstream_head(raw.as_bytes(), &fwd, true, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nconnection: upgrade\r\nx-forwarded-for: ::1\r\n"), "{out}");
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn unusual_requests_go_the_general_way() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\u{85}\r\n\r\n",
        ] {
            assert!(is_slow(raw), "{raw:?}");
        }
    }

    #[test]
    fn upstream_head_rewrites_hop_by_hop_and_forwarded_headers() {
        let raw = "GET /x HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Request-Id: spoofed\r\nAccept: */*\r\n\r\n";
        let mut out = Vec::new();
        let fwd = Forwarded {
            client_ip: "127.0.0.1".parse().unwrap(),
            port: 8080,
            tls: true,
            request_id: "rid",
            start_ms: 1234,
        };
        write_upstream_head(raw.as_bytes(), &fwd, false, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nHost: a.localhost\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: https\r\nx-forwarded-port: 8080\r\nx-request-id: rid\r\nx-request-start: 1234\r\nvia: 1.1 mar\r\n\r\n"
        );
    }

    #[test]
    fn response_framing() {
        let p = |raw: &str, head: bool| match parse_response(raw.as_bytes(), head) {
            ResponseParsed::Complete(h) => h,
            other => panic!("{raw:?}: {other:?}"),
        };
        let h = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(
            (h.status, h.body, h.keep_alive),
            (200, ResponseBody::Length(5), true)
        );
        assert_eq!(h.len, 38);
        let h = p("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(h.body, ResponseBody::Empty);
        let h = p(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.body, ResponseBody::Chunked);
        let h = p("HTTP/1.0 200 OK\r\n\r\n", false);
        assert_eq!((h.body, h.keep_alive), (ResponseBody::UntilClose, false));
        let h = p(
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        );
        assert_eq!((h.body, h.keep_alive), (ResponseBody::Empty, false));
        let h = p("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false);
        assert_eq!(h.body, ResponseBody::Empty);
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            ResponseParsed::Invalid
        );
        assert_eq!(
            parse_response(b"garbage\r\n\r\n", false),
            ResponseParsed::Invalid
        );
    }

    #[test]
    fn framing_headers_reach_the_app_and_the_client_canonical() {
        let raw = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  007 \r\nConnection: host\r\n\r\n";
        assert_eq!(fast(raw).body, RequestBody::Length(7));
        let fwd = Forwarded {
            client_ip: "127.0.0.1".parse().unwrap(),
            port: 80,
            tls: false,
            request_id: "r",
            start_ms: 1,
        };
        let mut out = Vec::new();
        write_upstream_head(raw.as_bytes(), &fwd, false, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 7\r\n"),
            "{out}"
        );
        let mut out = Vec::new();
        write_client_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            ResponseBody::Chunked,
            false,
            None,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn client_head_drops_hop_by_hop_and_can_rechunk() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n";
        let mut out = Vec::new();
        write_client_head(raw, ResponseBody::UntilClose, true, None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}
