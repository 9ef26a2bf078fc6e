//! Formation, restarts and deploys under traffic: scaling out and in, balancing across
//! instances, rolling restarts, the restart policy, boot timeouts and health checks, and zero
//! failed requests while all of that happens.

use std::collections::BTreeSet;
use std::time::Duration;

use mar_tests::{GitRepo, Load, MarServer, eventually, repo_root};

fn lifecycle_app(mar: &MarServer) -> GitRepo {
    mar.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"))
}

async fn deploy(mar: &MarServer, app: &str, repo: &GitRepo) {
    let push = repo.push(&mar.git_url(app), "main");
    assert!(push.ok(), "{}", push.all());
}

fn ps(mar: &MarServer, app: &str) -> serde_json::Value {
    let out = mar.mar(&["ps", "-a", app, "--json"]);
    assert!(out.ok(), "{}", out.all());
    serde_json::from_str(&out.stdout).unwrap()
}

#[tokio::test]
async fn scale_out_balances_and_scale_in_stops() {
    let mar = MarServer::start();
    mar.create_app("scaled");
    let repo = lifecycle_app(&mar);
    repo.write(
        "Procfile",
        "web: python3 server.py\nworker: while true; do sleep 1; done\n",
    );
    repo.commit("with worker");
    deploy(&mar, "scaled", &repo).await;

    let out = mar.mar(&["ps:scale", "web=3", "worker=1", "-a", "scaled"]);
    assert!(out.ok(), "{}", out.all());
    assert_eq!(out.stdout.trim(), "web=3 worker=1");
    let procs = eventually(Duration::from_secs(20), || async {
        let p = ps(&mar, "scaled");
        let all_up = p.as_array().unwrap().iter().all(|x| x["state"] == "up");
        (p.as_array().unwrap().len() == 4 && all_up).then_some(p)
    })
    .await;
    let dynos: Vec<&str> = procs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dyno"].as_str().unwrap())
        .collect();
    assert_eq!(dynos, ["web.1", "web.2", "web.3", "worker.1"]);
    let ports: BTreeSet<u64> = procs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(ports.len(), 3, "each web instance has its own PORT");
    assert!(procs[0]["memory_bytes"].as_u64().unwrap() > 0);

    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        seen.insert(mar.get("scaled.localhost", "/env/DYNO").await.body);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["web.1".to_owned(), "web.2".to_owned(), "web.3".to_owned()])
    );

    // The old MAR API's scale call, with string counts.
    let r = mar
        .api(
            "POST",
            "/v1/apps/scaled/scale",
            r#"{"web":"1","worker":"0"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(Duration::from_secs(20), || async {
        (ps(&mar, "scaled").as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    let formation = mar.api("GET", "/v1/apps/scaled/formation", "").await.json();
    assert_eq!(formation["results"][0]["type"], "web");
    assert_eq!(formation["results"][0]["quantity"], 1);

    let bad = mar.mar(&["ps:scale", "nosuch=1", "-a", "scaled"]);
    assert!(
        !bad.ok() && bad.stderr.contains("no such process type nosuch"),
        "{}",
        bad.all()
    );
    let bad = mar.mar(&["ps:scale", "web=lots", "-a", "scaled"]);
    assert!(
        !bad.ok() && bad.stderr.contains("is not TYPE=N"),
        "{}",
        bad.all()
    );
}

#[tokio::test]
async fn a_request_right_after_scaling_up_from_zero_waits_for_the_boot() {
    let mar = MarServer::start();
    mar.create_app("waking");
    let repo = lifecycle_app(&mar);
    // A web process that takes two seconds to bind.
    repo.write("Procfile", "web: sleep 2 && exec python3 server.py\n");
    repo.commit("slow to boot");
    deploy(&mar, "waking", &repo).await;
    assert!(mar.mar(&["ps:scale", "web=0", "-a", "waking"]).ok());
    let r = mar.get("waking.localhost", "/").await;
    assert!(r.status == 503 && r.body.contains("H14"), "{}", r.body);

    // Asked at once, while web.1 boots: held by the router until it is up (Heroku's router
    // queues such requests), not turned away with H20.
    assert!(mar.mar(&["ps:scale", "web=1", "-a", "waking"]).ok());
    let asked = std::time::Instant::now();
    let r = mar.get("waking.localhost", "/env/DYNO").await;
    assert_eq!((r.status, r.body.as_str()), (200, "web.1"));
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "answered after {:?}: was it booting?",
        asked.elapsed()
    );
}

