//! EDS, mini-MAR's data store, wire-compatible with Qt Cloud Services' Enginio Data Storage
//! (`shared/qtc-api.md` §2): JSON objects by type, the query language, users and sessions,
//! usergroups, per-object access control, and type declarations, on an embedded SQLite file
//! per backend.
//!
//! - [`query`]: `q`, `sort`, `limit`, `offset`, `count`, `include` parsed into a tree, bounded;
//! - [`password`]: argon2id hashes (users, and the platform's accounts);
//! - [`acl`]: subjects, object ACLs, type permissions, templates, who is calling;
//! - [`types`]: declared types (properties, indexes, validators, permissions);
//! - [`search`]: full-text search requests in both clients' encodings;
//! - [`files`]: uploads (multipart and chunked), signed download URLs, the sweep;
//! - [`storage`]: the narrow trait a storage implements; [`sqlite`]: the embedded one;
//! - [`backend`]: one backend's rules over its storage (what each call may do and does);
//! - [`webhooks`]: the outbox's deliverer (at least once, in order, with back-off);
//! - [`stream`]: the notification stream, on a listener of its own (byte-exact handshake);
//! - [`api`]: the REST API behind a `mar_http::Handler`, and the registry of backends.
//!
//! Boundary: knows nothing of apps, builds, the router or MWS; the composition root says
//! where backends' files live and wires changes to other services.

pub mod acl;
pub mod api;
pub mod backend;
pub mod files;
pub mod ids;
pub mod password;
pub mod query;
pub mod search;
pub mod sqlite;
pub mod storage;
pub mod stream;
pub mod time;
pub mod types;
pub mod webhooks;

pub use api::{Backends, EdsHandler};
pub use backend::Backend;

/// What went wrong, each with the status and the Enginio error body it answers with.
#[derive(Debug, thiserror::Error)]
pub enum EdsError {
    /// A malformed `q`, `sort` or parameter (400 BadRequest).
    #[error("{0}")]
    BadQuery(String),
    /// A malformed request (400 BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// A property that fails validation (400 ValidationFailed).
    #[error("{property} {message}")]
    Validation {
        /// Which property.
        property: String,
        /// What is wrong with it.
        message: String,
    },
    /// No credentials where they are needed, or wrong ones (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// A body over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The storage failed (500); the details go to the server's log, not the client.
    #[error("storage: {0}")]
    Storage(String),
}

impl EdsError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            EdsError::BadQuery(_) | EdsError::BadRequest(_) | EdsError::Validation { .. } => 400,
            EdsError::Unauthorized(_) => 401,
            EdsError::Forbidden(_) => 403,
            EdsError::NotFound(_) => 404,
            EdsError::TooLarge(_) => 413,
            EdsError::Storage(_) => 500,
        }
    }

    /// The body: `{"errors":[{"message","reason"[,"property"]}]}` (qtc-api.md §1.3).
    pub fn body(&self) -> serde_json::Value {
        let (reason, message, property) = match self {
            EdsError::BadQuery(m) | EdsError::BadRequest(m) => ("BadRequest", m.clone(), None),
            EdsError::Validation { property, message } => {
                ("ValidationFailed", message.clone(), Some(property.clone()))
            }
            EdsError::Unauthorized(m) => ("Unauthorized", m.clone(), None),
            EdsError::Forbidden(m) => ("AccessDenied", m.clone(), None),
            EdsError::NotFound(m) => ("NotFound", m.clone(), None),
            EdsError::TooLarge(m) => ("TooLarge", m.clone(), None),
            EdsError::Storage(_) => ("InternalError", "the data store failed".to_owned(), None),
        };
        let mut e = serde_json::json!({"message": message, "reason": reason});
        if let Some(p) = property {
            e["property"] = serde_json::Value::String(p);
        }
        serde_json::json!({ "errors": [e] })
    }
}
