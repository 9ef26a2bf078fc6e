//! Benchmark: WebSocket relay through nginx (the reference) and through mini-MAR's router, in
//! one run with the same Rust client and the same echo backend (this executable's `ws-echo`):
//! paced messages (round-trip p99 added by the proxy), bursts (messages/s), the proxy's CPU
//! µs per relayed frame (from /proc), lost messages, and the proxy's memory per idle proxied
//! connection (VmRSS before and after opening N of them).
//!
//! Run: `cargo run -p mar-bench --bin router-ws -- --help`. `router-ws ws-echo` is the echo
//! server (on 127.0.0.1:$PORT), which the bench starts directly and pushes as a mini-MAR app.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mar_bench::args::Args;
use mar_bench::echo::{self, EchoProcess};
use mar_bench::nginx::{self, Nginx, PROXY_CONF};
use mar_bench::procfs::{self, CpuUse, Watched};
use mar_bench::report::{self, NOISY_PCT, Quiet, median, ms, rate, us, verdict};
use mar_bench::subject::{self, Mar};
use mar_bench::wsload::{WsLoad, WsMark, WsMode, WsResult, WsTarget, run_ws};

const USAGE: &str = "\
router-ws: WebSocket relay, direct vs nginx vs mini-MAR, same run, medians of clean rounds.

  router-ws [--rounds 3] [--conns 1000] [--interval-ms 100] [--duration 10] [--warmup 2]
            [--burst 200] [--size 100] [--idle 10000] [--threads 1]
            [--tests idle,paced,burst] [--targets direct,nginx,mar-1t,mar]
            [--quiet-timeout 120] [--no-quiet]
  router-ws ws-echo          the echo server, on 127.0.0.1:$PORT (0: pick one and print it)

paced: every connection sends one --size byte message each --interval-ms, round trips of
the messages sent in the --duration window after --warmup; burst: every connection sends
--burst messages as fast as it can; idle: --idle connections held open (capped by the
open-files limit: the proxy needs two descriptors per connection), the proxy's VmRSS
before and after, then one message each to check none was lost. A frame is one message
relayed in one direction: an echoed message is two frames through the proxy.";

struct Target {
    name: &'static str,
    ws: WsTarget,
    watched: Watched,
    /// The process whose RSS is the proxy's memory.
    rss_pid: Option<u32>,
}

#[derive(Clone)]
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_frame: f64,
    /// Share of the proxy's CPU spent in the kernel, in %.
    sys_pct: f64,
    other_pct: f64,
    lost: u64,
    /// Messages echoed twice (by sequence number).
    dup: u64,
    failed: u64,
    noisy: bool,
    /// Paced: p99 minus direct's p99 of the same round. Burst: rate / direct's rate.
    vs_direct: f64,
}

struct Cfg {
    conns: usize,
    threads: usize,
    size: usize,
    interval: Duration,
    warmup: Duration,
    duration: Duration,
    burst: u64,
    quiet: Quiet,
}

fn main() {
    let args = Args::from_env();
    match args.positional.first().map(String::as_str) {
        None => bench(&args),
        Some("ws-echo") => {
            args.finish(USAGE);
            let port = std::env::var("PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if let Err(e) = echo::serve(port) {
                eprintln!("ws-echo: {e}");
                std::process::exit(1);
            }
        }
        Some(other) => {
            eprintln!("unknown command {other:?}\n\n{USAGE}");
            std::process::exit(64);
        }
    }
}

