//! WebAssembly apps end to end: the examples built from source by the wasm buildpack on
//! `git push` (clang-14 for the C WAGI handler, componentize-py for the Python wasi:http
//! component), served in-process through the router, with config vars, rollback across the
//! two interfaces, a restart of `mar serve` that loads the stored artifact, and each kind of
//! misbehaving guest contained to its own request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mar_tests::{Load, MarServer, eventually, http, repo_root};

fn example(name: &str) -> std::path::PathBuf {
    repo_root().join("examples").join(name)
}

/// The app's log as `mar logs` prints it.
fn logs(mar: &MarServer, app: &str) -> String {
    let out = mar.mar(&["logs", "-n", "500", "-a", app]);
    assert!(out.ok(), "{}", out.all());
    out.stdout
}

// Multi-threaded: the CLI calls block one thread while the load runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_wagi_handler_is_built_on_push_and_gets_the_cgi_request() {
    let mut mar = MarServer::start();
    mar.create_app("cgi");
    let repo = mar.repo_from(&example("wasm-hello-c"));
    let push = repo.push(&mar.git_url("cgi"), "main");
    assert!(push.ok(), "{}", push.all());
    for line in [
        "remote: -----> WebAssembly app detected",
        "remote: -----> Building hello.wasm from hello.c with",
        "remote: -----> Compiling the WebAssembly module hello.wasm",
        "WAGI module (WASI preview1 command, CGI/1.1)",
        "remote: -----> Launching... done, v1",
    ] {
        assert!(
            push.stderr.contains(line),
            "no {line:?} in:\n{}",
            push.stderr
        );
    }
    assert!(
        !push.stderr.contains("no `web` process type"),
        "{}",
        push.stderr
    );

    let r = mar.get("cgi.localhost", "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "Hello from C on WebAssembly\n");

    let r = http(
        mar.addr,
        "GET",
        "cgi.localhost",
        "/cgi?a=1&b=two",
        &[("x-test", "yes")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    for var in [
        "REQUEST_METHOD=GET",
        "PATH_INFO=/cgi",
        "SCRIPT_NAME=\n",
        "QUERY_STRING=a=1&b=two",
        "SERVER_NAME=cgi.localhost",
        &format!("SERVER_PORT={}", mar.addr.port()),
        "SERVER_PROTOCOL=HTTP/1.1",
        "REMOTE_ADDR=127.0.0.1",
        "X_MATCHED_ROUTE=/...",
        // The URL as the client gave it: its Host header had no port.
        "X_FULL_URL=http://cgi.localhost/cgi?a=1&b=two",
        "HTTP_X_TEST=yes",
        "GATEWAY_INTERFACE=CGI/1.1",
    ] {
        assert!(r.body.contains(var), "no {var:?} in:\n{}", r.body);
    }

    // A body in and out, larger than the pipes between guest and router (streamed, not held).
    let body: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = mar.http("POST", "cgi.localhost", "/echo", &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-echo-length"], "300000");
    assert_eq!(r.body, body);

    // Status and Location from the CGI head.
    let r = mar.get("cgi.localhost", "/go").await;
    assert_eq!(
        (r.status, r.headers["location"].to_str().unwrap()),
        (302, "/")
    );
    let r = mar.get("cgi.localhost", "/nowhere").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "no route for /nowhere\n");

    // A config change is a new release, switched to without dropping a request.
    let load = Load::start(mar.addr, "cgi.localhost", "/", Duration::from_millis(5), 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = mar.mar(&["config:set", "GREETING=Howdy", "-a", "cgi"]);
    assert!(out.ok(), "{}", out.all());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (sent, failures) = load.finish().await;
    assert!(sent > 10, "{sent}");
    assert!(failures.is_empty(), "{failures:?}");
    let r = mar.get("cgi.localhost", "/").await;
    assert_eq!(r.body, "Howdy from C on WebAssembly\n");
    let releases = mar.mar(&["releases", "-a", "cgi"]);
    assert!(releases.stdout.contains("v2"), "{}", releases.all());

    // What the guest printed to stderr, and the router's lines (written in the background),
    // are in the app's log.
    let log = eventually(Duration::from_secs(10), || async {
        let log = logs(&mar, "cgi");
        log.contains("dyno=wasm").then_some(log)
    })
    .await;
    assert!(
        log.contains("app[wasm]: no route for GET /nowhere"),
        "{log}"
    );

    let ps = mar.mar(&["ps", "-a", "cgi"]);
    assert!(ps.ok(), "{}", ps.all());
    assert!(ps.stdout.contains("wasm: up (v2)"), "{}", ps.stdout);
    assert!(
        ps.stdout.contains(", failed 0, instances "),
        "{}",
        ps.stdout
    );
    let requests: u64 = ps
        .stdout
        .split("requests ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(requests > 10, "{}", ps.stdout);
    let info = mar.mar(&["apps:info", "-a", "cgi"]);
    assert!(
        info.stdout.contains("WASM:      WAGI module"),
        "{}",
        info.stdout
    );
    let scale = mar.mar(&["ps:scale", "web=2", "-a", "cgi"]);
    assert!(!scale.ok());
    assert!(scale.all().contains("WebAssembly app"), "{}", scale.all());

    // Root's copies: the module and its artifact, out of the app's reach.
    let wasm_dir = mar.data_dir.join("apps/cgi/wasm");
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().mode() & 0o7777
    };
    assert_eq!(mode(&wasm_dir), 0o700);
    let artifacts: Vec<std::path::PathBuf> = std::fs::read_dir(&wasm_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert_eq!(mode(&artifacts[0]), 0o600);
    // An artifact that is gone (or was built by another engine) is compiled again from root's
    // copy of the module at start, and the app serves.
    std::fs::remove_file(&artifacts[0]).unwrap();
    mar = mar.restart();
    assert_eq!(
        mar.get("cgi.localhost", "/").await.body,
        "Howdy from C on WebAssembly\n"
    );
    assert!(logs(&mar, "cgi").contains("Compiling the WebAssembly module again"));
    assert!(artifacts[0].is_file());
}

#[tokio::test]
async fn a_python_component_serves_rolls_back_to_wagi_and_back_and_survives_a_restart() {
    let mut mar = MarServer::start();
    mar.create_app("hybrid");
    let out = mar.mar(&["config:set", "GREETING=Hej", "-a", "hybrid"]);
    assert!(out.ok(), "{}", out.all());
    let py = mar.repo_from(&example("wasm-hello-python"));
    let push = py.push(&mar.git_url("hybrid"), "main");
    assert!(push.ok(), "{}", push.all());
    for line in [
        "remote: -----> Building app.wasm from the Python module app with componentize-py",
        "wasi:http component (wasi:http/incoming-handler)",
        "remote: -----> Launching... done, v2",
    ] {
        assert!(
            push.stderr.contains(line),
            "no {line:?} in:\n{}",
            push.stderr
        );
    }
    let r = mar.get("hybrid.localhost", "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Hej from Python on WebAssembly\n")
    );
    let r = mar.get("hybrid.localhost", "/env?name=GREETING").await;
    assert_eq!(r.body, "Hej");
    let r = mar
        .http("POST", "hybrid.localhost", "/echo", "round trip")
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "round trip"));
    assert_eq!(r.headers["x-echo-length"], "10");

    // The C handler pushed to the same app: a WAGI release (v3) after a component one.
    let c = mar.repo_from(&example("wasm-hello-c"));
    let push = c.push(&mar.git_url("hybrid"), "main");
    assert!(push.ok(), "{}", push.all());
    assert_eq!(
        mar.get("hybrid.localhost", "/").await.body,
        "Hej from C on WebAssembly\n"
    );

    // Rollback in both directions between the interfaces.
    let out = mar.mar(&["rollback", "v2", "-a", "hybrid"]);
    assert!(out.ok(), "{}", out.all());
    assert_eq!(
        mar.get("hybrid.localhost", "/").await.body,
        "Hej from Python on WebAssembly\n"
    );
    let out = mar.mar(&["rollback", "v3", "-a", "hybrid"]);
    assert!(out.ok(), "{}", out.all());
    assert_eq!(
        mar.get("hybrid.localhost", "/").await.body,
        "Hej from C on WebAssembly\n"
    );
    let out = mar.mar(&["rollback", "v2", "-a", "hybrid"]);
    assert!(out.ok(), "{}", out.all());

    // A restart of `mar serve` loads the stored artifact: the first request is answered
    // without compiling the 18 MB component again.
    mar = mar.restart();
    let t0 = Instant::now();
    let r = mar.get("hybrid.localhost", "/").await;
    let first = t0.elapsed();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Hej from Python on WebAssembly\n")
    );
    let log = logs(&mar, "hybrid");
    assert!(log.contains("Restoring release v6 after start"), "{log}");
    assert!(
        !log.contains("Compiling the WebAssembly module again"),
        "{log}"
    );
    assert!(
        first < Duration::from_secs(5),
        "first request took {first:?}"
    );

    // A fresh instance per request: module state never carries over. With instance reuse,
    // it does.
    for _ in 0..2 {
        assert_eq!(mar.get("hybrid.localhost", "/count").await.body, "1");
    }
    let out = mar.mar(&["config:set", "MAR_WASM_INSTANCE_REUSE=true", "-a", "hybrid"]);
    assert!(out.ok(), "{}", out.all());
    let mut counts = Vec::new();
    for _ in 0..3 {
        counts.push(mar.get("hybrid.localhost", "/count").await.body);
    }
    assert_eq!(counts, ["1", "2", "3"]);
    let ps = mar.mar(&["ps", "-a", "hybrid", "--json"]);
    let ps: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    let w = &ps[0]["wasm"];
    assert_eq!(
        (w["instantiations"].as_u64(), w["reused"].as_u64()),
        (Some(1), Some(2)),
        "{w}"
    );
}

