//! Keys and authenticated encryption: master key, key-encryption keys, data keys, chunk-id key.
//!
//! AES-256-GCM was chosen over XChaCha20-Poly1305 by measurement on the project's machines
//! (AES-NI and PCLMULQDQ make it 3–4× faster per core; see docs/format.md). Its 96-bit nonce is
//! safe here because every data key is fresh and random per pack or per metadata object and
//! nonces under it are a counter (blob index), so no (key, nonce) pair repeats; only key
//! wrapping uses random nonces, under a KEK that wraps far fewer than 2^32 keys.

use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// Length of an AES-256-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of an AES-256-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a wrapped 32-byte key: nonce, ciphertext, tag.
pub const WRAPPED_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// A 256-bit secret key, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl Key {
    /// Draws a fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Key {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Key(k)
    }

    /// Wraps existing key material.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// The raw key bytes (for the chunk-id hasher and key files only).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short public fingerprint of this key, safe to store and show.
    pub fn fingerprint(&self) -> String {
        let h = blake3::derive_key("strongroom 2026 key fingerprint", &self.0);
        hex::encode(&h[..8])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }

    /// Encrypts `buf` in place under `nonce` and appends the tag.
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
        let tag = self
            .cipher()
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            // AES-GCM only fails for messages over 64 GiB; chunks are at most a few MiB.
            .unwrap_or_default();
        buf.extend_from_slice(&tag);
    }

    /// Encrypts `buf` in place under `nonce` and returns the tag.
    pub fn seal_slice(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        self.cipher()
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            .map(|t| t.into())
            .unwrap_or_default()
    }

    /// Decrypts `ct_and_tag` (ciphertext followed by tag); `None` if authentication fails.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ct_and_tag: &[u8]) -> Option<Vec<u8>> {
        if ct_and_tag.len() < TAG_LEN {
            return None;
        }
        let (ct, tag) = ct_and_tag.split_at(ct_and_tag.len() - TAG_LEN);
        let mut buf = ct.to_vec();
        self.cipher().decrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut buf, Tag::from_slice(tag)).ok()?;
        Some(buf)
    }

    /// Wraps `inner` under this key with a random nonce: `nonce || ct || tag` (60 bytes).
    pub fn wrap(&self, inner: &Key, aad: &[u8], rng: &mut impl CryptoRngCore) -> [u8; WRAPPED_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut buf = inner.0.to_vec();
        self.seal_in_place(&nonce, aad, &mut buf);
        let mut out = [0u8; WRAPPED_LEN];
        out[..NONCE_LEN].copy_from_slice(&nonce);
        out[NONCE_LEN..].copy_from_slice(&buf);
        buf.zeroize();
        out
    }

    /// Unwraps a key made by [`Key::wrap`]; `object` names what is being unlocked for errors.
    pub fn unwrap_key(&self, wrapped: &[u8], aad: &[u8], object: &str) -> Result<Key> {
        if wrapped.len() != WRAPPED_LEN {
            return Err(Error::corrupt(object, "wrapped key has the wrong length"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
        let mut plain =
            self.open(&nonce, aad, &wrapped[NONCE_LEN..]).ok_or_else(|| Error::Key { object: object.to_string() })?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&plain);
        plain.zeroize();
        Ok(Key(k))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

/// The master key: wraps every key-encryption key and the chunk-id key of a repository.
///
/// It lives outside the repository (a 0600 key file on the server host by default), so a copy
/// of the storage alone reveals nothing.
#[derive(Clone, Debug)]
pub struct MasterKey(pub Key);

impl MasterKey {
    /// Reads a 32-byte key file, or creates one with mode 0600 if `path` does not exist.
    pub fn load_or_create(path: &Path, rng: &mut impl CryptoRngCore) -> Result<MasterKey> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse_file(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate(rng);
                write_secret_file(path, hex::encode(key.expose()).as_bytes())?;
                Ok(MasterKey(key))
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Reads an existing key file.
    pub fn load(path: &Path) -> Result<MasterKey> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse_file(&bytes, path)
    }

    fn parse_file(bytes: &[u8], path: &Path) -> Result<MasterKey> {
        let text = std::str::from_utf8(bytes).unwrap_or("").trim();
        let mut k = [0u8; 32];
        hex::decode_to_slice(text, &mut k)
            .map_err(|_| Error::Invalid(format!("{}: a master key file holds 64 hex digits", path.display())))?;
        Ok(MasterKey(Key(k)))
    }
}

/// Where the master key comes from.
#[derive(Clone)]
pub enum MasterSource {
    /// A key file of 64 hex digits, mode 0600, created on first use.
    File(std::path::PathBuf),
    /// 64 hex digits handed over directly (an environment variable on the server host),
    /// wiped from memory when dropped.
    Hex(zeroize::Zeroizing<String>),
    /// A passphrase stretched with Argon2id; salt and cost live in `kdf_file` (not secret),
    /// created on first use.
    Passphrase {
        /// The passphrase, wiped from memory when dropped.
        passphrase: zeroize::Zeroizing<String>,
        /// Where the Argon2id salt and parameters are kept.
        kdf_file: std::path::PathBuf,
    },
}

impl std::fmt::Debug for MasterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str(self.kind())
    }
}

impl MasterSource {
    /// `file`, `env` or `passphrase`.
    pub fn kind(&self) -> &'static str {
        match self {
            MasterSource::File(_) => "file",
            MasterSource::Hex(_) => "env",
            MasterSource::Passphrase { .. } => "passphrase",
        }
    }
}

