//! Benchmark: proxied HTTP through nginx (the reference) and through mini-MAR's router, in one
//! run with the same Rust load generator and the same backend (nginx `return 200 "hello"`):
//! req/s, p50/p99 latency, the proxy's CPU µs per request (from /proc) and the proxied/direct
//! ratio, with 64 and 1,000 keep-alive connections and with `Connection: close`. Rounds
//! alternate direct, nginx, mar; medians of the clean runs are printed as a table.
//!
//! Run: `cargo run -p mar-bench --bin router-http -- --help`; `router-http load ...` runs the
//! load generator alone against any address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mar_bench::args::Args;
use mar_bench::loadgen::{HttpLoad, run_http};
use mar_bench::nginx::{self, BACKEND_CONF, Nginx, PROXY_CONF};
use mar_bench::procfs::{self, CpuUse, Watched};
use mar_bench::report::{self, NOISY_PCT, Quiet, median, ms, rate, us, verdict};
use mar_bench::subject::{self, Mar};

const USAGE: &str = "\
router-http: proxied HTTP, direct vs nginx vs mini-MAR, same run, medians of clean rounds.

  router-http [--rounds 3] [--duration 10] [--warmup 3] [--threads 1]
              [--conns 64,1000] [--close-conns 16] [--targets direct,nginx,mar-1t,mar]
              [--quiet-timeout 120] [--no-quiet]

  router-http load --addr HOST:PORT [--host NAME] [--path /] [--conns 64] [--close]
              [--duration 10] [--warmup 2] [--threads 1] [--pid PID,PID...]
      runs the load generator alone; with --pid, prints those processes' CPU µs/request.

--conns: keep-alive scenarios (one per count); --close-conns: the `Connection: close`
scenario's connections (0: none). --threads: load generator threads (current-thread tokio
runtimes). Targets: direct (the backend itself), nginx (the reference proxy), mar-1t (mini-MAR
configured as the reference: one router thread, `--worker-threads 1`, `access_log: false`), mar
(mini-MAR with its defaults: one router thread, the platform on a thread per core, access log
on; `MAR_ROUTER_THREADS` changes the router threads of both). mar is target/debug/mar unless MAR_BIN names
another build.";

/// One way to reach the backend.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    host: String,
    watched: Watched,
}

/// A load shape.
struct Scenario {
    label: String,
    conns: usize,
    close: bool,
}

/// One measured run.
#[derive(Clone)]
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
    proxy_us: f64,
    /// Share of the proxy's CPU spent in the kernel, in %.
    proxy_sys_pct: f64,
    backend_us: f64,
    gen_us: f64,
    other_pct: f64,
    errors: u64,
    noisy: bool,
    /// Proxied/direct of the same round.
    ratio: f64,
}

struct Cfg {
    warmup: Duration,
    duration: Duration,
    threads: usize,
    quiet: Quiet,
}

fn main() {
    let args = Args::from_env();
    match args.positional.first().map(String::as_str) {
        None => bench(&args),
        Some("load") => load_cmd(&args),
        Some(other) => {
            eprintln!("unknown command {other:?}\n\n{USAGE}");
            std::process::exit(64);
        }
    }
}

