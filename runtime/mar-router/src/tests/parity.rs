//! One table of requests, sent down the HTTP/1.1 fast path and down the general path: each
//! must get the same status, the same access log line (but for timings) and reach the app
//! with the same forwarded headers, and each status and code is the one the table names.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestRouter, app, exchange, header, normalized, read_head, short_timeouts};
use crate::{AppOptions, AppTarget, Unavailable, Upstream};
use mar_core::AppName;

/// Answers every request with what it received: the forwarded headers and the body's length.
async fn echo(mut s: TcpStream) {
    while let Some(head) = read_head(&mut s).await {
        let mut body = Vec::new();
        if let Some(n) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            if s.read_exact(&mut body).await.is_err() {
                return;
            }
        } else if header(&head, "transfer-encoding").is_some() {
            while !body.ends_with(b"0\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap_or(0) == 0 {
                    return;
                }
                body.push(b[0]);
            }
        }
        let h = |n| header(&head, n).unwrap_or("-").to_owned();
        let text = format!(
            "line={} host={} xff={} proto={} port={} rid={} via={} body={}",
            head.lines().next().unwrap_or(""),
            h("host"),
            h("x-forwarded-for"),
            h("x-forwarded-proto"),
            h("x-forwarded-port"),
            h("x-request-id"),
            h("via"),
            body.len(),
        );
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Takes the request and never answers.
async fn silent(mut s: TcpStream) {
    let _ = read_head(&mut s).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// Takes the request and closes.
async fn hangs_up(mut s: TcpStream) {
    let _ = read_head(&mut s).await;
}

/// Answers with something that is not HTTP.
async fn garbage(mut s: TcpStream) {
    let _ = read_head(&mut s).await;
    let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
}

/// Sends a head promising 100 bytes, then 5, then closes.
async fn breaks_off(mut s: TcpStream) {
    let _ = read_head(&mut s).await;
    let _ = s
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        .await;
}

/// One request of the table.
struct Case {
    name: &'static str,
    app: &'static str,
    raw: String,
    /// Sent and then the client waits without sending the rest.
    status: u16,
    /// The access log's `code=`, or `None` for `at=info`.
    code: Option<&'static str>,
}

fn case(
    name: &'static str,
    app: &'static str,
    head: &str,
    body: &str,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    let rid = format!("parity-{name}-0123456789");
    Case {
        name,
        app,
        raw: format!(
            "{head}\r\nHost: {app}.localhost\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n{body}"
        ),
        status,
        code,
    }
}

fn table() -> Vec<Case> {
    vec![
        case("get", "echo", "GET /hello?x=1 HTTP/1.1", "", 200, None),
        case(
            "spoofed-forwarding",
            "echo",
            "GET / HTTP/1.1\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: X-Forwarded-For\r\nX-Forwarded-Proto: https\r\nX-Request-Start: 1\r\nVia: 1.0 other",
            "",
            200,
            None,
        ),
        case(
            "post-length",
            "echo",
            "POST /up HTTP/1.1\r\nContent-Length: 5",
            "hello",
            200,
            None,
        ),
        case(
            "post-chunked",
            "echo",
            "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked",
            "5\r\nhello\r\n0\r\n\r\n",
            200,
            None,
        ),
        case(
            "malformed-chunked",
            "echo",
            "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked",
            "zz\r\nhello\r\n0\r\n\r\n",
            400,
            Some("H400"),
        ),
        case(
            "announced-too-large",
            "echo",
            "POST /up HTTP/1.1\r\nContent-Length: 100",
            "",
            413,
            Some("H413"),
        ),
        case(
            "chunked-too-large",
            "echo",
            "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked",
            "14\r\n01234567890123456789\r\n0\r\n\r\n",
            413,
            Some("H413"),
        ),
        case(
            "upload-stalls",
            "echo",
            "POST /up HTTP/1.1\r\nContent-Length: 8",
            "abc",
            408,
            Some("H28"),
        ),
        case(
            "no-answer",
            "silent",
            "GET / HTTP/1.1",
            "",
            503,
            Some("H12"),
        ),
        case("hang-up", "hangsup", "GET / HTTP/1.1", "", 502, Some("H13")),
        case(
            "not-http",
            "garbage",
            "GET / HTTP/1.1",
            "",
            502,
            Some("H13"),
        ),
        case(
            "broken-body",
            "breaksoff",
            "GET / HTTP/1.1",
            "",
            200,
            Some("H18"),
        ),
        case("refused", "refused", "GET / HTTP/1.1", "", 502, Some("H21")),
        case("crashed", "crashed", "GET / HTTP/1.1", "", 503, Some("H10")),
        case("no-web", "noweb", "GET / HTTP/1.1", "", 503, Some("H14")),
    ]
}

/// What one path made of a case.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    line: String,
    /// What the app received, as the echo app reports it.
    app_saw: String,
}

