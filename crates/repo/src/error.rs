//! The engine's one error type: every failure names the object or path it concerns.
//!
//! Error policy: nothing in this crate panics on bad input. Damaged or hostile bytes in any
//! stored object surface as [`Error::Corrupt`] naming that object, so `check` can report it and
//! carry on; I/O on the local filesystem surfaces as [`Error::Io`] with the path.

use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage backend failed (network, disk, permissions).
    #[error("storage backend error on {object}: {message}")]
    Backend { object: String, message: String },
    /// An object that should exist does not.
    #[error("object not found: {0}")]
    NotFound(String),
    /// An object exists but its bytes are damaged, forged or of an unknown format.
    #[error("corrupt object {object}: {reason}")]
    Corrupt { object: String, reason: String },
    /// A key could not unwrap another key: wrong master key, or tampered key material.
    #[error("cannot unlock {object}: wrong key or tampered key material")]
    Key { object: String },
    /// Local filesystem I/O failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A name in a snapshot would escape the restore target or is otherwise unsafe.
    #[error("unsafe name in snapshot: {0:?}")]
    UnsafeName(String),
    /// The caller asked for something that does not make sense.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A directory listing of a snapshot being committed breaks the rules (a subtree on
    /// something that is not a directory, a bad name, a listing stored as file data, too
    /// deep, too many entries, a file whose chunk lengths disagree with the index).
    #[error("invalid directory listing {tree}: {reason}")]
    InvalidTree { tree: String, reason: String },
    /// A snapshot being committed references chunks or listings this repository does not
    /// hold; `missing` names the first of them, `count` says how many there are.
    #[error("the snapshot references {count} object(s) this vault does not hold: {}", .missing.join(", "))]
    MissingReferences { count: u64, missing: Vec<String> },
    /// A write was attempted on an object that must never be overwritten.
    #[error("object already exists: {0}")]
    AlreadyExists(String),
}

impl Error {
    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt { object: object.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
