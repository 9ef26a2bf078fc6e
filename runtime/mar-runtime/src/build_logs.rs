//! Each app's builds as the web console shows them: a record per push (when, which commit,
//! running, succeeded or failed, the release it made) and its output, which a running build's
//! followers get line by line as the pusher does, and which stays readable after it ends.
//!
//! A running build's output is in memory (at most [`MAX_OUTPUT`]); when it ends it is written
//! beside its record under `apps/APP/build-output/` (root's, 0700: build output can hold what
//! an app's build printed of its config), where the last [`KEEP`] builds of an app stay. A
//! build that `mar serve` did not see end (it was stopped) is listed as failed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mar_core::AppName;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::paths::Paths;

/// Most output kept of one build.
const MAX_OUTPUT: usize = 1 << 20;
/// Builds kept per app.
const KEEP: usize = 20;

/// One build's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct BuildRecord {
    /// Its id (sortable: the start time in milliseconds).
    pub id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once it ended.
    pub finished_at: Option<String>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// The release it made.
    pub release: Option<i64>,
    /// The pushed commit.
    pub commit: Option<String>,
}

struct Running {
    record: Mutex<BuildRecord>,
    output: Mutex<Kept>,
    /// Whether it ended; every new line notifies too.
    progress: watch::Sender<bool>,
}

/// A running build's output so far.
#[derive(Default)]
struct Kept {
    lines: Vec<String>,
    bytes: usize,
}

/// Every app's builds.
pub(crate) struct BuildLogs {
    paths: Paths,
    running: Mutex<HashMap<(AppName, String), Arc<Running>>>,
}

/// What a reader of a build's output gets.
pub(crate) enum BuildOutput {
    /// A running build: lines as they come, ending with the build.
    Following(mpsc::Receiver<String>),
    /// An ended build's whole output.
    Ended(String),
}

impl BuildLogs {
    pub(crate) fn new(paths: Paths) -> Self {
        Self {
            paths,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, app: &AppName) -> PathBuf {
        self.paths.app(app).join("build-output")
    }

    /// Records a build of `app` from `rx` (the build's output, result line last) and hands the
    /// lines on through the returned receiver, to the pusher. When the pusher stops reading,
    /// so does this, which stops the build as before.
    pub(crate) fn record(
        self: &Arc<Self>,
        app: &AppName,
        commit: &str,
        mut rx: mpsc::Receiver<String>,
    ) -> mpsc::Receiver<String> {
        let now = std::time::SystemTime::now();
        let millis = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let id = format!("{millis:015}");
        let record = BuildRecord {
            id: id.clone(),
            started_at: humantime::format_rfc3339_seconds(now).to_string(),
            finished_at: None,
            status: "running".into(),
            release: None,
            commit: (!commit.is_empty()).then(|| commit.to_owned()),
        };
        self.save_record(app, &record);
        let running = Arc::new(Running {
            record: Mutex::new(record),
            output: Mutex::default(),
            progress: watch::channel(false).0,
        });
        lock(&self.running).insert((app.clone(), id.clone()), running.clone());
        let (tx, out) = mpsc::channel(mar_build::OUTPUT_BACKLOG);
        let (logs, app) = (self.clone(), app.clone());
        tokio::spawn(async move {
            let mut result = None;
            while let Some(line) = rx.recv().await {
                match line.strip_prefix(mar_sdk::types::BUILD_RESULT_MARK) {
                    Some(json) => {
                        result = serde_json::from_str::<mar_sdk::types::BuildResult>(json).ok()
                    }
                    None => running.push(&line),
                }
                if tx.send(line).await.is_err() {
                    running.push("-----> The pusher hung up: the build was stopped");
                    break;
                }
            }
            drop(rx);
            logs.finish(&app, &id, &running, result);
        });
        out
    }

    fn finish(
        &self,
        app: &AppName,
        id: &str,
        running: &Running,
        result: Option<mar_sdk::types::BuildResult>,
    ) {
        let record = {
            let mut r = lock(&running.record);
            r.finished_at =
                Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
            r.status = match &result {
                Some(r) if r.ok => "succeeded",
                _ => "failed",
            }
            .into();
            r.release = result.and_then(|r| r.release);
            r.clone()
        };
        let text = {
            let mut t = lock(&running.output).lines.join("\n");
            t.push('\n');
            t
        };
        let dir = self.dir(app);
        if let Err(e) = write_private(&dir.join(format!("{id}.log")), text.as_bytes()) {
            tracing::warn!("cannot keep the output of build {id} of {app}: {e}");
        }
        self.save_record(app, &record);
        lock(&self.running).remove(&(app.clone(), id.to_owned()));
        running.progress.send_replace(true);
        self.prune(app);
    }

    fn save_record(&self, app: &AppName, record: &BuildRecord) {
        let dir = self.dir(app);
        let json = serde_json::to_vec(record).unwrap_or_default();
        if let Err(e) = write_private(&dir.join(format!("{}.json", record.id)), &json) {
            tracing::warn!(
                "cannot keep the record of build {} of {app}: {e}",
                record.id
            );
        }
    }

    /// `app`'s builds, newest first.
    pub(crate) fn list(&self, app: &AppName) -> Vec<BuildRecord> {
        let mut records: Vec<BuildRecord> = std::fs::read_dir(self.dir(app))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<BuildRecord>(&b).ok())
            .collect();
        let running = lock(&self.running);
        for r in &mut records {
            if r.status == "running" && !running.contains_key(&(app.clone(), r.id.clone())) {
                // `mar serve` stopped during it.
                r.status = "failed".into();
            }
        }
        records.sort_by(|a, b| b.id.cmp(&a.id));
        records
    }

