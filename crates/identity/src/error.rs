//! Typed failures of identity operations, each mapping to one stable API code.

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The authenticator did not verify the user (no PIN or biometric), though policy requires it.
    #[error("the authenticator did not verify the user (user verification is required)")]
    UserNotVerified,
    /// The signature counter did not increase: the credential may be cloned.
    #[error("the authenticator's signature counter went backwards: possible cloned authenticator")]
    CounterRegression,
    /// The response belongs to another ceremony, origin or relying party.
    #[error("the response does not match this ceremony: {0}")]
    Mismatch(String),
    /// The signature or attestation did not verify.
    #[error("the passkey response did not verify: {0}")]
    BadSignature(String),
    /// The credential is not known (or not this user's).
    #[error("unknown credential")]
    UnknownCredential,
    /// A credential id longer than WebAuthn's 1023-byte limit.
    #[error("credential id is longer than 1023 bytes")]
    CredentialIdTooLong,
    /// The request is malformed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A token is missing, expired, forged or otherwise unacceptable.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The authenticator's credential key uses an algorithm this server cannot verify
    /// signatures of, so it could never sign in: refused at enrollment, saying which.
    #[error("this authenticator's key ({0}) is not supported: it could never sign in here; use another passkey or authenticator")]
    UnsupportedKey(String),
    /// Configuration is unusable (bad public URL, bad keys).
    #[error("configuration error: {0}")]
    Config(String),
}
