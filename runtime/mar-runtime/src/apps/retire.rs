//! The end of an instance's life after it lost its traffic (a deploy's switch, a restart, a
//! scale down): wait for the requests in flight to it (at most `MAR_WAIT_TO_RETIRE`), close its
//! WebSockets, stop it; and the pruning of slugs no kept release uses.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mar_core::AppName;

use super::{Apps, Slot};

/// How long WebSockets to a retired instance stay open before they get a Close (1012).
const WEBSOCKET_DRAIN: Duration = Duration::from_secs(5);

impl Apps {
    /// Stops instances that no longer get traffic once the requests in flight to them are
    /// done (or `wait` has passed), in the background.
    pub(super) fn retire(&self, app: &AppName, slots: Vec<Slot>, wait: Duration) {
        if slots.is_empty() {
            return;
        }
        let logs = self.logs.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + wait;
            let busy = |slots: &[Slot]| {
                slots
                    .iter()
                    .map(|s| s.load.load(Ordering::Acquire))
                    .sum::<usize>()
            };
            // HTTP requests finish on their own; WebSockets would stay for hours, so after a
            // short drain period they get a Close (1012, service restart) and reconnect to the
            // new instances.
            let ws_drain = Instant::now() + wait.min(WEBSOCKET_DRAIN);
            while busy(&slots) > 0 && Instant::now() < ws_drain {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for s in &slots {
                s.retire.cancel();
            }
            while busy(&slots) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = busy(&slots);
            if left > 0 {
                logs.append(&app, "mar[api]", &format!("{left} requests still in flight after {}s; stopping the old processes anyway", wait.as_secs()));
            }
            futures_util::future::join_all(slots.iter().map(|s| s.instance.stop())).await;
        });
    }

    /// Deletes slugs (and their unpacked copies, and the WebAssembly module and artifacts
    /// made from them) that none of the last `keep_releases`
    /// releases uses.
    pub(super) fn prune(&self, app: &AppName) {
        let Ok(releases) = self.store.releases(app) else {
            return;
        };
        let keep: HashSet<PathBuf> = releases
            .iter()
            .take(self.cfg.keep_releases)
            .filter_map(|r| r.slug.as_ref().map(PathBuf::from))
            .collect();
        let dir = self.paths.app(app).join("slugs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if keep.contains(&path) {
                continue;
            }
            if let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".tar.gz"))
            {
                let _ = std::fs::remove_dir_all(self.paths.run_dir(app, id));
                self.forget_wasm(app, id);
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}
