//! Desired state in SQLite or PostgreSQL: users, orgs, spaces, roles, quotas, domains, apps,
//! routes, packages, builds, droplets, audit events, SLOs, autoscaling policies, syslog drain
//! bindings, services and the leases two controllers share.
//!
//! One connection behind a mutex (SQLite in WAL mode; PostgreSQL through the synchronous
//! client); the API reaches it through [`Db::run`], which moves the work onto a blocking
//! thread so a slow disk or network never stalls the async runtime, and which reconnects a
//! lost PostgreSQL connection on the next call (503 until then). Queries are written once in
//! the dialect both accept (`crate::sql`). The schema is versioned (`PRAGMA user_version` on
//! SQLite, the `schema_version` table on PostgreSQL, migrated there under an advisory lock so
//! two controllers starting together migrate once) and migrated forward at open, one
//! transaction per step, so a restart on an older database upgrades it and a restart on the
//! same one finds everything it left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::sql::{
    Backend, Connection, OptionalExtension as _, Row, Table, all, one, params, table,
};
use hydrant_api::{
    App, AppState, AuditEvent, Build, BuildState, Droplet, HealthCheckType, Package, PackageState,
    Resource, RoleAssignment, Route, Space, SpaceRole, User,
};

use crate::Error;
use crate::api::ApiError;

