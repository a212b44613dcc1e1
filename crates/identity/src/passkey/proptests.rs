//! Property tests of everything in `passkey` that reads what a browser sends: client data
//! frames, attestation objects, user handles, and whole registration and assertion responses
//! (arbitrary bytes, and a software authenticator's real responses with hostile changes).
//! Each must end in a typed [`IdentityError`] (or `Ok`/`None`), never a panic.
//!
//! A child module of `passkey`, so it reaches the private parsers.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use proptest::prelude::*;
use serde_cbor_2::Value;
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::WebauthnAuthenticator;

use super::*;

const ORIGIN: &str = "https://vault.example.com";

fn rp() -> RelyingParty {
    RelyingParty::new("t", &Url::parse(ORIGIN).unwrap(), AttestationCaList::default()).unwrap()
}

/// A real registration and a real assertion by a software authenticator, made once.
struct Ceremonies {
    registration: RegistrationState,
    response: RegisterPublicKeyCredential,
    credential: Credential,
    authentication: AuthenticationState,
    assertion: PublicKeyCredential,
}

static REAL: LazyLock<Ceremonies> = LazyLock::new(|| {
    let rp = rp();
    let (mut token, _ca) = SoftToken::new(true).unwrap();
    let (mut ccr, registration) = rp.start_registration(&Uuid::from_bytes([5; 16]), "alice", "Alice", vec![]).unwrap();
    // The soft token stores no discoverable credentials; the server only prefers one.
    if let Some(sel) = ccr.public_key.authenticator_selection.as_mut() {
        sel.resident_key = None;
        sel.require_resident_key = false;
        sel.authenticator_attachment = None;
    }
    let origin = Url::parse(ORIGIN).unwrap();
    let response = token.do_registration(origin.clone(), ccr).unwrap();
    let credential = rp.finish_registration(&response, &registration).unwrap().credential;
    let (rcr, authentication) = rp.start_authentication(vec![credential.clone()]).unwrap();
    let assertion = token.do_authentication(origin, rcr).unwrap();
    rp.finish_authentication(&assertion, &authentication, &credential).unwrap();
    Ceremonies { registration, response, credential, authentication, assertion }
});

/// A change an attacker (or a broken authenticator) makes to a byte string.
#[derive(Clone, Debug)]
enum Edit {
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Append(Vec<u8>),
    Splice(prop::sample::Index, Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(Edit::Append),
        (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(i, b)| Edit::Splice(i, b)),
    ]
}

fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        match e {
            Edit::Flip(i, bit) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] ^= 1 << bit;
            }
            Edit::Truncate(i) if !b.is_empty() => b.truncate(i.index(b.len())),
            Edit::Append(more) => b.extend_from_slice(more),
            Edit::Splice(i, with) if !b.is_empty() => {
                let i = i.index(b.len());
                let end = (i + with.len()).min(b.len());
                b.splice(i..end, with.iter().copied());
            }
            _ => {}
        }
    }
    b
}

/// Any CBOR value, nested a little.
fn cbor() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![any::<i64>().prop_map(i128::from), -8i128..8, Just(-(1i128 << 64)), Just((1i128 << 64) - 1)]
            .prop_map(Value::Integer),
        proptest::collection::vec(any::<u8>(), 0..70).prop_map(Value::Bytes),
        "[a-zA-Z0-9-]{0,12}".prop_map(Value::Text),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(inner.clone(), inner, 0..6).prop_map(Value::Map),
        ]
    })
}

