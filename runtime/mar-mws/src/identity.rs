//! The `eds` access mode: a gateway tied to an EDS backend hands public socket URIs to that
//! backend's signed-in users, tagging each socket `users.ID` and `usergroups.ID` (as the
//! open-source MWS did through EDS's `GET /v1/user`), so a change pushed to an object's
//! readers reaches exactly their sockets. Whether a backend exists and who a token stands
//! for is the composition root's to say (a [`Verifier`]); this crate knows no data store.

use std::future::Future;
use std::pin::Pin;

/// A signed-in user of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's id.
    pub user: String,
    /// Its usergroups' ids.
    pub groups: Vec<String>,
}

impl Identity {
    /// The tags its sockets carry.
    pub fn tags(&self) -> Vec<String> {
        std::iter::once(format!("users.{}", self.user))
            .chain(self.groups.iter().map(|g| format!("usergroups.{g}")))
            .collect()
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No such backend, or a token it does not know (401).
    Unknown(String),
    /// The verifier failed (500).
    Failed(String),
}

/// A boxed identity check.
pub type Checking = Pin<Box<dyn Future<Output = Result<Identity, Denied>> + Send>>;

/// Checks EDS backends and their users' tokens.
pub trait Verifier: Send + Sync + 'static {
    /// Whether a backend with this id exists.
    fn backend_exists(&self, backend: &str) -> bool;
    /// Who `token` stands for in `backend`.
    fn user(&self, backend: &str, token: &str) -> Checking;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_users_sockets_are_tagged_with_it_and_its_groups() {
        let id = super::Identity {
            user: "u1".into(),
            groups: vec!["g1".into(), "g2".into()],
        };
        assert_eq!(id.tags(), ["users.u1", "usergroups.g1", "usergroups.g2"]);
    }
}
