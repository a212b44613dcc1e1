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
}
