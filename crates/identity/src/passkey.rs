//! WebAuthn ceremonies with Strongroom's policy: user verification always required,
//! attestation always requested and its trust recorded (not used to reject, so a policy can
//! later tell hardware from software keys), credential ids bounded, counters enforced.
//!
//! Built on `webauthn-rs-core`'s challenge builders (the plain passkey flow of `webauthn-rs`
//! asks for no attestation). The library does not stop a replayed finish: callers store the
//! ceremony state server-side and consume it exactly once.

use serde::{Deserialize, Serialize};
use url::Url;
use uuid::Uuid;
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{
    AttestationCaList, AttestationConveyancePreference, AuthenticationState, CreationChallengeResponse, Credential,
    PublicKeyCredential, RegisterPublicKeyCredential, RegistrationState, RequestChallengeResponse,
    UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

use crate::error::IdentityError;

/// WebAuthn's limit on credential id length (Level 3, §5.1).
pub const MAX_CREDENTIAL_ID: usize = 1023;

/// The relying party: our origin and the attestation roots we trust.
pub struct RelyingParty {
    core: WebauthnCore,
    trusted: AttestationCaList,
    rp_id: String,
    origin: Url,
    allow_cross_origin: bool,
}

/// A newly registered credential with everything the device attestation log records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisteredCredential {
    /// The credential as `webauthn-rs-core` needs it for later assertions.
    pub credential: Credential,
    /// Credential id, base64url without padding.
    pub id: String,
    /// The authenticator model's AAGUID (all zeros when the authenticator does not say).
    pub aaguid: Uuid,
    /// Attestation statement format (`packed`, `tpm`, `none`, …).
    pub attestation_format: String,
    /// True if and only if the attestation chain verified against a configured trusted root.
    pub attestation_trusted: bool,
    /// Backup-eligible flag (a syncable passkey).
    pub backup_eligible: bool,
    /// Backup-state flag (currently synced).
    pub backup_state: bool,
    /// Transports the authenticator reported.
    pub transports: Vec<String>,
}

impl RegisteredCredential {
    /// The credential's public key as the audit log records it: `("ES256", SEC1 uncompressed
    /// P-256 point)` or `("EdDSA", 32-byte Ed25519 key)`; `None` for other algorithms.
    pub fn public_key(&self) -> Option<(&'static str, Vec<u8>)> {
        use webauthn_rs_core::proto::{COSEKeyType, ECDSACurve, EDDSACurve};
        match &self.credential.cred.key {
            COSEKeyType::EC_EC2(k) if matches!(k.curve, ECDSACurve::SECP256R1) => {
                let mut point = vec![0x04];
                point.extend_from_slice(&k.x);
                point.extend_from_slice(&k.y);
                Some(("ES256", point))
            }
            COSEKeyType::EC_OKP(k) if matches!(k.curve, EDDSACurve::ED25519) => Some(("EdDSA", k.x.clone())),
            _ => None,
        }
    }
}

/// A verified assertion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// Credential id, base64url.
    pub credential_id: String,
    /// The new signature counter (persist it).
    pub counter: u32,
    /// User verification happened.
    pub user_verified: bool,
    /// Backup-eligible flag in this assertion.
    pub backup_eligible: bool,
    /// Backup-state flag in this assertion.
    pub backup_state: bool,
}

/// base64url without padding, the form credential ids take in JSON and in our database.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Makes the sign-in options for a named user look the same whether or not the user exists
/// (WebAuthn Level 3, §14.6.2 "Username Enumeration"): an unknown name, or a user without an
/// active passkey, gets one or two plausible credential ids derived from a keyed hash of the
/// name (stable across requests, so repeating the query reveals nothing either), and transport
/// hints are dropped from every list so real and decoy entries have the same shape. `key` is a
/// server secret.
pub fn disguise_allow_list(rcr: &mut RequestChallengeResponse, key: &[u8; 32], username: &str) {
    let list = &mut rcr.public_key.allow_credentials;
    for c in list.iter_mut() {
        c.transports = None;
    }
    if !list.is_empty() {
        return;
    }
    let mut xof = blake3::Hasher::new_keyed(key).update(username.as_bytes()).finalize_xof();
    let mut head = [0u8; 2];
    xof.fill(&mut head);
    for _ in 0..1 + usize::from(head[0] % 2) {
        // Lengths that authenticators use: 16 (platform passkeys) to 64 bytes (security keys).
        let mut id = vec![0u8; [16, 32, 48, 64][usize::from(head[1] % 4)]];
        xof.fill(&mut id);
        list.push(webauthn_rs_core::proto::AllowCredentials { type_: "public-key".into(), id, transports: None });
    }
}