fn bench(args: &Args) {
    let rounds: usize = args.get("rounds", 3);
    let cfg = Cfg {
        warmup: Duration::from_secs_f64(args.get("warmup", 3.0)),
        duration: Duration::from_secs_f64(args.get("duration", 10.0)),
        threads: args.get("threads", 1),
        quiet: Quiet {
            off: args.flag("no-quiet"),
            timeout: Duration::from_secs_f64(args.get("quiet-timeout", 120.0)),
        },
    };
    let conns: Vec<usize> = args
        .list("conns", "64,1000")
        .iter()
        .map(|c| c.parse().expect("--conns takes numbers"))
        .collect();
    let close_conns: usize = args.get("close-conns", 16);
    let targets = args.list("targets", "direct,nginx,nginx-1024,mar-1t,mar");
    args.finish(USAGE);
    if targets.iter().any(|t| t.starts_with("mar")) {
        subject::check_mar_bin();
    }
    report::catch_ctrl_c();
    report::warn_debug_build();

    let mut scenarios: Vec<Scenario> = conns
        .iter()
        .map(|&c| Scenario {
            label: format!("{c} conns, keep-alive"),
            conns: c,
            close: false,
        })
        .collect();
    if close_conns > 0 {
        scenarios.push(Scenario {
            label: format!("{close_conns} conns, Connection: close"),
            conns: close_conns,
            close: true,
        });
    }

    let nofile = procfs::raise_nofile();
    nginx::ensure_installed();
    println!(
        "router-http: {} cpus, open-files limit {nofile}, {rounds} rounds of {:.0}s after {:.0}s \
         warm-up, load generator {} thread(s)",
        procfs::cpus(),
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.threads
    );
    let backend = Nginx::start("backend", BACKEND_CONF, "@BACKEND@", &[]);
    let nginx_with = |name: &str, conf: &str| {
        let port = backend.port.to_string();
        Nginx::start(
            name,
            conf,
            "@LISTEN@",
            &[("@BACKEND@", port.clone()), ("@WS_BACKEND@", port)],
        )
    };
    let proxy = targets
        .iter()
        .any(|t| t == "nginx")
        .then(|| nginx_with("proxy", PROXY_CONF));
    // The reference keeps 64 idle upstream connections; mini-MAR's pool keeps up to 1,024 per
    // instance. nginx with a pool of the same size runs beside it, so the 1,000-connection row
    // compares like with like as well as with the reference.
    let pooled_conf = PROXY_CONF.replace("keepalive 64;", "keepalive 1024;");
    let proxy_1024 = targets
        .iter()
        .any(|t| t == "nginx-1024")
        .then(|| nginx_with("proxy-1024", &pooled_conf));
    // mini-MAR twice: configured as the nginx reference is (one router thread, a single-threaded
    // platform, no access log), then with the defaults (one router thread, access log on).
    let start_mar = |yaml: Option<&str>, extra: &[&str]| {
        let m = Mar::start_with(yaml, extra);
        m.deploy("hello", &subject::nginx_app(BACKEND_CONF));
        let addr = m.addr();
        m.wait_for("hello", || {
            subject::get(addr, "hello.localhost", "/")
                .is_some_and(|(s, b)| s == 200 && b == "hello")
        });
        m
    };
    let mar_1t = targets
        .iter()
        .any(|t| t == "mar-1t")
        .then(|| start_mar(Some("access_log: false\n"), &["--worker-threads", "1"]));
    let mar = targets
        .iter()
        .any(|t| t == "mar")
        .then(|| start_mar(None, &[]));
    let mut all: Vec<Target> = Vec::new();
    if targets.iter().any(|t| t == "direct") {
        all.push(Target {
            name: "direct",
            addr: ([127, 0, 0, 1], backend.port).into(),
            host: "localhost".into(),
            watched: Watched {
                proxy: vec![],
                backend: backend.pids(),
            },
        });
    }
    for (name, p) in [("nginx", &proxy), ("nginx-1024", &proxy_1024)] {
        if let Some(p) = p {
            let mut b = backend.pids();
            b.push(p.master);
            all.push(Target {
                name,
                addr: ([127, 0, 0, 1], p.port).into(),
                host: "localhost".into(),
                watched: Watched {
                    proxy: p.workers(),
                    backend: b,
                },
            });
        }
    }
    for (name, m) in [("mar-1t", &mar_1t), ("mar", &mar)] {
        if let Some(m) = m {
            all.push(Target {
                name,
                addr: m.addr(),
                host: "hello.localhost".into(),
                watched: Watched {
                    proxy: vec![m.pid],
                    backend: m.app_pids(),
                },
            });
        }
    }
    for t in &all {
        let r = subject::get(t.addr, &t.host, "/");
        assert!(
            r.as_ref().is_some_and(|(s, b)| *s == 200 && b == "hello"),
            "{} does not answer 200 hello: {r:?}",
            t.name
        );
        println!(
            "  {:<6} http://{}/ Host: {}  proxy pids {:?}, backend pids {:?}",
            t.name, t.addr, t.host, t.watched.proxy, t.watched.backend
        );
    }

    // runs[scenario][target] = one Run per round
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); all.len()]; scenarios.len()];
    'outer: for (si, sc) in scenarios.iter().enumerate() {
        println!("\n== proxied HTTP ({}) ==", sc.label);
        for round in 0..rounds {
            // The order of the targets turns by one every round, so none always runs first
            // (on a cold machine) or last (after the others warmed it).
            let mut this_round: Vec<Option<Run>> = vec![None; all.len()];
            for k in 0..all.len() {
                let ti = (k + round) % all.len();
                if report::stop_requested() {
                    break 'outer;
                }
                cfg.quiet.wait();
                this_round[ti] = Some(run_one(&all[ti], sc, &cfg));
            }
            // Ratios against this round's direct run; a noisy one makes no ratio (the summary
            // falls back to medians).
            let direct_rps = all
                .iter()
                .zip(&this_round)
                .find(|(t, _)| t.name == "direct")
                .and_then(|(_, r)| r.as_ref())
                .map_or(f64::NAN, |r| if r.noisy { f64::NAN } else { r.rps });
            for (ti, r) in this_round.into_iter().enumerate() {
                let Some(mut r) = r else { continue };
                if all[ti].name != "direct" {
                    r.ratio = r.rps / direct_rps;
                }
                print_run(round, &all[ti], &r);
                runs[si][ti].push(r);
            }
        }
        summary(sc, &all, &runs[si]);
    }

    println!(
        "\n== summary: medians of clean rounds (runs with other processes > {NOISY_PCT}% of the machine left out) =="
    );
    for (si, sc) in scenarios.iter().enumerate() {
        summary(sc, &all, &runs[si]);
    }
    println!(
        "\nreference (shared/reference, wrk): direct 71.4k req/s (p50 0.54ms, p99 4.96ms), nginx \
         26.3k (p50 2.17ms, p99 7.74ms), ratio 0.37, about 33µs of proxy CPU per request.\n\
         mar targets: at most 25µs CPU/request, ratio at least 0.45, p99 no worse than nginx's; \
         also with 1,000 keep-alive connections and with Connection: close."
    );

    if let Some(m) = mar {
        m.stop();
    }
    drop(proxy);
    drop(backend);
}

