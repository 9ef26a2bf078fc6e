//! Connection caps over real sockets: one client address cannot hold every connection, the
//! router as a whole holds at most so many, and a closed connection gives its place back.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{TestRouter, app, connect_from, read_answer, read_head, short_timeouts};
use crate::{Admission, AppTarget, Upstream};
use mar_core::AppName;

/// Answers every request `ok`, keeping the connection.
async fn ok(mut s: tokio::net::TcpStream) {
    while read_head(&mut s).await.is_some() {
        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A keep-alive connection from `from` that has had one answered request (so it is admitted
/// and counted).
async fn held(from: &str, router: &TestRouter) -> tokio::net::TcpStream {
    let mut s = connect_from(from, router.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: ok.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s
}

async fn status_from(from: &str, router: &TestRouter) -> (u16, String) {
    let mut s = connect_from(from, router.addr).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: ok.localhost\r\nConnection: close\r\n\r\n")
        .await;
    let a = read_answer(&mut s).await;
    (a.status, String::from_utf8_lossy(&a.body).into_owned())
}

#[tokio::test]
async fn one_client_cannot_hold_every_connection() {
    let admission = Admission::new(5, 3);
    let router = TestRouter::start_admitting(true, short_timeouts(), Arc::clone(&admission)).await;
    let addr = app(ok).await;
    router.table.set(
        &AppName::parse("ok").unwrap(),
        AppTarget::Upstreams(vec![Upstream::new(addr, "web.1")]),
    );
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(held("127.0.0.1", &router).await);
    }
    // A fourth from the same address is refused, told why, and reaches no app.
    let (status, body) = status_from("127.0.0.1", &router).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("too many connections from your address"),
        "{body}"
    );
    // Another client is still served.
    let theirs = held("127.0.0.2", &router).await;
    let _more = held("127.0.0.3", &router).await;
    // Now the router is full (5): a new client is refused too.
    let (status, body) = status_from("127.0.0.4", &router).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection limit"), "{body}");
    assert_eq!(admission.refused(), 2);
    // A closed connection gives its place back.
    drop(mine.pop());
    drop(theirs);
    for _ in 0..100 {
        if admission.open() <= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status_from("127.0.0.1", &router).await.0, 200);
}
