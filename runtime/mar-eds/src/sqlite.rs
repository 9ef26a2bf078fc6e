//! The embedded storage: one SQLite file per backend (WAL, `synchronous=FULL`, so an
//! acknowledged write survives a `kill -9`), one writer connection and a few readers.
//!
//! Objects are rows of JSON (`objects.doc`) with their ACL; `readers` indexes who may read
//! each one (read and admin subjects), so a list filters by ACL inside SQL and its count
//! agrees with it; `idx` holds the values of the properties a type declares indexed (each
//! array element a row, as MongoDB's multikey indexes), so an equality query on one is an
//! index lookup, not a scan. Queries compile to SQL over SQLite's JSON functions with every
//! path and value a bound parameter (`?N`); nothing from a client is ever spliced into SQL
//! text. `$regex` uses a `regexp()` function backed by the `regex` crate (linear time).
//!
//! The full-text index `search` is contentless (`content=''`, `contentless_delete=1`): a
//! search needs only the matching rowids (`search_docs` says whose they are), so the text is
//! not stored a second time, which spared FTS5's content row on every insert. Files made
//! before keep their contentful table; the statements are the same for both.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::{Map, Value};

use crate::EdsError;
use crate::acl::{Acl, Subject};
use crate::query::{Cond, Filter, Path, Query};
use crate::storage::{Change, ChangeRow, Modify, Record, Scope, Search, Storage, Webhook};
use crate::types::TypeDef;

/// The tables of a backend's file (public for the benchmark's raw reference of the same shape).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    doc TEXT NOT NULL,
    acl TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_type ON objects(type, seq);
