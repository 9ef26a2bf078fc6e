//! Attacks on the platform, performed for real: what a hostile tenant, or an operator's slip,
//! tries, and what must hold.

use std::process::{Command, Stdio};
use std::time::Duration;

use mar_tests::{MarServer, eventually, mar_bin, pids_where, processes_running, repo_root};

/// Pushes `repo` to `app` and asserts the push was refused with `why` in its output.
fn assert_refused(
    mar: &MarServer,
    repo: &mar_tests::GitRepo,
    app: &str,
    why: &str,
) -> mar_tests::CmdOutput {
    let push = repo.push(&mar.git_url(app), "main");
    assert!(!push.ok(), "{}", push.all());
    assert!(push.stderr.contains(why), "{}", push.stderr);
    push
}

/// Creates `app` and a copy of the shell example that builds with the fixture buildpack
/// `fixture` (under tests/fixtures/buildpacks), committed and ready to push.
fn with_fixture_buildpack(mar: &MarServer, app: &str, fixture: &str) -> mar_tests::GitRepo {
    mar.create_app(app);
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let pack = repo_root().join("tests/fixtures/buildpacks").join(fixture);
    repo.write(".buildpacks", &format!("{}\n", pack.display()));
    repo.commit(&format!("built by the {fixture} buildpack"));
    repo
}

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
    let app = with_fixture_buildpack(&mar, "private", "modes");
    assert!(
        mar.mar(&["config:set", "SECRET=hunter2", "-a", "private"])
            .ok()
    );
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

#[tokio::test]
async fn apps_never_run_as_root_when_their_users_cannot_reach_the_data_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = mar_tests::scratch_dir();
    // Like /root: closed to everyone else.
    let closed = tmp.path().join("closed");
    std::fs::create_dir_all(closed.join("data")).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(mar_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(closed.join("data"))
        .env_remove("MAR_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is not searchable by other users",
            closed.display()
        )) && stderr.contains("Apps never run as root"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("mar listening"));
    assert!(!closed.join("data/serve.json").exists());
}

