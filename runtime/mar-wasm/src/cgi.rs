//! CGI/1.1 as WAGI uses it, as pure functions: the environment a request becomes (RFC 3875
//! §4.1 plus WAGI's `X_MATCHED_ROUTE`, `X_FULL_URL` and `X_RAW_PATH_INFO`), and the response
//! head a guest prints before its body (RFC 3875 §6: `Status:`, `Location:`, other headers, a
//! blank line).

use std::collections::BTreeMap;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, request};
use mar_http::Connection;

/// The most a guest's response head may take; past it the response is malformed.
pub const MAX_HEAD: usize = 64 * 1024;

/// The environment of one WAGI request: the app's config vars first, then the CGI variables,
/// which win over a config var of the same name (a config var cannot spoof `REMOTE_ADDR`).
pub fn environment(
    parts: &request::Parts,
    conn: Option<&Connection>,
    config: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = config.clone();
    let scheme = conn.map_or("http", |c| c.scheme.as_str());
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let (server_name, server_port) = split_host(&host, conn.map(|c| c.local.port()), scheme);
    let raw_path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("GATEWAY_INTERFACE", "CGI/1.1".into());
    set("SERVER_SOFTWARE", "mini-MAR".into());
    set("SERVER_PROTOCOL", protocol(parts.version).into());
    set("REQUEST_METHOD", parts.method.as_str().into());
    set("SCRIPT_NAME", String::new());
    set("PATH_INFO", mar_http::percent_decode(raw_path, false));
    set("X_RAW_PATH_INFO", raw_path.into());
    set("PATH_TRANSLATED", mar_http::percent_decode(raw_path, false));
    set("QUERY_STRING", query.into());
    set("X_MATCHED_ROUTE", "/...".into());
    set(
        "X_FULL_URL",
        format!(
            "{scheme}://{host}{raw_path}{}",
            if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            }
        ),
    );
    set("SERVER_NAME", server_name);
    set("SERVER_PORT", server_port);
    if let Some(c) = conn {
        set("REMOTE_ADDR", c.client.ip().to_string());
        set("REMOTE_HOST", c.client.ip().to_string());
        set("REMOTE_PORT", c.client.port().to_string());
        set("X_REQUEST_ID", c.request_id.clone());
        if c.scheme == mar_http::Scheme::Https {
            set("HTTPS", "on".into());
        }
    }
    let text = |name: HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    set(
        "CONTENT_TYPE",
        text(header::CONTENT_TYPE).unwrap_or_default(),
    );
    set(
        "CONTENT_LENGTH",
        text(header::CONTENT_LENGTH).unwrap_or_default(),
    );
    let mut from_headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        // Repeated headers join with ", " (RFC 9110 §5.3), as CGI servers do.
        from_headers
            .entry(key)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    // A header replaces a config var of its name, as every CGI variable does (joined to it,
    // the request would have carried the config's value as if a client had sent it).
    env.extend(from_headers);
    env.into_iter().collect()
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `name[:port]` (or `[v6]:port`) into SERVER_NAME and SERVER_PORT; a Host without a port
/// means the listener's port, or the scheme's default.
fn split_host(host: &str, listener_port: Option<u16>, scheme: &str) -> (String, String) {
    let default = || {
        listener_port
            .map(|p| p.to_string())
            .unwrap_or_else(|| if scheme == "https" { "443" } else { "80" }.to_owned())
    };
    if let Some(rest) = host.strip_prefix('[')
        && let Some((v6, after)) = rest.split_once(']')
    {
        let port = after.strip_prefix(':').map(str::to_owned);
        return (format!("[{v6}]"), port.unwrap_or_else(default));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name.to_owned(), port.to_owned())
        }
        _ => (host.to_owned(), default()),
    }
}

/// Where the head ends in what a guest printed so far: the head's length (without the blank
/// line) and where the body starts. Lines end in `\n` or `\r\n`.
pub fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    for (i, &c) in buf.iter().enumerate() {
        if c != b'\n' {
            continue;
        }
        let line = &buf[line_start..i];
        if line.is_empty() || line == b"\r" {
            return Some((line_start, i + 1));
        }
        line_start = i + 1;
    }
    None
}

/// A guest's response head, ready to become a response.
#[derive(Debug)]
pub struct Head {
    /// From `Status:`, else 302 for a `Location:`, else 200.
    pub status: StatusCode,
    /// The other headers, minus those that would break the response's framing.
    pub headers: HeaderMap,
}