/// Argon2id settings of a passphrase-derived master key (OWASP's recommended minimum cost is
/// m = 19 MiB, t = 2; these are above it).
#[derive(serde::Serialize, serde::Deserialize)]
struct KdfFile {
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
}

const CHECK_AAD: &[u8] = b"strongroom master check v1";

impl MasterKey {
    /// A key for another purpose, derived from this one (BLAKE3 `derive_key` with `context`,
    /// a fixed string naming the purpose): the master key itself is never used twice.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, self.0.expose())
    }

    /// The key from 64 hex digits.
    pub fn from_hex(text: &str) -> Result<MasterKey> {
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), k.as_mut_slice())
            .map_err(|_| Error::Invalid("a master key is 64 hex digits (32 bytes)".into()))?;
        Ok(MasterKey(Key(*k)))
    }

    /// The key stretched from `passphrase` with Argon2id; the salt and cost are read from
    /// `kdf_file`, or chosen and written there (0600) the first time.
    pub fn from_passphrase(passphrase: &str, kdf_file: &Path, rng: &mut impl CryptoRngCore) -> Result<MasterKey> {
        if passphrase.chars().count() < 12 {
            return Err(Error::Invalid("a master passphrase has at least 12 characters".into()));
        }
        let kdf: KdfFile = match std::fs::read(kdf_file) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("{}: {e}", kdf_file.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut salt = [0u8; 16];
                rng.fill_bytes(&mut salt);
                let kdf = KdfFile { kdf: "argon2id".into(), m_kib: 65536, t: 3, p: 1, salt: hex::encode(salt) };
                let json = serde_json::to_vec_pretty(&kdf).map_err(|e| Error::Invalid(e.to_string()))?;
                write_secret_file(kdf_file, &json)?;
                kdf
            }
            Err(e) => return Err(Error::io(kdf_file, e)),
        };
        if kdf.kdf != "argon2id" {
            return Err(Error::Invalid(format!("{}: unknown key derivation {}", kdf_file.display(), kdf.kdf)));
        }
        let salt = hex::decode(&kdf.salt).map_err(|_| Error::Invalid(format!("{}: bad salt", kdf_file.display())))?;
        let params = argon2::Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32))
            .map_err(|e| Error::Invalid(format!("{}: {e}", kdf_file.display())))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut k = [0u8; 32];
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, &mut k)
            .map_err(|e| Error::Invalid(format!("key derivation: {e}")))?;
        Ok(MasterKey(Key(k)))
    }

    /// Opens the key from `source`.
    pub fn open(source: &MasterSource, rng: &mut impl CryptoRngCore) -> Result<MasterKey> {
        match source {
            MasterSource::File(path) => Self::load_or_create(path, rng),
            MasterSource::Hex(text) => Self::from_hex(text),
            MasterSource::Passphrase { passphrase, kdf_file } => Self::from_passphrase(passphrase, kdf_file, rng),
        }
    }

    /// A check value (hex): a constant sealed under this key. It reveals nothing about the key
    /// and lets a later start tell whether it has the same key.
    pub fn check_value(&self, rng: &mut impl CryptoRngCore) -> String {
        hex::encode(self.0.wrap(&Key([0; 32]), CHECK_AAD, rng))
    }

    /// Whether `check` (from [`MasterKey::check_value`]) was made with this key.
    pub fn matches(&self, check: &str) -> bool {
        hex::decode(check.trim()).ok().is_some_and(|w| self.0.unwrap_key(&w, CHECK_AAD, "master check").is_ok())
    }
}

/// Writes `data` to a new file readable only by its owner (mode 0600), durably.
pub fn write_secret_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn master_keys_from_hex_and_passphrase_check_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::from_hex(&"ab".repeat(32)).unwrap();
        assert!(MasterKey::from_hex("abc").is_err());
        let check = a.check_value(&mut OsRng);
        assert!(a.matches(&check));
        assert!(!MasterKey::from_hex(&"cd".repeat(32)).unwrap().matches(&check));
        let kdf = dir.path().join("master.kdf");
        let p1 = MasterKey::from_passphrase("correct horse battery", &kdf, &mut OsRng).unwrap();
        let p2 = MasterKey::from_passphrase("correct horse battery", &kdf, &mut OsRng).unwrap();
        assert_eq!(p1.0.expose(), p2.0.expose(), "same passphrase and salt, same key");
        let wrong = MasterKey::from_passphrase("correct horse battery!", &kdf, &mut OsRng).unwrap();
        assert!(!wrong.matches(&p1.check_value(&mut OsRng)));
        assert!(MasterKey::from_passphrase("short", &kdf, &mut OsRng).is_err());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&kdf).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn wrap_unwrap_and_tamper_detection() {
        let kek = Key::generate(&mut OsRng);
        let dek = Key::generate(&mut OsRng);
        let mut w = kek.wrap(&dek, b"aad", &mut OsRng);
        let back = kek.unwrap_key(&w, b"aad", "x").map(|k| *k.expose());
        assert_eq!(back.ok(), Some(*dek.expose()));
        assert!(kek.unwrap_key(&w, b"other", "x").is_err());
        w[20] ^= 1;
        assert!(matches!(kek.unwrap_key(&w, b"aad", "x"), Err(Error::Key { .. })));
        assert!(kek.unwrap_key(&w[..10], b"aad", "x").is_err());
    }

    #[test]
    fn master_key_file_is_created_0600_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("keys/master.key");
        let a = MasterKey::load_or_create(&p, &mut OsRng).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600);
        let b = MasterKey::load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.0.expose(), b.0.expose());
    }
}
