//! Behaviours the README and ARCHITECTURE.md promise, each shown end to end: WebSockets
//! closed with 1012 on a deploy and 1009 past the size limit, `apps:destroy` of a running app,
//! HTTP/2 requests with bodies, and the H10 and H20 pages.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use mar_tests::{MarServer, eventually, repo_root};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Reads until the server's Close frame; returns its code.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match msg {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test]
async fn a_deploy_closes_old_websockets_with_1012_and_big_messages_get_1009() {
    let mar = MarServer::start();
    mar.deploy_lifecycle(
        "sockets",
        &["MAR_WEBSOCKET_MAX_MESSAGE=64K", "MAR_WAIT_TO_RETIRE=2"],
    );
    // Past the size limit: the router closes with 1009 (message too big).
    let mut big = mar_tests::websocket(&mar, "sockets").await;
    big.send(Message::binary(vec![7u8; 100 << 10]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut big).await, Some(CloseCode::Size));
    // A WebSocket to the old release gets 1012 (service restart) once a deploy retires it.
    let mut old = mar_tests::websocket(&mar, "sockets").await;
    old.send(Message::text("before")).await.unwrap();
    assert_eq!(old.next().await.unwrap().unwrap(), Message::text("before"));
    let redeploy = mar.mar(&["config:set", "GREETING=new", "-a", "sockets"]);
    assert!(redeploy.ok(), "{}", redeploy.all());
    assert_eq!(close_code(&mut old).await, Some(CloseCode::Restart));
    // A new one reaches the new release.
    let mut new = mar_tests::websocket(&mar, "sockets").await;
    new.send(Message::text("after")).await.unwrap();
    assert_eq!(new.next().await.unwrap().unwrap(), Message::text("after"));
}

#[tokio::test]
async fn destroying_a_running_app_stops_it_and_forgets_it() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("doomed", &[]);
    let run = mar.data_dir.join("apps/doomed");
    assert!(
        !mar_tests::pids_where(|p| {
            std::fs::read_link(p.join("cwd")).is_ok_and(|c| c.starts_with(&run))
        })
        .is_empty()
    );
    let out = mar.mar(&["apps:destroy", "doomed", "--confirm", "doomed"]);
    assert!(out.ok(), "{}", out.all());
    assert!(
        mar_tests::pids_where(|p| {
            std::fs::read_link(p.join("cwd")).is_ok_and(|c| c.starts_with(&run))
        })
        .is_empty(),
        "the app's processes outlived it"
    );
    assert!(!run.exists() && !mar.data_dir.join("repos/doomed.git").exists());
    assert_eq!(mar.get("doomed.localhost", "/").await.status, 404);
    assert!(!mar.mar(&["apps", "--json"]).stdout.contains("doomed"));
}

#[tokio::test]
async fn http2_requests_with_bodies_reach_the_app() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("h2body", &[]);
    let stream = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = Bytes::from(vec![b'x'; 300_000]);
    let req = http::Request::post("http://h2body.localhost/echo")
        .body(Full::new(body.clone()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, body);
}