/// A COSE key with the labels a verifier reads (kty, alg, crv, x, y), each with any value.
fn cose_key() -> impl Strategy<Value = Value> {
    let small = prop_oneof![(-300i128..300).prop_map(Value::Integer), cbor()];
    proptest::collection::btree_map(prop::sample::select(vec![1i128, 3, -1, -2, -3, 2, 4]), small, 0..6)
        .prop_map(|m| Value::Map(m.into_iter().map(|(k, v)| (Value::Integer(k), v)).collect()))
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// How a registration's attestation object is tampered with.
#[derive(Clone, Debug)]
enum AttestationEdit {
    /// The encoded object's bytes.
    Bytes(Vec<Edit>),
    /// The authenticator data's bytes (flags, counter, AAGUID, credential id length, key).
    AuthData(Vec<Edit>),
    /// The credential public key replaced (after the credential id).
    Key(Value),
    /// Another statement format, with any statement.
    Statement(String, Value),
    /// Something else entirely.
    Replace(Value),
}

fn attestation_edit() -> impl Strategy<Value = AttestationEdit> {
    let fmt = prop_oneof![
        prop::sample::select(vec!["none", "packed", "tpm", "android-key", "android-safetynet", "fido-u2f", "apple"])
            .prop_map(str::to_string),
        "[a-z-]{0,40}",
    ];
    prop_oneof![
        proptest::collection::vec(edit(), 1..4).prop_map(AttestationEdit::Bytes),
        proptest::collection::vec(edit(), 1..4).prop_map(AttestationEdit::AuthData),
        cose_key().prop_map(AttestationEdit::Key),
        (fmt, cbor()).prop_map(|(f, s)| AttestationEdit::Statement(f, s)),
        cbor().prop_map(AttestationEdit::Replace),
    ]
}

fn edit_attestation(object: &[u8], e: &AttestationEdit) -> Vec<u8> {
    let Ok(Value::Map(mut map)) = serde_cbor_2::from_slice::<Value>(object) else { return object.to_vec() };
    let auth_data = match map.get(&text("authData")) {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Vec::new(),
    };
    match e {
        AttestationEdit::Bytes(edits) => return apply(object, edits),
        AttestationEdit::AuthData(edits) => {
            map.insert(text("authData"), Value::Bytes(apply(&auth_data, edits)));
        }
        AttestationEdit::Key(key) => {
            let id_len = auth_data.get(53..55).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))).unwrap_or(0);
            let mut a = auth_data.get(..55 + id_len).unwrap_or(&auth_data).to_vec();
            a.extend(serde_cbor_2::to_vec(key).unwrap_or_default());
            map.insert(text("authData"), Value::Bytes(a));
        }
        AttestationEdit::Statement(fmt, stmt) => {
            map.insert(text("fmt"), text(fmt));
            map.insert(text("attStmt"), stmt.clone());
        }
        AttestationEdit::Replace(v) => return serde_cbor_2::to_vec(v).unwrap_or_default(),
    }
    serde_cbor_2::to_vec(&Value::Map(map)).unwrap_or_default()
}

