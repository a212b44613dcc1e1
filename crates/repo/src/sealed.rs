//! The envelope for metadata objects (index files, snapshots): zstd-compressed JSON sealed
//! under a fresh data key that is wrapped by a KEK, and bound to the object's name.
//!
//! Layout: `"SRO1" | kind u8 | 0 0 0 | kek_version u32le | wrapped DEK (60) | ciphertext+tag`.
//! The nonce is all zeros: the data key encrypts exactly one message. The associated data is
//! the 72-byte header followed by the object name, so an object moved to another name (say,
//! an old snapshot copied over a new one) fails authentication.

use std::io::Read;

use crate::crypto::{Key, NONCE_LEN, WRAPPED_LEN};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"SRO1";
/// Length of the plaintext header that opens every sealed object.
pub const HEADER_LEN: usize = 4 + 4 + 4 + WRAPPED_LEN;
/// Metadata objects larger than this when decompressed are refused (bounds a zip bomb).
pub const MAX_PLAINTEXT: u64 = 1 << 30;
const DEK_AAD: &[u8] = b"strongroom object data key v1";

/// Kinds of sealed objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// An index file.
    Index = 1,
    /// A snapshot.
    Snapshot = 2,
}

/// Seals `plain` as object `name` under a fresh DEK wrapped by `kek` (version `kek_version`).
pub fn seal(
    kind: ObjectKind,
    name: &str,
    plain: &[u8],
    kek: &Key,
    kek_version: u32,
    rng: &mut impl rand_core::CryptoRngCore,
) -> Vec<u8> {
    let dek = Key::generate(rng);
    let wrapped = kek.wrap(&dek, DEK_AAD, rng);
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() / 2 + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&kek_version.to_le_bytes());
    out.extend_from_slice(&wrapped);
    let mut aad = out.clone();
    aad.extend_from_slice(name.as_bytes());
    // Level 3 is zstd's default: metadata is small next to file data.
    let mut body = zstd::bulk::compress(plain, 3).unwrap_or_default();
    dek.seal_in_place(&[0u8; NONCE_LEN], &aad, &mut body);
    out.extend_from_slice(&body);
    out
}

/// Parses the header of a sealed object: its kind byte and KEK version.
pub fn peek(name: &str, bytes: &[u8]) -> Result<(u8, u32)> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(Error::corrupt(name, "not a sealed object (bad magic or too short)"));
    }
    Ok((bytes[4], u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]])))
}

/// Opens a sealed object of `kind` named `name`; `kek_for` yields the KEK of a version.
pub fn open<'k>(
    kind: ObjectKind,
    name: &str,
    bytes: &[u8],
    kek_for: impl FnOnce(u32) -> Option<&'k Key>,
) -> Result<Vec<u8>> {
    let (k, version) = peek(name, bytes)?;
    if k != kind as u8 {
        return Err(Error::corrupt(name, format!("object kind {k}, expected {}", kind as u8)));
    }
    let kek = kek_for(version).ok_or_else(|| Error::corrupt(name, format!("unknown key version {version}")))?;
    let dek = kek.unwrap_key(&bytes[12..HEADER_LEN], DEK_AAD, name).map_err(|e| match e {
        Error::Key { .. } => Error::corrupt(name, "data key fails authentication"),
        other => other,
    })?;
    let mut aad = bytes[..HEADER_LEN].to_vec();
    aad.extend_from_slice(name.as_bytes());
    let compressed = dek
        .open(&[0u8; NONCE_LEN], &aad, &bytes[HEADER_LEN..])
        .ok_or_else(|| Error::corrupt(name, "contents fail authentication"))?;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(&compressed[..])
        .and_then(|d| d.take(MAX_PLAINTEXT).read_to_end(&mut out))
        .map_err(|e| Error::corrupt(name, format!("bad compression: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::OsRng;

    #[test]
    fn seal_open_round_trip_and_name_binding() {
        let kek = Key::generate(&mut OsRng);
        let s = seal(ObjectKind::Snapshot, "snapshots/a", b"{\"x\":1}", &kek, 3, &mut OsRng);
        assert_eq!(peek("snapshots/a", &s).ok(), Some((2, 3)));
        let got = open(ObjectKind::Snapshot, "snapshots/a", &s, |v| (v == 3).then_some(&kek));
        assert_eq!(got.ok(), Some(b"{\"x\":1}".to_vec()));
        assert!(open(ObjectKind::Snapshot, "snapshots/b", &s, |_| Some(&kek)).is_err());
        assert!(open(ObjectKind::Index, "snapshots/a", &s, |_| Some(&kek)).is_err());
        assert!(open(ObjectKind::Snapshot, "snapshots/a", &s, |_| None).is_err());
    }

    proptest! {
        #[test]
        fn every_bit_flip_is_detected(pos in any::<usize>(), bit in 0u8..8) {
            let kek = Key::generate(&mut OsRng);
            let mut s = seal(ObjectKind::Index, "index/x", b"[1,2,3]", &kek, 1, &mut OsRng);
            let i = pos % s.len();
            s[i] ^= 1 << bit;
            let r = open(ObjectKind::Index, "index/x", &s, |_| Some(&kek));
            // Reserved header bytes are covered by the associated data too.
            prop_assert!(r.is_err());
        }
    }

    /// A sealed object whose authenticated body is `body` exactly (no compression applied):
    /// what someone holding the KEK could write.
    fn seal_raw(kind: u8, name: &str, body: &[u8], kek: &Key) -> Vec<u8> {
        let dek = Key::generate(&mut OsRng);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&kek.wrap(&dek, DEK_AAD, &mut OsRng));
        let mut aad = out.clone();
        aad.extend_from_slice(name.as_bytes());
        let mut body = body.to_vec();
        dek.seal_in_place(&[0u8; NONCE_LEN], &aad, &mut body);
        out.extend_from_slice(&body);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any object named as an index file or snapshot (any bytes, or a valid-looking header
        /// of any kind and key version followed by any bytes) is refused as corrupt.
        #[test]
        fn arbitrary_bytes_never_panic_the_sealed_opener(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            header in proptest::option::of((any::<u8>(), any::<u32>())),
        ) {
            let kek = Key::generate(&mut OsRng);
            let mut bytes = bytes;
            if let Some((kind, version)) = header {
                let mut h = MAGIC.to_vec();
                h.extend_from_slice(&[kind, 0, 0, 0]);
                h.extend_from_slice(&version.to_le_bytes());
                h.extend(bytes);
                bytes = h;
            }
            for kind in [ObjectKind::Index, ObjectKind::Snapshot] {
                let r = open(kind, "index/x", &bytes, |v| (v == 1).then_some(&kek));
                prop_assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
            }
        }

        /// An authenticated body that is not a zstd frame (or is one of arbitrary contents) is
        /// refused, or opens to exactly what was compressed: never a panic.
        #[test]
        fn authenticated_arbitrary_bodies_never_panic_the_sealed_opener(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            compress in any::<bool>(),
        ) {
            let kek = Key::generate(&mut OsRng);
            let stored = if compress { zstd::bulk::compress(&body, 3).unwrap_or_default() } else { body.clone() };
            let sealed = seal_raw(ObjectKind::Snapshot as u8, "snapshots/a", &stored, &kek);
            match open(ObjectKind::Snapshot, "snapshots/a", &sealed, |_| Some(&kek)) {
                Ok(plain) => prop_assert!(!compress || plain == body),
                Err(e) => {
                    prop_assert!(!compress);
                    prop_assert!(matches!(e, Error::Corrupt { .. }), "{e}");
                }
            }
        }
    }
}
