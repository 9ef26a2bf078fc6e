//! The platform itself: start-up and shutdown, auth, names, error pages, the API's shape.

use mar_tests::{MarServer, mar_bin, repo_root};

#[tokio::test]
async fn serve_reports_its_port_and_stops_cleanly() {
    let mar = MarServer::start();
    assert_ne!(mar.addr.port(), 0);
    let r = mar.get("localhost", "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    // The token file is private to the server's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(mar.data_dir.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = mar.mar(&["auth:token"]);
    assert_eq!(token.stdout.trim(), mar.token());
    // So is the state database, and serve.json names the running server.
    for f in ["mar.db", "metrics_token"] {
        let mode = std::fs::metadata(mar.data_dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let serve: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mar.data_dir.join("serve.json")).unwrap())
            .unwrap();
    assert_eq!(serve["pid"], mar.pid());
    let data_dir = mar.data_dir.clone();
    let status = mar.stop();
    assert!(status.success(), "exit status {status}");
    // A stopped server leaves no serve.json to mislead the CLI.
    assert!(!data_dir.join("serve.json").exists());
}

#[tokio::test]
async fn unknown_config_key_is_named_and_nothing_starts() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("mar.yaml"),
        "listen: 127.0.0.1:0\nlisten_prot: 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(mar_bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `listen_prot`"), "{err}");
}

