//! Per-app logbook: every line an app, the build or the platform says about an app, kept on
//! disk and fanned out live to `mar logs -t` followers.
//!
//! Lines look like Heroku's: `2026-11-25T19:33:01.123Z app[web.1]: text`. Each app has one
//! file, `logs/APP.log`, rotated to `APP.log.1` past a size cap so a chatty app cannot fill the
//! disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mar_core::AppName;
use tokio::sync::broadcast;

/// Size at which an app's log file is rotated.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Live followers that fall this many lines behind lose the oldest ones (they are on disk).
const LIVE_BUFFER: usize = 1024;

/// One log line, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    /// Who said it: `app[web.1]`, `mar[build]`, `mar[web.1]`, `mar[router]`.
    pub source: String,
    /// The text, without a trailing newline.
    pub text: String,
}

impl LogLine {
    /// The line as it is stored and shown.
    pub fn render(&self) -> String {
        format!("{} {}: {}", self.time, self.source, self.text)
    }

    /// Parses a stored line; `None` for a line not in the format.
    pub fn parse(line: &str) -> Option<Self> {
        let (time, rest) = line.split_once(' ')?;
        let (source, text) = rest
            .split_once(": ")
            .unwrap_or((rest.trim_end_matches(':'), ""));
        Some(Self {
            time: time.to_owned(),
            source: source.to_owned(),
            text: text.to_owned(),
        })
    }
}

struct AppLog {
    file: File,
    written: u64,
    live: broadcast::Sender<Arc<LogLine>>,
}

/// The logbook of every app. Cheap to share behind an `Arc`.
pub struct Logs {
    dir: PathBuf,
    apps: Mutex<HashMap<AppName, AppLog>>,
}

