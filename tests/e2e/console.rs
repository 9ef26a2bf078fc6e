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
    // Only JSON signs in (no HTML form can send it); anything else gets the API's JSON error.
    for (content_type, body, status) in [
        ("text/plain", format!(r#"{{"token":"{token}"}}"#), 415),
        (
            "application/x-www-form-urlencoded",
            format!("token={token}"),
            415,
        ),
        ("application/json", "token please".to_owned(), 400),
        ("application/json", r#"{"tok":"x"}"#.to_owned(), 400),
    ] {
        let r = call(
            &mar,
            "POST",
            "/console/session",
            &[("content-type", content_type)],
            &body,
        )
        .await;
        assert_eq!(r.status, status, "{content_type}: {}", r.body);
        assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
        assert!(r.headers.get("set-cookie").is_none());
    }

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

    // Cookie tossing: an app's page (APP.DOMAIN, a sibling of the console's host) can set a
    // `mar_console` cookie for the parent domain with a longer path, which the browser then
    // sends first. The session still opens with the real one beside it, in any order and in
    // separate Cookie headers (it used to be only the first, locking the admin out).
    for tossed in [
        vec![format!("mar_console=junk; {cookie}")],
        vec![format!("{cookie}; mar_console=")],
        vec!["mar_console=junk".to_owned(), cookie.clone()],
    ] {
        let h: Vec<(&str, &str)> = tossed.iter().map(|c| ("cookie", c.as_str())).collect();
        let r = call(&mar, "GET", "/v1/apps", &h, "").await;
        assert_eq!(r.status, 200, "{tossed:?}: {}", r.body);
        let r = call(&mar, "GET", "/console/session", &h, "").await;
        assert_eq!(r.status, 200, "{tossed:?}: {}", r.body);
    }
    // A request an app's page makes (same site, another origin: `<script src>`, `<img>`,
    // which send no Origin) is not served on the session.
    let sibling = call(
        &mar,
        "GET",
        "/v1/apps",
        &[("cookie", &cookie), ("sec-fetch-site", "same-site")],
        "",
    )
    .await;
    assert_eq!(sibling.status, 403, "{}", sibling.body);
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
/// page, a chart of the traffic, the builds, a slow build's output streaming into the page
/// while it runs, the services (a gateway's test message reaching a real WebSocket; a
/// backend's object, its ACL, users, groups and link to the gateway), CSRF and other-site
/// refusals, and signing out. Screenshots of each page go to `target/test-artifacts/`.
#[tokio::test]
async fn the_console_works_in_a_browser() {
    let mar = MarServer::start();
    mar.create_app("shown");
    assert!(
        mar.mar(&["config:set", "GREETING=from-the-cli", "-a", "shown"])
            .ok()
    );
    // Values the page must show as text (the driver fails on any element of class "pwned").
    let hostile = r#"<b class="pwned">hostile</b><img class="pwned" src="x" onerror="window.pwned=1"></pre><script class="pwned">window.pwned=2</script>"#;
    assert!(
        mar.mar(&["config:set", &format!("HOSTILE={hostile}"), "-a", "shown"])
            .ok()
    );
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = repo.push(&mar.git_url("shown"), "main");
    assert!(push.ok(), "{}", push.all());
    let dir = mar_tests::browser_drivers();
    let port = mar.addr.port();

    // Services: a gateway and a backend holding one object, the backend linked to the gateway.
    mar.create_service("mws", "console-push");
    mar.create_service("eds", "console-data");
    let info = mar.mar(&["services:info", "console-data", "--json"]);
    assert!(info.ok(), "{}", info.all());
    let info: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    let (backend, secret) = (
        info["id"].as_str().unwrap().to_owned(),
        info["secret"].as_str().unwrap().to_owned(),
    );
    let auth = format!("Bearer {secret}");
    let created = mar_tests::json_call(
        mar.addr,
        "POST",
        "/v1/objects/todos",
        &[("enginio-backend-id", &backend), ("authorization", &auth)],
        serde_json::json!({"title": "shown in the console", "done": false, "note": hostile}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let object = created.json()["id"].as_str().unwrap().to_owned();
    let link = mar.mar(&["services:link", "console-data", "console-push"]);
    assert!(link.ok(), "{}", link.all());

    // A second app whose build is slow (the `slow` buildpack), its push left to the driver,
    // which runs it while the builds page watches.
    mar.create_app("slowbuilt");
    let slow = repo_root().join("tests/fixtures/buildpacks/slow");
    let set = mar.mar(&[
        "config:set",
        &format!("BUILDPACK_URL={}", slow.display()),
        "-a",
        "slowbuilt",
    ]);
    assert!(set.ok(), "{}", set.all());
    let slow_repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push_cmd =
        shell_line(&slow_repo.cmd(&["push", "--force", &mar.git_url("slowbuilt"), "main"]));

    let shots = repo_root().join("target/test-artifacts");
    let args = vec![
        format!("http://localhost:{port}"),
        mar.token(),
        "shown".to_owned(),
        format!("http://shown.localhost:{port}/env/GREETING"),
        shots.display().to_string(),
    ];
    let env = vec![
        ("CONSOLE_MWS", "console-push".to_owned()),
        ("CONSOLE_EDS", "console-data".to_owned()),
        ("CONSOLE_EDS_TYPE", "todos".to_owned()),
        ("CONSOLE_EDS_OBJECT", object),
        ("CONSOLE_SLOW_APP", "slowbuilt".to_owned()),
        ("CONSOLE_PUSH_CMD", push_cmd),
    ];
    let stdout = mar_tests::run_node(&dir, "console.js", args, env)
        .await
        .stdout;
    println!("{stdout}");
    assert!(stdout.contains("console: all steps passed"), "{stdout}");
}

/// `cmd` as one `sh -c` line: its directory, its environment changes (`env -u` for removals)
/// and its arguments, each quoted.
fn shell_line(cmd: &std::process::Command) -> String {
    fn quote(s: &std::ffi::OsStr) -> String {
        format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
    }
    let mut line = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!("cd {} && ", quote(dir.as_os_str())));
    }
    line.push_str("env");
    // Removals first: `env` takes its options before any NAME=VALUE.
    let (set, unset): (Vec<_>, Vec<_>) = cmd.get_envs().partition(|(_, v)| v.is_some());
    for (k, _) in unset {
        line.push_str(&format!(" -u {}", k.to_string_lossy()));
    }
    for (k, v) in set {
        let v = v.unwrap_or_default();
        line.push_str(&format!(" {}={}", k.to_string_lossy(), quote(v)));
    }
    line.push(' ');
    line.push_str(&quote(cmd.get_program()));
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line
}

/// The live log as Server-Sent Events (what the console's `EventSource` reads): a comment
/// first, then one `data:` event per line, the backlog and then new lines as they happen;
/// without `Accept: text/event-stream` the same stream is plain lines, as `mar logs -t`
/// reads it.
#[tokio::test]
async fn the_live_log_is_served_as_server_sent_events() {
    let mar = MarServer::start();
    mar.create_app("evented");
    let url = format!(
        "http://localhost:{}/v1/apps/evented/logs/stream?lines=10",
        mar.addr.port()
    );
    // Each stream read as it arrives, so the test waits for what it needs, not for a time.
    let curl = |accept: &str| {
        let mut child = std::process::Command::new("curl")
            .args(["-sN", "--max-time", "60", "-H"])
            .arg(format!("Authorization: Bearer {}", mar.token()))
            .args(["-H", accept, "-D", "-"])
            .arg(&url)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let into = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (child, seen)
    };
    let until_both_say = |streams: [&std::sync::Arc<std::sync::Mutex<String>>; 2], what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !streams.iter().all(|s| s.lock().unwrap().contains(what)) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what:?} in both streams"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let (mut events_curl, events) = curl("Accept: text/event-stream");
    let (mut plain_curl, plain) = curl("Accept: */*");
    // The backlog came, so each stream has subscribed (before its headers were sent): a line
    // that happens now, the router's for a request, reaches both.
    until_both_say([&events, &plain], "App created");
    mar.get("evented.localhost", "/LIVE-probe").await;
    until_both_say([&events, &plain], "LIVE-probe");
    for c in [&mut events_curl, &mut plain_curl] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let events = events.lock().unwrap().clone();
    let plain = plain.lock().unwrap().clone();
    assert!(
        events.contains("content-type: text/event-stream")
            && events.contains("\r\n\r\n: mini-MAR log stream\n\n"),
        "{events}"
    );
    let data: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(
        data.iter().any(|l| l.contains("App created")),
        "the backlog: {events}"
    );
    assert!(
        data.iter().any(|l| l.contains("LIVE-probe")),
        "a line that happened while open: {events}"
    );
    assert!(
        events.lines().all(|l| l.is_empty()
            || l.starts_with("data: ")
            || l.starts_with(':')
            || !l.contains("mar[")),
        "every line is an event: {events}"
    );
    assert!(
        plain.contains("content-type: text/plain")
            && plain.contains("LIVE-probe")
            && !plain.contains("data: "),
        "{plain}"
    );
}

/// A console password set with `mar console:password` signs in beside the admin token and is
/// kept only as a hash only the server's user can read; cleared, only the token signs in; ten
/// failed sign-ins from one address lock that address out, the right password included.
#[tokio::test]
async fn a_console_password_signs_in_and_guessing_is_limited() {
    let mar = MarServer::start();
    let sign_in = |secret: &str| {
        let body = serde_json::json!({ "token": secret }).to_string();
        let mar = &mar;
        async move {
            call(
                mar,
                "POST",
                "/console/session",
                &[("content-type", "application/json")],
                &body,
            )
            .await
        }
    };
    let short = mar.mar_with_input(&["console:password"], "too short\n");
    assert!(
        !short.ok() && short.stderr.contains("12 to 1024 bytes"),
        "{}",
        short.all()
    );
    for bad in ["not json", r#"{"pass": "correct horse battery"}"#] {
        let r = mar.api("PUT", "/v1/console/password", bad).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("\"BadRequest\""), "{}", r.body);
    }
    let password = "correct horse battery staple";
    let set = mar.mar_with_input(&["console:password"], &format!("{password}\n"));
    assert!(set.ok(), "{}", set.all());
    let file = mar.data_dir.join("console_password");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(
        kept.starts_with("$argon2id$") && !kept.contains("horse"),
        "{kept}"
    );

    let r = sign_in(password).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("mar_console=")
    );
    assert_eq!(sign_in(&mar.token()).await.status, 200, "the token too");

    let cleared = mar.mar(&["console:password", "--clear"]);
    assert!(cleared.ok(), "{}", cleared.all());
    assert!(!file.exists());
    assert_eq!(sign_in(password).await.status, 401, "cleared");
    assert_eq!(sign_in(&mar.token()).await.status, 200);

    assert!(
        mar.mar_with_input(&["console:password"], &format!("{password}\n"))
            .ok()
    );
    for i in 0..10 {
        let r = sign_in(&format!("guess number {i}")).await;
        assert_eq!(r.status, 401, "guess {i}: {}", r.body);
    }
    let locked = sign_in(password).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert!(
        locked.body.contains("try again in 10 minute(s)"),
        "{}",
        locked.body
    );
}
