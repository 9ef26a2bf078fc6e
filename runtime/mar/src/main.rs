//! `mar`: the one binary. `mar serve` runs the platform; every other command is a client of
//! its REST API (through `mar-sdk`), in Heroku's and Dokku's command style.

mod cli;
#[cfg(test)]
mod cli_reference;
mod commands;
mod hook;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    if args.is_client() {
        end_quietly_when_the_reader_goes();
    }
    // The platform's runtime; requests are served on router threads of their own (see
    // `mar_runtime::start`). One worker thread means the current-thread scheduler.
    let mut builder = match args.worker_threads() {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(" !    {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `mar logs | head -1`: a client command whose reader goes away ends there, quietly, as Unix
/// tools do, rather than panicking in `println!` with a backtrace (Rust ignores SIGPIPE in
/// every program, so each write would fail instead). `mar serve` and its git hook keep
/// ignoring it: a client that hangs up must not end the server or a deploy's cleanup.
#[allow(unsafe_code)]
fn end_quietly_when_the_reader_goes() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in `main`, before any other thread exists, and it restores
    // the default action, which runs no code of this program.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
