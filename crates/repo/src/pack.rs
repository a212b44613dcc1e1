//! Pack files: many encrypted blobs in one object, with an encrypted table of contents at the end.
//!
//! Layout (docs/format.md has it byte by byte):
//! `blob_0 … blob_n-1 | header ciphertext | footer (80 bytes)`. Each pack has a fresh random
//! data key (DEK) wrapped by a key-encryption key (KEK) in the footer; blob `i` is sealed with
//! nonce `u32le(i) || 0^8`, the header with nonce `0xffffffff || 0^8`, so no nonce repeats
//! under a key. A pack can be read without the index, which is what makes `repair index` work.

use serde::{Deserialize, Serialize};

use crate::crypto::{Key, NONCE_LEN, TAG_LEN, WRAPPED_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

/// Magic bytes that open and close a pack footer.
pub const PACK_MAGIC: &[u8; 4] = b"SRPK";
/// Size of the fixed footer at the end of every pack.
pub const FOOTER_LEN: usize = 4 + 1 + 3 + 4 + WRAPPED_LEN + 4 + 4;
/// Size of one header entry.
pub const ENTRY_LEN: usize = 32 + 1 + 1 + 2 + 4 + 4 + 4;
const HEADER_NONCE_INDEX: u32 = u32::MAX;
/// Packs never hold more blobs than this (keeps the header bounded).
pub const MAX_BLOBS: usize = 1 << 20;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// File contents.
    Data,
    /// A directory listing (JSON).
    Tree,
}

impl BlobKind {
    fn to_byte(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }
    fn from_byte(b: u8) -> Option<BlobKind> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// One blob's entry in a pack header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// Chunk id (keyed BLAKE3 of the plaintext).
    pub id: Id,
    /// Data or tree.
    pub kind: BlobKind,
    /// Whether the stored bytes are a zstd frame.
    pub compressed: bool,
    /// Byte offset of the blob's ciphertext in the pack.
    pub offset: u32,
    /// Length of the ciphertext including its tag.
    pub len: u32,
    /// Length of the plaintext chunk.
    pub raw_len: u32,
}

/// The nonce of blob `index` (or of the header) under a pack's data key.
pub fn blob_nonce(index: u32) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&index.to_le_bytes());
    n
}

/// Associated data binding a blob's ciphertext to its chunk id and kind.
pub fn blob_aad(id: &Id, kind: BlobKind) -> [u8; 37] {
    let mut a = [0u8; 37];
    a[..4].copy_from_slice(b"SRB1");
    a[4] = kind.to_byte();
    a[5..].copy_from_slice(&id.0);
    a
}

/// The associated data used when wrapping a pack's data key.
pub const PACK_KEY_AAD: &[u8] = b"strongroom pack data key v1";

/// Builds one pack in memory.
pub struct PackBuilder {
    dek: Key,
    kek_version: u32,
    wrapped: [u8; WRAPPED_LEN],
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// Starts a pack whose fresh data key `dek` is wrapped under KEK `kek_version`.
    pub fn new(dek: Key, kek_version: u32, wrapped: [u8; WRAPPED_LEN], capacity: usize) -> Self {
        PackBuilder { dek, kek_version, wrapped, buf: Vec::with_capacity(capacity), entries: Vec::new() }
    }

