//! `mar logs`: an app's log, and with `-t` the live tail.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::Context;
use super::{print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum LogsCommand {
    /// Show (and with -t, follow) an app's log.
    Logs {
        /// Number of lines.
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        num: usize,
        /// Keep following new lines.
        #[arg(short = 't', long = "tail")]
        tail: bool,
        /// Only this process (`web.1`) or process type (`web`).
        #[arg(long)]
        ps: Option<String>,
        /// Only the app's output (`app`) or the platform's lines (`mar`).
        #[arg(long, value_parser = ["app", "mar"])]
        source: Option<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: LogsCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        LogsCommand::Logs {
            num,
            tail,
            ps,
            source,
        } => logs(ctx, num, tail, ps, source).await,
    }
}

/// `mar logs [-n N] [-t] [--ps P] [--source S]`.
async fn logs(
    ctx: &Context,
    num: usize,
    tail: bool,
    ps: Option<String>,
    source: Option<String>,
) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let filter = mar_sdk::LogFilter { ps, source };
    if tail {
        let mut lines = ctx.client.follow_logs(app.as_str(), num, &filter).await?;
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                // A server that shuts down ends the stream with a line saying so.
                Ok(None) => return Ok(ExitCode::SUCCESS),
                Err(_) => anyhow::bail!("the log stream broke off: mar serve stopped or went away"),
            }
        }
    }
    let entries = ctx.client.logs(app.as_str(), num, 0, &filter).await?;
    if ctx.json {
        return print_json(&entries);
    }
    for e in entries {
        println!("{} {}", e.time, e.log);
    }
    Ok(ExitCode::SUCCESS)
}