async fn run(fast_path: bool) -> Vec<(&'static str, Seen)> {
    let router = TestRouter::start(fast_path, short_timeouts()).await;
    let options = AppOptions {
        max_body: 10,
        ..AppOptions::default()
    };
    let refused = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let apps = [
        ("echo", app(echo).await),
        ("silent", app(silent).await),
        ("hangsup", app(hangs_up).await),
        ("garbage", app(garbage).await),
        ("breaksoff", app(breaks_off).await),
        ("refused", refused),
    ];
    for (name, addr) in apps {
        router.table.set_with(
            &AppName::parse(name).unwrap(),
            AppTarget::Upstreams(vec![Upstream::new(addr, "web.1")]),
            options.clone(),
        );
    }
    for (name, code, desc) in [
        ("crashed", "H10", "App crashed"),
        ("noweb", "H14", "No web processes running"),
    ] {
        router.table.set(
            &AppName::parse(name).unwrap(),
            AppTarget::Unavailable(Unavailable {
                code,
                desc,
                hint: "try later".into(),
            }),
        );
    }
    let port = router.addr.port().to_string();
    let mut seen = Vec::new();
    for case in table() {
        let answer = exchange(router.addr, case.raw.as_bytes()).await;
        let rid = format!("parity-{}-0123456789", case.name);
        let line = router
            .line(&rid)
            .await
            .map(|(_, l)| normalized(&l))
            .unwrap_or_else(|| format!("no access log line for {}", case.name));
        let app_saw = if case.app == "echo" && answer.status == 200 {
            String::from_utf8_lossy(&answer.body).replace(&port, "PORT")
        } else {
            String::new()
        };
        seen.push((
            case.name,
            Seen {
                status: answer.status,
                line,
                app_saw,
            },
        ));
    }
    seen
}

#[tokio::test]
async fn both_paths_answer_the_same_table_the_same_way() {
    let fast = run(true).await;
    let general = run(false).await;
    for ((case, (name, f)), (_, g)) in table().iter().zip(&fast).zip(&general) {
        assert_eq!(f, g, "{name}: the fast path and the general path differ");
        assert_eq!(f.status, case.status, "{name}: {f:?}");
        match case.code {
            Some(code) => assert!(
                f.line.starts_with(&format!("at=error code={code} ")),
                "{name}: {}",
                f.line
            ),
            None => assert!(f.line.starts_with("at=info "), "{name}: {}", f.line),
        }
        assert!(
            f.line.contains(&format!(" status={} ", case.status)),
            "{name}: {}",
            f.line
        );
    }
    let spoofed = &fast[1].1.app_saw;
    assert!(
        spoofed.contains("xff=10.9.9.9, 127.0.0.1 proto=http port=PORT"),
        "{spoofed}"
    );
    assert!(spoofed.contains("via=1.0 other"), "{spoofed}");
    assert!(
        fast[0]
            .1
            .app_saw
            .contains("line=GET /hello?x=1 HTTP/1.1 host=echo.localhost xff=127.0.0.1 proto=http port=PORT rid=parity-get-0123456789"),
        "{}",
        fast[0].1.app_saw
    );
    assert!(
        fast[3].1.app_saw.ends_with("body=15"),
        "{}",
        fast[3].1.app_saw
    );
}

#[tokio::test]
async fn unclear_hosts_get_400_on_both_paths_and_never_reach_an_app() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    for fast_path in [true, false] {
        let router = TestRouter::start(fast_path, short_timeouts()).await;
        let reached = Arc::new(AtomicUsize::new(0));
        let count = reached.clone();
        let addr = app(move |s| {
            count.fetch_add(1, Ordering::SeqCst);
            echo(s)
        })
        .await;
        router.table.set(
            &AppName::parse("echo").unwrap(),
            AppTarget::Upstreams(vec![Upstream::new(addr, "web.1")]),
        );
        for raw in [
            "GET / HTTP/1.1\r\nHost: echo.localhost\r\nHost: other.localhost\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1] status=200 request_id=forged\r\nConnection: close\r\n\r\n",
            "GET http://other.localhost/ HTTP/1.1\r\nHost: echo.localhost\r\nConnection: close\r\n\r\n",
            "GET http://echo.localhost/ HTTP/1.1\r\nHost: other.localhost\r\nConnection: close\r\n\r\n",
        ] {
            let a = exchange(router.addr, raw.as_bytes()).await;
            assert_eq!(a.status, 400, "fast path {fast_path}: {raw:?}: {a:?}");
            assert!(String::from_utf8_lossy(&a.body).contains("H400"));
        }
        // An absolute-form target that agrees with Host is fine, and reaches the app.
        let a = exchange(
            router.addr,
            b"GET http://echo.localhost/ok HTTP/1.1\r\nHost: echo.localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            reached.load(Ordering::SeqCst),
            1,
            "only the clear request reached the app"
        );
    }
}