    /// A build's output: followed while it runs, whole once it ended; `None` for no such build.
    pub(crate) fn output(&self, app: &AppName, id: &str) -> Option<BuildOutput> {
        if !id.bytes().all(|b| b.is_ascii_digit()) || id.is_empty() {
            return None;
        }
        let running = lock(&self.running)
            .get(&(app.clone(), id.to_owned()))
            .cloned();
        let Some(running) = running else {
            let dir = self.dir(app);
            return match std::fs::read_to_string(dir.join(format!("{id}.log"))) {
                Ok(text) => Some(BuildOutput::Ended(text)),
                Err(_) if dir.join(format!("{id}.json")).exists() => {
                    Some(BuildOutput::Ended(String::new()))
                }
                Err(_) => None,
            };
        };
        let (tx, rx) = mpsc::channel(mar_build::OUTPUT_BACKLOG);
        let mut progress = running.progress.subscribe();
        tokio::spawn(async move {
            let mut sent = 0;
            loop {
                // Whether it ended, read before the lines: no line comes after the end.
                let done = *progress.borrow_and_update();
                let fresh = lock(&running.output).lines[sent..].to_vec();
                sent += fresh.len();
                for l in fresh {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                if done || progress.changed().await.is_err() {
                    return;
                }
            }
        });
        Some(BuildOutput::Following(rx))
    }

    /// Keeps the last [`KEEP`] builds of `app`.
    fn prune(&self, app: &AppName) {
        let dir = self.dir(app);
        for old in self.list(app).iter().skip(KEEP) {
            let _ = std::fs::remove_file(dir.join(format!("{}.json", old.id)));
            let _ = std::fs::remove_file(dir.join(format!("{}.log", old.id)));
        }
    }
}

impl Running {
    fn push(&self, line: &str) {
        {
            let mut kept = lock(&self.output);
            if kept.bytes >= MAX_OUTPUT {
                return;
            }
            kept.bytes += line.len() + 1;
            let line = if kept.bytes >= MAX_OUTPUT {
                "-----> (the rest of this build's output is not kept)"
            } else {
                line
            };
            kept.lines.push(line.to_owned());
        }
        // Wakes the followers (the value stays: not ended).
        self.progress.send_modify(|_| {});
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a build's file, root's alone, in `build-output/`, root's alone too. Only that last
/// directory is made private: the app's own directory may not exist yet (a first push), and
/// made 0700 here it would shut the app's build out of its cache (the deploy sets its mode,
/// 0711, later).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if let Some(app_dir) = dir.parent() {
            std::fs::create_dir_all(app_dir)?;
        }
        crate::private_files::private_dir(dir)?;
    }
    crate::private_files::write_private(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_build_is_followed_while_it_runs_and_read_after_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(BuildLogs::new(Paths::new(dir.path())));
        let app = AppName::parse("built").unwrap();
        let (tx, rx) = mpsc::channel(16);
        let mut pusher = logs.record(&app, "abc123", rx);
        tx.send("-----> Building".into()).await.unwrap();
        assert_eq!(pusher.recv().await.unwrap(), "-----> Building");
        let list = logs.list(&app);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, "running");
        assert_eq!(list[0].commit.as_deref(), Some("abc123"));
        let Some(BuildOutput::Following(mut follower)) = logs.output(&app, &list[0].id) else {
            panic!("not followed");
        };
        assert_eq!(follower.recv().await.unwrap(), "-----> Building");
        tx.send("-----> Launching".into()).await.unwrap();
        assert_eq!(follower.recv().await.unwrap(), "-----> Launching");
        let result = format!(
            "{}{}",
            mar_sdk::types::BUILD_RESULT_MARK,
            r#"{"ok":true,"release":4}"#
        );
        tx.send(result).await.unwrap();
        drop(tx);
        while pusher.recv().await.is_some() {}
        assert_eq!(follower.recv().await, None);
        // The end is written by the recording task.
        for _ in 0..100 {
            if logs.list(&app)[0].status != "running" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let done = &logs.list(&app)[0];
        assert_eq!((done.status.as_str(), done.release), ("succeeded", Some(4)));
        let Some(BuildOutput::Ended(text)) = logs.output(&app, &done.id) else {
            panic!("no output");
        };
        assert_eq!(text, "-----> Building\n-----> Launching\n");
        assert!(logs.output(&app, "../../token").is_none());
        assert!(logs.output(&app, "123").is_none());
    }

    #[tokio::test]
    async fn a_pusher_that_hangs_up_stops_the_recording_and_the_build_fails() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(BuildLogs::new(Paths::new(dir.path())));
        let app = AppName::parse("dropped").unwrap();
        let (tx, rx) = mpsc::channel(16);
        drop(logs.record(&app, "", rx));
        tx.send("-----> Building".into()).await.unwrap();
        // The build's sender sees its reader gone: what stops a build.
        tokio::time::timeout(std::time::Duration::from_secs(5), tx.closed())
            .await
            .unwrap();
        for _ in 0..100 {
            if logs.list(&app)[0].status != "running" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(logs.list(&app)[0].status, "failed");
    }
}
