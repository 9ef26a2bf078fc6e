//! The talk's first demo: Qt's WebSocket echo server deployed with `git push` and reached
//! through the router with real WebSocket clients: tungstenite, the example's own Qt client
//! (built with qmake here) across the 60 s idle rule, and its page in headless Chromium.

use futures_util::{SinkExt, StreamExt};
use mar_tests::{MarServer, repo_root};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn qt_echo_server_deploys_and_echoes_through_the_router() {
    let mar = MarServer::start();
    mar.create_app("echo");
    let repo = mar.repo_from(&repo_root().join("examples/echo-qt"));
    let push = repo.push(&mar.git_url("echo"), "main");
    assert!(push.ok(), "push failed:\n{}", push.all());
    assert!(
        push.stderr.contains("remote: -----> Qt app detected"),
        "{}",
        push.stderr
    );
    assert!(
        push.stderr.contains("Launching... done, v1"),
        "{}",
        push.stderr
    );

    let mut req = format!("ws://{}/", mar.addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("host", "echo.localhost".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["hello", "über", &"x".repeat(70_000)] {
        ws.send(Message::text(text)).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
}

/// The echo demo's own clients: the Qt client, built with qmake, echoes, stays idle for 90 s
/// (the server's pings every 50 s keep the connection under the router's 60 s idle rule) and
/// echoes again; the browser page echoes in Chromium.
#[tokio::test]
async fn the_echo_demos_qt_client_outlives_the_idle_rule_and_its_page_echoes() {
    let mar = MarServer::start();
    mar.create_app("echo");
    let repo = mar.repo_from(&repo_root().join("examples/echo-qt"));
    let push = repo.push(&mar.git_url("echo"), "main");
    assert!(push.ok(), "push failed:\n{}", push.all());
    let url = format!("ws://echo.localhost:{}/", mar.addr.port());

    // The Qt client, built from the example's sources as a user would.
    let build = crate::demos::qmake_build("examples/echo-qt/client");
    let qt = {
        let (dir, url) = (build.path().to_owned(), url.clone());
        tokio::task::spawn_blocking(move || {
            crate::demos::with_host(
                &dir,
                "echo.localhost",
                &dir.join("echoclient"),
                &[&url, "90"],
            )
            .output()
            .unwrap()
        })
    };

    // Meanwhile, the page in Chromium.
    let dir = repo_root().join("tests/fixtures/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "no playwright-core: run `bash scripts/test.sh`"
    );
    let page = repo_root().join("examples/echo-qt/page/index.html");
    let shots = repo_root().join("target/test-artifacts");
    let browser = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .arg("echo.js")
                .arg(&page)
                .arg(&url)
                .arg(&shots)
                .current_dir(&dir)
                .output()
                .unwrap()
        })
    };
    let out = browser.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("echoed in the browser"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = qt.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "connected",
        "echo: hello from Qt",
        "echo: still here after 90 s",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}\n{stderr}");
    }
}