// Multi-threaded: the test's own git and CLI calls block one thread while the load runs on the
// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_restarts_and_scaling_under_load_lose_no_request() {
    let mar = MarServer::start();
    mar.create_app("steady");
    mar.mar(&["config:set", "MAR_WAIT_TO_RETIRE=10", "-a", "steady"]);
    let repo = lifecycle_app(&mar);
    deploy(&mar, "steady", &repo).await;

    let load = Load::start(
        mar.addr,
        "steady.localhost",
        "/slow?ms=20",
        Duration::from_millis(5),
        4,
    );
    // Slow POSTs beside them: a request the router never sends twice, so a broken drain would
    // show (a GET refused by a stopping instance is quietly sent to another).
    let posts = Load::start_posts(
        mar.addr,
        "steady.localhost",
        "/slow-post?ms=250",
        Duration::from_millis(10),
        4,
    );
    for i in 0..2 {
        repo.write("VERSION", &format!("{i}\n"));
        repo.commit(&format!("v{i}"));
        deploy(&mar, "steady", &repo).await;
    }
    assert!(mar.mar(&["ps:scale", "web=3", "-a", "steady"]).ok());
    eventually(Duration::from_secs(20), || async {
        (ps(&mar, "steady")
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "up")
            .count()
            == 3)
            .then_some(())
    })
    .await;
    let restart = mar.mar(&["ps:restart", "web", "-a", "steady"]);
    assert!(restart.ok(), "{}", restart.all());
    assert!(
        restart.stdout.contains("restarted web.1, web.2, web.3"),
        "{}",
        restart.stdout
    );
    assert!(mar.mar(&["ps:scale", "web=1", "-a", "steady"]).ok());
    assert!(
        mar.mar(&["config:set", "GREETING=still-here", "-a", "steady"])
            .ok()
    );
    let (sent, failures) = load.finish().await;
    assert!(sent > 100, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (posted, failures) = posts.finish().await;
    // Four always in flight, across every switch above.
    assert!(posted >= 12, "only {posted} POSTs were sent");
    assert!(
        failures.is_empty(),
        "{} of {posted} POSTs failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Every POST reached the app exactly once, and the router broke off no exchange.
    let logs = eventually(Duration::from_secs(5), || async {
        let logs = mar.mar(&["logs", "-a", "steady", "-n", "100000"]).stdout;
        logs.contains("slow-post 0-1").then_some(logs)
    })
    .await;
    let mut seen = std::collections::HashMap::new();
    for l in logs.lines() {
        if let Some(id) = l.split("slow-post ").nth(1) {
            *seen.entry(id.trim().to_owned()).or_insert(0) += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTs handled more than once: {twice:?}");
    assert_eq!(seen.len(), posted, "POSTs that never reached the app");
    for code in ["code=H13", "code=H18"] {
        assert!(!logs.contains(code), "{code} in:\n{logs}");
    }
}

#[tokio::test]
async fn crash_loops_back_off_and_show_in_ps() {
    let mar = MarServer::start();
    mar.create_app("flaky");
    let repo = lifecycle_app(&mar);
    repo.write("Procfile", "web: python3 server.py --crash-after 1\n");
    repo.commit("crashes after a second");
    deploy(&mar, "flaky", &repo).await;
    let p = eventually(Duration::from_secs(30), || async {
        let p = ps(&mar, "flaky");
        (p[0]["restarts"].as_u64().unwrap_or(0) >= 3).then_some(p)
    })
    .await;
    assert_eq!(p[0]["dyno"], "web.1");
    let logs = mar
        .mar(&[
            "logs", "-a", "flaky", "-n", "300", "--ps", "web.1", "--source", "mar",
        ])
        .stdout;
    assert!(
        logs.contains("mar[web.1]: Process exited with status 3"),
        "{logs}"
    );
    assert!(
        logs.contains("mar[web.1]: State changed from up to crashed"),
        "{logs}"
    );
    assert!(logs.contains("Restarting in 1s after 2 crashes"), "{logs}");
    assert!(
        !logs.contains("app[web.1]"),
        "source filter let app lines through: {logs}"
    );
}

#[tokio::test]
async fn boot_timeout_is_per_app_and_health_checks_gate_traffic() {
    let mar = MarServer::start();
    mar.create_app("careful");
    let repo = lifecycle_app(&mar);
    deploy(&mar, "careful", &repo).await;

    // Binds after 3 s: too late for a 2 s boot timeout, in time for 10 s.
    assert!(
        mar.mar(&["config:set", "MAR_BOOT_TIMEOUT=2", "-a", "careful"])
            .ok()
    );
    repo.write("Procfile", "web: sleep 3 && python3 server.py\n");
    repo.commit("binds late");
    let push = repo.push(&mar.git_url("careful"), "main");
    assert!(!push.ok());
    assert!(
        push.stderr.contains(
            "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 2 seconds"
        ),
        "{}",
        push.stderr
    );
    assert!(
        mar.mar(&["config:set", "MAR_BOOT_TIMEOUT=10", "-a", "careful"])
            .ok()
    );
    deploy(&mar, "careful", &repo).await;
    let bad = mar.mar(&["config:set", "MAR_BOOT_TIMEOUT=soon", "-a", "careful"]);
    assert!(
        !bad.ok()
            && bad
                .stderr
                .contains("MAR_BOOT_TIMEOUT must be a whole number of seconds"),
        "{}",
        bad.all()
    );

    // Health checks: a release whose /health fails never gets traffic.
    repo.write("Procfile", "web: python3 server.py\n");
    repo.write(
        "app.json",
        r#"{"healthchecks":{"web":[{"type":"startup","name":"ready","path":"/health","content":"ok","attempts":2,"wait":1,"timeout":2}]}}"#,
    );
    repo.commit("with healthchecks");
    assert!(mar.mar(&["config:set", "HEALTHY=0", "-a", "careful"]).ok());
    let releases = |mar: &MarServer| -> (usize, String) {
        let ps = ps(mar, "careful");
        let list: serde_json::Value =
            serde_json::from_str(&mar.mar(&["releases", "--json", "-a", "careful"]).stdout)
                .unwrap();
        (
            list.as_array().map_or(0, Vec::len),
            ps[0]["release"].to_string(),
        )
    };
    let before = releases(&mar);
    let push = repo.push(&mar.git_url("careful"), "main");
    assert!(!push.ok(), "{}", push.stderr);
    assert!(
        push.stderr
            .contains("web.1: healthcheck \"ready\" attempt 2/2: answered 500"),
        "{}",
        push.stderr
    );
    assert!(
        push.stderr
            .contains("web.1 failed healthcheck \"ready\" after 2 attempts"),
        "{}",
        push.stderr
    );
    assert_eq!(
        mar.get("careful.localhost", "/").await.status,
        200,
        "the previous release keeps serving"
    );
    // Both releases would answer 200: what shows the old one serves is that no release was
    // recorded and the instances still run the one they ran.
    assert_eq!(
        releases(&mar),
        before,
        "a release that failed its checks was recorded"
    );
    assert!(mar.mar(&["config:set", "HEALTHY=1", "-a", "careful"]).ok());
    let push = repo.push(&mar.git_url("careful"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr
            .contains("web.1: healthcheck \"ready\" passed (200)"),
        "{}",
        push.stderr
    );
    repo.write("app.json", "{not json");
    repo.commit("broken app.json");
    let push = repo.push(&mar.git_url("careful"), "main");
    assert!(
        !push.ok() && push.stderr.contains("app.json is not valid"),
        "{}",
        push.stderr
    );
}

#[tokio::test]
async fn sigterm_ignorer_is_killed_after_the_stop_timeout() {
    let mar = MarServer::start();
    mar.create_app("stubborn");
    assert!(
        mar.mar(&[
            "config:set",
            "MAR_STOP_TIMEOUT=2",
            "MAR_WAIT_TO_RETIRE=1",
            "-a",
            "stubborn"
        ])
        .ok()
    );
    let repo = lifecycle_app(&mar);
    repo.write("Procfile", "web: python3 server.py --ignore-sigterm\n");
    repo.commit("ignores SIGTERM");
    deploy(&mar, "stubborn", &repo).await;
    let before = ps(&mar, "stubborn")[0]["pid"].as_u64().unwrap();
    assert!(mar.mar(&["ps:restart", "-a", "stubborn"]).ok());
    let logs = eventually(Duration::from_secs(20), || async {
        let logs = mar.mar(&["logs", "-a", "stubborn", "-n", "200"]).stdout;
        logs.contains("Error R12 (Exit timeout)").then_some(logs)
    })
    .await;
    assert!(
        logs.contains("Stopping remaining processes with SIGKILL"),
        "{logs}"
    );
    // SIGKILL came only after the stop timeout (2 s), not at once: the log's own clock says.
    let at = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.get(..23))
            .and_then(chrono_ms)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{logs}"))
    };
    let waited = at("Error R12 (Exit timeout)") - at("Stopping all processes with SIGTERM");
    assert!(
        waited >= 1900,
        "SIGKILL after {waited} ms, not the 2 s stop timeout"
    );
    // The whole process group is gone, not only its leader: signal 0 to the group fails.
    eventually(Duration::from_secs(10), || async {
        let group = std::process::Command::new("kill")
            .args(["-0", "--", &format!("-{before}")])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        (!group.success()).then_some(())
    })
    .await;
}

/// Milliseconds of the day of a log timestamp `2026-11-30T10:11:12.345`.
fn chrono_ms(t: &str) -> Option<i64> {
    let time = t.split('T').nth(1)?;
    let (hms, ms) = time.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}