/// This machine's address on its default route (not loopback): an address of this machine
/// all the same, which guests must not reach.
fn lan_address() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:80").unwrap();
    let ip = s.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback(),
        "this test needs an address other than loopback (a default route)"
    );
    ip
}

/// Another machine for the outbound tests: a network namespace joined to this one by a veth
/// pair, with a plain HTTP server answering `hello` on its address. Removed when dropped.
struct OtherHost {
    ns: String,
    link: String,
    ip: std::net::Ipv4Addr,
    port: u16,
    server: std::process::Child,
}

impl OtherHost {
    fn start() -> Self {
        let id = std::process::id();
        let (ns, link, peer) = (
            format!("mar-other-{id}"),
            format!("mo{}a", id % 100_000),
            format!("mo{}b", id % 100_000),
        );
        let (a, b) = (
            format!("10.{}.{}.1", 200 + id % 50, (id / 50) % 250),
            format!("10.{}.{}.2", 200 + id % 50, (id / 50) % 250),
        );
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &ns]);
        run(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        run(&["link", "set", &peer, "netns", &ns]);
        run(&["addr", "add", &format!("{a}/30"), "dev", &link]);
        run(&["link", "set", &link, "up"]);
        run(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{b}/30"),
            "dev",
            &peer,
        ]);
        run(&["netns", "exec", &ns, "ip", "link", "set", &peer, "up"]);
        let port = 8000;
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c"])
            .arg(
                "import http.server as h\n\
                 class H(h.BaseHTTPRequestHandler):\n\
                 \tdef do_GET(self):\n\
                 \t\tself.send_response(200); self.send_header('Content-Length', '5'); self.end_headers(); self.wfile.write(b'hello')\n\
                 \tdef log_message(self, *a): pass\n\
                 h.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n",
            )
            .spawn()
            .unwrap();
        let ip: std::net::Ipv4Addr = b.parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the other host's server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            ns,
            link,
            ip,
            port,
            server,
        }
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

