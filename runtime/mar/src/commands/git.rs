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
    /// Answer git's credential protocol for the `mar` remote (git runs this: see
    /// `git:remote`): the admin token, for the server's own address only.
    #[command(name = "git:credential", hide = true)]
    GitCredential {
        /// What git asks: `get` (answered), `store` or `erase` (nothing is stored).
        operation: String,
        /// The server to answer for (`git:remote` writes it into the helper, so a push needs
        /// no `MAR_API_URL`); without it, the server the CLI would talk to.
        #[arg(long)]
        server: Option<String>,
        /// Which token that server takes: the first 16 hex digits of its SHA-256, written by
        /// `git:remote` from the token it used there. Only a token (`MAR_TOKEN` or the local
        /// server's) with this id is given, so no other server's token leaves this machine.
        #[arg(long)]
        token_id: Option<String>,
    },
}

/// Runs one command of this topic.
pub(crate) async fn run(cmd: GitCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        GitCommand::GitRemote { name } => remote(ctx, name).await,
        GitCommand::GitCredential {
            operation,
            server,
            token_id,
        } => match server {
            Some(server) => credential(&ctx.data_dir, &server, token_id.as_deref(), &operation),
            // No server named: the one the CLI talks to, with the token it talks with.
            None => {
                let token = api_token(&ctx.data_dir)?;
                let id = token_id_of(&token);
                credential(&ctx.data_dir, ctx.client.base(), Some(&id), &operation)
            }
        },
    }
}

/// The scheme and the authority (`host:port`) of the server's API URL.
fn scheme_and_authority(base: &str) -> (&str, &str) {
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    (scheme, rest.split('/').next().unwrap_or(rest))
}

/// A token's id: the first 16 hex digits of its SHA-256 (a token is 256 random bits, so the id
/// tells nothing of it), which tells the credential helper which token a server takes.
pub(crate) fn token_id_of(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.trim().as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `mar git:credential get`: reads git's request (`key=value` lines up to a blank one) and
/// answers only when git is talking to `server`, and only with the token whose id is
/// `token_id` (`MAR_TOKEN`, else the local server's): a helper configured too widely, or a
/// `MAR_TOKEN` meant for another server, gives nothing away.
pub(crate) fn credential(
    data_dir: &std::path::Path,
    server: &str,
    token_id: Option<&str>,
    operation: &str,
) -> anyhow::Result<ExitCode> {
    if operation != "get" {
        return Ok(ExitCode::SUCCESS);
    }
    let mut asked = std::collections::HashMap::new();
    for line in std::io::stdin().lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            asked.insert(k.to_owned(), v.to_owned());
        }
    }
    let (scheme, authority) = scheme_and_authority(server);
    let asked_here = asked.get("protocol").map(String::as_str) == Some(scheme)
        && asked.get("host").map(String::as_str) == Some(authority);
    let Some(wanted) = token_id.filter(|_| asked_here) else {
        return Ok(ExitCode::SUCCESS);
    };
    let candidates = [
        std::env::var("MAR_TOKEN").ok().filter(|t| !t.is_empty()),
        super::token(data_dir).ok(),
    ];
    if let Some(token) = candidates
        .into_iter()
        .flatten()
        .find(|t| token_id_of(t) == wanted)
    {
        println!("username=git\npassword={}", token.trim());
    }
    Ok(ExitCode::SUCCESS)
}