CREATE TABLE IF NOT EXISTS readers (
    subject TEXT NOT NULL,
    object INTEGER NOT NULL REFERENCES objects(seq) ON DELETE CASCADE,
    PRIMARY KEY (subject, object)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readers_by_object ON readers(object);
CREATE TABLE IF NOT EXISTS idx (
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    value,
    object INTEGER NOT NULL REFERENCES objects(seq) ON DELETE CASCADE,
    PRIMARY KEY (type, name, value, object)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_by_object ON idx(object);
CREATE TABLE IF NOT EXISTS credentials (
    user_id TEXT PRIMARY KEY REFERENCES objects(id) ON DELETE CASCADE,
    username TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    group_id TEXT NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(user_id);
CREATE TABLE IF NOT EXISTS types (
    name TEXT PRIMARY KEY,
    def TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    type TEXT NOT NULL,
    object TEXT NOT NULL,
    receivers TEXT NOT NULL,
    request_id TEXT,
    user_id TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS search_docs (
    rowid INTEGER PRIMARY KEY,
    object INTEGER NOT NULL REFERENCES objects(seq) ON DELETE CASCADE,
    type TEXT NOT NULL,
    prop TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS search_docs_by_object ON search_docs(object);
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(text, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY REFERENCES objects(id) ON DELETE CASCADE,
    owner TEXT NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    property TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files(owner);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL UNIQUE,
    types TEXT NOT NULL,
    headers TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
";

/// Change rows kept behind the newest once every webhook has passed them (the notification
/// stream and new readers look back this far).
const CHANGES_KEPT: i64 = 10_000;

/// Change rows kept at most, even for a webhook that has failed for that long: past it the
/// oldest go, and that webhook skips them (said in the server's log).
const CHANGES_CAP: i64 = 200_000;

/// Reader connections beside the writer.
const READERS: usize = 2;

/// A backend's SQLite file.
pub struct SqliteStorage {
    writer: Mutex<Connection>,
    /// Inserts waiting for the writer: whoever takes it commits them all (group commit).
    pending: Mutex<Vec<Arc<PendingInsert>>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    types: RwLock<HashMap<String, Arc<TypeDef>>>,
}

fn storage_err(e: rusqlite::Error) -> EdsError {
    EdsError::Storage(e.to_string())
}

/// A search phrase FTS5 cannot parse is the client's mistake, not the storage's.
fn search_err(e: rusqlite::Error) -> EdsError {
    let text = e.to_string();
    if text.contains("fts5") {
        EdsError::BadQuery(format!("the search phrase: {text}"))
    } else {
        EdsError::Storage(text)
    }
}

fn open(path: &FsPath) -> Result<Connection, EdsError> {
    let conn = Connection::open(path).map_err(storage_err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(storage_err)?;
    // What one statement may cost beyond what the query parser already bounds.
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, 64 << 20)
        .map_err(storage_err)?;
    add_regexp(&conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// `regexp(pattern, text)`, the compiled pattern kept per statement.
fn add_regexp(conn: &Connection) -> Result<(), EdsError> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "regexp",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let re: Arc<regex::Regex> = ctx.get_or_create_aux(0, |v| {
                let s = v
                    .as_str()
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                regex::RegexBuilder::new(s)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })?;
            let text = match ctx.get_raw(1) {
                rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t).unwrap_or(""),
                _ => return Ok(false),
            };
            Ok(re.is_match(text))
        },
    )
    .map_err(storage_err)
}

impl SqliteStorage {
    /// Opens (creating) the file at `path`.
    pub fn open(path: &FsPath) -> Result<Self, EdsError> {
        let writer = open(path)?;
        writer.execute_batch(SCHEMA).map_err(storage_err)?;
        let readers = (0..READERS)
            .map(|_| open(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let s = SqliteStorage {
            writer: Mutex::new(writer),
            pending: Mutex::new(Vec::new()),
            readers,
            next_reader: Default::default(),
            types: RwLock::new(HashMap::new()),
        };
        let defs = stored_types(&s.write()).map_err(storage_err)?;
        let mut types = HashMap::new();
        for d in defs {
            if let Ok(v) = serde_json::from_str::<Value>(&d)
                && let Ok(def) = TypeDef::parse(&v)
            {
                types.insert(def.name.clone(), Arc::new(def));
            }
        }
        *s.types.write().unwrap_or_else(|e| e.into_inner()) = types;
        Ok(s)
    }

    fn write(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Ok(g) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return g;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The records a compiled SELECT of `id, type, doc, acl` finds (`err` says whose fault a
    /// failure is).
    fn records(
        &self,
        text: &str,
        params: &[Sql],
        err: fn(rusqlite::Error) -> EdsError,
    ) -> Result<Vec<Record>, EdsError> {
        let conn = self.read();
        // The same query shapes come again and again: their compiled statements are kept.
        let mut stmt = conn.prepare_cached(text).map_err(storage_err)?;
        let rows = stmt
            .query_map(params_from_iter(params.iter()), row_record)
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        rows.into_iter().map(to_record).collect()
    }

    /// The first column of a one-parameter query, as strings.
    fn strings(&self, sql: &str, param: &str) -> Result<Vec<String>, EdsError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(sql).map_err(storage_err)?;
        let rows = stmt
            .query_map(params![param], |r| r.get(0))
            .map_err(storage_err)?
            .collect::<Result<Vec<String>, _>>()
            .map_err(storage_err)?;
        Ok(rows)
    }

    fn indexed(&self, kind: &str) -> Vec<String> {
        self.types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .map(|d| d.indexed())
            .unwrap_or_default()
    }
}

/// The type declarations in the file.
fn stored_types(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT def FROM types")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

fn row_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_record((id, kind, doc, acl): (String, String, String, String)) -> Result<Record, EdsError> {
    let doc: Map<String, Value> =
        serde_json::from_str(&doc).map_err(|e| EdsError::Storage(format!("object {id}: {e}")))?;
    let acl = serde_json::from_str::<Value>(&acl)
        .map_err(|e| EdsError::Storage(format!("object {id}'s ACL: {e}")))
        .and_then(|v| Acl::parse(&v))?;
    Ok(Record { id, kind, doc, acl })
}

/// A JSON scalar as an SQL value for `idx` (booleans as 0/1, as SQLite's JSON functions
/// give them); objects, arrays and nulls are not indexed.
fn index_value(v: &Value) -> Option<Sql> {
    match v {
        Value::String(s) => Some(Sql::Text(s.clone())),
        Value::Bool(b) => Some(Sql::Integer(i64::from(*b))),
        Value::Number(n) => n
            .as_i64()
            .map(Sql::Integer)
            .or_else(|| n.as_f64().map(Sql::Real)),
        _ => None,
    }
}

/// Writes a record's reader and index rows, after removing the old ones.
fn write_side_rows(
    tx: &Connection,
    seq: i64,
    r: &Record,
    indexed: &[String],
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM readers WHERE object = ?1")?
        .execute(params![seq])?;
    tx.prepare_cached("DELETE FROM idx WHERE object = ?1")?
        .execute(params![seq])?;
    forget_search(tx, seq)?;
    write_new_side_rows(tx, seq, r, indexed)
}

/// Writes the reader and index rows of a record that has none yet (a new object: nothing to
/// remove first, which saved three statements per insert).
fn write_new_side_rows(
    tx: &Connection,
    seq: i64,
    r: &Record,
    indexed: &[String],
) -> rusqlite::Result<()> {
    for k in r.acl.reader_keys() {
        tx.prepare_cached("INSERT OR IGNORE INTO readers (subject, object) VALUES (?1, ?2)")?
            .execute(params![k, seq])?;
    }
    for name in indexed {
        let values: Vec<&Value> = match r.doc.get(name) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
            None => Vec::new(),
        };
        let mut text = String::new();
        for v in values {
            if let Some(v) = index_value(v) {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO idx (type, name, value, object) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![r.kind, name, v, seq])?;
            }
            if let Value::String(s) = v {
                text.push_str(s);
                text.push('\n');
            }
        }
        // Indexed text is searchable, per property.
        if !text.is_empty() {
            tx.prepare_cached("INSERT INTO search_docs (object, type, prop) VALUES (?1, ?2, ?3)")?
                .execute(params![seq, r.kind, name])?;
            let rowid = tx.last_insert_rowid();
            tx.prepare_cached("INSERT INTO search (rowid, text) VALUES (?1, ?2)")?
                .execute(params![rowid, text])?;
        }
    }
    Ok(())
}

/// Removes an object's rows from the full-text index (which no foreign key reaches).
fn forget_search(tx: &Connection, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "DELETE FROM search WHERE rowid IN (SELECT rowid FROM search_docs WHERE object = ?1)",
    )?
    .execute(params![seq])?;
    tx.prepare_cached("DELETE FROM search_docs WHERE object = ?1")?
        .execute(params![seq])?;
    Ok(())
}

/// An insert waiting for the writer, and its outcome once a leader committed it.
struct PendingInsert {
    job: Mutex<Option<InsertJob>>,
    done: Mutex<Option<Result<(), EdsError>>>,
}

/// What one insert writes.
struct InsertJob {
    record: Record,
    indexed: Vec<String>,
    credentials: Option<(String, String)>,
    event: &'static str,
    request_id: Option<String>,
    user_id: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One insert inside the group's transaction.
fn run_insert(tx: &Connection, job: InsertJob) -> Result<(), EdsError> {
    let r = &job.record;
    let doc = doc_json(r);
    let seq = insert_row(tx, r, &doc).map_err(storage_err)?;
    write_new_side_rows(tx, seq, r, &job.indexed).map_err(storage_err)?;
    if let Some((username, hash)) = &job.credentials {
        tx.prepare_cached("INSERT INTO credentials (user_id, username, hash) VALUES (?1, ?2, ?3)")
            .and_then(|mut st| st.execute(params![r.id, username, hash]))
            .map_err(username_err)?;
    }
    let change = Change {
        event: job.event,
        request_id: job.request_id.as_deref(),
        user_id: job.user_id.as_deref(),
    };
    log_change(tx, r, &doc, change).map_err(storage_err)
}

/// An object's document as stored: serialized once per write, for its row and its change.
fn doc_json(r: &Record) -> String {
    // A map with string keys always serializes.
    serde_json::to_string(&r.doc).unwrap_or_else(|_| "{}".to_owned())
}

/// A new object's row (`doc` is its document, serialized); its sequence number.
fn insert_row(tx: &Connection, r: &Record, doc: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached("INSERT INTO objects (id, type, doc, acl) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![r.id, r.kind, doc, r.acl.to_json().to_string()])?;
    Ok(tx.last_insert_rowid())
}

/// The change row of a write, in the write's transaction (the outbox: a change is logged
/// exactly when it is committed).
fn log_change(tx: &Connection, r: &Record, doc: &str, change: Change<'_>) -> rusqlite::Result<()> {
    let mut subjects: Vec<&Subject> = r.acl.read.iter().chain(&r.acl.admin).collect();
    subjects.sort();
    subjects.dedup();
    let receivers: Vec<Value> = subjects.into_iter().map(Subject::to_json).collect();
    tx.prepare_cached("INSERT INTO changes (event, type, object, receivers, request_id, user_id, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(
        params![
            change.event,
            r.kind,
            doc,
            Value::Array(receivers).to_string(),
            change.request_id,
            change.user_id,
            crate::time::now()
        ],
    )?;
    let seq = tx.last_insert_rowid();
    if seq % 1000 == 0 {
        let slowest: i64 = tx.query_row(
            "SELECT coalesce(min(cursor), ?1) FROM webhooks",
            params![seq],
            |r| r.get(0),
        )?;
        let upto = (seq - CHANGES_KEPT).min(slowest).max(seq - CHANGES_CAP);
        tx.execute("DELETE FROM changes WHERE seq <= ?1", params![upto])?;
    }
    Ok(())
}

fn unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// A credentials write's error: a username another user has, or the storage's.
fn username_err(e: rusqlite::Error) -> EdsError {
    if unique_violation(&e) {
        taken()
    } else {
        storage_err(e)
    }
}

fn taken() -> EdsError {
    EdsError::Validation {
        property: "username".to_owned(),
        message: "has already been taken".to_owned(),
    }
}

impl Storage for SqliteStorage {
    fn insert(
        &self,
        r: &Record,
        credentials: Option<(&str, &str)>,
        change: Change<'_>,
    ) -> Result<(), EdsError> {
        // Group commit: the insert waits in `pending`; whoever holds the writer next commits
        // every waiting insert in one transaction, one fsync, each in a savepoint of its own
        // (one that fails is rolled back alone).
        let slot = Arc::new(PendingInsert {
            job: Mutex::new(Some(InsertJob {
                record: r.clone(),
                indexed: self.indexed(&r.kind),
                credentials: credentials.map(|(u, h)| (u.to_owned(), h.to_owned())),
                event: change.event,
                request_id: change.request_id.map(str::to_owned),
                user_id: change.user_id.map(str::to_owned),
            })),
            done: Mutex::new(None),
        });
        lock(&self.pending).push(slot.clone());
        let mut w = self.write();
        if let Some(done) = lock(&slot.done).take() {
            // A leader committed it while this thread waited for the writer.
            return done;
        }
        let batch = std::mem::take(&mut *lock(&self.pending));
        let mut results = Vec::with_capacity(batch.len());
        let committed = (|| -> rusqlite::Result<()> {
            let mut tx = w.transaction()?;
            for s in &batch {
                let Some(job) = lock(&s.job).take() else {
                    results.push(Err(EdsError::Storage("an insert ran twice".to_owned())));
                    continue;
                };
                let sp = tx.savepoint()?;
                match run_insert(&sp, job) {
                    Ok(()) => {
                        sp.commit()?;
                        results.push(Ok(()));
                    }
                    // Dropping the savepoint rolls this insert back, and only it.
                    Err(e) => results.push(Err(e)),
                }
            }
            tx.commit()
        })();
        // Every insert of the batch gets its outcome, the failed transaction's included.
        let mut mine = Err(EdsError::Storage("the insert was not run".to_owned()));
        let mut results = results.into_iter();
        for s in &batch {
            let r = match &committed {
                Ok(()) => results
                    .next()
                    .unwrap_or_else(|| Err(EdsError::Storage("the insert was not run".to_owned()))),
                Err(e) => Err(EdsError::Storage(e.to_string())),
            };
            if Arc::ptr_eq(s, &slot) {
                mine = r;
            } else {
                *lock(&s.done) = Some(r);
            }
        }
        mine
    }

    fn get(&self, id: &str) -> Result<Option<Record>, EdsError> {
        let conn = self.read();
        let row = conn
            .prepare_cached("SELECT id, type, doc, acl FROM objects WHERE id = ?1")
            .and_then(|mut stmt| stmt.query_row(params![id], row_record).optional())
            .map_err(storage_err)?;
        row.map(to_record).transpose()
    }

    fn modify(
        &self,
        id: &str,
        new_hash: Option<&str>,
        f: Modify<'_>,
        change: Change<'_>,
    ) -> Result<Option<Record>, EdsError> {
        let mut w = self.write();
        let tx = w
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage_err)?;
        let row = tx
            .query_row(
                "SELECT seq, id, type, doc, acl FROM objects WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                    ))
                },
            )
            .optional()
            .map_err(storage_err)?;
        let Some((seq, row)) = row else {
            return Ok(None);
        };
        let mut r = to_record(row)?;
        f(&mut r)?;
        let doc = doc_json(&r);
        tx.execute(
            "UPDATE objects SET doc = ?1, acl = ?2 WHERE seq = ?3",
            params![doc, r.acl.to_json().to_string(), seq],
        )
        .map_err(storage_err)?;
        let indexed = self.indexed(&r.kind);
        write_side_rows(&tx, seq, &r, &indexed).map_err(storage_err)?;
        if r.kind == "users" {
            if let Some(username) = r.doc.get("username").and_then(Value::as_str) {
                tx.execute(
                    "UPDATE credentials SET username = ?1 WHERE user_id = ?2",
                    params![username, r.id],
                )
                .map_err(username_err)?;
            }
            if let Some(hash) = new_hash {
                tx.execute(
                    "UPDATE credentials SET hash = ?1 WHERE user_id = ?2",
                    params![hash, r.id],
                )
                .map_err(storage_err)?;
                // A new password ends the user's sessions.
                tx.execute("DELETE FROM tokens WHERE user_id = ?1", params![r.id])
                    .map_err(storage_err)?;
            }
        }
        log_change(&tx, &r, &doc, change).map_err(storage_err)?;
        tx.commit().map_err(storage_err)?;
        Ok(Some(r))
    }

    fn delete(
        &self,
        id: &str,
        check: &mut dyn FnMut(&Record) -> Result<(), EdsError>,
        change: Change<'_>,
    ) -> Result<Option<Record>, EdsError> {
        let mut w = self.write();
        let tx = w
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage_err)?;
        let row = tx
            .query_row(
                "SELECT id, type, doc, acl FROM objects WHERE id = ?1",
                params![id],
                row_record,
            )
            .optional()
            .map_err(storage_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let r = to_record(row)?;
        check(&r)?;
        let seq: i64 = tx
            .query_row("SELECT seq FROM objects WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .map_err(storage_err)?;
        forget_search(&tx, seq).map_err(storage_err)?;
        // The files it owns go with it (their bytes are the caller's to remove).
        tx.execute(
            "DELETE FROM objects WHERE id IN (SELECT id FROM files WHERE owner = ?1)",
            params![id],
        )
        .map_err(storage_err)?;
        tx.execute("DELETE FROM objects WHERE id = ?1", params![id])
            .map_err(storage_err)?;
        log_change(&tx, &r, &doc_json(&r), change).map_err(storage_err)?;
        tx.commit().map_err(storage_err)?;
        Ok(Some(r))
    }

    fn list(&self, kind: &str, q: &Query, scope: Scope<'_>) -> Result<Vec<Record>, EdsError> {
        let mut sql = Compiled::default();
        let filter = sql.filter(kind, &q.filter, scope, &self.indexed(kind));
        let mut order = String::new();
        for k in &q.sort {
            if k.path.0 == ["id"] {
                order.push_str("o.id");
            } else {
                let p = sql.param(Sql::Text(k.path.json_path()));
                order.push_str(&format!("json_extract(o.doc, ?{p})"));
            }
            order.push_str(if k.desc { " DESC, " } else { " ASC, " });
        }
        order.push_str("o.seq ASC");
        let limit = sql.param(Sql::Integer(q.limit as i64));
        let offset = sql.param(Sql::Integer(q.offset.min(i64::MAX as u64) as i64));
        let text = format!(
            "SELECT o.id, o.type, o.doc, o.acl FROM objects o WHERE {filter} ORDER BY {order} LIMIT ?{limit} OFFSET ?{offset}"
        );
        self.records(&text, &sql.params, storage_err)
    }

    fn count(&self, kind: &str, filter: &Filter, scope: Scope<'_>) -> Result<u64, EdsError> {
        let mut sql = Compiled::default();
        let f = sql.filter(kind, filter, scope, &self.indexed(kind));
        let text = format!("SELECT count(*) FROM objects o WHERE {f}");
        let conn = self.read();
        let n: i64 = conn
            .prepare_cached(&text)
            .and_then(|mut stmt| stmt.query_row(params_from_iter(sql.params.iter()), |r| r.get(0)))
            .map_err(storage_err)?;
        Ok(n.max(0) as u64)
    }

    fn credentials(&self, username: &str) -> Result<Option<(String, String)>, EdsError> {
        let conn = self.read();
        conn.prepare_cached("SELECT user_id, hash FROM credentials WHERE username = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![username], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(storage_err)
    }

    fn put_token(&self, hash: &str, user: &str, expires: i64) -> Result<(), EdsError> {
        let w = self.write();
        // Expired tokens go as new ones come.
        w.execute(
            "DELETE FROM tokens WHERE expires_at < ?1",
            params![crate::time::unix_now()],
        )
        .map_err(storage_err)?;
        w.execute(
            "INSERT INTO tokens (hash, user_id, expires_at) VALUES (?1, ?2, ?3)",
            params![hash, user, expires],
        )
        .map_err(storage_err)?;
        Ok(())
    }

    fn token_user(&self, hash: &str, now: i64) -> Result<Option<String>, EdsError> {
        let conn = self.read();
        conn.prepare_cached("SELECT user_id FROM tokens WHERE hash = ?1 AND expires_at > ?2")
            .and_then(|mut stmt| stmt.query_row(params![hash, now], |r| r.get(0)).optional())
            .map_err(storage_err)
    }

    fn revoke_token(&self, hash: &str) -> Result<bool, EdsError> {
        let n = self
            .write()
            .execute("DELETE FROM tokens WHERE hash = ?1", params![hash])
            .map_err(storage_err)?;
        Ok(n > 0)
    }

    fn groups_of(&self, user: &str) -> Result<Vec<String>, EdsError> {
        self.strings(
            "SELECT group_id FROM members WHERE user_id = ?1 ORDER BY group_id",
            user,
        )
    }

    fn set_member(&self, group: &str, user: &str, member: bool) -> Result<bool, EdsError> {
        let w = self.write();
        let n = if member {
            w.execute(
                "INSERT OR IGNORE INTO members (group_id, user_id) VALUES (?1, ?2)",
                params![group, user],
            )
        } else {
            w.execute(
                "DELETE FROM members WHERE group_id = ?1 AND user_id = ?2",
                params![group, user],
            )
        }
        .map_err(storage_err)?;
        Ok(n > 0)
    }

    fn put_type(&self, def: &TypeDef) -> Result<(), EdsError> {
        let indexed = def.indexed();
        let mut w = self.write();
        let tx = w.transaction().map_err(storage_err)?;
        tx.execute(
            "INSERT INTO types (name, def) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET def = excluded.def",
            params![def.name, def.raw.to_string()],
        )
        .map_err(storage_err)?;
        // The index follows the declaration: rebuilt for the objects already there.
        tx.execute("DELETE FROM idx WHERE type = ?1", params![def.name])
            .map_err(storage_err)?;
        {
            let mut stmt = tx
                .prepare("SELECT seq, id, type, doc, acl FROM objects WHERE type = ?1")
                .map_err(storage_err)?;
            let rows = stmt
                .query_map(params![def.name], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                    ))
                })
                .map_err(storage_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage_err)?;
            for (seq, row) in rows {
                let r = to_record(row)?;
                write_side_rows(&tx, seq, &r, &indexed).map_err(storage_err)?;
            }
        }
        tx.commit().map_err(storage_err)?;
        self.types
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(def.name.clone(), Arc::new(def.clone()));
        Ok(())
    }

    fn insert_file(
        &self,
        r: &Record,
        owner: &str,
        property: &str,
        change: Change<'_>,
    ) -> Result<(), EdsError> {
        let mut w = self.write();
        let tx = w.transaction().map_err(storage_err)?;
        let doc = doc_json(r);
        let seq = insert_row(&tx, r, &doc).map_err(storage_err)?;
        write_new_side_rows(&tx, seq, r, &[]).map_err(storage_err)?;
        tx.execute(
            "INSERT INTO files (id, owner, property) VALUES (?1, ?2, ?3)",
            params![r.id, owner, property],
        )
        .map_err(storage_err)?;
        log_change(&tx, r, &doc, change).map_err(storage_err)?;
        tx.commit().map_err(storage_err)
    }

    fn file_owner(&self, id: &str) -> Result<Option<(String, String)>, EdsError> {
        self.read()
            .query_row(
                "SELECT owner, property FROM files WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(storage_err)
    }

    fn files_of(&self, owner: &str) -> Result<Vec<String>, EdsError> {
        self.strings("SELECT id FROM files WHERE owner = ?1", owner)
    }

    fn file_states(&self) -> Result<Vec<(String, bool, String)>, EdsError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare(
                "SELECT o.id, json_extract(o.doc, '$.status') = 'complete', json_extract(o.doc, '$.updatedAt') FROM files f JOIN objects o ON o.id = f.id",
            )
            .map_err(storage_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<bool>>(1)?.unwrap_or(false),
                    r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                ))
            })
            .map_err(storage_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_err)?;
        Ok(rows)
    }

    fn search(&self, s: &Search, scope: Scope<'_>) -> Result<Vec<Record>, EdsError> {
        let mut sql = Compiled::default();
        let w = sql.search(s, scope);
        let limit = sql.param(Sql::Integer(s.limit as i64));
        let offset = sql.param(Sql::Integer(s.offset.min(i64::MAX as u64) as i64));
        let text = format!(
            "SELECT o.id, o.type, o.doc, o.acl FROM objects o WHERE {w} ORDER BY o.seq LIMIT ?{limit} OFFSET ?{offset}"
        );
        self.records(&text, &sql.params, search_err)
    }

    fn search_count(&self, s: &Search, scope: Scope<'_>) -> Result<u64, EdsError> {
        let mut sql = Compiled::default();
        let w = sql.search(s, scope);
        let n: i64 = self
            .read()
            .query_row(
                &format!("SELECT count(*) FROM objects o WHERE {w}"),
                params_from_iter(sql.params.iter()),
                |r| r.get(0),
            )
            .map_err(search_err)?;
        Ok(n.max(0) as u64)
    }

    fn last_change(&self) -> Result<i64, EdsError> {
        self.read()
            .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(storage_err)
    }

    fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<ChangeRow>, EdsError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, event, type, object, receivers, request_id, user_id FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(storage_err)?;
        let rows = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })
            .map_err(storage_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_err)?;
        rows.into_iter()
            .map(
                |(seq, event, kind, object, receivers, request_id, user_id)| {
                    Ok(ChangeRow {
                        seq,
                        event,
                        kind,
                        object: serde_json::from_str(&object)
                            .map_err(|e| EdsError::Storage(format!("change {seq}: {e}")))?,
                        receivers: serde_json::from_str(&receivers)
                            .map_err(|e| EdsError::Storage(format!("change {seq}: {e}")))?,
                        request_id,
                        user_id,
                    })
                },
            )
            .collect()
    }

    fn webhooks(&self) -> Result<Vec<Webhook>, EdsError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, target, types, headers, cursor, created_at FROM webhooks ORDER BY created_at, id",
            )
            .map_err(storage_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(storage_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_err)?;
        Ok(rows
            .into_iter()
            .map(|(id, target, types, headers, cursor, created_at)| Webhook {
                id,
                target,
                types: serde_json::from_str(&types).unwrap_or_default(),
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                cursor,
                created_at,
            })
            .collect())
    }

    fn add_webhook(&self, w: &Webhook) -> Result<Webhook, EdsError> {
        let conn = self.write();
        // It sees the changes from now on.
        let cursor: i64 = conn
            .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(storage_err)?;
        conn.execute(
            "INSERT INTO webhooks (id, target, types, headers, cursor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                w.id,
                w.target,
                serde_json::json!(w.types).to_string(),
                serde_json::json!(w.headers).to_string(),
                cursor,
                w.created_at
            ],
        )
        .map_err(|e| {
            if unique_violation(&e) {
                EdsError::Validation {
                    property: "url".to_owned(),
                    message: "already has a webhook".to_owned(),
                }
            } else {
                storage_err(e)
            }
        })?;
        Ok(Webhook {
            cursor,
            ..w.clone()
        })
    }

    fn remove_webhook(&self, id: &str) -> Result<bool, EdsError> {
        let n = self
            .write()
            .execute("DELETE FROM webhooks WHERE id = ?1", params![id])
            .map_err(storage_err)?;
        Ok(n > 0)
    }

    fn advance_webhook(&self, id: &str, cursor: i64) -> Result<(), EdsError> {
        self.write()
            .execute(
                "UPDATE webhooks SET cursor = max(cursor, ?1) WHERE id = ?2",
                params![cursor, id],
            )
            .map_err(storage_err)?;
        Ok(())
    }

    fn type_def(&self, name: &str) -> Result<Option<TypeDef>, EdsError> {
        Ok(self
            .types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|d| (**d).clone()))
    }

    fn types(&self) -> Result<Vec<TypeDef>, EdsError> {
        let mut all: Vec<TypeDef> = self
            .types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|d| (**d).clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}

