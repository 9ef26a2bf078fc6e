//! Requests for an app whose web process is booting (H20) are held until it is up, as
//! Heroku's router queues them, and get H20 only when the wait is over; a crash (H10) ends the
//! wait at once.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::{TestRouter, app, exchange, read_head, short_timeouts};
use crate::{AppTarget, MAX_HELD_PER_APP, Timeouts, Unavailable, Upstream};
use mar_core::AppName;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: slow.localhost\r\nX-Request-Id: booting-request-0123456789\r\nConnection: close\r\n\r\n";

fn booting() -> AppTarget {
    AppTarget::Unavailable(Unavailable {
        code: "H20",
        desc: "App boot in progress",
        hint: "starting".into(),
    })
}

/// A test router whose requests wait `boot_wait` for a booting app.
async fn router_waiting(fast_path: bool, boot_wait: Duration) -> TestRouter {
    TestRouter::start(
        fast_path,
        Timeouts {
            boot_wait,
            ..short_timeouts()
        },
    )
    .await
}

/// Waits until `n` requests are held for `app` (they have reached the router and wait).
async fn until_held(router: &TestRouter, app: &AppName, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.table.held(app) < n {
        assert!(
            Instant::now() < deadline,
            "held: {}",
            router.table.held(app)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ok(mut s: tokio::net::TcpStream) {
    if read_head(&mut s).await.is_some() {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nup")
            .await;
    }
}

#[tokio::test]
async fn a_request_waits_for_the_boot_and_is_answered_by_the_new_instance() {
    for fast_path in [true, false] {
        let router = router_waiting(fast_path, Duration::from_secs(10)).await;
        let name = AppName::parse("slow").unwrap();
        router.table.set(&name, booting());
        let addr = router.addr;
        let asked = Instant::now();
        let answer = tokio::spawn(async move { exchange(addr, GET).await });
        until_held(&router, &name, 1).await;
        // The instance comes up 300 ms later (another app's change first: not a wake-up that
        // ends the wait).
        tokio::time::sleep(Duration::from_millis(300)).await;
        router
            .table
            .set(&AppName::parse("other").unwrap(), booting());
        let up = app(ok).await;
        router.table.set(
            &name,
            AppTarget::Upstreams(vec![Upstream::new(up, "web.1")]),
        );
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, 200, "fast path {fast_path}: {answer:?}");
        assert_eq!(answer.body, b"up");
        assert!(asked.elapsed() >= Duration::from_millis(300));
        // The access log's service time counts the wait.
        let (_, line) = router.line("booting-request-0123456789").await.unwrap();
        assert!(line.contains("status=200"), "{line}");
    }
}

#[tokio::test]
async fn a_boot_that_takes_too_long_gets_h20_and_a_crash_ends_the_wait() {
    let router = TestRouter::start(true, short_timeouts()).await;
    let name = AppName::parse("slow").unwrap();
    router.table.set(&name, booting());
    let asked = Instant::now();
    let answer = exchange(router.addr, GET).await;
    let waited = asked.elapsed();
    assert_eq!(answer.status, 503);
    assert!(String::from_utf8_lossy(&answer.body).contains("H20"));
    // short_timeouts' boot_wait is 700 ms.
    assert!(waited >= Duration::from_millis(700), "{waited:?}");

    let addr = router.addr;
    let answer = tokio::spawn(async move { exchange(addr, GET).await });
    until_held(&router, &name, 1).await;
    router.table.set(
        &name,
        AppTarget::Unavailable(Unavailable {
            code: "H10",
            desc: "App crashed",
            hint: "see the logs".into(),
        }),
    );
    let answer = answer.await.unwrap();
    assert_eq!(answer.status, 503);
    assert!(String::from_utf8_lossy(&answer.body).contains("H10"));

    // boot_wait 0: H20 at once.
    let at_once = router_waiting(true, Duration::ZERO).await;
    at_once.table.set(&name, booting());
    let asked = Instant::now();
    let answer = exchange(at_once.addr, GET).await;
    assert_eq!(answer.status, 503);
    assert!(asked.elapsed() < Duration::from_millis(600));
}

#[tokio::test]
async fn at_most_so_many_requests_are_held_for_one_app_and_the_rest_get_h20_at_once() {
    let router = router_waiting(false, Duration::from_secs(20)).await;
    let name = AppName::parse("slow").unwrap();
    router.table.set(&name, booting());
    let held: Vec<_> = (0..MAX_HELD_PER_APP)
        .map(|_| {
            let addr = router.addr;
            tokio::spawn(async move { exchange(addr, GET).await })
        })
        .collect();
    until_held(&router, &name, MAX_HELD_PER_APP).await;
    // One more: not held.
    let asked = Instant::now();
    let answer = exchange(router.addr, GET).await;
    assert_eq!(answer.status, 503);
    assert!(String::from_utf8_lossy(&answer.body).contains("H20"));
    assert!(asked.elapsed() < Duration::from_secs(5));
    // Up: every held one is answered, and their places are given back.
    let up = app(ok).await;
    router.table.set(
        &name,
        AppTarget::Upstreams(vec![Upstream::new(up, "web.1")]),
    );
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(router.table.held(&name), 0);
}
