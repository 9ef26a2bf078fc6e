//! `/proc` accounting: CPU time (utime+stime, all threads) and RSS of processes, the
//! machine-wide CPU counters of `/proc/stat`, process trees, the file-descriptor limit, and
//! the quiet-machine wait of `shared/reference/quiet.sh` ported to Rust.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// utime+stime of `pid` in clock ticks (all threads, dead ones included), or `None` if gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    cpu_split(pid).map(|(u, s)| u + s)
}

/// (utime, stime) of `pid` in clock ticks.
pub fn cpu_split(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// The parent pid of `pid`.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// Every pid on the machine.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| ppid(p) == Some(pid))
        .collect()
}

/// Every descendant of `pid` (not `pid` itself).
pub fn descendants(pid: u32) -> Vec<u32> {
    let pids: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &pids {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// Sum of [`cpu_ticks`] over `pids` (gone processes count 0).
pub fn cpu_ticks_sum(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| cpu_ticks(p)).sum()
}

/// Machine-wide CPU counters from the first line of `/proc/stat`, in ticks (all CPUs).
///
/// Measured here: the time the kernel spends in softirq for loopback traffic also shows up in
/// the utime+stime of the process that caused it, so `busy` includes irq and softirq.
#[derive(Debug, Clone, Copy, Default)]
pub struct SysCpu {
    /// user + nice + system + irq + softirq: time spent running something.
    pub busy: u64,
    /// idle (iowait counts as neither idle nor busy, as in quiet.sh)
    pub idle: u64,
    /// irq + softirq (part of `busy`), for information.
    pub irq: u64,
    /// steal: time the hypervisor gave to someone else.
    pub steal: u64,
    /// Everything.
    pub total: u64,
}

/// Reads `/proc/stat`.
pub fn sys_cpu() -> SysCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    let (user, nice, system, idle, iowait, irq, softirq, steal) =
        (g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7));
    SysCpu {
        busy: user + nice + system + irq + softirq,
        idle,
        irq: irq + softirq,
        steal,
        total: user + nice + system + idle + iowait + irq + softirq + steal,
    }
}

/// Number of CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Waits until the machine has been at least `idle_pct` % idle for `secs` consecutive seconds
/// (as `quiet.sh` does), for at most `timeout`. Returns the wait, or `Err` with the last
/// idle percentage when the machine did not get quiet in time.
pub fn wait_quiet(idle_pct: u64, secs: u32, timeout: Duration) -> Result<Duration, u64> {
    let start = Instant::now();
    let mut prev = sys_cpu();
    let mut ok = 0;
    let mut idle = 0;
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_secs(1));
        let now = sys_cpu();
        let tot = now.total.saturating_sub(prev.total).max(1);
        idle = 100 * now.idle.saturating_sub(prev.idle) / tot;
        prev = now;
        if idle >= idle_pct {
            ok += 1;
        } else {
            ok = 0;
        }
        if ok >= secs {
            return Ok(start.elapsed());
        }
    }
    Err(idle)
}

/// Raises the open-files limit (to 65,536 when allowed, else the soft limit to the hard one);
/// returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    // Raising the hard limit needs root (CAP_SYS_RESOURCE): 10,000 proxied WebSockets take
    // 20,000 descriptors in the proxy alone.
    const WANT: u64 = 65_536;
    if hard < WANT && setrlimit(Resource::RLIMIT_NOFILE, WANT, WANT).is_ok() {
        return WANT;
    }
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A snapshot of the CPU counters the benchmarks compare before and after a run.
#[derive(Debug, Clone, Default)]
pub struct Snap {
    /// Machine-wide counters.
    pub sys: SysCpu,
    /// This process (the load generator).
    pub gen_ticks: u64,
    /// The proxy under test.
    pub proxy_ticks: u64,
    /// The part of `proxy_ticks` spent in the kernel (stime).
    pub proxy_sys_ticks: u64,
    /// The backend(s).
    pub backend_ticks: u64,
    /// When.
    pub at: Option<Instant>,
}

