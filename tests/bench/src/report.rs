//! Rounds and reporting: medians over the clean runs (runs where other processes used more
//! than 5% of the machine are marked noisy and left out when clean ones exist), number
//! formats, and the wait for a quiet machine before each run.

use std::time::Duration;

use crate::procfs;

/// Other processes' share of capacity above which a run is noisy, in %.
pub const NOISY_PCT: f64 = 5.0;

/// The median (upper middle for even counts); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The values of the clean runs, or of all runs (with `true`) if every run was noisy.
pub fn clean<T>(runs: &[T], noisy: impl Fn(&T) -> bool) -> (Vec<&T>, bool) {
    let c: Vec<&T> = runs.iter().filter(|r| !noisy(r)).collect();
    if c.is_empty() {
        (runs.iter().collect(), !runs.is_empty())
    } else {
        (c, false)
    }
}

/// `71.4k`, `980`.
pub fn rate(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.2}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// A latency in µs as `2.17ms` or `870µs`.
pub fn ms(us: f64) -> String {
    if us.is_nan() {
        "-".to_owned()
    } else if us.abs() >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}µs")
    }
}

/// A ratio with two decimals, `-` when unknown.
pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".to_owned()
    }
}

/// CPU µs per unit, one decimal.
pub fn us(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{x:.1}µs")
    }
}

/// Settings of the quiet-machine wait.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// Skip the wait.
    pub off: bool,
    /// Give up (and run anyway) after this long.
    pub timeout: Duration,
}

impl Quiet {
    /// Waits as `quiet.sh` does (90% idle for 3 s); says so when it gave up.
    pub fn wait(&self) {
        if self.off {
            return;
        }
        if let Err(idle) = procfs::wait_quiet(90, 3, self.timeout) {
            println!(
                "    (machine not quiet after {:.0}s, idle {idle}%: running anyway; the run will \
                 be marked noisy if others use more than {NOISY_PCT}%)",
                self.timeout.as_secs_f64()
            );
        }
    }
}

/// Warns when this bench is a debug build: its load generator then costs about twice the CPU
/// per request of a release build, CPU the proxies under test do not get.
pub fn warn_debug_build() {
    if cfg!(debug_assertions) {
        println!(
            "note: this is a debug build of the bench; its load generator takes CPU from the \
             proxies. Use `cargo run --release -p mar-bench --bin ...` for figures."
        );
    }
}

/// `ok`/`MISS` against a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISS" }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the first Ctrl-C into a request to stop after the current run (so the nginx and
/// `mar serve` guards get dropped); a second one exits at once.
pub fn catch_ctrl_c() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping after this run (Ctrl-C again to abort)");
                STOP.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
}

/// Whether Ctrl-C asked to stop.
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}
