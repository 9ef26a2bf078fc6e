//! `mar releases`, `releases:info`, `rollback`: an app's release history.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::Context;
use super::{print_config, print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum ReleasesCommand {
    /// List releases.
    Releases,
    /// Show one release.
    #[command(name = "releases:info")]
    ReleasesInfo {
        /// `vN` or `N`.
        version: String,
    },
    /// Roll back to an earlier release (default: the one before the current).
    Rollback {
        /// `vN` or `N`.
        version: Option<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: ReleasesCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        ReleasesCommand::Releases => list(ctx).await,
        ReleasesCommand::ReleasesInfo { version } => info(ctx, version).await,
        ReleasesCommand::Rollback { version } => rollback(ctx, version).await,
    }
}

/// `mar releases`.
async fn list(ctx: &Context) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let releases = ctx.client.releases(app.as_str()).await?;
    if ctx.json {
        return print_json(&releases);
    }
    println!("=== {app} Releases");
    for r in releases {
        let mark = if r.current { " (current)" } else { "" };
        println!(
            "v{:<4} {:<40} {}{mark}",
            r.version, r.description, r.created_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mar releases:info vN`.
async fn info(ctx: &Context, version: String) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let v = parse_version(&version)?;
    let r = ctx.client.release(app.as_str(), v).await?;
    if ctx.json {
        return print_json(&r);
    }
    println!(
        "=== Release v{}{}",
        r.version,
        if r.current { " (current)" } else { "" }
    );
    println!("Change:      {}", r.description);
    println!("When:        {}", r.created_at);
    println!("Commit:      {}", r.commit.as_deref().unwrap_or("-"));
    println!("Buildpacks:  {}", r.buildpacks.join(", "));
    println!("Slug size:   {} bytes", r.slug_size);
    let types: Vec<String> = r
        .process_types
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!("Processes:   {}", types.join("; "));
    print_config(&app, &r.config.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// `mar rollback [vN]`.
async fn rollback(ctx: &Context, version: Option<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let v = version.as_deref().map(parse_version).transpose()?;
    eprint!("Rolling back {app}... ");
    let r = ctx.client.rollback(app.as_str(), v).await?;
    eprintln!("done, v{}", r.version);
    if ctx.json {
        return print_json(&r);
    }
    println!("{}", r.description);
    Ok(ExitCode::SUCCESS)
}

/// `v3` or `3`.
fn parse_version(v: &str) -> anyhow::Result<i64> {
    v.trim_start_matches('v')
        .parse()
        .with_context(|| format!("{v:?} is not a release version like v3"))
}
