//! Access control as Enginio had it (qtc-api.md §2.8), as pure functions: an object's ACL
//! (`read`, `update`, `delete`, `admin`, where `admin` implies the other three and managing
//! the ACL), a type's permissions (`read`: list it at all; `create`), subjects (a user, a
//! usergroup, everyone `*`, and `creator`, which a template resolves to the creating user),
//! and who is calling.
//!
//! Decisions where the spec is silent (also in docs/eds.md): a custom type nobody declared
//! may be read and created by everyone; its objects get every permission for their creator
//! when a user created them, and for everyone when an anonymous client did (as Parse's
//! default public ACL: the talk's public todo list needs no login). `users` may be read and
//! created (signed up) by everyone, and each user holds `admin` on itself; `usergroups` are
//! the master key's alone unless their type permissions say otherwise.

use serde_json::{Value, json};

use crate::EdsError;

/// Who an ACL entry names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// Everyone, signed in or not.
    Everyone,
    /// The creating user (resolved when a template is applied).
    Creator,
    /// A user, by id.
    User(String),
    /// A usergroup's members, by the group's id.
    Group(String),
}

impl Subject {
    /// From the wire form `{"id":…,"objectType":"users"|"usergroups"|"aclSubject"}`.
    pub fn parse(v: &Value) -> Result<Self, EdsError> {
        let id = v.get("id").and_then(Value::as_str);
        let kind = v.get("objectType").and_then(Value::as_str);
        match (kind, id) {
            (Some("aclSubject"), Some("*")) => Ok(Subject::Everyone),
            (Some("aclSubject"), Some("creator")) => Ok(Subject::Creator),
            (Some("users"), Some(id)) if crate::ids::valid(id) => Ok(Subject::User(id.to_owned())),
            (Some("usergroups"), Some(id)) if crate::ids::valid(id) => {
                Ok(Subject::Group(id.to_owned()))
            }
            _ => Err(EdsError::Validation {
                property: "access".to_owned(),
                message: format!(
                    "{v} is not a subject: {{\"id\":ID,\"objectType\":\"users\"|\"usergroups\"}} or {{\"id\":\"*\"|\"creator\",\"objectType\":\"aclSubject\"}}"
                ),
            }),
        }
    }

    /// The wire form.
    pub fn to_json(&self) -> Value {
        match self {
            Subject::Everyone => json!({"id": "*", "objectType": "aclSubject"}),
            Subject::Creator => json!({"id": "creator", "objectType": "aclSubject"}),
            Subject::User(id) => json!({"id": id, "objectType": "users"}),
            Subject::Group(id) => json!({"id": id, "objectType": "usergroups"}),
        }
    }

    /// The key the storage indexes readers by: `*`, `u:ID`, `g:ID`.
    pub fn key(&self) -> String {
        match self {
            Subject::Everyone => "*".to_owned(),
            Subject::Creator => "creator".to_owned(),
            Subject::User(id) => format!("u:{id}"),
            Subject::Group(id) => format!("g:{id}"),
        }
    }
}

/// One of an object's permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// See it.
    Read,
    /// Change it.
    Update,
    /// Delete it.
    Delete,
    /// All of those, and change its ACL.
    Admin,
}

impl Perm {
    /// The four, in the wire form's order.
    pub const ALL: [Perm; 4] = [Perm::Read, Perm::Update, Perm::Delete, Perm::Admin];

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Update => "update",
            Perm::Delete => "delete",
            Perm::Admin => "admin",
        }
    }
}

/// An object's ACL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Who may see it.
    pub read: Vec<Subject>,
    /// Who may change it.
    pub update: Vec<Subject>,
    /// Who may delete it.
    pub delete: Vec<Subject>,
    /// Who may do all that and change the ACL.
    pub admin: Vec<Subject>,
}

impl Acl {
    /// Every permission for these subjects.
    pub fn all(subjects: Vec<Subject>) -> Self {
        Acl {
            read: subjects.clone(),
            update: subjects.clone(),
            delete: subjects.clone(),
            admin: subjects,
        }
    }

    fn list(&self, p: Perm) -> &Vec<Subject> {
        match p {
            Perm::Read => &self.read,
            Perm::Update => &self.update,
            Perm::Delete => &self.delete,
            Perm::Admin => &self.admin,
        }
    }

    fn list_mut(&mut self, p: Perm) -> &mut Vec<Subject> {
        match p {
            Perm::Read => &mut self.read,
            Perm::Update => &mut self.update,
            Perm::Delete => &mut self.delete,
            Perm::Admin => &mut self.admin,
        }
    }