/// Schema steps, applied in order; step `i` takes `user_version` from `i` to `i + 1`. Append
/// new steps (policies, SLOs, drains), never edit old ones.
pub(crate) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE users (
    guid TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE spaces (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE space_roles (
    space_guid TEXT NOT NULL REFERENCES spaces(guid) ON DELETE CASCADE,
    user_guid TEXT NOT NULL REFERENCES users(guid) ON DELETE CASCADE,
    role TEXT NOT NULL,
    PRIMARY KEY (space_guid, user_guid, role)
);
CREATE TABLE apps (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    space_guid TEXT NOT NULL REFERENCES spaces(guid),
    state TEXT NOT NULL,
    instances INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    command TEXT,
    env TEXT NOT NULL,
    health_check_type TEXT NOT NULL,
    health_check_endpoint TEXT,
    current_droplet_guid TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (space_guid, name)
);
CREATE TABLE routes (
    guid TEXT PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE TABLE packages (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    resources TEXT NOT NULL,
    file_count INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE builds (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    package_guid TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    buildpack TEXT,
    droplet_guid TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE droplets (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    build_guid TEXT NOT NULL,
    buildpack TEXT NOT NULL,
    start_command TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    guid TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    actor TEXT NOT NULL,
    target_guid TEXT NOT NULL,
    target_name TEXT NOT NULL,
    space_guid TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_target ON events(target_guid);
",
    r"
CREATE TABLE slos (
    app_guid TEXT PRIMARY KEY REFERENCES apps(guid) ON DELETE CASCADE,
    spec TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
",
    r"
CREATE TABLE autoscaling_policies (
    app_guid TEXT PRIMARY KEY REFERENCES apps(guid) ON DELETE CASCADE,
    policy TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
",
    r"
CREATE TABLE drains (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    url TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT
);
CREATE INDEX drains_app ON drains(app_guid);
",
    // Tenancy (orgs, org roles, quotas, domains, space-owned routes). Spaces move into orgs
    // and their names become unique per org rather than platform-wide, which SQLite can only
    // do by rebuilding the table (foreign keys are off while migrations run); every existing
    // space lands in the `default` org.
    r"
CREATE TABLE quotas (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    org_guid TEXT REFERENCES orgs(guid) ON DELETE CASCADE,
    total_memory_mb INTEGER,
    total_instances INTEGER,
    total_apps INTEGER,
    total_routes INTEGER,
    total_service_instances INTEGER,
    total_blob_mb INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE orgs (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    quota_guid TEXT REFERENCES quotas(guid) ON DELETE SET NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE org_roles (
    org_guid TEXT NOT NULL REFERENCES orgs(guid) ON DELETE CASCADE,
    user_guid TEXT NOT NULL REFERENCES users(guid) ON DELETE CASCADE,
    role TEXT NOT NULL,
    PRIMARY KEY (org_guid, user_guid, role)
);
INSERT INTO orgs (guid, name, created_at)
    VALUES (lower(hex(randomblob(16))), 'default', CAST(strftime('%s', 'now') AS INTEGER));
CREATE TABLE spaces_tenancy (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    org_guid TEXT NOT NULL REFERENCES orgs(guid),
    quota_guid TEXT REFERENCES quotas(guid) ON DELETE SET NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_guid, name)
);
INSERT INTO spaces_tenancy (guid, name, org_guid, created_at)
    SELECT guid, name, (SELECT guid FROM orgs WHERE name = 'default'), created_at FROM spaces;
DROP TABLE spaces;
ALTER TABLE spaces_tenancy RENAME TO spaces;
CREATE TABLE domains (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    org_guid TEXT REFERENCES orgs(guid) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE TABLE space_routes (
    guid TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    domain TEXT NOT NULL,
    path TEXT NOT NULL,
    space_guid TEXT NOT NULL REFERENCES spaces(guid) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    UNIQUE (host, domain, path)
);
CREATE INDEX space_routes_space ON space_routes(space_guid);
",
    // Services: brokers, their catalogs, instances, bindings and the durable job rows.
    crate::services::store::MIGRATION,
    // Who uploaded which blob: resource matching answers only for a caller's own contents.
    r"
CREATE TABLE blob_uploads (
    sha256 TEXT NOT NULL,
    user_guid TEXT NOT NULL REFERENCES users(guid) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (sha256, user_guid)
);
",
    // Each app's grace between SIGTERM and SIGKILL at a stop, seconds (Cloud Foundry's 10 s).
    r"
ALTER TABLE apps ADD COLUMN stop_timeout_secs INTEGER NOT NULL DEFAULT 10;
",
    // Two controllers on one database: leases for the work only one may do at a time
    // (convergence, blob collection), a claim on each service job step, and which
    // controller stages each build (only its own are failed when it restarts).
    r"
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
ALTER TABLE service_jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE service_jobs ADD COLUMN claimed_until_ms INTEGER;
ALTER TABLE builds ADD COLUMN staged_by TEXT;
",
    // What else controllers behind one name share: API endpoints, the login brake, cell requests.
    crate::lease::SHARED_STATE,
    // Builds queue in the database, claimed by any controller's workers (`staging/queue.rs`).
    crate::staging::MIGRATION,
];

/// Where the tenancy step sits in [`MIGRATIONS`]: PostgreSQL runs [`TENANCY_POSTGRES`] in its
/// place (see there).
const TENANCY_STEP: usize = 4;

/// The tenancy step for PostgreSQL. SQLite can only change a table's unique constraint by
/// rebuilding it (drop, then rename a copy), which PostgreSQL would refuse while other tables'
/// foreign keys point at it; PostgreSQL alters `spaces` in place to the same columns and
/// constraints instead. The schema the two steps leave is the same.
const TENANCY_POSTGRES: &str = r"
CREATE TABLE quotas (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    org_guid TEXT,
    total_memory_mb BIGINT,
    total_instances BIGINT,
    total_apps BIGINT,
    total_routes BIGINT,
    total_service_instances BIGINT,
    total_blob_mb BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE orgs (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    quota_guid TEXT REFERENCES quotas(guid) ON DELETE SET NULL,
    created_at BIGINT NOT NULL
);
ALTER TABLE quotas ADD FOREIGN KEY (org_guid) REFERENCES orgs(guid) ON DELETE CASCADE;
CREATE TABLE org_roles (
    org_guid TEXT NOT NULL REFERENCES orgs(guid) ON DELETE CASCADE,
    user_guid TEXT NOT NULL REFERENCES users(guid) ON DELETE CASCADE,
    role TEXT NOT NULL,
    PRIMARY KEY (org_guid, user_guid, role)
);
INSERT INTO orgs (guid, name, created_at)
    VALUES (md5(random()::text), 'default', CAST(extract(epoch FROM now()) AS BIGINT));
ALTER TABLE spaces ADD COLUMN org_guid TEXT REFERENCES orgs(guid);
UPDATE spaces SET org_guid = (SELECT guid FROM orgs WHERE name = 'default');
ALTER TABLE spaces ALTER COLUMN org_guid SET NOT NULL;
ALTER TABLE spaces ADD COLUMN quota_guid TEXT REFERENCES quotas(guid) ON DELETE SET NULL;
ALTER TABLE spaces DROP CONSTRAINT spaces_name_key;
ALTER TABLE spaces ADD UNIQUE (org_guid, name);
CREATE TABLE domains (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    org_guid TEXT REFERENCES orgs(guid) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE TABLE space_routes (
    guid TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    domain TEXT NOT NULL,
    path TEXT NOT NULL,
    space_guid TEXT NOT NULL REFERENCES spaces(guid) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    UNIQUE (host, domain, path)
);
CREATE INDEX space_routes_space ON space_routes(space_guid);
";

/// Step `step` of [`MIGRATIONS`] as `backend` runs it.
fn migration_sql(backend: Backend, step: usize, sql: &str) -> String {
    match backend {
        Backend::Sqlite => sql.to_owned(),
        Backend::Postgres if step == TENANCY_STEP => TENANCY_POSTGRES.to_owned(),
        Backend::Postgres => crate::sql::to_postgres(sql),
    }
}

/// The session-level advisory lock PostgreSQL migrations (and first-start bootstrap) run
/// under, so two controllers starting together never both migrate ("Hydrant\x01").
const MIGRATION_LOCK: i64 = 0x4879_6472_616e_7401;

/// Where the desired state lives: `[db] url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// A SQLite file (`sqlite://PATH`; the default, `<data_dir>/cloudcontroller.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user:password@host:port/db`).
    Postgres(String),
}

impl DbUrl {
    /// Parses `url`; the error says what to write instead.
    ///
    /// # Errors
    /// Neither a `sqlite://PATH` nor a PostgreSQL URL the client accepts.
    pub fn parse(url: &str) -> Result<Self, String> {
        const HELP: &str =
            "write sqlite://PATH (a file) or postgres://USER:PASSWORD@HOST:PORT/DATABASE";
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!("names no file; {HELP}"));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            crate::sql::PgTarget::parse(url).map_err(|e| {
                format!(
                    "{:?} is not a PostgreSQL URL ({e}); {HELP}",
                    mask_password(url)
                )
            })?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err(format!("{:?} is neither; {HELP}", mask_password(url)))
    }

    /// The URL as logs may show it: the password replaced by `***`.
    #[must_use]
    pub fn shown(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => mask_password(url),
        }
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `url` with the password of its `user:password@` part replaced by `***` (and a
/// `password=` parameter's value too), so a URL can be logged or quoted in an error.
#[must_use]
pub fn mask_password(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find('/').map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let at = rest + at;
            if let Some(colon) = out[rest..at].find(':') {
                out.replace_range(rest + colon + 1..at, "***");
            }
        }
    }
    if let Some(p) = out.find("password=") {
        let start = p + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |i| start + i);
        out.replace_range(start..end, "***");
    }
    out
}

/// The database handle. Clones share one connection, which a lost PostgreSQL connection
/// leaves empty until the next call reconnects.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Option<Connection>>>,
    url: Arc<DbUrl>,
}

impl Db {
    /// Opens (creating) the database at `url`, migrates it to the newest schema and runs
    /// `first_start` (on PostgreSQL both under [`MIGRATION_LOCK`]). Blocks: call it off the
    /// async runtime (the PostgreSQL client runs its own).
    pub(crate) fn open(
        url: &DbUrl,
        first_start: impl FnOnce(&mut Connection) -> Result<(), Error>,
    ) -> Result<Self, Error> {
        let mut conn = connect(url)?;
        match url {
            DbUrl::Sqlite(_) => {
                migrate_sqlite(&mut conn)?;
                first_start(&mut conn)?;
            }
            DbUrl::Postgres(_) => {
                let db_err = |context| move |source| Error::Db { context, source };
                conn.execute("SELECT pg_advisory_lock(?1)", [MIGRATION_LOCK])
                    .map_err(db_err("take the migration lock"))?;
                let done = migrate_postgres(&mut conn).and_then(|()| first_start(&mut conn));
                // Session-level: released by the unlock, or by the connection's end.
                let unlocked = conn
                    .execute("SELECT pg_advisory_unlock(?1)", [MIGRATION_LOCK])
                    .map_err(db_err("release the migration lock"));
                done?;
                unlocked?;
            }
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(Some(conn))),
            url: Arc::new(url.clone()),
        })
    }

    /// Opens a SQLite file with the default first start (none): tests.
    #[cfg(test)]
    pub(crate) fn open_sqlite(path: &Path) -> Result<Self, Error> {
        Self::open(&DbUrl::Sqlite(path.to_path_buf()), |_| Ok(()))
    }

    /// Runs `f` on the connection on a blocking thread. A PostgreSQL connection lost since the
    /// last call is reopened first; while that fails the answer is 503, saying so.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let url = Arc::clone(&self.url);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            if guard.as_ref().is_none_or(Connection::is_closed) {
                *guard = None;
                match connect(&url) {
                    Ok(fresh) => *guard = Some(fresh),
                    Err(e) => {
                        tracing::warn!(db = %url.shown(), error = %e, "cannot reconnect to the database");
                        return Err(ApiError::unavailable(
                            "the cloud controller cannot reach its database right now; retry shortly",
                        ));
                    }
                }
            }
            let Some(c) = guard.as_mut() else {
                return Err(ApiError::unavailable("the database connection is closed"));
            };
            let out = f(c);
            if c.is_closed() {
                *guard = None;
            }
            out
        })
        .await
        .map_err(|e| ApiError::internal(format!("database task failed: {e}")))?
    }

    /// Runs `f` on the connection here (tests on SQLite; never on the async runtime with
    /// PostgreSQL, whose client would block it).
    #[cfg(test)]
    pub(crate) fn blocking<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(c) = guard.as_mut() else {
            panic!("the test database connection is closed");
        };
        f(c)
    }
}

