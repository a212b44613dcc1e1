//! Strongroom's passkey identity provider as a library: WebAuthn ceremonies with the policy a
//! real deployment needs, authentication strength (`amr`/`acr`), and EdDSA access tokens.
//!
//! No storage, no HTTP and no clock reads: callers persist ceremony state and credentials,
//! route requests, and pass `now`.

pub mod codes;
pub mod error;
pub mod passkey;
pub mod strength;
pub mod token;

pub use error::IdentityError;
pub use passkey::{RegisteredCredential, RelyingParty, VerifiedAssertion};
pub use strength::Strength;
pub use token::{AccessClaims, TokenSigner};

/// Re-exported WebAuthn types that cross our API.
pub mod proto {
    pub use webauthn_rs_core::proto::{
        AttestationCaList, AttestationCaListBuilder, AuthenticationState, CreationChallengeResponse, Credential,
        PublicKeyCredential, RegisterPublicKeyCredential, RegistrationState, RequestChallengeResponse,
    };
}
