//! Metadata persistence for Strongroom's identity provider: users, roles, passkey credentials,
//! WebAuthn ceremony state, enrollment links, sessions, refresh tokens, device codes and the audit
//! trail, in SQLite today and PostgreSQL behind the same [`Store`] later.
//!
//! # Design
//!
//! - **One interface, runtime SQL.** [`Store`] wraps an `sqlx::AnyPool` and runs plain runtime
//!   queries with `$1, $2, …` placeholders, which both SQLite and PostgreSQL accept. No
//!   compile-time checked macros, so no database is needed to build.
//! - **One portable schema** (`migrations/*.sql`, applied in order at open by a small runner):
//!   integers, unix-second timestamps and 0/1 flags are `BIGINT`; ids, JSON documents and
//!   base64url-encoded bytes are `TEXT`; no BLOB/BYTEA, no AUTOINCREMENT/SERIAL, no BOOLEAN (the
//!   Any driver cannot decode SQLite booleans).
//! - **The store never reads the clock or draws randomness.** Every method that needs time takes
//!   `now` (unix seconds); ids, tokens and codes are drawn by the caller, which stores hashes of
//!   bearer secrets, never the secrets.
//! - **Single-use things are consumed by one statement or one write transaction**, so two
//!   concurrent callers can never both succeed: `DELETE … RETURNING` for ceremonies, conditional
//!   `UPDATE`s (checked by rows affected) for enrollment links and device approvals, write
//!   transactions for refresh-token rotation, device polling, credential revocation and the audit
//!   sequence. SQLite write transactions start with `BEGIN IMMEDIATE` (the write lock is taken up
//!   front, so a read-then-write transaction cannot fail to upgrade); where PostgreSQL would need a
//!   row lock the transaction first touches the row with a no-op `UPDATE`, which both databases
//!   accept.
//! - **The store does not decide policy.** It refuses only what would corrupt its own invariants
//!   (duplicates, revoking a user's last active credential, new refresh tokens for a revoked
//!   session); who may do what is the `policy` crate's business.
//!
//! # SQLite
//!
//! The file is created by the store with mode 0600 before SQLite opens it (SQLite gives its `-wal`
//! and `-shm` files the same mode); connections use WAL journaling, `foreign_keys = ON` and a 5 s
//! busy timeout; writers wait for each other rather than fail.
//!
//! # Schema (version 1)
//!
//! | table | key | columns |
//! |---|---|---|
//! | `schema_migrations` | `version` | `name`, `checksum` (FNV-1a of the SQL file) |
//! | `users` | `id` | `username` (unique), `display_name`, `created_at`, `expires_at`?, `disabled` 0/1 |
//! | `role_assignments` | (`user_id`, `role`, `vault`) | `vault` = `''` for every vault |
//! | `credentials` | `id` (base64url) | `user_id` → users, `name`, `credential_json`, `counter`, `aaguid`, `attestation_format`, `attestation_trusted`, `backup_eligible`, `backup_state` (0/1), `transports` (JSON), `created_at`, `last_used_at`?, `revoked_at`?, `locked_at`?, `lock_reason`? |
//! | `ceremonies` | `id` | `kind`, `state_json`, `subject`, `expires_at` |
//! | `enroll_links` | `token_hash` | `username`, `role`, `vault`?, `user_id`? → users, `created_by`, `created_at`, `expires_at`, `used_at`? |
//! | `sessions` | `id` | `user_id` → users, `credential_id` → credentials, `auth_time`, `amr` (JSON), `acr`, `created_at`, `expires_at`, `revoked_at`? |
//! | `refresh_tokens` | `token_hash` | `family_id`, `session_id` → sessions, `created_at`, `expires_at`, `used_at`?, `revoked_at`? |
//! | `device_codes` | `device_code_hash` | `user_code` (unique), `client_id`, `scope`, `created_at`, `expires_at`, `poll_interval`, `last_poll_at`?, `status` (pending/approved/denied/consumed), `session_id`? → sessions, `user_id`? → users |
//! | `audit_events` | `seq` | `event_time`, `kind`, `actor`, `outcome`, `details_json` |
//! | `introductions` | (`subject_kind`, `subject_id`) | `introduced_by` (the enrollment link's creator), `at`; subject `user` or `credential` |
//! | `audit_head` | `id` = 1 | `next_seq`: the next audit sequence number (see the migration) |
//!
//! (`?` = nullable.) An instant `t` is "expired" when `now >= t`.

mod approvals;
mod audit;
mod ceremonies;
mod credentials;
mod device;
mod error;
mod hygiene;
mod migrate;
mod model;
mod sessions;
mod users;
mod vaults;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, ConnectOptions, Executor, Row, Transaction};

pub use error::{Result, StoreError};
pub use hygiene::Purged;
pub use model::{
    Approval, AuditEvent, AuditRecord, Ceremony, CredentialRecord, DeletedSnapshot, DeviceCode, DevicePoll,
    DeviceStatus, EnrollLink, RefreshUse, RoleAssignment, Session, User, Vault, Vote,
};