/// A new connection to `url` (SQLite: WAL mode, foreign keys on, its files private).
fn connect(url: &DbUrl) -> Result<Connection, Error> {
    let db_err = |context| move |source| Error::Db { context, source };
    match url {
        DbUrl::Sqlite(path) => {
            let sqlite_err = |context| {
                move |e: rusqlite::Error| Error::Db {
                    context,
                    source: e.into(),
                }
            };
            // SQLite creates its WAL and shared-memory files with the database's mode: make
            // that 0600 first (and repair older, world-readable ones).
            for file in [path.clone(), sidecar(path, "-wal"), sidecar(path, "-shm")] {
                if &file == path || file.exists() {
                    crate::blobs::private_file(&file).map_err(|source| Error::Io {
                        path: file.clone(),
                        source,
                    })?;
                }
            }
            let conn = rusqlite::Connection::open(path).map_err(sqlite_err("open"))?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(sqlite_err("enable WAL"))?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(sqlite_err("set synchronous"))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(sqlite_err("set busy timeout"))?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(sqlite_err("enable foreign keys"))?;
            Ok(Connection::Sqlite(conn))
        }
        DbUrl::Postgres(text) => {
            // TLS as the URL asks (`sslrootcert`): see `crate::sql::PgTarget`.
            let mut target = crate::sql::PgTarget::parse(text)
                .map_err(crate::sql::Error::Postgres)
                .map_err(db_err("parse the PostgreSQL URL"))?;
            let config = &mut target.config;
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(std::time::Duration::from_secs(5));
            }
            config.application_name("hydrant-cloudcontroller");
            let client = target
                .connect()
                .map_err(|e| crate::sql::Error::Unavailable(e.to_string()))
                .map_err(db_err("connect to PostgreSQL"))?;
            Ok(Connection::Postgres(std::cell::RefCell::new(
                crate::sql::PgClient::new(client),
            )))
        }
    }
}