/// Parses the head a guest printed (everything before the blank line).
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text =
        std::str::from_utf8(head).map_err(|_| "the CGI response head is not UTF-8".to_owned())?;
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "CGI header line without a colon: {:?}",
                truncate(line)
            ));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            status = Some(
                code.parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(|c| c.as_u16() >= 200)
                    .ok_or_else(|| format!("bad CGI Status: {:?}", truncate(value)))?,
            );
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad CGI header name {:?}", truncate(name)))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("bad value for CGI header {name}"))?;
        // The router frames the streamed body itself; a guest's length or coding could lie.
        if matches!(
            name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION
        ) {
            continue;
        }
        headers.append(name, value);
    }
    let status = status.unwrap_or(if headers.contains_key(header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(Head { status, headers })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn conn() -> Connection {
        Connection {
            client: SocketAddr::from(([10, 1, 2, 3], 5555)),
            local: SocketAddr::from(([127, 0, 0, 1], 8080)),
            scheme: mar_http::Scheme::Http,
            request_id: "rid-1".into(),
            socket: None,
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn request_becomes_cgi_variables() {
        let p = parts(
            "/a%20b/c?x=1&y=2",
            &[
                ("host", "hello.example.com:8080"),
                ("content-type", "text/plain"),
                ("content-length", "5"),
                ("x-test", "one"),
                ("x-test", "two"),
            ],
        );
        let mut config = BTreeMap::new();
        config.insert("GREETING".to_owned(), "hi".to_owned());
        config.insert("REMOTE_ADDR".to_owned(), "spoofed".to_owned());
        // A config var named as a header's variable is replaced, not joined.
        config.insert("HTTP_X_TEST".to_owned(), "from-config".to_owned());
        let env = environment(&p, Some(&conn()), &config);
        assert_eq!(get(&env, "REQUEST_METHOD"), Some("POST"));
        assert_eq!(get(&env, "PATH_INFO"), Some("/a b/c"));
        assert_eq!(get(&env, "X_RAW_PATH_INFO"), Some("/a%20b/c"));
        assert_eq!(get(&env, "SCRIPT_NAME"), Some(""));
        assert_eq!(get(&env, "QUERY_STRING"), Some("x=1&y=2"));
        assert_eq!(get(&env, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get(&env, "CONTENT_LENGTH"), Some("5"));
        assert_eq!(get(&env, "SERVER_NAME"), Some("hello.example.com"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("8080"));
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some("HTTP/1.1"));
        assert_eq!(get(&env, "REMOTE_ADDR"), Some("10.1.2.3"));
        assert_eq!(get(&env, "HTTP_X_TEST"), Some("one, two"));
        assert_eq!(get(&env, "HTTP_HOST"), Some("hello.example.com:8080"));
        assert_eq!(get(&env, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(get(&env, "X_MATCHED_ROUTE"), Some("/..."));
        assert_eq!(
            get(&env, "X_FULL_URL"),
            Some("http://hello.example.com:8080/a%20b/c?x=1&y=2")
        );
        assert_eq!(get(&env, "GREETING"), Some("hi"));
        assert_eq!(get(&env, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
    }

    #[test]
    fn host_without_port_takes_the_listeners() {
        assert_eq!(
            split_host("a.b", Some(80), "http"),
            ("a.b".into(), "80".into())
        );
        assert_eq!(
            split_host("a.b", None, "https"),
            ("a.b".into(), "443".into())
        );
        assert_eq!(
            split_host("[::1]:9000", None, "http"),
            ("[::1]".into(), "9000".into())
        );
        assert_eq!(
            split_host("[::1]", Some(81), "http"),
            ("[::1]".into(), "81".into())
        );
    }

    #[test]
    fn head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"A: b\n\nbody"), Some((5, 6)));
        assert_eq!(head_end(b"A: b\r\n\r\nbody"), Some((6, 8)));
        assert_eq!(head_end(b"\nbody"), Some((0, 1)));
        assert_eq!(head_end(b"A: b\nC: d\n"), None);
    }

    #[test]
    fn status_location_and_headers() {
        let h = parse_head(b"Status: 404 Not Found\nContent-Type: text/plain\n").unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert_eq!(h.headers[header::CONTENT_TYPE], "text/plain");
        let h = parse_head(b"Location: /\r\n").unwrap();
        assert_eq!(h.status, StatusCode::FOUND);
        assert_eq!(h.headers[header::LOCATION], "/");
        let h = parse_head(b"Status: 301\nLocation: /x\n").unwrap();
        assert_eq!(h.status, StatusCode::MOVED_PERMANENTLY);
        let h = parse_head(b"Content-Length: 99\nTransfer-Encoding: chunked\nX-A: 1\n").unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.headers.get(header::CONTENT_LENGTH).is_none());
        assert!(h.headers.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h.headers["x-a"], "1");
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(
            parse_head(b"hello world\n")
                .unwrap_err()
                .contains("without a colon")
        );
        assert!(
            parse_head(b"Status: abc\n")
                .unwrap_err()
                .contains("bad CGI Status")
        );
        assert!(parse_head(b"Status: 99\n").is_err());
        assert!(
            parse_head(b"Bad Name: x\n")
                .unwrap_err()
                .contains("header name")
        );
        assert!(parse_head(b"\xff\xfe: x\n").unwrap_err().contains("UTF-8"));
    }
}
