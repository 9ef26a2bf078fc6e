//! An in-process target gets what an app behind a port gets: forwarded headers and the
//! connection's facts, an access log line, metrics, the body limit, the upload's idle window,
//! the first-byte timeout, the same error pages, an in-flight count that a switch drains, and
//! WebSocket upgrades.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::{TestRouter, exchange, short_timeouts};
use crate::{AppOptions, AppTarget, Body, Handler, InProcessTarget, ResponseFuture};
use mar_core::AppName;

/// A test handler: reports what it was given, and behaves as the path asks.
struct Probe {
    calls: AtomicUsize,
    /// `/held` waits for a permit here.
    gate: Arc<Semaphore>,
    label: &'static str,
}

impl Probe {
    fn new(label: &'static str) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Arc::new(Semaphore::new(0)),
            label,
        })
    }
}

impl Handler for Probe {
    fn call(&self, mut req: http::Request<Body>) -> ResponseFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (gate, label) = (self.gate.clone(), self.label);
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            match path.as_str() {
                "/slow" => tokio::time::sleep(Duration::from_secs(3)).await,
                "/panic" => panic!("the probe was asked to panic"),
                // A handler whose own deadline passed (a stopped WASM guest) says so.
                "/deadline" => {
                    let mut r = http::Response::new(crate::full("guest stopped"));
                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    r.extensions_mut().insert(mar_http::TimedOut);
                    return r;
                }
                "/held" => drop(gate.acquire().await),
                "/ws" => {
                    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                        return http::Response::builder()
                            .status(400)
                            .body(crate::full("no key"))
                            .unwrap();
                    };
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let io = TokioIo::new(upgrade.await.unwrap());
                        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                            io,
                            tokio_tungstenite::tungstenite::protocol::Role::Server,
                            None,
                        )
                        .await;
                        while let Some(Ok(Message::Text(t))) = ws.next().await {
                            let _ = ws.send(Message::text(format!("echo {t}"))).await;
                        }
                    });
                    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                        key.as_bytes(),
                    );
                    return http::Response::builder()
                        .status(101)
                        .header("upgrade", "websocket")
                        .header("connection", "upgrade")
                        .header("sec-websocket-accept", accept)
                        .body(crate::full(""))
                        .unwrap();
                }
                _ => {}
            }
            // In a block: a reference to the request (whose body is not `Sync`) must not live
            // across the await below.
            let heads = {
                let facts = mar_http::Connection::of(&req).cloned();
                let h = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned()
                };
                format!(
                    "{label} xff={} proto={} rid={} via={} conn-rid={} scheme={} hop={}",
                    h("x-forwarded-for"),
                    h("x-forwarded-proto"),
                    h("x-request-id"),
                    h("via"),
                    facts.as_ref().map_or("-", |f| f.request_id.as_str()),
                    facts.as_ref().map_or("-", |f| f.scheme.as_str()),
                    h("x-secret"),
                )
            };
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len(),
                // A body the router cut: the handler answers as best it can; the router's page
                // must win.
                Err(_) => {
                    return http::Response::builder()
                        .status(400)
                        .body(crate::full("handler saw a broken body"))
                        .unwrap();
                }
            };
            http::Response::new(crate::full(format!("{heads} body={body}")))
        })
    }
}

async fn router_with(probe: &Arc<Probe>) -> (TestRouter, InProcessTarget) {
    let router = TestRouter::start(true, short_timeouts()).await;
    let target = InProcessTarget::new("wasm", probe.clone());
    router.table.set_with(
        &AppName::parse("probe").unwrap(),
        AppTarget::InProcess(target.clone()),
        AppOptions {
            max_body: 10,
            ..AppOptions::default()
        },
    );
    (router, target)
}

fn request(path: &str, rid: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: probe.localhost\r\nX-Request-Id: {rid}\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 10.1.1.1\r\n{extra}\r\n{body}"
    )
}