#[tokio::test]
async fn outbound_http_reaches_only_allowed_hosts_and_never_this_machine() {
    let other = OtherHost::start();
    let (ip, port) = (other.ip, other.port);
    let lan = lan_address();
    // A server on this machine's LAN address, listed as allowed: still refused, since
    // `mar serve` makes the request, and its user may reach every app's port.
    let own = tokio::net::TcpListener::bind((lan, 0)).await.unwrap();
    let own_port = own.local_addr().unwrap().port();
    let mar = MarServer::start();
    mar.create_app("out");
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/wasm-outbound"));
    repo.write(
        "app.json",
        &serde_json::json!({"wasm": {
            "module": "app.wasm", "build": "python", "source": "app",
            "allowed_outbound_hosts": [
                format!("http://{ip}:{port}"),
                "http://127.0.0.1:*".to_owned(),
                format!("http://{lan}:{own_port}"),
            ],
        }})
        .to_string(),
    );
    repo.commit("allow");
    let push = repo.push(&mar.git_url("out"), "main");
    assert!(push.ok(), "{}", push.all());
    let fetch = |url: String| {
        let mar = &mar;
        async move {
            let r = mar.get("out.localhost", &format!("/?url={url}")).await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body
        }
    };
    assert_eq!(
        fetch(format!("http://{ip}:{port}/")).await,
        "status=200 body=hello"
    );
    // Another port of the same host is not on the list.
    let other_port = if port == u16::MAX { port - 1 } else { port + 1 };
    assert_eq!(
        fetch(format!("http://{ip}:{other_port}/")).await,
        "error=ErrorCode_HttpRequestDenied"
    );
    assert_eq!(
        fetch("https://example.com/".into()).await,
        "error=ErrorCode_HttpRequestDenied"
    );
    // Listed, but this machine by loopback: mar's own port (the platform, other apps).
    assert_eq!(
        fetch(format!("http://127.0.0.1:{}/", mar.addr.port())).await,
        "error=ErrorCode_DestinationIpProhibited"
    );
    // Listed, but this machine by its LAN address.
    assert_eq!(
        fetch(format!("http://{lan}:{own_port}/")).await,
        "error=ErrorCode_DestinationIpProhibited"
    );
    drop(own);
    let log = logs(&mar, "out");
    assert!(log.contains("not in allowed_outbound_hosts"), "{log}");
    assert!(log.contains("is this machine or link-local"), "{log}");
}

