//! Attacks on the platform, performed for real: what a hostile tenant, or an operator's slip,
//! tries, and what must hold.

use std::process::{Command, Stdio};
use std::time::Duration;

use mar_tests::{MarServer, eventually, mar_bin, repo_root};

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused_and_harms_nothing() {
    let mar = MarServer::start();
    mar.create_app("first");
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = repo.push(&mar.git_url("first"), "main");
    assert!(push.ok(), "{}", push.all());
    let serve_json = std::fs::read_to_string(mar.data_dir.join("serve.json")).unwrap();

    let mut second = Command::new(mar_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&mar.data_dir)
        .env_remove("MAR_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(15), || {
        let status = second.try_wait().unwrap();
        async move { status }
    })
    .await;
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!exited.success(), "the second server must fail: {stderr}");
    assert!(
        stderr.contains(&format!("another `mar serve` (pid {}", mar.pid()))
            && stderr.contains("is using the data directory"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("mar listening"),
        "it must not have listened"
    );
    // The first server, its apps and its serve.json are untouched.
    assert_eq!(
        std::fs::read_to_string(mar.data_dir.join("serve.json")).unwrap(),
        serve_json
    );
    let resp = mar.get("first.localhost", "/").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    // Once the first one has stopped, the directory is free again.
    let mar = mar.restart();
    eventually(Duration::from_secs(30), || async {
        (mar.get("first.localhost", "/").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_name_no_tenant_without_a_token() {
    let mar = MarServer::start();
    mar.create_app("secretive");
    // Traffic for the app (its "no release yet" page) puts it in the metrics.
    assert_eq!(mar.get("secretive.localhost", "/").await.status, 503);
    let anonymous = mar.get("localhost", "/metrics").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(!anonymous.body.contains("secretive"), "{}", anonymous.body);
    let wrong = http(mar.addr, "/metrics", "Bearer not-the-token").await;
    assert_eq!(wrong.status, 401);

    let token = mar.mar(&["auth:token", "--metrics"]);
    assert!(token.ok(), "{}", token.all());
    let token = token.stdout.trim().to_owned();
    assert_eq!(token.len(), 48, "{token}");
    assert_ne!(token, mar.token().trim());
    let scraped = http(mar.addr, "/metrics", &format!("Bearer {token}")).await;
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .body
            .contains("mar_http_requests_total{app=\"secretive\",status=\"5xx\"} 1"),
        "{}",
        scraped.body
    );
    // The metrics token reads metrics and nothing else.
    let apps = http(mar.addr, "/v1/apps", &format!("Bearer {token}")).await;
    assert_eq!(apps.status, 401, "{}", apps.body);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(mar.data_dir.join("metrics_token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

async fn http(addr: std::net::SocketAddr, path: &str, auth: &str) -> mar_tests::Resp {
    mar_tests::http(
        addr,
        "GET",
        "localhost",
        path,
        &[("authorization", auth)],
        bytes::Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn a_build_is_private_from_its_first_byte() {
    let mar = MarServer::start();
    mar.create_app("private");
    assert!(
        mar.mar(&["config:set", "SECRET=hunter2", "-a", "private"])
            .ok()
    );
    let app = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let modes = repo_root().join("tests/fixtures/buildpacks/modes");
    app.write(".buildpacks", &format!("{}\n", modes.display()));
    app.commit("report modes");
    let push = app.push(&mar.git_url("private"), "main");
    assert!(push.ok(), "{}", push.all());
    // `builds/` lets a build's user through to its own build and lists nothing; the build,
    // its env directory and the config var files in it are the app's alone.
    assert!(
        push.stderr
            .contains("modes: builds=711 work=700 env=700 secret=600"),
        "{}",
        push.stderr
    );
    use std::os::unix::fs::PermissionsExt;
    let builds = std::fs::metadata(mar.data_dir.join("builds")).unwrap();
    assert_eq!(builds.permissions().mode() & 0o777, 0o711);
}
