//! One backend's rules over its storage: what each call may do, and what it stores. Objects
//! get their ids, times, `creator` and `updater`; users their argon2id password hashes
//! (never returned) and expiring session tokens (kept as SHA-256 hashes); every read, list,
//! change and ACL change is checked against the caller's permissions here, with lists
//! filtered inside the storage so counts agree with them.
//!
//! Every method blocks (SQLite, argon2): the API runs them on the EDS executor's blocking
//! threads, never on the router's.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::EdsError;
use crate::acl::{Acl, Caller, Perm, TypePerms, initial_acl};
use crate::query::{Query, normalize};
use crate::storage::{Change, Record, Scope, Storage};
use crate::types::{TypeDef, check_property_name};

/// How long a session token lives (Enginio answered `expires_in` of about 8 hours).
pub const TOKEN_TTL_SECS: i64 = 8 * 3600;

/// The properties the server writes and a client cannot.
const READ_ONLY: &[&str] = &[
    "id",
    "objectType",
    "createdAt",
    "updatedAt",
    "creator",
    "updater",
];

/// Deepest nesting of an object's JSON.
const MAX_NESTING: usize = 32;

/// A change to an object's properties, made inside the write's transaction.
type Edit<'a> = &'a mut dyn FnMut(&mut Map<String, Value>) -> Result<(), EdsError>;

/// One request's caller and id.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Who is calling.
    pub caller: Caller,
    /// Its `X-Request-Id`, echoed in the change it causes.
    pub request_id: Option<String>,
}

impl Ctx {
    pub(crate) fn change(&self, event: &'static str) -> Change<'_> {
        Change {
            event,
            request_id: self.request_id.as_deref(),
            user_id: self.caller.user_id(),
        }
    }
}

/// What an `/access` call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessOp {
    /// GET: the ACL.
    Get,
    /// PUT: add grants.
    Grant,
    /// DELETE: remove grants.
    Revoke,
    /// POST: replace.
    Replace,
}

/// A backend: its identity, keys and storage.
pub struct Backend {
    /// Its id (`Enginio-Backend-Id`).
    pub id: String,
    /// Its name (the service instance's).
    pub name: String,
    secret: String,
    api_key: Option<String>,
    pub(crate) storage: Arc<dyn Storage>,
    /// Where its files' bytes live.
    pub(crate) files_dir: std::path::PathBuf,
    /// Woken after every write, so the webhooks' deliverer need not poll.
    pub(crate) changed: Arc<tokio::sync::Notify>,
}

fn sha256_hex(s: &str) -> String {
    crate::ids::hex(&Sha256::digest(s.as_bytes()))
}

fn same_secret(a: &str, b: &str) -> bool {
    mar_http::credentials::secrets_match(a.as_bytes(), b.as_bytes())
}

fn not_found(kind: &str, id: &str) -> EdsError {
    EdsError::NotFound(format!("no {kind} object with id {id}"))
}

fn user_ref(id: &str) -> Value {
    json!({"id": id, "objectType": "users"})
}

/// Checks a client's property names and nesting, and turns the special encodings into
/// plain values.
fn clean_body(body: &Value) -> Result<Map<String, Value>, EdsError> {
    let Value::Object(m) = body else {
        return Err(EdsError::BadRequest(
            "the body must be a JSON object".to_owned(),
        ));
    };
    fn depth_ok(v: &Value, d: usize) -> Result<(), EdsError> {
        if d > MAX_NESTING {
            return Err(EdsError::BadRequest(format!(
                "the object nests deeper than {MAX_NESTING} levels"
            )));
        }
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if !(k == "$type" || k == "$value") {
                        check_property_name(k)?;
                    }
                    depth_ok(v, d + 1)?;
                }
                Ok(())
            }
            Value::Array(a) => a.iter().try_for_each(|v| depth_ok(v, d + 1)),
            _ => Ok(()),
        }
    }
    let mut out = Map::new();
    for (k, v) in m {
        if READ_ONLY.contains(&k.as_str()) {
            continue;
        }
        check_property_name(k)?;
        depth_ok(v, 1)?;
        out.insert(k.clone(), normalize(v));
    }
    Ok(out)
}

