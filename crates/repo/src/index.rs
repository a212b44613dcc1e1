//! The in-memory index: chunk id → pack, position, offset, length. Built from index files;
//! rebuildable from the packs alone.

use std::collections::HashMap;

use base64::Engine as _;

use crate::crypto::WRAPPED_LEN;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::model::{IndexBlob, IndexFile, IndexPack};
use crate::pack::{BlobKind, FinishedPack, PackEntry};

/// Where a pack is and how its data key is wrapped.
#[derive(Clone, Debug)]
pub struct PackMeta {
    /// Pack id.
    pub id: Id,
    /// Size in bytes.
    pub size: u64,
    /// KEK version of the wrapped data key.
    pub kek_version: u32,
    /// Wrapped data key.
    pub wrapped: [u8; WRAPPED_LEN],
    /// Number of blobs.
    pub blobs: u32,
}

/// Where one blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLoc {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    /// The blob's position in its pack (its nonce index).
    pub n: u32,
    /// Offset of the ciphertext.
    pub offset: u32,
    /// Ciphertext length including tag.
    pub len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Data or tree.
    pub kind: BlobKind,
    /// zstd frame or raw.
    pub compressed: bool,
}

/// The whole index in memory.
#[derive(Default, Debug)]
pub struct Index {
    packs: Vec<PackMeta>,
    pack_pos: HashMap<Id, u32>,
    blobs: HashMap<Id, BlobLoc>,
}

impl Index {
    /// Adds every pack of an index file; `name` is for error messages.
    pub fn add_file(&mut self, name: &str, file: &IndexFile) -> Result<()> {
        for p in &file.packs {
            let wrapped = decode_wrapped(&p.key).ok_or_else(|| Error::corrupt(name, "bad wrapped key"))?;
            if self.pack_pos.contains_key(&p.id) {
                continue;
            }
            let pos = self.packs.len() as u32;
            self.packs.push(PackMeta {
                id: p.id,
                size: p.size,
                kek_version: p.kek_version,
                wrapped,
                blobs: p.blobs.len() as u32,
            });
            self.pack_pos.insert(p.id, pos);
            for b in &p.blobs {
                // A blob stored twice (after an interrupted session) keeps its first location.
                self.blobs.entry(b.id).or_insert(BlobLoc {
                    pack: pos,
                    n: b.n,
                    offset: b.offset,
                    len: b.len,
                    raw_len: b.raw_len,
                    kind: b.kind,
                    compressed: b.compressed,
                });
            }
        }
        Ok(())
    }

    /// Location of a blob.
    pub fn get(&self, id: &Id) -> Option<BlobLoc> {
        self.blobs.get(id).copied()
    }

    /// True if the blob is indexed.
    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// A pack's metadata by position.
    pub fn pack(&self, pos: u32) -> Option<&PackMeta> {
        self.packs.get(pos as usize)
    }

    /// Position of a pack by id.
    pub fn pack_position(&self, id: &Id) -> Option<u32> {
        self.pack_pos.get(id).copied()
    }

    /// All packs.
    pub fn packs(&self) -> &[PackMeta] {
        &self.packs
    }

    /// All blobs.
    pub fn blobs(&self) -> impl Iterator<Item = (&Id, &BlobLoc)> {
        self.blobs.iter()
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// True if nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}

/// The index-file record of a freshly written pack.
pub fn index_pack_of(p: &FinishedPack) -> IndexPack {
    index_pack(p.id, p.bytes.len() as u64, p.kek_version, &p.wrapped, &p.entries)
}

/// The index-file record of a pack.
pub fn index_pack(
    id: Id,
    size: u64,
    kek_version: u32,
    wrapped: &[u8; WRAPPED_LEN],
    entries: &[PackEntry],
) -> IndexPack {
    IndexPack {
        id,
        size,
        kek_version,
        key: base64::engine::general_purpose::STANDARD.encode(wrapped),
        blobs: entries
            .iter()
            .enumerate()
            .map(|(n, e)| IndexBlob {
                n: n as u32,
                id: e.id,
                kind: e.kind,
                offset: e.offset,
                len: e.len,
                raw_len: e.raw_len,
                compressed: e.compressed,
            })
            .collect(),
    }
}

fn decode_wrapped(b64: &str) -> Option<[u8; WRAPPED_LEN]> {
    let v = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob() -> impl Strategy<Value = IndexBlob> {
        (any::<u32>(), 0u8..4, any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
            |(n, id, tree, offset, len, raw_len, compressed)| IndexBlob {
                n,
                // Few distinct ids, so the same blob shows up in several packs.
                id: Id([id; 32]),
                kind: if tree { BlobKind::Tree } else { BlobKind::Data },
                offset,
                len,
                raw_len,
                compressed,
            },
        )
    }

    fn pack() -> impl Strategy<Value = IndexPack> {
        let key = prop_oneof![
            proptest::collection::vec(any::<u8>(), WRAPPED_LEN)
                .prop_map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
            proptest::collection::vec(any::<u8>(), 0..80)
                .prop_map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
            "[A-Za-z0-9+/=\\-_ ]{0,90}",
        ];
        (0u8..3, any::<u64>(), any::<u32>(), key, proptest::collection::vec(blob(), 0..5)).prop_map(
            |(id, size, kek_version, key, blobs)| IndexPack { id: Id([id; 32]), size, kek_version, key, blobs },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Index-file JSON of any bytes parses or is refused, and whatever parses is added to
        /// an index (or refused as corrupt) without a panic.
        #[test]
        fn arbitrary_bytes_never_panic_index_file_parsing(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(file) = serde_json::from_slice::<IndexFile>(&bytes) {
                let _ = Index::default().add_file("index/x", &file);
            }
        }

        /// Index files with any numbers, duplicate packs and blobs, and keys of any length or
        /// alphabet: a pack whose key is not exactly a wrapped key is refused as corrupt, and
        /// every blob of a newly indexed pack is found afterwards.
        #[test]
        fn arbitrary_index_files_never_panic_the_index(
            files in proptest::collection::vec(proptest::collection::vec(pack(), 0..4), 1..4),
        ) {
            let mut index = Index::default();
            for packs in files {
                let file = IndexFile { packs, supersedes: Vec::new() };
                let json = serde_json::to_vec(&file).unwrap_or_default();
                let back: Option<IndexFile> = serde_json::from_slice(&json).ok();
                prop_assert_eq!(back.as_ref(), Some(&file));
                // A pack already indexed is skipped (same id, same bytes): only new ones add blobs.
                let mut known: std::collections::HashSet<Id> = index.packs().iter().map(|p| p.id).collect();
                let added: Vec<Id> = file
                    .packs
                    .iter()
                    .filter(|p| known.insert(p.id))
                    .flat_map(|p| p.blobs.iter().map(|b| b.id))
                    .collect();
                match index.add_file("index/x", &file) {
                    Ok(()) => {
                        for id in &added {
                            prop_assert!(index.contains(id));
                        }
                    }
                    Err(e) => {
                        prop_assert!(matches!(e, Error::Corrupt { .. }), "{e}");
                        prop_assert!(file.packs.iter().any(|p| decode_wrapped(&p.key).is_none()));
                    }
                }
            }
            for (_, loc) in index.blobs() {
                prop_assert!(index.pack(loc.pack).is_some());
            }
        }
    }
}
