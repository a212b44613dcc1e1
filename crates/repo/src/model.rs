//! The JSON documents the engine stores: directory trees, snapshots, index files, config, keys.
//!
//! Every field is named in docs/format.md. Parsing is strict where safety depends on it (names
//! are checked before a restore uses them) and tolerant of unknown fields elsewhere so newer
//! writers stay readable.

use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::chunker::ChunkerParams;
use crate::id::Id;
use crate::pack::BlobKind;

/// A file name or path as raw bytes: JSON string when UTF-8, `{"hex": "…"}` otherwise, so
/// any Unix name round-trips exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RawName(pub Vec<u8>);

impl RawName {
    /// From an OS string.
    pub fn from_os(s: &std::ffi::OsStr) -> RawName {
        RawName(s.as_bytes().to_vec())
    }
    /// As an OS string.
    pub fn as_os(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::from_bytes(&self.0)
    }
    /// Lossy text for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl Serialize for RawName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex::encode(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for RawName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawName, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Hex { hex: String },
        }
        match Form::deserialize(d)? {
            Form::Text(t) => Ok(RawName(t.into_bytes())),
            Form::Hex { hex } => hex::decode(hex).map(RawName).map_err(serde::de::Error::custom),
        }
    }
}

/// One piece of a file's contents, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// A stored chunk of `len` bytes.
    Chunk {
        /// Chunk id.
        id: Id,
        /// Plaintext length.
        len: u32,
    },
    /// `zero` bytes of zeros, not stored; restored as a hole.
    Zero {
        /// Length of the zero run.
        zero: u64,
    },
}

impl Content {
    /// Bytes this piece covers.
    pub fn len(&self) -> u64 {
        match self {
            Content::Chunk { len, .. } => u64::from(*len),
            Content::Zero { zero } => *zero,
        }
    }
    /// True for an empty piece.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What kind of filesystem entry a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A directory (its listing is `subtree`).
    Dir,
    /// A regular file (its bytes are `content`).
    File,
    /// A symbolic link (its target is `target`).
    Symlink,
    /// Another name of a regular file stored earlier in the same snapshot (`link`).
    Hardlink,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The entry's name within its directory.
    pub name: RawName,
    /// Entry type.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits and file type bits as in `st_mode`.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Access time, nanoseconds since the Unix epoch.
    pub atime_ns: i64,
    /// Size in bytes (regular files; 0 otherwise).
    #[serde(default)]
    pub size: u64,
    /// Inode number at backup time (for incremental change detection only).
    #[serde(default)]
    pub inode: u64,
    /// Contents, for regular files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Content>,
    /// Listing id, for directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// Link target, for symlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RawName>,
    /// Snapshot-relative path (`/`-separated) of the file this is another name of, for hardlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<RawName>,
}

/// A directory listing: its entries sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries, sorted by name bytes, names unique.
    pub nodes: Vec<Node>,
}

/// Figures recorded with a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Regular files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Apparent bytes of all regular files.
    pub bytes: u64,
    /// Files read (not unchanged since the parent).
    pub files_read: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Chunks this backup added.
    pub new_chunks: u64,
    /// Plaintext bytes of chunks this backup added.
    pub new_bytes: u64,
    /// Stored (compressed) bytes of chunks this backup added.
    pub stored_bytes: u64,
    /// Entries skipped with a warning (unreadable, special files).
    pub skipped: u64,
}

/// A snapshot: one point-in-time copy of some paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was committed (set by whoever commits: the server's clock, never the client's).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Root listing: one entry per backed-up path.
    pub tree: Id,
    /// The paths as given to the backup.
    pub paths: Vec<String>,
    /// The host the data came from.
    #[serde(default)]
    pub hostname: String,
    /// The snapshot used for change detection, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Figures of the backup run.
    #[serde(default)]
    pub summary: Summary,
}

/// One blob in an index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlob {
    /// Position in the pack header, which is also the blob's nonce index.
    pub n: u32,
    /// Chunk id.
    pub id: Id,
    /// Data or tree.
    pub kind: BlobKind,
    /// Offset of the ciphertext in the pack.
    pub offset: u32,
    /// Ciphertext length including tag.
    pub len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Whether the stored form is a zstd frame.
    pub compressed: bool,
}

/// One pack in an index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// Pack id (BLAKE3 of the pack file).
    pub id: Id,
    /// Pack file size.
    pub size: u64,
    /// KEK version wrapping the data key.
    pub kek_version: u32,
    /// Wrapped data key, base64.
    pub key: String,
    /// Blobs in header order.
    pub blobs: Vec<IndexBlob>,
}

/// An index file: where the blobs of some packs are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Packs described by this file.
    pub packs: Vec<IndexPack>,
    /// Index files this one replaces (written by `repair index` and `prune`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
}

/// One wrapping of a secret key. A key may carry several of different kinds (master key today;
/// a KMS or authenticator-derived key later), any one of which unlocks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wrapping {
    /// `master` for the master key.
    pub kind: String,
    /// Fingerprint of the wrapping key.
    pub key_id: String,
    /// base64 of nonce || ciphertext || tag.
    pub wrapped: String,
}

/// A wrapped secret key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Ways to unlock this key.
    pub wrappings: Vec<Wrapping>,
}

/// The repository's `config` object (plaintext JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Format version, 1.
    pub version: u32,
    /// Random repository id.
    pub id: Id,
    /// When the repository was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// Chunk size parameters.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Default zstd level.
    pub compression_level: i32,
    /// The chunk-id (BLAKE3) key, wrapped.
    pub chunk_id_key: WrappedKey,
    /// Authentication of this document by the master key (see docs/format.md).
    #[serde(default)]
    pub mac: String,
}

/// A key-encryption key file `keys/kek-<version>` (plaintext JSON around wrapped key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekFile {
    /// Version number, from 1.
    pub version: u32,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// The KEK, wrapped.
    pub key: WrappedKey,
    /// Authentication of this document by the master key (see docs/format.md).
    #[serde(default)]
    pub mac: String,
}