#[tokio::test]
async fn a_port_in_use_is_refused_with_several_router_threads_too() {
    // Router threads share their port with SO_REUSEPORT, which would let them join another
    // server's SO_REUSEPORT sockets on it (another `mar serve` with several router threads);
    // a port in use must still stop `mar serve`.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let taken = socket.listen(8).unwrap();
    let port = taken.local_addr().unwrap().port();
    for threads in ["1", "2"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(mar_bin())
            .args(["serve", "--router-threads", threads, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It must exit at once; one that serves would never exit on its own.
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("mar serve with {threads} router thread(s) started on a port in use");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{threads} thread(s) started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot listen on"), "{err}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(mar_bin())
        .args(["serve", "--router-threads", "0", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a count from 1 to 256"), "{err}");
}

#[tokio::test]
async fn api_and_git_need_the_token() {
    let mar = MarServer::start();
    let none = mar.http("GET", "localhost", "/v1/apps", "").await;
    assert_eq!(none.status, 401);
    assert!(
        none.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing API token")
    );
    let wrong = mar_tests::http(
        mar.addr,
        "GET",
        "localhost",
        "/v1/apps",
        &[("authorization", "Bearer nope")],
        Default::default(),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid API token")
    );

    mar.create_app("guarded");
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let url = format!("http://git:wrong-token@{}/guarded.git", mar.addr);
    let push = repo.push(&url, "main");
    assert!(!push.ok());
    assert!(
        push.stderr
            .contains("remote: mini-MAR: authentication failed"),
        "{}",
        push.stderr
    );
    // Nothing was stored or released by the refused push.
    let heads = std::process::Command::new("git")
        .args(["for-each-ref"])
        .current_dir(mar.data_dir.join("repos/guarded.git"))
        .output()
        .unwrap();
    assert!(
        heads.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&heads.stdout)
    );
    let releases = mar.api("GET", "/v1/apps/guarded/releases", "").await;
    assert_eq!(
        releases.json()["results"].as_array().map(Vec::len),
        Some(0),
        "{}",
        releases.body
    );
    // CLI with a wrong token says so.
    let out = std::process::Command::new(mar_bin())
        .args(["apps"])
        .env("MAR_API_URL", format!("http://{}", mar.addr))
        .env("MAR_TOKEN", "nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid API token"));
}

/// With no server at the address, the CLI says so in one plain sentence, not a chain of
/// client errors; and a local data directory whose server is gone says to start it.
#[test]
fn a_server_that_is_not_running_is_named_plainly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(mar_bin())
        .args(["apps"])
        .env("MAR_API_URL", format!("http://127.0.0.1:{port}"))
        .env("MAR_TOKEN", "t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "!    mar serve is not running at http://127.0.0.1:{port}; start it with `mar serve`"
        )
    );
    let empty = mar_tests::scratch_dir();
    let out = std::process::Command::new(mar_bin())
        .args(["apps", "--data-dir"])
        .arg(empty.path())
        .env_remove("MAR_API_URL")
        .env_remove("MAR_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("no running mar server found")
            && stderr.contains("start `mar serve`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn app_names_are_dns_labels() {
    let mar = MarServer::start();
    for bad in [
        "Bad_Name",
        "1abc",
        "a.b",
        "..",
        "this-name-is-far-too-long-for-a-label",
    ] {
        let out = mar.mar(&["apps:create", bad]);
        assert!(!out.ok(), "{bad} was accepted");
        assert!(
            out.stderr.contains("lowercase letters, digits and '-'"),
            "{bad}: {}",
            out.stderr
        );
        let api = mar
            .api("POST", "/v1/apps", &format!("{{\"name\":{bad:?}}}"))
            .await;
        assert_eq!(api.status, 400, "{bad}: {}", api.body);
    }
    mar.create_app("good-name-1");
    assert!(
        mar.mar(&["config:set", "KEEP=me", "-a", "good-name-1"])
            .ok()
    );
    let apps_before = mar.mar(&["apps", "--json"]).stdout;
    let config_before = mar.mar(&["config", "-a", "good-name-1", "--json"]).stdout;
    let dup = mar.mar(&["apps:create", "good-name-1"]);
    assert!(
        !dup.ok() && dup.stderr.contains("app good-name-1 already exists"),
        "{}",
        dup.stderr
    );
    let garbage = mar.api("POST", "/v1/apps", "{not json").await;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.json()["error"]["reason"], "BadRequest");
    // The refusals changed nothing: no app was added or replaced, no config lost.
    assert_eq!(mar.mar(&["apps", "--json"]).stdout, apps_before);
    assert_eq!(
        mar.mar(&["config", "-a", "good-name-1", "--json"]).stdout,
        config_before
    );
}

#[tokio::test]
async fn reserved_app_names_are_refused_and_nothing_is_created() {
    let mar = MarServer::start();
    for name in ["api", "mws"] {
        let out = mar.mar(&["apps:create", name]);
        assert!(!out.ok(), "{name} was accepted");
        assert!(
            out.stderr
                .contains(&format!("the name `{name}` is reserved"))
                && out.stderr.contains(&format!("`{name}.localhost`"))
                && out.stderr.contains("choose another name"),
            "{name}: {}",
            out.stderr
        );
        let api = mar
            .api("POST", "/v1/apps", &format!("{{\"name\":{name:?}}}"))
            .await;
        assert_eq!(api.status, 400, "{name}: {}", api.body);
        assert_eq!(api.json()["error"]["reason"], "BadRequest");
        let show = mar.api("GET", &format!("/v1/apps/{name}"), "").await;
        assert_eq!(show.status, 404, "{name}: {}", show.body);
        assert!(
            !mar.data_dir
                .join("repos")
                .join(format!("{name}.git"))
                .exists(),
            "a repository was created for {name}"
        );
    }
    let apps = mar.mar(&["apps", "--json"]);
    assert!(apps.ok(), "{}", apps.stderr);
    let listed: serde_json::Value = serde_json::from_str(&apps.stdout).unwrap();
    assert_eq!(listed, serde_json::json!([]), "{}", apps.stdout);
}

#[tokio::test]
async fn router_error_pages_and_git_paths() {
    let mar = MarServer::start();
    let r = mar.get("nosuch.localhost", "/").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("No such app"), "{}", r.body);
    mar.create_app("empty");
    let r = mar.get("empty.localhost", "/").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("H14") && r.body.contains("git push"),
        "{}",
        r.body
    );
    let json = mar_tests::http(
        mar.addr,
        "GET",
        "empty.localhost",
        "/",
        &[("accept", "application/json")],
        Default::default(),
    )
    .await;
    assert_eq!(json.json()["error"]["code"], "H14");

    let auth = format!("Bearer {}", mar.token());
    for path in [
        "/../empty.git/info/refs",
        "/empty.git/../../etc/passwd",
        "/empty.git/objects/info/packs",
    ] {
        let r = mar_tests::http(
            mar.addr,
            "GET",
            "localhost",
            path,
            &[("authorization", &auth)],
            Default::default(),
        )
        .await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
    }
    let r = mar_tests::http(
        mar.addr,
        "GET",
        "localhost",
        "/ghost.git/info/refs?service=git-receive-pack",
        &[("authorization", &auth)],
        Default::default(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no such app ghost"), "{}", r.body);
}

#[tokio::test]
async fn old_mar_api_shapes_and_destroy() {
    let mar = MarServer::start();
    mar.create_app("legacy");
    // The old Node SDK adds a trailing slash and sends JSON without a Content-Type.
    let info = mar.api("GET", "/v1/apps/legacy/", "").await;
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.json()["id"], "legacy");
    assert_eq!(info.json()["structure"]["web"], 1);
    let put = mar
        .api("PUT", "/v1/apps/legacy/env_vars", "{\"A\":\"1\",\"B\":2}")
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["B"], "2");
    let del = mar
        .api("PUT", "/v1/apps/legacy/env_vars", "{\"A\":null}")
        .await;
    assert!(del.json().get("A").is_none());
    let bad = mar
        .api("PATCH", "/v1/apps/legacy/config", "{\"../x\":\"1\"}")
        .await;
    assert_eq!(bad.status, 400);

    let refused = mar.mar(&["apps:destroy", "legacy"]);
    assert!(
        !refused.ok() && refused.stderr.contains("--confirm legacy"),
        "{}",
        refused.all()
    );
    let ok = mar.mar(&["apps:destroy", "legacy", "--confirm", "legacy"]);
    assert!(ok.ok(), "{}", ok.all());
    assert_eq!(mar.api("GET", "/v1/apps/legacy", "").await.status, 404);
    assert!(!mar.data_dir.join("repos/legacy.git").exists());
}