/// How many connections a file-backed SQLite pool keeps. WAL lets readers run beside the one
/// writer; writers queue on SQLite's lock (busy timeout) rather than on the pool.
const SQLITE_MAX_CONNECTIONS: u32 = 8;

/// Set on every SQLite connection: enforce foreign keys, and wait up to 5 s for another writer
/// before giving up.
const SQLITE_PRAGMAS: &str = "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;";

/// Which database is behind the pool; it decides how write transactions begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
}

/// Handle to the metadata database. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating it with mode 0600 if it does not exist) the SQLite database at `path` and
    /// brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        Store::open_sqlite_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// Connects to the database named by `url` and brings its schema up to date.
    ///
    /// Supported today: `sqlite:PATH` / `sqlite://PATH` (the file is created 0600 if missing;
    /// query parameters as sqlx accepts them) and `sqlite::memory:` (one private in-memory
    /// database on a single connection, for tests). `postgres://` is recognised and refused until
    /// the PostgreSQL driver is built in.
    pub async fn connect(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            if is_in_memory(url) {
                return Store::open_sqlite_memory(url).await;
            }
            let options = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Invalid(e.to_string()))?;
            return Store::open_sqlite_with(options).await;
        }
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            return Err(StoreError::Unsupported("PostgreSQL support is not built in yet".into()));
        }
        Err(StoreError::Unsupported(format!("unrecognised database URL scheme in {:?}", scheme_of(url))))
    }

    async fn open_sqlite_with(options: SqliteConnectOptions) -> Result<Store> {
        let path = create_private_file(options.get_filename())?;
        let options = options.filename(&path).create_if_missing(true);
        let pool = sqlite_pool_options(SQLITE_MAX_CONNECTIONS).connect_with(any_options(&options)?).await?;

        // WAL is a property of the file, set once; it lets readers proceed while a writer commits.
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL").fetch_one(&pool).await?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!("SQLite refused WAL journal mode (still {mode})")));
        }
        Store::finish_open(pool, Backend::Sqlite).await
    }

    async fn open_sqlite_memory(url: &str) -> Result<Store> {
        // Every connection the Any driver opens from this URL gets a fresh, empty database, and
        // a database lives only as long as its connection. So: exactly one connection, never
        // retired (if it breaks, the data is gone; this mode is for tests).
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(url).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let pool = sqlite_pool_options(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Store::finish_open(pool, Backend::Sqlite).await
    }

    async fn finish_open(pool: AnyPool, backend: Backend) -> Result<Store> {
        let store = Store { pool, backend };
        migrate::run(&store.pool, store.begin_statement()).await?;
        Ok(store)
    }

    /// Waits for in-flight queries and closes every connection (SQLite then checkpoints its WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The statement that opens a transaction which will write.
    fn begin_statement(&self) -> &'static str {
        match self.backend {
            // Take the write lock now: a deferred transaction that reads and then writes fails with
            // SQLITE_BUSY (no waiting) when another writer committed in between.
            Backend::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    /// Starts a write transaction. Dropping it without `commit` rolls it back.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(self.pool.begin_with(self.begin_statement()).await?)
    }
}

fn sqlite_pool_options(max_connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new().max_connections(max_connections).after_connect(|conn, _meta| {
        Box::pin(async move {
            // sqlx's SQLite defaults already say this; the store depends on it, so it says it too.
            conn.execute(SQLITE_PRAGMAS).await?;
            Ok(())
        })
    })
}

fn any_options(options: &SqliteConnectOptions) -> Result<AnyConnectOptions> {
    sqlx::any::install_default_drivers();
    // AnyConnectOptions can only be made from a URL; this one is built from parsed options, so
    // the path is percent-encoded correctly.
    Ok(AnyConnectOptions::from_url(&options.to_url_lossy())?)
}

/// Creates the database file with mode 0600 if it does not exist (so SQLite never creates it
/// with the process umask) and returns its canonical path.
fn create_private_file(path: &Path) -> Result<PathBuf> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    match open.open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::canonicalize(path).map_err(io)
}

fn is_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (db, params) = rest.split_once('?').unwrap_or((rest, ""));
    db == ":memory:" || params.split('&').any(|p| p == "mode=memory")
}

fn scheme_of(url: &str) -> &str {
    url.split_once(':').map_or(url, |(scheme, _)| scheme)
}

/// Reads a 0/1 flag column.
fn get_flag(row: &AnyRow, column: &str) -> Result<bool> {
    match row.try_get::<i64, _>(column)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(StoreError::Database(format!("column {column} holds {v}, not 0 or 1"))),
    }
}

/// Encodes an optional vault for the `role_assignments` key, where `''` means every vault.
fn vault_key(vault: Option<&str>) -> Result<&str> {
    match vault {
        None => Ok(""),
        Some("") => Err(StoreError::Invalid("a vault name must not be empty".into())),
        Some(v) => Ok(v),
    }
}
