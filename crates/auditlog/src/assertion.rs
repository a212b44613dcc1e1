//! Offline re-verification of a recorded WebAuthn approval: the authenticator's own signature
//! over (authenticator data || SHA-256(client data JSON)), made with the key the log recorded
//! at enrollment, on a challenge derived from the approved operation's digest — so an auditor
//! checks that a person's authenticator approved exactly that operation, without trusting the
//! server. Signature algorithms: ES256 (`p256`) and EdDSA (`ed25519-dalek`).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Flags of the authenticator data.
const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;

/// The WebAuthn challenge of an approval: SHA-256("strongroom approval v1" || digest || nonce).
/// `digest_hex` is the SHA-256 of the operation's canonical JSON, in hex.
pub fn approval_challenge(digest_hex: &str, nonce: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"strongroom approval v1");
    h.update(hex::decode(digest_hex).unwrap_or_default());
    h.update(nonce);
    h.finalize().into()
}

/// A credential's public key as the log records it at enrollment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialKey {
    /// `ES256` (P-256, SEC1 uncompressed point) or `EdDSA` (Ed25519, 32 bytes).
    pub alg: String,
    /// The key, base64url without padding.
    pub public_key: String,
}

/// An assertion as the log records it (base64url fields, as WebAuthn JSON has them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedAssertion {
    /// Credential id.
    pub credential_id: String,
    /// Authenticator data.
    pub authenticator_data: String,
    /// Client data JSON.
    pub client_data_json: String,
    /// Signature.
    pub signature: String,
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("bad base64url: {e}"))
}