/// Errors reading logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be read.
    #[error("reading log of {app}: {source}")]
    Io {
        /// The app.
        app: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Most lines one appended text becomes (a WASM trap's backtrace can run to thousands of
/// frames); past it one line says how many were left out.
pub const MAX_LINES_PER_TEXT: usize = 64;

/// The log lines of one appended text: a text of several lines (a trap's message and its
/// backtrace) becomes several lines, each under the true source, so none is lost when the
/// file is read back and none can pass for another source's line (a `\n` followed by a forged
/// time and `router:` in an app's message makes a line that is still the app's). Lines end at
/// `\n`, as the file's do (a CRLF's `\r` goes with it; a lone `\r` stays in its line).
fn lines_of(text: &str) -> Vec<std::borrow::Cow<'_, str>> {
    let all: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    let mut lines: Vec<std::borrow::Cow<'_, str>> = all
        .iter()
        .take(MAX_LINES_PER_TEXT)
        .map(|l| std::borrow::Cow::Borrowed(*l))
        .collect();
    if all.len() > MAX_LINES_PER_TEXT {
        lines.push(std::borrow::Cow::Owned(format!(
            "… {} more lines left out",
            all.len() - MAX_LINES_PER_TEXT
        )));
    }
    lines
}

impl Logs {
    /// A logbook keeping its files in `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            apps: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, app: &AppName) -> PathBuf {
        self.dir.join(format!("{app}.log"))
    }

    fn with_app<R>(&self, app: &AppName, f: impl FnOnce(&mut AppLog) -> R) -> std::io::Result<R> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if !apps.contains_key(app) {
            let path = self.path(app);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let written = file.metadata()?.len();
            let (live, _) = broadcast::channel(LIVE_BUFFER);
            apps.insert(
                app.clone(),
                AppLog {
                    file,
                    written,
                    live,
                },
            );
        }
        match apps.get_mut(app) {
            Some(log) => Ok(f(log)),
            None => Err(std::io::Error::other("log entry vanished")),
        }
    }

    /// Appends a line from `source` to `app`'s log and sends it to live followers.
    /// A failure to write is reported on the platform's stderr: losing a log line must not
    /// take an app down.
    pub fn append(&self, app: &AppName, source: &str, text: &str) {
        self.append_batch(app, source, std::iter::once(text));
    }

    /// Appends several lines from one source with a single write: the router's access log
    /// writer drains its queue this way, so a busy app costs one syscall per batch, not per
    /// request.
    pub fn append_batch<'a>(
        &self,
        app: &AppName,
        source: &str,
        texts: impl IntoIterator<Item = &'a str>,
    ) {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        // Rendered straight into one buffer: a busy router sends thousands of lines a second.
        let mut buf = String::new();
        let mut texts_kept: Vec<std::borrow::Cow<'a, str>> = Vec::new();
        let mut add = |line: std::borrow::Cow<'a, str>| {
            buf.push_str(&time);
            buf.push(' ');
            buf.push_str(source);
            buf.push_str(": ");
            buf.push_str(&line);
            buf.push('\n');
            texts_kept.push(line);
        };
        for text in texts {
            let text = text.trim_end_matches(['\n', '\r']);
            if text.contains('\n') {
                lines_of(text).into_iter().for_each(&mut add);
            } else {
                // The usual case (every access-log line): no splitting, no allocation.
                add(std::borrow::Cow::Borrowed(text));
            }
        }
        let rotate_to = self.dir.join(format!("{app}.log.1"));
        let path = self.path(app);
        let res = self.with_app(app, |log| -> std::io::Result<()> {
            if log.written > ROTATE_BYTES {
                std::fs::rename(&path, &rotate_to)?;
                log.file = OpenOptions::new().create(true).append(true).open(&path)?;
                log.written = 0;
            }
            log.file.write_all(buf.as_bytes())?;
            log.written += buf.len() as u64;
            // No followers is the normal case: skip the allocations then.
            if log.live.receiver_count() > 0 {
                for text in &texts_kept {
                    let _ = log.live.send(Arc::new(LogLine {
                        time: time.clone(),
                        source: source.to_owned(),
                        text: text.to_string(),
                    }));
                }
            }
            Ok(())
        });
        if let Err(e) | Ok(Err(e)) = res.map(|r| r.map(|_| ())) {
            eprintln!("mar: cannot write log of {app}: {e}");
        }
    }

    /// Follows new lines of `app` as they are appended.
    pub fn subscribe(&self, app: &AppName) -> std::io::Result<broadcast::Receiver<Arc<LogLine>>> {
        self.with_app(app, |log| log.live.subscribe())
    }

    /// Up to `limit` lines of `app`, skipping the `offset` newest, oldest first.
    pub fn recent(
        &self,
        app: &AppName,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<LogLine>, LogError> {
        self.recent_where(app, limit, offset, |_| true)
    }

    /// Like [`Logs::recent`], counting only the lines `keep` accepts.
    pub fn recent_where(
        &self,
        app: &AppName,
        limit: usize,
        offset: usize,
        keep: impl Fn(&LogLine) -> bool,
    ) -> Result<Vec<LogLine>, LogError> {
        let mut lines = Vec::new();
        for path in [self.dir.join(format!("{app}.log.1")), self.path(app)] {
            match File::open(&path) {
                Ok(f) => {
                    for line in BufReader::new(f).lines() {
                        let line = line.map_err(|source| LogError::Io {
                            app: app.to_string(),
                            source,
                        })?;
                        if let Some(l) = LogLine::parse(&line).filter(|l| keep(l)) {
                            lines.push(l);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LogError::Io {
                        app: app.to_string(),
                        source,
                    });
                }
            }
        }
        let end = lines.len().saturating_sub(offset);
        let start = end.saturating_sub(limit);
        Ok(lines.drain(start..end).collect())
    }

    /// Forgets an app's log (on `apps:destroy`).
    pub fn remove(&self, app: &AppName) {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
        let _ = std::fs::remove_file(self.path(app));
        let _ = std::fs::remove_file(self.dir.join(format!("{app}.log.1")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(dir.path()).unwrap();
        let app = AppName::parse("a").unwrap();
        let mut live = logs.subscribe(&app).unwrap();
        for i in 0..5 {
            logs.append(&app, "app[web.1]", &format!("line {i}\n"));
        }
        assert_eq!(live.try_recv().unwrap().text, "line 0");
        let all = logs.recent(&app, 100, 0).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].source, "app[web.1]");
        let window: Vec<_> = logs
            .recent(&app, 2, 1)
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(window, ["line 2", "line 3"]);
        assert!(all[0].render().ends_with(" app[web.1]: line 0"));
    }

    #[test]
    fn a_text_of_several_lines_is_several_lines_of_its_source_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(dir.path()).unwrap();
        let app = AppName::parse("a").unwrap();
        // A trap with its backtrace, and an attempt to pass for the router.
        logs.append(
            &app,
            "app[wasm]",
            "the handler failed: wasm trap\nwasm backtrace:\n    0: f\r\n    1: main\n",
        );
        logs.append(
            &app,
            "app[wasm]",
            "oops\n2026-12-01T00:00:00.000Z router: at=info status=200",
        );
        let all = logs.recent(&app, 100, 0).unwrap();
        let seen: Vec<(&str, &str)> = all
            .iter()
            .map(|l| (l.source.as_str(), l.text.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("app[wasm]", "the handler failed: wasm trap"),
                ("app[wasm]", "wasm backtrace:"),
                ("app[wasm]", "    0: f"),
                ("app[wasm]", "    1: main"),
                ("app[wasm]", "oops"),
                (
                    "app[wasm]",
                    "2026-12-01T00:00:00.000Z router: at=info status=200"
                ),
            ]
        );

        let long: String = (0..1000).map(|i| format!("frame {i}\n")).collect();
        logs.append(&app, "app[wasm]", &long);
        let all = logs.recent(&app, 2000, 0).unwrap();
        assert_eq!(all.len(), 6 + MAX_LINES_PER_TEXT + 1);
        assert_eq!(
            all.last().unwrap().text,
            format!("… {} more lines left out", 1000 - MAX_LINES_PER_TEXT)
        );
    }
}