/// SQLite: the schema version is `PRAGMA user_version`; one transaction per step.
fn migrate_sqlite(conn: &mut Connection) -> Result<(), Error> {
    let db_err = |context| move |source| Error::Db { context, source };
    let version: usize = conn
        .query_row("PRAGMA user_version", (), |row| row.get(0))
        .map_err(db_err("read schema version"))?;
    if version > MIGRATIONS.len() {
        return Err(Error::Db {
            context: "schema is newer than this cloud controller; upgrade Hydrant",
            source: crate::sql::Error::NoRows,
        });
    }
    // Off while migrating (the bundled SQLite turns them on by default): a step that
    // rebuilds a table drops the old one, which with foreign keys on would cascade.
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(db_err("disable foreign keys while migrating"))?;
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db_err("begin migration"))?;
        tx.execute_batch(&migration_sql(Backend::Sqlite, step, sql))
            .map_err(db_err("migrate schema"))?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", step + 1))
            .map_err(db_err("record schema version"))?;
        tx.commit().map_err(db_err("commit migration"))?;
    }
    conn.execute_batch("PRAGMA foreign_keys = ON")
        .map_err(db_err("enable foreign keys"))
}

/// PostgreSQL: the schema version is the one row of `schema_version`; one transaction per
/// step (PostgreSQL's DDL is transactional). The caller holds [`MIGRATION_LOCK`].
fn migrate_postgres(conn: &mut Connection) -> Result<(), Error> {
    let db_err = |context| move |source| Error::Db { context, source };
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL); \
         INSERT INTO schema_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version)",
    )
    .map_err(db_err("create the schema_version table"))?;
    let version: usize = conn
        .query_row("SELECT version FROM schema_version", (), |row| row.get(0))
        .map_err(db_err("read schema version"))?;
    if version > MIGRATIONS.len() {
        return Err(Error::Db {
            context: "schema is newer than this cloud controller; upgrade Hydrant",
            source: crate::sql::Error::NoRows,
        });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db_err("begin migration"))?;
        tx.execute_batch(&migration_sql(Backend::Postgres, step, sql))
            .map_err(db_err("migrate schema"))?;
        tx.execute("UPDATE schema_version SET version = ?1", [step + 1])
            .map_err(db_err("record schema version"))?;
        tx.commit().map_err(db_err("commit migration"))?;
    }
    Ok(())
}

