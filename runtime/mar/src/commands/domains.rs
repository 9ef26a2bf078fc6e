//! `mar domains`, `domains:add`, `domains:remove`: an app's custom domains.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use mar_core::AppName;

use super::Context;
use super::{print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum DomainsCommand {
    /// List an app's custom domains.
    Domains {
        /// The app (or -a).
        name: Option<String>,
    },
    /// Route a custom domain to an app: `mar domains:add APP www.example.com`.
    #[command(name = "domains:add")]
    DomainsAdd {
        /// `APP DOMAIN`, or `DOMAIN` with -a.
        #[arg(required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
    /// Stop routing a custom domain: `mar domains:remove APP www.example.com`.
    #[command(name = "domains:remove")]
    DomainsRemove {
        /// `APP DOMAIN`, or `DOMAIN` with -a.
        #[arg(required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: DomainsCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        DomainsCommand::Domains { name } => list(ctx, name).await,
        DomainsCommand::DomainsAdd { args } => add(ctx, args).await,
        DomainsCommand::DomainsRemove { args } => remove(ctx, args).await,
    }
}

/// `mar domains [APP]`.
async fn list(ctx: &Context, name: Option<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(name.or(ctx.app.clone()))?;
    let domains = ctx.client.domains(app.as_str()).await?;
    if ctx.json {
        return print_json(&domains);
    }
    println!("=== {app} Custom Domains");
    for d in domains {
        println!("{d}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `mar domains:add [APP] DOMAIN`.
async fn add(ctx: &Context, args: Vec<String>) -> anyhow::Result<ExitCode> {
    let (app, domain) = app_and_domain(args, ctx.app.clone())?;
    let domains = ctx.client.add_domain(app.as_str(), &domain).await?;
    if ctx.json {
        return print_json(&domains);
    }
    println!("Added {domain} to {app}: point its DNS at this server");
    Ok(ExitCode::SUCCESS)
}

/// `mar domains:remove [APP] DOMAIN`.
async fn remove(ctx: &Context, args: Vec<String>) -> anyhow::Result<ExitCode> {
    let (app, domain) = app_and_domain(args, ctx.app.clone())?;
    let domains = ctx.client.remove_domain(app.as_str(), &domain).await?;
    if ctx.json {
        return print_json(&domains);
    }
    println!("Removed {domain} from {app}");
    Ok(ExitCode::SUCCESS)
}

/// `[APP] DOMAIN` (the app may also come from -a or the git remote).
fn app_and_domain(mut args: Vec<String>, app: Option<String>) -> anyhow::Result<(AppName, String)> {
    let domain = args.pop().context("which domain?")?;
    let app = resolve_app(args.pop().or(app))?;
    Ok((app, domain))
}
