//! Creating an app (its record, repository and route) and destroying it with everything it
//! owns: processes, routes, record, custom domains, metrics, repository, log and directories.

use mar_core::AppName;
use mar_git::GitServer;
use mar_router::Metrics;

use super::{Apps, DeployError};

impl Apps {
    /// Creates `app`: its record (with its own uid, unique on the host, when apps get one), its bare repository,
    /// and its route (an H14 page until the first deploy). A reserved name is refused before
    /// anything is created.
    pub fn create(&self, app: &AppName, git: &GitServer) -> Result<(), DeployError> {
        if let Some(r) = mar_core::reserved(app.as_str()) {
            return Err(DeployError::BadInput(r.refusal(&self.cfg.domain)));
        }
        if self.store.get_app(app).is_ok() {
            return Err(mar_store::StoreError::AppExists(app.to_string()).into());
        }
        // A user of its own, unique on this host (not only in this server's store).
        let uid = match self.uid_base() {
            Some(base) => Some(
                mar_supervisor::users::allocate(app.as_str(), self.paths.root(), base)
                    .map_err(DeployError::Io)?,
            ),
            None => None,
        };
        if let Err(e) = self.store.create_app(app, uid) {
            if let Some(uid) = uid {
                let _ = mar_supervisor::users::release(uid);
            }
            return Err(e.into());
        }
        git.create_repo(app)?;
        self.logs.append(app, "mar[api]", "App created");
        self.publish(app);
        Ok(())
    }

    /// Destroys `app` under its lifecycle lock: stops its processes, then removes its routes,
    /// record, custom domains, metrics, repository, log and directories. What cannot be
    /// removed from disk is left behind rather than failing a destroy already half done.
    pub async fn destroy(
        &self,
        app: &AppName,
        git: &GitServer,
        metrics: &Metrics,
    ) -> Result<(), DeployError> {
        let _guard = self.lock(app)?;
        let uid = self.store.get_app(app)?.uid;
        self.stop_app(app).await;
        self.store.delete_app(app)?;
        // Its route goes now: the stop's own state changes were published while the app
        // still existed, and left an error page (503) where there is no app at all (404).
        self.publish(app);
        self.publish_domains();
        metrics.remove(app);
        let _ = git.delete_repo(app);
        self.logs.remove(app);
        let _ = std::fs::remove_dir_all(self.paths.app(app));
        // Whatever still runs as the app's user (a daemon a build or the app left, outside its
        // process groups) is killed; then the uid is given back. Should something survive,
        // the entry stays and the uid is never handed to another app.
        if let Some(uid) = uid {
            let released = tokio::task::spawn_blocking(move || mar_supervisor::users::release(uid))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Err(e) = released {
                tracing::error!("app {app}: its user {uid} is kept: {e}");
            }
        }
        Ok(())
    }
}
