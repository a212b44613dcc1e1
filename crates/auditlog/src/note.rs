//! Signed checkpoints: the C2SP tlog-checkpoint body (origin, tree size, base64 root) in a C2SP
//! signed note, signed with the server's Ed25519 audit key. Notes go through `signed_note`
//! (Cloudflare's port of Go's `sumdb/note`) and the body through `tlog_tiles::Checkpoint`, so
//! any third-party note verifier reads what we write.

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

use crate::tree::Hash;
use crate::{AuditError, Result};

fn note_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Note(e.to_string())
}

/// The log's signing key and name (the checkpoint origin). The seed is secret: it lives in a
/// 0600 file on the server.
pub struct AuditKey {
    name: String,
    signing: SigningKey,
    signer: StandardSigner,
}

impl AuditKey {
    /// The key for `name` (non-empty, no spaces or `+`) from a 32-byte seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<AuditKey> {
        if !signed_note::is_key_name_valid(name) {
            return Err(AuditError::Note(format!("{name:?} is not a valid signed-note key name")));
        }
        let signing = SigningKey::from_bytes(&seed);
        let mut key = vec![0x01u8];
        key.extend_from_slice(signing.verifying_key().as_bytes());
        let id = signed_note::key_id(name, &key);
        let mut sk = vec![0x01u8];
        sk.extend_from_slice(&seed);
        let skey = format!("PRIVATE+KEY+{name}+{id:08x}+{}", base64::engine::general_purpose::STANDARD.encode(sk));
        let signer = StandardSigner::new(&skey).map_err(note_err)?;
        Ok(AuditKey { name: name.to_string(), signing, signer })
    }

    /// The secret seed (for the key file).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The origin / key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key line: `<name>+<8 hex key id>+<base64(0x01 || public key)>`.
    pub fn vkey(&self) -> String {
        signed_note::new_ed25519_verifier_key(&self.name, &self.signing.verifying_key())
    }

    /// Signs the checkpoint of a tree of `size` records with root `root`.
    pub fn sign_checkpoint(&self, size: u64, root: &Hash) -> Result<Checkpoint> {
        let body = tlog_tiles::Checkpoint::new(&self.name, size, tlog_tiles::Hash(*root), "").map_err(note_err)?;
        let mut note = Note::new(&body.to_bytes(), &[]).map_err(note_err)?;
        note.add_sigs(&[&self.signer]).map_err(note_err)?;
        let text = String::from_utf8(note.to_bytes()).map_err(note_err)?;
        Ok(Checkpoint { origin: self.name.clone(), size, root: *root, note: text })
    }
}

/// A verified checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// Records covered.
    pub size: u64,
    /// RFC 6962 root of those records.
    pub root: Hash,
    /// The signed note, as served and exported.
    pub note: String,
}