fn map_err(e: WebauthnError) -> IdentityError {
    use WebauthnError as W;
    match e {
        W::UserNotVerified => IdentityError::UserNotVerified,
        W::CredentialPossibleCompromise => IdentityError::CounterRegression,
        W::CredentialNotFound => IdentityError::UnknownCredential,
        W::MismatchedChallenge
        | W::InvalidRPOrigin
        | W::InvalidRPIDHash
        | W::InvalidClientDataType
        | W::CredentialCrossOrigin => IdentityError::Mismatch(e.to_string()),
        W::AuthenticationFailure | W::SignatureInvalid | W::AttestationStatementSigInvalid => {
            IdentityError::BadSignature(e.to_string())
        }
        other => IdentityError::Malformed(other.to_string()),
    }
}

impl RelyingParty {
    /// A relying party whose id is the host of `public_url` and whose only origin is it.
    pub fn new(rp_name: &str, public_url: &Url, trusted: AttestationCaList) -> Result<RelyingParty, IdentityError> {
        let rp_id = public_url
            .host_str()
            .ok_or_else(|| IdentityError::Config(format!("public URL {public_url} has no host")))?
            .to_string();
        if rp_id.parse::<std::net::IpAddr>().is_ok() {
            return Err(IdentityError::Config(format!(
                "public URL {public_url}: passkeys need a domain name (use http://localhost:PORT locally), not an IP address"
            )));
        }
        let origin =
            Url::parse(&public_url.origin().ascii_serialization()).map_err(|e| IdentityError::Config(e.to_string()))?;
        let core = WebauthnCore::new_unsafe_experts_only(
            rp_name,
            &rp_id,
            vec![origin.clone()],
            std::time::Duration::from_secs(300),
            Some(false),
            Some(false),
        );
        Ok(RelyingParty { core, trusted, rp_id, origin, allow_cross_origin: false })
    }

    /// Accept assertions made in a cross-origin iframe (`crossOrigin: true` in the client
    /// data), as long as a `topOrigin`, when given, is this relying party's origin. Off by
    /// default: the library checks this at registration only, so [`Self::finish_authentication`]
    /// checks it itself.
    pub fn with_cross_origin(mut self, allow: bool) -> RelyingParty {
        self.allow_cross_origin = allow;
        self
    }

