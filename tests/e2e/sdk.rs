//! The Rust SDK's typed service clients against the real server: EDS objects through the
//! typed query builder, a user's sign-in, and an MWS subscriber that recovers what was
//! published while its socket was down.

use mar_sdk::services::{Eds, Event, Mws, Query};
use mar_tests::MarServer;
use serde_json::json;

#[tokio::test]
async fn the_typed_clients_query_objects_and_recover_missed_messages() {
    let mar = MarServer::start();
    let address = format!("http://localhost:{}", mar.addr.port());
    let e = mar.create_service("eds", "sdkdata");
    let g = mar.create_service("mws", "sdkpush");
    let eds = Eds::new(
        &address,
        e["id"].as_str().unwrap(),
        e["secret"].as_str().unwrap(),
    )
    .unwrap();
    let todos = eds.collection("todos");
    for (title, n) in [("a", 1), ("b", 2), ("c", 3)] {
        todos
            .insert(json!({"title": title, "n": n, "done": n == 2}))
            .await
            .unwrap();
    }
    let found = todos
        .find(&Query::new().ne("done", true).gte("n", 1).sort("n", true))
        .await
        .unwrap();
    let titles: Vec<&str> = found.iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["c", "a"]);
    assert_eq!(
        todos
            .count(&Query::new().regex("title", "^[ab]$"))
            .await
            .unwrap(),
        2
    );
    let id = found[0]["id"].as_str().unwrap();
    assert_eq!(
        todos.atomic(id, json!({"$inc": {"n": 10}})).await.unwrap()["n"],
        13
    );
    todos.remove(id).await.unwrap();
    let err = todos.get(id).await.unwrap_err();
    assert!(
        matches!(err, mar_sdk::SdkError::Api { status: 404, .. }),
        "{err}"
    );

    eds.collection("users")
        .insert(json!({"username": "rust", "password": "pw"}))
        .await
        .unwrap();
    let (user, session) = eds.sign_in("rust", "pw").await.unwrap();
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(user.me().await.unwrap()["username"], "rust");
    assert!(matches!(
        eds.sign_in("rust", "wrong").await,
        Err(mar_sdk::SdkError::Api { status: 400, .. })
    ));

    let mws = Mws::new(
        &address,
        g["id"].as_str().unwrap(),
        g["secret"].as_str().unwrap(),
    )
    .unwrap();
    let mut feed = mws.subscribe(&["room"]);
    let first = tokio::spawn(async move {
        let e = feed.next().await;
        (e, feed)
    });
    mar_tests::eventually(std::time::Duration::from_secs(5), || {
        let mws = mws.clone();
        async move { (!mws.sockets(Some("room")).await.unwrap().is_empty()).then_some(()) }
    })
    .await;
    mws.send("one", &json!({"tags": ["room"]})).await.unwrap();
    let (e, mut feed) = first.await.unwrap();
    assert_eq!(e, Event::Message("one".into()));
    // The gateway closes the socket; what is sent meanwhile arrives after the reconnect.
    for s in mws.sockets(Some("room")).await.unwrap() {
        mws.delete_socket(s["id"].as_str().unwrap()).await.unwrap();
    }
    mws.send("two", &json!({"tags": ["room"]})).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .unwrap();
    assert_eq!(next, Event::Message("two".into()));
}

/// The EDS client's files, search and notification stream: a change reaches a follower of
/// the stream, a file goes up in one multipart request and comes back byte for byte through
/// its signed URL, and search finds the indexed words.
#[tokio::test]
async fn the_eds_client_uploads_searches_and_follows_changes() {
    let mar = MarServer::start();
    let address = format!("http://localhost:{}", mar.addr.port());
    let e = mar.create_service("eds", "sdkfiles");
    let eds = Eds::new(
        &address,
        e["id"].as_str().unwrap(),
        e["secret"].as_str().unwrap(),
    )
    .unwrap();
    eds.declare_type(json!({
        "name": "photos",
        "properties": [{"name": "title", "type": "string", "indexed": true}],
        "settings": {"websocket": true},
    }))
    .await
    .unwrap();
    let mut changes = eds
        .notifications(json!({"data": {"objectType": "objects.photos"}}))
        .await
        .unwrap();
    let photo = eds
        .collection("photos")
        .insert(json!({"title": "sunset over the sea"}))
        .await
        .unwrap();
    let id = photo["id"].as_str().unwrap();
    let change = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change["event"], "create", "{change}");
    assert_eq!(change["data"]["title"], "sunset over the sea", "{change}");

    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let file = eds
        .upload(
            "photos",
            id,
            "picture",
            "sunset.bin",
            "application/octet-stream",
            &bytes,
        )
        .await
        .unwrap();
    assert_eq!(
        (file["fileSize"].as_u64(), file["status"].as_str()),
        (Some(100_000), Some("complete"))
    );
    let back = eds.download(file["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(back.as_ref(), bytes.as_slice(), "the same bytes");

    let found = eds.search("sunset", &["photos"]).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        eds.search("moonrise", &["photos"])
            .await
            .unwrap()
            .is_empty()
    );
}
