//! Test helpers shared by the workspace: in-memory and fault-injecting storage, tree comparison.
//!
//! - [`MemBackend`]: storage that tells what was written from what would survive a power cut.
//! - [`FaultBackend`]: storage that starts failing after a chosen number of writes.
//! - [`fixed_time`], [`seeded_rng`], [`master_key`]: the engine's inputs made reproducible.
//! - [`assert_trees_equal`]: the oracle for every round trip (contents, types, links, modes,
//!   nanosecond mtimes, hard-link structure).
//! - [`make_tree`], [`make_sparse_image`]: fixture trees with the awkward cases a backup tool
//!   must get right.
//!
//! Test code: panicking on a broken fixture is the right failure mode here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod compare;
mod fault;
mod fixtures;
pub mod hostile;
mod mem;
pub mod softkey;

pub use compare::{assert_trees_equal, copy_tree};
pub use fault::FaultBackend;
pub use fixtures::{compressible_bytes, make_sparse_image, make_tree, make_tree_seeded, random_bytes, set_mtime};
pub use mem::MemBackend;

use rand::SeedableRng;
use time::OffsetDateTime;

/// A fixed instant, `secs` seconds after the Unix epoch (UTC).
pub fn fixed_time(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).expect("timestamp in range")
}

/// A reproducible cryptographic RNG for the engine.
///
/// Never give two sessions on the same repository the same seed: they would draw the same
/// "random" index and snapshot ids and overwrite each other's objects, which is a fault of
/// the test, not of the engine.
pub fn seeded_rng(seed: u64) -> repo::SharedRng {
    repo::SharedRng::new(rand::rngs::StdRng::seed_from_u64(seed))
}

/// A reproducible master key.
pub fn master_key(seed: u64) -> repo::crypto::MasterKey {
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::rngs::StdRng::seed_from_u64(seed ^ 0x6d61_7374_6572).fill_bytes(&mut k);
    repo::crypto::MasterKey(repo::crypto::Key::from_bytes(k))
}
