//! `mar run` over the platform's terminal WebSocket. Typed at a terminal: the user's terminal
//! in raw mode (every key goes to the remote process, Ctrl-C included), keystrokes and window
//! sizes sent, the remote terminal's bytes written to the screen as they come, and the user's
//! terminal restored however the session ends. In a pipe or a script: this process's stdin is
//! the remote process's (unless it is a terminal), and its stdout and stderr come back apart.

use std::io::{IsTerminal, Read, Write};

use mar_sdk::terminal::TerminalEvent;
use mar_sdk::types::{RunResult, TerminalStart};
use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Context;

/// Whether `mar run` is typed at a terminal: both stdin and stdout are one.
pub(crate) fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Runs `command` in `app` at a terminal of its own, relaying this terminal to it.
pub(crate) async fn run_at_terminal(
    ctx: &Context,
    app: &str,
    command: String,
) -> anyhow::Result<RunResult> {
    let (cols, rows) = window_size();
    let start = TerminalStart {
        command,
        cols,
        rows,
        term: std::env::var("TERM").ok(),
        tty: true,
    };
    let (mut keys, mut screen) = ctx.client.terminal(app, &start).await?;
    let raw = RawMode::enter()?;
    let mut typed = keystrokes();
    let mut resized = signal(SignalKind::window_change())?;
    // Keys and sizes go out on a task of their own, so the screen is always read: a paste
    // into a program that prints as fast would otherwise hold both sides, each waiting for
    // the other to read. A send that fails means the session is over: its result still comes.
    let sender = tokio::spawn(async move {
        loop {
            let sent = tokio::select! {
                bytes = typed.recv() => match bytes {
                    Some(bytes) => keys.send(bytes).await,
                    None => return,
                },
                _ = resized.recv() => {
                    let (cols, rows) = window_size();
                    keys.resize(cols, rows).await
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let mut out = std::io::stdout();
    let result = loop {
        match screen.next().await {
            // At a terminal everything comes as the terminal's bytes.
            Ok(TerminalEvent::Output(bytes) | TerminalEvent::Stderr(bytes)) => {
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Ok(TerminalEvent::Ended(result)) => break Ok(result),
            Err(e) => break Err(e),
        }
    };
    sender.abort();
    drop(raw);
    Ok(result?)
}

/// Runs `command` in `app` without a terminal: with `forward_stdin` (and stdin not a
/// terminal: nothing would echo it), what this process reads on stdin is the remote
/// process's stdin, its end closes it; the remote stdout and stderr are written to this
/// process's, byte for byte.
pub(crate) async fn run_attached(
    ctx: &Context,
    app: &str,
    command: String,
    forward_stdin: bool,
) -> anyhow::Result<RunResult> {
    let start = TerminalStart {
        command,
        cols: 80,
        rows: 24,
        term: None,
        tty: false,
    };
    let (mut keys, mut screen) = ctx.client.terminal(app, &start).await?;
    let forward = forward_stdin && !std::io::stdin().is_terminal();
    // Input goes in on a task of its own, so output is always read: a command that writes
    // more than it reads (`| mar run -- 'awk …'`) would otherwise hold both sides, each
    // waiting for the other to read. A send that fails means the session is over (the
    // command exited without reading everything): its result still comes.
    let sender = tokio::spawn(async move {
        if forward {
            let mut input = keystrokes();
            while let Some(bytes) = input.recv().await {
                if keys.send(bytes).await.is_err() {
                    return;
                }
            }
        }
        let _ = keys.end_input().await;
        // Kept open until the session ends: dropping it would close the connection.
        std::future::pending::<()>().await;
    });
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let result = loop {
        match screen.next().await {
            Ok(TerminalEvent::Output(bytes)) => {
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Ok(TerminalEvent::Stderr(bytes)) => {
                err.write_all(&bytes)?;
                err.flush()?;
            }
            Ok(TerminalEvent::Ended(result)) => break Ok(result),
            Err(e) => break Err(e),
        }
    };
    sender.abort();
    Ok(result?)
}

/// The user's window size, 80×24 when it cannot be read.
fn window_size() -> (u16, u16) {
    match tcgetwinsize(std::io::stdout()) {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (w.ws_col, w.ws_row),
        _ => (80, 24),
    }
}

/// What the user types, read on a thread of its own: a read from a terminal blocks until the
/// next key, which would hold up the runtime's end if it ran on the runtime's blocking pool.
fn keystrokes() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The user's terminal in raw mode while this lives; as it was before when dropped (on every
/// way out, an error included).
struct RawMode {
    before: Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let before = tcgetattr(&stdin)?;
        let mut raw = before.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(Self { before })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.before);
    }
}
