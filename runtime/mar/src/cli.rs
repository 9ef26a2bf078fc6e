//! Command-line parsing and dispatch: the top-level `Cli`, its global options, and which module
//! of `commands/` runs each command. Each command that prints data also takes `--json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::commands::{self, Context};

/// mini-MAR: a self-hosted application runtime. Deploy with `git push`.
#[derive(Parser, Debug)]
#[command(name = "mar", version, about)]
pub struct Cli {
    /// The data directory of the local server.
    #[arg(long, global = true, env = "MAR_HOME")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The app (default: the app of the `mar` git remote in the current directory).
    #[arg(short = 'a', long = "app", global = true)]
    app: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Every command; each topic's commands are defined in its module of `commands/`, and listed
/// by `mar help` in this order.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the platform: router, API, git, builds and app processes.
    Serve(commands::serve::ServeArgs),
    #[command(flatten)]
    Apps(commands::apps::AppsCommand),
    #[command(flatten)]
    Git(commands::git::GitCommand),
    #[command(flatten)]
    Config(commands::config::ConfigCommand),
    #[command(flatten)]
    Releases(commands::releases::ReleasesCommand),
    #[command(flatten)]
    Ps(commands::ps::PsCommand),
    #[command(flatten)]
    Logs(commands::logs::LogsCommand),
    #[command(flatten)]
    Domains(commands::domains::DomainsCommand),
    #[command(flatten)]
    Services(commands::services::ServicesCommand),
    #[command(flatten)]
    Accounts(commands::accounts::AccountsCommand),
    #[command(flatten)]
    Auth(commands::auth::AuthCommand),
    #[command(flatten)]
    Console(commands::console::ConsoleCommand),
    #[command(flatten)]
    Tls(commands::tls::TlsCommand),
    /// Git hooks (run by git during a push).
    #[command(hide = true)]
    Hook {
        /// The hook's name.
        name: String,
    },
}

fn default_data_dir() -> PathBuf {
    // As root, where the apps' own users can reach it (root's home is closed to them), as
    // Dokku keeps its apps under its own home.
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/mar");
    }
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Path::new(&h).join(".mar"),
        _ => PathBuf::from("mar-data"),
    }
}

impl Cli {
    /// The runtime threads `mar serve` asked for; `None` for tokio's default.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Serve(args) => args.worker_threads.map(usize::from),
            _ => None,
        }
    }

    /// Whether this is a client command (not `mar serve`, nor the git hook `mar serve` runs).
    pub fn is_client(&self) -> bool {
        !matches!(self.command, Command::Serve(_) | Command::Hook { .. })
    }
}

/// Runs the command. The server, the git hook and `auth:token` need no running server; every
/// other command first finds the server and its token, so that is the first thing to fail
/// when there is none.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    let command = match cli.command {
        Command::Serve(args) => return commands::serve::serve(&data_dir, args.overrides()).await,
        Command::Hook { name } if name == "pre-receive" => return crate::hook::pre_receive().await,
        Command::Hook { name } => bail!("unknown hook {name:?}"),
        Command::Auth(cmd) => return commands::auth::run(cmd, &data_dir),
        Command::Tls(cmd) => return commands::tls::run(cmd, &data_dir),
        // git's credential helper, written with its server, needs no server to answer.
        Command::Git(commands::git::GitCommand::GitCredential {
            operation,
            server: Some(server),
            token_id,
        }) => {
            return commands::git::credential(&data_dir, &server, token_id.as_deref(), &operation);
        }
        other => other,
    };
    let ctx = Context {
        client: commands::client(&data_dir)?,
        data_dir,
        json: cli.json,
        app: cli.app,
    };
    match command {
        Command::Apps(cmd) => commands::apps::run(cmd, &ctx).await,
        Command::Git(cmd) => commands::git::run(cmd, &ctx).await,
        Command::Config(cmd) => commands::config::run(cmd, &ctx).await,
        Command::Releases(cmd) => commands::releases::run(cmd, &ctx).await,
        Command::Ps(cmd) => commands::ps::run(cmd, &ctx).await,
        Command::Logs(cmd) => commands::logs::run(cmd, &ctx).await,
        Command::Domains(cmd) => commands::domains::run(cmd, &ctx).await,
        Command::Services(cmd) => commands::services::run(cmd, &ctx).await,
        Command::Accounts(cmd) => commands::accounts::run(cmd, &ctx).await,
        Command::Console(cmd) => commands::console::run(cmd, &ctx).await,
        Command::Serve(_) | Command::Hook { .. } | Command::Auth(_) | Command::Tls(_) => {
            Ok(ExitCode::SUCCESS)
        }
    }
}