// === users, spaces, roles ===

/// A user row with its password hash.
#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) user: User,
    pub(crate) password_hash: String,
}

impl Table for UserRow {
    const SELECT: &'static str =
        "SELECT guid, username, password_hash, admin, created_at FROM users";

    fn from_row(row: &Row<'_>) -> crate::sql::Result<Self> {
        let (guid, username, password_hash, admin, created_at) = row.columns()?;
        Ok(UserRow {
            user: User {
                guid,
                username,
                admin,
                created_at,
            },
            password_hash,
        })
    }
}

pub(crate) fn user_by_name(c: &Connection, username: &str) -> crate::sql::Result<Option<UserRow>> {
    one(c, "WHERE username = ?1", [username])
}

pub(crate) fn insert_user(c: &Connection, user: &User, hash: &str) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO users (guid, username, password_hash, admin, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![user.guid, user.username, hash, user.admin, user.created_at],
    )
    .map(drop)
}

pub(crate) fn list_users(c: &Connection) -> crate::sql::Result<Vec<User>> {
    let rows: Vec<UserRow> = all(c, "ORDER BY username", [])?;
    Ok(rows.into_iter().map(|u| u.user).collect())
}

table!(Space, "SELECT s.guid, s.name, s.org_guid, o.name, s.quota_guid, s.created_at \
     FROM spaces s JOIN orgs o ON o.guid = s.org_guid", {
    guid, name, org_guid, org_name, quota_guid, created_at
});

pub(crate) fn insert_space(c: &Connection, space: &Space) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO spaces (guid, name, org_guid, quota_guid, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            space.guid,
            space.name,
            space.org_guid,
            space.quota_guid,
            space.created_at
        ],
    )
    .map(drop)
}

/// A space by guid.
pub(crate) fn space_by_guid(c: &Connection, guid: &str) -> crate::sql::Result<Option<Space>> {
    one(c, "WHERE s.guid = ?1", [guid])
}

/// A space of org `org_guid` by guid or, failing that, by name.
pub(crate) fn find_space_in(
    c: &Connection,
    org_guid: &str,
    guid_or_name: &str,
) -> crate::sql::Result<Option<Space>> {
    one(
        c,
        "WHERE s.org_guid = ?1 AND (s.guid = ?2 OR s.name = ?2) \
         ORDER BY s.guid = ?2 DESC LIMIT 1",
        [org_guid, guid_or_name],
    )
}

/// A space by guid or, failing that, by name (the `default` org's first, then any org's).
/// It ignores who is asking: handlers that act for a user resolve spaces with
/// `tenancy::visible_space`, which answers 404 for spaces the caller may not see.
pub(crate) fn find_space(c: &Connection, guid_or_name: &str) -> crate::sql::Result<Option<Space>> {
    Ok(spaces_named(c, guid_or_name)?
        .into_iter()
        .min_by_key(|s| (s.guid != guid_or_name, s.org_name != "default")))
}

/// Every space named `name` or with guid `name`, in any org.
pub(crate) fn spaces_named(c: &Connection, name: &str) -> crate::sql::Result<Vec<Space>> {
    all(
        c,
        "WHERE s.guid = ?1 OR s.name = ?1 ORDER BY s.guid = ?1 DESC, o.name",
        [name],
    )
}

pub(crate) fn list_spaces(c: &Connection) -> crate::sql::Result<Vec<Space>> {
    all(c, "ORDER BY o.name, s.name", [])
}

pub(crate) fn set_role(
    c: &Connection,
    space_guid: &str,
    user_guid: &str,
    role: SpaceRole,
) -> crate::sql::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO space_roles (space_guid, user_guid, role) VALUES (?1, ?2, ?3)",
        params![space_guid, user_guid, role.as_str()],
    )
    .map(drop)
}

pub(crate) fn remove_role(
    c: &Connection,
    space_guid: &str,
    user_guid: &str,
    role: SpaceRole,
) -> crate::sql::Result<usize> {
    c.execute(
        "DELETE FROM space_roles WHERE space_guid = ?1 AND user_guid = ?2 AND role = ?3",
        params![space_guid, user_guid, role.as_str()],
    )
}

