//! What happens between `fork` and `exec` of an app process: join its control groups, get a
//! private `/tmp`, `/var/tmp` and `/dev/shm` and an ephemeral, size-limited home, cap open files, drop to the app's own user, die
//! with `mar serve`, gain no privileges ever after (`no_new_privs`), and inherit no descriptor
//! beyond stdin, stdout and stderr; and, for `mar run` at a terminal, take a pseudo-terminal
//! as its controlling terminal.
//!
//! This is the one place in mini-MAR with `unsafe`: `pre_exec` runs in the forked child of a
//! multi-threaded process, where only async-signal-safe calls are allowed. So everything that
//! allocates (paths as C strings, the pid's digits buffer) is prepared before the fork, and the
//! closure makes raw `libc` calls only.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;

use tokio::process::Command;

/// How a process is confined.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// Run as this uid/gid (requires root); `None` keeps the current user.
    pub user: Option<(u32, u32)>,
    /// Mount private tmpfs on `/tmp`, `/var/tmp` and `/dev/shm` in a new mount namespace
    /// (requires root).
    pub private_tmp: bool,
    /// RLIMIT_NOFILE.
    pub nofile: Option<u64>,
    /// An ephemeral, size-limited home (with `private_tmp`): see [`EphemeralHome`].
    pub home: Option<EphemeralHome>,
}

/// The app's home (its unpacked slug) as the app sees it: the slug read-only below, and the
/// app's writes in a size-limited tmpfs above (an overlay), gone when the process ends, as on
/// Heroku. So an app cannot fill the platform's disk through its home, nor change the slug
/// other instances and root-side code read.
#[derive(Debug, Clone)]
pub struct EphemeralHome {
    /// The unpacked slug (the process's working directory and `HOME`).
    pub dir: std::path::PathBuf,
    /// An empty directory, root's, where the tmpfs for the writes is mounted in the process's
    /// own mount namespace.
    pub scratch: std::path::PathBuf,
    /// Most bytes the app may write there.
    pub size: u64,
    /// The platform's data directory, which the app sees read-only (its build cache and
    /// other run directories are on the platform's disk, where nothing of the app's may grow).
    pub read_only: std::path::PathBuf,
}