    /// From the wire form; absent keys are empty lists. `partial` allows only some keys.
    pub fn parse(v: &Value) -> Result<Self, EdsError> {
        let Value::Object(m) = v else {
            return Err(EdsError::Validation {
                property: "access".to_owned(),
                message: "must be an object like {\"read\":[…],\"update\":[…]}".to_owned(),
            });
        };
        let mut acl = Acl::default();
        for (k, list) in m {
            let p = match k.as_str() {
                "read" => Perm::Read,
                "update" => Perm::Update,
                "delete" => Perm::Delete,
                "admin" => Perm::Admin,
                other => {
                    return Err(EdsError::Validation {
                        property: "access".to_owned(),
                        message: format!(
                            "{other:?} is not a permission: read, update, delete or admin"
                        ),
                    });
                }
            };
            let Value::Array(items) = list else {
                return Err(EdsError::Validation {
                    property: format!("access.{k}"),
                    message: "must be a list of subjects".to_owned(),
                });
            };
            if items.len() > 1000 {
                return Err(EdsError::Validation {
                    property: format!("access.{k}"),
                    message: "holds more than 1000 subjects".to_owned(),
                });
            }
            for s in items {
                let s = Subject::parse(s)?;
                if !acl.list(p).contains(&s) {
                    acl.list_mut(p).push(s);
                }
            }
        }
        Ok(acl)
    }

    /// The wire form: all four keys.
    pub fn to_json(&self) -> Value {
        let list = |l: &Vec<Subject>| Value::Array(l.iter().map(Subject::to_json).collect());
        json!({
            "read": list(&self.read),
            "update": list(&self.update),
            "delete": list(&self.delete),
            "admin": list(&self.admin),
        })
    }

    /// Adds `other`'s grants (`PUT …/access`).
    pub fn grant(&mut self, other: &Acl) {
        for p in Perm::ALL {
            for s in other.list(p) {
                if !self.list(p).contains(s) {
                    self.list_mut(p).push(s.clone());
                }
            }
        }
    }

    /// Removes `other`'s grants (`DELETE …/access`).
    pub fn revoke(&mut self, other: &Acl) {
        for p in Perm::ALL {
            let gone = other.list(p).clone();
            self.list_mut(p).retain(|s| !gone.contains(s));
        }
    }

    /// `creator` replaced by the creating user, or dropped when nobody signed in created it.
    pub fn resolve_creator(&self, creator: Option<&str>) -> Acl {
        let mut out = Acl::default();
        for p in Perm::ALL {
            for s in self.list(p) {
                let s = match (s, creator) {
                    (Subject::Creator, Some(u)) => Subject::User(u.to_owned()),
                    (Subject::Creator, None) => continue,
                    (s, _) => s.clone(),
                };
                if !out.list(p).contains(&s) {
                    out.list_mut(p).push(s);
                }
            }
        }
        out
    }

    /// Whether `caller` holds `p` (admin holds them all).
    pub fn allows(&self, caller: &Caller, p: Perm) -> bool {
        if caller.is_master() {
            return true;
        }
        let holds = |list: &Vec<Subject>| list.iter().any(|s| caller.is(s));
        holds(self.list(p)) || holds(&self.admin)
    }

    /// The keys of everyone who may read (read or admin), for the storage's reader index.
    pub fn reader_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .read
            .iter()
            .chain(&self.admin)
            .map(Subject::key)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The backend's secret (master key): server-side, past every ACL.
    Master,
    /// A signed-in user and the groups it belongs to.
    User {
        /// Its id.
        id: String,
        /// Its usergroups' ids.
        groups: Vec<String>,
    },
    /// Nobody signed in.
    Anonymous,
}

impl Caller {
    /// The master key.
    pub fn is_master(&self) -> bool {
        matches!(self, Caller::Master)
    }

    /// The signed-in user's id.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Caller::User { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether a subject names this caller.
    pub fn is(&self, s: &Subject) -> bool {
        match (s, self) {
            (Subject::Everyone, _) => true,
            (Subject::User(u), Caller::User { id, .. }) => u == id,
            (Subject::Group(g), Caller::User { groups, .. }) => groups.contains(g),
            _ => false,
        }
    }

    /// The reader keys that name this caller (`None`: the master key reads everything).
    pub fn reader_keys(&self) -> Option<Vec<String>> {
        match self {
            Caller::Master => None,
            Caller::Anonymous => Some(vec!["*".to_owned()]),
            Caller::User { id, groups } => Some(
                std::iter::once("*".to_owned())
                    .chain(std::iter::once(format!("u:{id}")))
                    .chain(groups.iter().map(|g| format!("g:{g}")))
                    .collect(),
            ),
        }
    }
}

/// A type's own permissions: who may list it and who may create in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePerms {
    /// Who may query the type.
    pub read: Vec<Subject>,
    /// Who may create objects of it.
    pub create: Vec<Subject>,
}

impl TypePerms {
    /// The defaults of a type (see the module's note).
    pub fn default_for(type_name: &str) -> Self {
        match type_name {
            "usergroups" => TypePerms {
                read: Vec::new(),
                create: Vec::new(),
            },
            _ => TypePerms {
                read: vec![Subject::Everyone],
                create: vec![Subject::Everyone],
            },
        }
    }

