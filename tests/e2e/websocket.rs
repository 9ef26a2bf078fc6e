//! The talk's first demo: Qt's WebSocket echo server deployed with `git push` and reached
//! through the router with a real WebSocket client.

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