    /// Refuses client data that says the ceremony ran in a cross-origin frame (unless allowed),
    /// or names a top-level origin other than ours.
    fn check_frame(&self, client_data_json: &[u8]) -> Result<(), IdentityError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Frame {
            #[serde(default)]
            cross_origin: Option<bool>,
            #[serde(default)]
            top_origin: Option<String>,
        }
        let f: Frame = serde_json::from_slice(client_data_json)
            .map_err(|e| IdentityError::Malformed(format!("client data: {e}")))?;
        if f.cross_origin == Some(true) && !self.allow_cross_origin {
            return Err(IdentityError::Mismatch("the passkey was used in a cross-origin frame".into()));
        }
        if let Some(top) = f.top_origin {
            if top.trim_end_matches('/') != self.origin.as_str().trim_end_matches('/') {
                return Err(IdentityError::Mismatch(format!("the page around the passkey prompt was {top}")));
            }
        }
        Ok(())
    }

    /// The relying-party id (the host name).
    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }

    /// The origin browsers must report.
    pub fn origin(&self) -> &Url {
        &self.origin
    }

    /// Options for creating a passkey: user verification required, attestation requested,
    /// resident keys preferred, the user's existing credentials excluded.
    pub fn start_registration(
        &self,
        user_id: &Uuid,
        username: &str,
        display_name: &str,
        exclude: Vec<Vec<u8>>,
    ) -> Result<(CreationChallengeResponse, RegistrationState), IdentityError> {
        let builder = self
            .core
            .new_challenge_register_builder(user_id.as_bytes(), username, display_name)
            .map_err(map_err)?
            .attestation(AttestationConveyancePreference::Direct)
            .user_verification_policy(UserVerificationPolicy::Required)
            .require_resident_key(false)
            .reject_synchronised_authenticators(false)
            .exclude_credentials(Some(exclude));
        let (mut ccr, state) = self.core.generate_challenge_register(builder).map_err(map_err)?;
        // Ask for a discoverable credential without demanding one (authenticators that cannot
        // store one still enroll).
        if let Some(sel) = ccr.public_key.authenticator_selection.as_mut() {
            sel.resident_key = Some(webauthn_rs_proto::ResidentKeyRequirement::Preferred);
        }
        Ok((ccr, state))
    }

    /// Verifies a registration response and extracts what the attestation log records.
    pub fn finish_registration(
        &self,
        reg: &RegisterPublicKeyCredential,
        state: &RegistrationState,
    ) -> Result<RegisteredCredential, IdentityError> {
        if reg.raw_id.len() > MAX_CREDENTIAL_ID {
            return Err(IdentityError::CredentialIdTooLong);
        }
        self.check_frame(&reg.response.client_data_json)?;
        let (credential, unverified) = match self.core.register_credential(reg, state, None) {
            Ok(c) => (c, None),
            Err(first) => {
                // The library cannot verify every attestation statement people's authenticators
                // make (TPM, android-key, some algorithms). Provenance is not what lets a passkey
                // sign in: verify everything else with the statement set aside, and record the
                // credential as unverified attestation (software strength) rather than turn the
                // user away. Whatever failed for another reason fails again here.
                let fmt = attestation_fmt(&reg.response.attestation_object).unwrap_or_else(|| "unknown".into());
                let stripped = without_attestation(reg).ok_or_else(|| map_err(first))?;
                match self.core.register_credential(&stripped, state, None) {
                    Ok(c) => (c, Some(fmt)),
                    Err(e) => return Err(key_error(e, &reg.response.attestation_object)),
                }
            }
        };
        if credential.cred_id.len() > MAX_CREDENTIAL_ID {
            return Err(IdentityError::CredentialIdTooLong);
        }
        check_usable(&credential)?;
        let aaguid = aaguid_of(&reg.response.attestation_object).unwrap_or(Uuid::nil());
        let attestation_trusted = unverified.is_none()
            && !self.trusted.is_empty()
            && matches!(credential.verify_attestation(&self.trusted), Ok(Some(_)));
        let attestation_format = match unverified {
            Some(fmt) => format!("{fmt} (unverified)"),
            None => serde_json::to_value(&credential.attestation_format)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
        };
        let transports = credential
            .transports
            .iter()
            .flatten()
            .filter_map(|t| serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_string)))
            .collect();
        Ok(RegisteredCredential {
            id: b64url(&credential.cred_id),
            aaguid,
            attestation_format,
            attestation_trusted,
            backup_eligible: credential.backup_eligible,
            backup_state: credential.backup_state,
            transports,
            credential,
        })
    }

    /// Options for an assertion by one of `credentials` (empty: any discoverable credential
    /// of this relying party), user verification required.
    pub fn start_authentication(
        &self,
        credentials: Vec<Credential>,
    ) -> Result<(RequestChallengeResponse, AuthenticationState), IdentityError> {
        let builder = self
            .core
            .new_challenge_authenticate_builder(credentials, Some(UserVerificationPolicy::Required))
            .map_err(map_err)?
            .allow_backup_eligible_upgrade(false);
        self.core.generate_challenge_authenticate(builder).map_err(map_err)
    }

    /// Like [`RelyingParty::start_authentication`], but the challenge is `challenge` (derived by
    /// the caller from an operation digest and a server nonce) instead of a random one, so the
    /// authenticator's signature covers that exact operation and can be re-checked offline.
    pub fn start_bound_authentication(
        &self,
        credentials: Vec<Credential>,
        challenge: [u8; 32],
    ) -> Result<(RequestChallengeResponse, AuthenticationState), IdentityError> {
        let (mut rcr, state) = self.start_authentication(credentials)?;
        rcr.public_key.challenge = challenge.to_vec();
        // The library keeps the challenge in its (serialisable) state; replace it there too.
        let mut v = serde_json::to_value(&state).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        v["challenge"] = serde_json::Value::String(b64url(&challenge));
        let state = serde_json::from_value(v).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        Ok((rcr, state))
    }

    /// Verifies an assertion made with `credential` against the ceremony `state`; the
    /// counter must increase (a regression means a cloned authenticator).
    pub fn finish_authentication(
        &self,
        pkc: &PublicKeyCredential,
        state: &AuthenticationState,
        credential: &Credential,
    ) -> Result<VerifiedAssertion, IdentityError> {
        if pkc.raw_id.len() > MAX_CREDENTIAL_ID {
            return Err(IdentityError::CredentialIdTooLong);
        }
        if pkc.raw_id != credential.cred_id {
            return Err(IdentityError::UnknownCredential);
        }
        self.check_frame(&pkc.response.client_data_json)?;
        let r = self.core.authenticate_single_credential(pkc, state, credential).map_err(map_err)?;
        // The library compares with the counter captured when the ceremony started; compare
        // with the stored one too, in case another sign-in raced this one.
        if (r.counter() > 0 || credential.counter > 0) && r.counter() <= credential.counter {
            return Err(IdentityError::CounterRegression);
        }
        if !r.user_verified() {
            return Err(IdentityError::UserNotVerified);
        }
        Ok(VerifiedAssertion {
            credential_id: b64url(r.cred_id()),
            counter: r.counter(),
            user_verified: r.user_verified(),
            backup_eligible: r.backup_eligible(),
            backup_state: r.backup_state(),
        })
    }
}