#[tokio::test]
async fn each_misbehaving_guest_fails_only_its_own_request() {
    let mar = MarServer::start();
    mar.create_app("faults");
    let out = mar.mar(&[
        "config:set",
        "MAR_WASM_TIMEOUT=2",
        "MAR_WASM_MEMORY=32M",
        "-a",
        "faults",
    ]);
    assert!(out.ok(), "{}", out.all());
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/wasm-faults"));
    // The attack: a symlink in the readable `files` directory to a file of the host.
    std::os::unix::fs::symlink("/etc/hostname", repo.dir.join("static/out")).unwrap();
    repo.commit("a link out of the files directory");
    let push = repo.push(&mar.git_url("faults"), "main");
    assert!(push.ok(), "{}", push.all());
    mar.deploy_lifecycle("procs", &[]);

    // Two guests computing forever, with a process app and the same WASM app's good route
    // served meanwhile at full speed.
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let addr = mar.addr;
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r = http(addr, "GET", "faults.localhost", "/loop", &[], Bytes::new()).await;
                (r, t0.elapsed())
            })
        })
        .collect();
    // Both are computing in guests before the other requests go.
    eventually(Duration::from_secs(5), || async {
        let out = mar.mar(&["ps", "-a", "faults", "--json"]);
        let ps: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (ps[0]["wasm"]["running"].as_u64() == Some(2)).then_some(())
    })
    .await;
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(mar.get("procs.localhost", "/").await.status, 200);
        assert_eq!(mar.get("faults.localhost", "/ok").await.body, "fine\n");
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "a busy guest slowed other requests: {:?}",
            t0.elapsed()
        );
    }
    for s in spinners {
        let (r, took) = s.await.unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.body.contains("H12"), "{}", r.body);
        assert!(r.body.contains("its own time limit"), "{}", r.body);
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(6),
            "{took:?}"
        );
    }

    for (path, status, logged) in [
        ("/trap", 500, "the handler failed"),
        ("/bomb", 500, "memory limit of 32 MiB"),
        ("/badcgi", 500, "without a colon"),
        ("/exit", 500, "exited with status 3"),
    ] {
        let r = mar.get("faults.localhost", path).await;
        assert_eq!(r.status, status, "{path}: {r:?}");
        let log = logs(&mar, "faults");
        assert!(log.contains(logged), "{path}: no {logged:?} in\n{log}");
        if path == "/trap" {
            // The trap's backtrace reaches `mar logs`, a line each under the app's source.
            assert!(
                log.lines()
                    .any(|l| l.contains("app[wasm]") && l.contains("wasm backtrace")),
                "{log}"
            );
            assert!(
                log.lines().any(|l| l.contains("app[wasm]:     0:")),
                "no frame of the backtrace in\n{log}"
            );
        }
        assert_eq!(
            mar.get("faults.localhost", "/ok").await.body,
            "fine\n",
            "{path}"
        );
    }
    let log = eventually(Duration::from_secs(10), || async {
        let log = logs(&mar, "faults");
        log.contains("code=H12").then_some(log)
    })
    .await;
    assert!(log.contains("past its deadline of 2s"), "{log}");

    // The manifest's `files` directory, read-only, and nothing outside it, not even through a
    // symlink the app put in it.
    assert_eq!(
        mar.get("faults.localhost", "/file").await.body,
        "read from the slug\n"
    );
    assert_eq!(
        mar.get("faults.localhost", "/escape").await.body,
        "read outside: denied, through a link: denied, write: denied\n"
    );

    // A response far larger than the pipes streams through whole.
    let r = mar.get("faults.localhost", "/big?5000000").await;
    assert_eq!((r.status, r.body.len()), (200, 5_000_000));
}

