//! What happens between `fork` and `exec` of an app process: join its control groups, get a
//! private `/tmp`, `/var/tmp` and `/dev/shm`, cap open files, drop to the app's own user, die
//! with `mar serve`, gain no privileges ever after (`no_new_privs`), and inherit no descriptor
//! beyond stdin, stdout and stderr.
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
    let shared_dirs: Vec<CString> = ["/tmp", "/var/tmp", "/dev/shm"]
        .iter()
        .filter(|d| std::path::Path::new(d).is_dir())
        .map(|d| CString::new(*d).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    let tmpfs = CString::new("tmpfs").map_err(io::Error::other)?;
    let tmp_opts = CString::new("mode=1777,size=256m").map_err(io::Error::other)?;
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
                check(libc::unshare(libc::CLONE_NEWNS))?;
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
            }
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
                return Err(io::Error::other("mar serve exited while the app started"));
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