/// The negation of a condition, where a condition on an absent property (SQL NULL) counts
/// as false, so its negation holds (MongoDB's `$ne` matches objects without the property).
fn not(cond: &str) -> String {
    format!("NOT IFNULL({cond}, 0)")
}

/// Joins conditions with AND or OR as a balanced tree, so a long list (a `$in` of a
/// thousand values) stays far under SQLite's expression depth limit.
fn balanced(parts: &[String], op: &str) -> String {
    match parts {
        [] => {
            if op == " AND " {
                "1".to_owned()
            } else {
                "0".to_owned()
            }
        }
        [one] => one.clone(),
        _ => {
            let (a, b) = parts.split_at(parts.len() / 2);
            format!("({}{op}{})", balanced(a, op), balanced(b, op))
        }
    }
}

/// SQL text under construction, with its numbered parameters.
#[derive(Default)]
struct Compiled {
    params: Vec<Sql>,
    aliases: usize,
}

/// How a value is compared: its JSON type class and its SQL value.
enum Scalar {
    Null,
    Bool(bool),
    Number(Sql),
    Text(String),
}

fn scalar(v: &Value) -> Option<Scalar> {
    match v {
        Value::Null => Some(Scalar::Null),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Number(_) => index_value(v).map(Scalar::Number),
        Value::String(s) => Some(Scalar::Text(s.clone())),
        _ => None,
    }
}