impl Checkpoint {
    /// Verifies `note` with the verifier key `vkey` and parses its body; the origin must be
    /// the key's name.
    pub fn open(note: &str, vkey: &str) -> Result<Checkpoint> {
        let verifier =
            StandardVerifier::new(vkey.trim()).map_err(|e| AuditError::Note(format!("verifier key: {e}")))?;
        let name = signed_note::Verifier::name(&verifier).to_string();
        let list = VerifierList::new(vec![Box::new(verifier)]);
        let parsed = Note::from_bytes(note.as_bytes()).map_err(note_err)?;
        parsed.verify(&list).map_err(|e| AuditError::Note(format!("signature: {e}")))?;
        let body = tlog_tiles::Checkpoint::from_bytes(parsed.text()).map_err(note_err)?;
        if body.origin() != name {
            return Err(AuditError::Note(format!("origin {:?} is not the key's name {name:?}", body.origin())));
        }
        Ok(Checkpoint { origin: name, size: body.size(), root: body.hash().0, note: note.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint of the 8-leaf RFC 6962 reference tree signed with a fixed seed; Ed25519
    /// is deterministic, so the note must come out byte for byte (signature checked with
    /// OpenSSL when the vector was made).
    #[test]
    fn checkpoint_known_answer_and_tampering() {
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = i as u8;
        }
        let key = AuditKey::from_seed("example.com/audit", seed).unwrap();
        assert_eq!(key.vkey(), "example.com/audit+29b87bfc+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4");
        let mut root = [0u8; 32];
        hex::decode_to_slice("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328", &mut root).unwrap();
        let cp = key.sign_checkpoint(8, &root).unwrap();
        assert_eq!(
            cp.note,
            "example.com/audit\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n\u{2014} example.com/audit Kbh7/MMDZzUK+Vn5aeiirlU7DkzTjY8Q014NWv4lp/DhLnxVQP9jgD8Wxf7HAzHwZgfJfgl/Sxj8AshRwfohrAwzAw0=\n"
        );
        let opened = Checkpoint::open(&cp.note, &key.vkey()).unwrap();
        assert_eq!(opened, cp);
        let forged = cp.note.replacen("\n8\n", "\n9\n", 1);
        assert!(Checkpoint::open(&forged, &key.vkey()).is_err());
        let other = AuditKey::from_seed("example.com/audit", [9; 32]).unwrap();
        assert!(Checkpoint::open(&cp.note, &other.vkey()).is_err());
    }

    /// The C2SP signed-note specification's example verifies with our verifier path.
    #[test]
    fn c2sp_example_note_verifies() {
        let vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
        let note = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        let verifier = StandardVerifier::new(vkey).unwrap();
        let list = VerifierList::new(vec![Box::new(verifier)]);
        assert!(Note::from_bytes(note.as_bytes()).unwrap().verify(&list).is_ok());
    }

    use proptest::prelude::*;

    fn key() -> AuditKey {
        AuditKey::from_seed("example.com/audit", [3; 32]).unwrap()
    }

    /// A checkpoint body with each line anything a log could claim: the origin (ours or
    /// another), a size (any digits, signs, overflowing numbers), a root hash (base64 of any
    /// length or not base64), extension lines, and missing or extra blank lines.
    fn body() -> impl Strategy<Value = String> {
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
        let origin = prop_oneof![3 => Just("example.com/audit".to_string()), 1 => "[ -~]{0,20}"];
        let size = prop_oneof![
            4 => any::<u64>().prop_map(|n| n.to_string()),
            1 => Just("18446744073709551616".to_string()),
            1 => Just("-1".to_string()),
            1 => Just("01".to_string()),
            1 => "[0-9+ -]{0,22}",
        ];
        let hash = prop_oneof![
            3 => any::<[u8; 32]>().prop_map(move |b| b64(b.to_vec())),
            1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(b64),
            1 => "[A-Za-z0-9+/=]{0,50}",
        ];
        let extensions = proptest::collection::vec("[ -~]{0,20}", 0..3);
        (origin, size, hash, extensions, any::<bool>()).prop_map(|(o, n, h, ext, blank)| {
            let mut text = format!("{o}\n{n}\n{h}\n");
            for e in ext {
                text.push_str(&e);
                text.push('\n');
            }
            if blank {
                text.push('\n');
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A checkpoint of any text, checked against our verifier key or a key line of any
        /// text, is refused as a bad note.
        #[test]
        fn arbitrary_notes_and_keys_never_panic_checkpoint_opening(
            note in prop_oneof!["(?s).{0,300}", Just(key().sign_checkpoint(3, &[1; 32]).unwrap().note)],
            vkey in prop_oneof![
                Just(key().vkey()),
                "(?s).{0,100}",
                "[a-z./]{1,20}\\+[0-9a-f]{8}\\+[A-Za-z0-9+/=]{0,60}",
            ],
            edit in proptest::option::of((any::<prop::sample::Index>(), any::<char>())),
        ) {
            let mut note = note;
            if let Some((at, c)) = edit {
                let mut chars: Vec<char> = note.chars().collect();
                if !chars.is_empty() {
                    let i = at.index(chars.len());
                    chars[i] = c;
                }
                note = chars.into_iter().collect();
            }
            match Checkpoint::open(&note, &vkey) {
                Ok(cp) => {
                    // Only our own signature over an untouched body opens.
                    prop_assert_eq!(vkey, key().vkey());
                    prop_assert_eq!(cp, key().sign_checkpoint(3, &[1; 32]).unwrap());
                }
                Err(e) => prop_assert!(matches!(e, AuditError::Note(_)), "{e}"),
            }
        }

        /// A note our key really signed, over any body: the body parser answers with a
        /// checkpoint whose origin is the key's name, or refuses it, never panics.
        #[test]
        fn signed_notes_with_any_body_never_panic_checkpoint_opening(text in body()) {
            let key = key();
            let Ok(mut note) = Note::new(text.as_bytes(), &[]) else { return Ok(()) };
            note.add_sigs(&[&key.signer]).unwrap();
            let signed = String::from_utf8(note.to_bytes()).unwrap();
            match Checkpoint::open(&signed, &key.vkey()) {
                Ok(cp) => {
                    prop_assert_eq!(cp.origin.as_str(), "example.com/audit");
                    let head = format!("example.com/audit\n{}\n", cp.size);
                    prop_assert!(text.starts_with(&head), "{text:?}");
                }
                Err(e) => prop_assert!(matches!(e, AuditError::Note(_)), "{e}"),
            }
        }
    }
}