/// The processes whose working directory is inside `dir`: an app's, found without its pid.
fn processes_in(dir: &std::path::Path) -> Vec<u32> {
    pids_where(|p| std::fs::read_link(p.join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
}

#[tokio::test]
async fn the_app_sandbox_is_complete() {
    // A secret file that `mar serve` inherited open (from a careless service manager).
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "the operator's secret").unwrap();
    let mar = MarServer::start_leaking(secret.path());
    mar.deploy_lifecycle("alice", &[]);
    mar.deploy_lifecycle("mallory", &[]);

    // No setuid binary can raise an app's privileges.
    assert_eq!(
        mar.get("alice.localhost", "/status?field=NoNewPrivs")
            .await
            .body,
        "1"
    );
    // The descriptor did not reach the app.
    let inherited = mar.get("alice.localhost", "/inherited").await.body;
    assert_eq!(inherited, "", "the app inherited: {inherited}");

    // /var/tmp and /dev/shm are private, as /tmp is.
    let name = format!("alice-left-this-{}", std::process::id());
    for dir in ["/var/tmp", "/dev/shm"] {
        let w = mar
            .get(
                "alice.localhost",
                &format!("/shared-write?dir={dir}&name={name}"),
            )
            .await;
        assert_eq!(w.status, 200, "{dir}: {}", w.body);
        let own = mar
            .get("alice.localhost", &format!("/shared-list?dir={dir}"))
            .await;
        assert!(own.body.contains(&name), "{dir}: {}", own.body);
        let other = mar
            .get("mallory.localhost", &format!("/shared-list?dir={dir}"))
            .await;
        assert!(!other.body.contains(&name), "mallory sees alice's {dir}");
        assert!(
            !std::path::Path::new(dir).join(&name).exists(),
            "{dir} on the host"
        );
    }

    // The platform's data directory is read-only to an app: its build cache and run
    // directories are on the platform's disk, where nothing of the app's may grow.
    let cache = mar.data_dir.join("apps/alice/cache");
    let w = mar
        .get(
            "alice.localhost",
            &format!("/shared-write?dir={}&name=grow", cache.display()),
        )
        .await;
    assert_eq!(w.status, 403, "{}", w.body);
    assert!(w.body.contains("Read-only file system"), "{}", w.body);
    // Its /proc shows its own processes only: not mallory's.
    let (_, mallory_pid) = web_port_and_pid(&mar, "mallory");
    let procs = mar
        .get("alice.localhost", "/shared-list?dir=/proc")
        .await
        .body;
    assert!(
        !procs.lines().any(|l| l == mallory_pid.to_string()),
        "alice sees mallory's process {mallory_pid}"
    );
    // IPC objects of its own, and no core dumps.
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert_ne!(
        mar.get("alice.localhost", "/ns").await.body,
        host_ipc.to_string_lossy()
    );
    assert_eq!(mar.get("alice.localhost", "/core").await.body, "0");
    // No cloud metadata endpoint (where a VM's credentials are handed out).
    let metadata = mar
        .get("alice.localhost", "/connect?host=169.254.169.254&port=80")
        .await
        .body;
    assert!(metadata.contains("Connection refused"), "{metadata}");

    // The apps die with `mar serve`, even killed with SIGKILL and never started again.
    let apps = mar.data_dir.join("apps");
    assert!(!processes_in(&apps).is_empty());
    let killed = Command::new("kill")
        .args(["-KILL", &mar.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually(Duration::from_secs(10), || {
        let left = processes_in(&apps);
        async move { left.is_empty().then_some(()) }
    })
    .await;
}

/// The pids of processes running as `uid` (real or effective).
fn processes_of(uid: u32) -> Vec<u32> {
    pids_where(|p| {
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| {
                ids.split_whitespace()
                    .take(2)
                    .any(|id| id == uid.to_string())
            })
    })
}

#[tokio::test]
async fn apps_of_two_servers_never_share_a_user_and_a_destroyed_apps_user_is_given_back_clean() {
    let one = MarServer::start();
    let two = MarServer::start();
    one.deploy_lifecycle("alice", &[]);
    two.deploy_lifecycle("bob", &[]);
    let alice: u32 = one
        .get("alice.localhost", "/whoami")
        .await
        .body
        .parse()
        .unwrap();
    let bob: u32 = two
        .get("bob.localhost", "/whoami")
        .await
        .body
        .parse()
        .unwrap();
    assert_ne!(alice, bob, "the first apps of two servers share a user");
    // Tools can look the users up.
    let name = Command::new("id")
        .args(["-nu", &alice.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&name.stdout).trim(),
        format!("mar-{alice}")
    );

    // Alice leaves a process outside her process group, then is destroyed.
    let daemon: u32 = one
        .get("alice.localhost", "/daemon")
        .await
        .body
        .parse()
        .unwrap();
    assert!(processes_of(alice).contains(&daemon));
    let destroyed = one.mar(&["apps:destroy", "alice", "--confirm", "alice"]);
    assert!(destroyed.ok(), "{}", destroyed.all());
    // Nothing runs as her user any more, and only then is the uid given back.
    assert!(
        processes_of(alice).is_empty(),
        "left: {:?}",
        processes_of(alice)
    );
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&alice.to_string())),
        "alice's entry is still there"
    );
    // Bob is untouched.
    assert_eq!(two.get("bob.localhost", "/").await.status, 200);
}

#[tokio::test]
async fn builds_are_sandboxed_like_apps() {
    let mar = MarServer::start();
    let app = with_fixture_buildpack(&mar, "hostile", "hostile");
    let push = app.push(&mar.git_url("hostile"), "main");
    assert!(push.ok(), "{}", push.all());
    let out = &push.stderr;
    let forked: usize = out
        .split("forked=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fork count in:\n{out}"));
    assert!(
        (1..1024).contains(&forked),
        "a build started {forked} processes under a limit of 1024"
    );
    assert!(out.contains("nofile=10000 nnp=1"), "{out}");
    assert!(out.contains("daemon left"), "{out}");
    // The daemon did not outlive the build.
    assert!(
        processes_running("sleep 6017").is_empty(),
        "the build's daemon survived it"
    );
}

