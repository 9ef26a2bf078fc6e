//! Control groups: one per process instance, under a root group per `mar serve` data
//! directory, holding the memory and process-count limits and every process the instance
//! forks. Processes cannot leave their group, which is what makes two things reliable: reading
//! an instance's memory, and finding every leftover process after `mar serve` was SIGKILLed.
//!
//! cgroup v1 (separate `memory`, `pids` and `cpu` hierarchies, as on this project's machines)
//! and v2 (the unified hierarchy) are both handled; where neither is writable, `mar serve` (as
//! root) does not start. The CPU controller is used where it is there;
//! its absence is said once too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-instance limits. `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory, in bytes.
    pub memory_bytes: Option<u64>,
    /// Number of processes and threads.
    pub pids: Option<u64>,
    /// Open files (RLIMIT_NOFILE).
    pub nofile: Option<u64>,
    /// CPU time, in thousandths of a core (a quota per 100 ms period).
    pub cpu_millis: Option<u64>,
}

/// The CFS period quotas are counted in, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// The CFS quota per [`CPU_PERIOD_US`], in microseconds.
    fn cpu_quota_us(&self) -> Option<u64> {
        self.cpu_millis
            .map(|m| (m * CPU_PERIOD_US / 1000).max(1000))
    }
}

#[derive(Debug, Clone)]
enum Layout {
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        /// The `cpu` hierarchy's group, where it is mounted and writable.
        cpu: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

/// The root groups of one `mar serve`.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Option<Layout>,
}

/// The groups of one instance.
#[derive(Debug, Clone)]
pub struct InstanceGroup {
    /// `cgroup.procs` files to write the new process's pid into.
    pub(crate) procs: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    v2: bool,
    memory_dir: PathBuf,
    /// v1: times the peak usage was seen at the limit (see [`InstanceGroup::limit_hits`]).
    peaks: Arc<AtomicU64>,
}

fn writable_dir(p: &Path) -> bool {
    std::fs::create_dir_all(p).is_ok() && p.join("cgroup.procs").exists()
}