#[tokio::test]
async fn crashed_and_booting_apps_get_their_pages() {
    // Requests for a booting app get H20 at once rather than waiting for the boot, so that
    // page is seen between the crashes.
    let mar = MarServer::start_with(Some("boot_wait: 0\n"));
    mar.create_app("wobbly");
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"));
    // It comes up, then crashes for good a moment later, every time.
    repo.write("Procfile", "web: python3 server.py --crash-after 1\n");
    repo.commit("crashes");
    let push = repo.push(&mar.git_url("wobbly"), "main");
    assert!(push.ok(), "{}", push.all());
    // Between crashes the router says which it is: H10 while crashed, H20 while booting.
    let seen = std::cell::RefCell::new(std::collections::HashSet::new());
    eventually(Duration::from_secs(40), || async {
        // A request the app answers as it crashes is cut off mid-body: that answer says
        // nothing about the pages, so it is skipped rather than taken as a failure.
        let Ok((status, body)) =
            mar_tests::try_request(mar.addr, "GET", "wobbly.localhost", "/", Bytes::new()).await
        else {
            return None;
        };
        for (code, title) in [("H10", "App crashed"), ("H20", "App boot in progress")] {
            if status == 503 && body.contains(code) {
                assert!(body.contains(title), "{body}");
                seen.borrow_mut().insert(code);
            }
        }
        (seen.borrow().len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn one_lifecycle_operation_per_app_at_a_time() {
    let mar = MarServer::start_with(Some("build_timeout: 8\n"));
    mar.deploy_lifecycle("busy", &[]);
    let hanging = repo_root().join("tests/fixtures/buildpacks/hanging");
    assert!(
        mar.mar(&[
            "config:set",
            &format!("BUILDPACK_URL={}", hanging.display()),
            "-a",
            "busy"
        ])
        .ok()
    );
    let releases_before = mar.mar(&["releases", "-a", "busy", "--json"]).stdout;
    // A push whose build hangs holds the app's lock until the build timeout.
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/hanging-build"));
    let (mut push, _stderr, _) = mar_tests::start_hanging_push(&repo, &mar.git_url("busy"));
    for op in [
        vec!["config:set", "OTHER=1", "-a", "busy"],
        vec!["ps:scale", "web=2", "-a", "busy"],
        vec!["ps:restart", "-a", "busy"],
        vec!["rollback", "-a", "busy"],
        vec!["apps:destroy", "busy", "--confirm", "busy"],
    ] {
        let out = mar.mar(&op);
        assert!(
            !out.ok() && out.stderr.contains("another deploy of busy is in progress"),
            "{op:?}: {}",
            out.all()
        );
    }
    // None of them changed anything.
    assert_eq!(
        mar.mar(&["releases", "-a", "busy", "--json"]).stdout,
        releases_before
    );
    assert_eq!(mar.get("busy.localhost", "/").await.status, 200);
    let _ = push.wait();
}

#[tokio::test]
async fn an_apps_log_rotates_past_16_mib() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("chatter", &[]);
    let log = mar.data_dir.join("logs/chatter.log");
    assert_eq!(
        mar.get("chatter.localhost", "/spew?mb=20").await.body,
        "spewed"
    );
    let rotated = mar.data_dir.join("logs/chatter.log.1");
    eventually(Duration::from_secs(20), || async {
        rotated.exists().then_some(())
    })
    .await;
    let (now, old) = (
        std::fs::metadata(&log).unwrap().len(),
        std::fs::metadata(&rotated).unwrap().len(),
    );
    assert!(now < 16 << 20, "the live log is {now} bytes");
    assert!(old >= 16 << 20, "the rotated log is {old} bytes");
    // The log still works after the rotation.
    assert_eq!(mar.get("chatter.localhost", "/").await.status, 200);
    let tail = mar.mar(&["logs", "-a", "chatter", "-n", "5"]);
    assert!(tail.ok() && !tail.stdout.is_empty(), "{}", tail.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("graceful", &[]);
    let addr = mar.addr;
    let slow = tokio::spawn(async move {
        mar_tests::try_get(addr, "graceful.localhost", "/slow?ms=1500").await
    });
    // Once the app has the request, the server is told to stop.
    eventually(Duration::from_secs(10), || async {
        let logs = mar.mar(&["logs", "-a", "graceful", "-n", "50"]).stdout;
        logs.contains("slow request started").then_some(())
    })
    .await;
    let stopped = tokio::task::spawn_blocking(move || mar.stop())
        .await
        .unwrap();
    assert!(stopped.success(), "exit status {stopped}");
    let answer = slow.await.unwrap();
    assert!(
        matches!(answer, Ok((200, ref body)) if body == "slow done"),
        "the request in flight at shutdown was cut: {answer:?}"
    );
}

/// Scaled to three web instances, a deploy where one of the three new instances never boots
/// is rejected as a whole: no release, the old instances keep all the traffic, and none of the
/// new ones is left running.
#[tokio::test]
async fn a_deploy_where_one_of_several_web_instances_fails_to_boot_changes_nothing() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("three", &["MAR_BOOT_TIMEOUT=5"]);
    let out = mar.mar(&["ps:scale", "web=3", "-a", "three"]);
    assert!(out.ok(), "{}", out.all());
    let ps = |mar: &MarServer| -> Vec<(String, i64, String)> {
        let out = mar.mar(&["ps", "-a", "three", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["dyno"].as_str().unwrap().to_owned(),
                    p["release"].as_i64().unwrap(),
                    p["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let before = eventually(Duration::from_secs(30), || async {
        let now = ps(&mar);
        (now.len() == 3 && now.iter().all(|p| p.2 == "up")).then_some(now)
    })
    .await;
    let releases_before = mar.api("GET", "/v1/apps/three/releases", "").await.json()["results"]
        .as_array()
        .unwrap()
        .len();

    // The new release's web.2 exits at once, every time.
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"));
    repo.write(
        "Procfile",
        "web: if [ \"$DYNO\" = web.2 ]; then echo web.2 refuses to start; exit 1; fi; exec python3 server.py\n",
    );
    repo.commit("web.2 fails");
    let push = repo.push(&mar.git_url("three"), "main");
    assert!(!push.ok(), "{}", push.all());
    assert!(push.stderr.contains("web.2"), "{}", push.stderr);
    assert!(
        push.stderr.contains("the previous release keeps serving"),
        "{}",
        push.stderr
    );

    assert_eq!(ps(&mar), before, "the old instances are the ones running");
    let releases = mar.api("GET", "/v1/apps/three/releases", "").await.json()["results"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(releases, releases_before);
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let r = mar.get("three.localhost", "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        served.insert(r.body);
    }
    assert_eq!(served.len(), 3, "all three old instances serve: {served:?}");
    // Nothing of the new release runs: no process was started from a run directory other
    // than the old instances'.
    let run = mar.data_dir.join("apps/three/run");
    let dirs: Vec<_> = std::fs::read_dir(&run).unwrap().flatten().collect();
    assert_eq!(
        dirs.len(),
        1,
        "the failed build's run directory is gone: {dirs:?}"
    );
}