#[tokio::test]
async fn pushed_files_the_platform_reads_are_never_followed_out_of_the_tree() {
    let mar = MarServer::start();
    mar.create_app("linky");
    let token = mar.token();
    let app = mar.repo_from(&repo_root().join("examples/shell-hello"));
    // A Procfile that is a symlink to the admin token.
    std::fs::remove_file(app.dir.join("Procfile")).unwrap();
    std::os::unix::fs::symlink(mar.data_dir.join("token"), app.dir.join("Procfile")).unwrap();
    app.commit("procfile as a symlink");
    let push = assert_refused(
        &mar,
        &app,
        "linky",
        "Procfile is a symbolic link (or leads out of the app): push the file itself",
    );
    assert!(
        !push.all().contains(token.trim()),
        "the token leaked into the push output"
    );
    let logs = mar.mar(&["logs", "-a", "linky", "-n", "200"]).stdout;
    assert!(
        !logs.contains(token.trim()),
        "the token leaked into the app's log"
    );
}

#[tokio::test]
async fn an_oversized_push_is_refused_and_leaves_nothing_behind() {
    let mar = MarServer::start_with(Some("max_source_size: 1M\n"));
    mar.create_app("big");
    let app = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = app.push(&mar.git_url("big"), "main");
    assert!(push.ok(), "{}", push.all());
    let builds = || {
        std::fs::read_dir(mar.data_dir.join("builds"))
            .unwrap()
            .count()
    };

    // Compressible: a small pack, a large tree once unpacked.
    app.write("zeros.txt", &"0".repeat(3 << 20));
    app.commit("three megabytes of zeros");
    assert_refused(
        &mar,
        &app,
        "big",
        "the pushed source is larger than the limit of 1.0M (max_source_size in mar.yaml)",
    );
    assert_eq!(builds(), 0, "a refused push left a build behind");

    // Incompressible, past the limit: refused with the same message.
    app.git(&["reset", "-q", "--hard", "HEAD~1"]);
    let mut noise = vec![0u8; 3 << 19];
    getrandom_fill(&mut noise);
    std::fs::write(app.dir.join("noise.bin"), &noise).unwrap();
    app.commit("one and a half megabytes of noise");
    assert_refused(
        &mar,
        &app,
        "big",
        "the pushed source is larger than the limit",
    );
    assert_eq!(builds(), 0);
    // Past twice the limit, git refuses the pack before it is stored.
    let mut noise = vec![0u8; 3 << 20];
    getrandom_fill(&mut noise);
    std::fs::write(app.dir.join("noise.bin"), &noise).unwrap();
    app.commit("three megabytes of noise");
    let push = app.push(&mar.git_url("big"), "main");
    assert!(!push.ok(), "{}", push.all());
    assert_eq!(builds(), 0);
    let objects = std::process::Command::new("git")
        .args(["count-objects", "-v"])
        .current_dir(mar.data_dir.join("repos/big.git"))
        .output()
        .unwrap();
    let sizes = String::from_utf8_lossy(&objects.stdout).into_owned();
    let stored_kib: u64 = sizes
        .lines()
        .filter_map(|l| {
            l.strip_prefix("size: ")
                .or_else(|| l.strip_prefix("size-pack: "))
        })
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum();
    assert!(stored_kib < 1024, "the refused pushes were stored: {sizes}");
    // The first release still serves.
    assert_eq!(mar.get("big.localhost", "/").await.status, 200);
}

