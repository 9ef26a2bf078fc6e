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
/// `cancel` fires (its whole group is killed). What it wrote before it exited is delivered
/// before this returns.
pub async fn one_off_attached(
    spec: &ProcessSpec,
    mut input: mpsc::Receiver<AttachedInput>,
    output: mpsc::Sender<AttachedOutput>,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<i32, BootError> {
    let mut cmd = crate::command(spec, None);
    cmd.process_group(0).stdin(Stdio::piped());
    let (mut child, group) = crate::spawn_one_off(spec, cmd)?;
    let stdin = child.stdin.take();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(copy_output(s, output.clone(), AttachedOutput::Stdout))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(copy_output(s, output.clone(), AttachedOutput::Stderr))),
    ]
    .into_iter()
    .flatten()
    .collect();
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
    // What it printed just before it exited is still in the pipes: read until every holder of
    // their write ends is gone, which the group's end above has made sure of (a process outside
    // control groups that kept them is not waited for long).
    for mut reader in readers {
        if tokio::time::timeout(Duration::from_secs(2), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
    result
}

/// Reads `stream` into `output`, each chunk wrapped as `wrap` says, until it ends or nobody
/// listens.
async fn copy_output<R: AsyncRead + Unpin>(
    mut stream: R,
    output: mpsc::Sender<AttachedOutput>,
    wrap: fn(Vec<u8>) -> AttachedOutput,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if output.send(wrap(buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}