fn run_one(t: &Target, sc: &Scenario, cfg: &Cfg) -> Run {
    let load = HttpLoad {
        addr: t.addr,
        host: t.host.clone(),
        path: "/".into(),
        conns: sc.conns,
        close: sc.close,
        threads: cfg.threads,
        warmup: cfg.warmup,
        duration: cfg.duration,
    };
    let mut snaps = Vec::new();
    let res = run_http(&load, |_| snaps.push(t.watched.snap()));
    let cpu = CpuUse::between(&snaps[0], &snaps[1]);
    // Only 2xx answers count as work done: an error page is cheap, and must not flatter the
    // CPU per request or the req/s (errors are printed apart).
    let n = res.ok.max(1) as f64;
    if let Some(e) = &res.first_error {
        println!("    first error: {e}");
    }
    Run {
        rps: res.rps(),
        p50: res.hist.quantile(0.5),
        p99: res.hist.quantile(0.99),
        proxy_us: if t.watched.proxy.is_empty() {
            f64::NAN
        } else {
            cpu.proxy_s * 1e6 / n
        },
        proxy_sys_pct: 100.0 * cpu.proxy_sys_s / cpu.proxy_s,
        backend_us: cpu.backend_s * 1e6 / n,
        gen_us: cpu.gen_s * 1e6 / n,
        other_pct: cpu.other_pct,
        errors: res.errors + res.non2xx,
        noisy: cpu.other_pct > NOISY_PCT,
        ratio: f64::NAN,
    }
}

fn print_run(round: usize, t: &Target, r: &Run) {
    println!(
        "  round {} {:<6} {:>7} req/s  p50 {:>8}  p99 {:>8}  proxy {:>8}/req{}  backend {:>7}/req  \
         loadgen {:>7}/req  other {:4.1}%{}  errors {}",
        round + 1,
        t.name,
        rate(r.rps),
        ms(r.p50),
        ms(r.p99),
        us(r.proxy_us),
        if r.proxy_sys_pct.is_nan() {
            String::new()
        } else {
            format!(" (sys {:.0}%)", r.proxy_sys_pct)
        },
        us(r.backend_us),
        us(r.gen_us),
        r.other_pct,
        if r.noisy { " NOISY" } else { "" },
        r.errors
    );
}

