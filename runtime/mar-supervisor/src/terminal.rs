//! One-off processes at a terminal (`mar run -a APP bash` typed at a terminal): the process
//! gets the slave side of a fresh pseudo-terminal as its stdin, stdout, stderr and controlling
//! terminal, in a session of its own, confined as any one-off is; the master side's bytes go
//! to the caller, and the caller's keystrokes and window sizes come back.
//!
//! The bytes are the terminal's, not lines: nothing here parses or keeps them, and the caller's
//! bounded channel is the only buffer, so a process that prints forever is slowed to the pace
//! of whoever reads it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{BootError, ProcessSpec};

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl WindowSize {
    /// The size clamped to what a terminal can be (1 to 1,000 cells either way).
    pub fn clamped(self) -> Self {
        Self {
            cols: self.cols.clamp(1, 1000),
            rows: self.rows.clamp(1, 1000),
        }
    }

    fn winsize(self) -> rustix::termios::Winsize {
        let s = self.clamped();
        rustix::termios::Winsize {
            ws_row: s.rows,
            ws_col: s.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

/// What the caller sends the terminal.
#[derive(Debug)]
pub enum TerminalInput {
    /// Bytes typed (or pasted): written to the terminal as they are.
    Keys(Vec<u8>),
    /// The caller's window changed size: the process gets `SIGWINCH`.
    Resize(WindowSize),
}

/// The terminal a one-off runs at.
#[derive(Debug, Clone)]
pub struct Tty {
    /// Its initial size.
    pub size: WindowSize,
    /// `TERM` as the caller's terminal names itself; `xterm` when absent or not a plain name.
    pub term: Option<String>,
}

/// Largest chunk of output read from the terminal at once.
const CHUNK: usize = 16 * 1024;

/// Runs a one-off process at a new pseudo-terminal, in the same confinement as
/// [`crate::one_off`], until it exits (its exit code, 128 + signal when killed), `timeout`
/// passes or `cancel` fires (its whole group is killed). The terminal's output goes to
/// `output` as it comes; `input` carries keystrokes and resizes. Output still buffered in the
/// terminal when the process exits is delivered before this returns.
pub async fn one_off_at_terminal(
    spec: &ProcessSpec,
    tty: Tty,
    mut input: mpsc::Receiver<TerminalInput>,
    output: mpsc::Sender<Vec<u8>>,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<i32, BootError> {
    let spawn_error = |e: io::Error| BootError::Spawn(format!("cannot open a terminal: {e}"));
    let winsize = nix::pty::Winsize {
        ws_row: tty.size.clamped().rows,
        ws_col: tty.size.clamped().cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).map_err(|e| spawn_error(e.into()))?;
    // Neither side may leak into a process another thread forks meanwhile.
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| spawn_error(e.into()))?;
    }
    fcntl(&pty.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| spawn_error(e.into()))?;
    if let Some((uid, gid)) = spec.sandbox.user {
        // The terminal is the app user's, as a login's is its user's (`tty`, `mesg` and
        // programs reopening it work); nobody else may read it.
        std::os::unix::fs::fchown(&pty.slave, Some(uid), Some(gid)).map_err(spawn_error)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::File::from(pty.slave.try_clone().map_err(spawn_error)?)
            .set_permissions(std::fs::Permissions::from_mode(0o620))
            .map_err(spawn_error)?;
    }
    let mut cmd = crate::command(spec, None);
    let stdio = || pty.slave.try_clone().map(Stdio::from).map_err(spawn_error);
    cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
    cmd.env("TERM", term_name(tty.term.as_deref()));
    // Before the sandbox's own step, which drops root.
    crate::sandbox::take_terminal(&mut cmd);
    let (mut child, group) = crate::spawn_one_off(spec, cmd)?;
    // Only the child holds the slave now: once it and what it forked are gone, reading the
    // master ends (EIO).
    drop(pty.slave);
    let master = Arc::new(register(pty.master).map_err(spawn_error)?);
    let on_pipe = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn(copy_output(master.clone(), output, on_pipe.clone()));
    let writer = tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            let done = match i {
                TerminalInput::Keys(bytes) => write_all(&master, &bytes).await,
                TerminalInput::Resize(size) => {
                    rustix::termios::tcsetwinsize(master.get_ref(), size.winsize())
                        .map_err(io::Error::from)
                }
            };
            if done.is_err() {
                break;
            }
        }
    });
    let result = crate::wait_one_off(&mut child, timeout, cancel).await;
    writer.abort();
    crate::end_one_off(group);
    // What the process printed just before it exited is still in the terminal: it is read
    // until the slave's last holder is gone, which the group's end above has made sure of,
    // at the caller's pace (a process outside the group that kept the terminal is not waited
    // for long).
    crate::drain_readers(vec![(reader, on_pipe)]).await;
    result
}

/// The terminal's master side on the runtime's reactor.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the descriptor is owned by the `AsyncFd` from here on (an `OwnedFd` is open and
    // never changes), which is the whole of `register`'s contract.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// `TERM` for the process: the caller's when it is a plain terminal name.
fn term_name(term: Option<&str>) -> String {
    match term {
        Some(t)
            if !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b)) =>
        {
            t.to_owned()
        }
        _ => "xterm".to_owned(),
    }
}

/// Reads the terminal's output into `output` until the terminal is gone or nobody listens;
/// `on_pipe` says whether it is waiting on the terminal (rather than on the caller).
async fn copy_output(
    master: Arc<AsyncFd<OwnedFd>>,
    output: mpsc::Sender<Vec<u8>>,
    on_pipe: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        on_pipe.store(true, std::sync::atomic::Ordering::Relaxed);
        let read = read_some(&master, &mut buf).await;
        on_pipe.store(false, std::sync::atomic::Ordering::Relaxed);
        let n = match read {
            // EIO: every holder of the slave side has closed it.
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if output.send(buf[..n].to_vec()).await.is_err() {
            return;
        }
    }
}

async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        if let Ok(result) =
            guard.try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(io::Error::from))
        {
            return result;
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = fd.writable().await?;
        if let Ok(result) = guard.try_io(|inner| {
            nix::unistd::write(inner.get_ref().as_fd(), bytes).map_err(io::Error::from)
        }) {
            bytes = &bytes[result?..];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_terminal_names_reach_the_process() {
        assert_eq!(term_name(Some("xterm-256color")), "xterm-256color");
        assert_eq!(term_name(Some("screen.xterm+x")), "screen.xterm+x");
        assert_eq!(term_name(None), "xterm");
        assert_eq!(term_name(Some("")), "xterm");
        assert_eq!(term_name(Some("x\nLD_PRELOAD=/tmp/a")), "xterm");
        assert_eq!(term_name(Some(&"x".repeat(65))), "xterm");
    }

    #[test]
    fn window_sizes_are_clamped_to_what_a_terminal_can_be() {
        let s = WindowSize {
            cols: 0,
            rows: 60000,
        }
        .clamped();
        assert_eq!((s.cols, s.rows), (1, 1000));
    }
}