impl Compiled {
    /// The WHERE clause of a search: the objects of these types with a searchable property
    /// matching the phrase, that the caller may read.
    fn search(&mut self, s: &Search, scope: Scope<'_>) -> String {
        let m = self.param(Sql::Text(s.matching.clone()));
        let types: Vec<String> = s
            .types
            .iter()
            .map(|t| format!("?{}", self.param(Sql::Text(t.clone()))))
            .collect();
        let mut inner = format!(
            "SELECT d.object FROM search JOIN search_docs d ON d.rowid = search.rowid WHERE search MATCH ?{m} AND d.type IN ({})",
            types.join(", ")
        );
        if !s.properties.is_empty() {
            let props: Vec<String> = s
                .properties
                .iter()
                .map(|p| format!("?{}", self.param(Sql::Text(p.clone()))))
                .collect();
            inner.push_str(&format!(" AND d.prop IN ({})", props.join(", ")));
        }
        let mut w = format!("o.seq IN ({inner})");
        if let Some(keys) = scope.readers {
            let list: Vec<String> = keys
                .iter()
                .map(|k| format!("?{}", self.param(Sql::Text(k.clone()))))
                .collect();
            w.push_str(&format!(
                " AND o.seq IN (SELECT object FROM readers WHERE subject IN ({}))",
                list.join(", ")
            ));
        }
        w
    }