/// Medians of one scenario, one line, plus mar against its targets.
fn summary(sc: &Scenario, all: &[Target], runs: &[Vec<Run>]) {
    let mut line = format!("proxied HTTP ({})", sc.label);
    let mut med = Vec::new();
    let mut direct_rps = f64::NAN;
    for (ti, t) in all.iter().enumerate() {
        let (rs, all_noisy) = report::clean(&runs[ti], |r| r.noisy);
        let m = |f: fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
        let (rps, p50, p99, cpu, ratio) = (
            m(|r| r.rps),
            m(|r| r.p50),
            m(|r| r.p99),
            m(|r| r.proxy_us),
            m(|r| r.ratio),
        );
        if t.name == "direct" {
            direct_rps = rps;
        }
        // No round with a clean direct run: the ratio of the medians.
        let ratio = if ratio.is_nan() {
            rps / direct_rps
        } else {
            ratio
        };
        let errors: u64 = runs[ti].iter().map(|r| r.errors).sum();
        let noisy = if all_noisy { " (all runs noisy)" } else { "" };
        let errs = if errors > 0 {
            format!(" errors {errors}")
        } else {
            String::new()
        };
        let sep = if ti == 0 { "   " } else { " | " };
        if t.name == "direct" {
            line += &format!(
                "{sep}direct {} req/s p50 {} p99 {}{errs}{noisy}",
                rate(rps),
                ms(p50),
                ms(p99)
            );
        } else {
            line += &format!(
                "{sep}{} {} (ratio {}) p50 {} p99 {} {}/req{errs}{noisy}",
                t.name,
                rate(rps),
                report::ratio(ratio),
                ms(p50),
                ms(p99),
                us(cpu)
            );
        }
        med.push((t.name, rps, p99, cpu, ratio, errors));
    }
    println!("{line}");
    let nginx = med.iter().find(|m| m.0 == "nginx");
    for &(name, rps, p99, cpu, ratio, errors) in med.iter().filter(|m| m.0.starts_with("mar")) {
        let p99_check = match nginx {
            Some(n) => format!(
                "p99 {} vs nginx {} {}",
                ms(p99),
                ms(n.2),
                verdict(p99 <= n.2)
            ),
            None => format!("p99 {}", ms(p99)),
        };
        let mut vs_nginx = String::new();
        for reference in ["nginx", "nginx-1024"] {
            if let Some(n) = med.iter().find(|m| m.0 == reference) {
                vs_nginx.push_str(&format!(
                    "; {name}/{reference}: {}x the req/s, {}x the CPU per request",
                    report::ratio(rps / n.1),
                    report::ratio(cpu / n.3)
                ));
            }
        }
        println!(
            "    {name} vs targets: {}/req (≤ 25µs) {}, ratio {} (≥ 0.45) {}, {p99_check}, errors {errors} {}{vs_nginx}",
            us(cpu),
            verdict(cpu <= 25.0),
            report::ratio(ratio),
            verdict(ratio >= 0.45),
            verdict(errors == 0),
        );
    }
}

/// `router-http load`: the generator alone.
fn load_cmd(args: &Args) {
    let addr: SocketAddr = args.get("addr", String::new()).parse().unwrap_or_else(|_| {
        eprintln!("load needs --addr HOST:PORT\n\n{USAGE}");
        std::process::exit(64)
    });
    let load = HttpLoad {
        addr,
        host: args.get("host", addr.to_string()),
        path: args.get("path", "/".to_owned()),
        conns: args.get("conns", 64),
        close: args.flag("close"),
        threads: args.get("threads", 1),
        warmup: Duration::from_secs_f64(args.get("warmup", 2.0)),
        duration: Duration::from_secs_f64(args.get("duration", 10.0)),
    };
    let pids: Vec<u32> = args
        .list("pid", "")
        .iter()
        .map(|p| p.parse().expect("--pid takes pids"))
        .collect();
    args.finish(USAGE);
    procfs::raise_nofile();
    let watched = Watched {
        proxy: pids,
        backend: vec![],
    };
    let mut snaps = Vec::new();
    let res = run_http(&load, |_| snaps.push(watched.snap()));
    let cpu = CpuUse::between(&snaps[0], &snaps[1]);
    // Only 2xx answers count as work done: an error page is cheap, and must not flatter the
    // CPU per request or the req/s (errors are printed apart).
    let n = res.ok.max(1) as f64;
    println!(
        "{} conns{}: {} req/s  p50 {}  p99 {}  max {}  errors {}  non-2xx {}  loadgen {}/req{}  other {:.1}%",
        load.conns,
        if load.close {
            " (Connection: close)"
        } else {
            ""
        },
        rate(res.rps()),
        ms(res.hist.quantile(0.5)),
        ms(res.hist.quantile(0.99)),
        ms(res.hist.max() as f64),
        res.errors,
        res.non2xx,
        us(cpu.gen_s * 1e6 / n),
        if watched.proxy.is_empty() {
            String::new()
        } else {
            format!("  pids {}/req", us(cpu.proxy_s * 1e6 / n))
        },
        cpu.other_pct
    );
    if let Some(e) = res.first_error {
        println!("first error: {e}");
    }
}