/// `mar git:remote [APP]`: a remote URL with no secret in it, and `mar git:credential` as
/// the git credential helper for that server alone, so the token never sits in the
/// repository's `.git/config` (nor in a copy of the repository).
async fn remote(ctx: &Context, name: Option<String>) -> anyhow::Result<ExitCode> {
    let app = resolve_app(name.or(ctx.app.clone()))?;
    let info = ctx.client.app(app.as_str()).await?;
    let base = ctx.client.base().trim_end_matches('/').to_owned();
    let (scheme, authority) = scheme_and_authority(&base);
    let server = format!("{scheme}://{authority}");
    let url = format!("{base}/{}.git", info.name);
    let repo = git2::Repository::discover(".")
        .context("not inside a git repository; run `git init` first")?;
    if repo.find_remote("mar").is_ok() {
        repo.remote_set_url("mar", &url)?;
    } else {
        repo.remote("mar", &url)?;
    }
    // An empty helper first clears helpers configured elsewhere (a keychain would store the
    // token); then mar answers for this server, with the data directory it was set up with.
    let exe = std::env::current_exe().context("cannot find the mar executable")?;
    let data_dir = std::fs::canonicalize(&ctx.data_dir).unwrap_or_else(|_| ctx.data_dir.clone());
    // The token the API call above was made with: the one this server takes.
    let token_id = token_id_of(&api_token(&ctx.data_dir)?);
    let helper = format!(
        "!{} --data-dir {} git:credential --server {} --token-id {token_id}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&data_dir.to_string_lossy()),
        shell_quote(&server)
    );
    let key = format!("credential.{server}.helper");
    let git_dir = repo.path().to_owned();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&git_dir)
            .args(["config", "--local"])
            .args(args)
            .output()
    };
    // What this command wrote for a server the repository no longer deploys to (mar serve
    // moved to another address) goes: its helper and the root it gave git for it, and
    // nothing else the user keeps in those sections.
    let remote_urls: Vec<String> = repo
        .remotes()
        .map(|names| {
            names
                .iter()
                .flatten()
                .filter_map(|n| repo.find_remote(n).ok()?.url().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(out) = git(&["--get-regexp", r"^credential\..*\.helper$"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((name, value)) = line.split_once(' ') else {
                continue;
            };
            let Some(old) = name
                .strip_prefix("credential.")
                .and_then(|n| n.strip_suffix(".helper"))
            else {
                continue;
            };
            // Stale: mar's helper for a server no remote of the repository points at any
            // more (another mar server that a remote still uses keeps its own).
            let still_used = remote_urls
                .iter()
                .any(|u| u.starts_with(&format!("{old}/")));
            if value.contains(" git:credential") && old != server && !still_used {
                let _ = git(&["--unset-all", &format!("credential.{old}.helper")]);
                let _ = git(&["--unset-all", &format!("http.{old}/.sslcainfo")]);
            }
        }
    }
    let _ = git(&["--unset-all", &key]);
    for value in ["", helper.as_str()] {
        let out = git(&["--add", &key, value]).context("cannot run git")?;
        anyhow::ensure!(
            out.status.success(),
            "git config --add {key} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // git checks an HTTPS server's certificate against the system's roots unless told
    // otherwise: when the CLI trusted it only through MAR_CA_CERT or the local authority,
    // git is given the same file, for this server alone.
    let ca_file = if ctx.client.system_roots_suffice().await? {
        None
    } else {
        super::extra_ca_file(&ctx.data_dir)
    };
    let ca_key = format!("http.{server}/.sslCAInfo");
    let _ = git(&["--unset-all", &ca_key]);
    if let Some(ca) = &ca_file {
        let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        let out = git(&[&ca_key, &ca.to_string_lossy()]).context("cannot run git")?;
        anyhow::ensure!(
            out.status.success(),
            "git config {ca_key} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if ctx.json {
        return print_json(&serde_json::json!({ "remote": "mar", "app": info.name, "url": url }));
    }
    println!("set git remote mar to {url}");
    if let Some(ca) = &ca_file {
        println!(
            "git trusts {server}'s certificate through {} (http.sslCAInfo for that server)",
            ca.display()
        );
    }
    println!(
        "git asks mar for the token (credential helper for {server}); if mar serve moves to another address, run mar git:remote again"
    );
    Ok(ExitCode::SUCCESS)
}

/// `text` in single quotes for the shell git runs a `!` helper with.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
