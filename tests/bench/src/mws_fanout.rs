//! Benchmark: MWS, mini-MAR's push gateway, against a Node.js broadcast server on the `ws`
//! package (the reference, `tests/bench/reference/mws-node`), in one run with the same Rust
//! client, the same messages and the same sockets (`mar_bench::mwsload`): fan-out to every
//! socket (deliveries/s and the server's CPU µs per delivery, from /proc), latency when paced,
//! targeted publishes by tag (whose cost must not grow with the sockets that are not
//! targeted), idle sockets with pings (VmRSS per socket, CPU), slow consumers (memory bounded,
//! then a Close, and the others unharmed) and sockets that drop and come back (nothing lost).
//!
//! Run: `cargo run --release -p mar-bench --bin mws-fanout -- --help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mar_bench::args::Args;
use mar_bench::mwsload::{Drops, Gateway, Mark, MwsLoad, MwsResult, Publish, run_mws};
use mar_bench::mwsref::{self, NodeServer};
use mar_bench::procfs::{self, CpuUse, Watched};
use mar_bench::report::{self, NOISY_PCT, Quiet, median, ms, rate, ratio, us, verdict};
use mar_bench::subject::{self, Mar};

const USAGE: &str = "\
mws-fanout: MWS push gateway vs a Node.js `ws` broadcast server, same run, same client,
medians of clean rounds.

  mws-fanout [--rounds 3] [--tests fanout,latency,tags,idle,slow,reconnect]
             [--targets mar,node] [--sockets 1000,10000] [--duration 3] [--warmup 1]
             [--size 100] [--window 64] [--tags 1000] [--tag-window 1024]
             [--publishers 2] [--pipeline 16] [--threads 1] [--per-address 4000]
             [--latency-sockets 1000] [--latency-rate 10000]
             [--idle 0] [--idle-secs 10] [--ping 10]
             [--slow 10] [--slow-sockets 1000] [--slow-rate 40] [--slow-size 16384]
             [--slow-secs 30] [--slow-rcvbuf 0]
             [--reconnect 100] [--reconnect-sockets 1000] [--reconnect-rate 20]
             [--away 2] [--quiet-timeout 120] [--no-quiet]

