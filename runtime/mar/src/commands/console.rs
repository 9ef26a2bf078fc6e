//! `mar console:password`: a password for the web console's sign-in, beside the admin token
//! (which is long, and awkward to type on a phone).

use std::process::ExitCode;

use clap::Subcommand;

use super::{Context, print_json};

/// The commands of this topic.
#[derive(Subcommand, Debug)]
pub(crate) enum ConsoleCommand {
    /// Set the web console's password, read from standard input (one line, 12 bytes or
    /// more): `echo "$PASSWORD" | mar console:password`. The admin token still signs in too;
    /// ten failed sign-ins from one address lock it out for ten minutes.
    #[command(name = "console:password")]
    ConsolePassword {
        /// Remove the password: only the admin token signs in from then on.
        #[arg(long)]
        clear: bool,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: ConsoleCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let ConsoleCommand::ConsolePassword { clear } = cmd;
    if clear {
        ctx.client.clear_console_password().await?;
        if ctx.json {
            return print_json(&serde_json::json!({ "set": false }));
        }
        println!("The console takes the admin token only now.");
        return Ok(ExitCode::SUCCESS);
    }
    let password = super::password_from_stdin("mar console:password")?;
    ctx.client.set_console_password(&password).await?;
    if ctx.json {
        return print_json(&serde_json::json!({ "set": true }));
    }
    println!("The console takes this password, or the admin token, to sign in.");
    Ok(ExitCode::SUCCESS)
}
