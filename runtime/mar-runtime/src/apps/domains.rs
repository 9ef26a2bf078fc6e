//! Custom domains: which host names route to an app besides `APP.DOMAIN`. A name under the
//! platform's own domain is refused, since that space belongs to apps' own names.

use mar_core::{AppName, Hostname};

use super::{Apps, DeployError};

impl Apps {
    /// The custom domains routed to `app`.
    pub fn domains(&self, app: &AppName) -> Result<Vec<String>, DeployError> {
        Ok(self
            .store
            .all_domains()?
            .into_iter()
            .filter(|(_, a)| a == app.as_str())
            .map(|(name, _)| name)
            .collect())
    }

    /// Routes the host name `name` to `app`.
    pub fn add_domain(&self, app: &AppName, name: &str) -> Result<Hostname, DeployError> {
        let host = Hostname::parse(name).map_err(|e| DeployError::BadInput(e.to_string()))?;
        let platform = &self.cfg.domain;
        if host.as_str() == platform || host.as_str().ends_with(&format!(".{platform}")) {
            return Err(DeployError::BadInput(format!(
                "{host} is under the platform's own domain {platform}; apps get APP.{platform} already"
            )));
        }
        self.store.add_domain(app, &host)?;
        self.publish_domains();
        self.logs
            .append(app, "mar[api]", &format!("Added domain {host}"));
        Ok(host)
    }

    /// Stops routing the host name `name` to `app`.
    pub fn remove_domain(&self, app: &AppName, name: &str) -> Result<Hostname, DeployError> {
        let host = Hostname::parse(name).map_err(|e| DeployError::BadInput(e.to_string()))?;
        self.store.remove_domain(app, &host)?;
        self.publish_domains();
        self.logs
            .append(app, "mar[api]", &format!("Removed domain {host}"));
        Ok(host)
    }
}
