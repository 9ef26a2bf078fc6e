//! `mar git:remote`: the `mar` git remote that deploys by `git push`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::Context;
use super::{api_token, print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum GitCommand {
    /// Add a `mar` git remote for an app to the repository in the current directory.
    #[command(name = "git:remote")]
    GitRemote {
        /// The app (or -a).
        name: Option<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: GitCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        GitCommand::GitRemote { name } => remote(ctx, name).await,
    }
}

/// `mar git:remote [APP]`: the remote carries the token as its password.
async fn remote(ctx: &Context, name: Option<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(name.or(ctx.app.clone()))?;
    let info = ctx.client.app(app.as_str()).await?;
    let base = ctx.client.base().to_owned();
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base.as_str()));
    let token = api_token(&ctx.data_dir)?;
    let url = format!("{scheme}://git:{token}@{rest}/{}.git", info.name);
    let repo = git2::Repository::discover(".")
        .context("not inside a git repository; run `git init` first")?;
    if repo.find_remote("mar").is_ok() {
        repo.remote_set_url("mar", &url)?;
    } else {
        repo.remote("mar", &url)?;
    }
    if ctx.json {
        return print_json(&serde_json::json!({ "remote": "mar", "app": info.name }));
    }
    println!("set git remote mar to {scheme}://{rest}/{}.git", info.name);
    Ok(ExitCode::SUCCESS)
}