/// Role assignments, filtered by space and/or user.
pub(crate) fn roles(
    c: &Connection,
    space_guid: Option<&str>,
    user_guid: Option<&str>,
) -> crate::sql::Result<Vec<RoleAssignment>> {
    let rows: Vec<(String, String, String, String, String)> = crate::sql::rows(
        c,
        "SELECT r.space_guid, s.name, u.username, r.role, o.name FROM space_roles r \
         JOIN spaces s ON s.guid = r.space_guid JOIN users u ON u.guid = r.user_guid \
         JOIN orgs o ON o.guid = s.org_guid \
         WHERE (?1 IS NULL OR r.space_guid = ?1) AND (?2 IS NULL OR r.user_guid = ?2) \
         ORDER BY o.name, s.name, u.username, r.role",
        params![space_guid, user_guid],
    )?;
    // A role this version does not know is left out rather than failing the list.
    let known =
        rows.into_iter()
            .filter_map(|(space_guid, space_name, username, role, org_name)| {
                SpaceRole::parse(&role).map(|role| RoleAssignment {
                    space_guid,
                    space_name,
                    org_name,
                    username,
                    role,
                })
            });
    Ok(known.collect())
}

// === apps ===

impl Table for App {
    const SELECT: &'static str = "SELECT a.guid, a.name, a.space_guid, s.name, a.state, \
         a.instances, a.memory_mb, a.disk_mb, a.command, a.env, a.health_check_type, \
         a.health_check_endpoint, a.current_droplet_guid, a.created_at, a.updated_at, \
         a.stop_timeout_secs FROM apps a JOIN spaces s ON s.guid = a.space_guid";

    fn from_row(row: &Row<'_>) -> crate::sql::Result<Self> {
        let (guid, name, space_guid, space_name) = row.columns()?;
        let state: String = row.get(4)?;
        let env: String = row.get(9)?;
        let check: String = row.get(10)?;
        Ok(App {
            guid,
            name,
            space_guid,
            space_name,
            state: if state == "STARTED" {
                AppState::Started
            } else {
                AppState::Stopped
            },
            instances: row.get(5)?,
            memory_mb: row.get(6)?,
            disk_mb: row.get(7)?,
            command: row.get(8)?,
            env: serde_json::from_str(&env).unwrap_or_default(),
            health_check_type: match check.as_str() {
                "http" => HealthCheckType::Http,
                "process" => HealthCheckType::Process,
                _ => HealthCheckType::Port,
            },
            health_check_endpoint: row.get(11)?,
            stop_timeout_secs: row.get(15)?,
            current_droplet_guid: row.get(12)?,
            routes: Vec::new(),
            created_at: row.get(13)?,
            updated_at: row.get(14)?,
        })
    }
}

fn check_str(kind: HealthCheckType) -> &'static str {
    match kind {
        HealthCheckType::Port => "port",
        HealthCheckType::Http => "http",
        HealthCheckType::Process => "process",
    }
}

fn with_routes(c: &Connection, mut app: App) -> crate::sql::Result<App> {
    app.routes = routes_of(c, &app.guid)?
        .into_iter()
        .map(|r| r.url)
        .collect();
    Ok(app)
}

pub(crate) fn get_app(c: &Connection, guid: &str) -> crate::sql::Result<Option<App>> {
    let app = one(c, "WHERE a.guid = ?1", [guid])?;
    app.map(|a| with_routes(c, a)).transpose()
}

/// Every app, optionally only those named `name` and/or in the spaces `spaces`.
pub(crate) fn list_apps(c: &Connection, name: Option<&str>) -> crate::sql::Result<Vec<App>> {
    let apps: Vec<App> = all(
        c,
        "WHERE (?1 IS NULL OR a.name = ?1) ORDER BY s.name, a.name",
        [name],
    )?;
    apps.into_iter().map(|a| with_routes(c, a)).collect()
}

pub(crate) fn insert_app(c: &Connection, app: &App) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO apps (guid, name, space_guid, state, instances, memory_mb, disk_mb, \
         command, env, health_check_type, health_check_endpoint, current_droplet_guid, \
         created_at, updated_at, stop_timeout_secs) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            app.guid,
            app.name,
            app.space_guid,
            app.state.as_str(),
            app.instances,
            app.memory_mb,
            app.disk_mb,
            app.command,
            env_json(&app.env),
            check_str(app.health_check_type),
            app.health_check_endpoint,
            app.current_droplet_guid,
            app.created_at,
            app.updated_at,
            app.stop_timeout_secs
        ],
    )
    .map(drop)
}

