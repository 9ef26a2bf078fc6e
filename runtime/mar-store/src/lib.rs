//! Control-plane state: apps, config vars, releases and formation, in one SQLite file.
//!
//! Invariant: `mar-store` knows nothing about HTTP, git or processes. It is a narrow,
//! synchronous API over one connection; SQLite runs in WAL mode with `synchronous=FULL`, so a
//! committed change survives a crash of `mar serve` or of the machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use mar_core::AppName;
use rusqlite::{Connection, OptionalExtension, params};

/// Errors at the store's edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No app by that name.
    #[error("no such app: {0}")]
    NoSuchApp(String),
    /// An app by that name exists already.
    #[error("app {0} already exists")]
    AppExists(String),
    /// No release with that version.
    #[error("app {app} has no release v{version}")]
    NoSuchRelease {
        /// The app.
        app: String,
        /// The version asked for.
        version: i64,
    },
    /// The database failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A custom domain is in use already.
    #[error("domain {domain} is already used by app {app}")]
    DomainTaken {
        /// The domain.
        domain: String,
        /// The app that has it.
        app: String,
    },
    /// The app has no such custom domain.
    #[error("app {app} has no domain {domain}")]
    NoSuchDomain {
        /// The domain.
        domain: String,
        /// The app.
        app: String,
    },
    /// No service instance by that name.
    #[error("no such service: {0}")]
    NoSuchService(String),
    /// A service instance by that name exists already.
    #[error("service {0} already exists")]
    ServiceExists(String),
    /// No account with that email, or no such app of it.
    #[error("no such account or account app: {0}")]
    NoSuchAccount(String),
    /// An account with that email (or an app of that name) exists already.
    #[error("{0} already exists")]
    AccountExists(String),
    /// The service instance is not attached to that app.
    #[error("service {service} is not attached to {app}")]
    NotAttached {
        /// The service instance.
        service: String,
        /// The app.
        app: String,
    },
    /// The service instance is attached to that app already.
    #[error("service {service} is already attached to {app}")]
    AlreadyAttached {
        /// The service instance.
        service: String,
        /// The app.
        app: String,
    },
    /// A stored JSON column did not parse (the file was edited by hand or is corrupt).
    #[error("state database holds malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// An app as stored.
#[derive(Debug, Clone)]
pub struct App {
    /// Its name.
    pub name: AppName,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// The unprivileged user id the app's builds and processes run as, when `mar` runs as root.
    pub uid: Option<u32>,
}

/// A release: an immutable pairing of a slug with a config snapshot and process types.
#[derive(Debug, Clone)]
pub struct Release {
    /// `N` of `vN`, starting at 1 per app.
    pub version: i64,
    /// What made it (`Deploy 1a2b3c4`, `Set FOO config vars`).
    pub description: String,
    /// Slug archive path, `None` before the first code deploy.
    pub slug: Option<String>,
    /// Slug size in bytes.
    pub slug_size: u64,
    /// Process type → command.
    pub process_types: BTreeMap<String, String>,
    /// Config vars in force for this release.
    pub config: BTreeMap<String, String>,
    /// The git commit deployed, if any.
    pub commit: Option<String>,
    /// Names of the buildpacks that built the slug.
    pub buildpacks: Vec<String>,
    /// The app's health checks (`app.json` `healthchecks`), as JSON; `null` for none.
    pub healthchecks: String,
    /// For a WebAssembly release, what the runtime needs to serve it (the module, its
    /// interface, its manifest settings), as JSON the runtime owns; `None` for processes.
    pub wasm: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// What a new release is made of; the store assigns the version.
#[derive(Debug, Clone, Default)]
pub struct NewRelease {
    /// See [`Release::description`].
    pub description: String,
    /// See [`Release::slug`].
    pub slug: Option<String>,
    /// See [`Release::slug_size`].
    pub slug_size: u64,
    /// See [`Release::process_types`].
    pub process_types: BTreeMap<String, String>,
    /// See [`Release::config`].
    pub config: BTreeMap<String, String>,
    /// See [`Release::commit`].
    pub commit: Option<String>,
    /// See [`Release::buildpacks`].
    pub buildpacks: Vec<String>,
    /// See [`Release::healthchecks`].
    pub healthchecks: String,
    /// See [`Release::wasm`].
    pub wasm: Option<String>,
}

/// A service instance (an MWS gateway; EDS backends later): what apps attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name, unique on this server.
    pub name: String,
    /// `mws`.
    pub kind: String,
    /// Its id in URLs (24 hex digits).
    pub id: String,
    /// The secret that opens its API.
    pub secret: String,
    /// Its access mode (MWS: `none` or `custom`).
    pub access: String,
    /// The rest of its configuration, as its service keeps it (JSON).
    pub settings: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// The state database. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS config_vars (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (app, key)
);
CREATE TABLE IF NOT EXISTS releases (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    description TEXT NOT NULL,
    slug TEXT,
    slug_size INTEGER NOT NULL DEFAULT 0,
    process_types TEXT NOT NULL,
    config TEXT NOT NULL,
    commit_sha TEXT,
    buildpacks TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    PRIMARY KEY (app, version)
);
CREATE TABLE IF NOT EXISTS formation (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    PRIMARY KEY (app, process_type)
);
";

