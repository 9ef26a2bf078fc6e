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
        let tar_path = work.join("source.tar");
        let mut file = tokio::fs::File::create(&tar_path)
            .await
            .map_err(DeployError::Receive)?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| DeployError::BadInput(format!("source upload broke off: {e}")))?;
            file.write_all(&chunk).await.map_err(DeployError::Receive)?;
        }
        file.flush().await.map_err(DeployError::Receive)?;
        drop(file);
        let (tp, sp) = (tar_path.clone(), src.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // `unpack` refuses entries that would land outside `sp` (absolute paths, `..`).
            tar::Archive::new(std::fs::File::open(&tp)?).unpack(&sp)?;
            std::fs::remove_file(&tp)
        })
        .await
        .map_err(|e| DeployError::Receive(std::io::Error::other(e.to_string())))?
        .map_err(|e| DeployError::BadInput(format!("source is not a valid tar archive: {e}")))?;
        Ok(Source {
            build_dir: src,
            work_dir: work,
            commit,
            received: t_receive.elapsed(),
        })
    }
}
