//! The W3C WebAuthn Level 3 test vectors (tests/vectors/, transcribed from the specification)
//! run through our relying party: registration with fixed challenges, then an assertion with
//! the same credential. Every authenticator type people own must enroll — verified where the
//! library can verify its attestation statement, otherwise as unverified attestation (software
//! strength) — and a key whose signatures cannot be verified here is refused at enrollment,
//! saying so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use identity::passkey::RelyingParty;
use identity::IdentityError;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap_or_else(|| panic!("{key} missing"))).unwrap()
}

fn vectors_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors"))
}

fn load(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(vectors_dir().join(format!("{name}.json"))).unwrap()).unwrap()
}

/// The relying party of the vectors (`example.org`), trusting the vectors' attestation root.
fn relying_party(cross_origin: bool) -> RelyingParty {
    use base64::Engine as _;
    let root = load("attestation-root-cert");
    let der = hex_field(&root, "attestation_ca_cert_der_hex");
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
    let trusted = webauthn_rs_core::proto::AttestationCaList::try_from(pem.as_bytes()).unwrap();
    let url = url::Url::parse("https://example.org").unwrap();
    RelyingParty::new("vectors", &url, trusted).unwrap().with_cross_origin(cross_origin)
}

/// What a vector must do.
#[derive(Debug, PartialEq)]
enum Expect {
    /// Registers with a verified attestation statement, then signs in.
    Verified,
    /// Registers as unverified attestation (the library cannot check the statement), signs in.
    Unverified,
    /// Refused at enrollment: the key's signatures cannot be verified here.
    UnsupportedKey,
    /// Refused: the ceremony ran in a cross-origin frame, or under another top-level origin.
    CrossOrigin,
}

const VECTORS: &[(&str, Expect)] = &[
    ("none-es256", Expect::Verified),
    ("none-es256-long-credential-id", Expect::Verified),
    ("none-es256-crossOrigin", Expect::CrossOrigin),
    ("none-es256-topOrigin", Expect::CrossOrigin),
    ("packed-self-es256", Expect::Verified),
    ("packed-es256", Expect::Verified),
    ("packed-es384", Expect::Verified),
    ("packed-es512", Expect::UnsupportedKey),
    ("packed-rs256", Expect::UnsupportedKey),
    ("packed-eddsa", Expect::UnsupportedKey),
    ("packed-ed448", Expect::UnsupportedKey),
    ("tpm-es256", Expect::Unverified),
    ("android-key-es256", Expect::Unverified),
    ("apple-es256", Expect::Verified),
    ("fido-u2f-es256", Expect::Verified),
];

/// A ceremony state of ours with the vector's fixed challenge (the state is the library's
/// serialisable form). Most vectors' assertions lack user verification, which the library
/// would check before the signature; the state and credential leave that to our own check,
/// which `finish_authentication` makes after the library verified the signature.
fn with_challenge<T: serde::Serialize + serde::de::DeserializeOwned>(state: T, challenge: &str, policy: &str) -> T {
    let mut v = serde_json::to_value(state).unwrap();
    v["challenge"] = json!(challenge);
    v["policy"] = json!(policy);
    serde_json::from_value(v).unwrap()
}

fn register(rp: &RelyingParty, v: &Value) -> Result<identity::passkey::RegisteredCredential, IdentityError> {
    let reg = &v["registration"];
    let (_, state) = rp.start_registration(&uuid::Uuid::new_v4(), "vector", "vector", Vec::new()).unwrap();
    let state = with_challenge(state, reg["challenge_b64url"].as_str().unwrap(), "preferred");
    let id = b64(&hex_field(reg, "credential_id_hex"));
    let credential = serde_json::from_value(json!({
        "id": id, "rawId": id, "type": "public-key", "extensions": {},
        "response": {
            "attestationObject": b64(&hex_field(reg, "attestation_object_hex")),
            "clientDataJSON": b64(&hex_field(reg, "client_data_json_hex")),
        },
    }))
    .unwrap();
    rp.finish_registration(&credential, &state)
}