/// Verifies `a` as an assertion by `key` over `challenge` for relying party `rp_id` at
/// `origin`, with user presence and user verification. Says why when it does not hold.
pub fn verify(
    key: &CredentialKey,
    a: &RecordedAssertion,
    challenge: &[u8],
    rp_id: &str,
    origin: &str,
) -> Result<(), String> {
    let auth_data = b64url(&a.authenticator_data)?;
    let client_data = b64url(&a.client_data_json)?;
    let signature = b64url(&a.signature)?;
    #[derive(Deserialize)]
    struct ClientData {
        #[serde(rename = "type")]
        kind: String,
        challenge: String,
        origin: String,
    }
    let cd: ClientData = serde_json::from_slice(&client_data).map_err(|e| format!("client data: {e}"))?;
    if cd.kind != "webauthn.get" {
        return Err(format!("client data type is {:?}, not webauthn.get", cd.kind));
    }
    if b64url(&cd.challenge)? != challenge {
        return Err("the signed challenge is not this operation's (digest and nonce)".into());
    }
    // Origins compare without a trailing slash (some clients serialise `https://host/`).
    if cd.origin.trim_end_matches('/') != origin.trim_end_matches('/') {
        return Err(format!("signed for origin {:?}, not {origin:?}", cd.origin));
    }
    if auth_data.len() < 37 {
        return Err("authenticator data is too short".into());
    }
    if auth_data[..32] != Sha256::digest(rp_id.as_bytes())[..] {
        return Err(format!("authenticator data is for another relying party than {rp_id:?}"));
    }
    if auth_data[32] & FLAG_UP == 0 || auth_data[32] & FLAG_UV == 0 {
        return Err("the authenticator did not assert user presence and verification".into());
    }
    let mut message = auth_data.clone();
    message.extend_from_slice(&Sha256::digest(&client_data));
    let pk = b64url(&key.public_key)?;
    match key.alg.as_str() {
        "ES256" => {
            use p256::ecdsa::signature::Verifier as _;
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&pk).map_err(|e| format!("public key: {e}"))?;
            let sig = p256::ecdsa::Signature::from_der(&signature).map_err(|e| format!("signature: {e}"))?;
            vk.verify(&message, &sig).map_err(|_| "the authenticator's signature does not verify".to_string())
        }
        "EdDSA" => {
            let pk: [u8; 32] = pk.try_into().map_err(|_| "an Ed25519 key is 32 bytes".to_string())?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|e| format!("public key: {e}"))?;
            let sig = ed25519_dalek::Signature::from_slice(&signature).map_err(|e| format!("signature: {e}"))?;
            vk.verify_strict(&message, &sig).map_err(|_| "the authenticator's signature does not verify".to_string())
        }
        other => Err(format!("unsupported signature algorithm {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;

    fn enc(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn signed(challenge: &[u8], flags: u8) -> (CredentialKey, RecordedAssertion) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let key = CredentialKey {
            alg: "ES256".into(),
            public_key: enc(sk.verifying_key().to_encoded_point(false).as_bytes()),
        };
        let mut auth = Sha256::digest(b"localhost").to_vec();
        auth.push(flags);
        auth.extend_from_slice(&[0, 0, 0, 9]);
        let cd =
            format!(r#"{{"type":"webauthn.get","challenge":"{}","origin":"http://localhost:8440"}}"#, enc(challenge));
        let mut msg = auth.clone();
        msg.extend_from_slice(&Sha256::digest(cd.as_bytes()));
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        let a = RecordedAssertion {
            credential_id: "c1".into(),
            authenticator_data: enc(&auth),
            client_data_json: enc(cd.as_bytes()),
            signature: enc(sig.to_der().as_bytes()),
        };
        (key, a)
    }

    #[test]
    fn an_approval_verifies_only_for_its_own_digest_key_and_flags() {
        let ch = approval_challenge(&"ab".repeat(32), &[1; 32]);
        let (key, a) = signed(&ch, FLAG_UP | FLAG_UV);
        assert_eq!(verify(&key, &a, &ch, "localhost", "http://localhost:8440"), Ok(()));
        let other = approval_challenge(&"cd".repeat(32), &[1; 32]);
        assert!(verify(&key, &a, &other, "localhost", "http://localhost:8440").is_err());
        assert!(verify(&key, &a, &ch, "example.com", "http://localhost:8440").is_err());
        assert!(verify(&key, &a, &ch, "localhost", "https://evil.example").is_err());
        let (_, no_uv) = signed(&ch, FLAG_UP);
        assert!(verify(&key, &no_uv, &ch, "localhost", "http://localhost:8440").unwrap_err().contains("verification"));
        let (other_key, _) = {
            let sk = p256::ecdsa::SigningKey::from_slice(&[8u8; 32]).unwrap();
            (
                CredentialKey {
                    alg: "ES256".into(),
                    public_key: enc(sk.verifying_key().to_encoded_point(false).as_bytes()),
                },
                (),
            )
        };
        assert!(verify(&other_key, &a, &ch, "localhost", "http://localhost:8440").is_err());
        let mut swapped = a.clone();
        swapped.signature = no_uv.signature.clone();
        assert!(verify(&key, &swapped, &ch, "localhost", "http://localhost:8440").is_err());
    }

    use proptest::prelude::*;

    fn b64(bytes: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = String> {
        bytes.prop_map(|b| enc(&b))
    }

    fn challenge() -> [u8; 32] {
        approval_challenge(&"ab".repeat(32), &[1; 32])
    }

    /// Authenticator data as recorded: any bytes, or our relying party's hash with any flags,
    /// counter and trailing bytes.
    fn auth_data() -> impl Strategy<Value = String> {
        prop_oneof![
            b64(proptest::collection::vec(any::<u8>(), 0..60)),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(flags, rest)| {
                let mut a = Sha256::digest(b"localhost").to_vec();
                a.push(flags);
                a.extend(rest);
                enc(&a)
            }),
            "(?s).{0,40}",
        ]
    }

    /// Client data as recorded: any bytes, or JSON with any type, the right or a wrong
    /// challenge (even one that is not base64url) and any origin.
    fn client_data() -> impl Strategy<Value = String> {
        let kind = prop::sample::select(vec!["webauthn.get", "webauthn.create", ""]);
        let ch = prop_oneof![Just(enc(&challenge())), "[A-Za-z0-9_=+/-]{0,50}"];
        let origin =
            prop::sample::select(vec!["http://localhost:8440", "http://localhost:8440/", "https://evil.example"]);
        prop_oneof![
            b64(proptest::collection::vec(any::<u8>(), 0..80)),
            (kind, ch, origin).prop_map(|(t, c, o)| enc(serde_json::json!({"type": t, "challenge": c, "origin": o})
                .to_string()
                .as_bytes())),
            "(?s).{0,40}",
        ]
    }

    /// Keys as recorded: any bytes, bytes shaped like a SEC1 point or an Ed25519 key, a real key.
    fn public_key() -> impl Strategy<Value = String> {
        prop_oneof![
            b64(proptest::collection::vec(any::<u8>(), 0..80)),
            b64(proptest::collection::vec(any::<u8>(), 64).prop_map(|p| [vec![4u8], p].concat())),
            b64(proptest::collection::vec(any::<u8>(), 32)),
            Just(signed(&challenge(), FLAG_UP | FLAG_UV).0.public_key),
            "(?s).{0,40}",
        ]
    }

    /// Signatures as recorded: any bytes, 64 bytes (Ed25519, raw ECDSA), DER-like sequences.
    fn signature() -> impl Strategy<Value = String> {
        prop_oneof![
            b64(proptest::collection::vec(any::<u8>(), 0..80)),
            b64(proptest::collection::vec(any::<u8>(), 64)),
            b64((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..72))
                .prop_map(|(l, b)| [vec![0x30, l], b].concat())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// An auditor's check of a recorded approval whose every field is hostile (shaped
        /// enough to reach the key and signature parsers) says why it does not hold.
        #[test]
        fn arbitrary_recorded_assertions_never_panic_offline_verification(
            alg in prop::sample::select(vec!["ES256", "EdDSA", "RS256", ""]),
            public_key in public_key(),
            authenticator_data in auth_data(),
            client_data_json in client_data(),
            signature in signature(),
        ) {
            let key = CredentialKey { alg: alg.into(), public_key };
            let a = RecordedAssertion { credential_id: "c1".into(), authenticator_data, client_data_json, signature };
            prop_assert!(verify(&key, &a, &challenge(), "localhost", "http://localhost:8440").is_err());
        }

        /// A real approval with one character of one field changed does not verify (or the
        /// change did not alter what was signed: base64url padding is ignored).
        #[test]
        fn edited_approvals_never_verify(field in 0usize..5, at in any::<prop::sample::Index>(), c in any::<char>()) {
            let (mut key, mut a) = signed(&challenge(), FLAG_UP | FLAG_UV);
            let (k0, a0) = (key.clone(), a.clone());
            let target = match field {
                0 => &mut key.public_key,
                1 => &mut key.alg,
                2 => &mut a.authenticator_data,
                3 => &mut a.client_data_json,
                _ => &mut a.signature,
            };
            let mut chars: Vec<char> = target.chars().collect();
            let i = at.index(chars.len());
            chars[i] = c;
            *target = chars.into_iter().collect();
            let decoded_same = |x: &str, y: &str| b64url(x).ok().is_some_and(|d| b64url(y).ok() == Some(d));
            let unchanged = key.alg == k0.alg
                && decoded_same(&key.public_key, &k0.public_key)
                && decoded_same(&a.authenticator_data, &a0.authenticator_data)
                && decoded_same(&a.client_data_json, &a0.client_data_json)
                && decoded_same(&a.signature, &a0.signature);
            let r = verify(&key, &a, &challenge(), "localhost", "http://localhost:8440");
            prop_assert_eq!(r.is_ok(), unchanged, "{:?}", r);
        }
    }
}
