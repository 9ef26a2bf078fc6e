//! The router with real clients and real app processes: the MAR WebSocket idle rule and
//! router keepalive, access log lines and metrics, h2c, HTTPS with SNI and h2 over ALPN,
//! request limits and slow clients, an instance dying mid-request, and custom domains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use mar_tests::{MarServer, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_rule_app_pings_and_router_keepalive() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("silent", &["MAR_WEBSOCKET_IDLE_TIMEOUT=2"]);
    mar.deploy_lifecycle(
        "pinging",
        &["MAR_WEBSOCKET_IDLE_TIMEOUT=2", "WS_PING_EVERY=0.5"],
    );
    mar.deploy_lifecycle(
        "kept",
        &[
            "MAR_WEBSOCKET_IDLE_TIMEOUT=2",
            "MAR_WEBSOCKET_KEEPALIVE=router",
        ],
    );

    // Echo works, then silence is cut at the idle timeout with a Close (1001).
    let mut c = mar_tests::websocket(&mar, "silent").await;
    c.send(Message::text("hello")).await.unwrap();
    assert_eq!(c.next().await.unwrap().unwrap(), Message::text("hello"));
    let t = Instant::now();
    let Some(Ok(Message::Close(Some(frame)))) = c.next().await else {
        panic!("no close frame")
    };
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "idle timeout");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(5),
        "cut after {waited:?}"
    );
    let logs = eventually(Duration::from_secs(5), || async {
        let l = mar.mar(&["logs", "-a", "silent", "--ps", "router"]).stdout;
        l.contains("code=H15").then_some(l)
    })
    .await;
    assert!(
        logs.contains(
            "mar[router]: at=error code=H15 desc=\"Idle connection\" method=GET path=\"/ws\""
        ),
        "{logs}"
    );

    // An app that pings more often than the timeout keeps its client (tungstenite answers
    // the pings while we read).
    for app in ["pinging", "kept"] {
        let mut c = mar_tests::websocket(&mar, app).await;
        let t = Instant::now();
        let mut pings = 0;
        while t.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_secs(1), c.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(m))) => panic!("{app}: unexpected {m:?}"),
                Ok(other) => panic!("{app}: connection ended after {:?}: {other:?}", t.elapsed()),
                Err(_) => {}
            }
        }
        assert!(pings >= 2, "{app}: {pings} pings in 5 s");
        c.send(Message::text("still here")).await.unwrap();
        loop {
            match c.next().await.unwrap().unwrap() {
                Message::Ping(_) => continue,
                m => {
                    assert_eq!(m, Message::text("still here"), "{app}");
                    break;
                }
            }
        }
        c.close(None).await.unwrap();
    }
    let metrics = mar.api("GET", "/metrics", "").await.body;
    assert!(
        metrics.contains("mar_websockets_open{app=\"silent\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn access_log_metrics_h2c_and_big_bodies() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("logged", &[]);
    let r = mar.get("logged.localhost", "/?q=1").await;
    assert_eq!(r.status, 200);
    let rid = r
        .headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        rid.is_none(),
        "the router adds X-Request-Id to the request, not the response"
    );
    let logs = eventually(Duration::from_secs(5), || async {
        let l = mar.mar(&["logs", "-a", "logged", "--ps", "router"]).stdout;
        l.contains("path=\"/?q=1\"").then_some(l)
    })
    .await;
    let line = logs.lines().find(|l| l.contains("path=\"/?q=1\"")).unwrap();
    for part in [
        "mar[router]: at=info method=GET",
        "host=logged.localhost",
        "fwd=\"127.0.0.1\"",
        "dyno=web.1",
        "status=200",
        "protocol=http",
        "request_id=",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    let bytes: usize = line
        .split("bytes=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(bytes, r.body.len());
    let metrics = mar.api("GET", "/metrics", "").await.body;
    assert!(
        metrics.contains("mar_http_requests_total{app=\"logged\",status=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mar_http_request_duration_seconds_count{app=\"logged\"} 1"),
        "{metrics}"
    );

    // h2c with prior knowledge.
    let stream = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    let mut sender = h2(stream).await;
    let req = http::Request::get("http://logged.localhost/env/DYNO")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "web.1"
    );

    // A 5 MB body both ways, streamed.
    let big = Bytes::from(vec![b'z'; 5 << 20]);
    let r = mar_tests::http(
        mar.addr,
        "POST",
        "logged.localhost",
        "/echo",
        &[],
        big.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
}

#[tokio::test]
async fn limits_slow_clients_and_malformed_requests() {
    let mar = MarServer::start_with(Some("header_read_timeout: 1\nmax_header_size: 16K\n"));
    mar.deploy_lifecycle("guarded", &["MAR_MAX_BODY_SIZE=1K"]);
    let body = Bytes::from(vec![b'x'; 2048]);
    let r = mar_tests::http(mar.addr, "POST", "guarded.localhost", "/echo", &[], body).await;
    assert_eq!(r.status, 413, "{}", r.body);

    // Without a Content-Length, the body is counted as it streams.
    let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    let chunk = "x".repeat(800);
    s.write_all(format!("POST /echo HTTP/1.1\r\nHost: guarded.localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    let huge = "h".repeat(32 << 10);
    let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    s.write_all(
        format!("GET / HTTP/1.1\r\nHost: guarded.localhost\r\nX-Huge: {huge}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(100)]
    );

    // A client that sends half a request head is cut after the header read timeout, while
    // other requests go on.
    let mut slow = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: guarded.loc")
        .await
        .unwrap();
    let t = Instant::now();
    assert_eq!(mar.get("guarded.localhost", "/").await.status, 200);
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "slow client held for {:?}",
        t.elapsed()
    );

    // Broken chunked encoding is refused and disturbs nothing else.
    let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: guarded.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("H400"),
        "{answer}"
    );
    assert_eq!(mar.get("guarded.localhost", "/").await.status, 200);
    // A Host that is not a host name is a bad request, not a lookup.
    let r = mar.get("..%2f..", "/").await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Framing a lenient app could read differently is refused, not passed on: a signed
    // Content-Length, and a request smuggled in as a chunked trailer.
    for raw in [
        "POST /echo HTTP/1.1\r\nHost: guarded.localhost\r\nContent-Length: +5\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nHost: guarded.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw:?}: {answer}");
    }
    let logs = mar
        .mar(&["logs", "-a", "guarded", "--source", "app"])
        .stdout;
    assert!(!logs.contains("/smuggled"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_dying_mid_request_gives_502_promptly() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("dying", &[]);
    let ps: serde_json::Value =
        serde_json::from_str(&mar.mar(&["ps", "-a", "dying", "--json"]).stdout).unwrap();
    let pid = ps[0]["pid"].as_u64().unwrap();
    let addr = mar.addr;
    let pending =
        tokio::spawn(
            async move { mar_tests::try_get(addr, "dying.localhost", "/slow?ms=20000").await },
        );
    // Let the request reach the app before killing it.
    eventually(Duration::from_secs(5), || async {
        let l = mar.mar(&["logs", "-a", "dying", "--source", "app"]).stdout;
        l.contains("slow request started").then_some(())
    })
    .await;
    let t = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .unwrap()
            .success()
    );
    let (status, body) = pending.await.unwrap().unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("H13"), "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "502 after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn custom_domains_route_to_apps() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("branded", &[]);
    let out = mar.mar(&["domains:add", "branded", "www.example.test"]);
    assert!(out.ok(), "{}", out.all());
    let r = mar.get("www.example.test", "/env/DYNO").await;
    assert_eq!((r.status, r.body.as_str()), (200, "web.1"));
    let list = mar.mar(&["domains", "branded", "--json"]);
    assert_eq!(
        list.stdout.trim().replace([' ', '\n'], ""),
        "[\"www.example.test\"]"
    );
    mar.create_app("other");
    let dup = mar.mar(&["domains:add", "other", "www.example.test"]);
    assert!(
        !dup.ok() && dup.stderr.contains("already used by app branded"),
        "{}",
        dup.all()
    );
    for bad in ["not a domain", "other.localhost", "127.0.0.1"] {
        let out = mar.mar(&["domains:add", "other", bad]);
        assert!(!out.ok(), "{bad} was accepted");
    }
    // The refusals changed nothing: the domain is still branded's alone.
    assert_eq!(
        mar.mar(&["domains", "other", "--json"])
            .stdout
            .trim()
            .replace([' ', '\n'], ""),
        "[]"
    );
    let r = mar.get("www.example.test", "/env/DYNO").await;
    assert_eq!((r.status, r.body.as_str()), (200, "web.1"));
    // Domains survive a restart.
    let mar = mar.restart();
    let r = eventually(Duration::from_secs(20), || async {
        let r = mar.get("www.example.test", "/").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert!(r.body.contains("lifecycle fixture"));
    assert!(
        mar.mar(&["domains:remove", "branded", "www.example.test"])
            .ok()
    );
    assert_eq!(mar.get("www.example.test", "/").await.status, 404);
}

/// An HTTP/2 connection over `io` (h2c or TLS with ALPN h2).
async fn h2<IO>(io: IO) -> hyper::client::conn::http2::SendRequest<Full<Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

fn tls_client(roots: &[std::path::PathBuf]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        for c in rustls::pki_types::CertificateDer::pem_file_iter(r).unwrap() {
            store.add(c.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn https_with_sni_h2_and_the_local_authoritys_fallback() {
    // Two certificates for two domains, chosen by SNI; everything else gets the one the local
    // certificate authority issued.
    let dir = tempfile::tempdir().unwrap();
    // Served by two router threads: each has its own TLS listener.
    let mut yaml = String::from("router_threads: 2\ntls_certificates:\n");
    let mut roots = Vec::new();
    for name in ["one.example.test", "two.example.test"] {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (c, k) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        yaml.push_str(&format!(
            "  - domains: [{name}]\n    cert: {}\n    key: {}\n",
            c.display(),
            k.display()
        ));
        roots.push(c);
    }
    // A two-label domain: TLS clients refuse a wildcard directly under a top-level name such
    // as `*.localhost`.
    let mar = MarServer::start_with_args(
        Some(&yaml),
        &["--https-listen", "127.0.0.1:0", "--domain", "apps.test"],
    );
    let https = mar.https_addr.expect("https address printed");
    mar.deploy_lifecycle("secure", &[]);
    assert!(mar.mar(&["domains:add", "secure", "one.example.test"]).ok());
    assert!(mar.mar(&["domains:add", "secure", "two.example.test"]).ok());
    roots.push(mar.data_dir.join("tls/ca.crt"));
    let connector = tls_client(&roots);

    for (sni, host) in [
        ("one.example.test", "one.example.test"),
        ("two.example.test", "two.example.test"),
        ("secure.apps.test", "secure.apps.test"),
    ] {
        let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let alpn_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        assert!(
            alpn_h2,
            "{sni}: ALPN picked {:?}",
            tls.get_ref().1.alpn_protocol()
        );
        let mut sender = h2(tls).await;
        let req = http::Request::get(format!("https://{host}/env/DYNO"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{sni}");
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "web.1"
        );
    }
    // The app sees the scheme the client used.
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    // The platform API answers over HTTPS too, on the bare domain.
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("apps.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut sender = h2(tls).await;
    let req = http::Request::get("https://apps.test/healthz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
}

/// Whether the HTTPS listener at `addr` answers a handshake for `name` with a certificate
/// the (self-signed) PEM `root` vouches for: true exactly when that certificate is served.
async fn serves(addr: std::net::SocketAddr, name: &str, root: &std::path::Path) -> bool {
    let connector = tls_client(&[root.to_owned()]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(name, tcp).await.is_ok()
}

#[tokio::test]
async fn renewed_certificates_are_served_without_a_restart_and_a_broken_renewal_keeps_the_old() {
    const NAME: &str = "renew.example.test";
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("site.crt"), dir.path().join("site.key"));
    // A renewal as certbot makes one: new files put in place by a rename, never half written.
    let put = |path: &std::path::Path, text: &str| {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let pair = |n: usize| {
        let ck = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).unwrap();
        let saved = dir.path().join(format!("issued-{n}.crt"));
        std::fs::write(&saved, ck.cert.pem()).unwrap();
        (saved, ck.cert.pem(), ck.signing_key.serialize_pem())
    };
    let (first, c1, k1) = pair(1);
    put(&cert, &c1);
    put(&key, &k1);
    let yaml = format!(
        "tls_certificates:\n  - domains: [{NAME}]\n    cert: {}\n    key: {}\n",
        cert.display(),
        key.display()
    );
    let mar = MarServer::start_with_args(
        Some(&yaml),
        &["--https-listen", "127.0.0.1:0", "--domain", "apps.test"],
    );
    let https = mar.https_addr.expect("https address printed");
    assert!(serves(https, NAME, &first).await);

    // Renewed on disk: served within the 5 s look, with no signal and no restart.
    let (second, c2, k2) = pair(2);
    put(&key, &k2);
    put(&cert, &c2);
    eventually(Duration::from_secs(20), || async {
        serves(https, NAME, &second).await.then_some(())
    })
    .await;
    assert!(!serves(https, NAME, &first).await, "the old one is gone");

    // Half a renewal: a new certificate whose key is not in place. Refused; the served one
    // stays, and the log names the file.
    // (The look may have caught the second renewal between its two files, and said so.)
    let refusals = |mar: &MarServer| {
        mar.stderr()
            .matches("is not the key of the certificate")
            .count()
    };
    let before = refusals(&mar);
    let (third, c3, k3) = pair(3);
    put(&cert, &c3);
    eventually(Duration::from_secs(20), || async {
        (refusals(&mar) > before).then_some(())
    })
    .await;
    assert!(serves(https, NAME, &second).await, "{}", mar.stderr());
    assert!(!serves(https, NAME, &third).await);
    assert!(
        mar.stderr()
            .contains("the certificates loaded before are still served")
    );

    // SIGHUP reads the files again at once (the look would not: they did not change since),
    // and the server goes on (SIGHUP used to end it).
    let hup = |mar: &MarServer| {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &mar.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    let before = refusals(&mar);
    hup(&mar);
    eventually(Duration::from_secs(10), || async {
        (refusals(&mar) > before).then_some(())
    })
    .await;
    assert_eq!(mar.get("apps.test", "/healthz").await.status, 200);

    // The key arrives: served.
    put(&key, &k3);
    hup(&mar);
    eventually(Duration::from_secs(10), || async {
        serves(https, NAME, &third).await.then_some(())
    })
    .await;
    assert!(mar.stderr().contains("TLS: reloaded the 1 certificate(s)"));
}

/// One HTTP/1.1 connection, requests sent one after another.
async fn h1_conn(mar: &MarServer) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> (u16, http::HeaderMap, String) {
    sender.ready().await.expect("the connection is still open");
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn keep_alive_framing_pipelining_and_the_platform_on_one_connection() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("framed", &[]);
    let get = |path: &str, host: &str| {
        http::Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut c = h1_conn(&mar).await;
    // Forwarded headers in, hop-by-hop headers (and those `Connection` names) out.
    let req = http::Request::get("/headers")
        .header("host", "framed.localhost")
        .header("x-forwarded-for", "10.0.0.1")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("x-request-id", "abcdefghijklmnopqrstuvwxyz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, seen) = send(&mut c, req).await;
    assert_eq!(status, 200);
    for line in [
        "host: framed.localhost",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "x-forwarded-proto: http",
        &format!("x-forwarded-port: {}", mar.addr.port()),
        "x-request-id: abcdefghijklmnopqrstuvwxyz",
        "via: 1.1 mar",
    ] {
        assert!(seen.lines().any(|l| l == line), "{line} missing in\n{seen}");
    }
    assert!(seen.contains("x-request-start: "), "{seen}");
    for gone in ["x-secret", "connection", "keep-alive"] {
        assert!(
            !seen.lines().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} passed through:\n{seen}"
        );
    }
    // A body the app ends by closing reaches the client chunked, and the client's connection
    // stays open; chunked bodies pass through.
    let (status, headers, body) = send(&mut c, get("/unframed", "framed.localhost")).await;
    assert_eq!((status, body.as_str()), (200, "no length, ended by close"));
    assert_eq!(headers["transfer-encoding"], "chunked");
    let (status, _, body) = send(&mut c, get("/chunked?n=3", "framed.localhost")).await;
    assert_eq!((status, body.as_str()), (200, "chunk 0;chunk 1;chunk 2;"));
    let req = http::Request::post("/echo")
        .header("host", "framed.localhost")
        .header("transfer-encoding", "chunked")
        .body(Full::new(Bytes::from_static(b"sent in chunks")))
        .unwrap();
    let (status, _, body) = send(&mut c, req).await;
    assert_eq!((status, body.as_str()), (200, "sent in chunks"));
    let req = http::Request::head("/")
        .header("host", "framed.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&mut c, req).await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(headers.contains_key("content-length"));
    // Apps that close keep-alive connections (here right after a response): requests never
    // fail on a pooled connection that the app closed.
    for _ in 0..20 {
        let (status, _, body) = send(&mut c, get("/bye", "framed.localhost")).await;
        assert_eq!((status, body.as_str()), (200, "bye"));
        let (status, _, body) = send(&mut c, get("/env/DYNO", "framed.localhost")).await;
        assert_eq!((status, body.as_str()), (200, "web.1"));
    }
    // The platform, an unknown app and an app again, on the same connection.
    let (status, _, _) = send(&mut c, get("/healthz", "localhost")).await;
    assert_eq!(status, 200);
    let (status, _, body) = send(&mut c, get("/", "nosuchapp.localhost")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = send(&mut c, get("/env/DYNO", "framed.localhost")).await;
    assert_eq!((status, body.as_str()), (200, "web.1"));

    // Pipelined requests are answered in order.
    let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    s.write_all(
        b"GET /env/DYNO HTTP/1.1\r\nHost: framed.localhost\r\n\r\n\
          GET /chunked?n=2 HTTP/1.1\r\nHost: framed.localhost\r\n\r\n\
          GET /env/PORT_NOT_SET HTTP/1.1\r\nHost: framed.localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    // Bodies have no line end, so the next status line may follow one directly.
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer[i..].lines().next())
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found"
        ],
        "{answer}"
    );
    let web = answer.find("web.1").unwrap();
    let chunks = answer.find("chunk 1;").unwrap();
    assert!(web < chunks, "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");

    // A head sent a byte at a time is read whole.
    let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for b in b"GET /env/DYNO HTTP/1.1\r\nHost: framed.localhost\r\nConnection: close\r\n\r\n" {
        s.write_all(&[*b]).await.unwrap();
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nweb.1"), "{answer}");

    // An upgrade the app declines gets the app's answer, and the connection closes after it.
    let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
    s.write_all(
        b"GET /env/DYNO HTTP/1.1\r\nHost: framed.localhost\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nweb.1"), "{answer}");
}

#[tokio::test]
async fn one_worker_thread_serves_http_websockets_and_deploys() {
    // `--worker-threads 1` runs the platform on the current-thread scheduler: the API, pushes
    // and the supervisor share that one thread, beside the router's own.
    let mar = MarServer::start_with_args(None, &["--worker-threads", "1"]);
    mar.deploy_lifecycle("single", &[]);
    let r = mar.get("single.localhost", "/env/DYNO").await;
    assert_eq!((r.status, r.body.as_str()), (200, "web.1"));
    let mut c = mar_tests::websocket(&mar, "single").await;
    c.send(Message::text("one thread")).await.unwrap();
    assert_eq!(
        c.next().await.unwrap().unwrap(),
        Message::text("one thread")
    );
    let out = mar.mar(&["ps:scale", "-a", "single", "web=2"]);
    assert!(out.ok(), "{}", out.all());
    let r = mar.get("single.localhost", "/").await;
    assert_eq!(r.status, 200);
}

/// CPU nanoseconds of each `mar-router-N` thread of `pid`.
fn router_thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("mar-router-") {
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
            let ns = stat
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            out.push((comm.trim().to_owned(), ns));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn two_router_threads_share_the_connections() {
    let mar = MarServer::start_with(Some("router_threads: 2\n"));
    mar.deploy_lifecycle("spread", &[]);
    let before = router_thread_cpu(mar.pid());
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["mar-router-0", "mar-router-1"]);
    // Connections land on either thread's listener (SO_REUSEPORT), so both do work.
    let requests = (0..64).map(|_| mar.get("spread.localhost", "/env/DYNO"));
    for r in futures_util::future::join_all(requests).await {
        assert_eq!((r.status, r.body.as_str()), (200, "web.1"));
    }
    let mut c = mar_tests::websocket(&mar, "spread").await;
    c.send(Message::text("two threads")).await.unwrap();
    assert_eq!(
        c.next().await.unwrap().unwrap(),
        Message::text("two threads")
    );
    let after = router_thread_cpu(mar.pid());
    for ((name, was), (_, now)) in before.iter().zip(&after) {
        assert!(
            now - was > 1_000_000,
            "{name} did almost nothing: {before:?} -> {after:?}"
        );
    }
    drop(c);
    assert!(mar.stop().success(), "a clean stop with two router threads");
}

#[tokio::test]
async fn access_log_off_keeps_metrics() {
    let mar = MarServer::start_with(Some("access_log: false\n"));
    mar.deploy_lifecycle("quiet", &[]);
    for path in ["/?first", "/?second"] {
        assert_eq!(mar.get("quiet.localhost", path).await.status, 200);
        // The app's own line for the request: by the time it shows, a router line for the
        // request before it (written within 50 ms) would have too.
        eventually(Duration::from_secs(5), || async {
            let l = mar.mar(&["logs", "-a", "quiet"]).stdout;
            l.contains(&format!("GET {path}")).then_some(())
        })
        .await;
    }
    let logs = mar.mar(&["logs", "-a", "quiet"]).stdout;
    assert!(!logs.contains("mar[router]"), "{logs}");
    let metrics = mar.api("GET", "/metrics", "").await.body;
    assert!(
        metrics.contains("mar_http_requests_total{app=\"quiet\",status=\"2xx\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stalled_streamed_response_is_cut_at_the_idle_window() {
    let mar = MarServer::start_with(Some("response_idle_timeout: 1\n"));
    mar.deploy_lifecycle("stalling", &[]);
    let mut c = h1_conn(&mar).await;
    let req = http::Request::get("/stall?ms=4000")
        .header("host", "stalling.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let t = Instant::now();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "the cut response must not look complete");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        t.elapsed()
    );
    let logs = eventually(Duration::from_secs(5), || async {
        let l = mar
            .mar(&["logs", "-a", "stalling", "--ps", "router"])
            .stdout;
        l.contains("code=H12").then_some(l)
    })
    .await;
    assert!(logs.contains("desc=\"Response idle timeout\""), "{logs}");
}

#[tokio::test]
async fn an_answer_broken_off_by_the_app_is_logged_h18_on_both_paths() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("cutting", &[]);
    // HTTP/1.0 goes down the general path.
    for version in ["1.1", "1.0"] {
        let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
        s.write_all(
            format!("GET /cut HTTP/{version}\r\nHost: cutting.localhost\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the client connection must end");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains(" 200 OK"), "{answer}");
        assert!(answer.ends_with("0123456789"), "{answer}");
    }
    let logs = eventually(Duration::from_secs(5), || async {
        let l = mar.mar(&["logs", "-a", "cutting", "--ps", "router"]).stdout;
        (l.matches("code=H18 desc=\"Server Request Interrupted\"")
            .count()
            == 2)
            .then_some(l)
    })
    .await;
    assert!(!logs.contains("H27"), "{logs}");
}

#[tokio::test]
async fn a_refusing_instance_is_set_aside_and_requests_retried() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("twin", &[]);
    let out = mar.mar(&["ps:scale", "-a", "twin", "web=2"]);
    assert!(out.ok(), "{}", out.all());
    // The second instance boots in the background.
    eventually(Duration::from_secs(10), || async {
        let r = mar.get("twin.localhost", "/env/DYNO").await;
        (r.body == "web.2").then_some(())
    })
    .await;
    // One of the two instances stops listening but stays up: connections to it are refused.
    let r = mar.get("twin.localhost", "/unlisten").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Until its accept loop has stopped, the instance still answers.
    let stopped = |app: &'static str| {
        let mar = &mar;
        eventually(Duration::from_secs(5), move || async move {
            let l = mar.mar(&["logs", "-a", app, "--source", "app"]).stdout;
            l.contains("stopped listening").then_some(())
        })
    };
    stopped("twin").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = mar.get("twin.localhost", "/env/DYNO").await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.body);
    }
    assert_eq!(
        seen.len(),
        1,
        "only the listening instance answers: {seen:?}"
    );

    // With no other instance, the client gets the H21 page and the log says so.
    mar.deploy_lifecycle("single", &[]);
    assert_eq!(mar.get("single.localhost", "/unlisten").await.status, 200);
    stopped("single").await;
    let r = mar.get("single.localhost", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("H21"), "{}", r.body);
    assert!(r.body.contains("Connection refused"), "{}", r.body);
    let logs = eventually(Duration::from_secs(5), || async {
        let l = mar.mar(&["logs", "-a", "single", "--ps", "router"]).stdout;
        l.contains("code=H21").then_some(l)
    })
    .await;
    assert!(logs.contains("desc=\"Connection refused\""), "{logs}");
}

/// HTTPS clients that verify certificates strictly (curl with no `-k`) trust the server once
/// they trust the local certificate authority's root, which `mar tls:ca` prints; without it
/// they refuse, as they should.
#[test]
fn strict_clients_trust_the_local_authority_that_mar_tls_ca_prints() {
    let mar = MarServer::start_with_args(None, &["--https-listen", "127.0.0.1:0"]);
    let https = mar.https_addr.expect("https address printed");
    let ca = mar.mar(&["tls:ca"]);
    assert!(ca.ok(), "{}", ca.all());
    assert!(
        ca.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{}",
        ca.stdout
    );
    let pem = mar.tmp.path().join("ca.pem");
    std::fs::write(&pem, &ca.stdout).unwrap();
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("https://localhost:{}/healthz", https.port()))
            .output()
            .unwrap()
    };
    let trusted = curl(&["--cacert", pem.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&trusted.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = curl(&[]);
    assert!(
        !untrusted.status.success(),
        "curl trusted an unknown authority"
    );
    // Before any HTTPS start there is no authority, and the command says how to get one.
    let plain = MarServer::start();
    let none = plain.mar(&["tls:ca"]);
    assert!(
        !none.ok() && none.stderr.contains("--https-listen"),
        "{}",
        none.all()
    );
}

/// An app written for Heroku that redirects to HTTPS when it sees `DYNO`: over the HTTPS
/// listener it learns from `X-Forwarded-Proto` that the request is secure (no redirect loop)
/// and from `X-Forwarded-Port` where it came in; over plain HTTP its redirect, to the host on
/// 443 or to the Host it was asked for with the plain port, is pointed at the HTTPS listener,
/// so a client that follows it lands on the app over HTTPS (HTTP/1.1 and h2c alike); a
/// client that reached the router without a port in its Host gets the app's redirect as it
/// was; `apps:info` names the HTTPS URL, or says how to get one.
#[tokio::test]
async fn apps_that_redirect_to_https_when_they_see_dyno_work_over_the_https_listener() {
    let mar = MarServer::start_with_args(None, &["--https-listen", "127.0.0.1:0"]);
    let https = mar.https_addr.expect("https address printed");
    mar.create_app("secure");
    let repo = mar.repo_from(&mar_tests::repo_root().join("tests/fixtures/apps/https-redirect"));
    let push = repo.push(&mar.git_url("secure"), "main");
    assert!(push.ok(), "{}", push.all());

    // Behind a port-80 front (no port in Host): the app's redirect as it made it.
    let plain = mar.get("secure.localhost", "/page?a=1").await;
    assert_eq!(plain.status, 301);
    assert_eq!(
        plain.headers["location"],
        "https://secure.localhost/page?a=1"
    );

    let ca = mar.tmp.path().join("ca.pem");
    std::fs::write(&ca, mar.mar(&["tls:ca"]).stdout).unwrap();
    for (path, extra) in [
        ("/page?a=1", None),
        ("/keep-host/page", None),
        ("/keep-host/h2c", Some("--http2-prior-knowledge")),
    ] {
        let url = format!("http://secure.localhost:{}{path}", mar.addr.port());
        let out = std::process::Command::new("curl")
            .args(["-sS", "-L", "--cacert", ca.to_str().unwrap()])
            .args(["-w", "%{url_effective}"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "secure: https port {port}\nhttps://secure.localhost:{port}{path}",
                port = https.port()
            ),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert", ca.to_str().unwrap()])
        .arg(format!("https://secure.localhost:{}/page", https.port()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("secure: https port {}\n", https.port()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = mar.mar(&["apps:info", "secure"]);
    assert!(
        info.stdout.contains(&format!(
            "HTTPS URL: https://secure.localhost:{}/",
            https.port()
        )),
        "{}",
        info.stdout
    );
    let plain_server = MarServer::start();
    plain_server.create_app("nohttps");
    let info = plain_server.mar(&["apps:info", "nohttps"]);
    assert!(
        info.stdout
            .contains("HTTPS:     off (start mar serve with --https-listen"),
        "{}",
        info.stdout
    );
}
