//! `mar services`, `services:create`, `services:info`, `services:destroy`: service instances
//! (MWS push gateways so far), which apps' clients and servers use through their own APIs.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use super::{Context, print_json, resolve_app};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum ServicesCommand {
    /// List the service instances.
    Services,
    /// Create a service instance: `mar services:create mws NAME` (a push gateway) or
    /// `mar services:create eds NAME` (a data store).
    #[command(name = "services:create")]
    ServicesCreate {
        /// `mws` or `eds`.
        kind: String,
        /// Its name: lowercase letters, digits and '-', starting with a letter.
        name: String,
    },
    /// Show a service instance: its id, secret and address.
    #[command(name = "services:info")]
    ServicesInfo {
        /// The instance.
        name: String,
    },
    /// Attach a service instance to an app: its variables (`MWS_ADDRESS`, `MWS_GATEWAY_ID`,
    /// `MWS_SECRET`, or `EDS_ADDRESS`, `EDS_BACKEND_ID`, `EDS_SECRET`) join the app's
    /// environment as a new release.
    #[command(name = "services:attach")]
    ServicesAttach {
        /// The instance.
        name: String,
    },
    /// Detach a service instance from an app: its variables leave as a new release.
    #[command(name = "services:detach")]
    ServicesDetach {
        /// The instance.
        name: String,
    },
    /// Link an EDS backend to an MWS gateway: every change to the backend's objects is pushed
    /// to the gateway's sockets tagged with the object's readers, with no code in between.
    #[command(name = "services:link")]
    ServicesLink {
        /// The EDS backend.
        eds: String,
        /// The MWS gateway.
        mws: String,
    },
    /// Unlink an EDS backend from an MWS gateway.
    #[command(name = "services:unlink")]
    ServicesUnlink {
        /// The EDS backend.
        eds: String,
        /// The MWS gateway.
        mws: String,
    },
    /// Destroy a service instance; an MWS gateway's sockets are closed.
    #[command(name = "services:destroy")]
    ServicesDestroy {
        /// The instance.
        name: String,
        /// Its name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: ServicesCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        ServicesCommand::Services => {
            let all = ctx.client.services().await?;
            if ctx.json {
                return print_json(&all);
            }
            println!("=== Services");
            for s in all {
                println!("{}  {}  {}", s.name, s.kind, s.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        ServicesCommand::ServicesCreate { kind, name } => {
            let s = ctx.client.create_service(&kind, &name).await?;
            if ctx.json {
                return print_json(&s);
            }
            println!("Creating {} {}... done", s.kind, s.name);
            print_info(&s);
            Ok(ExitCode::SUCCESS)
        }
        ServicesCommand::ServicesInfo { name } => {
            let s = ctx.client.service(&name).await?;
            if ctx.json {
                return print_json(&s);
            }
            print_info(&s);
            Ok(ExitCode::SUCCESS)
        }
        ServicesCommand::ServicesAttach { name } => {
            let app = resolve_app(ctx.app.clone())?;
            let a = ctx.client.attach_service(&name, app.as_str()).await?;
            if ctx.json {
                return print_json(&a);
            }
            println!(
                "Attaching {name} to {app}... done, {} set",
                a.vars.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        ServicesCommand::ServicesDetach { name } => {
            let app = resolve_app(ctx.app.clone())?;
            let a = ctx.client.detach_service(&name, app.as_str()).await?;
            if ctx.json {
                return print_json(&a);
            }
            println!(
                "Detaching {name} from {app}... done, {} unset",
                a.vars.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        ServicesCommand::ServicesLink { eds, mws } => {
            let v = ctx.client.link_services(&eds, &mws).await?;
            if ctx.json {
                return print_json(&v);
            }
            println!("Linking {eds} to {mws}... done: its changes reach {mws}'s sockets");
            Ok(ExitCode::SUCCESS)
        }
        ServicesCommand::ServicesUnlink { eds, mws } => {
            let v = ctx.client.unlink_services(&eds, &mws).await?;
            if ctx.json {
                return print_json(&v);
            }
            println!("Unlinking {eds} from {mws}... done");
            Ok(ExitCode::SUCCESS)
        }
        ServicesCommand::ServicesDestroy { name, confirm } => {
            if confirm.as_deref() != Some(name.as_str()) {
                bail!(
                    "this destroys the service {name} and closes its connections; run again with --confirm {name}"
                );
            }
            ctx.client.destroy_service(&name).await?;
            if ctx.json {
                return print_json(&serde_json::json!({}));
            }
            println!("Destroying {name}... done");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_info(s: &mar_sdk::types::ServiceInfo) {
    println!("=== {}", s.name);
    println!("Kind:    {}", s.kind);
    println!("Id:      {}", s.id);
    if s.kind == "eds" {
        println!("Master key: {}", s.secret);
        if let Some(k) = &s.api_key {
            println!("API key: {k}");
        }
        println!("Address: {}", s.address);
    } else {
        println!("Secret:  {}", s.secret);
        println!("Address: {}", s.address);
        println!("Access:  {}", s.access);
    }
    println!("Created: {}", s.created_at);
}
