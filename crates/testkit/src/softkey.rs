//! A software passkey for automation and tests: `webauthn-authenticator-rs`'s SoftToken with a
//! thin wrapper that remembers user handles (the soft token cannot store discoverable
//! credentials), lets tests tamper with responses, and persists to a 0600 file.
//!
//! Its credentials are software keys: they never satisfy a hardware-only policy unless a test
//! deliberately trusts the token's own attestation CA.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use webauthn_authenticator_rs::prelude::{RegisterPublicKeyCredential, Url, WebauthnAuthenticator, WebauthnCError};
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::AuthenticatorBackendHashedClientData;
use webauthn_rs_proto::{
    AllowCredentials, CreationChallengeResponse, PublicKeyCredential, PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions, RequestChallengeResponse,
};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A software authenticator that can be saved and reloaded.
pub struct SoftKey {
    inner: SoftToken,
    /// Credential id (base64url) → user handle.
    handles: BTreeMap<String, Vec<u8>>,
}

/// The file form: the token as CBOR (its own format; it has non-string map keys), base64url.
#[derive(Serialize, Deserialize)]
struct SoftKeyFile {
    token_cbor: String,
    handles: BTreeMap<String, String>,
}

impl SoftKey {
    fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let cbor = self.inner.to_cbor().map_err(|e| anyhow::anyhow!("soft token: {e:?}"))?;
        let file = SoftKeyFile {
            token_cbor: b64(&cbor),
            handles: self.handles.iter().map(|(k, v)| (k.clone(), b64(v))).collect(),
        };
        Ok(serde_json::to_vec(&file)?)
    }

    fn from_bytes(bytes: &[u8]) -> anyhow::Result<SoftKey> {
        let file: SoftKeyFile = serde_json::from_slice(bytes)?;
        let dec = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s);
        let inner = SoftToken::from_cbor(&dec(&file.token_cbor)?).map_err(|e| anyhow::anyhow!("soft token: {e:?}"))?;
        let handles = file.handles.iter().map(|(k, v)| Ok((k.clone(), dec(v)?))).collect::<anyhow::Result<_>>()?;
        Ok(SoftKey { inner, handles })
    }

    /// A new token that performs user verification.
    pub fn new() -> anyhow::Result<SoftKey> {
        let (inner, _ca) = SoftToken::new(true).map_err(|e| anyhow::anyhow!("soft token: {e:?}"))?;
        Ok(SoftKey { inner, handles: BTreeMap::new() })
    }

    /// A new token and its attestation CA certificate as PEM (for tests that trust it).
    pub fn new_with_ca_pem() -> anyhow::Result<(SoftKey, String)> {
        use crypto_glue::traits::{EncodePem, LineEndingPem};
        let (inner, ca) = SoftToken::new(true).map_err(|e| anyhow::anyhow!("soft token: {e:?}"))?;
        let pem = ca.to_pem(LineEndingPem::LF).map_err(|e| anyhow::anyhow!("encoding the CA: {e}"))?;
        Ok((SoftKey { inner, handles: BTreeMap::new() }, pem))
    }

    /// Loads a key file, or creates a new token if it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<SoftKey> {
        match std::fs::read(path) {
            Ok(b) => SoftKey::from_bytes(&b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SoftKey::new(),
            Err(e) => Err(e.into()),
        }
    }

    /// Saves to `path` with mode 0600 (atomically).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&self.to_bytes()?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// A snapshot of the whole token, counter included (to simulate a cloned authenticator).
    pub fn snapshot(&self) -> anyhow::Result<Vec<u8>> {
        self.to_bytes()
    }

    /// Restores a snapshot.
    pub fn restore(bytes: &[u8]) -> anyhow::Result<SoftKey> {
        SoftKey::from_bytes(bytes)
    }

    /// Creates a credential for `options` as seen from `origin`.
    pub fn register(
        &mut self,
        origin: &str,
        options: CreationChallengeResponse,
    ) -> anyhow::Result<RegisterPublicKeyCredential> {
        let origin = Url::parse(origin)?;
        self.do_registration(origin, options).map_err(|e| anyhow::anyhow!("authenticator refused: {e:?}"))
    }

    /// Makes an assertion for `options` as seen from `origin`.
    pub fn assert(&mut self, origin: &str, options: RequestChallengeResponse) -> anyhow::Result<PublicKeyCredential> {
        let origin = Url::parse(origin)?;
        self.do_authentication(origin, options).map_err(|e| anyhow::anyhow!("authenticator refused: {e:?}"))
    }
}

impl AuthenticatorBackendHashedClientData for SoftKey {
    fn perform_register(
        &mut self,
        client_data_hash: Vec<u8>,
        mut options: PublicKeyCredentialCreationOptions,
        timeout_ms: u32,
    ) -> Result<RegisterPublicKeyCredential, WebauthnCError> {
        // The soft token refuses to store discoverable credentials; we keep the user handle
        // ourselves instead, which is what a resident key gives the server back.
        if let Some(sel) = options.authenticator_selection.as_mut() {
            sel.require_resident_key = false;
            sel.resident_key = None;
            sel.authenticator_attachment = None;
        }
        let user = options.user.id.clone();
        let r = AuthenticatorBackendHashedClientData::perform_register(
            &mut self.inner,
            client_data_hash,
            options,
            timeout_ms,
        )?;
        self.handles.insert(b64(&r.raw_id), user);
        Ok(r)
    }

    fn perform_auth(
        &mut self,
        client_data_hash: Vec<u8>,
        mut options: PublicKeyCredentialRequestOptions,
        timeout_ms: u32,
    ) -> Result<PublicKeyCredential, WebauthnCError> {
        if options.allow_credentials.is_empty() {
            options.allow_credentials = self
                .handles
                .keys()
                .filter_map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k).ok())
                .map(|id| AllowCredentials { type_: "public-key".into(), id, transports: None })
                .collect();
        }
        let mut r =
            AuthenticatorBackendHashedClientData::perform_auth(&mut self.inner, client_data_hash, options, timeout_ms)?;
        r.response.user_handle = self.handles.get(&b64(&r.raw_id)).cloned();
        Ok(r)
    }
}
