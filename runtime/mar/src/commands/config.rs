//! `mar config`, `config:set`, `config:unset`: an app's config vars; each change is a release.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use mar_core::AppName;

use super::Context;
use super::{print_config, print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Show config vars.
    Config,
    /// Set config vars (K=V ...); makes a release and restarts the app.
    #[command(name = "config:set")]
    ConfigSet {
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Unset config vars; makes a release and restarts the app.
    #[command(name = "config:unset")]
    ConfigUnset {
        /// Names.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: ConfigCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Config => show(ctx).await,
        ConfigCommand::ConfigSet { pairs } => set(ctx, pairs).await,
        ConfigCommand::ConfigUnset { keys } => unset(ctx, keys).await,
    }
}

/// `mar config`.
async fn show(ctx: &Context) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let config = ctx.client.config(app.as_str()).await?;
    if ctx.json {
        return print_json(&config);
    }
    print_config(&app, &config);
    // Variables an attached service owns: detaching the service removes them.
    for a in ctx.client.attachments(app.as_str()).await? {
        println!(
            "(attached: {} ({}) sets {})",
            a.service,
            a.kind,
            a.vars.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mar config:set K=V...`.
async fn set(ctx: &Context, pairs: Vec<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let mut changes = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("{pair:?} is not KEY=VALUE");
        };
        changes.insert(k.to_owned(), Some(v.to_owned()));
    }
    let keys: Vec<String> = changes.keys().cloned().collect();
    let config = change(ctx, &app, "Setting", &keys, &changes).await?;
    if ctx.json {
        return print_json(&config);
    }
    let shown: BTreeMap<String, String> = config
        .into_iter()
        .filter(|(k, _)| keys.contains(k))
        .collect();
    print_config(&app, &shown);
    Ok(ExitCode::SUCCESS)
}

/// Sends a config change (a new release; the app restarts) and says which release it made.
async fn change(
    ctx: &Context,
    app: &AppName,
    verb: &str,
    keys: &[String],
    changes: &BTreeMap<String, Option<String>>,
) -> anyhow::Result<BTreeMap<String, String>> {
    apply(ctx, app, &format!("{verb} {}", keys.join(", ")), changes).await
}

/// Sends a config change as `doing` (`Resizing`, `Setting K`), then says which release it made.
pub(crate) async fn apply(
    ctx: &Context,
    app: &AppName,
    doing: &str,
    changes: &BTreeMap<String, Option<String>>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let latest = || async {
        anyhow::Ok(
            ctx.client
                .releases(app.as_str())
                .await?
                .first()
                .map(|r| r.version),
        )
    };
    let before = latest().await?;
    // Nothing to change (unsetting what is not set, setting a value again): said plainly,
    // and the server makes no release of it either.
    let current = ctx.client.config(app.as_str()).await?;
    if changes.iter().all(|(k, v)| current.get(k) == v.as_ref()) {
        eprintln!(
            "{doing}: nothing to change, {app} stays at v{}",
            before.unwrap_or(0)
        );
        return Ok(current);
    }
    eprint!("{doing} and restarting {app}... ");
    // A refusal ends the progress line first, so its reason has a line of its own.
    let config = match ctx.client.update_config(app.as_str(), changes).await {
        Ok(config) => config,
        Err(e) => {
            eprintln!("!");
            return Err(e.into());
        }
    };
    eprintln!("done, v{}", latest().await?.unwrap_or(0));
    Ok(config)
}

/// `mar config:unset K...`.
async fn unset(ctx: &Context, keys: Vec<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(ctx.app.clone())?;
    let changes: BTreeMap<String, Option<String>> =
        keys.iter().map(|k| (k.clone(), None)).collect();
    let config = change(ctx, &app, "Unsetting", &keys, &changes).await?;
    if ctx.json {
        return print_json(&config);
    }
    Ok(ExitCode::SUCCESS)
}