#[tokio::test]
async fn a_push_of_something_that_is_not_webassembly_is_rejected_and_the_old_release_serves() {
    let mar = MarServer::start();
    mar.create_app("notwasm");
    let repo = mar.repo_from(&example("wasm-hello-c"));
    let push = repo.push(&mar.git_url("notwasm"), "main");
    assert!(push.ok(), "{}", push.all());

    for (what, file, content, says) in [
        (
            "text",
            "app.json",
            r#"{"wasm": {"module": "handler.wasm"}}"#,
            "not a WebAssembly binary",
        ),
        (
            "core module without _start",
            "app.json",
            r#"{"wasm": {"module": "reactor.wasm"}}"#,
            "without a `_start` function",
        ),
        (
            "unknown manifest key",
            "app.json",
            r#"{"wasm": {"module": "hello.wasm", "build": "c", "source": "hello.c", "outbound": []}}"#,
            "unknown field `outbound`",
        ),
        (
            "module outside the app",
            "app.json",
            r#"{"wasm": {"module": "../../../etc/hostname"}}"#,
            "must be a path inside the app",
        ),
        (
            "files through a symlink",
            "app.json",
            r#"{"wasm": {"module": "hello.wasm", "build": "c", "source": "hello.c", "files": "etc"}}"#,
            "etc is a symbolic link",
        ),
    ] {
        repo.write(file, content);
        repo.write("handler.wasm", "#!/bin/sh\necho this is a shell script\n");
        // A valid core module with no entry point: "\0asm", version 1, no sections.
        std::fs::write(repo.dir.join("reactor.wasm"), b"\0asm\x01\0\0\0").unwrap();
        if !repo.dir.join("etc").exists() {
            std::os::unix::fs::symlink("/etc", repo.dir.join("etc")).unwrap();
        }
        repo.commit(what);
        let push = repo.push(&mar.git_url("notwasm"), "main");
        assert!(!push.ok(), "{what}: accepted:\n{}", push.all());
        assert!(
            push.stderr.contains(says),
            "{what}: no {says:?} in:\n{}",
            push.stderr
        );
        assert!(
            push.stderr
                .contains("Push rejected; the previous release keeps serving"),
            "{what}"
        );
        let r = mar.get("notwasm.localhost", "/").await;
        assert_eq!(r.body, "Hello from C on WebAssembly\n", "{what}");
    }
    let releases = mar.api("GET", "/v1/apps/notwasm/releases", "").await.json();
    assert_eq!(
        releases["results"].as_array().map(Vec::len),
        Some(1),
        "{releases}"
    );
}

/// A `.wasm` file beside a Procfile is one of the app's files, not a WebAssembly app: the app
/// deploys as what its Procfile says (a lone module with nothing else still is one, as the
/// other tests push).
#[tokio::test]
async fn a_wasm_file_beside_a_procfile_does_not_make_a_wasm_app() {
    let mar = MarServer::start();
    mar.create_app("hasasset");
    let repo = mar.repo_from(&example("shell-hello"));
    std::fs::write(repo.dir.join("asset.wasm"), b"\0asm\x01\0\0\0").unwrap();
    repo.commit("a module among the files");
    let push = repo.push(&mar.git_url("hasasset"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr.contains("Procfile app detected") && !push.stderr.contains("WebAssembly"),
        "{}",
        push.stderr
    );
    let r = mar.get("hasasset.localhost", "/").await;
    assert!(r.body.contains("Hello from mini-MAR (shell)"), "{}", r.body);
}