/// A followed log (`mar logs -t`) ends cleanly when `mar serve` stops, saying so, and does not
/// hold the shutdown up (its drain grace is 10 s).
#[test]
fn a_followed_log_ends_with_the_server_and_does_not_delay_it() {
    let mar = MarServer::start();
    mar.create_app("tailed");
    let mut follow = std::process::Command::new(mar_bin())
        .args(["logs", "-t", "-a", "tailed"])
        .env("MAR_HOME", &mar.data_dir)
        .env_remove("MAR_API_URL")
        .env_remove("MAR_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The backlog's first line shows the stream is open.
    let mut out = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.contains("App created"), "{first}");

    let started = std::time::Instant::now();
    let status = mar.stop();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < std::time::Duration::from_secs(8),
        "the open log stream held the shutdown for {took:?}"
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let exit = follow.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut err).unwrap();
    assert!(exit.success(), "{exit:?}: {err}");
    assert!(
        rest.contains("mar serve is shutting down: the log stream ends here"),
        "{rest}"
    );
}

/// Output for a pipe has no colour codes; the usage line does not ask for `--data-dir`
/// (MAR_HOME or the default give it); `mar ps` shows each instance's memory, as the docs say;
/// a reader that stops early ends the command quietly.
#[tokio::test]
async fn plain_output_usage_and_memory_in_ps() {
    let help = std::process::Command::new(mar_bin())
        .arg("--help")
        .env("MAR_HOME", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: mar [OPTIONS] <COMMAND>"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in piped output");
    let mar = MarServer::start();
    mar.create_app("plain");
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    assert!(repo.push(&mar.git_url("plain"), "main").ok());
    for args in [
        &["ps", "-a", "plain"][..],
        &["apps:info", "plain"],
        &["releases", "-a", "plain"],
    ] {
        let out = mar.mar(args);
        assert!(out.ok(), "{}", out.all());
        assert!(!out.all().contains('\u{1b}'), "{args:?}: {}", out.all());
    }
    let ps = mar.mar(&["ps", "-a", "plain"]).stdout;
    let web = ps
        .lines()
        .find(|l| l.starts_with("web.1: up"))
        .unwrap_or_default();
    assert!(web.contains(" memory "), "{ps}");

    // Piped into a reader that stops early (`| head -1`): the command ends quietly, as Unix
    // tools do (SIGPIPE), with no panic or backtrace.
    // More than a pipe holds (64 KiB), so the writer is still writing when the reader goes.
    let wide: Vec<String> = (0..150)
        .map(|i| format!("WIDE_{i}={}", "a".repeat(700)))
        .collect();
    let mut set = vec!["config:set", "-a", "plain"];
    set.extend(wide.iter().map(String::as_str));
    assert!(mar.mar(&set).ok());
    for cmd in ["config -a plain", "run -a plain -- seq 1 200000"] {
        let out = std::process::Command::new("bash")
            .args([
                "-c",
                &format!(
                    "\"$0\" {cmd} | head -c 1 >/dev/null; echo \"status ${{PIPESTATUS[0]}}\" >&2"
                ),
            ])
            .arg(mar_bin())
            .env("MAR_HOME", &mar.data_dir)
            .env_remove("MAR_API_URL")
            .env_remove("MAR_TOKEN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("status 0") || err.contains("status 141"),
            "{cmd}: {err}"
        );
    }
}