    /// Encrypts and appends a blob whose stored form (zstd frame or raw) is `stored`.
    pub fn add(&mut self, id: Id, kind: BlobKind, compressed: bool, raw_len: u32, stored: &[u8]) {
        let index = self.entries.len() as u32;
        let offset = self.buf.len();
        self.buf.extend_from_slice(stored);
        let tag = self.dek.seal_slice(&blob_nonce(index), &blob_aad(&id, kind), &mut self.buf[offset..]);
        self.buf.extend_from_slice(&tag);
        self.entries.push(PackEntry {
            id,
            kind,
            compressed,
            offset: offset as u32,
            len: (self.buf.len() - offset) as u32,
            raw_len,
        });
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of blobs so far.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Appends header and footer; returns the pack's bytes, id and entries.
    pub fn finish(mut self) -> FinishedPack {
        let mut header = Vec::with_capacity(4 + self.entries.len() * ENTRY_LEN);
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            header.extend_from_slice(&e.id.0);
            header.push(e.kind.to_byte());
            header.push(u8::from(e.compressed));
            header.extend_from_slice(&[0, 0]);
            header.extend_from_slice(&e.offset.to_le_bytes());
            header.extend_from_slice(&e.len.to_le_bytes());
            header.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        self.dek.seal_in_place(&blob_nonce(HEADER_NONCE_INDEX), b"SRH1", &mut header);
        let header_len = header.len() as u32;
        self.buf.extend_from_slice(&header);
        let footer = Footer { kek_version: self.kek_version, wrapped: self.wrapped, header_len };
        self.buf.extend_from_slice(&footer.encode());
        let id = Id::hash_of(&self.buf);
        FinishedPack {
            id,
            bytes: self.buf,
            kek_version: self.kek_version,
            wrapped: self.wrapped,
            entries: self.entries,
        }
    }
}

/// A complete pack ready to store.
pub struct FinishedPack {
    /// BLAKE3 of `bytes`; the pack's object name derives from it.
    pub id: Id,
    /// The whole pack file.
    pub bytes: Vec<u8>,
    /// KEK version that wraps the data key.
    pub kek_version: u32,
    /// The wrapped data key.
    pub wrapped: [u8; WRAPPED_LEN],
    /// Table of contents.
    pub entries: Vec<PackEntry>,
}

/// A parsed pack footer.
#[derive(Clone, Debug)]
pub struct Footer {
    /// KEK version wrapping the data key.
    pub kek_version: u32,
    /// Wrapped data key.
    pub wrapped: [u8; WRAPPED_LEN],
    /// Length of the header ciphertext, which ends where the footer starts.
    pub header_len: u32,
}

impl Footer {
    /// The footer's bytes: magic, version 1, KEK version, wrapped data key, header length, magic.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut out = [0u8; FOOTER_LEN];
        out[..4].copy_from_slice(PACK_MAGIC);
        out[4] = 1;
        out[8..12].copy_from_slice(&self.kek_version.to_le_bytes());
        out[12..12 + WRAPPED_LEN].copy_from_slice(&self.wrapped);
        let h = 12 + WRAPPED_LEN;
        out[h..h + 4].copy_from_slice(&self.header_len.to_le_bytes());
        out[FOOTER_LEN - 4..].copy_from_slice(PACK_MAGIC);
        out
    }
}

/// Parses the last [`FOOTER_LEN`] bytes of a pack.
pub fn parse_footer(name: &str, tail: &[u8]) -> Result<Footer> {
    if tail.len() != FOOTER_LEN || &tail[..4] != PACK_MAGIC || &tail[FOOTER_LEN - 4..] != PACK_MAGIC {
        return Err(Error::corrupt(name, "pack footer magic missing"));
    }
    if tail[4] != 1 {
        return Err(Error::corrupt(name, format!("unknown pack version {}", tail[4])));
    }
    let kek_version = u32::from_le_bytes([tail[8], tail[9], tail[10], tail[11]]);
    let mut wrapped = [0u8; WRAPPED_LEN];
    wrapped.copy_from_slice(&tail[12..12 + WRAPPED_LEN]);
    let h = 12 + WRAPPED_LEN;
    let header_len = u32::from_le_bytes([tail[h], tail[h + 1], tail[h + 2], tail[h + 3]]);
    Ok(Footer { kek_version, wrapped, header_len })
}

