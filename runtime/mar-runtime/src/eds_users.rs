//! MWS's `eds` access mode asks EDS who a token stands for: the gateways are made before the
//! backends (whose webhooks deliver to the gateways), so the backends are handed over once
//! they exist.

use std::sync::{Arc, OnceLock};

use mar_mws::identity::{Checking, Denied, Identity, Verifier};

/// The runtime's verifier.
#[derive(Default)]
pub(crate) struct EdsUsers {
    pub(crate) backends: OnceLock<Arc<mar_eds::Backends>>,
}

impl Verifier for EdsUsers {
    fn backend_exists(&self, backend: &str) -> bool {
        self.backends
            .get()
            .is_some_and(|b| b.get(backend).is_some())
    }

    fn user(&self, backend: &str, token: &str) -> Checking {
        let found = self.backends.get().and_then(|b| b.get(backend));
        let token = token.to_owned();
        Box::pin(async move {
            let Some(b) = found else {
                return Err(Denied::Unknown(
                    "the gateway's EDS backend is gone".to_owned(),
                ));
            };
            // A token lookup reads SQLite: off the gateways' thread.
            let caller = tokio::task::spawn_blocking(move || b.caller_for(&token))
                .await
                .map_err(|e| Denied::Failed(e.to_string()))?;
            match caller {
                Ok(mar_eds::acl::Caller::User { id, groups }) => Ok(Identity { user: id, groups }),
                Ok(_) => Err(Denied::Unknown(
                    "not a user's token: sign in with POST /v1/auth/oauth2/token".to_owned(),
                )),
                Err(mar_eds::EdsError::Unauthorized(m)) => Err(Denied::Unknown(m)),
                Err(e) => Err(Denied::Failed(e.to_string())),
            }
        })
    }
}
