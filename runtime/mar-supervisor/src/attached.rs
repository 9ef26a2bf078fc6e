//! One-off processes attached to their caller without a terminal (`echo 'print(1)' | mar run
//! -a APP python3`, a script's `mar run`): the caller's bytes are the process's stdin and the
//! caller's end of input closes it; stdout and stderr come back apart, as bytes rather than
//! lines, so binary data and a last line without a newline pass through as they are. Confined
//! as every one-off is (see [`crate::one_off`]).
//!
//! Nothing here keeps what passes: the caller's bounded channels are the only buffers, so a
//! process that prints forever is slowed to the pace of whoever reads it, and one that does not
//! read its input holds the caller back through the pipe.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{BootError, ProcessSpec};

/// What the caller sends the process.
#[derive(Debug)]
pub enum AttachedInput {
    /// Bytes for its stdin.
    Data(Vec<u8>),
    /// The caller's input ended: the process's stdin is closed.
    End,
}

/// What the process wrote, and where.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachedOutput {
    /// Bytes from its stdout.
    Stdout(Vec<u8>),
    /// Bytes from its stderr.
    Stderr(Vec<u8>),
}

/// Largest chunk of output read at once.
const CHUNK: usize = 16 * 1024;

/// Runs a one-off process with its stdin fed from `input` and its stdout and stderr sent to
/// `output`, until it exits (its exit code, 128 + signal when killed), `timeout` passes or
/// `cancel` fires (its whole group is killed). All it wrote before it exited is delivered
/// before this returns, at the pace `output` is read.
pub async fn one_off_attached(
    spec: &ProcessSpec,
    mut input: mpsc::Receiver<AttachedInput>,
    output: mpsc::Sender<AttachedOutput>,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<i32, BootError> {
    let mut cmd = crate::command(spec, None);
    crate::sandbox::new_session(&mut cmd);
    cmd.stdin(Stdio::piped());
    let (mut child, group) = crate::spawn_one_off(spec, cmd)?;
    let stdin = child.stdin.take();
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        let on_pipe = Arc::new(AtomicBool::new(false));
        let task = copy_output(s, output.clone(), AttachedOutput::Stdout, on_pipe.clone());
        readers.push((tokio::spawn(task), on_pipe));
    }
    if let Some(s) = child.stderr.take() {
        let on_pipe = Arc::new(AtomicBool::new(false));
        let task = copy_output(s, output.clone(), AttachedOutput::Stderr, on_pipe.clone());
        readers.push((tokio::spawn(task), on_pipe));
    }
    drop(output);
    let writer = tokio::spawn(async move {
        let Some(mut stdin) = stdin else {
            return;
        };
        while let Some(i) = input.recv().await {
            match i {
                // A process that closed its stdin (or exited) takes no more: the rest goes.
                AttachedInput::Data(bytes) => {
                    if stdin.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                AttachedInput::End => return,
            }
        }
        // Dropping `stdin` closes it: the process reads the end of its input.
    });
    let result = crate::wait_one_off(&mut child, timeout, cancel).await;
    writer.abort();
    crate::end_one_off(group);
    // What it wrote just before it exited is still in the pipes: all of it is handed over,
    // at the caller's pace.
    crate::drain_readers(readers).await;
    result
}

/// Reads `stream` into `output`, each chunk wrapped as `wrap` says, until it ends or nobody
/// listens; `on_pipe` says whether it is waiting on the pipe (rather than on the caller).
async fn copy_output<R: AsyncRead + Unpin>(
    mut stream: R,
    output: mpsc::Sender<AttachedOutput>,
    wrap: fn(Vec<u8>) -> AttachedOutput,
    on_pipe: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        on_pipe.store(true, Ordering::Relaxed);
        let read = stream.read(&mut buf).await;
        on_pipe.store(false, Ordering::Relaxed);
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if output.send(wrap(buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}