/// Fills `buf` with bytes no compressor can shrink (an xorshift stream seeded from the clock).
fn getrandom_fill(buf: &mut [u8]) {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// The port and pid of `app`'s web.1, from `mar ps --json`.
fn web_port_and_pid(mar: &MarServer, app: &str) -> (u64, u64) {
    let ps: serde_json::Value =
        serde_json::from_str(&mar.mar(&["ps", "-a", app, "--json"]).stdout).unwrap();
    (
        ps[0]["port"].as_u64().unwrap_or(0),
        ps[0]["pid"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn apps_reach_each_other_only_through_the_router_and_cannot_squat_a_port() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("alice", &[]);
    mar.deploy_lifecycle("mallory", &[]);
    let (port, pid) = web_port_and_pid(&mar, "alice");
    assert!(port > 0 && pid > 0);

    // Straight to alice's instance: refused for mallory, fine for alice herself.
    let direct = mar
        .get("mallory.localhost", &format!("/connect?port={port}"))
        .await
        .body;
    assert!(
        direct.starts_with("refused"),
        "mallory reached alice directly: {direct}"
    );
    assert_eq!(
        mar.get("alice.localhost", &format!("/connect?port={port}"))
            .await
            .body,
        "connected"
    );

    // Alice crashes; mallory squats her port at once.
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(killed.success());
    let squat = mar
        .get("mallory.localhost", &format!("/squat?port={port}"))
        .await
        .body;
    // Alice comes back on a new port, and her users never reach mallory.
    let (new_port, _) = eventually(Duration::from_secs(20), || async {
        let (p, pid) = web_port_and_pid(&mar, "alice");
        (pid > 0 && p != port && p > 0).then_some((p, pid))
    })
    .await;
    assert_ne!(new_port, port, "squat: {squat}");
    for _ in 0..20 {
        let r = mar.get("alice.localhost", "/").await;
        assert!(
            r.status != 200 || r.body.contains("lifecycle fixture"),
            "alice's traffic reached the squatter: {}",
            r.body
        );
    }
    eventually(Duration::from_secs(20), || async {
        let r = mar.get("alice.localhost", "/").await;
        (r.status == 200 && r.body.contains("lifecycle fixture")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_apps_home_is_ephemeral_and_bounded() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("filler", &["MAR_DISK_LIMIT=32M"]);
    let r = mar.get("filler.localhost", "/fill?mb=64").await;
    assert_eq!(r.status, 507, "{}", r.body);
    let mb: u32 = r
        .body
        .strip_prefix("full after ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.body));
    assert!((16..=32).contains(&mb), "wrote {mb} MB under a 32M limit");
    // The writes never reached the platform's disk: the slug on it is as it was.
    let run = std::fs::read_dir(mar.data_dir.join("apps/filler/run"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(run.join("server.py").is_file());
    assert!(
        !run.join("filled.bin").exists(),
        "the app wrote into the slug on disk"
    );
    // The app still serves, and a small write fits.
    assert_eq!(
        mar.get("filler.localhost", "/fill?mb=4").await.body,
        "wrote 4 MB"
    );
}

/// Opens a connection from `from` and sends one keep-alive request for `/healthz`; returns the
/// stream and the answer's first line.
async fn healthz_from(from: &str, addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    (s, text)
}

#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let mar = MarServer::start_with(Some("max_connections_per_client: 20\n"));
    let mut held = Vec::new();
    for _ in 0..20 {
        let (s, answer) = healthz_from("127.0.0.1", mar.addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(s);
    }
    // The 21st from the same address is refused, and told why.
    let (_, answer) = healthz_from("127.0.0.1", mar.addr).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );
    // Everyone else is still served.
    let (_, answer) = healthz_from("127.0.0.2", mar.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Closing connections gives the places back.
    held.clear();
    eventually(Duration::from_secs(5), || async {
        let (_, answer) = healthz_from("127.0.0.1", mar.addr).await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_tree_the_app_cannot_read_fails_its_push_instead_of_hanging_it() {
    let mar = MarServer::start();
    let app = with_fixture_buildpack(&mar, "locked", "unreadable");
    let started = std::time::Instant::now();
    let push = assert_refused(&mar, &app, "locked", "cannot pack the slug");
    assert!(push.stderr.contains("Permission denied"), "{}", push.stderr);
    assert!(started.elapsed() < Duration::from_secs(60), "the push hung");
    // The app can still be pushed to: its lock was given back.
    let app2 = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = app2.push(&mar.git_url("locked"), "main");
    assert!(push.ok(), "{}", push.all());
}

/// The most memory `pid` has used, in KiB (VmHWM).
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_process_that_never_ends_its_line_cannot_grow_the_platform() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("chatty", &[]);
    let before = peak_kib(mar.pid());
    // 60 MB without a newline, printed by a one-off process.
    let out = mar.mar(&[
        "run",
        "-a",
        "chatty",
        "--",
        "head -c 60000000 /dev/zero | tr '\\0' a",
    ]);
    assert!(out.ok(), "{}", out.stderr);
    assert!(out.stdout.len() > 1_000_000, "{} bytes", out.stdout.len());
    let grew = peak_kib(mar.pid()).saturating_sub(before);
    assert!(
        grew < 40 << 10,
        "mar serve's peak memory grew by {grew} KiB"
    );
}

#[tokio::test]
async fn without_the_firewall_apps_do_not_run_at_all() {
    let tmp = mar_tests::scratch_dir();
    // `nft` lives in /usr/sbin: without it on the PATH, nftables cannot be had.
    let out = Command::new(mar_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env_remove("MAR_HOME")
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot isolate apps: nftables is not usable"),
        "{stderr}"
    );
    assert!(!tmp.path().join("data/serve.json").exists());
}
