//! The store's error type: what a caller can act on (conflict, not found, bad input) kept apart
//! from what it can only report (database, migration, I/O).

use std::path::PathBuf;

/// Everything a [`crate::Store`] method can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write would break a uniqueness rule or an invariant (duplicate id or name, revoking
    /// the last active credential, a refresh token for a revoked session).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The row changed since the caller read it (a compare-and-set lost a race).
    #[error("changed meanwhile: {0}")]
    Stale(String),
    /// The row the operation is about (or one it refers to) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller passed a value the store cannot represent faithfully.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The database failed or returned something the schema does not allow.
    #[error("database error: {0}")]
    Database(String),
    /// The schema could not be brought to this build's version.
    #[error("migration error: {0}")]
    Migration(String),
    /// The connection URL names a database this build does not support.
    #[error("unsupported database: {0}")]
    Unsupported(String),
    /// The database file could not be created or resolved.
    #[error("cannot prepare database file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`StoreError`] as the default error.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Maps a failed INSERT/UPDATE to `Conflict` (unique violation) or `NotFound` (a referenced row is
/// missing), naming `what`; anything else stays a database error.
pub(crate) fn write_error(e: sqlx::Error, what: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            return StoreError::Conflict(format!("{what} already exists"));
        }
        if db.is_foreign_key_violation() {
            return StoreError::NotFound(format!("{what} refers to a row that does not exist"));
        }
    }
    StoreError::from(e)
}
