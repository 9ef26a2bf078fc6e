//! Deploying the examples with `git push`: build output, traffic through the router, the
//! environment apps get, config changes, and apps coming back after a restart of `mar serve`.

use mar_tests::{MarServer, repo_root};

fn example(name: &str) -> std::path::PathBuf {
    repo_root().join("examples").join(name)
}

#[tokio::test]
async fn shell_app_deploys_and_gets_port_dyno_and_config() {
    let mar = MarServer::start();
    mar.create_app("hello");
    let repo = mar.repo_from(&example("shell-hello"));
    let push = repo.push(&mar.git_url("hello"), "main");
    assert!(push.ok(), "push failed:\n{}", push.all());
    let out = push.stderr;
    for line in [
        "remote: -----> Building on the mar-24 stack",
        "remote: -----> Procfile app detected",
        "remote: -----> Discovering process types",
        "remote:        Procfile declares types -> web, worker",
        "remote: -----> Compiled slug size is ",
        "remote: -----> Launching... done, v1",
        &format!(
            "remote:        http://hello.localhost:{}/ deployed to mini-MAR",
            mar.addr.port()
        ),
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    let r = mar.get("hello.localhost", "/").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Hello from mini-MAR"), "{}", r.body);
    let port = mar.get("hello.localhost", "/env/PORT").await;
    assert!(
        port.body.trim().parse::<u16>().is_ok(),
        "PORT = {:?}",
        port.body
    );
    assert_eq!(
        mar.get("hello.localhost", "/env/DYNO").await.body.trim(),
        "web.1"
    );
    // A Host with a port routes the same, and the app's own 404 passes through untouched.
    let missing = mar.get("hello.localhost:1234", "/env/NOPE").await;
    assert_eq!(missing.status, 404);
    assert!(
        !missing.body.contains("mini-MAR router"),
        "{}",
        missing.body
    );

    // A POST body streams to the app and back.
    let big = "x".repeat(300_000);
    let echo = mar.http("POST", "hello.localhost", "/echo", &big).await;
    assert_eq!(echo.status, 200);
    assert_eq!(echo.body.len(), big.len());

    // Config vars: a new release, a restart, the new environment.
    let set = mar.mar_in(
        &[
            "config:set",
            "GREETING=bonjour tout le monde",
            "-a",
            "hello",
        ],
        &repo.dir,
    );
    assert!(set.ok(), "{}", set.all());
    assert!(set.stderr.contains("done, v2"), "{}", set.all());
    assert_eq!(
        mar.get("hello.localhost", "/env/GREETING")
            .await
            .body
            .trim(),
        "bonjour tout le monde"
    );
    let releases = mar.mar(&["releases", "-a", "hello", "--json"]);
    let releases: serde_json::Value = serde_json::from_str(&releases.stdout).unwrap();
    assert_eq!(releases[0]["version"], 2);
    assert_eq!(releases[0]["description"], "Set GREETING config vars");
    assert!(
        releases[1]["description"]
            .as_str()
            .unwrap()
            .starts_with("Deploy ")
    );

    // The app is found from the git remote when -a is not given.
    let remote = mar.mar_in(&["git:remote", "hello"], &repo.dir);
    assert!(remote.ok(), "{}", remote.all());
    let unset = mar.mar_in(&["config:unset", "GREETING"], &repo.dir);
    assert!(unset.ok(), "{}", unset.all());
    assert_eq!(
        mar.get("hello.localhost", "/env/GREETING").await.status,
        404
    );
    let config = mar.mar_in(&["config", "--json"], &repo.dir);
    assert_eq!(config.stdout.trim(), "{}");

    let ps = mar.mar_in(&["ps", "--json"], &repo.dir);
    let ps: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    assert_eq!(ps[0]["dyno"], "web.1");
    assert_eq!(ps[0]["state"], "up");
    assert_eq!(ps[0]["release"], 3);

    // Logs: app output and platform lines, in the CLI and in the old MAR API shape.
    let logs = mar.mar_in(&["logs", "-n", "200"], &repo.dir);
    assert!(
        logs.stdout.contains(" app[web.1]: shell-hello listening"),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout
            .contains(" mar[web.1]: State changed from starting to up"),
        "{}",
        logs.stdout
    );
    let api = mar
        .api("GET", "/v1/apps/hello/logs?limit=5&offset=0", "")
        .await;
    assert_eq!(api.status, 200);
    let results = api.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 5);
    assert!(results[0]["time"].as_str().unwrap().ends_with('Z'));
    assert!(results[0]["log"].as_str().unwrap().contains(": "));
    let bad = mar.api("GET", "/v1/apps/hello/logs?limit=lots", "").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[tokio::test]
async fn restart_of_mar_serve_brings_apps_back_and_shutdown_stops_them() {
    let mar = MarServer::start();
    mar.create_app("survivor");
    let repo = mar.repo_from(&example("shell-hello"));
    assert!(repo.push(&mar.git_url("survivor"), "main").ok());
    assert_eq!(mar.get("survivor.localhost", "/").await.status, 200);

    let mar = mar.restart();
    // The app boots again in the background; until it is up the router holds its requests.
    let r = mar_tests::eventually(std::time::Duration::from_secs(20), || async {
        let r = mar.get("survivor.localhost", "/").await;
        (r.status != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let apps = mar.mar(&["apps", "--json"]);
    assert!(apps.stdout.contains("\"survivor\""), "{}", apps.stdout);

    // After a graceful stop no app process is left behind. (While it runs, the app's
    // processes are found the same way, so this check can fail.)
    let data_dir = mar.data_dir.clone();
    assert!(
        !mar_tests::processes_under(&data_dir).is_empty(),
        "the app's processes are not found"
    );
    let status = mar.stop();
    assert!(status.success(), "{status}");
    let left = mar_tests::processes_under(&data_dir);
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[tokio::test]
async fn python_app_builds_with_pip_and_serves() {
    let mar = MarServer::start();
    mar.create_app("py");
    // v1 is the config change that keeps pip off the network.
    mar.offline_pip("py");
    let repo = mar.repo_from(&example("python-hello"));
    let push = repo.push(&mar.git_url("py"), "main");
    assert!(push.ok(), "push failed:\n{}", push.all());
    assert!(
        push.stderr.contains("remote: -----> Python app detected"),
        "{}",
        push.stderr
    );
    assert!(
        push.stderr.contains("remote: -----> Launching... done, v2"),
        "{}",
        push.stderr
    );
    let r = mar.get("py.localhost", "/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("Hello from mini-MAR (Python)"),
        "{}",
        r.body
    );

    // A second push uses the warm build cache.
    repo.write("CHANGES.txt", "second deploy\n");
    repo.commit("second");
    let push = repo.push(&mar.git_url("py"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr.contains("Using cached virtualenv"),
        "{}",
        push.stderr
    );
    assert!(
        push.stderr.contains("Launching... done, v3"),
        "{}",
        push.stderr
    );
    assert_eq!(
        mar.get("py.localhost", "/env/DYNO").await.body.trim(),
        "web.1"
    );
}

#[tokio::test]
async fn node_app_installs_from_npm_and_serves() {
    let mar = MarServer::start();
    mar.create_app("node");
    mar.offline_npm("node");
    let repo = mar.repo_from(&example("node-hello"));
    let push = repo.push(&mar.git_url("node"), "main");
    assert!(push.ok(), "push failed:\n{}", push.all());
    assert!(
        push.stderr.contains("remote: -----> Node.js app detected"),
        "{}",
        push.stderr
    );
    let r = mar.get("node.localhost", "/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("Hello from mini-MAR (Node.js"),
        "{}",
        r.body
    );
}

/// `mar git:remote` keeps the admin token out of the repository: the remote's URL has no
/// secret, git asks `mar git:credential` for it, which answers for this server only, and the
/// push deploys.
#[tokio::test]
async fn git_remote_keeps_the_token_out_of_the_repository() {
    let mar = MarServer::start();
    mar.create_app("creds");
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let out = mar.mar_in(&["git:remote", "creds"], &repo.dir);
    assert!(out.ok(), "{}", out.all());
    let config = std::fs::read_to_string(repo.dir.join(".git/config")).unwrap();
    assert!(!config.contains(&mar.token()), "{config}");
    assert!(config.contains("git:credential"), "{config}");
    let push = repo.git(&["push", "mar", "main"]);
    assert!(push.ok(), "{}", push.all());
    assert_eq!(mar.get("creds.localhost", "/").await.status, 200);

    let ask = |host: String| {
        mar.mar_with_input(
            &["git:credential", "get"],
            &format!("protocol=http\nhost={host}\n\n"),
        )
    };
    let here = ask(format!("127.0.0.1:{}", mar.addr.port()));
    assert!(here.ok(), "{}", here.all());
    assert_eq!(
        here.stdout,
        format!("username=git\npassword={}\n", mar.token())
    );
    let elsewhere = ask("example.com".to_owned());
    assert!(elsewhere.ok(), "{}", elsewhere.all());
    assert_eq!(elsewhere.stdout, "", "another host gets nothing");

    // mar serve comes back on another port: git:remote again points the remote there, and
    // what it wrote for the old address goes (one server, one helper); the push deploys.
    let old = format!("127.0.0.1:{}", mar.addr.port());
    let mar = mar.restart();
    assert_ne!(format!("127.0.0.1:{}", mar.addr.port()), old);
    let again = mar.mar_in(&["git:remote", "creds"], &repo.dir);
    assert!(again.ok(), "{}", again.all());
    let config = std::fs::read_to_string(repo.dir.join(".git/config")).unwrap();
    assert!(!config.contains(&old), "{config}");
    assert_eq!(config.matches("git:credential").count(), 1, "{config}");
    repo.write("moved.txt", "after the move");
    repo.commit("after the move");
    let push = repo.git(&["push", "mar", "main"]);
    assert!(push.ok(), "{}", push.all());
}

/// Managing a server over HTTPS from another machine, as with Heroku's API: the CLI refuses a
/// certificate it cannot check and says how to trust it; with the local authority's root
/// (`mar tls:ca`) in `MAR_CA_CERT` it creates an app, `git:remote` gives git the same root
/// for that server alone and a helper that needs no `MAR_API_URL`, the push deploys, and
/// `mar run` works both as a command and at a terminal (the terminal's WebSocket over TLS).
#[tokio::test]
async fn the_cli_and_git_manage_a_server_over_https() {
    let mar = MarServer::start_with_args(None, &["--https-listen", "127.0.0.1:0"]);
    let https = mar.https_addr.expect("an HTTPS listener");
    let api = format!("https://localhost:{}", https.port());
    let elsewhere = tempfile::tempdir().unwrap();
    let ca = elsewhere.path().join("mar-ca.pem");
    let root = mar.mar(&["tls:ca"]);
    assert!(root.ok(), "{}", root.all());
    std::fs::write(&ca, &root.stdout).unwrap();
    // The CLI on a machine with no data directory of its own, trusting only the system's
    // roots unless told.
    let remote = |args: &[&str], ca_cert: Option<&std::path::Path>, dir: &std::path::Path| {
        let mut cmd = std::process::Command::new(mar_tests::mar_bin());
        cmd.args(args)
            .current_dir(dir)
            .env("MAR_HOME", elsewhere.path().join("home"))
            .env("MAR_API_URL", &api)
            .env("MAR_TOKEN", mar.token())
            .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
            .env_remove("MAR_CA_CERT")
            .stdin(std::process::Stdio::null());
        if let Some(ca) = ca_cert {
            cmd.env("MAR_CA_CERT", ca);
        }
        mar_tests::CmdOutput::from(cmd.output().unwrap())
    };

    let refused = remote(&["apps:create", "secure"], None, elsewhere.path());
    assert_eq!(refused.status.code(), Some(1), "{}", refused.all());
    assert!(
        refused.stderr.contains("certificate is not trusted here")
            && refused.stderr.contains("MAR_CA_CERT"),
        "{}",
        refused.all()
    );
    assert!(
        !mar.mar(&["apps"]).stdout.contains("secure"),
        "nothing made"
    );
    let unreadable = remote(
        &["apps"],
        Some(&elsewhere.path().join("missing.pem")),
        elsewhere.path(),
    );
    assert!(
        !unreadable.ok() && unreadable.stderr.contains("MAR_CA_CERT: cannot read"),
        "{}",
        unreadable.all()
    );

    let made = remote(&["apps:create", "secure"], Some(&ca), elsewhere.path());
    assert!(made.ok(), "{}", made.all());
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let linked = remote(&["git:remote", "secure"], Some(&ca), &repo.dir);
    assert!(linked.ok(), "{}", linked.all());
    assert!(linked.stdout.contains("http.sslCAInfo"), "{}", linked.all());
    let config = std::fs::read_to_string(repo.dir.join(".git/config")).unwrap();
    assert!(!config.contains(&mar.token()), "{config}");
    assert!(config.contains(&format!("[http \"{api}/\"]")), "{config}");
    // git as a user runs it: the token from MAR_TOKEN, no MAR_API_URL, no CA override.
    let push = mar_tests::CmdOutput::from(
        repo.cmd(&["push", "mar", "main"])
            .env("MAR_TOKEN", mar.token())
            .env_remove("MAR_API_URL")
            .env_remove("MAR_CA_CERT")
            .env_remove("GIT_SSL_CAINFO")
            .output()
            .unwrap(),
    );
    assert!(
        push.ok() && push.stderr.contains("deployed to mini-MAR"),
        "{}",
        push.all()
    );
    // The helper gives a MAR_TOKEN only to the server that takes it: one meant for another
    // server (say production's, exported in the shell) gets nothing here.
    let id = config
        .split("--token-id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a token id in the helper")
        .to_owned();
    let ask = |token: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(mar_tests::mar_bin())
            .args(["--data-dir"])
            .arg(elsewhere.path().join("home"))
            .args(["git:credential", "--server", &api, "--token-id", &id, "get"])
            .env("MAR_TOKEN", token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let host = api.trim_start_matches("https://");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("protocol=https\nhost={host}\n\n").as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(
        ask("a-token-of-another-server"),
        "",
        "another server's token"
    );
    assert_eq!(
        ask(&mar.token()),
        format!("username=git\npassword={}\n", mar.token())
    );

    let ran = remote(
        &["run", "-a", "secure", "--", "echo", "over https"],
        Some(&ca),
        elsewhere.path(),
    );
    assert!(ran.ok() && ran.stdout == "over https\n", "{}", ran.all());
    // The server's own machine trusts its authority without being told.
    let local = mar_tests::CmdOutput::from(
        std::process::Command::new(mar_tests::mar_bin())
            .args(["apps"])
            .env("MAR_HOME", &mar.data_dir)
            .env("MAR_API_URL", &api)
            .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
            .env_remove("MAR_TOKEN")
            .env_remove("MAR_CA_CERT")
            .output()
            .unwrap(),
    );
    assert!(
        local.ok() && local.stdout.contains("secure"),
        "{}",
        local.all()
    );

    let terminal = std::process::Command::new("python3")
        .arg(repo_root().join("tests/fixtures/terminal/drive.py"))
        .arg(mar_tests::mar_bin())
        .args(["run", "-a", "secure", "bash"])
        .current_dir(elsewhere.path())
        .env("MAR_HOME", elsewhere.path().join("home"))
        .env("MAR_API_URL", &api)
        .env("MAR_TOKEN", mar.token())
        .env("MAR_CA_CERT", &ca)
        .env("TERM", "xterm-test")
        .output()
        .unwrap();
    let terminal = mar_tests::CmdOutput::from(terminal);
    assert!(
        terminal.ok() && terminal.stdout.contains("DRIVE-OK"),
        "{}",
        terminal.all()
    );
}
