//! What happens after a deploy: a crashed process comes back, and logs can be followed live.

use std::io::BufRead;
use std::time::Duration;

use mar_tests::{MarServer, eventually, mar_bin, repo_root};

async fn deployed(mar: &MarServer, app: &str) {
    mar.create_app(app);
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = repo.push(&mar.git_url(app), "main");
    assert!(push.ok(), "{}", push.all());
}

#[tokio::test]
async fn crashed_web_process_is_restarted() {
    let mar = MarServer::start();
    deployed(&mar, "phoenix").await;
    let ps: serde_json::Value =
        serde_json::from_str(&mar.mar(&["ps", "-a", "phoenix", "--json"]).stdout).unwrap();
    assert_eq!(
        ps.as_array().unwrap().len(),
        1,
        "worker must default to 0: {ps}"
    );
    let pid = ps[0]["pid"].as_u64().unwrap();
    // Kill the whole process group, as an OOM kill or a segfault would end it.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(killed.success());
    let restarted = eventually(Duration::from_secs(20), || async {
        let ps: serde_json::Value =
            serde_json::from_str(&mar.mar(&["ps", "-a", "phoenix", "--json"]).stdout).ok()?;
        (ps[0]["state"] == "up" && ps[0]["restarts"] == 1).then_some(ps)
    })
    .await;
    assert_ne!(restarted[0]["pid"].as_u64(), Some(pid));
    assert_eq!(mar.get("phoenix.localhost", "/").await.status, 200);
    let logs = mar.mar(&["logs", "-a", "phoenix", "-n", "50"]).stdout;
    assert!(
        logs.contains("mar[web.1]: Process exited with status 137 (signal)"),
        "{logs}"
    );
    assert!(
        logs.contains("mar[web.1]: State changed from up to crashed"),
        "{logs}"
    );
    let info = mar.mar(&["apps:info", "phoenix"]);
    assert!(
        info.stdout.contains("State:     running"),
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("Release:   v1"), "{}", info.stdout);
}

#[tokio::test]
async fn logs_can_be_followed_live() {
    let mar = MarServer::start();
    deployed(&mar, "chatty").await;
    let mut tail = std::process::Command::new(mar_bin())
        .args(["logs", "-t", "-n", "1", "-a", "chatty"])
        .env("MAR_HOME", &mar.data_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first line (the backlog of one) proves the stream is open before we make noise.
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let r = mar.get("chatty.localhost", "/env/MARKER_FOR_TAIL").await;
    assert_eq!(r.status, 404);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| panic!("no live line; saw {seen:?}"));
        if line.contains("app[web.1]") && line.contains("MARKER_FOR_TAIL") {
            break;
        }
        seen.push(line);
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
}
