//! The app's directories on disk: run directories unpacked from slugs, their owner (the app's
//! user) and modes, and the private temporary directory used when /tmp cannot be made private.

use std::path::{Path, PathBuf};

use mar_core::AppName;

use super::{Apps, DeployError};

impl Apps {
    /// Makes the app's directories private: apps/APP traversable only, the run directory and
    /// the cache owned by the app's user and closed to everyone else.
    pub(super) fn secure_app_dirs(
        &self,
        app: &AppName,
        run_dir: &Path,
        uid: Option<u32>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let set =
            |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        set(&self.paths.app(app), 0o711)?;
        set(&self.paths.app(app).join("slugs"), 0o700)?;
        set(&self.paths.app(app).join("run"), 0o711)?;
        // The run directory was the build's, which the app's user owned: it must still be a
        // directory, not a symlink swapped in for it, before root changes its mode (which
        // follows symlinks).
        if !std::fs::symlink_metadata(run_dir)?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                run_dir.display()
            )));
        }
        if let Some(uid) = uid {
            std::os::unix::fs::lchown(run_dir, Some(uid), Some(uid))?;
        }
        set(run_dir, 0o700)?;
        let cache = self.paths.cache(app);
        if cache.is_dir() {
            set(&cache, 0o700)?;
        }
        Ok(())
    }

    /// The directory a slug runs from, unpacking the slug if it is not there (after a
    /// rollback to a pruned copy, or a cleanup).
    pub(super) fn ensure_run_dir(
        &self,
        app: &AppName,
        slug: &Path,
        uid: Option<u32>,
    ) -> Result<PathBuf, DeployError> {
        let id = slug
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .unwrap_or("unknown")
            .to_owned();
        let dir = self.paths.run_dir(app, &id);
        if !dir.is_dir() {
            let unpacked = (|| {
                mar_build::unpack_slug(slug, &dir)?;
                if let Some(uid) = uid {
                    mar_build::chown_tree(&dir, uid, uid)?;
                }
                self.secure_app_dirs(app, &dir, uid)
            })();
            if let Err(e) = unpacked {
                // Half a run directory (root-owned, open modes) must not stay behind.
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        }
        Ok(dir)
    }

    /// apps/APP/tmp, owned by the app's user and closed to everyone else: its `TMPDIR` when
    /// /tmp cannot be made private.
    pub(super) fn app_tmp_dir(&self, app: &AppName, uid: u32) -> std::io::Result<PathBuf> {
        let tmp = self.paths.app(app).join("tmp");
        std::fs::create_dir_all(&tmp)?;
        std::os::unix::fs::lchown(&tmp, Some(uid), Some(uid))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        Ok(tmp)
    }
}
