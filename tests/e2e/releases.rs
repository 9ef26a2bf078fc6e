//! Releases: history, info, rollback (old code and old config), slug pruning, the release
//! phase, and one-off processes.

use std::time::{Duration, Instant};

use mar_tests::{CmdOutput, MarServer, mar_bin, repo_root};

#[tokio::test]
async fn rollback_restores_old_code_and_config_and_pruned_slugs_are_refused() {
    let mar = MarServer::start_with(Some("keep_releases: 3\n"));
    mar.create_app("history");
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"));
    assert!(
        mar.mar(&["config:set", "GREETING=first", "-a", "history"])
            .ok()
    ); // v1
    assert!(repo.push(&mar.git_url("history"), "main").ok()); // v2
    repo.write("Procfile", "web: CODE=second python3 server.py\n");
    repo.commit("second");
    assert!(repo.push(&mar.git_url("history"), "main").ok()); // v3
    assert!(
        mar.mar(&["config:set", "GREETING=second", "-a", "history"])
            .ok()
    ); // v4
    assert_eq!(
        mar.get("history.localhost", "/env/CODE").await.body,
        "second"
    );

    let out = mar.mar(&["rollback", "v2", "-a", "history"]);
    assert!(out.ok(), "{}", out.all());
    assert!(out.stderr.contains("done, v5"), "{}", out.stderr);
    assert_eq!(
        mar.get("history.localhost", "/env/CODE").await.status,
        404,
        "old code"
    );
    assert_eq!(
        mar.get("history.localhost", "/env/GREETING").await.body,
        "first",
        "old config"
    );

    let info = mar.mar(&["releases:info", "v5", "-a", "history"]);
    assert!(
        info.stdout.contains("Change:      Rollback to v2"),
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("GREETING: first"), "{}", info.stdout);
    let releases: serde_json::Value =
        serde_json::from_str(&mar.mar(&["releases", "--json", "-a", "history"]).stdout).unwrap();
    let descs: Vec<&str> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["description"].as_str().unwrap())
        .collect();
    assert_eq!(descs[0], "Rollback to v2");
    assert_eq!(descs[1], "Set GREETING config vars");
    assert!(descs[2].starts_with("Deploy "));

    // v6 deploys new code, v7 changes config: the last 3 releases (v7, v6, v5) use two slugs,
    // so the slug of v3 and v4 is pruned.
    repo.write("Procfile", "web: CODE=third python3 server.py\n");
    repo.commit("third");
    assert!(repo.push(&mar.git_url("history"), "main").ok()); // v6
    assert!(
        mar.mar(&["config:set", "GREETING=third", "-a", "history"])
            .ok()
    ); // v7
    let out = mar.mar(&["rollback", "v3", "-a", "history"]);
    assert!(
        !out.ok() && out.stderr.contains("its slug was pruned"),
        "{}",
        out.all()
    );
    let slugs = std::fs::read_dir(mar.data_dir.join("apps/history/slugs"))
        .unwrap()
        .count();
    assert_eq!(slugs, 2);
    // Plain `mar rollback` goes back one release: v6's code and v6's config.
    let out = mar.mar(&["rollback", "-a", "history"]);
    assert!(out.ok(), "{}", out.all());
    assert!(out.stderr.contains("done, v8"), "{}", out.stderr);
    assert_eq!(
        mar.get("history.localhost", "/env/CODE").await.body,
        "third"
    );
    assert_eq!(
        mar.get("history.localhost", "/env/GREETING").await.body,
        "first"
    );
    let out = mar.mar(&["rollback", "v99", "-a", "history"]);
    assert!(
        !out.ok() && out.stderr.contains("cannot roll back to v99"),
        "{}",
        out.all()
    );
}