/// The user handle of a discoverable assertion, as our 16-byte user ids.
pub fn user_handle(pkc: &PublicKeyCredential) -> Option<Uuid> {
    pkc.get_user_unique_id().and_then(|h| Uuid::from_slice(h).ok())
}

/// The attestation object's top-level CBOR map, if it is one.
fn attestation_map(
    attestation_object: &[u8],
) -> Option<std::collections::BTreeMap<serde_cbor_2::Value, serde_cbor_2::Value>> {
    match serde_cbor_2::from_slice(attestation_object).ok()? {
        serde_cbor_2::Value::Map(map) => Some(map),
        _ => None,
    }
}

/// The attestation statement format (`fmt`) of an attestation object.
fn attestation_fmt(attestation_object: &[u8]) -> Option<String> {
    attestation_map(attestation_object)?.into_iter().find_map(|(k, v)| match (k, v) {
        (serde_cbor_2::Value::Text(k), serde_cbor_2::Value::Text(v)) if k == "fmt" => {
            Some(v.chars().take(32).collect())
        }
        _ => None,
    })
}

/// The same registration with its attestation statement replaced by `none` (authenticator
/// data, client data and everything they are checked against unchanged).
fn without_attestation(reg: &RegisterPublicKeyCredential) -> Option<RegisterPublicKeyCredential> {
    use serde_cbor_2::Value;
    let map = attestation_map(&reg.response.attestation_object)?;
    let auth_data = map.get(&Value::Text("authData".into()))?.clone();
    let stripped = std::collections::BTreeMap::from([
        (Value::Text("fmt".into()), Value::Text("none".into())),
        (Value::Text("attStmt".into()), Value::Map(Default::default())),
        (Value::Text("authData".into()), auth_data),
    ]);
    let mut out = reg.clone();
    out.response.attestation_object = serde_cbor_2::to_vec(&Value::Map(stripped)).ok()?;
    Some(out)
}

/// COSE algorithms whose assertion signatures `webauthn-rs-core` 0.6.2 verifies. It parses
/// EdDSA and ES512 keys too but cannot verify their signatures, so such a credential could
/// never sign in: it is refused at enrollment with [`IdentityError::UnsupportedKey`].
pub const VERIFIABLE_ALGORITHMS: [webauthn_rs_core::proto::COSEAlgorithm; 3] = [
    webauthn_rs_core::proto::COSEAlgorithm::ES256,
    webauthn_rs_core::proto::COSEAlgorithm::ES384,
    webauthn_rs_core::proto::COSEAlgorithm::RS256,
];

/// Refuses a credential whose key the library could not verify assertions with.
fn check_usable(c: &Credential) -> Result<(), IdentityError> {
    let alg = c.cred.type_;
    if !VERIFIABLE_ALGORITHMS.contains(&alg) {
        return Err(IdentityError::UnsupportedKey(format!("{alg:?}")));
    }
    // An RSA key the library cannot load (an unusual size) fails when it is loaded, which
    // `verify_signature` does first; an empty signature then fails as a signature, which
    // means the key itself is usable.
    match c.cred.verify_signature(&[], b"") {
        Ok(_) | Err(WebauthnError::SignatureInvalid) => Ok(()),
        Err(e) => Err(IdentityError::UnsupportedKey(format!("{alg:?}: {e}"))),
    }
}