/// Schema changes after the first, in order; `PRAGMA user_version` counts those applied, so
/// a data directory from an older `mar` is brought up to date at start.
const MIGRATIONS: &[&str] = &[
    SCHEMA,
    "ALTER TABLE apps ADD COLUMN uid INTEGER;
     ALTER TABLE releases ADD COLUMN healthchecks TEXT NOT NULL DEFAULT 'null';",
    "CREATE TABLE domains (
         hostname TEXT PRIMARY KEY,
         app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
         created_at TEXT NOT NULL
     );",
    "ALTER TABLE releases ADD COLUMN wasm TEXT;",
    "CREATE TABLE services (
         name TEXT PRIMARY KEY,
         kind TEXT NOT NULL,
         id TEXT NOT NULL UNIQUE,
         secret TEXT NOT NULL,
         access TEXT NOT NULL DEFAULT 'none',
         created_at TEXT NOT NULL
     );",
    "CREATE TABLE attachments (
         service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
         app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
         created_at TEXT NOT NULL,
         PRIMARY KEY (service, app)
     );",
    "ALTER TABLE services ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';",
    "CREATE TABLE accounts (
         email TEXT PRIMARY KEY,
         hash TEXT NOT NULL,
         created_at TEXT NOT NULL
     );
     CREATE TABLE account_apps (
         id TEXT PRIMARY KEY,
         name TEXT NOT NULL,
         account TEXT NOT NULL REFERENCES accounts(email) ON DELETE CASCADE,
         development TEXT NOT NULL,
         production TEXT NOT NULL,
         created_at TEXT NOT NULL,
         UNIQUE (account, name)
     );",
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let applied: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?
        .max(0) as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (every write is a
        // transaction), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates an app, with the user id it was given (allocated host-wide by the caller), if
    /// apps get their own.
    pub fn create_app(&self, name: &AppName, uid: Option<u32>) -> Result<App> {
        let created_at = now();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO apps (name, created_at, uid) VALUES (?1, ?2, ?3)",
            params![name.as_str(), created_at, uid],
        )?;
        if n == 0 {
            return Err(StoreError::AppExists(name.to_string()));
        }
        tx.execute(
            "INSERT INTO formation (app, process_type, quantity) VALUES (?1, 'web', 1)",
            params![name.as_str()],
        )?;
        tx.commit()?;
        Ok(App {
            name: name.clone(),
            created_at,
            uid,
        })
    }

    /// All apps, by name.
    pub fn list_apps(&self) -> Result<Vec<App>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, created_at, uid FROM apps ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
        let mut apps = Vec::new();
        for row in rows {
            let (name, created_at, uid) = row?;
            // Names were validated on the way in; a row that fails now was edited by hand.
            if let Ok(name) = AppName::parse(&name) {
                apps.push(App {
                    name,
                    created_at,
                    uid,
                });
            }
        }
        Ok(apps)
    }

    /// One app, or `NoSuchApp`.
    pub fn get_app(&self, name: &AppName) -> Result<App> {
        self.conn()
            .query_row(
                "SELECT created_at, uid FROM apps WHERE name = ?1",
                params![name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .map(|(created_at, uid)| App {
                name: name.clone(),
                created_at,
                uid,
            })
            .ok_or_else(|| StoreError::NoSuchApp(name.to_string()))
    }

    /// Deletes an app and everything stored for it.
    pub fn delete_app(&self, name: &AppName) -> Result<()> {
        let n = self
            .conn()
            .execute("DELETE FROM apps WHERE name = ?1", params![name.as_str()])?;
        if n == 0 {
            return Err(StoreError::NoSuchApp(name.to_string()));
        }
        Ok(())
    }

    /// The app's current config vars.
    pub fn config(&self, app: &AppName) -> Result<BTreeMap<String, String>> {
        self.get_app(app)?;
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT key, value FROM config_vars WHERE app = ?1 ORDER BY key")?;
        let rows = stmt.query_map(params![app.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a release, and with it the config vars it carries, in one transaction, and
    /// returns it with its assigned version.
    pub fn create_release(&self, app: &AppName, new: NewRelease) -> Result<Release> {
        self.get_app(app)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let version: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app = ?1",
            params![app.as_str()],
            |r| r.get(0),
        )?;
        let created_at = now();
        tx.execute(
            "INSERT INTO releases (app, version, description, slug, slug_size, process_types, config, commit_sha, buildpacks, created_at, healthchecks, wasm)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                app.as_str(),
                version,
                new.description,
                new.slug,
                new.slug_size as i64,
                serde_json::to_string(&new.process_types)?,
                serde_json::to_string(&new.config)?,
                new.commit,
                serde_json::to_string(&new.buildpacks)?,
                created_at,
                new.healthchecks,
                new.wasm,
            ],
        )?;
        tx.execute(
            "DELETE FROM config_vars WHERE app = ?1",
            params![app.as_str()],
        )?;
        for (k, v) in &new.config {
            tx.execute(
                "INSERT INTO config_vars (app, key, value) VALUES (?1, ?2, ?3)",
                params![app.as_str(), k, v],
            )?;
        }
        tx.commit()?;
        Ok(Release {
            version,
            description: new.description,
            slug: new.slug,
            slug_size: new.slug_size,
            process_types: new.process_types,
            config: new.config,
            commit: new.commit,
            buildpacks: new.buildpacks,
            healthchecks: new.healthchecks,
            wasm: new.wasm,
            created_at,
        })
    }

    /// Releases, newest first.
    pub fn releases(&self, app: &AppName) -> Result<Vec<Release>> {
        self.get_app(app)?;
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, description, slug, slug_size, process_types, config, commit_sha, buildpacks, created_at, healthchecks, wasm
             FROM releases WHERE app = ?1 ORDER BY version DESC",
        )?;
        let rows = stmt.query_map(params![app.as_str()], release_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.decode()?);
        }
        Ok(out)
    }

    /// The newest release, if any.
    pub fn current_release(&self, app: &AppName) -> Result<Option<Release>> {
        self.get_app(app)?;
        let row = self
            .conn()
            .query_row(
                "SELECT version, description, slug, slug_size, process_types, config, commit_sha, buildpacks, created_at, healthchecks, wasm
                 FROM releases WHERE app = ?1 ORDER BY version DESC LIMIT 1",
                params![app.as_str()],
                release_row,
            )
            .optional()?;
        row.map(RawRelease::decode).transpose()
    }

    /// Adds a custom domain to an app.
    pub fn add_domain(&self, app: &AppName, domain: &mar_core::Hostname) -> Result<()> {
        self.get_app(app)?;
        let conn = self.conn();
        let owner: Option<String> = conn
            .query_row(
                "SELECT app FROM domains WHERE hostname = ?1",
                params![domain.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(owner) = owner {
            return Err(StoreError::DomainTaken {
                domain: domain.to_string(),
                app: owner,
            });
        }
        conn.execute(
            "INSERT INTO domains (hostname, app, created_at) VALUES (?1, ?2, ?3)",
            params![domain.as_str(), app.as_str(), now()],
        )?;
        Ok(())
    }

    /// Removes a custom domain from an app.
    pub fn remove_domain(&self, app: &AppName, domain: &mar_core::Hostname) -> Result<()> {
        let n = self.conn().execute(
            "DELETE FROM domains WHERE hostname = ?1 AND app = ?2",
            params![domain.as_str(), app.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchDomain {
                domain: domain.to_string(),
                app: app.to_string(),
            });
        }
        Ok(())
    }

    /// Every custom domain with its app (for the router).
    pub fn all_domains(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT hostname, app FROM domains ORDER BY hostname")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One release by version.
    pub fn release(&self, app: &AppName, version: i64) -> Result<Release> {
        self.get_app(app)?;
        let row = self
            .conn()
            .query_row(
                "SELECT version, description, slug, slug_size, process_types, config, commit_sha, buildpacks, created_at, healthchecks, wasm
                 FROM releases WHERE app = ?1 AND version = ?2",
                params![app.as_str(), version],
                release_row,
            )
            .optional()?;
        match row {
            Some(r) => r.decode(),
            None => Err(StoreError::NoSuchRelease {
                app: app.to_string(),
                version,
            }),
        }
    }

    /// Process type → instance count. Types never scaled are absent (meaning 0).
    pub fn formation(&self, app: &AppName) -> Result<BTreeMap<String, u32>> {
        self.get_app(app)?;
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT process_type, quantity FROM formation WHERE app = ?1 ORDER BY process_type",
        )?;
        let rows = stmt.query_map(params![app.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets instance counts for the given types.
    pub fn set_formation(&self, app: &AppName, counts: &BTreeMap<String, u32>) -> Result<()> {
        self.get_app(app)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (t, q) in counts {
            tx.execute(
                "INSERT INTO formation (app, process_type, quantity) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app, process_type) DO UPDATE SET quantity = excluded.quantity",
                params![app.as_str(), t, q],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Store {
    /// Records a new service instance.
    pub fn create_service(
        &self,
        name: &str,
        kind: &str,
        id: &str,
        secret: &str,
    ) -> Result<Service> {
        let created_at = now();
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO services (name, kind, id, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, kind, id, secret, created_at],
        )?;
        if n == 0 {
            return Err(StoreError::ServiceExists(name.to_owned()));
        }
        Ok(Service {
            name: name.to_owned(),
            kind: kind.to_owned(),
            id: id.to_owned(),
            secret: secret.to_owned(),
            access: "none".to_owned(),
            settings: "{}".to_owned(),
            created_at,
        })
    }

    /// Every service instance, by name.
    pub fn list_services(&self) -> Result<Vec<Service>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, kind, id, secret, access, created_at, settings FROM services ORDER BY name",
        )?;
        let rows = stmt.query_map([], service_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One service instance by name.
    pub fn service(&self, name: &str) -> Result<Service> {
        self.conn()
            .query_row(
                "SELECT name, kind, id, secret, access, created_at, settings FROM services WHERE name = ?1",
                params![name],
                service_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchService(name.to_owned()))
    }

    /// Sets a service instance's access mode and settings, by its id.
    pub fn set_service_config(&self, id: &str, access: &str, settings: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE services SET access = ?1, settings = ?2 WHERE id = ?3",
            params![access, settings, id],
        )?;
        Ok(())
    }

    /// Records that `service` is attached to `app`.
    pub fn attach(&self, service: &str, app: &AppName) -> Result<()> {
        self.service(service)?;
        self.get_app(app)?;
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO attachments (service, app, created_at) VALUES (?1, ?2, ?3)",
            params![service, app.as_str(), now()],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyAttached {
                service: service.to_owned(),
                app: app.to_string(),
            });
        }
        Ok(())
    }

    /// Forgets that `service` is attached to `app`.
    pub fn detach(&self, service: &str, app: &AppName) -> Result<()> {
        let n = self.conn().execute(
            "DELETE FROM attachments WHERE service = ?1 AND app = ?2",
            params![service, app.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotAttached {
                service: service.to_owned(),
                app: app.to_string(),
            });
        }
        Ok(())
    }

    /// The service instances attached to `app`, by name.
    pub fn attached_to(&self, app: &AppName) -> Result<Vec<Service>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.name, s.kind, s.id, s.secret, s.access, s.created_at, s.settings
             FROM services s JOIN attachments a ON a.service = s.name
             WHERE a.app = ?1 ORDER BY s.name",
        )?;
        let rows = stmt.query_map(params![app.as_str()], service_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The apps `service` is attached to, by name.
    pub fn attachments_of(&self, service: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT app FROM attachments WHERE service = ?1 ORDER BY app")?;
        let rows = stmt.query_map(params![service], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a service instance.
    pub fn delete_service(&self, name: &str) -> Result<()> {
        let n = self
            .conn()
            .execute("DELETE FROM services WHERE name = ?1", params![name])?;
        if n == 0 {
            return Err(StoreError::NoSuchService(name.to_owned()));
        }
        Ok(())
    }
}

/// A platform account (the Enginio dashboard's): its email and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its email, the sign-in name.
    pub email: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// An account's app: two EDS backends, its development and production environments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountApp {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The account it belongs to.
    pub account: String,
    /// The service instance of its development environment.
    pub development: String,
    /// The service instance of its production environment.
    pub production: String,
}

impl Store {
    /// Records an account with its password hash.
    pub fn create_account(&self, email: &str, hash: &str) -> Result<()> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO accounts (email, hash, created_at) VALUES (?1, ?2, ?3)",
            params![email, hash, now()],
        )?;
        if n == 0 {
            return Err(StoreError::AccountExists(format!("account {email}")));
        }
        Ok(())
    }

    /// Every account.
    pub fn accounts(&self) -> Result<Vec<Account>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT email, created_at FROM accounts ORDER BY email")?;
        let rows = stmt.query_map([], |r| {
            Ok(Account {
                email: r.get(0)?,
                created_at: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// An account's password hash.
    pub fn account_hash(&self, email: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT hash FROM accounts WHERE email = ?1",
                params![email],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Forgets an account (its apps' records go with it; their backends are the caller's).
    pub fn delete_account(&self, email: &str) -> Result<()> {
        let n = self
            .conn()
            .execute("DELETE FROM accounts WHERE email = ?1", params![email])?;
        if n == 0 {
            return Err(StoreError::NoSuchAccount(email.to_owned()));
        }
        Ok(())
    }

    /// Records an account's app.
    pub fn create_account_app(&self, app: &AccountApp) -> Result<()> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO account_apps (id, name, account, development, production, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![app.id, app.name, app.account, app.development, app.production, now()],
        )?;
        if n == 0 {
            return Err(StoreError::AccountExists(format!("app {}", app.name)));
        }
        Ok(())
    }

    /// An account's apps, by name.
    pub fn account_apps(&self, account: &str) -> Result<Vec<AccountApp>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, account, development, production FROM account_apps WHERE account = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![account], account_app_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One of an account's apps.
    pub fn account_app(&self, account: &str, id: &str) -> Result<AccountApp> {
        self.conn()
            .query_row(
                "SELECT id, name, account, development, production FROM account_apps WHERE account = ?1 AND id = ?2",
                params![account, id],
                account_app_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchAccount(format!("app {id}")))
    }

    /// Forgets an account's app.
    pub fn delete_account_app(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM account_apps WHERE id = ?1", params![id])?;
        Ok(())
    }
}

fn account_app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountApp> {
    Ok(AccountApp {
        id: r.get(0)?,
        name: r.get(1)?,
        account: r.get(2)?,
        development: r.get(3)?,
        production: r.get(4)?,
    })
}

fn service_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Service> {
    Ok(Service {
        name: r.get(0)?,
        kind: r.get(1)?,
        id: r.get(2)?,
        secret: r.get(3)?,
        access: r.get(4)?,
        created_at: r.get(5)?,
        settings: r.get(6)?,
    })
}

struct RawRelease {
    version: i64,
    description: String,
    slug: Option<String>,
    slug_size: i64,
    process_types: String,
    config: String,
    commit: Option<String>,
    buildpacks: String,
    created_at: String,
    healthchecks: String,
    wasm: Option<String>,
}

fn release_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRelease> {
    Ok(RawRelease {
        version: r.get(0)?,
        description: r.get(1)?,
        slug: r.get(2)?,
        slug_size: r.get(3)?,
        process_types: r.get(4)?,
        config: r.get(5)?,
        commit: r.get(6)?,
        buildpacks: r.get(7)?,
        created_at: r.get(8)?,
        healthchecks: r.get(9)?,
        wasm: r.get(10)?,
    })
}

impl RawRelease {
    fn decode(self) -> Result<Release> {
        Ok(Release {
            version: self.version,
            description: self.description,
            slug: self.slug,
            slug_size: self.slug_size.max(0) as u64,
            process_types: serde_json::from_str(&self.process_types)?,
            config: serde_json::from_str(&self.config)?,
            commit: self.commit,
            buildpacks: serde_json::from_str(&self.buildpacks)?,
            healthchecks: self.healthchecks,
            wasm: self.wasm,
            created_at: self.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_kept_with_their_access_and_names_are_unique() {
        let (_d, s) = store();
        let g = s.create_service("push", "mws", "a1", "s3cret").unwrap();
        assert_eq!(g.access, "none");
        assert!(matches!(
            s.create_service("push", "mws", "a2", "x"),
            Err(StoreError::ServiceExists(_))
        ));
        s.set_service_config("a1", "custom", r#"{"forward":{"path":"/in"}}"#)
            .unwrap();
        assert_eq!(s.service("push").unwrap().access, "custom");
        assert_eq!(
            s.service("push").unwrap().settings,
            r#"{"forward":{"path":"/in"}}"#
        );
        assert_eq!(s.list_services().unwrap().len(), 1);
        s.delete_service("push").unwrap();
        assert!(matches!(
            s.service("push"),
            Err(StoreError::NoSuchService(_))
        ));
        assert!(matches!(
            s.delete_service("push"),
            Err(StoreError::NoSuchService(_))
        ));
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("mar.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn releases_count_up_and_carry_config() {
        let (_d, s) = store();
        let app = AppName::parse("echo").unwrap();
        s.create_app(&app, None).unwrap();
        assert!(matches!(
            s.create_app(&app, None),
            Err(StoreError::AppExists(_))
        ));
        let mut config = BTreeMap::new();
        config.insert("A".to_owned(), "1".to_owned());
        let r1 = s
            .create_release(
                &app,
                NewRelease {
                    description: "Set A config vars".into(),
                    config: config.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r1.version, 1);
        let r2 = s
            .create_release(
                &app,
                NewRelease {
                    description: "Deploy abc".into(),
                    config,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r2.version, 2);
        assert_eq!(s.current_release(&app).unwrap().unwrap().version, 2);
        assert_eq!(s.config(&app).unwrap()["A"], "1");
        assert_eq!(s.formation(&app).unwrap()["web"], 1);
        assert_eq!(s.release(&app, 1).unwrap().description, "Set A config vars");
        assert!(matches!(
            s.release(&app, 9),
            Err(StoreError::NoSuchRelease { .. })
        ));
        let b = AppName::parse("b").unwrap();
        let c = AppName::parse("c").unwrap();
        assert_eq!(s.create_app(&b, Some(20000)).unwrap().uid, Some(20000));
        assert_eq!(s.create_app(&c, Some(20007)).unwrap().uid, Some(20007));
        let d = mar_core::Hostname::parse("www.example.com").unwrap();
        s.add_domain(&app, &d).unwrap();
        assert!(matches!(
            s.add_domain(&b, &d),
            Err(StoreError::DomainTaken { .. })
        ));
        assert_eq!(
            s.all_domains().unwrap(),
            vec![("www.example.com".to_owned(), "echo".to_owned())]
        );
        s.delete_app(&app).unwrap();
        assert!(matches!(s.get_app(&app), Err(StoreError::NoSuchApp(_))));
        assert!(
            s.all_domains().unwrap().is_empty(),
            "domains go with their app"
        );
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mar.db");
        let app = AppName::parse("keep").unwrap();
        {
            let s = Store::open(&path).unwrap();
            s.create_app(&app, None).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list_apps().unwrap().len(), 1);
    }
}