#[tokio::test]
async fn release_phase_runs_before_the_new_processes_and_can_abort() {
    let mar = MarServer::start();
    mar.create_app("migrating");
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"));
    repo.write(
        "Procfile",
        "web: python3 server.py\nrelease: echo \"migrating as $DYNO at $(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)\" && touch migrated\n",
    );
    repo.commit("with release phase");
    let push = repo.push(&mar.git_url("migrating"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr
            .contains("remote: -----> Running release command..."),
        "{}",
        push.stderr
    );
    assert!(
        push.stderr
            .contains("remote:        migrating as release.1"),
        "{}",
        push.stderr
    );
    // The release command ran before the web process started: its clock reading (printed in
    // the push) is earlier than the log line of the web process's start (both UTC, ISO 8601,
    // so they compare as strings).
    let ran = push
        .stderr
        .split("migrating as release.1 at ")
        .nth(1)
        .and_then(|s| s.get(..24))
        .unwrap_or_else(|| panic!("no release output in:\n{}", push.stderr))
        .to_owned();
    let logs = mar.mar(&["logs", "-a", "migrating", "-n", "500"]).stdout;
    let web = logs
        .lines()
        .find(|l| l.contains("mar[web.1]: Starting process"))
        .and_then(|l| l.get(..24))
        .unwrap_or_else(|| panic!("no web start in:\n{logs}"))
        .to_owned();
    assert!(
        ran < web,
        "the web process started ({web}) before the release command ran ({ran})"
    );
    // Each process has a home of its own, as each dyno has its own ephemeral filesystem:
    // what the release command wrote there is not the web process's.
    assert_eq!(
        mar.get("migrating.localhost", "/read?path=migrated")
            .await
            .status,
        403
    );

    repo.write(
        "Procfile",
        "web: python3 server.py\nrelease: echo 'migration 42 failed' >&2; exit 3\n",
    );
    repo.commit("failing release phase");
    let push = repo.push(&mar.git_url("migrating"), "main");
    assert!(!push.ok());
    assert!(
        push.stderr.contains("remote:        migration 42 failed"),
        "{}",
        push.stderr
    );
    assert!(
        push.stderr
            .contains("Release command failed (exit status 3)"),
        "{}",
        push.stderr
    );
    let releases: serde_json::Value =
        serde_json::from_str(&mar.mar(&["releases", "--json", "-a", "migrating"]).stdout).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 1);
    // `release` is not a process type that can be scaled.
    let out = mar.mar(&["ps:scale", "release=1", "-a", "migrating"]);
    assert!(
        !out.ok() && out.stderr.contains("cannot be scaled"),
        "{}",
        out.all()
    );
}