fn blank(property: &str) -> EdsError {
    EdsError::Validation {
        property: property.to_owned(),
        message: "can't be blank".to_owned(),
    }
}

impl Backend {
    /// A backend over `storage`, opened by its secret (the master key).
    pub fn new(
        id: &str,
        name: &str,
        secret: &str,
        api_key: Option<&str>,
        storage: Arc<dyn Storage>,
        files_dir: std::path::PathBuf,
    ) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            secret: secret.to_owned(),
            api_key: api_key.map(str::to_owned),
            storage,
            files_dir,
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The secret, as key material.
    pub(crate) fn secret_bytes(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// Tells the deliverer there is something new in the log.
    pub(crate) fn wrote(&self) {
        self.changed.notify_one();
    }

    /// Whether `s` is the backend's API key.
    pub fn is_api_key(&self, s: &str) -> bool {
        self.api_key.as_deref().is_some_and(|k| same_secret(s, k))
    }

    /// Whether `s` is the backend's secret.
    pub fn is_secret(&self, s: &str) -> bool {
        same_secret(s, &self.secret)
    }

    /// The caller a bearer token stands for: the secret is the master key, anything else
    /// must be a live session token.
    pub fn caller_for(&self, token: &str) -> Result<Caller, EdsError> {
        if self.is_secret(token) {
            return Ok(Caller::Master);
        }
        let user = self
            .storage
            .token_user(&sha256_hex(token), crate::time::unix_now())?
            .ok_or_else(|| {
                EdsError::Unauthorized("the token is unknown, expired or revoked".to_owned())
            })?;
        let groups = self.storage.groups_of(&user)?;
        Ok(Caller::User { id: user, groups })
    }

    fn perms(&self, kind: &str) -> Result<(TypePerms, Option<TypeDef>), EdsError> {
        let def = self.storage.type_def(kind)?;
        let perms = def
            .as_ref()
            .and_then(|d| d.permissions.clone())
            .unwrap_or_else(|| TypePerms::default_for(kind));
        Ok((perms, def))
    }

    fn readable(&self, ctx: &Ctx, kind: &str, id: &str) -> Result<Record, EdsError> {
        match self.storage.get(id)? {
            Some(r) if r.kind == kind && r.acl.allows(&ctx.caller, Perm::Read) => Ok(r),
            // Unreadable is not found: nobody learns what they may not see exists.
            _ => Err(not_found(kind, id)),
        }
    }

    /// `POST /v1/objects/T`, `POST /v1/usergroups`: a new object.
    pub fn create(&self, ctx: &Ctx, kind: &str, body: &Value) -> Result<Value, EdsError> {
        let (perms, def) = self.perms(kind)?;
        if !perms.may_create(&ctx.caller) {
            return Err(EdsError::Forbidden(format!(
                "you may not create {kind} objects"
            )));
        }
        let mut doc = clean_body(body)?;
        if let Some(d) = &def {
            d.validate(&doc, true)?;
        }
        let named = doc
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if kind == "usergroups" && !named {
            return Err(blank("name"));
        }
        let id = crate::ids::new_id();
        let now = crate::time::now();
        doc.insert("id".into(), json!(id));
        doc.insert("objectType".into(), json!(kind));
        doc.insert("createdAt".into(), json!(now));
        doc.insert("updatedAt".into(), json!(now));
        let creator = ctx.caller.user_id();
        if let Some(u) = creator {
            doc.insert("creator".into(), user_ref(u));
            doc.insert("updater".into(), user_ref(u));
        }
        let acl = initial_acl(
            kind,
            def.as_ref().and_then(|d| d.template.as_ref()),
            creator,
            &id,
        );
        let r = Record {
            id,
            kind: kind.to_owned(),
            doc,
            acl,
        };
        self.storage.insert(&r, None, ctx.change("create"))?;
        self.wrote();
        Ok(Value::Object(r.doc))
    }

    /// `POST /v1/users`: a new user (sign-up).
    pub fn create_user(&self, ctx: &Ctx, body: &Value) -> Result<Value, EdsError> {
        let (perms, def) = self.perms("users")?;
        if !perms.may_create(&ctx.caller) {
            return Err(EdsError::Forbidden("you may not create users".to_owned()));
        }
        let password = body.get("password").and_then(Value::as_str).unwrap_or("");
        let mut doc = clean_body(body)?;
        doc.remove("password");
        let username = match doc.get("username").and_then(Value::as_str) {
            Some(u) if !u.trim().is_empty() => u.to_owned(),
            _ => return Err(blank("username")),
        };
        if password.is_empty() {
            return Err(blank("password"));
        }
        if password.len() > 1024 {
            return Err(EdsError::Validation {
                property: "password".to_owned(),
                message: "is longer than 1024 bytes".to_owned(),
            });
        }
        if let Some(d) = &def {
            d.validate(&doc, true)?;
        }
        if self.storage.credentials(&username)?.is_some() {
            return Err(EdsError::Validation {
                property: "username".to_owned(),
                message: "has already been taken".to_owned(),
            });
        }
        let hash = crate::password::hash(password)?;
        let id = crate::ids::new_id();
        let now = crate::time::now();
        doc.insert("id".into(), json!(id));
        doc.insert("objectType".into(), json!("users"));
        doc.insert("createdAt".into(), json!(now));
        doc.insert("updatedAt".into(), json!(now));
        let creator = ctx.caller.user_id().unwrap_or(&id).to_owned();
        doc.insert("creator".into(), user_ref(&creator));
        doc.insert("updater".into(), user_ref(&creator));
        let acl = initial_acl(
            "users",
            def.as_ref().and_then(|d| d.template.as_ref()),
            Some(&id),
            &id,
        );
        let r = Record {
            id,
            kind: "users".to_owned(),
            doc,
            acl,
        };
        // A race with another sign-up of the same name loses on the unique index.
        self.storage
            .insert(&r, Some((&username, &hash)), ctx.change("create"))?;
        self.wrote();
        Ok(Value::Object(r.doc))
    }

    /// `GET /v1/objects/T/ID` (and users, usergroups).
    pub fn get(
        &self,
        ctx: &Ctx,
        kind: &str,
        id: &str,
        include: &[String],
    ) -> Result<Value, EdsError> {
        let r = self.readable(ctx, kind, id)?;
        let mut v = Value::Object(r.doc);
        self.include(ctx, &mut v, include)?;
        Ok(v)
    }

    /// Replaces the refs named in `include` by the objects they refer to, where the caller
    /// may read them (others stay refs).
    fn include(&self, ctx: &Ctx, v: &mut Value, include: &[String]) -> Result<(), EdsError> {
        for key in include {
            let Some(target) = v.get(key.as_str()) else {
                continue;
            };
            let (Some(id), Some(kind)) = (
                target.get("id").and_then(Value::as_str),
                target.get("objectType").and_then(Value::as_str),
            ) else {
                continue;
            };
            if let Ok(r) = self.readable(ctx, kind, id) {
                v[key.as_str()] = Value::Object(r.doc);
            }
        }
        Ok(())
    }

    /// `PUT /v1/objects/T/ID`: merges the given properties.
    pub fn update(&self, ctx: &Ctx, kind: &str, id: &str, body: &Value) -> Result<Value, EdsError> {
        let (_, def) = self.perms(kind)?;
        let mut changes = clean_body(body)?;
        let mut new_hash = None;
        if kind == "users" {
            if let Some(p) = changes.remove("password") {
                match p.as_str() {
                    Some(p) if !p.is_empty() && p.len() <= 1024 => {
                        new_hash = Some(crate::password::hash(p)?);
                    }
                    _ => return Err(blank("password")),
                }
            }
            let blank_name = changes
                .get("username")
                .is_some_and(|u| u.as_str().is_none_or(|u| u.trim().is_empty()));
            if blank_name {
                return Err(blank("username"));
            }
        }
        if let Some(d) = &def {
            d.validate(&changes, false)?;
        }
        self.modify(
            ctx,
            kind,
            id,
            new_hash.as_deref(),
            Perm::Update,
            &mut |doc| {
                for (k, v) in &changes {
                    doc.insert(k.clone(), v.clone());
                }
                Ok(())
            },
        )
    }

    fn modify(
        &self,
        ctx: &Ctx,
        kind: &str,
        id: &str,
        new_hash: Option<&str>,
        perm: Perm,
        f: Edit<'_>,
    ) -> Result<Value, EdsError> {
        let caller = ctx.caller.clone();
        let now = crate::time::now();
        let r = self.storage.modify(
            id,
            new_hash,
            &mut |r| {
                if r.kind != kind || !r.acl.allows(&caller, Perm::Read) {
                    return Err(not_found(kind, id));
                }
                if !r.acl.allows(&caller, perm) {
                    return Err(EdsError::Forbidden(format!(
                        "you may not {} this object",
                        perm.name()
                    )));
                }
                f(&mut r.doc)?;
                r.doc.insert("updatedAt".into(), json!(now));
                if let Some(u) = caller.user_id() {
                    r.doc.insert("updater".into(), user_ref(u));
                }
                Ok(())
            },
            ctx.change("update"),
        )?;
        self.wrote();
        r.map(|r| Value::Object(r.doc))
            .ok_or_else(|| not_found(kind, id))
    }

    /// `PUT /v1/objects/T/ID/atomic`: `$push`, `$pull`, `$inc`, `$set`, `$unset`.
    pub fn atomic(&self, ctx: &Ctx, kind: &str, id: &str, body: &Value) -> Result<Value, EdsError> {
        let Value::Object(ops) = body else {
            return Err(EdsError::BadRequest(
                "the body must be an object like {\"$inc\":{\"count\":1}}".to_owned(),
            ));
        };
        let mut planned = Vec::new();
        for (op, args) in ops {
            if !matches!(op.as_str(), "$push" | "$pull" | "$inc" | "$set" | "$unset") {
                return Err(EdsError::BadRequest(format!(
                    "unknown atomic operator {op}: $push, $pull, $inc, $set or $unset"
                )));
            }
            let Value::Object(args) = args else {
                return Err(EdsError::BadRequest(format!(
                    "{op} takes an object of properties"
                )));
            };
            for (prop, v) in args {
                if READ_ONLY.contains(&prop.as_str()) {
                    return Err(EdsError::Validation {
                        property: prop.clone(),
                        message: "is read-only".to_owned(),
                    });
                }
                check_property_name(prop)?;
                if op == "$inc" && !v.is_number() {
                    return Err(EdsError::Validation {
                        property: prop.clone(),
                        message: "$inc takes a number".to_owned(),
                    });
                }
                planned.push((op.clone(), prop.clone(), normalize(v)));
            }
        }
        self.modify(ctx, kind, id, None, Perm::Update, &mut |doc| {
            for (op, prop, v) in &planned {
                match op.as_str() {
                    "$set" => {
                        doc.insert(prop.clone(), v.clone());
                    }
                    "$unset" => {
                        doc.remove(prop);
                    }
                    "$inc" => {
                        let cur = doc.get(prop).cloned().unwrap_or(json!(0));
                        let sum = match (cur.as_i64(), v.as_i64()) {
                            (Some(a), Some(b)) => a.checked_add(b).map(Value::from),
                            _ => None,
                        }
                        .or_else(|| Some(json!(cur.as_f64()? + v.as_f64()?)))
                        .ok_or_else(|| EdsError::Validation {
                            property: prop.clone(),
                            message: "is not a number".to_owned(),
                        })?;
                        doc.insert(prop.clone(), sum);
                    }
                    "$push" => match doc.get_mut(prop) {
                        None | Some(Value::Null) => {
                            doc.insert(prop.clone(), json!([v]));
                        }
                        Some(Value::Array(a)) => a.push(v.clone()),
                        Some(_) => {
                            return Err(EdsError::Validation {
                                property: prop.clone(),
                                message: "is not an array".to_owned(),
                            });
                        }
                    },
                    "$pull" => {
                        if let Some(Value::Array(a)) = doc.get_mut(prop) {
                            a.retain(|x| x != v);
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    }

    /// `DELETE /v1/objects/T/ID`; the files it owns go with it.
    pub fn delete(&self, ctx: &Ctx, kind: &str, id: &str) -> Result<(), EdsError> {
        let files = self.storage.files_of(id)?;
        let caller = ctx.caller.clone();
        let gone = self.storage.delete(
            id,
            &mut |r| {
                if r.kind != kind || !r.acl.allows(&caller, Perm::Read) {
                    return Err(not_found(kind, id));
                }
                if !r.acl.allows(&caller, Perm::Delete) {
                    return Err(EdsError::Forbidden(
                        "you may not delete this object".to_owned(),
                    ));
                }
                Ok(())
            },
            ctx.change("delete"),
        )?;
        self.wrote();
        if gone.is_some() {
            for f in &files {
                self.remove_bytes(f);
            }
        }
        gone.map(|_| ()).ok_or_else(|| not_found(kind, id))
    }

    /// `GET /v1/objects/T` (and users, usergroups, a group's members): `{"results","query"}`
    /// or `{"count"}`, leaving out what the caller may not read.
    pub fn list(
        &self,
        ctx: &Ctx,
        kind: &str,
        q: &Query,
        member_of: Option<&str>,
    ) -> Result<Value, EdsError> {
        let (perms, _) = self.perms(kind)?;
        if !perms.may_read(&ctx.caller) && member_of.is_none() {
            return Err(EdsError::Forbidden(format!("you may not list {kind}")));
        }
        let readers = ctx.caller.reader_keys();
        let scope = Scope {
            readers: readers.as_deref(),
            member_of,
        };
        if q.count {
            let n = self.storage.count(kind, &q.filter, scope)?;
            return Ok(json!({ "count": n }));
        }
        let mut results = Vec::new();
        for r in self.storage.list(kind, q, scope)? {
            let mut v = Value::Object(r.doc);
            self.include(ctx, &mut v, &q.include)?;
            results.push(v);
        }
        Ok(json!({"results": results, "query": q.echo}))
    }

    /// `GET /v1/search`: objects of the given types whose indexed text matches, that the
    /// caller may read (types it may not list are refused).
    pub fn search(&self, ctx: &Ctx, query: Option<&str>) -> Result<Value, EdsError> {
        let q = crate::query::parse_params(query)?;
        let s = crate::search::parse(query, q.limit, q.offset)?;
        for t in &s.types {
            let (perms, _) = self.perms(t)?;
            if !perms.may_read(&ctx.caller) {
                return Err(EdsError::Forbidden(format!("you may not list {t}")));
            }
        }
        let readers = ctx.caller.reader_keys();
        let scope = Scope {
            readers: readers.as_deref(),
            member_of: None,
        };
        if q.count {
            return Ok(json!({ "count": self.storage.search_count(&s, scope)? }));
        }
        let mut results = Vec::new();
        for r in self.storage.search(&s, scope)? {
            let mut v = Value::Object(r.doc);
            self.include(ctx, &mut v, &q.include)?;
            results.push(v);
        }
        Ok(json!({"results": results, "query": q.echo}))
    }

    /// `/v1/…/ID/access`: an object's ACL, read or changed by its admins.
    pub fn access(
        &self,
        ctx: &Ctx,
        kind: &str,
        id: &str,
        op: AccessOp,
        body: &Value,
    ) -> Result<Value, EdsError> {
        if op == AccessOp::Get {
            let r = self.readable(ctx, kind, id)?;
            if !r.acl.allows(&ctx.caller, Perm::Admin) {
                return Err(EdsError::Forbidden(
                    "only the object's admins may see its ACL".to_owned(),
                ));
            }
            return Ok(r.acl.to_json());
        }
        let given = Acl::parse(body)?;
        let creator = ctx.caller.user_id().map(str::to_owned);
        let given = given.resolve_creator(creator.as_deref());
        let caller = ctx.caller.clone();
        let r = self.storage.modify(
            id,
            None,
            &mut |r| {
                if r.kind != kind || !r.acl.allows(&caller, Perm::Read) {
                    return Err(not_found(kind, id));
                }
                if !r.acl.allows(&caller, Perm::Admin) {
                    return Err(EdsError::Forbidden(
                        "only the object's admins may change its ACL".to_owned(),
                    ));
                }
                match op {
                    AccessOp::Grant => r.acl.grant(&given),
                    AccessOp::Revoke => r.acl.revoke(&given),
                    _ => r.acl = given.clone(),
                }
                Ok(())
            },
            ctx.change("update"),
        )?;
        self.wrote();
        r.map(|r| r.acl.to_json())
            .ok_or_else(|| not_found(kind, id))
    }

    /// `POST /v1/auth/oauth2/token` (password grant): a session token and the user.
    pub fn login(&self, username: &str, password: &str) -> Result<Value, EdsError> {
        let found = if username.is_empty() || password.is_empty() {
            None
        } else {
            self.storage.credentials(username)?
        };
        let user = match found {
            Some((id, hash)) if crate::password::verify(password, &hash) => id,
            Some(_) => return Err(invalid_grant()),
            None => {
                let _ = crate::password::verify(password, crate::password::decoy());
                return Err(invalid_grant());
            }
        };
        let token = crate::ids::random_hex(32).map_err(|e| EdsError::Storage(e.to_string()))?;
        self.storage.put_token(
            &sha256_hex(&token),
            &user,
            crate::time::unix_now() + TOKEN_TTL_SECS,
        )?;
        let ctx = Ctx {
            caller: Caller::Master,
            request_id: None,
        };
        let u = self.get(&ctx, "users", &user, &[])?;
        let groups: Vec<Value> = self
            .storage
            .groups_of(&user)?
            .into_iter()
            .map(|g| json!({"id": g, "objectType": "usergroups"}))
            .collect();
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": TOKEN_TTL_SECS,
            "enginio_data": {"user": u, "usergroups": groups},
        }))
    }

    /// `POST /v1/auth/oauth2/revoke`: ends a session token.
    pub fn revoke(&self, token: &str) -> Result<(), EdsError> {
        self.storage.revoke_token(&sha256_hex(token))?;
        Ok(())
    }

    /// `GET /v1/user`: the signed-in user, with its groups.
    pub fn me(&self, ctx: &Ctx) -> Result<Value, EdsError> {
        let Caller::User { id, groups } = &ctx.caller else {
            return Err(EdsError::Unauthorized(
                "sign in first: POST /v1/auth/oauth2/token".to_owned(),
            ));
        };
        let master = Ctx {
            caller: Caller::Master,
            request_id: None,
        };
        let mut u = self.get(&master, "users", id, &[])?;
        u["usergroups"] = groups
            .iter()
            .map(|g| json!({"id": g, "objectType": "usergroups"}))
            .collect();
        Ok(u)
    }

    /// `POST`/`DELETE /v1/usergroups/G/members`: adds or removes a user; the user answers.
    pub fn member(
        &self,
        ctx: &Ctx,
        group: &str,
        body: &Value,
        add: bool,
    ) -> Result<Value, EdsError> {
        let user = match (
            body.get("id").and_then(Value::as_str),
            body.get("objectType").and_then(Value::as_str),
        ) {
            (Some(id), None | Some("users")) => id.to_owned(),
            _ => {
                return Err(EdsError::BadRequest(
                    "name the member in the body: {\"id\":USER_ID,\"objectType\":\"users\"}"
                        .to_owned(),
                ));
            }
        };
        let g = self.readable(ctx, "usergroups", group)?;
        if !g.acl.allows(&ctx.caller, Perm::Update) {
            return Err(EdsError::Forbidden(
                "you may not change this group's members".to_owned(),
            ));
        }
        let master = Ctx {
            caller: Caller::Master,
            request_id: None,
        };
        let u = self.get(&master, "users", &user, &[])?;
        let changed = self.storage.set_member(group, &user, add)?;
        if !add && !changed {
            return Err(EdsError::NotFound(format!(
                "user {user} is not a member of {group}"
            )));
        }
        Ok(u)
    }

    /// `GET /v1/usergroups/G/members`.
    pub fn members(&self, ctx: &Ctx, group: &str, q: &Query) -> Result<Value, EdsError> {
        self.readable(ctx, "usergroups", group)?;
        self.list(ctx, "users", q, Some(group))
    }

    /// `POST /v1/object_types` (the master key only): declares a type.
    pub fn put_type(&self, ctx: &Ctx, body: &Value) -> Result<Value, EdsError> {
        if !ctx.caller.is_master() {
            return Err(EdsError::Forbidden(
                "object types need the backend's master key".to_owned(),
            ));
        }
        let def = TypeDef::parse(body)?;
        self.storage.put_type(&def)?;
        Ok(def.raw)
    }

    /// `GET /v1/webhooks`, `POST /v1/webhooks`, `DELETE /v1/webhooks/ID` (the master key
    /// only): a backend's webhooks.
    pub fn webhooks(
        &self,
        ctx: &Ctx,
        method: &http::Method,
        id: Option<&str>,
        body: &Value,
        sink: &dyn crate::webhooks::Sink,
    ) -> Result<(u16, Value), EdsError> {
        if !ctx.caller.is_master() {
            return Err(EdsError::Forbidden(
                "webhooks need the backend's master key".to_owned(),
            ));
        }
        match (method.as_str(), id) {
            ("GET", None) => {
                let all: Vec<Value> = self
                    .storage
                    .webhooks()?
                    .iter()
                    .map(crate::webhooks::to_json)
                    .collect();
                Ok((200, json!({ "results": all })))
            }
            ("POST", None) => {
                let w = crate::webhooks::parse(body, sink)?;
                let w = self.storage.add_webhook(&w)?;
                Ok((201, crate::webhooks::to_json(&w)))
            }
            ("DELETE", Some(id)) => {
                if self.storage.remove_webhook(id)? {
                    Ok((200, json!({})))
                } else {
                    Err(EdsError::NotFound(format!("no webhook {id}")))
                }
            }
            _ => Err(EdsError::NotFound("no such resource".to_owned())),
        }
    }

    /// Links an MWS gateway in-process: every change goes to its enginio receiver.
    pub fn link(&self, gateway_id: &str) -> Result<(), EdsError> {
        self.storage.add_webhook(&crate::storage::Webhook {
            id: crate::ids::new_id(),
            target: format!("gateway:{gateway_id}"),
            types: Vec::new(),
            headers: Default::default(),
            cursor: 0,
            created_at: crate::time::now(),
        })?;
        Ok(())
    }

    /// Unlinks a gateway; false if it was not linked.
    pub fn unlink(&self, gateway_id: &str) -> Result<bool, EdsError> {
        let target = format!("gateway:{gateway_id}");
        for w in self.storage.webhooks()? {
            if w.target == target {
                return self.storage.remove_webhook(&w.id);
            }
        }
        Ok(false)
    }

    /// The gateways linked to this backend, by id.
    pub fn linked(&self) -> Result<Vec<String>, EdsError> {
        Ok(self
            .storage
            .webhooks()?
            .into_iter()
            .filter_map(|w| w.target.strip_prefix("gateway:").map(str::to_owned))
            .collect())
    }

    /// `GET /v1/object_types` (the master key only).
    pub fn types(&self, ctx: &Ctx) -> Result<Value, EdsError> {
        if !ctx.caller.is_master() {
            return Err(EdsError::Forbidden(
                "object types need the backend's master key".to_owned(),
            ));
        }
        let all: Vec<Value> = self.storage.types()?.into_iter().map(|d| d.raw).collect();
        Ok(json!({ "results": all }))
    }
}

fn invalid_grant() -> EdsError {
    EdsError::Unauthorized("invalid_grant".to_owned())
}
