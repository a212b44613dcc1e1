//! Splitting file contents into chunks, hashing them with the repository's key, compressing.
//!
//! Regular files are cut by FastCDC (the `fastcdc` crate's streaming 2020 variant) so an insert
//! shifts only nearby boundaries. Disk images and sparse files are cut into fixed-size chunks:
//! a rewrite inside an image leaves every other block's chunk intact, all-zero blocks are not
//! stored at all (they become holes on restore), and no rolling hash runs over gigabytes of zeros.
//! docs/format.md gives the measurements behind the sizes.

use std::cell::RefCell;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::crypto::Key;
use crate::id::Id;

/// Content-defined chunk size bounds, fixed when a repository is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No cut before this many bytes.
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// A cut is forced at this many bytes.
    pub max: u32,
    /// Chunk size for disk images and sparse files.
    pub fixed: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min: 512 * 1024, avg: 1024 * 1024, max: 8 * 1024 * 1024, fixed: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// Checks the bounds `fastcdc` accepts.
    pub fn validate(&self) -> Result<(), String> {
        let ok = (64..=1 << 20).contains(&self.min)
            && (256..=1 << 22).contains(&self.avg)
            && (1024..=1 << 26).contains(&self.max)
            && self.min < self.avg
            && self.avg < self.max
            && (4096..=1 << 26).contains(&self.fixed);
        if ok {
            Ok(())
        } else {
            Err(format!("chunker sizes out of range: {self:?}"))
        }
    }
}

/// Computes chunk ids: BLAKE3 keyed with the repository's secret chunk-id key, so the names of
/// stored chunks do not reveal hashes of known plaintext.
#[derive(Clone)]
pub struct ChunkHasher {
    key: [u8; 32],
}

impl ChunkHasher {
    /// A hasher for the repository whose chunk-id key is `key`.
    pub fn new(key: &Key) -> ChunkHasher {
        ChunkHasher { key: *key.expose() }
    }

    /// The key (for handing to a client half in another process).
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// A hasher from raw key bytes (the client half, given the key by the server).
    pub fn from_key(key: [u8; 32]) -> ChunkHasher {
        ChunkHasher { key }
    }

    /// The id of a chunk with plaintext `data`.
    pub fn id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.key, data).as_bytes())
    }
}

impl Drop for ChunkHasher {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Reads `source` in content-defined chunks, calling `f` with each chunk's bytes in order.
pub fn for_each_cdc_chunk<R: Read>(
    source: R,
    p: &ChunkerParams,
    mut f: impl FnMut(Vec<u8>) -> crate::Result<()>,
) -> crate::Result<(), ChunkReadError> {
    let chunker = fastcdc::v2020::StreamCDC::new(source, p.min, p.avg, p.max);
    for chunk in chunker {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => ChunkReadError::Io(io),
            other => ChunkReadError::Io(std::io::Error::other(other.to_string())),
        })?;
        f(chunk.data).map_err(ChunkReadError::Engine)?;
    }
    Ok(())
}

/// Reads `source` in fixed-size blocks of `size` bytes (the last may be shorter).
pub fn for_each_fixed_chunk<R: Read>(
    mut source: R,
    size: usize,
    mut f: impl FnMut(Vec<u8>) -> crate::Result<()>,
) -> crate::Result<(), ChunkReadError> {
    loop {
        let mut buf = Vec::with_capacity(size);
        (&mut source).take(size as u64).read_to_end(&mut buf).map_err(ChunkReadError::Io)?;
        if buf.is_empty() {
            return Ok(());
        }
        let short = buf.len() < size;
        f(buf).map_err(ChunkReadError::Engine)?;
        if short {
            return Ok(());
        }
    }
}

/// Failure while chunking: reading the source, or the consumer's own error.
#[derive(Debug)]
pub enum ChunkReadError {
    /// The source could not be read.
    Io(std::io::Error),
    /// The consumer failed.
    Engine(crate::Error),
}

