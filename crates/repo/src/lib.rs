//! Strongroom's storage engine: deduplicating, compressing, encrypting backup repositories.
//!
//! The engine knows nothing of HTTP, users or the clock: callers pass `now` and a
//! [`SharedRng`]. A backup is split in two halves that can run in different processes: the
//! client half ([`backup::Archiver`]: read, chunk, hash, compress) and the server half
//! ([`writer::Writer`]: dedup lookup, pack, encrypt, store), joined by [`writer::ChunkSink`].
//! docs/format.md specifies every stored byte.

pub mod backend;
pub mod backup;
mod beneath;
pub mod check;
pub mod chunker;
pub mod crypto;
pub mod error;
pub mod id;
pub mod index;
pub mod maintenance;
pub mod model;
pub mod pack;
pub mod repository;
pub mod restore;
pub mod rng;
pub mod sealed;
pub mod tree;
pub mod writer;

pub use backend::{Backend, ObjectStoreBackend};
pub use error::{Error, Result};
pub use id::Id;
pub use repository::{InitOptions, Repository};
pub use rng::SharedRng;
pub use writer::{ChunkSink, PreparedChunk, Writer};