/// Arranges for `cmd`'s child to enter `procs` (cgroup.procs files) and the sandbox.
pub(crate) fn apply(
    cmd: &mut Command,
    sandbox: &Sandbox,
    procs: &[std::path::PathBuf],
) -> io::Result<()> {
    let procs: Vec<CString> = procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    let root = CString::new("/").map_err(io::Error::other)?;
    // Every directory where processes of different users meet: each gets its own tmpfs, so
    // an app cannot leave anything there for another, or read what another left.
    let shared_dirs: Vec<CString> = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"]
        .iter()
        .filter(|d| std::path::Path::new(d).is_dir())
        .map(|d| CString::new(*d).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    let tmpfs = CString::new("tmpfs").map_err(io::Error::other)?;
    let tmp_opts = CString::new("mode=1777,size=256m,nr_inodes=65536").map_err(io::Error::other)?;
    // A /proc of the app's own: it lists only processes of the app's user, so another app's
    // command lines (a buildpack URL with a token in it) and environment are out of sight.
    let proc_dir = CString::new("/proc").map_err(io::Error::other)?;
    let proc_fs = CString::new("proc").map_err(io::Error::other)?;
    let proc_opts = CString::new("hidepid=invisible").map_err(io::Error::other)?;
    // The overlay over the home, prepared before the fork.
    let cstr =
        |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let home = match (&sandbox.home, sandbox.private_tmp) {
        (Some(h), true) => {
            let (dir, scratch) = (h.dir.to_string_lossy(), h.scratch.to_string_lossy());
            // Overlay options are comma-separated, and a colon separates lower layers.
            if [&dir, &scratch].iter().any(|p| p.contains([',', ':'])) {
                return Err(io::Error::other(
                    "the app's directories cannot be overlaid: ',' or ':' in the data directory's path",
                ));
            }
            Some((
                cstr(&h.dir)?,
                cstr(&h.scratch)?,
                cstr(&h.scratch.join("upper"))?,
                cstr(&h.scratch.join("work"))?,
                CString::new(format!("size={},mode=0700,nr_inodes=65536", h.size))
                    .map_err(io::Error::other)?,
                CString::new(format!(
                    "lowerdir={dir},upperdir={scratch}/upper,workdir={scratch}/work"
                ))
                .map_err(io::Error::other)?,
                CString::new("overlay").map_err(io::Error::other)?,
                cstr(&h.read_only)?,
            ))
        }
        _ => None,
    };
    // `mar serve` itself: the app's parent, whose death the app must not outlive.
    let parent = libc::pid_t::try_from(std::process::id()).map_err(io::Error::other)?;
    let sandbox = sandbox.clone();
    let closure = move || -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: only async-signal-safe syscalls on memory prepared before the fork.
        unsafe {
            // Join the instance's groups first, so every process it ever forks is counted.
            let pid = libc::getpid();
            let mut digits = [0u8; 12];
            let mut n = pid as u32;
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let w = libc::write(fd, digits[i..].as_ptr().cast(), digits.len() - i);
                libc::close(fd);
                if w < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if sandbox.private_tmp {
                // System V IPC objects and POSIX message queues of its own too: nothing left
                // there outlives the instance or reaches another app.
                check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for dir in &shared_dirs {
                    check(libc::mount(
                        tmpfs.as_ptr(),
                        dir.as_ptr(),
                        tmpfs.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        tmp_opts.as_ptr().cast(),
                    ))?;
                }
                check(libc::mount(
                    proc_fs.as_ptr(),
                    proc_dir.as_ptr(),
                    proc_fs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    proc_opts.as_ptr().cast(),
                ))?;
                if let Some((dir, scratch, upper, work, size_opts, overlay_opts, overlay, data)) =
                    &home
                {
                    // The data directory, read-only: the mounts below stay writable.
                    check(libc::mount(
                        data.as_ptr(),
                        data.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        std::ptr::null(),
                        data.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        tmpfs.as_ptr(),
                        scratch.as_ptr(),
                        tmpfs.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        size_opts.as_ptr().cast(),
                    ))?;
                    check(libc::mkdir(upper.as_ptr(), 0o700))?;
                    check(libc::mkdir(work.as_ptr(), 0o700))?;
                    if let Some((uid, gid)) = sandbox.user {
                        // The top of the merged home is the upper layer's: the app's.
                        check(libc::chown(upper.as_ptr(), uid, gid))?;
                    }
                    check(libc::mount(
                        overlay.as_ptr(),
                        dir.as_ptr(),
                        overlay.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        overlay_opts.as_ptr().cast(),
                    ))?;
                    // The working directory was set before the mount, below it: enter the
                    // overlay.
                    check(libc::chdir(dir.as_ptr()))?;
                }
            }
            // No core dumps: they would land in the (ephemeral) home or be handed to the host.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
            if let Some(n) = sandbox.nofile {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                check(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
            }
            if let Some((uid, gid)) = sandbox.user {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            // After setuid, which clears it: if `mar serve` dies without stopping its apps,
            // the leader dies with it (what it forked is found through the cgroups at the next
            // start). If it died before this line, the process was handed to init already.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if libc::getppid() != parent {
                // (No allocation here, between fork and exec.)
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // No setuid binary or file capability can raise the app's privileges again.
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // Descriptors `mar serve` inherited without close-on-exec (from a service manager
            // or a shell) must not reach the app: every one above stderr closes at exec.
            check(libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) as libc::c_int)?;
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe calls (see above).
    unsafe {
        cmd.pre_exec(closure);
    }
    Ok(())
}

/// Arranges for `cmd`'s child to lead a session of its own, with no controlling terminal: it
/// leads its process group too (so the group can be signalled whole), and it cannot open the
/// terminal `mar serve` was started from (`/dev/tty`), to read it or push keystrokes into it
/// (TIOCSTI). Registered before [`apply`], so it runs first, as root.
pub(crate) fn new_session(cmd: &mut Command) {
    let closure = move || -> io::Result<()> {
        // SAFETY: one async-signal-safe syscall on no memory at all.
        unsafe {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes an async-signal-safe call.
    unsafe {
        cmd.pre_exec(closure);
    }
}

/// Arranges for `cmd`'s child to lead a session of its own whose controlling terminal is its
/// stdin (the slave side of a pseudo-terminal), as a login shell's is: job control, Ctrl-C
/// and window sizes then reach it. Registered before [`apply`], so it runs first, as root.
pub(crate) fn take_terminal(cmd: &mut Command) {
    let closure = move || -> io::Result<()> {
        // SAFETY: two async-signal-safe syscalls on no memory at all.
        unsafe {
            if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(closure);
    }
}
