//! Creating an app (its record, repository and route) and destroying it with everything it
//! owns: processes, routes, record, custom domains, metrics, repository, log and directories.

use mar_core::AppName;
use mar_git::GitServer;
use mar_router::Metrics;

use super::{Apps, DeployError};

impl Apps {
    /// Creates `app`: its record (with its own uid when apps get one), its bare repository,
    /// and its route (an H14 page until the first deploy). A reserved name is refused before
    /// anything is created.
    pub fn create(&self, app: &AppName, git: &GitServer) -> Result<(), DeployError> {
        if let Some(r) = mar_core::reserved(app.as_str()) {
            return Err(DeployError::BadInput(r.refusal(&self.cfg.domain)));
        }
        self.store.create_app(app, self.uid_base())?;
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
        self.stop_app(app).await;
        self.store.delete_app(app)?;
        self.publish_domains();
        metrics.remove(app);
        let _ = git.delete_repo(app);
        self.logs.remove(app);
        let _ = std::fs::remove_dir_all(self.paths.app(app));
        Ok(())
    }
}
