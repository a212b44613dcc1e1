//! Who is calling: a bearer access token or the session cookie, checked against the live
//! session, user and credential on every request, so revocation takes effect at once.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::Arc;

use crate::error::ApiError;
use crate::state::{AppState, SESSION_COOKIE};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user.
    pub user: store::User,
    /// The session behind the token or cookie.
    pub session: store::Session,
}

/// Reads a cookie value from the request headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Checks that a session, its user and its credential are all still valid at `now`.
pub async fn live_session(state: &AppState, session_id: &str, now: i64) -> Result<Principal, ApiError> {
    let session = state.store.session(session_id).await?.ok_or(ApiError::Unauthenticated)?;
    if session.revoked_at.is_some() || session.expires_at <= now {
        return Err(ApiError::Unauthenticated);
    }
    let user = state.store.user_by_id(&session.user_id).await?.ok_or(ApiError::Unauthenticated)?;
    if user.disabled || user.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::Unauthenticated);
    }
    let cred = state.store.credential(&session.credential_id).await?.ok_or(ApiError::Unauthenticated)?;
    if cred.revoked_at.is_some() || cred.locked_at.is_some() {
        return Err(ApiError::Unauthenticated);
    }
    Ok(Principal { user, session })
}

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let now = state.clock.now();
        if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
            let h = h.to_str().map_err(|_| ApiError::Unauthenticated)?;
            let token = h.strip_prefix("Bearer ").ok_or(ApiError::Unauthenticated)?;
            let claims = state.signer.verify(token.trim(), now).map_err(|_| ApiError::Unauthenticated)?;
            let p = live_session(state, &claims.sid, now).await?;
            if p.user.id != claims.sub {
                return Err(ApiError::Unauthenticated);
            }
            return Ok(p);
        }
        if let Some(token) = cookie(&parts.headers, SESSION_COOKIE) {
            same_origin(parts, state)?;
            let id = identity::codes::token_hash(token);
            return live_session(state, &id, now).await;
        }
        Err(ApiError::Unauthenticated)
    }
}

/// A cookie-authenticated request that changes something must come from our own pages:
/// `Sec-Fetch-Site`, when the browser sends it, must say `same-origin`, and `Origin` must be
/// the public URL's origin; one of the two must be there. (SameSite=Strict alone lets any
/// page on a sibling subdomain — the same *site* — send the cookie.) Safe methods pass.
fn same_origin(parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    use axum::http::Method;
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let refuse = |why: &str| {
        ApiError::refused(
            "auth.cross_site",
            axum::http::StatusCode::FORBIDDEN,
            format!("refused a cookie-authenticated request from another site ({why})"),
        )
    };
    let fetch_site = parts.headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = fetch_site {
        if site != "same-origin" {
            return Err(refuse(&format!("Sec-Fetch-Site: {site}")));
        }
    }
    match parts.headers.get(axum::http::header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) if origin.trim_end_matches('/') == state.rp.origin().as_str().trim_end_matches('/') => Ok(()),
        Some(origin) => Err(refuse(&format!("Origin: {origin}"))),
        None if fetch_site.is_some() => Ok(()),
        None => Err(refuse("no Origin or Sec-Fetch-Site header")),
    }
}