/// Decrypts and parses a pack header; `data_end` is where blob data ends (= header start).
pub fn parse_header(name: &str, dek: &Key, ciphertext: &[u8], data_end: u64) -> Result<Vec<PackEntry>> {
    let plain = dek
        .open(&blob_nonce(HEADER_NONCE_INDEX), b"SRH1", ciphertext)
        .ok_or_else(|| Error::corrupt(name, "pack header fails authentication"))?;
    if plain.len() < 4 {
        return Err(Error::corrupt(name, "pack header too short"));
    }
    let count = u32::from_le_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
    if count > MAX_BLOBS || plain.len() != 4 + count * ENTRY_LEN {
        return Err(Error::corrupt(name, "pack header length does not match its entry count"));
    }
    let mut entries = Vec::with_capacity(count);
    for raw in plain[4..].chunks_exact(ENTRY_LEN) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&raw[..32]);
        let kind = BlobKind::from_byte(raw[32]).ok_or_else(|| Error::corrupt(name, "unknown blob kind"))?;
        let compressed = match raw[33] {
            0 => false,
            1 => true,
            _ => return Err(Error::corrupt(name, "bad blob flags")),
        };
        let u = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let e = PackEntry { id: Id(id), kind, compressed, offset: u(36), len: u(40), raw_len: u(44) };
        if (e.len as usize) < TAG_LEN || u64::from(e.offset) + u64::from(e.len) > data_end {
            return Err(Error::corrupt(name, "blob extends beyond the pack's data"));
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Decrypts blob number `index` of a pack (`ciphertext` is exactly its bytes).
pub fn open_blob(dek: &Key, index: u32, id: &Id, kind: BlobKind, ciphertext: &[u8]) -> Option<Vec<u8>> {
    dek.open(&blob_nonce(index), &blob_aad(id, kind), ciphertext)
}

/// The object name of a pack.
pub fn pack_name(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::OsRng;

    fn build(blobs: &[(Vec<u8>, bool)]) -> (Key, FinishedPack) {
        let kek = Key::generate(&mut OsRng);
        let dek = Key::generate(&mut OsRng);
        let wrapped = kek.wrap(&dek, PACK_KEY_AAD, &mut OsRng);
        let mut b = PackBuilder::new(dek, 7, wrapped, 0);
        for (data, tree) in blobs {
            let kind = if *tree { BlobKind::Tree } else { BlobKind::Data };
            b.add(Id::hash_of(data), kind, false, data.len() as u32, data);
        }
        (kek, b.finish())
    }

    fn read_all(kek: &Key, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        if bytes.len() < FOOTER_LEN {
            return Err(Error::corrupt("p", "short"));
        }
        let f = parse_footer("p", &bytes[bytes.len() - FOOTER_LEN..])?;
        let dek = kek.unwrap_key(&f.wrapped, PACK_KEY_AAD, "p")?;
        let hstart = (bytes.len() - FOOTER_LEN)
            .checked_sub(f.header_len as usize)
            .ok_or_else(|| Error::corrupt("p", "header"))?;
        let entries = parse_header("p", &dek, &bytes[hstart..bytes.len() - FOOTER_LEN], hstart as u64)?;
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let ct = &bytes[e.offset as usize..(e.offset + e.len) as usize];
            let plain = open_blob(&dek, i as u32, &e.id, e.kind, ct).ok_or_else(|| Error::corrupt("p", "blob"))?;
            out.push(plain);
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn pack_encode_decode_round_trips(blobs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..3000), any::<bool>()), 0..20)) {
            let (kek, p) = build(&blobs);
            prop_assert_eq!(p.id, Id::hash_of(&p.bytes));
            prop_assert_eq!(p.kek_version, 7);
            let back = read_all(&kek, &p.bytes);
            prop_assert!(back.is_ok());
            prop_assert_eq!(back.unwrap_or_default(), blobs.iter().map(|b| b.0.clone()).collect::<Vec<_>>());
        }

        #[test]
        fn any_bit_flip_in_a_pack_is_detected(blob in proptest::collection::vec(any::<u8>(), 1..2000), pos in any::<usize>(), bit in 0u8..8) {
            let (kek, p) = build(&[(blob, false)]);
            let mut bytes = p.bytes.clone();
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
            // Either parsing fails cleanly, or (for the two reserved footer bytes that carry no
            // meaning) the contents are unchanged; the pack id always changes.
            if let Ok(back) = read_all(&kek, &bytes) { prop_assert_eq!(back, read_all(&kek, &p.bytes).unwrap_or_default()) }
            prop_assert_ne!(Id::hash_of(&bytes), p.id);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let kek = Key::generate(&mut OsRng);
            let _ = read_all(&kek, &bytes);
        }
    }

    /// A footer of the right length with both magics, then arbitrary bytes in between.
    fn footer_like(mut middle: Vec<u8>) -> Vec<u8> {
        middle.resize(FOOTER_LEN, 0);
        middle[..4].copy_from_slice(PACK_MAGIC);
        middle[FOOTER_LEN - 4..].copy_from_slice(PACK_MAGIC);
        middle
    }

    /// An entry of a pack header with the given fields (any bytes where the format has bytes).
    fn entry(id: [u8; 32], kind: u8, flags: u8, offset: u32, len: u32, raw_len: u32) -> Vec<u8> {
        let mut e = id.to_vec();
        e.extend_from_slice(&[kind, flags, 0, 0]);
        for v in [offset, len, raw_len] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e
    }

    fn hostile_entry() -> impl Strategy<Value = Vec<u8>> {
        let field = || prop_oneof![0u32..64, any::<u32>(), Just(u32::MAX)];
        (any::<[u8; 32]>(), 0u8..3, 0u8..3, field(), field(), field())
            .prop_map(|(id, kind, flags, offset, len, raw_len)| entry(id, kind, flags, offset, len, raw_len))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The last bytes of any object named as a pack: a footer or a typed refusal.
        #[test]
        fn arbitrary_bytes_never_panic_the_footer_parser(
            bytes in proptest::collection::vec(any::<u8>(), 0..2 * FOOTER_LEN),
            magic in any::<bool>(),
        ) {
            let tail = if magic { footer_like(bytes) } else { bytes };
            match parse_footer("p", &tail) {
                Ok(f) => {
                    prop_assert_eq!(tail.len(), FOOTER_LEN);
                    // What parses re-encodes to the same bytes but for the three reserved ones.
                    let back = f.encode();
                    prop_assert_eq!(&back[..5], &tail[..5]);
                    prop_assert_eq!(&back[8..], &tail[8..]);
                }
                Err(e) => prop_assert!(matches!(e, Error::Corrupt { .. }), "{e}"),
            }
        }

        /// Header ciphertext that is not ours (any bytes, any claimed end of data) is refused.
        #[test]
        fn arbitrary_bytes_never_panic_the_header_parser(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            data_end in any::<u64>(),
        ) {
            let dek = Key::generate(&mut OsRng);
            let r = parse_header("p", &dek, &bytes, data_end);
            prop_assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
        }

        /// A header that authenticates (sealed with the pack's key, so written by someone who
        /// had it) but says anything: counts that do not match, counts near `MAX_BLOBS`, unknown
        /// kinds and flags, blobs beyond the data or shorter than a tag. Parsed entries always
        /// lie within the pack's data.
        #[test]
        fn authenticated_hostile_headers_never_panic(
            entries in proptest::collection::vec(hostile_entry(), 0..6),
            count in prop_oneof![Just(None), any::<u32>().prop_map(Some), Just(Some(MAX_BLOBS as u32 + 1))],
            junk in proptest::collection::vec(any::<u8>(), 0..3),
            data_end in prop_oneof![0u64..4096, any::<u64>()],
        ) {
            let dek = Key::generate(&mut OsRng);
            let mut plain = count.unwrap_or(entries.len() as u32).to_le_bytes().to_vec();
            plain.extend(entries.concat());
            plain.extend(junk);
            dek.seal_in_place(&blob_nonce(HEADER_NONCE_INDEX), b"SRH1", &mut plain);
            match parse_header("p", &dek, &plain, data_end) {
                Ok(parsed) => {
                    prop_assert_eq!(parsed.len(), entries.len());
                    for e in parsed {
                        prop_assert!(e.len as usize >= TAG_LEN);
                        prop_assert!(u64::from(e.offset) + u64::from(e.len) <= data_end);
                    }
                }
                Err(e) => prop_assert!(matches!(e, Error::Corrupt { .. }), "{e}"),
            }
        }
    }
}