/// Writes every mutable field of `app`.
pub(crate) fn update_app(c: &Connection, app: &App) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE apps SET name = ?2, state = ?3, instances = ?4, memory_mb = ?5, disk_mb = ?6, \
         command = ?7, env = ?8, health_check_type = ?9, health_check_endpoint = ?10, \
         current_droplet_guid = ?11, updated_at = ?12, stop_timeout_secs = ?13 WHERE guid = ?1",
        params![
            app.guid,
            app.name,
            app.state.as_str(),
            app.instances,
            app.memory_mb,
            app.disk_mb,
            app.command,
            env_json(&app.env),
            check_str(app.health_check_type),
            app.health_check_endpoint,
            app.current_droplet_guid,
            app.updated_at,
            app.stop_timeout_secs
        ],
    )
    .map(drop)
}

pub(crate) fn delete_app(c: &Connection, guid: &str) -> crate::sql::Result<()> {
    c.execute("DELETE FROM apps WHERE guid = ?1", [guid])
        .map(drop)
}

fn env_json(env: &BTreeMap<String, String>) -> String {
    serde_json::to_string(env).unwrap_or_else(|_| "{}".to_owned())
}

// === routes ===

table!(Route, "SELECT guid, url, app_guid, created_at FROM routes", {
    guid, url, app_guid, created_at
});

pub(crate) fn routes_of(c: &Connection, app_guid: &str) -> crate::sql::Result<Vec<Route>> {
    all(c, "WHERE app_guid = ?1 ORDER BY url", [app_guid])
}

pub(crate) fn list_routes(c: &Connection) -> crate::sql::Result<Vec<Route>> {
    all(c, "ORDER BY url", [])
}

pub(crate) fn route_by_url(c: &Connection, url: &str) -> crate::sql::Result<Option<Route>> {
    one(c, "WHERE url = ?1", [url])
}

pub(crate) fn insert_route(c: &Connection, route: &Route) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO routes (guid, url, app_guid, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![route.guid, route.url, route.app_guid, route.created_at],
    )
    .map(drop)
}

pub(crate) fn delete_route(c: &Connection, url: &str, app_guid: &str) -> crate::sql::Result<usize> {
    c.execute(
        "DELETE FROM routes WHERE url = ?1 AND app_guid = ?2",
        [url, app_guid],
    )
}

// === packages, builds, droplets ===

// A stored package is always ready: it is written once its upload is complete.
table!(Package, "SELECT guid, app_guid, file_count, size, sha256, created_at FROM packages", {
    guid, app_guid, file_count, size, sha256, created_at; state: PackageState::Ready
});

pub(crate) fn insert_package(
    c: &Connection,
    package: &Package,
    resources: &[Resource],
) -> crate::sql::Result<()> {
    let resources = serde_json::to_string(resources).unwrap_or_else(|_| "[]".to_owned());
    c.execute(
        "INSERT INTO packages (guid, app_guid, resources, file_count, size, sha256, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            package.guid,
            package.app_guid,
            resources,
            package.file_count,
            package.size,
            package.sha256,
            package.created_at
        ],
    )
    .map(drop)
}

pub(crate) fn get_package(c: &Connection, guid: &str) -> crate::sql::Result<Option<Package>> {
    one(c, "WHERE guid = ?1", [guid])
}

pub(crate) fn newest_package(
    c: &Connection,
    app_guid: &str,
) -> crate::sql::Result<Option<Package>> {
    one(
        c,
        "WHERE app_guid = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1",
        [app_guid],
    )
}

