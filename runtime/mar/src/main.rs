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