/// True if and only if every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // OR-fold each 4 KiB block without an early exit so the loop vectorises, then stop at the
    // first block with a set bit.
    data.chunks(4096).all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Compresses with zstd at `level`; `None` when compression would not save at least 1/32 of
/// the size (already-compressed data is then stored raw and restored without a decompress).
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if data.len() < 64 {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        let out = c.compress(data).ok()?;
        (out.len() + out.len() / 32 < data.len()).then_some(out)
    })
}

/// Decompresses a zstd frame that must expand to exactly `raw_len` bytes.
pub fn decompress(data: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    // One decompression context per thread: creating one per chunk cost a fifth of the
    // server's verification time.
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        let out = slot.as_mut()?.decompress(data, raw_len).ok()?;
        (out.len() == raw_len).then_some(out)
    })
}

/// Decompresses a zstd frame from an untrusted source that must hold exactly `raw_len` bytes,
/// never allocating more than it actually produced (plus one read buffer) and stopping at
/// `raw_len + 1` bytes: a small frame that claims or expands to gigabytes costs nothing.
/// Small chunks (the common case) go through [`decompress`], whose buffer is `raw_len`.
pub fn decompress_limited(data: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    if raw_len <= 16 << 20 {
        return decompress(data, raw_len);
    }
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::with_buffer(data).ok()?.single_frame();
    let mut out = Vec::new();
    decoder.take(raw_len as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() == raw_len).then_some(out)
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams { min: 256, avg: 1024, max: 4096, fixed: 4096 }
    }

    fn cdc(data: &[u8], p: &ChunkerParams) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let r = for_each_cdc_chunk(data, p, |c| {
            out.push(c);
            Ok(())
        });
        assert!(r.is_ok());
        out
    }

    proptest! {
        #[test]
        fn cdc_chunks_concatenate_to_input_within_bounds(data in proptest::collection::vec(any::<u8>(), 0..40_000)) {
            let p = small();
            let chunks = cdc(&data, &p);
            prop_assert_eq!(chunks.concat(), data.clone());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.len() <= p.max as usize);
                if i + 1 < chunks.len() {
                    prop_assert!(c.len() >= p.min as usize);
                }
            }
            prop_assert_eq!(cdc(&data, &p), chunks);
        }

        #[test]
        fn cdc_boundaries_resynchronise_after_an_insert(
            seed in any::<u64>(), at in 0usize..20_000, insert in proptest::collection::vec(any::<u8>(), 1..100)
        ) {
            use rand::{RngCore, SeedableRng};
            let mut data = vec![0u8; 60_000];
            rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
            let before = cdc(&data, &small());
            let mut changed = data.clone();
            changed.splice(at..at, insert);
            let after = cdc(&changed, &small());
            // Most chunks after the edit are shared: content-defined cuts realign.
            let shared = after.iter().filter(|c| before.contains(c)).count();
            prop_assert!(shared * 10 >= before.len() * 7, "shared {} of {}", shared, before.len());
        }

        #[test]
        fn fixed_chunks_concatenate_to_input(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let mut out: Vec<Vec<u8>> = Vec::new();
            let r = for_each_fixed_chunk(&data[..], 4096, |c| { out.push(c); Ok(()) });
            prop_assert!(r.is_ok());
            prop_assert_eq!(out.concat(), data.clone());
            prop_assert!(out.iter().rev().skip(1).all(|c| c.len() == 4096));
        }

        #[test]
        fn compression_round_trips(data in proptest::collection::vec(0u8..4, 0..10_000)) {
            match compress(&data, 3) {
                Some(z) => prop_assert_eq!(decompress(&z, data.len()), Some(data.clone())),
                None => prop_assert!(data.len() < 64 || data.len() < 200),
            }
        }
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4097]));
        let mut v = vec![0u8; 4097];
        v[4096] = 1;
        assert!(!is_zero(&v));
        v[4096] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        use rand::RngCore;
        let mut v = vec![0u8; 100_000];
        rand::thread_rng().fill_bytes(&mut v);
        assert!(compress(&v, 3).is_none());
        assert!(decompress(b"not zstd", 10).is_none());
    }
}
