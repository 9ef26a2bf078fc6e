//! Running one buildpack script: its own process group, output streamed line by line, and a
//! deadline after which the whole group is killed (a hanging `make` leaves no orphans). When
//! the script ends, whatever it left in its process group or the build's cgroup is killed too.

use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{BuildError, Output};

/// Most bytes of a script's stdout kept when it is captured.
const MAX_CAPTURE: usize = 1 << 20;

/// How a script run ended, short of success.
pub(crate) enum Stop {
    /// The build's deadline passed.
    TimedOut,
    /// The build was cancelled (the pusher went away, or shutdown).
    Cancelled,
}

/// Runs `cmd`, sending each line of stdout and stderr through `out` (prefixed by `indent`),
/// and returns its exit status. With `capture`, stdout is returned instead of streamed.
pub(crate) async fn run(
    mut cmd: Command,
    out: &Output,
    indent: &str,
    capture: bool,
    deadline: Instant,
    cancel: &CancellationToken,
    group: Option<&mar_supervisor::InstanceGroup>,
) -> Result<Result<(ExitStatus, String), Stop>, BuildError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cmd.spawn().map_err(|e| BuildError::Spawn {
        program: program.clone(),
        source: e,
    })?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pump_err = pump(stderr, out.clone(), indent.to_owned(), false);
    let pump_out = pump(stdout, out.clone(), indent.to_owned(), capture);
    let waited = async {
        let exited = async {
            let status = child.wait().await;
            // Nothing a script started may outlive it: a daemon it left (in a session of its
            // own, outside its process group) would hold the output pipes open and run on as
            // the app's user. The build's cgroup holds every process it forked.
            kill_group(pgid);
            if let Some(g) = group {
                g.kill_all();
            }
            status
        };
        let (captured, _, status) = tokio::join!(pump_out, pump_err, exited);
        status.map(|s| (s, captured))
    };
    tokio::select! {
        res = waited => {
            let (status, captured) = res.map_err(|e| BuildError::Spawn { program, source: e })?;
            Ok(Ok((status, captured)))
        }
        _ = tokio::time::sleep_until(deadline) => {
            kill_group(pgid);
            if let Some(g) = group {
                g.kill_all();
            }
            Ok(Err(Stop::TimedOut))
        }
        _ = cancel.cancelled() => {
            kill_group(pgid);
            if let Some(g) = group {
                g.kill_all();
            }
            Ok(Err(Stop::Cancelled))
        }
    }
}

fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        // The group may be gone already; that is the outcome we want.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    out: Output,
    indent: String,
    capture: bool,
) -> String {
    let mut captured = String::new();
    let Some(stream) = stream else {
        return captured;
    };
    mar_supervisor::output::for_each_line(stream, |line| {
        if !capture {
            out.line(format!("{indent}{line}"));
        } else if captured.len() < MAX_CAPTURE {
            // What a script's stdout says (detect's name, release's YAML) is small; a script
            // that prints more cannot grow it further.
            captured.push_str(&line);
            captured.push('\n');
        }
    })
    .await;
    captured
}