fn authenticate(
    rp: &RelyingParty,
    v: &Value,
    registered: &identity::passkey::RegisteredCredential,
) -> Result<identity::passkey::VerifiedAssertion, IdentityError> {
    let auth = &v["authentication"];
    let mut credential = registered.credential.clone();
    credential.registration_policy = webauthn_rs_core::proto::UserVerificationPolicy::Discouraged_DO_NOT_USE;
    credential.user_verified = false;
    let (_, state) = rp.start_authentication(vec![credential.clone()]).unwrap();
    let state = with_challenge(state, auth["challenge_b64url"].as_str().unwrap(), "discouraged");
    let id = b64(&hex_field(&v["registration"], "credential_id_hex"));
    let pkc = serde_json::from_value(json!({
        "id": id, "rawId": id, "type": "public-key", "extensions": {},
        "response": {
            "authenticatorData": b64(&hex_field(auth, "authenticator_data_hex")),
            "clientDataJSON": b64(&hex_field(auth, "client_data_json_hex")),
            "signature": b64(&hex_field(auth, "signature_hex")),
            "userHandle": null,
        },
    }))
    .unwrap();
    rp.finish_authentication(&pkc, &state, &credential)
}

#[test]
fn every_w3c_test_vector_enrolls_or_is_refused_for_a_stated_reason() {
    let rp = relying_party(false);
    let mut report = Vec::new();
    for (name, expect) in VECTORS {
        let v = load(name);
        let outcome = register(&rp, &v);
        report.push(format!("{name}: {:?}", outcome.as_ref().map(|r| (&r.attestation_format, r.attestation_trusted))));
        match (expect, outcome) {
            (Expect::Verified | Expect::Unverified, Ok(r)) => {
                let unverified = r.attestation_format.ends_with("(unverified)");
                assert_eq!(unverified, *expect == Expect::Unverified, "{name}: format {}", r.attestation_format);
                if unverified {
                    assert!(!r.attestation_trusted, "{name}: unverified attestation never counts as hardware");
                }
                if v["attestation_statement_has_x5c"] == true && !unverified {
                    assert!(r.attestation_trusted, "{name}: chains to the trusted root");
                }
                // The assertion's signature verifies: Ok, or refused only for the missing UV
                // flag (checked after the signature), as the vector says.
                match authenticate(&rp, &v, &r) {
                    Ok(a) => assert!(a.user_verified, "{name}"),
                    Err(IdentityError::UserNotVerified) => {}
                    Err(e) => panic!("{name}: the assertion did not verify: {e}"),
                }
            }
            (Expect::UnsupportedKey, Err(IdentityError::UnsupportedKey(why))) => {
                assert!(!why.is_empty(), "{name}");
            }
            (Expect::CrossOrigin, Err(IdentityError::Mismatch(_))) => {}
            (expect, other) => panic!("{name}: expected {expect:?}, got {other:?}"),
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn a_tampered_vector_is_refused_whatever_its_attestation() {
    let rp = relying_party(false);
    for name in ["none-es256", "packed-es256", "tpm-es256", "android-key-es256"] {
        let v = load(name);
        let r = register(&rp, &v).unwrap();
        // One flipped bit in the signature.
        let mut bad = v.clone();
        let mut sig = hex_field(&v["authentication"], "signature_hex");
        let n = sig.len();
        sig[n - 1] ^= 1;
        bad["authentication"]["signature_hex"] = json!(hex::encode(sig));
        let answer = authenticate(&rp, &bad, &r);
        assert!(matches!(answer, Err(IdentityError::BadSignature(_))), "{name}: {answer:?}");
        // Another challenge: the registration no longer belongs to the ceremony.
        let mut other = v.clone();
        other["registration"]["challenge_b64url"] = json!(b64(&[7; 32]));
        assert!(register(&rp, &other).is_err(), "{name}: a registration for another challenge");
    }
}

#[test]
fn a_foreign_top_origin_is_refused_even_when_cross_origin_frames_are_allowed() {
    let allowing = relying_party(true);
    let v = load("none-es256-topOrigin");
    assert!(matches!(register(&allowing, &v), Err(IdentityError::Mismatch(_))), "example.com is not our top origin");
}
