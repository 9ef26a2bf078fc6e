//! The host with real guests, written in WebAssembly text here: WAGI modules that answer,
//! trap, loop, grow memory without end, print a bad head, or exit non-zero; each must affect
//! only its own request. (wasi:http components come from componentize-py, and the end-to-end
//! suite serves them.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use mar_http::{Body, Handler};

use crate::{AllowedHosts, AppSpec, Host, HostOptions, Interface, Limits, LogSink, WasmApp};

/// A WAGI module whose `_start` runs `body` with `$say` (print `len` bytes at `ptr` to
/// stdout), `$exit` and the message texts in memory at 1024 onwards.
fn wagi(body: &str, data: &[&str]) -> Vec<u8> {
    let mut datas = String::new();
    let mut at = 1024;
    for d in data {
        datas.push_str(&format!(
            "(data (i32.const {at}) \"{}\")\n",
            d.replace('\n', "\\n")
        ));
        at += 1024;
    }
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  {datas}
  (func $say (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $err (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") {body}))"#
    );
    wat::parse_str(&wat).unwrap()
}

const HELLO: &str =
    "Status: 201 Created\nContent-Type: text/plain\nX-Guest: yes\n\nhello from wat\n";

struct Fixture {
    host: Arc<Host>,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let host = Host::new(HostOptions {
            pool_instances: 8,
            idle_instances: 4,
            max_instance_memory: 64 << 20,
            executor_threads: 2,
        })
        .unwrap();
        Self {
            host,
            lines: Arc::default(),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    fn app(&self, wasm: &[u8], limits: Limits) -> WasmApp {
        let compiled = self.host.compile(wasm).unwrap();
        assert_eq!(compiled.interface, Interface::Wagi);
        let path = self._dir.path().join(format!("{}.cwasm", rand_name()));
        std::fs::write(&path, &compiled.artifact).unwrap();
        let loaded = self.host.load(&path, compiled.interface).unwrap();
        let lines = self.lines.clone();
        let log: LogSink = Arc::new(move |l: &str| lines.lock().unwrap().push(l.to_owned()));
        WasmApp::new(
            &self.host,
            loaded,
            AppSpec {
                name: "test.wasm".into(),
                env: vec![("GREETING".into(), "hi".into())],
                limits,
                log,
                allowed_outbound_hosts: AllowedHosts::default(),
                files: None,
            },
        )
    }

    fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("a{}", N.fetch_add(1, Ordering::Relaxed))
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "app.test")
        .body(mar_http::empty())
        .unwrap()
}

async fn call(app: &WasmApp, req: Request<Body>) -> (StatusCode, String, http::HeaderMap, bool) {
    let resp = app.call(req).await;
    let status = resp.status();
    let timed_out = resp.extensions().get::<mar_http::TimedOut>().is_some();
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => format!("BODY ERROR: {e}"),
    };
    (status, body, parts.headers, timed_out)
}

/// Waits (at most 2 s) until `cond` holds: readiness is a state, not a time.
async fn until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cond() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(5),
        memory: 16 << 20,
        concurrency: 4,
        reuse: false,
    }
}

#[tokio::test]
async fn a_cgi_response_becomes_the_http_response() {
    let f = Fixture::new();
    let app = f.app(
        &wagi(
            &format!("(call $say (i32.const 1024) (i32.const {}))", HELLO.len()),
            &[HELLO],
        ),
        limits(),
    );
    let (status, body, headers, _) = call(&app, get("/")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "hello from wat\n");
    assert_eq!(headers["x-guest"], "yes");
    let s = app.stats();
    assert_eq!((s.requests, s.instantiations, s.failures), (1, 1, 0));
}

#[tokio::test]
async fn each_failure_stays_in_its_own_request() {
    let f = Fixture::new();
    let good = f.app(
        &wagi(
            &format!("(call $say (i32.const 1024) (i32.const {}))", HELLO.len()),
            &[HELLO],
        ),
        limits(),
    );
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "trap",
            wagi("unreachable", &[]),
            StatusCode::INTERNAL_SERVER_ERROR,
            "the handler failed",
        ),
        (
            "memory bomb",
            wagi(
                "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable",
                &[],
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
            "memory limit of 16 MiB",
        ),
        (
            "bad head",
            wagi(
                "(call $say (i32.const 1024) (i32.const 13))",
                &["hello world\n\n"],
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
            "without a colon",
        ),
        (
            "nothing printed",
            wagi("nop", &[]),
            StatusCode::INTERNAL_SERVER_ERROR,
            "printed nothing",
        ),
        (
            "exit 3 before the head",
            wagi("(call $exit (i32.const 3))", &[]),
            StatusCode::INTERNAL_SERVER_ERROR,
            "exited with status 3",
        ),
    ];
    for (what, wasm, status, logged) in cases {
        let app = f.app(&wasm, limits());
        let (got, _, _, timed_out) = call(&app, get("/")).await;
        assert_eq!(got, status, "{what}");
        assert!(!timed_out, "{what}");
        assert!(
            f.logged(logged),
            "{what}: no {logged:?} in {:?}",
            f.lines.lock().unwrap()
        );
        assert_eq!(app.stats().failures, 1, "{what}");
        // The other app, and this one's next request, are unaffected.
        assert_eq!(call(&good, get("/")).await.0, StatusCode::CREATED, "{what}");
    }
}

