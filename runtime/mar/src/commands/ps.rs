//! `mar ps`, `ps:scale`, `ps:restart`, `ps:resize`, `run`: an app's processes, their counts and
//! limits, rolling restarts and one-off commands.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use super::Context;
use super::{print_config, print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum PsCommand {
    /// List processes.
    Ps,
    /// Set instance counts: `mar ps:scale web=3 worker=1`.
    #[command(name = "ps:scale")]
    PsScale {
        /// TYPE=N pairs; with none, shows the formation.
        pairs: Vec<String>,
    },
    /// Restart processes one at a time, with no downtime: all, a type (`web`) or one (`web.2`).
    #[command(name = "ps:restart")]
    PsRestart {
        /// What to restart.
        target: Option<String>,
    },
    /// Set per-instance limits (memory, processes, open files, CPU, disk); restarts the app.
    /// Without a flag, show the limits in force, the defaults marked.
    #[command(name = "ps:resize")]
    PsResize {
        /// Memory per instance, like 512M or 1G.
        #[arg(long)]
        memory: Option<String>,
        /// Processes and threads per instance.
        #[arg(long)]
        pids: Option<String>,
        /// Open files per process.
        #[arg(long)]
        nofile: Option<String>,
        /// CPU per instance, in cores: 0.5, 2, or 500m.
        #[arg(long)]
        cpu: Option<String>,
        /// What an instance may write to its (ephemeral) home, like 512M or 2G.
        #[arg(long)]
        disk: Option<String>,
    },
    /// Run a one-off command in the app's environment and slug: `mar run -a APP -- CMD…`.
    /// Several arguments reach the process as given (`mar run -- python -c 'print(1)'`); one
    /// argument is a shell command line (`mar run -- 'echo $PORT | wc -c'`). Its exit status
    /// is mar's. Typed at a terminal, the command gets a terminal of its own (`mar run -a APP
    /// bash` is an interactive shell); elsewhere what is piped in is its stdin, and its stdout
    /// and stderr come back apart.
    Run {
        /// Run without a terminal even when stdin and stdout are one.
        #[arg(long)]
        no_tty: bool,
        /// Give the command no input (as `< /dev/null`; `ssh -n`'s): for a loop that reads its
        /// own stdin while it runs `mar run`.
        #[arg(short = 'n', long)]
        no_stdin: bool,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: PsCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        PsCommand::Ps => list(ctx).await,
        PsCommand::PsScale { pairs } => scale(ctx, pairs).await,
        PsCommand::PsRestart { target } => restart(ctx, target).await,
        PsCommand::PsResize {
            memory,
            pids,
            nofile,
            cpu,
            disk,
        } => resize(ctx, [memory, pids, nofile, cpu, disk]).await,
        PsCommand::Run {
            no_tty,
            no_stdin,
            command,
        } => {
            if !no_tty && super::terminal::is_interactive() {
                let app = resolve_app(ctx.app.clone())?;
                let code =
                    super::terminal::run_at_terminal(ctx, app.as_str(), command_line(&command))
                        .await?;
                exit_status(code)
            } else {
                let app = resolve_app(ctx.app.clone())?;
                let code = super::terminal::run_attached(
                    ctx,
                    app.as_str(),
                    command_line(&command),
                    !no_stdin,
                )
                .await?;
                exit_status(code)
            }
        }
    }
}

/// `mar ps`.
async fn list(ctx: &Context) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let ps = ctx.client.processes(app.as_str()).await?;
    if ctx.json {
        return print_json(&ps);
    }
    let mut last_type = String::new();
    for p in ps {
        if p.process_type != last_type {
            println!("=== {}: `{}`", p.process_type, p.command);
            last_type = p.process_type.clone();
        }
        if let Some(w) = &p.wasm {
            println!(
                "wasm: up (v{}) in flight {}, running {}/{} (waiting {}), pool {}/{}",
                p.release,
                w.in_flight,
                w.running,
                w.concurrency,
                w.waiting,
                w.pool_in_use,
                w.pool_size
            );
            println!(
                "      requests {}, failed {}, instances {} (mean {} µs, last {} µs), reused {}",
                w.requests,
                w.failures,
                w.instantiations,
                w.mean_instantiation_us,
                w.last_instantiation_us,
                w.reused
            );
            continue;
        }
        let uptime = p
            .uptime_secs
            .map_or(String::new(), |s| format!(" for {s}s"));
        let port = p.port.map_or(String::new(), |p| format!(" port {p}"));
        let pid = p.pid.map_or(String::new(), |p| format!(" pid {p}"));
        let memory = p
            .memory_bytes
            .map_or(String::new(), |b| format!(" memory {}", human_bytes(b)));
        println!(
            "{}: {}{uptime} (v{}){port}{pid}{memory} restarts {}",
            p.dyno, p.state, p.release, p.restarts
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mar ps:scale [TYPE=N...]`.
async fn scale(ctx: &Context, pairs: Vec<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let formation = if pairs.is_empty() {
        ctx.client.formation(app.as_str()).await?
    } else {
        let mut counts = BTreeMap::new();
        for pair in &pairs {
            let parsed = pair
                .split_once('=')
                .and_then(|(t, n)| n.parse::<u32>().ok().map(|n| (t.to_owned(), n)));
            let Some((t, n)) = parsed else {
                bail!("{pair:?} is not TYPE=N, like web=2");
            };
            counts.insert(t, n);
        }
        eprint!("Scaling {app} processes... ");
        let f = ctx.client.scale(app.as_str(), &counts).await?;
        eprintln!("done");
        f
    };
    if ctx.json {
        return print_json(&formation);
    }
    let shown: Vec<String> = formation
        .iter()
        .map(|f| format!("{}={}", f.process_type, f.quantity))
        .collect();
    println!("{}", shown.join(" "));
    Ok(ExitCode::SUCCESS)
}

/// `mar ps:restart [TYPE|DYNO]`.
async fn restart(ctx: &Context, target: Option<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    eprint!(
        "Restarting {} of {app}, one at a time... ",
        target.as_deref().unwrap_or("every process")
    );
    let restarted = ctx.client.restart(app.as_str(), target.as_deref()).await?;
    eprintln!("done");
    if ctx.json {
        return print_json(&restarted);
    }
    println!("restarted {}", restarted.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// A size as `ps:resize` takes it: `512M`, `1G`, else in bytes.
fn size_text(b: u64) -> String {
    for (unit, size) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

/// Thousandths of a core as `ps:resize --cpu` takes them: `1`, `0.5`, `2.25`.
fn cpu_text(millis: u64) -> String {
    let text = format!("{}.{:03}", millis / 1000, millis % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Bytes as `mar ps:resize` writes sizes: `38.2M`, `512K`, `1.5G`.
fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in UNITS {
        if b >= size {
            #[allow(clippy::cast_precision_loss)]
            return format!("{:.1}{unit}", b as f64 / size as f64);
        }
    }
    format!("{b}B")
}

/// `mar ps:resize [--memory] [--pids] [--nofile] [--cpu] [--disk]`: the limits are config vars.
async fn resize(
    ctx: &Context,
    [memory, pids, nofile, cpu, disk]: [Option<String>; 5],
) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let mut changes = BTreeMap::new();
    for (k, v) in [
        ("MAR_MEMORY_LIMIT", memory),
        ("MAR_PIDS_LIMIT", pids),
        ("MAR_NOFILE_LIMIT", nofile),
        ("MAR_CPU_LIMIT", cpu),
        ("MAR_DISK_LIMIT", disk),
    ] {
        if let Some(v) = v {
            changes.insert(k.to_owned(), Some(v));
        }
    }
    if changes.is_empty() {
        // What applies now: the app's values, and the defaults for the others, said as such.
        let info = ctx.client.app(app.as_str()).await?;
        let config = ctx.client.config(app.as_str()).await?;
        let Some(limits) = info.limits else {
            anyhow::bail!("the server did not say {app}'s limits");
        };
        if ctx.json {
            return print_json(&limits);
        }
        let defaults = [
            ("MAR_MEMORY_LIMIT", size_text(limits.memory_bytes)),
            ("MAR_CPU_LIMIT", cpu_text(limits.cpu_millis)),
            ("MAR_PIDS_LIMIT", limits.pids.to_string()),
            ("MAR_NOFILE_LIMIT", limits.nofile.to_string()),
            ("MAR_DISK_LIMIT", size_text(limits.disk_bytes)),
        ];
        let shown: BTreeMap<String, String> = defaults
            .into_iter()
            .map(|(k, applied)| {
                let text = match config.get(k) {
                    Some(set) => set.clone(),
                    None => format!("{applied} (default)"),
                };
                (k.to_owned(), text)
            })
            .collect();
        print_config(&app, &shown);
        return Ok(ExitCode::SUCCESS);
    }
    let config = super::config::apply(ctx, &app, "Resizing", &changes).await?;
    if ctx.json {
        return print_json(&config);
    }
    Ok(ExitCode::SUCCESS)
}

/// The shell command line (the one-off runs under `bash -c`, after `.profile.d`) for `args`:
/// one argument is a command line already; several are each quoted, so they reach the process
/// exactly as given, spaces, quotes and `$` included.
fn command_line(args: &[String]) -> String {
    match args {
        [one] => one.clone(),
        many => many
            .iter()
            .map(|a| {
                if !a.is_empty()
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
                {
                    a.clone()
                } else {
                    format!("'{}'", a.replace('\'', r"'\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `mar run`'s own exit status: the command's, or an error when it could not run.
fn exit_status(result: mar_sdk::types::RunResult) -> anyhow::Result<ExitCode> {
    match result {
        mar_sdk::types::RunResult {
            exit_code: Some(code),
            ..
        } => Ok(ExitCode::from(
            u8::try_from(code.clamp(0, 255)).unwrap_or(1),
        )),
        mar_sdk::types::RunResult { error: Some(e), .. } => bail!("{e}"),
        _ => bail!("the command ended without an exit status"),
    }
}

#[cfg(test)]
mod tests {
    use super::command_line;

    #[test]
    fn several_arguments_are_quoted_and_one_is_a_command_line() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&args(&["python", "-c", "print('a b')"])),
            r"python -c 'print('\''a b'\'')'"
        );
        assert_eq!(
            command_line(&args(&["echo", "$HOME", ""])),
            "echo '$HOME' ''"
        );
        assert_eq!(
            command_line(&args(&["echo $PORT | wc -c"])),
            "echo $PORT | wc -c"
        );
    }
}
