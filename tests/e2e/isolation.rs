//! Isolation and limits: each app runs as its own user with a private /tmp, memory, process
//! and open-files limits, and cannot read another app's files, the data directory or the
//! admin token. And recovery: a SIGKILLed `mar serve` leaves no app process behind once it
//! starts again.

use std::time::Duration;

use mar_tests::{MarServer, eventually};

fn run_dir(mar: &MarServer, app: &str) -> std::path::PathBuf {
    std::fs::read_dir(mar.data_dir.join("apps").join(app).join("run"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

#[tokio::test]
async fn apps_cannot_read_each_other_or_the_platform() {
    // With HTTPS, so the local certificate authority's keys exist to be attacked too.
    let mar = MarServer::start_with_args(None, &["--https-listen", "127.0.0.1:0"]);
    mar.deploy_lifecycle("alice", &[]);
    mar.deploy_lifecycle("mallory", &["MAR_NOFILE_LIMIT=256"]);
    let uid_a = mar.get("alice.localhost", "/whoami").await.body;
    let uid_m = mar.get("mallory.localhost", "/whoami").await.body;
    assert_ne!(uid_a, "0");
    assert_ne!(uid_a, uid_m, "each app has its own user");

    // A build's output is root's alone (a build can print what it was given).
    let build_log = std::fs::read_dir(mar.data_dir.join("apps/alice/build-output"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("alice's push left its build output");
    // A console password's hash exists to be attacked too.
    assert!(
        mar.mar_with_input(&["console:password"], "a console password here\n")
            .ok()
    );
    let secrets = [
        build_log.clone(),
        mar.data_dir.join("console_password"),
        run_dir(&mar, "alice").join("server.py"),
        mar.data_dir.join("token"),
        mar.data_dir.join("mar.db"),
        mar.data_dir.join("logs/alice.log"),
        mar.data_dir.join("tls/ca.key"),
        mar.data_dir.join("tls/local.key"),
    ];
    for path in &secrets {
        let r = mar
            .get(
                "mallory.localhost",
                &format!("/read?path={}", path.display()),
            )
            .await;
        assert_eq!(r.status, 403, "mallory read {}: {}", path.display(), r.body);
        assert!(r.body.contains("denied: Permission denied"), "{}", r.body);
    }
    // Nor can the app whose build it was.
    let r = mar
        .get(
            "alice.localhost",
            &format!("/read?path={}", build_log.display()),
        )
        .await;
    assert_eq!(r.status, 403, "alice read her build output: {}", r.body);
    let own = run_dir(&mar, "mallory").join("server.py");
    assert_eq!(
        mar.get(
            "mallory.localhost",
            &format!("/read?path={}", own.display())
        )
        .await
        .status,
        200
    );

    // /tmp is private to each instance. The name is new each run, so no leftover can pass.
    let secret = format!("alice-secret-{}", std::process::id());
    assert_eq!(
        mar.get("alice.localhost", &format!("/tmp-write?name={secret}"))
            .await
            .status,
        200
    );
    assert!(
        mar.get("alice.localhost", "/tmp-list")
            .await
            .body
            .contains(&secret)
    );
    assert!(
        !mar.get("mallory.localhost", "/tmp-list")
            .await
            .body
            .contains(&secret)
    );
    assert!(!std::path::Path::new("/tmp").join(&secret).exists());

    assert_eq!(mar.get("mallory.localhost", "/nofile").await.body, "256");
    assert_eq!(mar.get("alice.localhost", "/nofile").await.body, "10000");
}

#[tokio::test]
async fn memory_and_process_limits_hold() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("hungry", &["MAR_MEMORY_LIMIT=96M", "MAR_PIDS_LIMIT=32"]);

    // A fork bomb stops at the process limit, and the app keeps serving.
    let forked: usize = mar
        .get("hungry.localhost", "/fork?n=200")
        .await
        .body
        .parse()
        .unwrap();
    assert!(
        forked < 32,
        "started {forked} processes under a limit of 32"
    );
    assert!(forked > 0);
    assert_eq!(mar.get("hungry.localhost", "/").await.status, 200);

    // Going past the memory limit gets the instance killed (R15) and restarted.
    let before = mar.mar(&["ps", "-a", "hungry", "--json"]).stdout;
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let r = mar_tests::try_get(mar.addr, "hungry.localhost", "/alloc?mb=300").await;
    assert!(
        !matches!(r, Ok((200, _))),
        "allocated 300 MB under a 96 MB limit: {r:?}"
    );
    let logs = eventually(Duration::from_secs(20), || async {
        let logs = mar.mar(&["logs", "-a", "hungry", "-n", "200"]).stdout;
        logs.contains("Error R15 (Memory quota vastly exceeded)")
            .then_some(logs)
    })
    .await;
    assert!(
        logs.contains("used more than the 96M memory limit"),
        "{logs}"
    );
    let after = eventually(Duration::from_secs(20), || async {
        let p: serde_json::Value =
            serde_json::from_str(&mar.mar(&["ps", "-a", "hungry", "--json"]).stdout).ok()?;
        (p[0]["state"] == "up" && p[0]["restarts"].as_u64() > before[0]["restarts"].as_u64())
            .then_some(p)
    })
    .await;
    assert_eq!(after[0]["dyno"], "web.1");
    assert_eq!(mar.get("hungry.localhost", "/").await.status, 200);

    let resize = mar.mar(&["ps:resize", "--memory", "8M", "-a", "hungry"]);
    assert!(
        !resize.ok() && resize.stderr.contains("at least 16M"),
        "{}",
        resize.all()
    );
    let resize = mar.mar(&["ps:resize", "--memory", "128M", "-a", "hungry"]);
    assert!(resize.ok(), "{}", resize.all());
    let shown = mar.mar(&["ps:resize", "-a", "hungry"]).stdout;
    assert!(
        shown.contains("MAR_MEMORY_LIMIT: 128M")
            && shown.contains("MAR_PIDS_LIMIT:   32")
            && shown.contains("MAR_NOFILE_LIMIT: 10000 (default)")
            && shown.contains("MAR_CPU_LIMIT:    1 (default)")
            && shown.contains("MAR_DISK_LIMIT:   512M (default)"),
        "{shown}"
    );
}

#[tokio::test]
async fn sigkilled_server_leaves_no_app_process_after_restart() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("orphan", &[]);
    assert_eq!(mar.get("orphan.localhost", "/").await.status, 200);
    let (tmp, data_dir) = (mar.tmp.clone(), mar.data_dir.clone());
    let server_pid = mar.pid();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &server_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(mar);
    let mar = MarServer::start_in(tmp, data_dir.clone());
    let r = eventually(Duration::from_secs(20), || async {
        let r = mar.get("orphan.localhost", "/").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert!(r.body.contains("lifecycle fixture"));
    // Exactly one instance's processes: the new one. The old one was swept at start.
    let p: serde_json::Value =
        serde_json::from_str(&mar.mar(&["ps", "-a", "orphan", "--json"]).stdout).unwrap();
    assert_eq!(p.as_array().unwrap().len(), 1);
    // Count the app's server processes by their working directory, the app's slug.
    let servers = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("for p in /proc/[0-9]*; do [ \"$(readlink $p/cwd)\" = \"$(readlink -f {}/apps/orphan/run/*)\" ] && grep -q server.py $p/cmdline 2>/dev/null && echo ${{p#/proc/}}; done", data_dir.display()))
        .output()
        .unwrap();
    let servers = String::from_utf8_lossy(&servers.stdout);
    assert_eq!(
        servers.lines().count(),
        1,
        "app server processes: {servers:?}"
    );
}