pub(crate) fn package_resources(c: &Connection, guid: &str) -> crate::sql::Result<Vec<Resource>> {
    let text: Option<String> = c
        .query_row(
            "SELECT resources FROM packages WHERE guid = ?1",
            [guid],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

const BUILD_COLUMNS: &str =
    "guid, app_guid, package_guid, state, error, buildpack, droplet_guid, created_at, updated_at";

fn build_from(row: &Row<'_>) -> crate::sql::Result<Build> {
    let state: String = row.get(3)?;
    Ok(Build {
        guid: row.get(0)?,
        app_guid: row.get(1)?,
        package_guid: row.get(2)?,
        state: match state.as_str() {
            "STAGED" => BuildState::Staged,
            "FAILED" => BuildState::Failed,
            _ => BuildState::Staging,
        },
        error: row.get(4)?,
        buildpack: row.get(5)?,
        droplet_guid: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

pub(crate) fn get_build(c: &Connection, guid: &str) -> crate::sql::Result<Option<Build>> {
    c.query_row(
        &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE guid = ?1"),
        [guid],
        build_from,
    )
    .optional()
}

/// Builds left `STAGING` by a previous run of controller `stager` (or from before builds
/// named theirs) cannot finish: they fail, saying why. Another controller's builds on a
/// shared database are still being staged there.
pub(crate) fn fail_interrupted_builds(
    c: &Connection,
    now: i64,
    stager: &str,
) -> crate::sql::Result<usize> {
    c.execute(
        "UPDATE builds SET state = 'FAILED', error = 'the cloud controller restarted while \
         staging; create the build again', updated_at = ?1 WHERE state = 'STAGING' \
         AND (staged_by IS NULL OR staged_by = ?2)",
        params![now, stager],
    )
}

const DROPLET_COLUMNS: &str =
    "guid, app_guid, build_guid, buildpack, start_command, sha256, size, created_at";

table!(Droplet, "SELECT guid, app_guid, build_guid, buildpack, start_command, sha256, size, \
     created_at FROM droplets", {
    guid, app_guid, build_guid, buildpack, start_command, sha256, size, created_at
});

pub(crate) fn insert_droplet(c: &Connection, d: &Droplet) -> crate::sql::Result<()> {
    c.execute(
        &format!(
            "INSERT INTO droplets ({DROPLET_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            d.guid,
            d.app_guid,
            d.build_guid,
            d.buildpack,
            d.start_command,
            d.sha256,
            d.size,
            d.created_at
        ],
    )
    .map(drop)
}

pub(crate) fn get_droplet(c: &Connection, guid: &str) -> crate::sql::Result<Option<Droplet>> {
    one(c, "WHERE guid = ?1", [guid])
}

pub(crate) fn droplets_of(c: &Connection, app_guid: &str) -> crate::sql::Result<Vec<Droplet>> {
    all(
        c,
        "WHERE app_guid = ?1 ORDER BY created_at, rowid",
        [app_guid],
    )
}

// === audit events ===

pub(crate) fn insert_event(c: &Connection, e: &AuditEvent) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO events (guid, type, actor, target_guid, target_name, space_guid, data, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            e.guid,
            e.event_type,
            e.actor,
            e.target_guid,
            e.target_name,
            e.space_guid,
            e.data.to_string(),
            e.created_at
        ],
    )
    .map(drop)
}

/// Events, oldest first, filtered by target; at most `limit` of the newest.
pub(crate) fn list_events(
    c: &Connection,
    target_guid: Option<&str>,
    limit: usize,
) -> crate::sql::Result<Vec<AuditEvent>> {
    let mut stmt = c.prepare(
        "SELECT guid, type, actor, target_guid, target_name, space_guid, data, created_at \
         FROM events WHERE (?1 IS NULL OR target_guid = ?1) ORDER BY seq DESC LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![target_guid, limit], |row| {
        let data: String = row.get(6)?;
        Ok(AuditEvent {
            guid: row.get(0)?,
            event_type: row.get(1)?,
            actor: row.get(2)?,
            target_guid: row.get(3)?,
            target_name: row.get(4)?,
            space_guid: row.get(5)?,
            data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
            created_at: row.get(7)?,
        })
    })?;
    let mut events: Vec<AuditEvent> = rows.collect::<Result<_, _>>()?;
    events.reverse();
    Ok(events)
}

/// `path` with `suffix` appended to its file name (SQLite's `-wal`, `-shm`).
fn sidecar(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cc.db");
        let db = Db::open_sqlite(&path).unwrap();
        db.blocking(|c| {
            let org: String = c
                .query_row("SELECT guid FROM orgs WHERE name = 'default'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            insert_space(
                c,
                &Space {
                    guid: "s1".into(),
                    name: "default".into(),
                    org_guid: org,
                    org_name: "default".into(),
                    quota_guid: None,
                    created_at: 1,
                },
            )
        })
        .unwrap();
        drop(db);
        let db = Db::open_sqlite(&path).unwrap();
        let version: usize = db.blocking(|c| {
            c.query_row("PRAGMA user_version", (), |r| r.get(0))
                .unwrap()
        });
        assert_eq!(version, MIGRATIONS.len());
        let space = db.blocking(|c| space_by_guid(c, "s1")).unwrap().unwrap();
        assert_eq!(space.guid, "s1");
    }
}