#[tokio::test]
async fn a_non_zero_exit_after_the_head_breaks_the_body() {
    let f = Fixture::new();
    let app = f.app(
        &wagi(
            &format!(
                "(call $say (i32.const 1024) (i32.const {})) (call $exit (i32.const 2))",
                HELLO.len()
            ),
            &[HELLO],
        ),
        limits(),
    );
    let (status, body, _, _) = call(&app, get("/")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body.starts_with("BODY ERROR"), "{body}");
    assert!(f.logged("exited with status 2"));
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_the_deadline_and_others_keep_running() {
    let f = Fixture::new();
    let mut short = limits();
    short.timeout = Duration::from_millis(500);
    let spin = f.app(&wagi("(loop $l (br $l))", &[]), short);
    let good = f.app(
        &wagi(
            &format!("(call $say (i32.const 1024) (i32.const {}))", HELLO.len()),
            &[HELLO],
        ),
        limits(),
    );
    // Two spinning guests on a two-thread executor still leave room for other requests:
    // they yield at every epoch tick.
    let t0 = Instant::now();
    let a = tokio::spawn({
        let spin = spin.clone();
        async move { call(&spin, get("/")).await }
    });
    let b = tokio::spawn({
        let spin = spin.clone();
        async move { call(&spin, get("/")).await }
    });
    until(|| spin.stats().running == 2).await;
    let t1 = Instant::now();
    assert_eq!(call(&good, get("/")).await.0, StatusCode::CREATED);
    assert!(
        t1.elapsed() < Duration::from_millis(400),
        "{:?}",
        t1.elapsed()
    );
    for r in [a.await.unwrap(), b.await.unwrap()] {
        assert_eq!(r.0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.3, "the deadline is marked for the router's H12");
    }
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(f.logged("past its deadline of 0.5s"));
}

#[tokio::test]
async fn requests_past_the_concurrency_wait_instead_of_failing() {
    let f = Fixture::new();
    let mut one = limits();
    one.concurrency = 1;
    one.timeout = Duration::from_millis(300);
    let spin = f.app(&wagi("(loop $l (br $l))", &[]), one);
    let t0 = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let spin = spin.clone();
            tokio::spawn(async move { call(&spin, get("/")).await.0 })
        })
        .collect();
    until(|| {
        let s = spin.stats();
        (s.running, s.waiting) == (1, 2)
    })
    .await;
    let s = spin.stats();
    assert_eq!((s.running, s.waiting), (1, 2), "{s:?}");
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // One at a time: three deadlines in a row.
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn stderr_goes_to_the_log_and_config_vars_are_the_environment() {
    let f = Fixture::new();
    let app = f.app(
        &wagi(
            &format!(
                "(call $err (i32.const 2048) (i32.const 12)) (call $say (i32.const 1024) (i32.const {}))",
                HELLO.len()
            ),
            &[HELLO, "to the log\n"],
        ),
        limits(),
    );
    assert_eq!(call(&app, get("/")).await.0, StatusCode::CREATED);
    assert!(f.logged("to the log"));
}

#[test]
fn binaries_that_are_not_servable_are_refused_with_the_reason() {
    let f = Fixture::new();
    let err = |b: &[u8]| f.host.compile(b).unwrap_err().to_string();
    assert!(err(b"#!/bin/sh\necho hi\n").contains("not a WebAssembly binary"));
    assert!(err(b"\0asm\x01\0\0\0\x01\xff").contains("invalid WebAssembly"));
    let reactor = wat::parse_str("(module (func (export \"handle\")))").unwrap();
    assert!(err(&reactor).contains("without a `_start`"));
    let foreign =
        wat::parse_str("(module (import \"env\" \"thing\" (func)) (func (export \"_start\")))")
            .unwrap();
    assert!(
        err(&foreign).contains("cannot be linked"),
        "{}",
        err(&foreign)
    );
    let component = wat::parse_str("(component)").unwrap();
    assert!(err(&component).contains("does not export wasi:http/incoming-handler"));
}

#[test]
fn an_artifact_of_another_engine_is_refused_not_run() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.cwasm");
    std::fs::write(&path, b"\x7fELF not really").unwrap();
    assert!(f.host.load(&path, Interface::Wagi).is_err());
    assert_eq!(f.host.artifact_key().len(), 16);
}

#[tokio::test]
async fn without_the_address_space_for_the_pool_instances_come_on_demand() {
    let f = Fixture::new();
    assert!(f.host.pooling(), "a small pool fits this machine");
    // Millions of slots of a gigabyte each cannot be reserved anywhere.
    let host = Host::new(HostOptions {
        pool_instances: 4_000_000,
        idle_instances: 0,
        max_instance_memory: 1 << 30,
        executor_threads: 1,
    })
    .unwrap();
    assert!(!host.pooling());
    let f = Fixture {
        host,
        lines: Arc::default(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let app = f.app(
        &wagi(
            &format!("(call $say (i32.const 1024) (i32.const {}))", HELLO.len()),
            &[HELLO],
        ),
        limits(),
    );
    assert_eq!(call(&app, get("/")).await.0, StatusCode::CREATED);
}