impl Cgroups {
    /// Finds (creating) the root groups named `name` under `/sys/fs/cgroup`.
    pub fn detect(name: &str) -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"), name)
    }

    fn detect_at(base: &Path, name: &str) -> Self {
        let v1_memory = base.join("memory");
        let v1_pids = base.join("pids");
        let layout = if v1_memory.join("cgroup.procs").exists()
            && v1_pids.join("cgroup.procs").exists()
        {
            let (memory, pids) = (v1_memory.join(name), v1_pids.join(name));
            let cpu = Some(base.join("cpu").join(name)).filter(|c| writable_dir(c));
            if cpu.is_none() {
                eprintln!("mar: no writable cpu cgroup: app CPU limits are not enforced");
            }
            (writable_dir(&memory) && writable_dir(&pids)).then_some(Layout::V1 {
                memory,
                pids,
                cpu,
            })
        } else if base.join("cgroup.controllers").exists() {
            let root = base.join(name);
            let ok = writable_dir(&root)
                && std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids").is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids").is_ok();
            // The cpu controller is optional: without it, memory and process limits still hold.
            let cpu = std::fs::write(base.join("cgroup.subtree_control"), "+cpu").is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+cpu").is_ok();
            if ok && !cpu {
                eprintln!(
                    "mar: the cgroup cpu controller is not available: app CPU limits are not enforced"
                );
            }
            ok.then_some(Layout::V2 { root })
        } else {
            None
        };
        if layout.is_none() {
            eprintln!("mar: no writable cgroup hierarchy under /sys/fs/cgroup");
        }
        Self { layout }
    }

    /// Whether limits can be enforced.
    pub fn available(&self) -> bool {
        self.layout.is_some()
    }

    /// Kills every process left in this server's groups (from a previous run that was killed
    /// without stopping its apps) and removes the groups. Returns how many processes it killed.
    pub fn sweep(&self) -> usize {
        let roots: Vec<PathBuf> = match &self.layout {
            Some(Layout::V1 { memory, pids, cpu }) => [memory.clone(), pids.clone()]
                .into_iter()
                .chain(cpu.clone())
                .collect(),
            Some(Layout::V2 { root }) => vec![root.clone()],
            None => return 0,
        };
        let mut killed = 0;
        for root in roots {
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let g = InstanceGroup {
                        procs: vec![e.path().join("cgroup.procs")],
                        dirs: vec![e.path()],
                        v2: false,
                        memory_dir: e.path(),
                        peaks: Arc::default(),
                    };
                    killed += g.kill_all();
                    g.remove();
                }
            }
        }
        killed
    }

    /// Removes this server's (empty) root groups, at shutdown.
    pub fn remove_root(&self) {
        let roots: Vec<PathBuf> = match &self.layout {
            Some(Layout::V1 { memory, pids, cpu }) => [memory.clone(), pids.clone()]
                .into_iter()
                .chain(cpu.clone())
                .collect(),
            Some(Layout::V2 { root }) => vec![root.clone()],
            None => return,
        };
        for r in roots {
            let _ = std::fs::remove_dir(r);
        }
    }

    /// Creates the groups of one instance with its limits.
    pub fn create(
        &self,
        instance: &str,
        limits: &Limits,
    ) -> std::io::Result<Option<InstanceGroup>> {
        let Some(layout) = &self.layout else {
            return Ok(None);
        };
        let group = match layout {
            Layout::V1 { memory, pids, cpu } => {
                let (m, p) = (memory.join(instance), pids.join(instance));
                std::fs::create_dir_all(&m)?;
                std::fs::create_dir_all(&p)?;
                let mut procs = vec![m.join("cgroup.procs"), p.join("cgroup.procs")];
                let mut dirs = vec![m.clone(), p.clone()];
                if let Some(cpu) = cpu {
                    let c = cpu.join(instance);
                    std::fs::create_dir_all(&c)?;
                    if let Some(quota) = limits.cpu_quota_us() {
                        std::fs::write(c.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                        std::fs::write(c.join("cpu.cfs_quota_us"), quota.to_string())?;
                    }
                    procs.push(c.join("cgroup.procs"));
                    dirs.push(c);
                }
                if let Some(b) = limits.memory_bytes {
                    std::fs::write(m.join("memory.limit_in_bytes"), b.to_string())?;
                    // Without swap accounting the file is absent; the RAM limit still holds.
                    let _ = std::fs::write(m.join("memory.memsw.limit_in_bytes"), b.to_string());
                }
                if let Some(n) = limits.pids {
                    std::fs::write(p.join("pids.max"), n.to_string())?;
                }
                InstanceGroup {
                    procs,
                    dirs,
                    v2: false,
                    memory_dir: m,
                    peaks: Arc::default(),
                }
            }
            Layout::V2 { root } => {
                let d = root.join(instance);
                std::fs::create_dir_all(&d)?;
                if let Some(b) = limits.memory_bytes {
                    std::fs::write(d.join("memory.max"), b.to_string())?;
                    let _ = std::fs::write(d.join("memory.swap.max"), "0");
                }
                if let Some(n) = limits.pids {
                    std::fs::write(d.join("pids.max"), n.to_string())?;
                }
                if let Some(quota) = limits.cpu_quota_us() {
                    // Absent when the cpu controller is not enabled for the group.
                    let _ = std::fs::write(d.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"));
                }
                InstanceGroup {
                    procs: vec![d.join("cgroup.procs")],
                    dirs: vec![d.clone()],
                    v2: true,
                    memory_dir: d,
                    peaks: Arc::default(),
                }
            }
        };
        Ok(Some(group))
    }
}

/// How close to the limit a v1 peak counts as reaching it: the kernel reclaims ahead of the
/// limit in batches, so usage under pressure peaks a little below it (336 KiB below a 48 MiB
/// limit, measured here).
const PEAK_MARGIN: u64 = 1 << 20;

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn keyed(p: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(p)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
}

impl InstanceGroup {
    /// Memory in use by the instance's processes, in bytes.
    pub fn memory(&self) -> Option<u64> {
        if self.v2 {
            read_u64(&self.memory_dir.join("memory.current"))
        } else {
            read_u64(&self.memory_dir.join("memory.usage_in_bytes"))
        }
    }

    /// How many times the kernel's OOM killer killed a process of the instance.
    pub fn oom_kills(&self) -> u64 {
        if self.v2 {
            keyed(&self.memory_dir.join("memory.events"), "oom_kill ").unwrap_or(0)
        } else {
            keyed(&self.memory_dir.join("memory.oom_control"), "oom_kill ").unwrap_or(0)
        }
    }

    /// How many times memory use reached the limit (the kernel reclaimed, or failed to).
    ///
    /// v2 counts it (`memory.events` `max`). v1's `memory.failcnt` does not once
    /// `memory.memsw.limit_in_bytes` is set, as the supervisor sets it: measured on kernel
    /// 6.18, a process reading a file larger than its limit keeps usage at the limit by
    /// reclaim while both `failcnt`s stay 0. So on v1 a peak at the limit counts too: read
    /// from `memory.max_usage_in_bytes`, which is then reset, so each call sees only what
    /// happened since the last.
    pub fn limit_hits(&self) -> u64 {
        if self.v2 {
            return keyed(&self.memory_dir.join("memory.events"), "max ").unwrap_or(0);
        }
        let d = &self.memory_dir;
        let failed = read_u64(&d.join("memory.failcnt")).unwrap_or(0)
            + read_u64(&d.join("memory.memsw.failcnt")).unwrap_or(0);
        if let (Some(peak), Some(limit)) = (
            read_u64(&d.join("memory.max_usage_in_bytes")),
            read_u64(&d.join("memory.limit_in_bytes")),
        ) && peak.saturating_add(PEAK_MARGIN) >= limit
        {
            self.peaks.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::write(d.join("memory.max_usage_in_bytes"), "0");
        }
        failed + self.peaks.load(Ordering::Relaxed)
    }

    /// The pids of every process in the groups.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .procs
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in the group, pass after pass until the group is empty (a
    /// process that forks and exits in a loop escapes a single pass), for at most 2 s; returns
    /// how many it killed.
    pub fn kill_all(&self) -> usize {
        let mut killed = 0;
        for _ in 0..400 {
            killed += self.kill_pass();
            if self.pids().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        killed
    }

    /// One pass of [`InstanceGroup::kill_all`].
    fn kill_pass(&self) -> usize {
        let mut n = 0;
        for procs in &self.procs {
            let Ok(text) = std::fs::read_to_string(procs) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// Removes the (empty) groups.
    pub fn remove(&self) {
        for d in &self.dirs {
            // A group still holding a dying process cannot be removed yet; retry briefly.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
