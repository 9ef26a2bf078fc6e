//! `mar`: the one binary. `mar serve` runs the platform; every other command is a client of
//! its REST API (through `mar-sdk`), in Heroku's and Dokku's command style.

mod cli;
mod hook;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads() {
        builder.worker_threads(n);
    }
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
