//! `mar auth:token`: prints the admin API token of the local server.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::token;

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum AuthCommand {
    /// Print the admin API token.
    #[command(name = "auth:token")]
    AuthToken,
}

/// Runs one command of this topic; none needs the server running.
pub(crate) fn run(cmd: AuthCommand, data_dir: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthCommand::AuthToken => {
            let token = token(data_dir)?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
