//! `mar hook pre-receive`: run by git inside a push. It checks the pushed branch, streams
//! `git archive` of the new commit to the platform's build endpoint, and prints the build's
//! output, which git relays to the pusher as `remote:` lines. Its exit status accepts or
//! rejects the push.
//!
//! It runs in the hook's environment, where git's quarantine variables make the pushed (not
//! yet accepted) objects visible, which is why the hook, not the server, reads the tree.

use std::io::Write;
use std::process::{ExitCode, Stdio};

use anyhow::Context;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use mar_sdk::types::{BUILD_RESULT_MARK, BuildResult};
use tokio::io::AsyncBufReadExt;

const ZERO: &str = "0000000000000000000000000000000000000000";

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the pre-receive hook.
pub async fn pre_receive() -> anyhow::Result<ExitCode> {
    let url = std::env::var("MAR_HOOK_URL")
        .context("MAR_HOOK_URL is not set: this command is run by git during a push to mar")?;
    let token = std::env::var("MAR_HOOK_TOKEN").context("MAR_HOOK_TOKEN is not set")?;
    let app = std::env::var("MAR_APP").context("MAR_APP is not set")?;

    let mut updates = Vec::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [old, new, name] = parts[..] {
            updates.push((old.to_owned(), new.to_owned(), name.to_owned()));
        }
    }
    let mut deploy = None;
    for (_, new, name) in &updates {
        let branch = name.strip_prefix("refs/heads/");
        if !matches!(branch, Some("main") | Some("master")) {
            say(&format!(
                " !     mini-MAR deploys only the main or master branch, not {name}."
            ));
            say(" !     Push your branch to main instead: git push mar HEAD:main");
            return Ok(ExitCode::FAILURE);
        }
        if new == ZERO {
            say(&format!(
                " !     Deleting {name} is not allowed: it is the deployed branch."
            ));
            return Ok(ExitCode::FAILURE);
        }
        if deploy.is_some() {
            say(" !     Push main or master, not both at once.");
            return Ok(ExitCode::FAILURE);
        }
        deploy = Some(new.clone());
    }
    let Some(commit) = deploy else {
        return Ok(ExitCode::SUCCESS);
    };

    let mut archive = tokio::process::Command::new("git")
        .args(["archive", "--format=tar", &commit])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run git archive")?;
    let stdout = archive.stdout.take().context("git archive has no stdout")?;
    let body = StreamBody::new(tokio_util::io::ReaderStream::new(stdout).map_ok(Frame::data))
        .boxed_unsync();
    let client = mar_sdk::Client::new(&url, &token)?;
    let mut out = match client.build(&app, &commit, body).await {
        Ok(out) => out,
        Err(e) => {
            say(&format!(" !     {e}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut result: Option<BuildResult> = None;
    while let Some(line) = out.next_line().await? {
        match line.strip_prefix(BUILD_RESULT_MARK) {
            Some(json) => result = serde_json::from_str(json).ok(),
            None => say(&line),
        }
    }
    let _ = archive.wait().await;
    match result {
        Some(r) if r.ok => Ok(ExitCode::SUCCESS),
        Some(_) => Ok(ExitCode::FAILURE),
        None => {
            say(" !     The build stream ended without a result; the push is rejected.");
            Ok(ExitCode::FAILURE)
        }
    }
}