    /// From `{"read":[…],"create":[…]}`; a missing key keeps the default.
    pub fn parse(v: &Value, type_name: &str) -> Result<Self, EdsError> {
        let mut out = Self::default_for(type_name);
        let subjects = |k: &str| -> Result<Option<Vec<Subject>>, EdsError> {
            match v.get(k) {
                None => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(Subject::parse)
                    .collect::<Result<_, _>>()
                    .map(Some),
                Some(_) => Err(EdsError::Validation {
                    property: format!("permissions.{k}"),
                    message: "must be a list of subjects".to_owned(),
                }),
            }
        };
        if let Some(r) = subjects("read")? {
            out.read = r;
        }
        if let Some(c) = subjects("create")? {
            out.create = c;
        }
        Ok(out)
    }

    /// The wire form.
    pub fn to_json(&self) -> Value {
        json!({
            "read": self.read.iter().map(Subject::to_json).collect::<Vec<_>>(),
            "create": self.create.iter().map(Subject::to_json).collect::<Vec<_>>(),
        })
    }

    /// Whether `caller` may query the type.
    pub fn may_read(&self, caller: &Caller) -> bool {
        caller.is_master() || self.read.iter().any(|s| caller.is(s))
    }

    /// Whether `caller` may create objects of the type.
    pub fn may_create(&self, caller: &Caller) -> bool {
        caller.is_master() || self.create.iter().any(|s| caller.is(s))
    }
}

/// The ACL a new object of `type_name` gets: the type's template when it declares one, else
/// the defaults of the module's note.
pub fn initial_acl(
    type_name: &str,
    template: Option<&Acl>,
    creator: Option<&str>,
    own_id: &str,
) -> Acl {
    if let Some(t) = template {
        return t.resolve_creator(creator);
    }
    match (type_name, creator) {
        // A user may administer itself; everyone may see it (as the exported backends did).
        ("users", _) => Acl {
            read: vec![Subject::Everyone],
            update: Vec::new(),
            delete: Vec::new(),
            admin: vec![Subject::User(own_id.to_owned())],
        },
        (_, Some(u)) => Acl::all(vec![Subject::User(u.to_owned())]),
        (_, None) => Acl::all(vec![Subject::Everyone]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "000000000000000000000001";
    const U2: &str = "000000000000000000000002";
    const G1: &str = "0000000000000000000000a1";

    fn user(id: &str, groups: &[&str]) -> Caller {
        Caller::User {
            id: id.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn admin_implies_the_rest_and_groups_and_everyone_count() {
        let acl = Acl::parse(&json!({
            "read": [{"id": G1, "objectType": "usergroups"}],
            "admin": [{"id": U1, "objectType": "users"}],
        }))
        .unwrap();
        assert!(acl.allows(&user(U1, &[]), Perm::Delete));
        assert!(acl.allows(&user(U2, &[G1]), Perm::Read));
        assert!(!acl.allows(&user(U2, &[G1]), Perm::Update));
        assert!(!acl.allows(&Caller::Anonymous, Perm::Read));
        assert!(acl.allows(&Caller::Master, Perm::Admin));
        assert_eq!(
            acl.reader_keys(),
            vec![format!("g:{G1}"), format!("u:{U1}")]
        );
        let public = Acl::all(vec![Subject::Everyone]);
        assert!(public.allows(&Caller::Anonymous, Perm::Update));
    }

    #[test]
    fn grant_revoke_and_the_wire_form() {
        let mut acl = Acl::all(vec![Subject::User(U1.to_owned())]);
        let more = Acl::parse(&json!({"read": [{"id": "*", "objectType": "aclSubject"}]})).unwrap();
        acl.grant(&more);
        acl.grant(&more);
        assert_eq!(acl.read.len(), 2);
        acl.revoke(&Acl::parse(&json!({"read": [{"id": U1, "objectType": "users"}]})).unwrap());
        assert_eq!(acl.read, vec![Subject::Everyone]);
        assert_eq!(Acl::parse(&acl.to_json()).unwrap(), acl);
        for bad in [
            json!({"write": []}),
            json!({"read": {}}),
            json!({"read": [{"id": "x", "objectType": "users"}]}),
            json!({"read": [{"id": "*", "objectType": "users"}]}),
        ] {
            assert!(Acl::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_resolve_the_creator() {
        let t = Acl::parse(&json!({
            "read": [{"id": "*", "objectType": "aclSubject"}],
            "admin": [{"id": "creator", "objectType": "aclSubject"}],
        }))
        .unwrap();
        let acl = initial_acl("objects.todos", Some(&t), Some(U1), "x");
        assert_eq!(acl.admin, vec![Subject::User(U1.to_owned())]);
        let anon = initial_acl("objects.todos", Some(&t), None, "x");
        assert!(anon.admin.is_empty());
        assert_eq!(
            initial_acl("objects.todos", None, Some(U1), "x"),
            Acl::all(vec![Subject::User(U1.to_owned())])
        );
        assert_eq!(
            initial_acl("objects.todos", None, None, "x"),
            Acl::all(vec![Subject::Everyone])
        );
        assert!(!TypePerms::default_for("usergroups").may_create(&user(U1, &[])));
        assert!(TypePerms::default_for("users").may_create(&Caller::Anonymous));
    }
}
