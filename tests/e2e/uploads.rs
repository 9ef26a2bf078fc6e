//! Request bodies through the router, on the fast path and on the general (hyper) path: an
//! app that answers before it has read the upload, an app that answers while it reads,
//! uploads that stall and uploads that are merely slow.

use std::time::Duration;

use mar_tests::{MarServer, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `Expect: 100-continue` sends a request down the general path.
const PATHS: [(&str, &str); 2] = [("fast", ""), ("general", "Expect: 100-continue\r\n")];

/// Reads until `needle` has arrived (or fails after 10 s: the answer is stuck).
async fn read_until(s: &mut (impl AsyncReadExt + Unpin), seen: &mut String, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        true
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "waited for {needle:?}, got: {seen}"
    );
}

/// Connects and sends the head of `POST path` to `APP.localhost` with a Content-Length, and
/// `extra` header lines (each ending in CRLF); the body is the caller's to send.
async fn post_head(
    addr: std::net::SocketAddr,
    app: &str,
    path: &str,
    length: usize,
    extra: &str,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {app}.localhost\r\nContent-Length: {length}\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Sends `size` bytes of body in the background, as a real client does while it watches for
/// an answer; stops at the first write error (the router closed the connection).
fn upload_in_background(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    size: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < size {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
    })
}

#[tokio::test]
async fn an_early_answer_reaches_a_client_still_uploading() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("early", &[]);
    for (path, extra) in PATHS {
        let size = 16usize << 20;
        let (mut rd, wr) = post_head(mar.addr, "early", "/early", size, extra)
            .await
            .into_split();
        let writer = upload_in_background(wr, size);
        let mut answer = String::new();
        read_until(&mut rd, &mut answer, "too big for me").await;
        assert!(
            answer.contains("HTTP/1.1 413"),
            "{path} path: the app's own answer, not a router error: {answer}"
        );
        if path == "fast" {
            // The client's body was not read to its end: the connection cannot carry another
            // request, says so, and ends.
            assert!(
                answer.to_ascii_lowercase().contains("connection: close"),
                "{answer}"
            );
            let mut rest = Vec::new();
            let ended =
                tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut rest)).await;
            assert!(ended.is_ok(), "the router must close the connection");
        }
        writer.abort();
    }
    let logs = eventually(Duration::from_secs(5), || async {
        let l = mar.mar(&["logs", "-a", "early", "--ps", "router"]).stdout;
        (l.matches("status=413").count() >= 2).then_some(l)
    })
    .await;
    assert!(!logs.contains("code=H13"), "{logs}");
}

#[tokio::test]
async fn an_app_streams_its_answer_while_it_reads_the_upload() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("duplex", &[]);
    for (path, extra) in PATHS {
        let mut s = post_head(mar.addr, "duplex", "/duplex?parts=4", 4000, extra).await;
        let mut answer = String::new();
        // Each part goes out only once the app has answered the one before: a router that
        // waits for the whole body before it reads the response never gets past part 1.
        for part in 1..=4 {
            s.write_all(&[b'y'; 1000]).await.unwrap();
            read_until(&mut s, &mut answer, &format!("got {part} 1000")).await;
        }
        read_until(&mut s, &mut answer, "0\r\n\r\n").await;
        assert!(answer.contains("HTTP/1.1 200"), "{path} path: {answer}");
    }
}

#[tokio::test]
async fn a_body_sent_after_its_head_keeps_the_connection_in_step() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("later", &[]);
    let mut s = post_head(mar.addr, "later", "/echo", 5, "").await;
    // The body follows on its own, as from a client that sends it once the head is out (it
    // may still reach the router together with the head; then this tests less, not wrongly).
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"hello").await.unwrap();
    let mut answer = String::new();
    read_until(&mut s, &mut answer, "\r\n\r\nhello").await;
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    s.write_all(b"GET /env/DYNO HTTP/1.1\r\nHost: later.localhost\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut answer, "web.1").await;
}

#[tokio::test]
async fn stalled_uploads_and_apps_that_stop_reading_time_out_but_slow_uploads_do_not() {
    let mar = MarServer::start_with(Some("request_timeout: 2\nresponse_idle_timeout: 3\n"));
    mar.deploy_lifecycle("uploads", &[]);
    let stalled = |extra: &'static str| {
        let addr = mar.addr;
        async move {
            let mut s = post_head(addr, "uploads", "/echo", 100, extra).await;
            s.write_all(b"0123456789").await.unwrap();
            let mut answer = String::new();
            read_until(&mut s, &mut answer, "H28").await;
            answer
        }
    };
    // An app that never reads the body: the upload stops moving, and after the idle window
    // and the first-byte timeout the client gets H12.
    let ignored = |extra: &'static str| {
        let addr = mar.addr;
        async move {
            let size = 64usize << 20;
            let (mut rd, wr) = post_head(addr, "uploads", "/ignore", size, extra)
                .await
                .into_split();
            let writer = upload_in_background(wr, size);
            let mut answer = String::new();
            read_until(&mut rd, &mut answer, "H12").await;
            writer.abort();
            answer
        }
    };
    // Ten bytes a second for five seconds: longer than the first-byte timeout in all, but
    // never idle for the idle window.
    let slow = |extra: &'static str| {
        let addr = mar.addr;
        async move {
            let extra = format!("Connection: close\r\n{extra}");
            let mut s = post_head(addr, "uploads", "/echo", 50, &extra).await;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                s.write_all(b"0123456789").await.unwrap();
            }
            let mut answer = String::new();
            read_until(&mut s, &mut answer, &"0123456789".repeat(5)).await;
            answer
        }
    };
    let (fast_stalled, general_stalled, fast_slow, general_slow, fast_ignored, general_ignored) = tokio::join!(
        stalled(PATHS[0].1),
        stalled(PATHS[1].1),
        slow(PATHS[0].1),
        slow(PATHS[1].1),
        ignored(PATHS[0].1),
        ignored(PATHS[1].1)
    );
    for answer in [&fast_ignored, &general_ignored] {
        assert!(answer.contains("HTTP/1.1 503"), "{answer}");
    }
    // hyper's client on its own would wait for the stuck write forever.
    assert!(
        general_ignored.contains("stopped reading the request"),
        "{general_ignored}"
    );
    for answer in [fast_stalled, general_stalled] {
        assert!(answer.contains("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("Client connection idle"), "{answer}");
    }
    for answer in [fast_slow, general_slow] {
        assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    }
    let logs = eventually(Duration::from_secs(5), || async {
        let l = mar.mar(&["logs", "-a", "uploads", "--ps", "router"]).stdout;
        (l.matches("code=H28").count() >= 2 && l.matches("code=H12").count() >= 2).then_some(l)
    })
    .await;
    assert_eq!(
        logs.matches("code=H12").count(),
        2,
        "only the ignored uploads: {logs}"
    );
}