fanout: --size byte messages to every socket (receivers.sockets [\"*\"]) posted through the
REST API, windowed (message k+W is posted once every socket got message k; W is --window
or 65,536 deliveries' worth, the smaller), for each
of --sockets: deliveries/s, the server's CPU µs per delivery, loss. latency: messages to
--latency-sockets, each with a tag of its own, one message per tag in turn, paced at
--latency-rate deliveries/s: p50/p99 from post to delivery.
tags: for each of --sockets, --tags tags scaled to keep the sockets per tag (10,000 sockets
and 1,000 tags: 10 each), one tag per message, tags in turn, --tag-window messages in flight:
tag publishes/s and CPU µs per publish. idle: --idle sockets (0: as many as the open-files
limit allows) held --idle-secs with the servers pinging every --ping s: VmRSS per socket and
CPU. slow: --slow of --slow-sockets never read (with SO_RCVBUF --slow-rcvbuf when not 0),
messages to all paced at --slow-rate per second: memory per slow socket (peak VmRSS growth
beyond a run without them), their Close, the readers' p99 against that run. reconnect:
--reconnect of --reconnect-sockets (with envelopes) drop 1 s into the window and come back
after --away s with since=N&epoch=E, messages to all at --reconnect-rate per second: loss.

mar is target/<profile>/mar beside the bench unless MAR_BIN names another build; the Node
reference needs `node` on the PATH (its `ws` is installed with npm ci when missing).";

struct Cfg {
    rounds: usize,
    warmup: Duration,
    duration: Duration,
    size: usize,
    window: usize,
    tag_window: usize,
    publishers: usize,
    pipeline: usize,
    threads: usize,
    per_address: usize,
    quiet: Quiet,
}

struct Target {
    name: &'static str,
    gw: Gateway,
    watched: Watched,
    pid: u32,
}

#[derive(Clone, Default)]
struct Run {
    /// Deliveries per second in the window.
    rate: f64,
    /// Posts answered 201 per second in the window.
    pub_rate: f64,
    /// Server CPU µs per delivery, and per post.
    cpu_delivery: f64,
    cpu_publish: f64,
    /// The share of it in the kernel, %.
    sys_pct: f64,
    /// The load generator's CPU µs per delivery.
    gen_delivery: f64,
    p50: f64,
    p99: f64,
    lost: u64,
    dup: u64,
    failed: u64,
    other_pct: f64,
    noisy: bool,
    /// Server CPU over the window, % of one core.
    cpu_pct: f64,
    /// Slow consumers: the server's VmRSS growth to its peak during the run, KiB.
    peak_kib: f64,
    /// The most bytes in the server's TCP send queues to the silent sockets, and in their
    /// receive queues, KiB.
    sendq_kib: f64,
    recvq_kib: f64,
    res: MwsResult,
}

fn main() {
    let args = Args::from_env();
    let cfg = Cfg {
        rounds: args.get("rounds", 3),
        warmup: Duration::from_secs_f64(args.get("warmup", 1.0)),
        duration: Duration::from_secs_f64(args.get("duration", 3.0)),
        size: args
            .get::<usize>("size", 100)
            .max(mar_bench::mwsload::MIN_SIZE),
        window: args.get("window", 64),
        tag_window: args.get("tag-window", 1024),
        publishers: args.get("publishers", 2),
        pipeline: args.get("pipeline", 16),
        threads: args.get("threads", 1),
        per_address: args.get("per-address", 4000),
        quiet: Quiet {
            off: args.flag("no-quiet"),
            timeout: Duration::from_secs_f64(args.get("quiet-timeout", 120.0)),
        },
    };
    let tests = args.list("tests", "fanout,latency,tags,idle,slow,reconnect");
    let targets = args.list("targets", "mar,node");
    let sizes: Vec<usize> = args
        .list("sockets", "1000,10000")
        .iter()
        .map(|s| s.parse().expect("--sockets: numbers"))
        .collect();
    let tags: usize = args.get("tags", 1000);
    let latency_sockets: usize = args.get("latency-sockets", 1000);
    let latency_rate: f64 = args.get("latency-rate", 10_000.0);
    let idle_wanted: usize = args.get("idle", 0);
    let idle_secs: f64 = args.get("idle-secs", 10.0);
    let ping: u64 = args.get("ping", 10);
    let slow = Slow {
        silent: args.get("slow", 10),
        sockets: args.get("slow-sockets", 1000),
        rate: args.get("slow-rate", 40.0),
        secs: args.get("slow-secs", 30.0),
        size: args
            .get::<usize>("slow-size", 16384)
            .max(mar_bench::mwsload::MIN_SIZE),
        rcvbuf: args.get("slow-rcvbuf", 0u32),
    };
    let rec = Reconnect {
        drops: args.get("reconnect", 100),
        sockets: args.get("reconnect-sockets", 1000),
        rate: args.get("reconnect-rate", 20.0),
        away: Duration::from_secs_f64(args.get("away", 2.0)),
    };
    args.finish(USAGE);
    let has = |t: &str| tests.iter().any(|x| x == t);
    if targets.iter().any(|t| t == "mar") {
        subject::check_mar_bin();
    }
    if targets.iter().any(|t| t == "node") {
        mwsref::ensure_installed();
    }
    report::catch_ctrl_c();
    report::warn_debug_build();

    let nofile = procfs::raise_nofile() as usize;
    // Each socket is one descriptor in the client and one in the server (mini-MAR serves it
    // in-process: no app connection behind it); the rest is headroom for both.
    let idle_max = nofile.saturating_sub(2000);
    let idle_n = if idle_wanted == 0 {
        idle_max
    } else {
        idle_wanted.min(idle_max)
    };
    println!(
        "mws-fanout: {} cpus, open-files limit {nofile}, {} rounds, client {} thread(s), {} \
         sockets per source address, {} B messages, pings every {ping} s",
        procfs::cpus(),
        cfg.rounds,
        cfg.threads,
        cfg.per_address,
        cfg.size
    );
    if idle_wanted > idle_n {
        println!(
            "  note: {idle_wanted} idle sockets asked, {idle_n} possible with an open-files limit \
             of {nofile} (the hard limit cannot be raised here)"
        );
    }

    let mut servers = Servers::start(&targets, ping);
    let base = |t: &Target, sockets: usize, publish: Publish| MwsLoad {
        gateway: t.gw.clone(),
        sockets,
        tags: 0,
        silent: 0,
        silent_rcvbuf: None,
        silent_addrs: Default::default(),
        envelope: false,
        per_address: cfg.per_address,
        threads: cfg.threads,
        publish,
        size: cfg.size,
        publishers: cfg.publishers,
        pipeline: cfg.pipeline,
        warmup: cfg.warmup,
        duration: cfg.duration,
        drain: Duration::from_secs(10),
        drops: None,
    };

    // Idle once per target, before the rounds: it needs the most sockets and no rounds.
    let mut idle_runs: Vec<(usize, Run, Idle)> = Vec::new();
    if has("idle") {
        println!("\n== idle: {idle_n} sockets held {idle_secs:.0} s, pings every {ping} s ==");
        for (ti, t) in servers.all.iter().enumerate() {
            if report::stop_requested() {
                break;
            }
            cfg.quiet.wait();
            let mut load = base(t, idle_n, Publish::Idle);
            load.warmup = Duration::ZERO;
            load.duration = Duration::from_secs_f64(idle_secs);
            let (r, fig) = idle(t, &load, ping);
            print_idle(t, &r, &fig, idle_n);
            idle_runs.push((ti, r, fig));
        }
    }

    // Slow consumers once per target too: reaching the gateway's bound takes megabytes per
    // silent socket (the kernel's send buffer grows to tcp_wmem's maximum before MWS's queue
    // of 256 messages even starts to fill), hence large messages and a long window.
    let mut slow_runs: Vec<Vec<Run>> = vec![Vec::new(); servers.all.len()];
    if has("slow") {
        // On fresh servers: memory the idle test's sockets freed would hide the growth.
        if has("idle") {
            println!("\n(restarting the servers)");
            servers.stop();
            servers = Servers::start(&targets, ping);
        }
        println!(
            "\n== slow consumers: {} of {} sockets never read; {} B messages to all, {}/s for {:.0} s; \
             then without them ==",
            slow.silent, slow.sockets, slow.size, slow.rate, slow.secs
        );
        for (ti, t) in servers.all.iter().enumerate() {
            let interval = Duration::from_secs_f64(1.0 / slow.rate.max(0.1));
            let mut load = base(t, slow.sockets, Publish::Paced { interval });
            load.duration = Duration::from_secs_f64(slow.secs);
            load.size = slow.size;
            load.silent_rcvbuf = (slow.rcvbuf > 0).then_some(slow.rcvbuf);
            // A warm-up run first, not counted: the server's steady state (a gateway's history
            // of recent messages, 1,000 at most, fills during the first run; 30 s at 40/s fills
            // it) must not be charged to whichever run comes first. Then the run without
            // silent sockets, then the one with them, on the same server.
            for (key, silent) in [("slow warm-up", 0), ("slow base", 0), ("slow", slow.silent)] {
                if report::stop_requested() {
                    break;
                }
                load.silent = silent;
                load.silent_addrs = Default::default();
                cfg.quiet.wait();
                let r = measure_peak(t, &load);
                print_slow(key, t, &r, silent);
                if key != "slow warm-up" {
                    slow_runs[ti].push(r);
                }
            }
        }
    }

    // Every other test: rounds, the targets' order turning by one each round.
    let mut rows: BTreeMap<String, Vec<Vec<Run>>> = BTreeMap::new();
    let mut push = |key: String, ti: usize, r: Run| {
        rows.entry(key)
            .or_insert_with(|| vec![Vec::new(); servers.all.len()])[ti]
            .push(r);
    };
    let max_n = sizes.iter().copied().max().unwrap_or(1).max(1);
    'rounds: for round in 0..cfg.rounds {
        if !["fanout", "latency", "tags", "reconnect"]
            .iter()
            .any(|t| has(t))
        {
            break;
        }
        println!("\n== round {} ==", round + 1);
        let all = &servers.all;
        for k in 0..all.len() {
            let ti = (k + round) % all.len();
            let t = &all[ti];
            let run = |label: &str, load: &MwsLoad| -> Option<Run> {
                if report::stop_requested() {
                    return None;
                }
                cfg.quiet.wait();
                let r = measure(t, load, None);
                print_run(label, t, &r);
                Some(r)
            };
            if has("fanout") {
                for &n in &sizes {
                    // At most --window messages, and about 64k deliveries, in flight: with
                    // 10,000 sockets 64 messages would be 640k deliveries queued (seconds of
                    // work) and every figure but the rate would be queueing.
                    let window = cfg.window.min((65_536 / n.max(1)).max(2));
                    let load = base(t, n, Publish::Saturate { window });
                    let Some(r) = run(&format!("fanout {n}"), &load) else {
                        break 'rounds;
                    };
                    push(format!("fanout {n}"), ti, r);
                }
            }
            if has("latency") {
                // Each socket its own tag, the tags in turn: deliveries come evenly spread
                // over time, not as bursts of one message to every socket (whose last
                // delivery waits for the whole fan-out before it).
                let interval = Duration::from_secs_f64(1.0 / latency_rate.max(1.0));
                let mut load = base(t, latency_sockets, Publish::PacedTags { interval });
                load.tags = latency_sockets;
                let Some(r) = run("latency", &load) else {
                    break 'rounds;
                };
                push("latency".into(), ti, r);
            }
            if has("tags") {
                for &n in &sizes {
                    let mut load = base(
                        t,
                        n,
                        Publish::Tags {
                            window: cfg.tag_window,
                        },
                    );
                    // The same sockets per tag at every size, so a publish does the same work.
                    load.tags = (tags * n / max_n).max(1);
                    let Some(r) = run(&format!("tags {n}"), &load) else {
                        break 'rounds;
                    };
                    push(format!("tags {n}"), ti, r);
                }
            }
            if has("reconnect") {
                let interval = Duration::from_secs_f64(1.0 / rec.rate.max(0.1));
                let mut load = base(t, rec.sockets, Publish::Paced { interval });
                load.envelope = true;
                load.duration = cfg.duration.max(rec.away + Duration::from_secs(3));
                load.drops = Some(Drops {
                    sockets: rec.drops,
                    after: Duration::from_secs(1),
                    away: rec.away,
                });
                let Some(r) = run("reconnect", &load) else {
                    break 'rounds;
                };
                println!(
                    "      reconnect: {} back and recovered, {} told to resync, {} failed; {} \
                     messages replayed; longest drop-to-first-frame {:.0} ms",
                    r.res.recovered,
                    r.res.gaps,
                    r.res.reconnect_failed,
                    r.res.replayed,
                    r.res.max_back_ms
                );
                push("reconnect".into(), ti, r);
            }
        }
    }

    println!(
        "\n== summary: medians of clean rounds (runs with other processes > {NOISY_PCT}% of the \
         machine left out) =="
    );
    let s = Summary {
        all: &servers.all,
        rows: &rows,
    };
    for &n in &sizes {
        s.fanout(n, cfg.size);
    }
    if rows.contains_key("latency") {
        s.latency(latency_sockets, latency_rate);
    }
    if sizes
        .iter()
        .any(|n| rows.contains_key(&format!("tags {n}")))
    {
        s.tags(&sizes, tags, max_n);
    }
    let node_idle = idle_runs
        .iter()
        .find(|(ti, ..)| servers.all[*ti].name == "node")
        .map(|x| x.2);
    for (ti, r, fig) in &idle_runs {
        summary_idle(&servers.all[*ti], r, fig, idle_n, ping, node_idle.as_ref());
    }
    s.slow(&slow, &slow_runs);
    if rows.contains_key("reconnect") {
        s.reconnect(&rec);
    }
    println!(
        "\nreference (shared/reference): a Python websockets broadcast server delivered ~58k \
         msgs/s to 1,000 sockets at ~17µs CPU per delivery and 13-14 KiB per idle socket.\n\
         mar targets: at most half the Node server's CPU per delivery and at least 250k \
         deliveries/s, no loss; paced p50 ≤ 1ms and p99 ≤ 5ms; ≥ 20k tag publishes/s whose cost \
         does not grow with the sockets; ≤ 8 KiB and < 5% CPU per idle socket (with pings); \
         slow consumers bounded (≤ 1 MiB each, then a Close) with the others' p99 within 10%; \
         nothing lost across a 2 s reconnect."
    );
    servers.stop();
}

/// The servers under test: `mar serve` with a gateway, the Node reference.
struct Servers {
    mar: Option<Mar>,
    node: Option<NodeServer>,
    all: Vec<Target>,
}

impl Servers {
    /// Starts the `targets` (in that order), the gateways pinging every `ping` s.
    fn start(targets: &[String], ping: u64) -> Self {
        let caps = 100_000;
        let mar = targets.iter().any(|t| t == "mar").then(|| {
            // The caps per client address (the router's, and the gateways' sockets per
            // address, 1,000 by default) and the router's in all are raised so that only the
            // open-files limit bounds the sockets; the bench spreads them over several
            // addresses anyway.
            let yaml = format!(
                "max_connections: {caps}\nmax_connections_per_client: {caps}\n\
                 mws_sockets_per_address: {caps}\nmws_ping_interval: {ping}\n"
            );
            Mar::start_with(Some(&yaml), &[])
        });
        let mar_gw = mar.as_ref().map(|m| {
            let out = m.server.mar(&["services:create", "mws", "bench", "--json"]);
            assert!(out.ok(), "services:create failed: {}", out.all());
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            Gateway {
                addr: m.addr(),
                host: "localhost".into(),
                id: v["id"].as_str().unwrap().to_owned(),
                secret: v["secret"].as_str().unwrap().to_owned(),
            }
        });
        let (node_id, node_secret) = ("6e6f64652d7265666572656e", "node-reference-secret");
        let node = targets
            .iter()
            .any(|t| t == "node")
            .then(|| NodeServer::start(node_id, node_secret, ping * 1000));
        if let Some(n) = &node {
            println!(
                "node: {} with ws {}",
                mwsref::node_version().unwrap_or_default(),
                n.ws_version
            );
        }
        let mut all: Vec<Target> = Vec::new();
        for t in targets {
            match (t.as_str(), &mar, &mar_gw, &node) {
                ("mar", Some(m), Some(gw), _) => all.push(Target {
                    name: "mar",
                    gw: gw.clone(),
                    watched: Watched {
                        proxy: vec![m.pid],
                        backend: node.iter().map(NodeServer::pid).collect(),
                    },
                    pid: m.pid,
                }),
                ("node", _, _, Some(n)) => all.push(Target {
                    name: "node",
                    gw: Gateway {
                        addr: n.addr,
                        host: "localhost".into(),
                        id: node_id.into(),
                        secret: node_secret.into(),
                    },
                    watched: Watched {
                        proxy: vec![n.pid()],
                        backend: mar.iter().map(|m| m.pid).collect(),
                    },
                    pid: n.pid(),
                }),
                (other, ..) => {
                    eprintln!("unknown target {other:?}\n\n{USAGE}");
                    std::process::exit(64);
                }
            }
        }
        for t in &all {
            println!(
                "  {:<4} http://{}/v1/gateways/{}  pid {}",
                t.name, t.gw.addr, t.gw.id, t.pid
            );
        }
        Self { mar, node, all }
    }

    fn stop(self) {
        drop(self.node);
        if let Some(m) = self.mar {
            m.stop();
        }
    }
}

struct Slow {
    silent: usize,
    sockets: usize,
    rate: f64,
    secs: f64,
    size: usize,
    rcvbuf: u32,
}

struct Reconnect {
    drops: usize,
    sockets: usize,
    rate: f64,
    away: Duration,
}

/// Runs `load` against `t`: CPU between the window's marks, figures per delivery and post.
fn measure(t: &Target, load: &MwsLoad, peak: Option<&Peak>) -> Run {
    let mut snaps = Vec::new();
    let res = run_mws(load, |m| match m {
        Mark::Connected => {
            if let Some(p) = peak {
                p.start(t.pid, load);
            }
        }
        Mark::Start | Mark::End => snaps.push(t.watched.snap()),
        Mark::Drained => {
            if let Some(p) = peak {
                p.stop();
            }
        }
    });
    let cpu = CpuUse::between(&snaps[0], &snaps[1]);
    let deliveries = res.window_deliveries.max(1) as f64;
    let posts = res.window_acked.max(1) as f64;
    Run {
        rate: res.rate(),
        pub_rate: res.publish_rate(),
        cpu_delivery: cpu.proxy_s * 1e6 / deliveries,
        cpu_publish: cpu.proxy_s * 1e6 / posts,
        sys_pct: 100.0 * cpu.proxy_sys_s / cpu.proxy_s,
        gen_delivery: cpu.gen_s * 1e6 / deliveries,
        p50: res.hist.quantile(0.5),
        p99: res.hist.quantile(0.99),
        lost: res.lost(),
        dup: res.duplicated,
        failed: res.connect_failed + res.broken + res.publish_failed + res.reconnect_failed,
        other_pct: cpu.other_pct,
        noisy: cpu.other_pct > NOISY_PCT,
        cpu_pct: 100.0 * cpu.proxy_s / cpu.wall_s.max(1e-9),
        peak_kib: 0.0,
        sendq_kib: 0.0,
        recvq_kib: 0.0,
        res,
    }
}

/// VmRSS of the server and the bytes waiting in TCP queues for the silent sockets (the
/// server's send queues to them, their own receive queues: kernel memory no VmRSS shows),
/// sampled every 50 ms on a thread of its own from the sockets' opening to the end of the
/// drain: the first VmRSS and the highest of each.
#[derive(Default)]
struct Peak {
    first_rss: AtomicU64,
    max: Arc<[AtomicU64; 3]>,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Peak {
    fn start(&self, pid: u32, load: &MwsLoad) {
        let port = load.gateway.addr.port();
        let silent = load.silent_addrs.clone();
        let sample = move || {
            let peers = silent.lock().unwrap().clone();
            let (mut tx, mut rx) = (0, 0);
            for s in procfs::tcp_sockets() {
                let (local, remote) = (SocketAddr::V4(s.local), SocketAddr::V4(s.remote));
                if local.port() == port && peers.contains(&remote) {
                    tx += s.tx;
                } else if peers.contains(&local) {
                    rx += s.rx;
                }
            }
            [procfs::rss_kib(pid).unwrap_or(0), tx >> 10, rx >> 10]
        };
        let first = sample();
        self.first_rss.store(first[0], Ordering::Release);
        for (m, v) in self.max.iter().zip(first) {
            m.store(v, Ordering::Release);
        }
        let (stop, max) = (self.stop.clone(), self.max.clone());
        *self.thread.lock().unwrap() = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for (m, v) in max.iter().zip(sample()) {
                    m.fetch_max(v, Ordering::AcqRel);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.thread.lock().unwrap().take() {
            let _ = h.join();
        }
    }

    /// KiB: VmRSS growth to its highest, the highest bytes in the server's send queues to the
    /// silent sockets, and in their receive queues.
    fn figures(&self) -> [f64; 3] {
        let m = |i: usize| self.max[i].load(Ordering::Acquire);
        [
            m(0).saturating_sub(self.first_rss.load(Ordering::Acquire)) as f64,
            m(1) as f64,
            m(2) as f64,
        ]
    }
}

/// A slow-consumer run: [`measure`] with the server's peak memory growth.
fn measure_peak(t: &Target, load: &MwsLoad) -> Run {
    let peak = Peak::default();
    let mut r = measure(t, load, Some(&peak));
    [r.peak_kib, r.sendq_kib, r.recvq_kib] = peak.figures();
    r
}

/// The idle test's figures beside its [`Run`].
#[derive(Clone, Copy)]
struct Idle {
    /// VmRSS growth per socket once the sockets are open, KiB.
    kib: f64,
    /// The same at the window's end, after every socket was pinged about once (buffers a
    /// first read allocates show here).
    kib_after: f64,
    /// Server CPU per ping (and its pong) over the window, µs.
    per_ping: f64,
}

/// The idle test: memory per socket (VmRSS after the sockets opened, and again after the
/// window with its pings, against before, after a warm-up of 100 sockets so lazily made state
/// is not counted per socket) and CPU over the window, with the server's pings; then one
/// message to all checks none was lost.
fn idle(t: &Target, load: &MwsLoad, ping: u64) -> (Run, Idle) {
    let warm = MwsLoad {
        sockets: 100,
        duration: Duration::from_millis(200),
        ..load.clone()
    };
    let _ = run_mws(&warm, |_| {});
    std::thread::sleep(Duration::from_secs(1));
    let before = procfs::rss_kib(t.pid).unwrap_or(0);
    let (mut after, mut end) = (0, 0);
    let mut snaps = Vec::new();
    let res = run_mws(load, |m| match m {
        Mark::Connected => {
            // Let the server finish its side of the last handshakes.
            std::thread::sleep(Duration::from_secs(2));
            after = procfs::rss_kib(t.pid).unwrap_or(0);
        }
        Mark::Start => snaps.push(t.watched.snap()),
        Mark::End => {
            snaps.push(t.watched.snap());
            end = procfs::rss_kib(t.pid).unwrap_or(0);
        }
        Mark::Drained => {}
    });
    let cpu = CpuUse::between(&snaps[0], &snaps[1]);
    let per = |kib: u64| kib.saturating_sub(before) as f64 / res.connected.max(1) as f64;
    let pings = res.connected as f64 * cpu.wall_s / ping.max(1) as f64;
    let fig = Idle {
        kib: per(after),
        kib_after: per(end),
        per_ping: cpu.proxy_s * 1e6 / pings.max(1.0),
    };
    let r = Run {
        lost: res.lost(),
        dup: res.duplicated,
        failed: res.connect_failed + res.broken + res.publish_failed,
        other_pct: cpu.other_pct,
        noisy: cpu.other_pct > NOISY_PCT,
        cpu_pct: 100.0 * cpu.proxy_s / cpu.wall_s.max(1e-9),
        sys_pct: 100.0 * cpu.proxy_sys_s / cpu.proxy_s,
        res,
        ..Default::default()
    };
    println!(
        "      VmRSS {before} → {after} KiB open → {end} KiB after the window; {} sockets opened \
         in {:.1} s",
        r.res.connected, r.res.connect_secs
    );
    (r, fig)
}

fn errors(r: &Run) -> String {
    let mut s = format!("lost {} dup {} failed {}", r.lost, r.dup, r.failed);
    if !r.res.closes.is_empty() {
        s += &format!(" closes {:?}", r.res.closes);
    }
    if let Some(e) = &r.res.first_error {
        s += &format!(" (first error: {e})");
    }
    s
}

fn print_run(label: &str, t: &Target, r: &Run) {
    println!(
        "  {label:<12} {:<4} {:>7} deliveries/s {:>7} posts/s  {:>7}/delivery (sys {:.0}%) \
         {:>7}/post  p50 {:>8} p99 {:>8}  loadgen {}/delivery  other {:4.1}%{}  {}",
        t.name,
        rate(r.rate),
        rate(r.pub_rate),
        us(r.cpu_delivery),
        r.sys_pct,
        us(r.cpu_publish),
        ms(r.p50),
        ms(r.p99),
        us(r.gen_delivery),
        r.other_pct,
        if r.noisy { " NOISY" } else { "" },
        errors(r)
    );
}

fn print_slow(label: &str, t: &Target, r: &Run, silent: usize) {
    println!(
        "  {label:<12} {:<4} {:>7} deliveries/s  {:>7}/delivery  readers' p50 {:>8} p99 {:>8}  \
         peak VmRSS +{:.0} KiB, silent sockets' send queues {:.0} KiB (their receive queues {:.0} KiB)  \
         silent {silent}: {} frames read after the run, then {:?}  other {:4.1}%{}  {}",
        t.name,
        rate(r.rate),
        us(r.cpu_delivery),
        ms(r.p50),
        ms(r.p99),
        r.peak_kib,
        r.sendq_kib,
        r.recvq_kib,
        r.res.silent_frames,
        r.res.silent_closes,
        r.other_pct,
        if r.noisy { " NOISY" } else { "" },
        errors(r)
    );
}

fn print_idle(t: &Target, r: &Run, f: &Idle, n: usize) {
    println!(
        "  idle {:<4} {} of {n} sockets  {:.1} KiB/socket open, {:.1} after the pings  CPU {:.2}% of \
         a core (sys {:.0}%), {:.0}µs per ping  other {:4.1}%{}  {}",
        t.name,
        r.res.connected,
        f.kib,
        f.kib_after,
        r.cpu_pct,
        r.sys_pct,
        f.per_ping,
        r.other_pct,
        if r.noisy { " NOISY" } else { "" },
        errors(r)
    );
}

/// MWS's default ping interval (s), to which the idle CPU is also scaled.
const DEFAULT_PING: f64 = 45.0;

fn summary_idle(t: &Target, r: &Run, f: &Idle, n: usize, ping: u64, node: Option<&Idle>) {
    // Idle CPU is the pings' (and pongs'): scaled to the default interval it is this share.
    let at_default = r.cpu_pct * ping as f64 / DEFAULT_PING;
    println!(
        "idle, {} of {n} sockets held, pings every {ping} s   {}: {:.1} KiB/socket open, {:.1} \
         after a ping each, CPU {:.2}% of a core ({:.0}µs per ping; {at_default:.2}% at the \
         default {DEFAULT_PING:.0} s), lost {}{}",
        r.res.connected,
        t.name,
        f.kib,
        f.kib_after,
        r.cpu_pct,
        f.per_ping,
        r.lost + r.failed,
        if r.noisy { " (noisy)" } else { "" }
    );
    if t.name == "mar" {
        let worst = f.kib.max(f.kib_after);
        println!(
            "    mar vs targets: {worst:.1} KiB/socket (≤ 8 KiB) {} ({}x node's), CPU {:.2}% with \
             pings every {ping} s (< 5%) {}, {at_default:.2}% at the default {DEFAULT_PING:.0} s {}, \
             {} sockets (≥ 9,000) {}, lost {} {}",
            verdict(worst <= 8.0),
            ratio(worst / node.map_or(f64::NAN, |n| n.kib.max(n.kib_after))),
            r.cpu_pct,
            verdict(r.cpu_pct < 5.0),
            verdict(at_default < 5.0),
            r.res.connected,
            verdict(r.res.connected >= 9000),
            r.lost + r.failed,
            verdict(r.lost + r.failed == 0)
        );
    }
}

struct Summary<'a> {
    all: &'a [Target],
    rows: &'a BTreeMap<String, Vec<Vec<Run>>>,
}

/// Medians of one target's clean runs of a row.
struct Med {
    rate: f64,
    pub_rate: f64,
    cpu_delivery: f64,
    cpu_publish: f64,
    p50: f64,
    p99: f64,
    /// Lost, duplicated and failed, summed over every run (they count whatever the noise).
    bad: u64,
    noisy: &'static str,
    runs: Vec<Run>,
}

impl Summary<'_> {
    fn med(&self, key: &str, name: &str) -> Option<Med> {
        let ti = self.all.iter().position(|t| t.name == name)?;
        let runs = self.rows.get(key)?.get(ti)?;
        if runs.is_empty() {
            return None;
        }
        let (rs, all_noisy) = report::clean(runs, |r| r.noisy);
        let m = |f: fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
        Some(Med {
            rate: m(|r| r.rate),
            pub_rate: m(|r| r.pub_rate),
            cpu_delivery: m(|r| r.cpu_delivery),
            cpu_publish: m(|r| r.cpu_publish),
            p50: m(|r| r.p50),
            p99: m(|r| r.p99),
            bad: runs.iter().map(|r| r.lost + r.dup + r.failed).sum(),
            noisy: if all_noisy { " (all runs noisy)" } else { "" },
            runs: runs.clone(),
        })
    }

    fn fanout(&self, n: usize, size: usize) {
        let key = format!("fanout {n}");
        self.plain(&key, &format!("fan-out to all, {n} sockets, {size} B"));
        let (Some(mar), node) = (self.med(&key, "mar"), self.med(&key, "node")) else {
            return;
        };
        let node_cpu = node.as_ref().map_or(f64::NAN, |m| m.cpu_delivery);
        let r = mar.cpu_delivery / node_cpu;
        println!(
            "    mar vs targets: {} deliveries/s (≥ 250k) {} ({}x node's), {}/delivery = {}x \
             node's (≤ 0.50x) {}, lost {} {}",
            rate(mar.rate),
            verdict(mar.rate >= 250_000.0),
            ratio(mar.rate / node.as_ref().map_or(f64::NAN, |m| m.rate)),
            us(mar.cpu_delivery),
            ratio(r),
            verdict(r <= 0.5),
            mar.bad,
            verdict(mar.bad == 0)
        );
    }

    /// One line with every target's medians.
    fn plain(&self, key: &str, label: &str) {
        let mut line = format!("{label}  ");
        for (i, t) in self.all.iter().enumerate() {
            let Some(m) = self.med(key, t.name) else {
                continue;
            };
            line += &format!(
                "{}{} {} deliveries/s {}/delivery p50 {} p99 {} lost {}{}",
                if i == 0 { "" } else { " | " },
                t.name,
                rate(m.rate),
                us(m.cpu_delivery),
                ms(m.p50),
                ms(m.p99),
                m.bad,
                m.noisy
            );
        }
        println!("{line}");
    }

    fn latency(&self, n: usize, per_s: f64) {
        self.plain(
            "latency",
            &format!("latency, {n} sockets paced at {} deliveries/s", rate(per_s)),
        );
        let (Some(mar), Some(node)) = (self.med("latency", "mar"), self.med("latency", "node"))
        else {
            return;
        };
        println!(
            "    mar vs targets: p50 {} (≤ 1ms) {} ({}x node's {}), p99 {} (≤ 5ms) {} ({}x node's \
             {}), lost {} {}",
            ms(mar.p50),
            verdict(mar.p50 <= 1000.0),
            ratio(mar.p50 / node.p50),
            ms(node.p50),
            ms(mar.p99),
            verdict(mar.p99 <= 5000.0),
            ratio(mar.p99 / node.p99),
            ms(node.p99),
            mar.bad,
            verdict(mar.bad == 0)
        );
    }

    fn tags(&self, sizes: &[usize], tags: usize, max_n: usize) {
        for &n in sizes {
            let key = format!("tags {n}");
            let mut line = format!(
                "targeted, {n} sockets, {} tags of {} sockets  ",
                (tags * n / max_n).max(1),
                n / (tags * n / max_n).max(1)
            );
            for (i, t) in self.all.iter().enumerate() {
                if let Some(m) = self.med(&key, t.name) {
                    line += &format!(
                        "{}{} {} publishes/s {}/publish {} deliveries/s p99 {} lost {}{}",
                        if i == 0 { "" } else { " | " },
                        t.name,
                        rate(m.pub_rate),
                        us(m.cpu_publish),
                        rate(m.rate),
                        ms(m.p99),
                        m.bad,
                        m.noisy
                    );
                }
            }
            println!("{line}");
        }
        let (small, big) = (
            sizes.iter().copied().min().unwrap_or(0),
            sizes.iter().copied().max().unwrap_or(0),
        );
        let growth = |name: &str| {
            let b = self.med(&format!("tags {big}"), name)?;
            let s = self.med(&format!("tags {small}"), name)?;
            Some((b.cpu_publish / s.cpu_publish, b))
        };
        let Some((mar_growth, mar)) = growth("mar") else {
            return;
        };
        let node = growth("node");
        let node_pub = node.as_ref().map_or(f64::NAN, |x| x.1.cpu_publish);
        println!(
            "    mar vs targets: {} tag publishes/s at {big} sockets (≥ 20k) {} ({}x node's), \
             {}/publish ({}x node's); CPU per publish at {big} vs {small} sockets {}x (≤ 1.20x: \
             does not grow) {} (node {}x), lost {} {}",
            rate(mar.pub_rate),
            verdict(mar.pub_rate >= 20_000.0),
            ratio(mar.pub_rate / node.as_ref().map_or(f64::NAN, |x| x.1.pub_rate)),
            us(mar.cpu_publish),
            ratio(mar.cpu_publish / node_pub),
            ratio(mar_growth),
            verdict(mar_growth <= 1.2),
            ratio(node.map_or(f64::NAN, |x| x.0)),
            mar.bad,
            verdict(mar.bad == 0)
        );
    }

    /// Each target's run with the silent sockets, then the run without them.
    fn slow(&self, slow: &Slow, runs: &[Vec<Run>]) {
        for (t, r) in self.all.iter().zip(runs) {
            let [base, s] = &r[..] else {
                continue;
            };
            // The server's VmRSS beyond the run without them, and its TCP send queues to the
            // silent sockets (kernel memory it holds for them); their receive queues apart.
            let n = slow.silent.max(1) as f64;
            let rss = (s.peak_kib - base.peak_kib).max(0.0) / n;
            let sendq = s.sendq_kib / n;
            let recvq = s.recvq_kib / n;
            // How the silent sockets' backlogs ended: a Close frame (its code), or the
            // connection's end (1006), or not at all (still open). A gateway that cuts a
            // client whose buffers are full cannot get its Close through them: the end of
            // the connection after the backlog is what such a client sees.
            let closes = &s.res.silent_closes;
            let wanted = slow.silent as u64;
            let closed: u64 = closes.values().sum();
            let readers_bad = s.lost + s.dup + s.res.broken;
            let p99_ratio = s.p99 / base.p99;
            println!(
                "slow consumers, {} of {} never read, {} msgs/s of {} B to all  {}: readers' p99 {} \
                 against {} without them ({}x); per slow socket +{rss:.0} KiB VmRSS and +{sendq:.0} \
                 KiB in the server's send queue (+{recvq:.0} KiB in the client's receive queue); \
                 their backlogs ended with {closes:?}; readers lost or cut {readers_bad}{}",
                slow.silent,
                slow.sockets,
                slow.rate,
                slow.size,
                t.name,
                ms(s.p99),
                ms(base.p99),
                ratio(p99_ratio),
                if s.noisy || base.noisy {
                    " (noisy)"
                } else {
                    ""
                }
            );
            if t.name == "mar" {
                println!(
                    "    mar vs targets: {:.0} KiB per slow socket, VmRSS and send queue (≤ 1024) \
                     {}, {closed} of {wanted} let go by the server {}, readers' p99 {}x the \
                     run without them (≤ 1.10x) {}, readers lost or cut {readers_bad} {}",
                    rss + sendq,
                    verdict(rss + sendq <= 1024.0),
                    verdict(closed == wanted),
                    ratio(p99_ratio),
                    verdict(p99_ratio <= 1.1),
                    verdict(readers_bad == 0)
                );
            }
        }
    }

    fn reconnect(&self, rec: &Reconnect) {
        for t in self.all {
            let Some(m) = self.med("reconnect", t.name) else {
                continue;
            };
            let recovered: u64 = m.runs.iter().map(|r| r.res.recovered).sum();
            let wanted = (rec.drops * m.runs.len()) as u64;
            println!(
                "reconnect, {} of {} sockets away {:.0} s, {} msgs/s to all, envelopes  {}: \
                 recovered {recovered} of {wanted}, lost {}, {} deliveries/s {}/delivery p99 {}{}",
                rec.drops,
                rec.sockets,
                rec.away.as_secs_f64(),
                rec.rate,
                t.name,
                m.bad,
                rate(m.rate),
                us(m.cpu_delivery),
                ms(m.p99),
                m.noisy
            );
            if t.name == "mar" {
                println!(
                    "    mar vs targets: lost {} {}, recovered {recovered} of {wanted} {}",
                    m.bad,
                    verdict(m.bad == 0),
                    verdict(recovered == wanted)
                );
            }
        }
    }
}
