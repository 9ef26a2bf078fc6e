//! `mar accounts`, `accounts:create`, `accounts:destroy`: the platform's accounts, which sign in
//! to the account API of the Enginio dashboard era and make EDS backends there.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use super::{Context, print_json};

/// The accounts commands.
#[derive(Debug, Subcommand)]
pub(crate) enum AccountsCommand {
    /// List the accounts.
    Accounts,
    /// Create an account; its password is read from standard input (one line, 8 bytes or
    /// more): `echo "$PASSWORD" | mar accounts:create EMAIL`.
    #[command(name = "accounts:create")]
    AccountsCreate {
        /// Its email, the name it signs in with.
        email: String,
    },
    /// Destroy an account and its apps' backends.
    #[command(name = "accounts:destroy")]
    AccountsDestroy {
        /// The account.
        email: String,
        /// Its email again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: AccountsCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        AccountsCommand::Accounts => {
            let v = ctx.client.accounts().await?;
            if ctx.json {
                return print_json(&v);
            }
            println!("=== Accounts");
            for a in v["results"].as_array().into_iter().flatten() {
                println!("{}", a["email"].as_str().unwrap_or("?"));
            }
            Ok(ExitCode::SUCCESS)
        }
        AccountsCommand::AccountsCreate { email } => {
            let password = super::password_from_stdin(&format!("mar accounts:create {email}"))?;
            let v = ctx.client.create_account(&email, &password).await?;
            if ctx.json {
                return print_json(&v);
            }
            println!("Creating account {email}... done");
            Ok(ExitCode::SUCCESS)
        }
        AccountsCommand::AccountsDestroy { email, confirm } => {
            if confirm.as_deref() != Some(email.as_str()) {
                bail!(
                    "this destroys the account {email} and its apps' data; run again with --confirm {email}"
                );
            }
            ctx.client.destroy_account(&email).await?;
            if ctx.json {
                return print_json(&serde_json::json!({}));
            }
            println!("Destroying account {email}... done");
            Ok(ExitCode::SUCCESS)
        }
    }
}