/// A registration that failed even without its attestation statement: a key algorithm the
/// library cannot use is said plainly (with the COSE algorithm the authenticator named);
/// anything else keeps its usual mapping.
fn key_error(e: WebauthnError, attestation_object: &[u8]) -> IdentityError {
    use WebauthnError as W;
    match e {
        W::COSEKeyInvalidType
        | W::COSEKeyEDUnsupported
        | W::SshPublicKeyEDUnsupported
        | W::RsaParametersInvalid
        | W::COSEKeyECDSAInvalidCurve
        | W::COSEKeyEDDSAInvalidCurve
        | W::COSEKeyInvalidAlgorithm
        | W::COSEKeyInvalidCBORValue
        | W::COSEKeyRSANEInvalid => {
            let alg = credential_alg(attestation_object)
                .map(|a| format!("COSE algorithm {a}"))
                .unwrap_or_else(|| "unknown algorithm".into());
            IdentityError::UnsupportedKey(format!("{alg}: {e}"))
        }
        // Also what the library answers for an excluded credential: only a key algorithm we
        // did not ask for is an unsupported key.
        W::CredentialAlteredAlgFromRequest
            if credential_alg(attestation_object)
                .is_some_and(|a| !VERIFIABLE_ALGORITHMS.iter().any(|v| *v as i128 == a)) =>
        {
            IdentityError::UnsupportedKey(format!("COSE algorithm {}", credential_alg(attestation_object).unwrap_or(0)))
        }
        other => map_err(other),
    }
}

/// The COSE `alg` (label 3) of the credential public key in an attestation object's
/// authenticator data, if it parses.
fn credential_alg(attestation_object: &[u8]) -> Option<i128> {
    use serde_cbor_2::Value;
    let map = attestation_map(attestation_object)?;
    let Value::Bytes(auth_data) = map.get(&Value::Text("authData".into()))? else { return None };
    // rpIdHash 32, flags 1, counter 4, AAGUID 16, credential id length 2, id, then the key.
    let id_len = usize::from(u16::from_be_bytes([*auth_data.get(53)?, *auth_data.get(54)?]));
    let key_bytes = auth_data.get(55 + id_len..)?;
    let mut de = serde_cbor_2::Deserializer::from_slice(key_bytes);
    let key: Value = serde::Deserialize::deserialize(&mut de).ok()?;
    let Value::Map(key) = key else { return None };
    match key.get(&Value::Integer(3))? {
        Value::Integer(alg) => Some(*alg),
        _ => None,
    }
}

/// Reads the AAGUID from an attestation object (CBOR map; `authData` bytes 37..53).
fn aaguid_of(attestation_object: &[u8]) -> Option<Uuid> {
    let value: serde_cbor_2::Value = serde_cbor_2::from_slice(attestation_object).ok()?;
    let serde_cbor_2::Value::Map(map) = value else { return None };
    let auth_data = map.iter().find_map(|(k, v)| match (k, v) {
        (serde_cbor_2::Value::Text(t), serde_cbor_2::Value::Bytes(b)) if t == "authData" => Some(b),
        _ => None,
    })?;
    // Attested credential data present (flag AT, bit 6).
    if auth_data.len() < 53 || auth_data[32] & 0x40 == 0 {
        return None;
    }
    Uuid::from_slice(&auth_data[37..53]).ok()
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn rp() -> RelyingParty {
        let url = Url::parse("https://vault.example.com").unwrap();
        RelyingParty::new("t", &url, AttestationCaList::default()).unwrap()
    }

    #[test]
    fn cross_origin_client_data_is_refused_unless_allowed_and_top_origin_must_be_ours() {
        let plain = br#"{"type":"webauthn.get","challenge":"AA","origin":"https://vault.example.com"}"#;
        let framed =
            br#"{"type":"webauthn.get","challenge":"AA","origin":"https://vault.example.com","crossOrigin":true}"#;
        let top_ours = br#"{"type":"webauthn.get","challenge":"AA","origin":"https://vault.example.com","crossOrigin":true,"topOrigin":"https://vault.example.com"}"#;
        let top_evil = br#"{"type":"webauthn.get","challenge":"AA","origin":"https://vault.example.com","crossOrigin":true,"topOrigin":"https://evil.example"}"#;
        let strict = rp();
        assert!(strict.check_frame(plain).is_ok());
        for bad in [&framed[..], top_ours, top_evil] {
            assert!(matches!(strict.check_frame(bad), Err(IdentityError::Mismatch(_))));
        }
        let allowing = rp().with_cross_origin(true);
        assert!(allowing.check_frame(framed).is_ok() && allowing.check_frame(top_ours).is_ok());
        assert!(matches!(allowing.check_frame(top_evil), Err(IdentityError::Mismatch(_))));
        assert!(matches!(strict.check_frame(b"not json"), Err(IdentityError::Malformed(_))));
    }
}
