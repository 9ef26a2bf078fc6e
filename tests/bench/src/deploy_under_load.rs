//! Benchmark: deploys under load. A steady 200 requests/s go to an app while it is deployed
//! five times and scaled from 1 to 3 web instances and back, with slow POSTs beside them (300
//! ms each, four always in flight: a request the router never sends twice, so a drain that
//! cuts one shows); the benchmark counts failed requests and POSTs not handled exactly once
//! (target: zero) and reports latency overall and during the switches. It also times
//! `mar ps:restart` until the app serves from the new instance, and a crash (SIGKILL of the web
//! process) until the app serves again.
//!
//! Run: `cargo run -p mar-bench --bin deploy-under-load` after `cargo build --workspace`
//! (set `MAR_BIN` to a release build of `mar` for release figures).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mar_tests::{Load, MarServer, repo_root, try_get};

#[derive(Default)]
struct Samples {
    /// (start offset, latency, ok)
    all: Vec<(Duration, Duration, bool)>,
    errors: Vec<String>,
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let mar = MarServer::start();
    mar.create_app("steady");
    assert!(
        mar.mar(&["config:set", "MAR_WAIT_TO_RETIRE=10", "-a", "steady"])
            .ok()
    );
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/lifecycle"));
    assert!(repo.push(&mar.git_url("steady"), "main").ok());

    let samples = Arc::new(Mutex::new(Samples::default()));
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (samples, stop, addr) = (samples.clone(), stop.clone(), mar.addr);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let samples = samples.clone();
                inflight.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let res = try_get(addr, "steady.localhost", "/").await;
                    let took = start.elapsed();
                    let mut s = samples.lock().unwrap();
                    let ok = matches!(res, Ok((200, _)));
                    s.all.push((start - t0, took, ok));
                    if !ok {
                        s.errors.push(format!("{res:?}"));
                    }
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
        })
    };

    let posts = Load::start_posts(
        mar.addr,
        "steady.localhost",
        "/slow-post?ms=300",
        Duration::from_millis(10),
        4,
    );
    let mut switches: Vec<(String, Duration, Duration)> = Vec::new();
    let mut op = |name: &str, f: &mut dyn FnMut()| {
        let start = t0.elapsed();
        f();
        switches.push((name.to_owned(), start, t0.elapsed()));
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        op(&format!("deploy {}", i + 1), &mut || {
            repo.write("VERSION", &format!("{i}\n"));
            repo.commit(&format!("v{i}"));
            assert!(repo.push(&mar.git_url("steady"), "main").ok());
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    op("scale web=3", &mut || {
        assert!(mar.mar(&["ps:scale", "web=3", "-a", "steady"]).ok())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    op("scale web=1", &mut || {
        assert!(mar.mar(&["ps:scale", "web=1", "-a", "steady"]).ok())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    loader.await.unwrap();
    let (posted, post_failures) = posts.finish().await;
    // Each POST's id is in the app's log once per time it was handled.
    let logs = mar.mar(&["logs", "-a", "steady", "-n", "100000"]).stdout;
    let mut handled = std::collections::HashMap::new();
    for l in logs.lines() {
        if let Some(id) = l.split("slow-post ").nth(1) {
            *handled.entry(id.trim().to_owned()).or_insert(0u32) += 1;
        }
    }
    let twice = handled.values().filter(|n| **n > 1).count();
    let never = posted.saturating_sub(handled.len());

    let s = std::mem::take(&mut *samples.lock().unwrap());
    let failed = s.all.iter().filter(|x| !x.2).count();
    let all: Vec<Duration> = s.all.iter().map(|x| x.1).collect();
    let during: Vec<Duration> = s
        .all
        .iter()
        .filter(|(at, _, _)| {
            switches
                .iter()
                .any(|(_, a, b)| *at >= *a && *at <= *b + Duration::from_millis(500))
        })
        .map(|x| x.1)
        .collect();
    println!(
        "deploys under load: {} requests at {rate}/s, {failed} failed (target 0)",
        s.all.len()
    );
    println!(
        "  latency overall p50 {} p99 {} max {}; during switches ({} requests) p99 {} max {}",
        ms(pct(all.clone(), 0.5)),
        ms(pct(all.clone(), 0.99)),
        ms(pct(all, 1.0)),
        during.len(),
        ms(pct(during.clone(), 0.99)),
        ms(pct(during, 1.0))
    );
    for (name, a, b) in &switches {
        println!("  {name}: {:.2}s", (*b - *a).as_secs_f64());
    }
    for e in s.errors.iter().take(5) {
        println!("  failure: {e}");
    }
    println!(
        "  slow POSTs beside them: {posted} sent, {} failed, {twice} handled twice, {never} never handled (target 0, 0, 0)",
        post_failures.len()
    );
    for e in post_failures.iter().take(5) {
        println!("  POST failure: {e}");
    }

    // ps:restart until the new instance serves (the command returns after the switch).
    let t = Instant::now();
    assert!(mar.mar(&["ps:restart", "web.1", "-a", "steady"]).ok());
    let restart = t.elapsed();
    assert!(matches!(
        try_get(mar.addr, "steady.localhost", "/").await,
        Ok((200, _))
    ));
    println!(
        "ps:restart web.1 → serving from the new instance: {}",
        ms(restart)
    );

    // Crash (SIGKILL to the web process group) until a 200 again.
    let ps: serde_json::Value =
        serde_json::from_str(&mar.mar(&["ps", "-a", "steady", "--json"]).stdout).unwrap();
    let pid = ps[0]["pid"].as_u64().unwrap();
    let t = Instant::now();
    std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    // Wait until the killed process is really gone (or a zombie), then for the first 200.
    let dead = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    while !dead(pid) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        if let Ok((200, _)) = try_get(mar.addr, "steady.localhost", "/").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("crash (SIGKILL) → serving again: {}", ms(t.elapsed()));
    println!(
        "reference: Heroku preboot/Dokku checks promise zero failed requests; targets: 0 failed, p99 during switches reported"
    );
    assert!(mar.stop().success());
}
