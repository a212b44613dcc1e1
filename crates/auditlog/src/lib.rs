//! The verifiable audit log: every security decision as a canonical JSON record (RFC 8785),
//! the records as leaves of an RFC 6962 Merkle tree, signed checkpoints in the C2SP
//! tlog-checkpoint / signed-note format, and offline verification of an export — including
//! every recorded passkey approval, re-checked against the credential key the log itself
//! recorded when the credential was enrolled.
//!
//! Pure library: no clock, no I/O except [`export::verify_dir`] reading an export directory.
//! The server appends and signs; `strongroom audit verify` checks without server or database.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod export;
pub mod note;
pub mod record;
pub mod tree;

pub use note::{AuditKey, Checkpoint};
pub use record::Record;
pub use tree::{Hash, Tree};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A record is not valid JSON of the record shape.
    #[error("record {seq}: {why}")]
    BadRecord {
        /// Its position in the log.
        seq: u64,
        /// What is wrong.
        why: String,
    },
    /// A record could not be canonicalised.
    #[error("canonical JSON: {0}")]
    Canonical(String),
    /// Tree arguments out of range or the tree is inconsistent.
    #[error("merkle tree: {0}")]
    Tree(String),
    /// A signed note or checkpoint is malformed or does not verify.
    #[error("checkpoint: {0}")]
    Note(String),
    /// Reading an export.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, AuditError>;
