//! The web console: its page and session rules through real HTTP (cookie flags, CSRF, other
//! sites, signing out for good), and the console itself in headless Chromium (Debian's,
//! driven by playwright-core from `tests/fixtures/browser/console.js`) against a deployed app.

use bytes::Bytes;
use mar_tests::{MarServer, Resp, http, repo_root};

async fn call(
    mar: &MarServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    http(
        mar.addr,
        method,
        &format!("localhost:{}", mar.addr.port()),
        path,
        headers,
        Bytes::from(body.to_owned()),
    )
    .await
}

/// The page comes with a strict policy and no secret; a session opens only with the admin
/// token, in an HttpOnly, SameSite=Strict cookie; a change on it needs its CSRF token and is
/// refused from another site; signing out ends it on the server, so a replayed cookie opens
/// nothing; over HTTPS the cookie is Secure.
#[tokio::test]
async fn console_sessions_guard_the_platform_api() {
    let mar = MarServer::start_with_args(None, &["--https-listen", "127.0.0.1:0"]);
    let token = mar.token();
    let page = call(&mar, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.body.contains("/console/console.js"), "{}", page.body);
    assert!(!page.body.contains(&token));
    let js = call(&mar, "GET", "/console/console.js", &[], "").await;
    assert_eq!(js.status, 200);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        call(&mar, "GET", "/console/../token", &[], "").await.status,
        404
    );

    // No session: the API is closed, and a wrong token opens none.
    assert_eq!(call(&mar, "GET", "/v1/apps", &[], "").await.status, 401);
    assert_eq!(
        call(&mar, "GET", "/console/session", &[], "").await.status,
        401
    );
    let wrong = call(
        &mar,
        "POST",
        "/console/session",
        &[("content-type", "application/json")],
        r#"{"token":"guess"}"#,
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.headers.get("set-cookie").is_none());

    let signed_in = call(
        &mar,
        "POST",
        "/console/session",
        &[("content-type", "application/json")],
        &format!(r#"{{"token":"{token}"}}"#),
    )
    .await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let set_cookie = signed_in.headers["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = signed_in.json()["csrf"].as_str().unwrap().to_owned();
    assert!(!signed_in.body.contains(&token));

    // Reads with the cookie; changes need the token, from this site.
    let apps = call(&mar, "GET", "/v1/apps", &[("cookie", &cookie)], "").await;
    assert_eq!(apps.status, 200, "{}", apps.body);
    let create = |headers: Vec<(&'static str, String)>, name: &'static str| {
        let mar = &mar;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(
                mar,
                "POST",
                "/v1/apps",
                &h,
                &format!(r#"{{"name":"{name}"}}"#),
            )
            .await
        }
    };
    let no_csrf = create(
        vec![
            ("cookie", cookie.clone()),
            ("content-type", "application/json".into()),
        ],
        "forged",
    )
    .await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    assert!(no_csrf.body.contains("X-CSRF-Token"), "{}", no_csrf.body);
    let origin = format!("http://evil.localhost:{}", mar.addr.port());
    let other_site = create(
        vec![
            ("cookie", cookie.clone()),
            ("x-csrf-token", csrf.clone()),
            ("origin", origin),
        ],
        "forged2",
    )
    .await;
    assert_eq!(other_site.status, 403, "{}", other_site.body);
    let fetch_site = create(
        vec![
            ("cookie", cookie.clone()),
            ("x-csrf-token", csrf.clone()),
            ("sec-fetch-site", "cross-site".into()),
        ],
        "forged3",
    )
    .await;
    assert_eq!(fetch_site.status, 403, "{}", fetch_site.body);
    let own = format!("http://localhost:{}", mar.addr.port());
    let made = create(
        vec![
            ("cookie", cookie.clone()),
            ("x-csrf-token", csrf.clone()),
            ("origin", own),
        ],
        "fromconsole",
    )
    .await;
    assert!(made.status < 300, "{}", made.body);
    let names = mar.mar(&["apps", "--json"]).stdout;
    assert!(
        names.contains("fromconsole") && !names.contains("forged"),
        "{names}"
    );

    // Signing out needs the token too, then ends the session for good.
    assert_eq!(
        call(
            &mar,
            "DELETE",
            "/console/session",
            &[("cookie", &cookie)],
            ""
        )
        .await
        .status,
        403
    );
    let out = call(
        &mar,
        "DELETE",
        "/console/session",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        "",
    )
    .await;
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        call(&mar, "GET", "/v1/apps", &[("cookie", &cookie)], "")
            .await
            .status,
        401
    );

    // Over HTTPS the cookie is Secure.
    let https = mar.https_addr.expect("an HTTPS listener");
    let curl = std::process::Command::new("curl")
        .args([
            "-sk",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(format!(r#"{{"token":"{token}"}}"#))
        .arg(format!(
            "https://127.0.0.1:{}/console/session",
            https.port()
        ))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&curl.stdout).to_lowercase();
    assert!(
        head.contains("set-cookie:") && head.contains("; secure"),
        "{head}"
    );
}

/// The console in a browser, against a deployed app: sign in, the app and its release, a
/// config var edited into a release the app sees, live logs, rollback and scale from the
/// page, a chart of the traffic, the builds, the services page, CSRF and other-site refusals,
/// and signing out. Screenshots of each page go to `target/test-artifacts/`.
#[tokio::test]
async fn the_console_works_in_a_browser() {
    let mar = MarServer::start();
    mar.create_app("shown");
    assert!(
        mar.mar(&["config:set", "GREETING=from-the-cli", "-a", "shown"])
            .ok()
    );
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = repo.push(&mar.git_url("shown"), "main");
    assert!(push.ok(), "{}", push.all());
    let dir = repo_root().join("tests/fixtures/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "no playwright-core in {} or no /usr/bin/chromium: run `bash scripts/test.sh`, which installs them",
        dir.display()
    );
    let port = mar.addr.port();
    let shots = repo_root().join("target/test-artifacts");
    let args = vec![
        format!("http://localhost:{port}"),
        mar.token(),
        "shown".to_owned(),
        format!("http://shown.localhost:{port}/env/GREETING"),
        shots.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("console.js")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("console: all steps passed"),
        "{stdout}\n{stderr}"
    );
}
