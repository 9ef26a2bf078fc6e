//! Benchmark: time from `git push` of the Python example to the first 200 through the router,
//! with a warm build cache, broken into the phases the push output reports (receive, build,
//! slug, boot, switch). Heroku takes 30-60 s for a comparable push; the target is under 5 s.
//!
//! Run: `cargo run -p mar-bench --bin push-to-serve [ROUNDS]` after `cargo build --workspace`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use mar_tests::{MarServer, repo_root};

struct Round {
    total: f64,
    push: f64,
    phases: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let mar = MarServer::start();
    mar.create_app("bench");
    let repo = mar.repo_from(&repo_root().join("examples/python-hello"));

    let t = Instant::now();
    let cold = repo.push(&mar.git_url("bench"), "main");
    assert!(cold.ok(), "{}", cold.all());
    println!(
        "cold push (empty build cache): {:.2}s",
        t.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    for i in 0..rounds {
        repo.write("ROUND", &format!("{i}\n"));
        repo.commit(&format!("round {i}"));
        let t0 = Instant::now();
        let push = repo.push(&mar.git_url("bench"), "main");
        let push_s = t0.elapsed().as_secs_f64();
        assert!(push.ok(), "{}", push.all());
        let r = mar.get("bench.localhost", "/").await;
        assert_eq!(r.status, 200);
        let total = t0.elapsed().as_secs_f64();
        let phases = push
            .stderr
            .lines()
            .find_map(|l| l.split("Timings: ").nth(1))
            .unwrap_or("?")
            .trim()
            .to_owned();
        println!("warm round {i}: push→200 {total:.2}s (push {push_s:.2}s; {phases})");
        results.push(Round {
            total,
            push: push_s,
            phases,
        });
    }
    let med = median(results.iter().map(|r| r.total).collect());
    let med_push = median(results.iter().map(|r| r.push).collect());
    let best = results
        .iter()
        .min_by(|a, b| a.total.total_cmp(&b.total))
        .unwrap();
    println!();
    println!(
        "push-to-serve, warm cache, {rounds} rounds: median {med:.2}s (git push itself {med_push:.2}s)"
    );
    println!("  fastest round phases: {}", best.phases);
    println!(
        "  reference: Heroku 30-60 s for a comparable push (not measurable here); target < 5 s"
    );
    println!("  ratio to target: {:.2}", med / 5.0);
    let status = mar.stop();
    assert!(status.success());
}