#[tokio::test]
async fn forwarded_headers_access_log_and_metrics() {
    let probe = Probe::new("A");
    let (router, _) = router_with(&probe).await;
    let rid = "inproc-headers-0123456789";
    let a = exchange(
        router.addr,
        request("/x", rid, "Content-Length: 5\r\n", "hello").as_bytes(),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let body = String::from_utf8_lossy(&a.body);
    assert_eq!(
        body,
        format!(
            "A xff=10.1.1.1, 127.0.0.1 proto=http rid={rid} via=1.1 mar conn-rid={rid} scheme=http hop=- body=5"
        )
    );
    let (app, line) = router.line(rid).await.expect("an access log line");
    assert_eq!(app, "probe");
    assert!(
        line.starts_with("at=info method=POST path=\"/x\" host=probe.localhost"),
        "{line}"
    );
    assert!(
        line.contains(" dyno=wasm ") && line.contains(" status=200 bytes="),
        "{line}"
    );
    let metrics = router.metrics.render();
    assert!(
        metrics.contains("mar_http_requests_total{app=\"probe\",status=\"2xx\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_platform_gets_access_log_lines_and_metrics() {
    let router = TestRouter::start(true, short_timeouts()).await;
    let rid = "inproc-platform-0123456789";
    let a = exchange(
        router.addr,
        format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!((a.status, a.body.as_slice()), (200, b"platform".as_slice()));
    assert!(a.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", a.head);
    let (app, line) = router.line(rid).await.expect("an access log line");
    assert_eq!(app, mar_core::PLATFORM_NAME);
    assert!(
        line.contains(" dyno=platform ") && line.contains(" status=200 "),
        "{line}"
    );
    assert!(
        router
            .metrics
            .render()
            .contains("app=\"mar\",status=\"2xx\"} 1")
    );
}

#[tokio::test]
async fn body_limit_idle_upload_timeout_and_panics_get_the_routers_pages() {
    let probe = Probe::new("A");
    let (router, _) = router_with(&probe).await;
    let cases = [
        // Announced too large: refused before the handler is called.
        ("big", "/x", "Content-Length: 100\r\n", "", 413, "H413"),
        // Chunked past the limit: the handler's body read fails; the router answers.
        (
            "chunked",
            "/x",
            "Transfer-Encoding: chunked\r\n",
            "14\r\n01234567890123456789\r\n0\r\n\r\n",
            413,
            "H413",
        ),
        (
            "malformed",
            "/x",
            "Transfer-Encoding: chunked\r\n",
            "zz\r\n",
            400,
            "H400",
        ),
        // The client stops sending its body.
        ("stall", "/x", "Content-Length: 8\r\n", "abc", 408, "H28"),
        // The handler does not answer within the first-byte timeout.
        ("slow", "/slow", "Content-Length: 0\r\n", "", 503, "H12"),
        ("panic", "/panic", "Content-Length: 0\r\n", "", 500, "H500"),
        // The handler's own deadline: the router's timeout page, not the handler's body.
        (
            "deadline",
            "/deadline",
            "Content-Length: 0\r\n",
            "",
            503,
            "H12",
        ),
        // A handler that leaves its whole body unread and never answers: H12 after the idle
        // window and the first-byte timeout, not a request held forever.
        (
            "unread",
            "/slow",
            "Content-Length: 5\r\n",
            "hello",
            503,
            "H12",
        ),
    ];
    for (name, path, extra, body, status, code) in cases {
        let rid = format!("inproc-{name}-0123456789");
        let a = exchange(router.addr, request(path, &rid, extra, body).as_bytes()).await;
        assert_eq!(a.status, status, "{name}: {a:?}");
        let page = String::from_utf8_lossy(&a.body);
        assert!(page.contains(code), "{name}: {page}");
        let (_, line) = router.line(&rid).await.expect("an access log line");
        assert!(
            line.starts_with(&format!("at=error code={code} ")) && line.contains(" dyno=wasm "),
            "{name}: {line}"
        );
    }
    // The announced-too-large request never reached the handler: 7 of the 8 did.
    assert_eq!(probe.calls.load(Ordering::SeqCst), 7);
}

#[tokio::test]
async fn a_switch_drains_the_old_handlers_requests() {
    let old = Probe::new("old");
    let (router, old_target) = router_with(&old).await;
    let addr = router.addr;
    let held = tokio::spawn(async move {
        exchange(
            addr,
            request(
                "/held",
                "inproc-held-0123456789",
                "Content-Length: 0\r\n",
                "",
            )
            .as_bytes(),
        )
        .await
    });
    for _ in 0..200 {
        if old_target.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(old_target.in_flight(), 1, "the held request is counted");
    let new = Probe::new("new");
    let new_target = InProcessTarget::new("wasm", new.clone());
    router.table.set(
        &AppName::parse("probe").unwrap(),
        AppTarget::InProcess(new_target.clone()),
    );
    let a = exchange(
        addr,
        request("/x", "inproc-after-0123456789", "Content-Length: 0\r\n", "").as_bytes(),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&a.body).starts_with("new "),
        "{a:?}"
    );
    assert_eq!(
        old_target.in_flight(),
        1,
        "the old handler still has its request"
    );
    assert_eq!(new_target.in_flight(), 0);
    old.gate.add_permits(1);
    let a = held.await.unwrap();
    assert!(
        String::from_utf8_lossy(&a.body).starts_with("old "),
        "{a:?}"
    );
    for _ in 0..200 {
        if old_target.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(old_target.in_flight(), 0, "drained once its response ended");
}

#[tokio::test]
async fn handlers_take_websocket_upgrades() {
    let probe = Probe::new("A");
    let (router, _) = router_with(&probe).await;
    let stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://probe.localhost/ws", stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(got, Ok(Some(Ok(Message::Text(ref t)))) if t.as_str() == "echo hi"),
        "{got:?}"
    );
}
