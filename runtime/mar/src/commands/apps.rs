//! `mar apps`, `apps:create`, `apps:info`, `apps:destroy`: the apps on the platform.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use mar_core::AppName;

use super::Context;
use super::{print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum AppsCommand {
    /// List apps.
    Apps,
    /// Create an app.
    #[command(name = "apps:create")]
    AppsCreate {
        /// Its name: lowercase letters, digits and '-', starting with a letter, at most 30.
        name: String,
    },
    /// Show an app.
    #[command(name = "apps:info")]
    AppsInfo {
        /// The app (or -a).
        name: Option<String>,
    },
    /// Destroy an app, its releases, processes, repository and logs.
    #[command(name = "apps:destroy")]
    AppsDestroy {
        /// The app.
        name: String,
        /// The app's name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: AppsCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        AppsCommand::Apps => list(ctx).await,
        AppsCommand::AppsCreate { name } => create(ctx, name).await,
        AppsCommand::AppsInfo { name } => info(ctx, name).await,
        AppsCommand::AppsDestroy { name, confirm } => destroy(ctx, name, confirm).await,
    }
}

/// `mar apps`.
async fn list(ctx: &Context) -> anyhow::Result<ExitCode> {
    let apps = ctx.client.apps().await?;
    if ctx.json {
        return print_json(&apps);
    }
    println!("=== Apps");
    for a in apps {
        println!("{}", a.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `mar apps:create NAME`.
async fn create(ctx: &Context, name: String) -> anyhow::Result<ExitCode> {
    AppName::parse(&name)?;
    let app = ctx.client.create_app(&name).await?;
    if ctx.json {
        return print_json(&app);
    }
    println!("Creating {}... done", app.name);
    println!("{} | {}", app.web_url, app.git_url);
    Ok(ExitCode::SUCCESS)
}

/// `mar apps:info [NAME]`.
async fn info(ctx: &Context, name: Option<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(name.or(ctx.app.clone()))?;
    let info = ctx.client.app(app.as_str()).await?;
    if ctx.json {
        return print_json(&info);
    }
    println!("=== {}", info.name);
    println!("Web URL:   {}", info.web_url);
    match &info.secure_url {
        Some(url) => println!("HTTPS URL: {url}"),
        // Apps that redirect to HTTPS when they see DYNO need it (docs/deploying.md#https).
        None => {
            println!("HTTPS:     off (start mar serve with --https-listen ADDRESS to serve it)")
        }
    }
    println!("Git URL:   {}", info.git_url);
    println!("State:     {}", info.state);
    println!(
        "Release:   {}",
        info.release.map_or("none".to_owned(), |v| format!("v{v}"))
    );
    let dynos: Vec<String> = info
        .structure
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    match &info.wasm {
        Some(w) => {
            println!("WASM:      {}", w.description);
            println!(
                "Limits:    {}s per request, {} MiB per instance, {} at once{}",
                w.timeout_secs,
                w.memory_bytes >> 20,
                w.concurrency,
                if w.instance_reuse {
                    ", instances reused"
                } else {
                    ", a fresh instance per request"
                }
            );
        }
        None => println!("Formation: {}", dynos.join(" ")),
    }
    println!("Created:   {}", info.created_at);
    Ok(ExitCode::SUCCESS)
}

/// `mar apps:destroy NAME --confirm NAME`.
async fn destroy(ctx: &Context, name: String, confirm: Option<String>) -> anyhow::Result<ExitCode> {
    let app = AppName::parse(&name)?;
    if confirm.as_deref() != Some(app.as_str()) {
        bail!(
            "this destroys {app}, its releases, repository and logs; run again with --confirm {app}"
        );
    }
    ctx.client.destroy_app(app.as_str()).await?;
    if ctx.json {
        return print_json(&serde_json::json!({ "destroyed": app.as_str() }));
    }
    println!("Destroying {app}... done");
    Ok(ExitCode::SUCCESS)
}
