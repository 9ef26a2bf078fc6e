//! The narrow seam between EDS's rules and where its data lives: records (an object's JSON
//! and its ACL), credentials, tokens, group memberships, type declarations and the change
//! log, each write in one transaction with its change row (the outbox webhooks and the
//! notification stream read). The embedded default is [`crate::sqlite::SqliteStorage`]; a
//! PostgreSQL storage for scale-out implements the same trait, compiling the same
//! [`crate::query::Query`] to its own SQL.
//!
//! Every method blocks: callers run them off the router's threads.

use serde_json::{Map, Value};

use crate::EdsError;
use crate::acl::Acl;
use crate::query::{Filter, Query};
use crate::types::TypeDef;

/// One stored object: its JSON as clients see it (with `id`, `objectType`, `createdAt`,
/// `updatedAt`, `creator`, `updater`) and its ACL.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its id.
    pub id: String,
    /// Its type (`objects.NAME`, `users`, `usergroups`).
    pub kind: String,
    /// The object.
    pub doc: Map<String, Value>,
    /// Who may do what with it.
    pub acl: Acl,
}

/// What a write did, for the change log.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// `create`, `update` or `delete`.
    pub event: &'static str,
    /// The `X-Request-Id` of the call that caused it.
    pub request_id: Option<&'a str>,
    /// The signed-in user who made it.
    pub user_id: Option<&'a str>,
}

/// Which records a list may see.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// The reader keys of the caller (`None`: everything, the master key).
    pub readers: Option<&'a [String]>,
    /// Only the members of this usergroup (users only).
    pub member_of: Option<&'a str>,
}

/// One logged change (a row of the outbox).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// Its place in the log.
    pub seq: i64,
    /// `create`, `update` or `delete`.
    pub event: String,
    /// The object's type.
    pub kind: String,
    /// The object after the change (before it, for a delete).
    pub object: Value,
    /// The subjects who could read it (read and admin), as ACL subjects.
    pub receivers: Value,
    /// The `X-Request-Id` of the call that caused it.
    pub request_id: Option<String>,
    /// The signed-in user who made it.
    pub user_id: Option<String>,
}

/// A webhook: where a backend's changes are posted, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub id: String,
    /// An `http://` URL, or `gateway:ID` for an MWS gateway linked in-process.
    pub target: String,
    /// The object types it wants (none: all).
    pub types: Vec<String>,
    /// Headers sent with every delivery (an `Authorization` for the receiver).
    pub headers: std::collections::BTreeMap<String, String>,
    /// The last change delivered (or skipped as not wanted).
    pub cursor: i64,
    /// RFC 3339 creation time.
    pub created_at: String,
}

impl Webhook {
    /// Whether it wants changes to objects of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == kind)
    }
}

/// A full-text search over the properties types declare indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The types to search.
    pub types: Vec<String>,
    /// An FTS5 expression (built by [`crate::search`], every word quoted).
    pub matching: String,
    /// Only these properties (none: all indexed ones).
    pub properties: Vec<String>,
    /// At most this many results.
    pub limit: u64,
    /// Skip this many.
    pub offset: u64,
}

/// A function that changes a record inside the write's transaction, or refuses.
pub type Modify<'a> = &'a mut dyn FnMut(&mut Record) -> Result<(), EdsError>;

/// Where a backend's data lives.
pub trait Storage: Send + Sync {
    /// Stores a new record (a user with its username and password hash).
    fn insert(
        &self,
        r: &Record,
        credentials: Option<(&str, &str)>,
        change: Change<'_>,
    ) -> Result<(), EdsError>;

    /// A record by id.
    fn get(&self, id: &str) -> Result<Option<Record>, EdsError>;

    /// Changes a record atomically (`f` sees the stored one); a user's password hash is
    /// replaced when `new_hash` is given, and its username follows the object's.
    fn modify(
        &self,
        id: &str,
        new_hash: Option<&str>,
        f: Modify<'_>,
        change: Change<'_>,
    ) -> Result<Option<Record>, EdsError>;

    /// Deletes a record if `check` allows, atomically.
    fn delete(
        &self,
        id: &str,
        check: &mut dyn FnMut(&Record) -> Result<(), EdsError>,
        change: Change<'_>,
    ) -> Result<Option<Record>, EdsError>;

    /// A page of a type's records matching a query, in its order.
    fn list(&self, kind: &str, q: &Query, scope: Scope<'_>) -> Result<Vec<Record>, EdsError>;

    /// How many of a type's records match.
    fn count(&self, kind: &str, filter: &Filter, scope: Scope<'_>) -> Result<u64, EdsError>;

    /// A user's id and password hash, by username.
    fn credentials(&self, username: &str) -> Result<Option<(String, String)>, EdsError>;

    /// Keeps a session token (its hash) for a user until `expires` (Unix seconds).
    fn put_token(&self, hash: &str, user: &str, expires: i64) -> Result<(), EdsError>;

    /// The user of a live token.
    fn token_user(&self, hash: &str, now: i64) -> Result<Option<String>, EdsError>;

    /// Ends a token; false if it was not there.
    fn revoke_token(&self, hash: &str) -> Result<bool, EdsError>;

    /// The usergroups a user is in.
    fn groups_of(&self, user: &str) -> Result<Vec<String>, EdsError>;

    /// Adds (`member`) or removes a user from a usergroup; false if nothing changed.
    fn set_member(&self, group: &str, user: &str, member: bool) -> Result<bool, EdsError>;

    /// Stores a new file object, owned by the object `owner` through its `property`.
    fn insert_file(
        &self,
        r: &Record,
        owner: &str,
        property: &str,
        change: Change<'_>,
    ) -> Result<(), EdsError>;

    /// A file's owning object and property.
    fn file_owner(&self, id: &str) -> Result<Option<(String, String)>, EdsError>;

    /// The files an object owns.
    fn files_of(&self, owner: &str) -> Result<Vec<String>, EdsError>;

    /// Every file's id and whether it is complete.
    fn file_states(&self) -> Result<Vec<(String, bool, String)>, EdsError>;

    /// Objects matching a search, in insertion order.
    fn search(&self, s: &Search, scope: Scope<'_>) -> Result<Vec<Record>, EdsError>;

    /// How many objects match a search.
    fn search_count(&self, s: &Search, scope: Scope<'_>) -> Result<u64, EdsError>;

    /// The newest change's number (0 when none).
    fn last_change(&self) -> Result<i64, EdsError>;

    /// Changes logged after `after`, oldest first, at most `limit`.
    fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<ChangeRow>, EdsError>;

    /// Every webhook.
    fn webhooks(&self) -> Result<Vec<Webhook>, EdsError>;

    /// Adds a webhook; it starts after the newest change (its cursor is set here).
    fn add_webhook(&self, w: &Webhook) -> Result<Webhook, EdsError>;

    /// Removes a webhook; false if it was not there.
    fn remove_webhook(&self, id: &str) -> Result<bool, EdsError>;

    /// Records that a webhook got (or skipped) every change up to `cursor`.
    fn advance_webhook(&self, id: &str, cursor: i64) -> Result<(), EdsError>;

    /// Declares (or redeclares) a type, indexing the existing objects' indexed properties.
    fn put_type(&self, def: &TypeDef) -> Result<(), EdsError>;

    /// A declared type.
    fn type_def(&self, name: &str) -> Result<Option<TypeDef>, EdsError>;

    /// Every declared type.
    fn types(&self) -> Result<Vec<TypeDef>, EdsError>;
}
