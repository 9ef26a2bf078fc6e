//! `mar auth:token`: prints the admin API token of the local server.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::{secret, token};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum AuthCommand {
    /// Print the admin API token (or, with --metrics, the token that reads /metrics only).
    #[command(name = "auth:token")]
    AuthToken {
        /// Print the metrics token instead, for a Prometheus scraper.
        #[arg(long)]
        metrics: bool,
    },
}

/// Runs one command of this topic; none needs the server running.
pub(crate) fn run(cmd: AuthCommand, data_dir: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthCommand::AuthToken { metrics } => {
            let token = if metrics {
                secret(&data_dir.join("metrics_token"), "metrics token")?
            } else {
                token(data_dir)?
            };
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
