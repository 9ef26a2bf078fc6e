//! Receiving a pushed tree: the tar the git hook streams is written to a fresh build work
//! space and unpacked there, ready to build.

use std::fmt::Display;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use mar_core::AppName;
use tokio::io::AsyncWriteExt;

use super::{Apps, DeployError, Source};

impl Apps {
    /// Writes the tar arriving on `body` under builds/ and unpacks it; `commit` is the pushed
    /// commit. A broken upload or a bad archive is the sender's fault (`BadInput`); a disk
    /// failure is ours (`Receive`).
    pub async fn receive_source<E: Display>(
        &self,
        app: &AppName,
        commit: String,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<Source, DeployError> {
        let t_receive = Instant::now();
        let id = format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            app
        );
        let work = self.paths.builds().join(&id);
        let src = work.join("src");
        // Private from the first byte: the source and, later, the config vars in `env/` are
        // written here, and `builds/` only lets others pass through.
        {
            use std::os::unix::fs::DirBuilderExt;
            let mut private = std::fs::DirBuilder::new();
            private.mode(0o700);
            private.create(&work).map_err(DeployError::Receive)?;
            private.create(&src).map_err(DeployError::Receive)?;
        }
        let limit = self.cfg.max_source_size;
        let received = async {
            let tar_path = work.join("source.tar");
            let mut file = tokio::fs::File::create(&tar_path)
                .await
                .map_err(DeployError::Receive)?;
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| DeployError::BadInput(format!("source upload broke off: {e}")))?;
                size += chunk.len() as u64;
                if size > limit {
                    // The rest is read and dropped (up to a bound) before the refusal is sent:
                    // a sender still writing when the connection closes sees only a broken
                    // pipe, not the reason.
                    let mut dropped = 0u64;
                    while let Some(Ok(more)) = body.next().await {
                        dropped += more.len() as u64;
                        if dropped > DRAIN_PAST_LIMIT {
                            break;
                        }
                    }
                    return Err(too_large(limit));
                }
                file.write_all(&chunk).await.map_err(DeployError::Receive)?;
            }
            file.flush().await.map_err(DeployError::Receive)?;
            drop(file);
            let (tp, sp) = (tar_path.clone(), src.clone());
            tokio::task::spawn_blocking(move || unpack_bounded(&tp, &sp, limit))
                .await
                .map_err(|e| DeployError::Receive(std::io::Error::other(e.to_string())))??;
            Ok(())
        };
        if let Err(e) = received.await {
            // A refused or broken push leaves nothing behind.
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
        Ok(Source {
            build_dir: src,
            work_dir: work,
            commit,
            received: t_receive.elapsed(),
        })
    }
}

/// How much of a refused upload is read (and dropped) so that its sender gets the answer.
const DRAIN_PAST_LIMIT: u64 = 64 << 20;

/// Most entries a pushed tree may have.
const MAX_ENTRIES: u64 = 200_000;

fn too_large(limit: u64) -> DeployError {
    DeployError::TooLarge(format!(
        "the pushed source is larger than the limit of {} (max_source_size in mar.yaml)",
        mar_build::human_size(limit)
    ))
}

/// Unpacks the tar at `tar_path` into `dest` (then removes the tar), refusing a tree whose
/// files add up to more than `limit` bytes or that has more than [`MAX_ENTRIES`] entries:
/// what a tar says it holds is counted before it is written, so a small archive cannot
/// unpack into a full disk.
fn unpack_bounded(
    tar_path: &std::path::Path,
    dest: &std::path::Path,
    limit: u64,
) -> Result<(), DeployError> {
    let bad = |e: std::io::Error| {
        DeployError::BadInput(format!("source is not a valid tar archive: {e}"))
    };
    let file = std::fs::File::open(tar_path).map_err(DeployError::Receive)?;
    let mut archive = tar::Archive::new(file);
    let (mut total, mut count) = (0u64, 0u64);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        // git never makes sparse entries; their stated size says nothing of what they unpack to.
        if entry.header().entry_type().is_gnu_sparse() {
            return Err(DeployError::BadInput(
                "the pushed source holds a sparse file entry, which is not accepted".into(),
            ));
        }
        count += 1;
        total = total.saturating_add(entry.header().entry_size().map_err(bad)?);
        if total > limit || count > MAX_ENTRIES {
            return Err(too_large(limit));
        }
        // `unpack_in` refuses entries that would land outside `dest` (absolute paths, `..`,
        // through a symlink the archive made).
        entry.unpack_in(dest).map_err(bad)?;
    }
    std::fs::remove_file(tar_path).map_err(DeployError::Receive)
}