    /// Adds a parameter; its number for `?N`.
    fn param(&mut self, v: Sql) -> usize {
        self.params.push(v);
        self.params.len()
    }

    fn alias(&mut self) -> String {
        self.aliases += 1;
        format!("e{}", self.aliases)
    }

    /// The WHERE clause of a list: type, scope, filter.
    fn filter(&mut self, kind: &str, f: &Filter, scope: Scope<'_>, indexed: &[String]) -> String {
        let t = self.param(Sql::Text(kind.to_owned()));
        let mut parts = vec![format!("o.type = ?{t}")];
        if let Some(keys) = scope.readers {
            let list: Vec<String> = keys
                .iter()
                .map(|k| format!("?{}", self.param(Sql::Text(k.clone()))))
                .collect();
            parts.push(format!(
                "o.seq IN (SELECT object FROM readers WHERE subject IN ({}))",
                list.join(", ")
            ));
        }
        if let Some(g) = scope.member_of {
            let g = self.param(Sql::Text(g.to_owned()));
            parts.push(format!(
                "o.id IN (SELECT user_id FROM members WHERE group_id = ?{g})"
            ));
        }
        let cond = self.compile(f, "o.doc", Some((t, indexed)));
        parts.push(cond);
        parts.join(" AND ")
    }

    /// A filter over the JSON document `doc` (an SQL expression); `top` gives the type's
    /// parameter and indexed properties when `doc` is a stored object's.
    fn compile(&mut self, f: &Filter, doc: &str, top: Option<(usize, &[String])>) -> String {
        match f {
            Filter::And(fs) if fs.is_empty() => "1".to_owned(),
            Filter::And(fs) => self.join(fs, " AND ", doc, top),
            Filter::Or(fs) => self.join(fs, " OR ", doc, top),
            Filter::Nor(fs) => not(&self.join(fs, " OR ", doc, top)),
            Filter::At(path, c) => self.cond_at(path, c, doc, top),
            // Only meaningful inside `$elemMatch`, which compiles it itself.
            Filter::Here(_) => "0".to_owned(),
        }
    }

    fn join(
        &mut self,
        fs: &[Filter],
        op: &str,
        doc: &str,
        top: Option<(usize, &[String])>,
    ) -> String {
        let parts: Vec<String> = fs.iter().map(|f| self.compile(f, doc, top)).collect();
        balanced(&parts, op)
    }