/// Client data an attacker would send: the real one edited, or JSON with any frame fields.
fn client_data(real: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let json_value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        Just(serde_json::json!(ORIGIN)),
        Just(serde_json::json!("https://evil.example")),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!([1, {}])),
    ];
    prop_oneof![
        // Mostly the real client data, so the authenticator data's parsers are reached.
        4 => Just(real.to_vec()),
        1 => proptest::collection::vec(edit(), 1..3).prop_map(move |e| apply(real, &e)),
        1 => (json_value.clone(), json_value).prop_map(move |(cross, top)| {
            let mut v: serde_json::Value = serde_json::from_slice(real).unwrap_or_default();
            v["crossOrigin"] = cross;
            v["topOrigin"] = top;
            serde_json::to_vec(&v).unwrap()
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..100),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Client data of any bytes, or JSON whose `crossOrigin` and `topOrigin` have any type and
    /// value: accepted or refused as malformed or mismatched.
    #[test]
    fn arbitrary_client_data_never_panics_the_frame_check(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        cross in proptest::option::of(prop_oneof![
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::json!("yes")),
        ]),
        top in proptest::option::of(prop_oneof![
            "(?s).{0,40}".prop_map(serde_json::Value::from),
            Just(serde_json::json!(ORIGIN)),
            Just(serde_json::json!(7)),
        ]),
        allow in any::<bool>(),
    ) {
        let rp = rp().with_cross_origin(allow);
        let r = rp.check_frame(&bytes);
        prop_assert!(matches!(r, Ok(()) | Err(IdentityError::Malformed(_) | IdentityError::Mismatch(_))), "{r:?}");
        let mut v = serde_json::json!({"type": "webauthn.get", "challenge": "AA", "origin": ORIGIN});
        if let Some(c) = cross {
            v["crossOrigin"] = c;
        }
        if let Some(t) = top {
            v["topOrigin"] = t;
        }
        let r = rp.check_frame(&serde_json::to_vec(&v).unwrap());
        prop_assert!(matches!(r, Ok(()) | Err(IdentityError::Malformed(_) | IdentityError::Mismatch(_))), "{r:?}");
        if r.is_ok() {
            prop_assert!(allow || v["crossOrigin"] != serde_json::json!(true));
            prop_assert!(v["topOrigin"].is_null() || v["topOrigin"] == serde_json::json!(ORIGIN));
        }
    }

    /// The AAGUID reader takes any bytes, or any CBOR map with any `authData`, and answers
    /// with an AAGUID only from authenticator data that says it carries one.
    #[test]
    fn arbitrary_attestation_objects_never_panic_the_aaguid_reader(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        auth_data in proptest::collection::vec(any::<u8>(), 0..80),
        other in cbor(),
    ) {
        let _ = aaguid_of(&bytes);
        let object =
            Value::Map(BTreeMap::from([(text("authData"), Value::Bytes(auth_data.clone())), (text("x"), other)]));
        let got = aaguid_of(&serde_cbor_2::to_vec(&object).unwrap());
        let expected =
            (auth_data.len() >= 53 && auth_data[32] & 0x40 != 0).then(|| Uuid::from_slice(&auth_data[37..53]).unwrap());
        prop_assert_eq!(got, expected);
    }

    /// A user handle of any length is one of our user ids only if it is exactly 16 bytes.
    #[test]
    fn arbitrary_user_handles_are_ids_only_when_sixteen_bytes(
        handle in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
    ) {
        let mut pkc = REAL.assertion.clone();
        pkc.response.user_handle = handle.clone();
        prop_assert_eq!(user_handle(&pkc).is_some(), handle.is_some_and(|h| h.len() == 16));
    }

    /// A registration response whose attestation object and client data are a real
    /// authenticator's with hostile changes (or any bytes), with credential ids of any length,
    /// is accepted or refused with a typed error, never a panic; what is accepted has a
    /// credential id within WebAuthn's limit. (Authenticator data is signed only by the
    /// attestation statement, which may be set aside, so some edits are rightly accepted.)
    #[test]
    fn tampered_registrations_are_refused_with_a_typed_error(
        object in attestation_edit(),
        client in client_data(&REAL.response.response.client_data_json),
        raw in proptest::option::weighted(0.2, proptest::collection::vec(any::<u8>(), 0..1100)),
        garbage in proptest::option::weighted(0.1, proptest::collection::vec(any::<u8>(), 0..200)),
    ) {
        let real = &*REAL;
        let mut reg = real.response.clone();
        reg.response.attestation_object = match &garbage {
            Some(g) => g.clone(),
            None => edit_attestation(&real.response.response.attestation_object, &object),
        };
        reg.response.client_data_json = client;
        if let Some(raw) = raw {
            reg.raw_id = raw;
        }
        if let Ok(c) = rp().finish_registration(&reg, &real.registration) {
            prop_assert!(reg.raw_id.len() <= MAX_CREDENTIAL_ID && c.credential.cred_id.len() <= MAX_CREDENTIAL_ID);
            prop_assert_eq!(c.id, b64url(&c.credential.cred_id));
        }
    }

    /// An assertion whose authenticator data, client data, signature or user handle were
    /// changed is refused with a typed error; only the untouched one verifies.
    #[test]
    fn tampered_assertions_are_refused_with_a_typed_error(
        auth in proptest::collection::vec(edit(), 0..3),
        client in client_data(&REAL.assertion.response.client_data_json),
        signature in proptest::collection::vec(edit(), 0..3),
        handle in proptest::option::of(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))),
    ) {
        let real = &*REAL;
        let mut pkc = real.assertion.clone();
        pkc.response.authenticator_data = apply(&real.assertion.response.authenticator_data, &auth);
        pkc.response.client_data_json = client;
        pkc.response.signature = apply(&real.assertion.response.signature, &signature);
        if let Some(h) = handle {
            pkc.response.user_handle = h;
        }
        let original = &real.assertion.response;
        let signed_parts_unchanged = pkc.response.authenticator_data == original.authenticator_data
            && pkc.response.client_data_json == original.client_data_json;
        if rp().finish_authentication(&pkc, &real.authentication, &real.credential).is_ok() {
            prop_assert!(signed_parts_unchanged, "a tampered assertion verified");
        }
    }
}
