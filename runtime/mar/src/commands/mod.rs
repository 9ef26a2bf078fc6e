//! The client commands, one module per topic (as cargo's `src/bin/cargo/commands/`): each
//! holds the clap definitions of its commands and their code. A new topic (say `services:*`)
//! is one new module here and one line in `cli.rs`. This module holds what they share: the
//! context of a run, how to reach the server, and the printing helpers.

pub(crate) mod accounts;
pub(crate) mod apps;
pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod console;
pub(crate) mod domains;
pub(crate) mod git;
pub(crate) mod logs;
pub(crate) mod ps;
pub(crate) mod releases;
pub(crate) mod serve;
pub(crate) mod services;
pub(crate) mod terminal;
pub(crate) mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use mar_core::AppName;
use mar_sdk::Client;

/// What every client command gets: the API client and the global options.
pub(crate) struct Context {
    /// The client of the server's API.
    pub client: Client,
    /// The data directory of the local server (for its token).
    pub data_dir: PathBuf,
    /// `--json`: print JSON instead of text.
    pub json: bool,
    /// `-a APP`, if given.
    pub app: Option<String>,
}

/// Prints `v` as pretty JSON (for `--json`).
pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

/// Prints config vars as `KEY: value`, aligned.
pub(crate) fn print_config(app: &AppName, config: &BTreeMap<String, String>) {
    println!("=== {app} Config Vars");
    let width = config.keys().map(String::len).max().unwrap_or(0) + 1;
    for (k, v) in config {
        println!("{:<width$} {v}", format!("{k}:"));
    }
}

/// The app named on the command line, else the app of the `mar` git remote.
pub(crate) fn resolve_app(name: Option<String>) -> anyhow::Result<AppName> {
    if let Some(name) = name {
        return Ok(AppName::parse(&name)?);
    }
    let from_remote = git2::Repository::discover(".").ok().and_then(|repo| {
        let remote = repo.find_remote("mar").ok()?;
        let url = remote.url()?.to_owned();
        let last = url.trim_end_matches('/').rsplit('/').next()?.to_owned();
        AppName::parse(last.strip_suffix(".git").unwrap_or(&last)).ok()
    });
    from_remote.context("no app given: pass -a APP, or run inside a repository with a `mar` git remote (`mar git:remote APP`)")
}

/// The admin token the local server wrote in its data directory.
pub(crate) fn token(data_dir: &Path) -> anyhow::Result<String> {
    secret(&data_dir.join("token"), "admin token")
}

/// A token file of the local server's, named `what` in the error.
pub(crate) fn secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the {what} at {} (has `mar serve` run with this data directory?)",
            path.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

/// A password given on standard input (one line, its line end dropped), so that it is in no
/// command line or shell history; `usage` is the command, for the error when there is none.
pub(crate) fn password_from_stdin(usage: &str) -> anyhow::Result<String> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        !password.is_empty(),
        "give the password on standard input: echo \"$PASSWORD\" | {usage}"
    );
    Ok(password.to_owned())
}

/// `MAR_TOKEN`, else the local server's token.
pub(crate) fn api_token(data_dir: &Path) -> anyhow::Result<String> {
    match std::env::var("MAR_TOKEN") {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => token(data_dir),
    }
}

/// The API client: `MAR_API_URL` and `MAR_TOKEN`, else the local server's data directory.
/// An `https://` URL is checked against the system's roots, `MAR_CA_CERT`'s and the local
/// server's own authority (`mar tls:ca`), when this machine has one.
pub(crate) fn client(data_dir: &Path) -> anyhow::Result<Client> {
    let url = match std::env::var("MAR_API_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => local_server_url(data_dir)?,
    };
    let local_ca: Vec<PathBuf> = local_ca_file(data_dir).into_iter().collect();
    Ok(Client::with_ca_files(
        &url,
        &api_token(data_dir)?,
        &local_ca,
    )?)
}

/// The local server's certificate authority (`mar tls:ca`), when this machine has one.
fn local_ca_file(data_dir: &Path) -> Option<PathBuf> {
    Some(data_dir.join("tls").join(mar_runtime::tls::CA_CERT)).filter(|ca| ca.is_file())
}

/// The root file the client trusts beyond the system's: `MAR_CA_CERT`, else the local
/// server's authority.
pub(crate) fn extra_ca_file(data_dir: &Path) -> Option<PathBuf> {
    std::env::var_os("MAR_CA_CERT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| local_ca_file(data_dir))
}

/// Longest wait for a local server that is starting to say where it listens.
const STARTING_SERVER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest wait for any sign of a server (a `serve.json`, a holder of `serve.lock`) before
/// saying there is none: a server started a moment ago may not have taken its lock yet.
const NO_SERVER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The address the local server recorded in `serve.json`. A server that holds the data
/// directory (its pid is in `serve.lock`) but has not written `serve.json` yet, or whose
/// `serve.json` is a crashed predecessor's, is starting: wait for it, so that `mar serve &`
/// followed by a command works in a script as it does at a keyboard.
fn local_server_url(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("serve.json");
    let started = std::time::Instant::now();
    let mut deadline = started + NO_SERVER_GRACE;
    loop {
        let recorded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let holder = std::fs::read_to_string(data_dir.join("serve.lock"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
        let written_by_holder = match (&recorded, holder) {
            (Some(v), Some(pid)) => v["pid"].as_u64() == Some(u64::from(pid)),
            // No live holder: whatever is recorded is all there is to go on.
            (Some(_), None) => true,
            (None, _) => false,
        };
        if holder.is_some() {
            deadline = started + STARTING_SERVER_WAIT;
        }
        if written_by_holder || std::time::Instant::now() >= deadline {
            let v = recorded.with_context(|| {
                format!("no running mar server found ({} is missing or unreadable): start `mar serve`, or set MAR_API_URL and MAR_TOKEN", path.display())
            })?;
            return Ok(v["url"]
                .as_str()
                .context("serve.json has no url")?
                .to_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