    fn cond_at(
        &mut self,
        path: &Path,
        c: &Cond,
        doc: &str,
        top: Option<(usize, &[String])>,
    ) -> String {
        // Ids by the primary key's index.
        if top.is_some() && path.0 == ["id"] {
            match c {
                Cond::Eq(Value::String(id)) => {
                    let p = self.param(Sql::Text(id.clone()));
                    return format!("o.id = ?{p}");
                }
                Cond::In(ids) if ids.iter().all(Value::is_string) => {
                    let list: Vec<String> = ids
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| format!("?{}", self.param(Sql::Text(s.to_owned()))))
                        .collect();
                    return format!("o.id IN ({})", list.join(", "));
                }
                _ => {}
            }
        }
        // Equality on a declared indexed property: an index lookup.
        if let (Some((t, indexed)), [name], Cond::Eq(v)) = (top, path.0.as_slice(), c)
            && indexed.contains(name)
            && let Some(value) = index_value(v)
        {
            let n = self.param(Sql::Text(name.clone()));
            let v = self.param(value);
            return format!(
                "o.seq IN (SELECT object FROM idx WHERE type = ?{t} AND name = ?{n} AND value = ?{v})"
            );
        }
        let p = self.param(Sql::Text(path.json_path()));
        let (ty, val) = (
            format!("json_type({doc}, ?{p})"),
            format!("json_extract({doc}, ?{p})"),
        );
        match c {
            Cond::Exists(true) => format!("{ty} IS NOT NULL"),
            Cond::Exists(false) => format!("{ty} IS NULL"),
            Cond::Size(n) => {
                let n = self.param(Sql::Integer((*n).min(i64::MAX as u64) as i64));
                format!("({ty} = 'array' AND json_array_length({doc}, ?{p}) = ?{n})")
            }
            Cond::Ne(v) => not(&self.cond_at(path, &Cond::Eq(v.clone()), doc, None)),
            Cond::Nin(vs) => not(&self.cond_at(path, &Cond::In(vs.clone()), doc, None)),
            Cond::Not(cs) => {
                let inner: Vec<String> = cs
                    .iter()
                    .map(|c| self.cond_at(path, c, doc, None))
                    .collect();
                not(&balanced(&inner, " AND "))
            }
            Cond::Both(cs) => {
                let inner: Vec<String> =
                    cs.iter().map(|c| self.cond_at(path, c, doc, top)).collect();
                balanced(&inner, " AND ")
            }
            Cond::All(vs) if vs.is_empty() => "0".to_owned(),
            Cond::All(vs) => {
                let inner: Vec<String> = vs
                    .iter()
                    .map(|v| self.cond_at(path, &Cond::Eq(v.clone()), doc, None))
                    .collect();
                balanced(&inner, " AND ")
            }
            Cond::ElemMatch(f) => {
                let e = self.alias();
                let inner = match f.as_ref() {
                    // Conditions on the element itself, by its JSON type and SQL value.
                    Filter::Here(c) => self.cond_on(c, &format!("{e}.type"), &format!("{e}.atom")),
                    other => {
                        let body = self.compile(other, &format!("{e}.value"), None);
                        format!("{e}.type = 'object' AND {body}")
                    }
                };
                format!(
                    "({ty} = 'array' AND EXISTS (SELECT 1 FROM json_each({doc}, ?{p}) AS {e} WHERE {inner}))"
                )
            }
            // A ref: by its id (and type when given).
            Cond::Eq(Value::Object(m)) if m.get("id").is_some_and(Value::is_string) => {
                let mut sub = path.clone();
                sub.0.push("id".to_owned());
                let id_path = self.param(Sql::Text(sub.json_path()));
                let id = self.param(Sql::Text(m["id"].as_str().unwrap_or_default().to_owned()));
                let mut s = format!("json_extract({doc}, ?{id_path}) = ?{id}");
                if let Some(t) = m.get("objectType").and_then(Value::as_str) {
                    let mut sub = path.clone();
                    sub.0.push("objectType".to_owned());
                    let tp = self.param(Sql::Text(sub.json_path()));
                    let tv = self.param(Sql::Text(t.to_owned()));
                    s = format!("({s} AND json_extract({doc}, ?{tp}) = ?{tv})");
                }
                s
            }
            Cond::Eq(v @ (Value::Object(_) | Value::Array(_))) => {
                let j = self.param(Sql::Text(v.to_string()));
                format!("({ty} IN ('object', 'array') AND json({val}) = json(?{j}))")
            }
            // Scalars: on the value, or on any element of an array.
            scalar_cond => {
                let direct = self.cond_on(scalar_cond, &ty, &val);
                let e = self.alias();
                let each = self.cond_on(scalar_cond, &format!("{e}.type"), &format!("{e}.atom"));
                format!(
                    "(({direct}) OR ({ty} = 'array' AND EXISTS (SELECT 1 FROM json_each({doc}, ?{p}) AS {e} WHERE {each})))"
                )
            }
        }
    }

    /// A condition on one value, given SQL for its JSON type and its SQL value.
    fn cond_on(&mut self, c: &Cond, ty: &str, val: &str) -> String {
        match c {
            Cond::Eq(v) => self.eq(v, ty, val),
            Cond::Ne(v) => not(&self.eq(v, ty, val)),
            Cond::In(vs) if vs.is_empty() => "0".to_owned(),
            Cond::In(vs) => self.one_of(vs, ty, val),
            Cond::Nin(vs) if vs.is_empty() => "1".to_owned(),
            Cond::Nin(vs) => not(&self.one_of(vs, ty, val)),
            Cond::Gt(v) | Cond::Gte(v) | Cond::Lt(v) | Cond::Lte(v) => {
                let op = match c {
                    Cond::Gt(_) => ">",
                    Cond::Gte(_) => ">=",
                    Cond::Lt(_) => "<",
                    _ => "<=",
                };
                match scalar(v) {
                    Some(Scalar::Number(n)) => {
                        let n = self.param(n);
                        format!("({ty} IN ('integer', 'real') AND {val} {op} ?{n})")
                    }
                    Some(Scalar::Text(s)) => {
                        let s = self.param(Sql::Text(s));
                        format!("({ty} = 'text' AND {val} {op} ?{s})")
                    }
                    _ => "0".to_owned(),
                }
            }
            Cond::Regex(re) => {
                let r = self.param(Sql::Text(re.clone()));
                format!("({ty} = 'text' AND regexp(?{r}, {val}))")
            }
            Cond::Exists(b) => {
                if *b {
                    format!("{ty} IS NOT NULL")
                } else {
                    format!("{ty} IS NULL")
                }
            }
            Cond::Size(n) => {
                let n = self.param(Sql::Integer((*n).min(i64::MAX as u64) as i64));
                format!("({ty} = 'array' AND json_array_length({val}) = ?{n})")
            }
            Cond::Not(cs) => {
                let parts: Vec<String> = cs.iter().map(|c| self.cond_on(c, ty, val)).collect();
                not(&balanced(&parts, " AND "))
            }
            Cond::Both(cs) => {
                let parts: Vec<String> = cs.iter().map(|c| self.cond_on(c, ty, val)).collect();
                balanced(&parts, " AND ")
            }
            Cond::All(vs) if vs.is_empty() => "0".to_owned(),
            Cond::All(vs) => {
                // On a single element: it equals every one of them.
                let parts: Vec<String> = vs.iter().map(|v| self.eq(v, ty, val)).collect();
                balanced(&parts, " AND ")
            }
            Cond::ElemMatch(_) => "0".to_owned(),
        }
    }

    /// Equal to one of `vs`: strings and numbers as `IN` lists, the rest one by one.
    fn one_of(&mut self, vs: &[Value], ty: &str, val: &str) -> String {
        let (mut texts, mut numbers, mut others) = (Vec::new(), Vec::new(), Vec::new());
        for v in vs {
            match scalar(v) {
                Some(Scalar::Text(s)) => texts.push(format!("?{}", self.param(Sql::Text(s)))),
                Some(Scalar::Number(n)) => numbers.push(format!("?{}", self.param(n))),
                _ => others.push(self.eq(v, ty, val)),
            }
        }
        if !texts.is_empty() {
            others.push(format!(
                "({ty} = 'text' AND {val} IN ({}))",
                texts.join(", ")
            ));
        }
        if !numbers.is_empty() {
            others.push(format!(
                "({ty} IN ('integer', 'real') AND {val} IN ({}))",
                numbers.join(", ")
            ));
        }
        balanced(&others, " OR ")
    }

    fn eq(&mut self, v: &Value, ty: &str, val: &str) -> String {
        match scalar(v) {
            Some(Scalar::Null) => format!("{ty} = 'null'"),
            Some(Scalar::Bool(true)) => format!("{ty} = 'true'"),
            Some(Scalar::Bool(false)) => format!("{ty} = 'false'"),
            Some(Scalar::Number(n)) => {
                let n = self.param(n);
                format!("({ty} IN ('integer', 'real') AND {val} = ?{n})")
            }
            Some(Scalar::Text(s)) => {
                let s = self.param(Sql::Text(s));
                format!("({ty} = 'text' AND {val} = ?{s})")
            }
            None => {
                let j = self.param(Sql::Text(v.to_string()));
                format!("({ty} IN ('object', 'array') AND json({val}) = json(?{j}))")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Acl, Subject};
    use crate::query::parse_params;
    use crate::storage::Search;
    use serde_json::json;

    const U: &str = "0000000000000000000000aa";

    fn change() -> Change<'static> {
        Change {
            event: "create",
            request_id: None,
            user_id: None,
        }
    }

    fn put(s: &SqliteStorage, id: &str, doc: Value, readers: Vec<Subject>) {
        let mut doc = doc.as_object().unwrap().clone();
        doc.insert("id".into(), json!(id));
        s.insert(
            &Record {
                id: id.to_owned(),
                kind: "objects.t".to_owned(),
                doc,
                acl: Acl {
                    read: readers,
                    ..Acl::default()
                },
            },
            None,
            change(),
        )
        .unwrap();
    }

    fn ids(s: &SqliteStorage, params: &str, readers: Option<&[String]>) -> Vec<String> {
        let q = parse_params(Some(params)).unwrap();
        let scope = Scope {
            readers,
            member_of: None,
        };
        let list: Vec<String> = s
            .list("objects.t", &q, scope)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        if q.limit == 100 && q.offset == 0 {
            assert_eq!(
                s.count("objects.t", &q.filter, scope).unwrap(),
                list.len() as u64,
                "count agrees with the list for {params}"
            );
        }
        list
    }

    fn fixture() -> (tempfile::TempDir, SqliteStorage) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(&d.path().join("b.db")).unwrap();
        let all = vec![Subject::Everyone];
        put(
            &s,
            "a",
            json!({"n": 1, "s": "apple", "tags": ["x", "y"], "done": true, "ref": {"id": "r1", "objectType": "objects.l"}}),
            all.clone(),
        );
        put(
            &s,
            "b",
            json!({"n": 5, "s": "Banana", "tags": ["y"], "done": false, "sub": {"k": 2}}),
            all.clone(),
        );
        put(
            &s,
            "c",
            json!({"n": 2.5, "s": "cherry", "tags": [], "items": [{"q": 1}, {"q": 9}], "file": null}),
            all,
        );
        put(
            &s,
            "d",
            json!({"n": "7", "s": "date"}),
            vec![Subject::User(U.into())],
        );
        (d, s)
    }

    #[test]
    fn the_operator_set_on_real_sqlite() {
        let (_d, s) = fixture();
        let q = |q: Value| ids(&s, &format!("q={q}"), None);
        assert_eq!(q(json!({})), ["a", "b", "c", "d"]);
        assert_eq!(q(json!({"done": true})), ["a"]);
        assert_eq!(q(json!({"n": 1})), ["a"]);
        assert_eq!(q(json!({"n": "7"})), ["d"], "a string is not a number");
        assert_eq!(q(json!({"n": {"$gt": 1}})), ["b", "c"]);
        assert_eq!(q(json!({"n": {"$gte": 1, "$lt": 5}})), ["a", "c"]);
        assert_eq!(q(json!({"n": {"$lte": 2.5}})), ["a", "c"]);
        assert_eq!(q(json!({"n": {"$ne": 1}})), ["b", "c", "d"]);
        assert_eq!(q(json!({"n": {"$in": [1, 5]}})), ["a", "b"]);
        assert_eq!(q(json!({"n": {"$nin": [1, 5]}})), ["c", "d"]);
        assert_eq!(
            q(json!({"tags": "y"})),
            ["a", "b"],
            "an array holds the value"
        );
        assert_eq!(q(json!({"tags": {"$all": ["x", "y"]}})), ["a"]);
        assert_eq!(q(json!({"tags": {"$size": 0}})), ["c"]);
        assert_eq!(q(json!({"file": {"$exists": true}})), ["c"], "null exists");
        assert_eq!(q(json!({"file": {"$ne": null}})), ["a", "b", "d"]);
        assert_eq!(q(json!({"sub.k": 2})), ["b"]);
        assert_eq!(q(json!({"tags.0": "x"})), ["a"]);
        assert_eq!(q(json!({"s": {"$regex": "^b", "$options": "i"}})), ["b"]);
        assert_eq!(q(json!({"s": {"$not": {"$regex": "a"}}})), ["c"]);
        assert_eq!(q(json!({"$or": [{"n": 1}, {"s": "date"}]})), ["a", "d"]);
        assert_eq!(
            q(json!({"$and": [{"n": {"$gt": 0}}, {"done": false}]})),
            ["b"]
        );
        assert_eq!(q(json!({"$nor": [{"n": 1}, {"n": 5}]})), ["c", "d"]);
        assert_eq!(
            q(json!({"items": {"$elemMatch": {"q": {"$gt": 5}}}})),
            ["c"]
        );
        assert_eq!(
            q(json!({"ref": {"id": "r1", "objectType": "objects.l"}})),
            ["a"]
        );
        assert_eq!(
            q(json!({"ref": {"id": "r1", "objectType": "objects.other"}})),
            Vec::<String>::new()
        );
        assert_eq!(q(json!({"id": "b"})), ["b"]);
        assert_eq!(q(json!({"id": {"$in": ["b", "c"]}})), ["b", "c"]);
    }

    #[test]
    fn the_largest_queries_the_parser_allows_run() {
        let (_d, s) = fixture();
        let mut many: Vec<Value> = (0..990).map(|i| json!(format!("v{i}"))).collect();
        many.push(json!("apple"));
        assert_eq!(
            ids(&s, &format!("q={}", json!({"s": {"$in": many}})), None),
            ["a"]
        );
        let branches: Vec<Value> = (0..490).map(|i| json!({"n": i + 100})).collect();
        let mut or = branches.clone();
        or.push(json!({"n": 5}));
        assert_eq!(ids(&s, &format!("q={}", json!({"$or": or})), None), ["b"]);
    }

    #[test]
    fn search_covers_indexed_text_follows_changes_and_filters_readers() {
        let (_d, s) = fixture();
        let def = TypeDef::parse(&json!({"name": "t", "properties": [{"name": "s", "indexed": true}, {"name": "tags", "indexed": true}]})).unwrap();
        s.put_type(&def).unwrap();
        let find = |phrase: &str, props: &[&str], readers: Option<&[String]>| -> Vec<String> {
            let q = Search {
                types: vec!["objects.t".into()],
                matching: crate::search::fts_expression(phrase, false).unwrap(),
                properties: props.iter().map(|p| (*p).to_owned()).collect(),
                limit: 100,
                offset: 0,
            };
            let scope = Scope {
                readers,
                member_of: None,
            };
            let found: Vec<String> = s
                .search(&q, scope)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(s.search_count(&q, scope).unwrap(), found.len() as u64);
            found
        };
        assert_eq!(find("banana", &[], None), ["b"]);
        assert_eq!(find("y", &[], None), ["a", "b"]);
        assert_eq!(find("y", &["s"], None), Vec::<String>::new());
        assert_eq!(find("apple OR date", &[], None), ["a", "d"]);
        let anon = vec!["*".to_owned()];
        assert_eq!(find("apple OR date", &[], Some(&anon)), ["a"]);
        s.modify(
            "a",
            None,
            &mut |r| {
                r.doc.insert("s".into(), json!("apricot"));
                Ok(())
            },
            change(),
        )
        .unwrap();
        assert!(find("apple", &[], None).is_empty());
        assert_eq!(find("apricot", &[], None), ["a"]);
        s.delete("a", &mut |_| Ok(()), change()).unwrap();
        assert!(find("apricot", &[], None).is_empty());
    }

    #[test]
    fn concurrent_inserts_commit_together_and_a_failing_one_fails_alone() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStorage::open(&d.path().join("b.db")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut failed = 0;
                    for i in 0..40 {
                        let id = crate::ids::new_id();
                        let mut doc = Map::new();
                        doc.insert("id".into(), json!(id));
                        let r = Record {
                            id,
                            kind: "users".to_owned(),
                            doc,
                            acl: Acl::all(vec![Subject::Everyone]),
                        };
                        // Every thread signs up "same" once: one wins, seven fail alone.
                        let name = if i == 0 {
                            "same".to_owned()
                        } else {
                            format!("u{t}-{i}")
                        };
                        if s.insert(&r, Some((&name, "h")), change()).is_err() {
                            failed += 1;
                        }
                    }
                    failed
                })
            })
            .collect();
        let failed: i32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(failed, 7);
        let all = parse_params(Some("count=")).unwrap();
        assert_eq!(
            s.count("users", &all.filter, Scope::default()).unwrap(),
            8 * 40 - 7
        );
        assert_eq!(
            s.changes_after(0, 1000).unwrap().len(),
            8 * 40 - 7,
            "a change per insert that stayed"
        );
    }

    #[test]
    fn sort_window_and_readers() {
        let (_d, s) = fixture();
        let sort = r#"sort=[{"sortBy":"s","direction":"desc"}]"#;
        assert_eq!(ids(&s, sort, None), ["d", "c", "a", "b"]);
        assert_eq!(
            ids(&s, &format!("{sort}&limit=2&offset=1"), None),
            ["c", "a"]
        );
        let anon = vec!["*".to_owned()];
        assert_eq!(ids(&s, "", Some(&anon)), ["a", "b", "c"]);
        let u = vec!["*".to_owned(), format!("u:{U}")];
        assert_eq!(ids(&s, "", Some(&u)), ["a", "b", "c", "d"]);
    }

    #[test]
    fn injection_through_paths_values_and_sort_keys_is_harmless() {
        let (_d, s) = fixture();
        for hostile in [
            "x') OR 1=1 --",
            "'; DROP TABLE objects; --",
            "n' ) UNION SELECT 1,2,3,4 --",
        ] {
            let q = json!({ "s": hostile });
            assert!(ids(&s, &format!("q={q}"), None).is_empty());
            let q = json!({ "s": {"$in": [hostile]} });
            assert!(ids(&s, &format!("q={q}"), None).is_empty());
            let sort = json!([{"sortBy": hostile}]);
            // A path with a quote is refused before it reaches SQL; the rest sort harmlessly.
            if let Ok(q) = parse_params(Some(&format!("sort={sort}"))) {
                s.list("objects.t", &q, Scope::default()).unwrap();
            }
        }
        assert_eq!(ids(&s, "", None).len(), 4, "nothing was dropped");
    }

    #[test]
    fn indexed_equality_uses_the_index_and_follows_updates() {
        let (_d, s) = fixture();
        let def = TypeDef::parse(&json!({"name": "t", "properties": [{"name": "s", "indexed": true}, {"name": "tags", "indexed": true}]})).unwrap();
        s.put_type(&def).unwrap();
        assert_eq!(
            ids(&s, &format!("q={}", json!({"s": "cherry"})), None),
            ["c"]
        );
        assert_eq!(
            ids(&s, &format!("q={}", json!({"tags": "y"})), None),
            ["a", "b"]
        );
        // The plan is an index lookup, not a scan of objects.
        let mut c = Compiled::default();
        let f = crate::query::parse_filter(&json!({"s": "cherry"})).unwrap();
        let w = c.filter("objects.t", &f, Scope::default(), &def.indexed());
        let conn = s.read();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT o.id FROM objects o WHERE {w}"
            ))
            .unwrap()
            .query_map(params_from_iter(c.params.iter()), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        drop(conn);
        assert!(plan.iter().any(|l| l.contains("idx")), "{plan:?}");
        assert!(!plan.iter().any(|l| l.starts_with("SCAN o")), "{plan:?}");
        s.modify(
            "c",
            None,
            &mut |r| {
                r.doc.insert("s".into(), json!("plum"));
                Ok(())
            },
            change(),
        )
        .unwrap();
        assert!(ids(&s, &format!("q={}", json!({"s": "cherry"})), None).is_empty());
        assert_eq!(ids(&s, &format!("q={}", json!({"s": "plum"})), None), ["c"]);
    }
}
