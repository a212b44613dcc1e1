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
