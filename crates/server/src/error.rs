//! The one API error type: stable string codes, mapped to HTTP status in one place, with no
//! internals in the body (details go to the server log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use identity::IdentityError;

/// Every error a client can cause or see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request body or parameters are malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No valid credentials: missing, expired, forged or revoked token or session.
    #[error("authentication required")]
    Unauthenticated,
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The enrollment or invite link is unknown, used or expired.
    #[error("this enrollment link is invalid, already used or expired")]
    EnrollLinkInvalid,
    /// The ceremony id is unknown, expired or already used.
    #[error("this sign-in or enrollment attempt is unknown, expired or already used; start again")]
    CeremonyInvalid,
    /// A WebAuthn verification failed.
    #[error("{0}")]
    WebAuthn(#[from] IdentityError),
    /// The credential id is already registered.
    #[error("this passkey is already registered")]
    CredentialExists,
    /// Refused: the user's last credential cannot be revoked.
    #[error("{0}")]
    Conflict(String),
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// The access policy refuses.
    #[error("{0}")]
    Denied(policy::DenyReason),
    /// Authentication is not strong or fresh enough (RFC 9470).
    #[error("sign in again with a passkey (at most {max_age} seconds ago, acr {acr_values})")]
    StepUp {
        /// Acceptable `acr` values.
        acr_values: String,
        /// Maximum age of the authentication in seconds.
        max_age: i64,
    },
    /// A refusal with its own stable code (see docs/api.md): the situations clients need to
    /// tell apart.
    #[error("{message}")]
    Refused {
        /// The stable code, e.g. `snapshot.missing_references`.
        code: &'static str,
        /// HTTP status.
        status: StatusCode,
        /// What happened, for people.
        message: String,
    },
    /// Too many requests from this client or for this account; try again after `retry_after`
    /// seconds.
    #[error("too many requests; try again in {retry_after} s")]
    RateLimited {
        /// Seconds until a request would be accepted.
        retry_after: u64,
    },
    /// The server failed; details are in its log.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "request.malformed",
            ApiError::Unauthenticated => "auth.unauthenticated",
            ApiError::Forbidden(_) => "auth.forbidden",
            ApiError::EnrollLinkInvalid => "enroll.link_invalid",
            ApiError::CeremonyInvalid => "webauthn.ceremony_invalid",
            ApiError::WebAuthn(e) => match e {
                IdentityError::UserNotVerified => "webauthn.user_not_verified",
                IdentityError::CounterRegression => "webauthn.counter_regression",
                IdentityError::Mismatch(_) => "webauthn.mismatch",
                IdentityError::BadSignature(_) => "webauthn.bad_signature",
                IdentityError::UnknownCredential => "webauthn.unknown_credential",
                IdentityError::CredentialIdTooLong => "webauthn.credential_id_too_long",
                IdentityError::Malformed(_) => "webauthn.malformed",
                IdentityError::UnsupportedKey(_) => "webauthn.unsupported_key",
                IdentityError::InvalidToken(_) => "auth.unauthenticated",
                IdentityError::Config(_) => "server.internal",
                _ => "webauthn.failed",
            },
            ApiError::CredentialExists => "credential.already_registered",
            ApiError::Denied(r) => r.code(),
            ApiError::StepUp { .. } => "auth.insufficient_user_authentication",
            ApiError::Conflict(_) => "request.conflict",
            ApiError::NotFound(_) => "request.not_found",
            ApiError::Refused { code, .. } => code,
            ApiError::RateLimited { .. } => "request.rate_limited",
            ApiError::Internal(_) => "server.internal",
        }
    }

    /// A refusal with a specific code.
    pub fn refused(code: &'static str, status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Refused { code, status, message: message.into() }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::EnrollLinkInvalid => StatusCode::GONE,
            ApiError::CeremonyInvalid => StatusCode::BAD_REQUEST,
            ApiError::WebAuthn(e) => match e {
                IdentityError::Malformed(_)
                | IdentityError::CredentialIdTooLong
                | IdentityError::Mismatch(_)
                | IdentityError::UnsupportedKey(_) => StatusCode::BAD_REQUEST,
                IdentityError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNAUTHORIZED,
            },
            ApiError::CredentialExists | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::StepUp { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Refused { status, .. } => *status,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) | ApiError::WebAuthn(IdentityError::Config(_)) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Conflict(m) => ApiError::Conflict(m),
            store::StoreError::NotFound(m) => ApiError::NotFound(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, detail = ?self, "request failed");
        } else {
            tracing::info!(code = self.code(), "request refused");
        }
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.public_message() } });
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::RateLimited { retry_after } = &self {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(*retry_after));
        }
        if let ApiError::StepUp { acr_values, max_age } = &self {
            // RFC 9470 §3: the challenge names what would be enough.
            let challenge = format!(
                "Bearer error=\"insufficient_user_authentication\", error_description=\"A more recent passkey sign-in is required\", acr_values=\"{acr_values}\", max_age={max_age}"
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