fn bench(args: &Args) {
    let rounds: usize = args.get("rounds", 3);
    let cfg = Cfg {
        conns: args.get("conns", 1000),
        threads: args.get("threads", 1),
        size: args.get::<usize>("size", 100).max(16),
        interval: Duration::from_secs_f64(args.get::<f64>("interval-ms", 100.0) / 1000.0),
        warmup: Duration::from_secs_f64(args.get("warmup", 2.0)),
        duration: Duration::from_secs_f64(args.get("duration", 10.0)),
        burst: args.get("burst", 200),
        quiet: Quiet {
            off: args.flag("no-quiet"),
            timeout: Duration::from_secs_f64(args.get("quiet-timeout", 120.0)),
        },
    };
    let idle_wanted: usize = args.get("idle", 10_000);
    let tests = args.list("tests", "idle,paced,burst");
    let targets = args.list("targets", "direct,nginx,mar-1t,mar");
    args.finish(USAGE);
    if targets.iter().any(|t| t.starts_with("mar")) {
        subject::check_mar_bin();
    }
    report::catch_ctrl_c();
    report::warn_debug_build();

    let nofile = procfs::raise_nofile() as usize;
    // The proxy holds two descriptors per connection, and nginx needs headroom in its
    // connection pool besides (with 256 spare it started reusing connections at 9,400).
    let idle_max = nofile.saturating_sub(2000) / 2;
    let idle_n = idle_wanted.min(idle_max);
    println!(
        "router-ws: {} cpus, open-files limit {nofile}, {rounds} rounds, {} conns, load generator {} thread(s)",
        procfs::cpus(),
        cfg.conns,
        cfg.threads
    );
    if idle_n < idle_wanted {
        println!(
            "  note: {idle_wanted} idle connections asked, {idle_n} possible with an open-files \
             limit of {nofile} (the proxy holds two descriptors per connection; the hard limit \
             cannot be raised here)"
        );
    }
    nginx::ensure_installed();
    let echo_srv = EchoProcess::start();
    let proxy = targets.iter().any(|t| t == "nginx").then(|| {
        let port = echo_srv.addr.port().to_string();
        // The reference allows 8192 connections per worker; the idle test needs two per
        // proxied WebSocket (nothing else in the configuration changes).
        let wc = (2 * idle_n + 2000).max(8192);
        let conf = PROXY_CONF.replace(
            "worker_connections 8192;",
            &format!("worker_connections {wc};"),
        );
        Nginx::start(
            "proxy",
            &conf,
            "@LISTEN@",
            &[("@BACKEND@", port.clone()), ("@WS_BACKEND@", port)],
        )
    });
    // mini-MAR twice: with a single-threaded platform beside its one router thread (as the
    // nginx reference's one worker), then with its defaults (the platform on a thread per core).
    // The idle test holds thousands of connections from one address, which the router's
    // per-client cap (a quarter of what the open-files limit allows) would refuse: raised
    // here, as nginx's reference sets no `limit_conn`.
    let caps = format!("max_connections_per_client: {}\n", 2 * idle_n + 2000);
    let start_mar = |extra: &[&str]| {
        let m = Mar::start_with(Some(&caps), extra);
        m.deploy("echo", &subject::echo_app());
        // The echo app holds one descriptor per idle connection; the default limit is 10,000.
        let limit = format!("MAR_NOFILE_LIMIT={}", nofile.max(10_000));
        let out = m.server.mar(&["config:set", "-a", "echo", &limit]);
        assert!(out.ok(), "config:set failed: {}", out.all());
        let t = WsTarget {
            addr: m.addr(),
            host: "echo.localhost".into(),
            path: "/ws".into(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        m.wait_for("echo", || {
            rt.block_on(mar_bench::wsload::connect(&t)).is_ok()
        });
        m
    };
    let mar_1t = targets
        .iter()
        .any(|t| t == "mar-1t")
        .then(|| start_mar(&["--worker-threads", "1"]));
    let mar = targets.iter().any(|t| t == "mar").then(|| start_mar(&[]));

    let mut all: Vec<Target> = Vec::new();
    if targets.iter().any(|t| t == "direct") {
        all.push(Target {
            name: "direct",
            ws: WsTarget {
                addr: echo_srv.addr,
                host: "localhost".into(),
                path: "/ws".into(),
            },
            watched: Watched {
                proxy: vec![],
                backend: vec![echo_srv.pid()],
            },
            rss_pid: None,
        });
    }
    if let Some(p) = &proxy {
        let workers = p.workers();
        all.push(Target {
            name: "nginx",
            ws: WsTarget {
                addr: ([127, 0, 0, 1], p.port).into(),
                host: "localhost".into(),
                path: "/ws".into(),
            },
            watched: Watched {
                proxy: workers.clone(),
                backend: vec![echo_srv.pid(), p.master],
            },
            rss_pid: workers.first().copied(),
        });
    }
    for (name, m) in [("mar-1t", &mar_1t), ("mar", &mar)] {
        if let Some(m) = m {
            all.push(Target {
                name,
                ws: WsTarget {
                    addr: m.addr(),
                    host: "echo.localhost".into(),
                    path: "/ws".into(),
                },
                watched: Watched {
                    proxy: vec![m.pid],
                    backend: m.app_pids(),
                },
                rss_pid: Some(m.pid),
            });
        }
    }
    for t in &all {
        println!(
            "  {:<6} ws://{}{} Host: {}  proxy pids {:?}, backend pids {:?}",
            t.name, t.ws.addr, t.ws.path, t.ws.host, t.watched.proxy, t.watched.backend
        );
    }

    let mar_of = |name: &str| match name {
        "mar-1t" => mar_1t.as_ref(),
        "mar" => mar.as_ref(),
        _ => None,
    };
    let mut idle_lines = Vec::new();
    if tests.iter().any(|t| t == "idle") {
        println!("\n== WebSocket idle: {idle_n} connections held ==");
        for t in all.iter().filter(|t| t.rss_pid.is_some()) {
            if report::stop_requested() {
                break;
            }
            cfg.quiet.wait();
            let (line, failed) = idle(t, idle_n, &cfg);
            println!("{line}");
            idle_lines.push(line);
            if failed {
                println!("{}", diagnose(t.name, proxy.as_ref(), mar_of(t.name)));
            }
        }
    }

    let mut paced: Vec<Vec<Run>> = vec![Vec::new(); all.len()];
    let mut burst: Vec<Vec<Run>> = vec![Vec::new(); all.len()];
    let (do_paced, do_burst) = (
        tests.iter().any(|t| t == "paced"),
        tests.iter().any(|t| t == "burst"),
    );
    let paced_label = format!(
        "WebSocket paced ({} conns, 1 msg of {} B per {:.0}ms each)",
        cfg.conns,
        cfg.size,
        cfg.interval.as_secs_f64() * 1000.0
    );
    let burst_label = format!(
        "WebSocket burst ({} conns x {} msgs of {} B)",
        cfg.conns, cfg.burst, cfg.size
    );
    'outer: for round in 0..rounds {
        if !(do_paced || do_burst) {
            break;
        }
        println!("\n== WebSocket round {} ==", round + 1);
        let (mut direct_p99, mut direct_rate) = (f64::NAN, f64::NAN);
        for (ti, t) in all.iter().enumerate() {
            if do_paced {
                if report::stop_requested() {
                    break 'outer;
                }
                cfg.quiet.wait();
                let mut r = run_mode(t, &cfg, true);
                if t.name == "direct" {
                    direct_p99 = if r.noisy { f64::NAN } else { r.p99 };
                } else {
                    r.vs_direct = r.p99 - direct_p99;
                }
                print_run("paced", t, &r);
                if r.lost + r.dup + r.failed > 0 {
                    println!("{}", diagnose(t.name, proxy.as_ref(), mar_of(t.name)));
                }
                paced[ti].push(r);
            }
            if do_burst {
                if report::stop_requested() {
                    break 'outer;
                }
                cfg.quiet.wait();
                let mut r = run_mode(t, &cfg, false);
                if t.name == "direct" {
                    direct_rate = if r.noisy { f64::NAN } else { r.rate };
                } else {
                    r.vs_direct = r.rate / direct_rate;
                }
                print_run("burst", t, &r);
                if r.lost + r.dup + r.failed > 0 {
                    println!("{}", diagnose(t.name, proxy.as_ref(), mar_of(t.name)));
                }
                burst[ti].push(r);
            }
        }
    }

    println!(
        "\n== summary: medians of clean rounds (runs with other processes > {NOISY_PCT}% of the machine left out) =="
    );
    if do_paced {
        summary(&paced_label, true, &all, &paced);
    }
    if do_burst {
        summary(&burst_label, false, &all, &burst);
    }
    for l in &idle_lines {
        println!("{l}");
    }
    println!(
        "\nreference (shared/reference): 1,000 clients x 200 messages of 100 B, Python broadcast \
         server: 67.4k deliveries/s direct, 40.5k through nginx, 0 lost; about 17µs of nginx CPU \
         per relayed frame and about 18 KiB per proxied connection.\n\
         mar targets: at most 10µs CPU per frame, added p99 at most 1ms when paced, at most \
         12 KiB per proxied connection with 10,000 idle connections held, no loss."
    );

    for m in [mar_1t, mar].into_iter().flatten() {
        m.stop();
    }
    drop(proxy);
    drop(echo_srv);
}

/// Opens `n` idle connections through `t` and reports the proxy's RSS per connection.
/// The proxy's own account of trouble: nginx's error log, mar's app log and stderr.
fn diagnose(name: &str, proxy: Option<&Nginx>, mar: Option<&Mar>) -> String {
    let text = match name {
        "nginx" => proxy.map(|p| p.error_log_tail(8)),
        n if n.starts_with("mar") => mar.map(|m| m.log_tail("echo", 8)),
        _ => None,
    };
    let text = text.unwrap_or_default();
    let indented: Vec<String> = text.lines().map(|l| format!("      {l}")).collect();
    format!("    --- {name} logs ---\n{}", indented.join("\n"))
}

fn idle(t: &Target, n: usize, cfg: &Cfg) -> (String, bool) {
    let pid = t.rss_pid.unwrap();
    // Warm the proxy's lazily initialised paths first, so they are not counted per connection.
    let warm = WsLoad {
        target: t.ws.clone(),
        conns: 100,
        threads: cfg.threads,
        size: cfg.size,
        mode: WsMode::Idle,
    };
    let _ = run_ws(&warm, |_| {});
    std::thread::sleep(Duration::from_secs(1));
    let before = procfs::rss_kib(pid).unwrap_or(0);
    let mut after = 0;
    let load = WsLoad { conns: n, ..warm };
    let t0 = std::time::Instant::now();
    let res = run_ws(&load, |m| {
        if m == WsMark::Connected {
            // Let the proxy finish its side of the last handshakes.
            std::thread::sleep(Duration::from_secs(2));
            after = procfs::rss_kib(pid).unwrap_or(0);
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let per = after.saturating_sub(before) as f64 / res.connected.max(1) as f64;
    let lost = res.connect_failed + res.connected.saturating_sub(res.distinct) + res.duplicated;
    let err = res
        .first_error
        .map(|e| format!(" (first error: {e})"))
        .unwrap_or_default();
    let target = if t.name.starts_with("mar") {
        format!(
            " [target ≤ 12 KiB: {}, no loss: {}]",
            verdict(per <= 12.0),
            verdict(lost == 0)
        )
    } else {
        String::new()
    };
    let line = format!(
        "WebSocket idle ({} of {n} conns held)  {} {:.1} KiB/conn (VmRSS {} → {} KiB), lost {lost}, \
         {:.1}s{err}{target}",
        res.connected, t.name, per, before, after, elapsed
    );
    (line, lost > 0)
}

fn run_mode(t: &Target, cfg: &Cfg, paced: bool) -> Run {
    let mode = if paced {
        WsMode::Paced {
            interval: cfg.interval,
            warmup: cfg.warmup,
            duration: cfg.duration,
        }
    } else {
        WsMode::Burst {
            count: cfg.burst,
            timeout: Duration::from_secs(60),
        }
    };
    let load = WsLoad {
        target: t.ws.clone(),
        conns: cfg.conns,
        threads: cfg.threads,
        size: cfg.size,
        mode,
    };
    let mut snaps = Vec::new();
    let res: WsResult = run_ws(&load, |m| {
        if m != WsMark::Connected {
            snaps.push(t.watched.snap());
        }
    });
    let cpu = CpuUse::between(&snaps[0], &snaps[1]);
    if let Some(e) = &res.first_error {
        println!("    first error: {e}");
    }
    let frames = 2.0 * res.window_received.max(1) as f64;
    Run {
        rate: res.rate(),
        p50: res.hist.quantile(0.5),
        p99: res.hist.quantile(0.99),
        cpu_frame: if t.watched.proxy.is_empty() {
            f64::NAN
        } else {
            cpu.proxy_s * 1e6 / frames
        },
        sys_pct: 100.0 * cpu.proxy_sys_s / cpu.proxy_s,
        other_pct: cpu.other_pct,
        lost: res.lost(),
        dup: res.duplicated,
        failed: res.connect_failed + res.broken,
        noisy: cpu.other_pct > NOISY_PCT,
        vs_direct: f64::NAN,
    }
}

fn print_run(what: &str, t: &Target, r: &Run) {
    println!(
        "  {what} {:<6} {:>7} msg/s  p50 {:>8}  p99 {:>8}  proxy {:>7}/frame{}  other {:4.1}%{}  \
         lost {}  dup {}  failed conns {}",
        t.name,
        rate(r.rate),
        ms(r.p50),
        ms(r.p99),
        us(r.cpu_frame),
        if r.sys_pct.is_nan() {
            String::new()
        } else {
            format!(" (sys {:.0}%)", r.sys_pct)
        },
        r.other_pct,
        if r.noisy { " NOISY" } else { "" },
        r.lost,
        r.dup,
        r.failed
    );
}

fn summary(label: &str, paced: bool, all: &[Target], runs: &[Vec<Run>]) {
    let mut line = label.to_owned();
    let mut mar_lines = Vec::new();
    let mut nginx_cpu = f64::NAN;
    let (mut direct_p99, mut direct_rate) = (f64::NAN, f64::NAN);
    for (ti, t) in all.iter().enumerate() {
        let (rs, all_noisy) = report::clean(&runs[ti], |r| r.noisy);
        let m = |f: fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
        let (rt, p50, p99, cpu, vs) = (
            m(|r| r.rate),
            m(|r| r.p50),
            m(|r| r.p99),
            m(|r| r.cpu_frame),
            m(|r| r.vs_direct),
        );
        if t.name == "direct" {
            (direct_p99, direct_rate) = (p99, rt);
        }
        // No round with a clean direct run: compare the medians.
        let vs = match (vs.is_nan(), paced) {
            (false, _) => vs,
            (true, true) => p99 - direct_p99,
            (true, false) => rt / direct_rate,
        };
        // Lost, duplicated (by sequence number) and broken all count against "no loss".
        let lost: u64 = runs[ti].iter().map(|r| r.lost + r.dup + r.failed).sum();
        let noisy = if all_noisy { " (all runs noisy)" } else { "" };
        let sep = if ti == 0 { "   " } else { " | " };
        let rel = if t.name == "direct" {
            String::new()
        } else if paced {
            format!(" (added p99 {})", ms(vs))
        } else {
            format!(" (ratio {})", report::ratio(vs))
        };
        let cpu_s = if t.name == "direct" {
            String::new()
        } else {
            format!(" {}/frame", us(cpu))
        };
        line += &format!(
            "{sep}{} {} msg/s{rel} p50 {} p99 {}{cpu_s} lost {lost}{noisy}",
            t.name,
            rate(rt),
            ms(p50),
            ms(p99),
        );
        if t.name == "nginx" {
            nginx_cpu = cpu;
        }
        if t.name.starts_with("mar") {
            let extra = if paced {
                format!(", added p99 {} (≤ 1ms) {}", ms(vs), verdict(vs <= 1000.0))
            } else {
                String::new()
            };
            mar_lines.push(format!(
                "    {} vs targets: {}/frame (≤ 10µs) {}{extra}, lost {lost} {}; {}/nginx CPU per frame {}x",
                t.name,
                us(cpu),
                verdict(cpu <= 10.0),
                verdict(lost == 0),
                t.name,
                report::ratio(cpu / nginx_cpu)
            ));
        }
    }
    println!("{line}");
    for l in mar_lines {
        println!("{l}");
    }
}