#[tokio::test]
async fn one_off_commands_run_in_the_app_environment() {
    let mar = MarServer::start();
    mar.create_app("oneoff");
    let none = mar.mar(&["run", "-a", "oneoff", "--", "true"]);
    assert!(
        !none.ok() && none.stderr.contains("has no code yet"),
        "{}",
        none.all()
    );
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"));
    assert!(
        mar.mar(&["config:set", "GREETING=from config", "-a", "oneoff"])
            .ok()
    );
    assert!(repo.push(&mar.git_url("oneoff"), "main").ok());
    // One argument is a shell command line.
    let out = mar.mar(&[
        "run",
        "-a",
        "oneoff",
        "--",
        "echo $GREETING; echo dyno=$DYNO; ls server.py",
    ]);
    assert!(out.ok(), "{}", out.all());
    assert_eq!(out.stdout, "from config\ndyno=run.1\nserver.py\n");
    // Several reach the process as given: spaces, quotes and `$` unexpanded.
    let out = mar.mar(&[
        "run",
        "-a",
        "oneoff",
        "--",
        "python3",
        "-c",
        "import sys; print(sys.argv[1:])",
        "a b",
        "it's",
        "$HOME",
    ]);
    assert!(out.ok(), "{}", out.all());
    assert_eq!(out.stdout, "['a b', \"it's\", '$HOME']\n");
    // stdout and stderr come back apart, byte for byte (no newline added), and the exit
    // status is mar's.
    let failing = mar.mar(&[
        "run",
        "-a",
        "oneoff",
        "--",
        "echo oops >&2; printf no-newline; exit 7",
    ]);
    assert_eq!(failing.status.code(), Some(7), "{}", failing.all());
    assert_eq!(
        (failing.stdout.as_str(), failing.stderr.as_str()),
        ("no-newline", "oops\n")
    );
    // What is piped into `mar run` is the process's stdin, binary and all, to its end.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let piped = mar.mar_with_input_bytes(&["run", "-a", "oneoff", "--", "sha256sum"], &data);
    assert!(piped.ok(), "{}", piped.all());
    let local = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&data)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(piped.stdout, String::from_utf8_lossy(&local.stdout));
    let script = mar.mar_with_input(
        &["run", "-a", "oneoff", "python3"],
        "import sys\nprint(6 * 7)\nsys.exit(3)\n",
    );
    assert_eq!(
        (script.status.code(), script.stdout.as_str()),
        (Some(3), "42\n"),
        "{}",
        script.all()
    );
    // Through shell pipes as a user writes them: a command that writes four times what it
    // reads (both directions full at once), one that exits after one line of an endless
    // input, one that closes its output and goes on reading to the end, and `-n`, which
    // leaves stdin to the loop around it.
    let shell = |line: &str| {
        let out = std::process::Command::new("bash")
            .args(["-c", line])
            .env("MAR", mar_bin())
            .env("MAR_HOME", &mar.data_dir)
            .env_remove("MAR_API_URL")
            .env_remove("MAR_TOKEN")
            .current_dir(mar.tmp.path())
            .output()
            .unwrap();
        CmdOutput::from(out)
    };
    let amplified = shell(
        r#"seq 1 1000000 | timeout 120 "$MAR" run -a oneoff -- "awk '{print;print;print;print}'" | wc -l"#,
    );
    assert_eq!(amplified.stdout.trim(), "4000000", "{}", amplified.all());
    for _ in 0..3 {
        let early = shell(r#"yes | timeout 60 "$MAR" run -a oneoff -- head -1; echo "status $?""#);
        assert_eq!(early.stdout, "y\nstatus 0\n", "{}", early.all());
    }
    let closed = shell(
        r#"head -c 5000000 /dev/zero | timeout 60 "$MAR" run -a oneoff -- 'exec >/dev/null 2>&1; test "$(wc -c)" = 5000000'; echo "status $?""#,
    );
    assert_eq!(closed.stdout, "status 0\n", "{}", closed.all());
    let loop_input =
        shell(r#"printf 'a\nb\n' | { "$MAR" run -n -a oneoff -- 'cat; echo ran'; cat; }"#);
    assert_eq!(loop_input.stdout, "ran\na\nb\n", "{}", loop_input.all());
    // A one-off leads a session of its own, with no controlling terminal: it cannot reach the
    // terminal mar serve was started from (nor push keystrokes into it).
    let session = |stat: &str| -> (String, String) {
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        (fields[3].to_owned(), fields[4].to_owned())
    };
    let own = mar.mar(&["run", "-a", "oneoff", "--", "cat /proc/self/stat"]);
    let (sid, tty) = session(&own.stdout);
    let server = std::fs::read_to_string(format!("/proc/{}/stat", mar.pid())).unwrap();
    assert_ne!(
        sid,
        session(&server).0,
        "the one-off shares mar serve's session"
    );
    assert_eq!(tty, "0", "a controlling terminal: {}", own.stdout);
    // What a one-off leaves running in the background ends with it.
    let left = shell(r#""$MAR" run -a oneoff -- 'sleep 31415 & echo started'"#);
    assert_eq!(left.stdout, "started\n", "{}", left.all());
    assert!(
        mar_tests::processes_running("sleep 31415").is_empty(),
        "a background process outlived its one-off"
    );
    // The old MAR API's exec.
    let r = mar
        .api("POST", "/v1/apps/oneoff/exec", r#"{"cmd":"echo hi"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stdout"], "hi\n");
    assert_eq!(r.json()["exitCode"], 0);
}

/// `mar run -a APP bash` typed at a terminal is an interactive shell at a terminal of its own:
/// driven through a real pseudo-terminal (as a user's), the remote shell sees a terminal of
/// the user's size and `TERM`, Ctrl-C interrupts its foreground job and not the session, a
/// window resize reaches it, its exit status is mar's, and the user's terminal is restored.
#[tokio::test]
async fn run_at_a_terminal_is_an_interactive_shell() {
    let mar = MarServer::start();
    mar.create_app("shell");
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    assert!(repo.push(&mar.git_url("shell"), "main").ok());
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/fixtures/terminal/drive.py"))
        .arg(mar_bin())
        .args(["run", "-a", "shell", "bash"])
        .current_dir(mar.tmp.path())
        .env("MAR_HOME", &mar.data_dir)
        .env("TERM", "xterm-test")
        .env_remove("MAR_API_URL")
        .env_remove("MAR_TOKEN")
        .output()
        .unwrap();
    let out = CmdOutput::from(out);
    assert!(out.ok() && out.stdout.contains("DRIVE-OK"), "{}", out.all());
    let logs = mar.mar(&["logs", "-a", "shell"]);
    assert!(
        logs.stdout.contains("exited with status 3"),
        "{}",
        logs.stdout
    );
    // The session's endpoint wants the admin token and a WebSocket.
    let anonymous = mar
        .http("GET", "localhost", "/v1/apps/shell/terminal", "")
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let plain = mar.api("GET", "/v1/apps/shell/terminal", "").await;
    assert_eq!(plain.status, 400, "{}", plain.body);
    assert!(plain.body.contains("WebSocket"), "{}", plain.body);

    // A first frame that is not a start gets the reason as the session's result.
    let client = mar_sdk::Client::new(&format!("http://{}", mar.addr), &mar.token()).unwrap();
    let url = format!("ws://{}/v1/apps/shell/terminal", mar.addr);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", mar.token()).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text("rm -rf /"))
        .await
        .unwrap();
    let answer = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(answer.contains("the first frame must be"), "{answer}");

    // Hanging up kills the process and whatever it started.
    let start = mar_sdk::types::TerminalStart {
        command: "sleep 314 & echo STARTED; wait".into(),
        cols: 80,
        rows: 24,
        term: None,
        tty: true,
    };
    let (keys, mut screen) = client.terminal("shell", &start).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("STARTED") {
        match tokio::time::timeout(Duration::from_secs(20), screen.next()).await {
            Ok(Ok(mar_sdk::terminal::TerminalEvent::Output(b))) => {
                seen.push_str(&String::from_utf8_lossy(&b));
            }
            other => panic!("{other:?} after {seen:?}"),
        }
    }
    assert!(pgrep("sleep 314"), "the process did not start");
    drop((keys, screen));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pgrep("sleep 314") {
        assert!(
            Instant::now() < deadline,
            "the process outlived the session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = mar.mar(&["logs", "-a", "shell"]);
    assert!(logs.stdout.contains("was stopped"), "{}", logs.stdout);
}

/// Whether a process with `pattern` in its command line runs.
fn pgrep(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The variables the platform sets in every process are not config vars: `config:set PORT`
/// is refused with the reason (through the CLI and the API alike), and a change that changes
/// nothing (unsetting what is not set, setting a value again) makes no release and restarts
/// nothing.
#[tokio::test]
async fn platform_variables_are_refused_and_changes_that_change_nothing_make_no_release() {
    let mar = MarServer::start();
    mar.create_app("owned");
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    assert!(repo.push(&mar.git_url("owned"), "main").ok()); // v1
    for var in [
        "PORT=80",
        "DYNO=web.9",
        "STACK=other",
        "PS=web.2",
        "HOME=/tmp",
    ] {
        let out = mar.mar(&["config:set", var, "-a", "owned"]);
        assert!(!out.ok(), "{}", out.all());
        let name = var.split('=').next().unwrap();
        assert!(
            out.stderr
                .contains(&format!("{name} is set by the platform")),
            "{}",
            out.stderr
        );
    }
    let api = mar
        .api("PATCH", "/v1/apps/owned/config", r#"{"PORT":"80"}"#)
        .await;
    assert_eq!(api.status, 400, "{}", api.body);

    let pid = |mar: &MarServer| {
        let out = mar.mar(&["ps", "--json", "-a", "owned"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v[0]["pid"].clone()
    };
    let before = pid(&mar);
    let out = mar.mar(&["config:unset", "NOT_SET", "-a", "owned"]);
    assert!(out.ok(), "{}", out.all());
    assert!(
        out.stderr.contains("nothing to change, owned stays at v1"),
        "{}",
        out.stderr
    );
    assert!(mar.mar(&["config:set", "A=1", "-a", "owned"]).ok()); // v2
    let again = mar.mar(&["config:set", "A=1", "-a", "owned"]);
    assert!(again.stderr.contains("stays at v2"), "{}", again.stderr);
    // The API too makes no release when nothing changes.
    let api = mar
        .api(
            "PATCH",
            "/v1/apps/owned/config",
            r#"{"A":"1","NOT_SET":null}"#,
        )
        .await;
    assert_eq!(api.status, 200, "{}", api.body);
    let releases: serde_json::Value =
        serde_json::from_str(&mar.mar(&["releases", "--json", "-a", "owned"]).stdout).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 2, "{releases}");
    assert_ne!(pid(&mar), before, "v2 restarted the app");
    let after_v2 = pid(&mar);
    let _ = mar.mar(&["config:unset", "NOT_SET", "-a", "owned"]);
    assert_eq!(pid(&mar), after_v2, "a change of nothing restarts nothing");
}