/// The processes of one setup, for [`Snap`]s.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// The proxy's processes whose CPU is the figure (nginx's worker, `mar serve`).
    pub proxy: Vec<u32>,
    /// The backend's processes (counted as the test's own, not as noise).
    pub backend: Vec<u32>,
}

impl Watched {
    /// Takes a snapshot now.
    pub fn snap(&self) -> Snap {
        Snap {
            sys: sys_cpu(),
            gen_ticks: cpu_ticks(std::process::id()).unwrap_or(0),
            proxy_ticks: cpu_ticks_sum(&self.proxy),
            proxy_sys_ticks: self
                .proxy
                .iter()
                .filter_map(|&p| cpu_split(p))
                .map(|c| c.1)
                .sum(),
            backend_ticks: cpu_ticks_sum(&self.backend),
            at: Some(Instant::now()),
        }
    }
}

/// CPU used between two [`Snap`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// Seconds of CPU of the proxy.
    pub proxy_s: f64,
    /// The part of `proxy_s` in the kernel.
    pub proxy_sys_s: f64,
    /// Of this process (the load generator).
    pub gen_s: f64,
    /// Of the backend.
    pub backend_s: f64,
    /// Share of the machine's capacity (all CPUs) used by other processes, in %.
    pub other_pct: f64,
    /// Share of capacity spent in irq/softirq (loopback networking, also counted in the
    /// processes' own times), in %.
    pub irq_pct: f64,
    /// Wall time between the snapshots.
    pub wall_s: f64,
}

impl CpuUse {
    /// The difference `after - before`.
    pub fn between(before: &Snap, after: &Snap) -> Self {
        let t = |a: u64, b: u64| a.saturating_sub(b) as f64 / TICKS_PER_SEC;
        let proxy_s = t(after.proxy_ticks, before.proxy_ticks);
        let proxy_sys_s = t(after.proxy_sys_ticks, before.proxy_sys_ticks);
        let gen_s = t(after.gen_ticks, before.gen_ticks);
        let backend_s = t(after.backend_ticks, before.backend_ticks);
        let total = after.sys.total.saturating_sub(before.sys.total).max(1) as f64;
        let busy = (after.sys.busy + after.sys.steal)
            .saturating_sub(before.sys.busy + before.sys.steal) as f64;
        let ours = (proxy_s + gen_s + backend_s) * TICKS_PER_SEC;
        let irq = after.sys.irq.saturating_sub(before.sys.irq) as f64;
        let wall_s = match (before.at, after.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        Self {
            proxy_s,
            proxy_sys_s,
            gen_s,
            backend_s,
            other_pct: (100.0 * (busy - ours) / total).max(0.0),
            irq_pct: 100.0 * irq / total,
            wall_s,
        }
    }
}

/// One IPv4 socket of `/proc/net/tcp`: local and remote address, send and receive queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpQueues {
    /// Local address.
    pub local: std::net::SocketAddrV4,
    /// Remote address.
    pub remote: std::net::SocketAddrV4,
    /// Bytes not yet acknowledged by the peer (sent or waiting to be).
    pub tx: u64,
    /// Bytes received and not yet read.
    pub rx: u64,
}

/// This network namespace's IPv4 TCP sockets with their queues (kernel memory no process's
/// VmRSS shows, such as what waits for a server's slow clients).
pub fn tcp_sockets() -> Vec<TcpQueues> {
    fn addr(hex: &str) -> Option<std::net::SocketAddrV4> {
        let (ip, port) = hex.split_once(':')?;
        // The address is printed as the in-memory (network order) u32 read as a host integer.
        let ip = u32::from_str_radix(ip, 16).ok()?.swap_bytes();
        Some(std::net::SocketAddrV4::new(
            ip.into(),
            u16::from_str_radix(port, 16).ok()?,
        ))
    }
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(TcpQueues {
                local: addr(f.get(1)?)?,
                remote: addr(f.get(2)?)?,
                tx: u64::from_str_radix(tx, 16).ok()?,
                rx: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}
