//! HTTP handlers of the identity provider. Thin: extract, call the identity library and the
//! store, convert. Every outcome that matters is appended to the audit table.

use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use identity::codes::{random_token, token_hash};
use identity::proto::{
    AuthenticationState, Credential, PublicKeyCredential, RegisterPublicKeyCredential, RegistrationState,
};
use identity::token::AccessClaims;
use identity::{IdentityError, Strength};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::*;

type St = State<Arc<AppState>>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Records an audit event; a failure to audit fails the request (nothing unaudited happens).
pub async fn audit(
    state: &AppState,
    kind: &str,
    actor: &str,
    outcome: &str,
    details: serde_json::Value,
) -> ApiResult<()> {
    let event = store::AuditEvent {
        time: state.clock.now(),
        kind: kind.to_string(),
        actor: actor.to_string(),
        outcome: outcome.to_string(),
        details_json: details.to_string(),
    };
    state.audit_log.append(&state.store, event, details, state.clock.now()).await?;
    Ok(())
}

// ---------- ceremonies ----------

#[derive(Serialize, Deserialize)]
struct EnrollCeremony {
    state: RegistrationState,
    user_id: String,
    username: String,
    new_user: bool,
    link_hash: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct LoginCeremony {
    pub(crate) state: AuthenticationState,
    pub(crate) user_id: Option<String>,
    /// For device approval: the user code being approved.
    pub(crate) user_code: Option<String>,
    /// For an operation approval: its id and digest.
    #[serde(default)]
    pub(crate) approval: Option<(String, String)>,
    /// For an operation approval: the nonce mixed into the challenge (hex), for the audit log.
    #[serde(default)]
    pub(crate) nonce: Option<String>,
}

pub(crate) async fn put_ceremony<T: Serialize>(
    state: &AppState,
    kind: &str,
    subject: &str,
    value: &T,
) -> ApiResult<String> {
    let id = random_token(&mut rand_core::OsRng);
    let c = store::Ceremony {
        id: id.clone(),
        kind: kind.to_string(),
        state_json: serde_json::to_string(value).map_err(internal)?,
        subject: subject.to_string(),
        expires_at: state.clock.now() + CEREMONY_SECONDS,
    };
    state.store.put_ceremony(&c).await?;
    Ok(id)
}

pub(crate) async fn take_ceremony<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    id: &str,
    kind: &str,
) -> ApiResult<T> {
    if id.len() > 128 {
        return Err(ApiError::CeremonyInvalid);
    }
    let c = state.store.take_ceremony(id, kind, state.clock.now()).await?.ok_or(ApiError::CeremonyInvalid)?;
    serde_json::from_str(&c.state_json).map_err(internal)
}

#[derive(Serialize)]
pub(crate) struct StartResponse {
    ceremony_id: String,
    options: serde_json::Value,
}

// ---------- enrollment ----------

async fn valid_link(state: &AppState, token: &str) -> ApiResult<store::EnrollLink> {
    if token.len() > 128 {
        return Err(ApiError::EnrollLinkInvalid);
    }
    let link = state.store.enroll_link(&token_hash(token)).await?.ok_or(ApiError::EnrollLinkInvalid)?;
    if link.used_at.is_some() || link.expires_at <= state.clock.now() {
        return Err(ApiError::EnrollLinkInvalid);
    }
    Ok(link)
}

/// `POST /api/v1/enroll/{token}/start`
pub(crate) async fn enroll_start(State(state): St, Path(token): Path<String>) -> ApiResult<Json<StartResponse>> {
    state.limits.check_account(&format!("link:{}", token_hash(&token)))?;
    let link = valid_link(&state, &token).await?;
    let (user_id, username, new_user, exclude) = match &link.user_id {
        Some(uid) => {
            let user = state.store.user_by_id(uid).await?.ok_or(ApiError::EnrollLinkInvalid)?;
            let creds = state.store.credentials_of(uid).await?;
            let exclude = creds.iter().filter_map(|c| b64_decode(&c.id)).collect();
            (user.id, user.username, false, exclude)
        }
        None => {
            if state.store.user_by_name(&link.username).await?.is_some() {
                return Err(ApiError::Conflict(format!("user {} already exists", link.username)));
            }
            (Uuid::new_v4().to_string(), link.username.clone(), true, Vec::new())
        }
    };
    let uuid = Uuid::parse_str(&user_id).map_err(internal)?;
    let (ccr, reg_state) = state.rp.start_registration(&uuid, &username, &username, exclude)?;
    let ceremony = EnrollCeremony { state: reg_state, user_id, username, new_user, link_hash: link.token_hash.clone() };
    let id = put_ceremony(&state, "enroll", &link.token_hash, &ceremony).await?;
    Ok(Json(StartResponse { ceremony_id: id, options: serde_json::to_value(ccr).map_err(internal)? }))
}

#[derive(Deserialize)]
pub(crate) struct EnrollFinish {
    ceremony_id: String,
    credential: RegisterPublicKeyCredential,
    #[serde(default)]
    name: Option<String>,
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()
}

fn credential_name(name: Option<String>, now: i64) -> String {
    let n = name.unwrap_or_default();
    let n: String = n.chars().filter(|c| !c.is_control()).take(64).collect();
    if n.trim().is_empty() {
        format!(
            "passkey {}",
            time::OffsetDateTime::from_unix_timestamp(now).map(|t| t.date().to_string()).unwrap_or_default()
        )
    } else {
        n.trim().to_string()
    }
}

/// `POST /api/v1/enroll/{token}/finish`
pub(crate) async fn enroll_finish(
    State(state): St,
    Path(token): Path<String>,
    Json(body): Json<EnrollFinish>,
) -> ApiResult<Json<serde_json::Value>> {
    state.limits.check_account(&format!("link:{}", token_hash(&token)))?;
    let c: EnrollCeremony = take_ceremony(&state, &body.ceremony_id, "enroll").await?;
    if c.link_hash != token_hash(&token) {
        return Err(ApiError::CeremonyInvalid);
    }
    let now = state.clock.now();
    let reg = match state.rp.finish_registration(&body.credential, &c.state) {
        Ok(r) => r,
        Err(e) => {
            audit(&state, "enroll", &c.username, "refused", serde_json::json!({"reason": e.to_string()})).await?;
            return Err(e.into());
        }
    };
    if state.store.credential(&reg.id).await?.is_some() {
        audit(
            &state,
            "enroll",
            &c.username,
            "refused",
            serde_json::json!({"reason": "credential id already registered"}),
        )
        .await?;
        return Err(ApiError::CredentialExists);
    }
    if !state.store.consume_enroll_link(&c.link_hash, now).await? {
        return Err(ApiError::EnrollLinkInvalid);
    }
    let link = state.store.enroll_link(&c.link_hash).await?.ok_or(ApiError::EnrollLinkInvalid)?;
    // A link carrying Owner or Security Admin made while the server was being set up is void
    // once the set-up has ended (the role then needs a Security Admin's approval).
    if matches!(link.role.as_str(), "owner" | "security-admin") {
        if let Some(ended) = state.store.flag(crate::critical::BOOTSTRAP_FLAG).await? {
            // The Security Admin invite that ended the set-up was made in that same second.
            let void = if link.role == "owner" { ended >= link.created_at } else { ended > link.created_at };
            if void {
                audit(
                    &state,
                    "enroll",
                    &c.username,
                    "refused",
                    serde_json::json!({"reason": "the link's role now needs a Security Admin's approval", "role": link.role}),
                )
                .await?;
                return Err(ApiError::EnrollLinkInvalid);
            }
        }
    }
    if c.new_user {
        state
            .store
            .create_user(&store::User {
                id: c.user_id.clone(),
                username: c.username.clone(),
                display_name: c.username.clone(),
                created_at: now,
                expires_at: None,
                disabled: false,
            })
            .await?;
    }
    if !link.role.is_empty() {
        state
            .store
            .add_role(&store::RoleAssignment {
                user_id: c.user_id.clone(),
                role: link.role.clone(),
                vault: link.vault.clone(),
            })
            .await?;
    }
    let record = store::CredentialRecord {
        id: reg.id.clone(),
        user_id: c.user_id.clone(),
        name: credential_name(body.name, now),
        credential_json: serde_json::to_string(&reg.credential).map_err(internal)?,
        counter: i64::from(reg.credential.counter),
        aaguid: reg.aaguid.to_string(),
        attestation_format: reg.attestation_format.clone(),
        attestation_trusted: reg.attestation_trusted,
        backup_eligible: reg.backup_eligible,
        backup_state: reg.backup_state,
        transports: serde_json::to_string(&reg.transports).map_err(internal)?,
        created_at: now,
        last_used_at: None,
        revoked_at: None,
        locked_at: None,
        lock_reason: None,
    };
    state.store.insert_credential(&record).await.map_err(|e| match e {
        store::StoreError::Conflict(_) => ApiError::CredentialExists,
        other => other.into(),
    })?;
    // Who created the link this account and this passkey came from: an approver someone
    // enrolled is not another person for that someone's operations.
    if c.new_user {
        state.store.record_introduction("user", &c.user_id, &link.created_by, now).await?;
    }
    state.store.record_introduction("credential", &reg.id, &link.created_by, now).await?;
    audit(
        &state,
        "enroll",
        &c.username,
        "success",
        serde_json::json!({
            "user_id": c.user_id, "role": link.role, "credential_id": reg.id, "aaguid": reg.aaguid.to_string(),
            "invited_by": link.created_by,
            "attestation_format": reg.attestation_format, "attestation_trusted": reg.attestation_trusted,
            "backup_eligible": reg.backup_eligible, "backup_state": reg.backup_state, "transports": reg.transports,
            // The key approvals are later re-verified against, offline (auditlog::export).
            "credential": reg.public_key().map(|(alg, key)| serde_json::json!({
                "id": reg.id, "alg": alg, "public_key": identity::passkey::b64url(&key),
            })),
        }),
    )
    .await?;
    Ok(Json(serde_json::json!({ "user_id": c.user_id, "credential_id": reg.id })))
}

// ---------- sign-in ----------

#[derive(Deserialize, Default)]
pub(crate) struct LoginStart {
    #[serde(default)]
    username: Option<String>,
}

/// `POST /api/v1/auth/login/start`
pub(crate) async fn login_start(State(state): St, body: Option<Json<LoginStart>>) -> ApiResult<Json<StartResponse>> {
    let username = body.and_then(|b| b.0.username).filter(|u| !u.is_empty() && u.len() <= 256);
    let (creds, user_id) = match &username {
        Some(name) => {
            // An unknown user gets a ceremony that no credential can finish, with decoy
            // credential ids that look like a real user's: no user enumeration.
            match state.store.user_by_name(name).await? {
                Some(u) => (active_credentials(&state, &u.id).await?, Some(u.id)),
                None => (Vec::new(), Some(String::new())),
            }
        }
        None => (Vec::new(), None),
    };
    let (mut rcr, auth_state) = state.rp.start_authentication(creds)?;
    if let Some(name) = &username {
        identity::passkey::disguise_allow_list(&mut rcr, &state.master_key.derive("strongroom login decoys v1"), name);
    }
    let id = put_ceremony(
        &state,
        "login",
        "",
        &LoginCeremony { state: auth_state, user_id, user_code: None, approval: None, nonce: None },
    )
    .await?;
    Ok(Json(StartResponse { ceremony_id: id, options: serde_json::to_value(rcr).map_err(internal)? }))
}

pub(crate) async fn active_credentials(state: &AppState, user_id: &str) -> ApiResult<Vec<Credential>> {
    let records = state.store.active_credentials_of(user_id).await?;
    records.iter().map(|r| serde_json::from_str::<Credential>(&r.credential_json).map_err(internal)).collect()
}

#[derive(Deserialize)]
pub(crate) struct AssertionFinish {
    pub(crate) ceremony_id: String,
    pub(crate) credential: PublicKeyCredential,
}

/// Verifies an assertion for a login or approval ceremony; returns the user, the credential
/// record and the strength. Counter regressions lock the credential.
pub(crate) async fn verify_assertion(
    state: &AppState,
    c: &LoginCeremony,
    pkc: &PublicKeyCredential,
    purpose: &str,
    source: Option<std::net::IpAddr>,
) -> ApiResult<(store::User, store::CredentialRecord, Strength)> {
    let now = state.clock.now();
    let cred_id = identity::passkey::b64url(&pkc.raw_id);
    if pkc.raw_id.len() > identity::passkey::MAX_CREDENTIAL_ID {
        return Err(IdentityError::CredentialIdTooLong.into());
    }
    // Refusals from an unauthenticated source are audited once per window and then summed up
    // (`auth.refused_summary`), so a flood of bad assertions cannot grow the log one by one.
    let refuse = |reason: String| async move {
        if !state.limits.note_refusal(source, &reason, now) {
            return Ok(());
        }
        audit(
            state,
            purpose,
            "",
            "refused",
            serde_json::json!({"credential_id": cred_id_for_audit(pkc), "reason": reason, "source": source.map(|s| s.to_string())}),
        )
        .await
    };
    let Some(record) = state.store.credential(&cred_id).await? else {
        refuse("unknown credential".into()).await?;
        return Err(IdentityError::UnknownCredential.into());
    };
    if record.revoked_at.is_some() || record.locked_at.is_some() {
        refuse("credential revoked or locked".into()).await?;
        return Err(IdentityError::UnknownCredential.into());
    }
    if let Some(uid) = &c.user_id {
        if *uid != record.user_id {
            refuse("credential belongs to another user".into()).await?;
            return Err(IdentityError::UnknownCredential.into());
        }
    }
    if let Some(handle) = identity::passkey::user_handle(pkc) {
        if handle.to_string() != record.user_id {
            refuse("user handle does not match the credential".into()).await?;
            return Err(IdentityError::UnknownCredential.into());
        }
    }
    let user = state.store.user_by_id(&record.user_id).await?.ok_or(ApiError::Unauthenticated)?;
    if user.disabled || user.expires_at.is_some_and(|t| t <= now) {
        refuse("user disabled or expired".into()).await?;
        return Err(ApiError::Unauthenticated);
    }
    let mut credential: Credential = serde_json::from_str(&record.credential_json).map_err(internal)?;
    match state.rp.finish_authentication(pkc, &c.state, &credential) {
        Ok(v) => {
            credential.counter = v.counter;
            credential.backup_state = v.backup_state;
            let json = serde_json::to_string(&credential).map_err(internal)?;
            // Compare-and-set on the counter this assertion was checked against: of two
            // concurrent assertions only one counts, and the stored counter never goes back.
            match state
                .store
                .record_credential_use(&record.id, record.counter, i64::from(v.counter), v.backup_state, &json, now)
                .await
            {
                Ok(()) => {}
                Err(store::StoreError::Stale(_)) => {
                    refuse("signature counter changed by a concurrent assertion".into()).await?;
                    return Err(ApiError::refused(
                        "webauthn.counter_race",
                        axum::http::StatusCode::UNAUTHORIZED,
                        "another assertion of this passkey was accepted at the same moment; try again",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            let strength = Strength { hardware: record.attestation_trusted, user_verified: v.user_verified };
            Ok((user, record, strength))
        }
        Err(IdentityError::CounterRegression) => {
            state.store.lock_credential(&record.id, "signature counter regression", now).await?;
            state.store.revoke_sessions_of_credential(&record.id, now).await?;
            audit(
                state,
                "security.counter_regression",
                &user.username,
                "credential_locked",
                serde_json::json!({"credential_id": record.id, "stored_counter": record.counter}),
            )
            .await?;
            Err(IdentityError::CounterRegression.into())
        }
        Err(e) => {
            refuse(e.to_string()).await?;
            if purpose == "login" {
                // Failed sign-ins on one account are limited whatever the address they come
                // from; a valid assertion is never refused for it (checked after verifying),
                // so nobody can lock an account out by failing on its behalf.
                state.limits.check_account(&format!("user-id:{}", record.user_id))?;
            }
            Err(e.into())
        }
    }
}

fn cred_id_for_audit(pkc: &PublicKeyCredential) -> String {
    let id = identity::passkey::b64url(&pkc.raw_id);
    id.chars().take(128).collect()
}

async fn new_session(
    state: &AppState,
    user: &store::User,
    cred: &store::CredentialRecord,
    strength: &Strength,
    lifetime: i64,
) -> ApiResult<(String, store::Session)> {
    let now = state.clock.now();
    let token = random_token(&mut rand_core::OsRng);
    let session = store::Session {
        id: token_hash(&token),
        user_id: user.id.clone(),
        credential_id: cred.id.clone(),
        auth_time: now,
        amr: serde_json::to_string(&strength.amr()).map_err(internal)?,
        acr: strength.acr().to_string(),
        created_at: now,
        // A session never outlives the account behind it.
        expires_at: user.expires_at.map_or(now + lifetime, |t| t.min(now + lifetime)),
        revoked_at: None,
    };
    state.store.create_session(&session).await?;
    Ok((token, session))
}

fn access_token(state: &AppState, session: &store::Session) -> ApiResult<String> {
    let now = state.clock.now();
    let claims = AccessClaims {
        iss: state.signer.issuer().to_string(),
        sub: session.user_id.clone(),
        aud: state.signer.audience().to_string(),
        // A token never outlives the session behind it.
        exp: (now + state.access_token_seconds).min(session.expires_at),
        iat: now,
        auth_time: session.auth_time,
        amr: serde_json::from_str(&session.amr).map_err(internal)?,
        acr: session.acr.clone(),
        sid: session.id.clone(),
        jti: random_token(&mut rand_core::OsRng),
    };
    Ok(state.signer.sign(&claims)?)
}

/// `POST /api/v1/auth/login/finish`
pub(crate) async fn login_finish(
    State(state): St,
    source: Option<axum::Extension<crate::limits::ClientAddr>>,
    Json(body): Json<AssertionFinish>,
) -> ApiResult<Response> {
    let c: LoginCeremony = take_ceremony(&state, &body.ceremony_id, "login").await?;
    let source = source.map(|s| s.0 .0);
    let (user, record, strength) = verify_assertion(&state, &c, &body.credential, "login", source).await?;
    let (cookie_token, session) = new_session(&state, &user, &record, &strength, BROWSER_SESSION_SECONDS).await?;
    let token = access_token(&state, &session)?;
    audit(&state, "login", &user.username, "success", serde_json::json!({"user_id": user.id, "credential_id": record.id, "amr": strength.amr(), "acr": strength.acr()})).await?;
    let cookie = format!(
        "{SESSION_COOKIE}={cookie_token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={BROWSER_SESSION_SECONDS}{}",
        if state.secure_cookies { "; Secure" } else { "" }
    );
    let mut resp = Json(serde_json::json!({
        "access_token": token, "token_type": "Bearer", "expires_in": state.access_token_seconds,
    }))
    .into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(internal)?);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `POST /api/v1/auth/logout`
pub(crate) async fn logout(State(state): St, p: Principal) -> ApiResult<Response> {
    state.store.revoke_session(&p.session.id, state.clock.now()).await?;
    audit(&state, "logout", &p.user.username, "success", serde_json::json!({})).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sr_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

// ---------- me, credentials ----------

/// `GET /api/v1/me`
pub(crate) async fn me(State(state): St, p: Principal) -> ApiResult<Json<serde_json::Value>> {
    let roles = state.store.roles_of(&p.user.id).await?;
    let roles: Vec<serde_json::Value> = roles
        .iter()
        .map(|r| match &r.vault {
            Some(v) => serde_json::json!({"role": r.role, "vault": v}),
            None => serde_json::json!({"role": r.role}),
        })
        .collect();
    // Passkeys added to the account since this session began: every other session of the
    // account says so (the console on each page, `strongroom whoami`).
    let notices: Vec<serde_json::Value> = state
        .store
        .credentials_of(&p.user.id)
        .await?
        .iter()
        .filter(|c| c.created_at > p.session.created_at && c.revoked_at.is_none())
        .map(|c| serde_json::json!({"kind": "credential_added", "credential": c.name, "credential_id": c.id, "at": c.created_at}))
        .collect();
    Ok(Json(serde_json::json!({
        "user_id": p.user.id, "username": p.user.username, "roles": roles,
        "amr": serde_json::from_str::<serde_json::Value>(&p.session.amr).unwrap_or_default(), "acr": p.session.acr,
        "auth_time": p.session.auth_time, "notices": notices,
    })))
}

#[derive(Serialize)]
struct CredentialView {
    id: String,
    name: String,
    aaguid: String,
    attestation_format: String,
    attestation_trusted: bool,
    backup_eligible: bool,
    backup_state: bool,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    locked_at: Option<i64>,
    lock_reason: Option<String>,
}

/// `GET /api/v1/me/credentials`
pub(crate) async fn my_credentials(State(state): St, p: Principal) -> ApiResult<Json<serde_json::Value>> {
    let creds = state.store.credentials_of(&p.user.id).await?;
    let views: Vec<CredentialView> = creds
        .into_iter()
        .map(|c| CredentialView {
            id: c.id,
            name: c.name,
            aaguid: c.aaguid,
            attestation_format: c.attestation_format,
            attestation_trusted: c.attestation_trusted,
            backup_eligible: c.backup_eligible,
            backup_state: c.backup_state,
            created_at: c.created_at,
            last_used_at: c.last_used_at,
            revoked_at: c.revoked_at,
            locked_at: c.locked_at,
            lock_reason: c.lock_reason,
        })
        .collect();
    Ok(Json(serde_json::json!({ "credentials": views })))
}

async fn own_credential(state: &AppState, p: &Principal, id: &str) -> ApiResult<store::CredentialRecord> {
    match state.store.credential(id).await? {
        Some(c) if c.user_id == p.user.id => Ok(c),
        _ => Err(ApiError::NotFound("no such credential".into())),
    }
}

#[derive(Deserialize)]
pub(crate) struct Rename {
    name: String,
}

/// `PATCH /api/v1/me/credentials/{id}`
pub(crate) async fn rename_credential(
    State(state): St,
    p: Principal,
    Path(id): Path<String>,
    Json(body): Json<Rename>,
) -> ApiResult<StatusCode> {
    own_credential(&state, &p, &id).await?;
    let name = credential_name(Some(body.name), state.clock.now());
    state.store.rename_credential(&id, &name).await?;
    audit(
        &state,
        "credential.rename",
        &p.user.username,
        "success",
        serde_json::json!({"credential_id": id, "name": name}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/me/credentials/{id}`: revokes; never the last active one.
pub(crate) async fn revoke_credential(State(state): St, p: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    own_credential(&state, &p, &id).await?;
    let now = state.clock.now();
    state.store.revoke_credential(&id, now).await.map_err(|e| match e {
        store::StoreError::Conflict(_) => {
            ApiError::Conflict("you cannot revoke your last passkey: add another one first".into())
        }
        other => other.into(),
    })?;
    state.store.revoke_sessions_of_credential(&id, now).await?;
    audit(&state, "credential.revoke", &p.user.username, "success", serde_json::json!({"credential_id": id})).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/me/credentials/add`: a one-time link for adding another authenticator.
/// A step-up operation: a stolen refresh token (whose session's passkey sign-in is old) cannot
/// add the thief's authenticator.
pub(crate) async fn add_credential_link(State(state): St, p: Principal) -> ApiResult<Json<serde_json::Value>> {
    match policy::decide_credential_add(&crate::vaults::auth_context(&p), state.clock.now()) {
        policy::Decision::Allow => {}
        policy::Decision::StepUp { acr_values, max_age } => {
            audit(
                &state,
                "credential.add",
                &p.user.username,
                "step_up",
                serde_json::json!({"reason": "insufficient_user_authentication"}),
            )
            .await?;
            return Err(ApiError::StepUp { acr_values, max_age });
        }
        other => return Err(ApiError::Internal(format!("unexpected decision {other:?}"))),
    }
    let url = create_enroll_link(&state, &p.user.username, "", None, Some(p.user.id.clone()), &p.user.username).await?;
    Ok(Json(serde_json::json!({ "url": url })))
}

/// Creates a one-time enrollment link and returns its URL.
pub async fn create_enroll_link(
    state: &AppState,
    username: &str,
    role: &str,
    vault: Option<String>,
    user_id: Option<String>,
    created_by: &str,
) -> ApiResult<String> {
    let now = state.clock.now();
    let token = random_token(&mut rand_core::OsRng);
    state
        .store
        .create_enroll_link(&store::EnrollLink {
            token_hash: token_hash(&token),
            username: username.to_string(),
            role: role.to_string(),
            vault,
            user_id,
            created_by: created_by.to_string(),
            created_at: now,
            expires_at: now + ENROLL_LINK_SECONDS,
            used_at: None,
        })
        .await?;
    audit(state, "enroll_link.create", created_by, "success", serde_json::json!({"username": username, "role": role}))
        .await?;
    Ok(state.link(&format!("/enroll/{token}")))
}

#[derive(Deserialize)]
pub(crate) struct Invite {
    username: String,
    role: String,
}

/// `POST /api/v1/invites` (owners only).
pub(crate) async fn invite(
    State(state): St,
    p: Principal,
    Json(body): Json<Invite>,
) -> ApiResult<Json<serde_json::Value>> {
    require_owner(&state, &p, "invite users").await?;
    validate_username(&body.username)?;
    check_role_name(&body.role)?;
    // An invite must not be a way around the second approval that granting these roles needs.
    // While the server is being set up (no Security Admin yet), an invite may carry Owner, and
    // one invite may carry the first Security Admin (which ends the set-up for good).
    let allowed = match body.role.as_str() {
        "owner" => crate::critical::setting_up(&state).await?,
        "security-admin" => crate::critical::claim_bootstrap(&state).await?,
        _ => true,
    };
    if !allowed {
        return Err(ApiError::Conflict(format!(
            "granting {} needs a Security Admin's approval: invite with another role, then `strongroom role assign` it",
            body.role
        )));
    }
    let url = create_enroll_link(&state, &body.username, &body.role, None, None, &p.user.username).await?;
    Ok(Json(serde_json::json!({ "url": url })))
}

async fn require_owner(state: &AppState, p: &Principal, what: &str) -> ApiResult<()> {
    let roles = state.store.roles_of(&p.user.id).await?;
    if roles.iter().any(|r| r.role == "owner" && r.vault.is_none()) {
        return Ok(());
    }
    audit(state, what, &p.user.username, "denied", serde_json::json!({"reason": "not an owner"})).await?;
    Err(ApiError::Forbidden(format!("only an owner can {what}")))
}

/// `GET /api/v1/users` (owners): users with their roles.
pub(crate) async fn list_users(State(state): St, p: Principal) -> ApiResult<Json<serde_json::Value>> {
    require_owner(&state, &p, "list users").await?;
    let mut out = Vec::new();
    for u in state.store.list_users().await? {
        let roles: Vec<String> = state.store.roles_of(&u.id).await?.into_iter().map(|r| r.role).collect();
        out.push(serde_json::json!({"user_id": u.id, "username": u.username, "disabled": u.disabled, "expires_at": u.expires_at, "roles": roles}));
    }
    Ok(Json(serde_json::json!({ "users": out })))
}

/// The account an Owner acts on with `what`: it exists and is not the Owner's own (no one
/// disables or limits themselves by accident).
async fn other_user(
    state: &AppState,
    p: &Principal,
    username: &str,
    what: &str,
    refusal: &str,
) -> ApiResult<store::User> {
    require_owner(state, p, what).await?;
    let user =
        state.store.user_by_name(username).await?.ok_or_else(|| ApiError::NotFound(format!("no user {username}")))?;
    if user.id == p.user.id {
        return Err(ApiError::Conflict(refusal.to_string()));
    }
    Ok(user)
}

/// `POST /api/v1/users/{username}/disable` (owners): the user's sessions and tokens end at once.
pub(crate) async fn disable_user(
    State(state): St,
    p: Principal,
    Path(username): Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let user = other_user(&state, &p, &username, "disable users", "you cannot disable yourself").await?;
    // Disabling a Security Admin removes one in effect: critical (202 with the approval).
    if restricting_is_critical(&state, &user).await? {
        let action = crate::critical::Action::UserDisable { user: username };
        return crate::critical::gate_or_request(&state, &p, None, action).await;
    }
    let now = state.clock.now();
    state.store.set_user_disabled(&user.id, true).await?;
    state.store.revoke_sessions_of_user(&user.id, now).await?;
    audit(&state, "user.disable", &p.user.username, "success", serde_json::json!({"user": username})).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether disabling or expiring `user` is critical (`policy::gate` decides).
async fn restricting_is_critical(state: &AppState, user: &store::User) -> ApiResult<bool> {
    let security_admin = crate::critical::is_security_admin(state, &user.id).await?;
    Ok(policy::gate(&policy::Change::RestrictUser { security_admin }, None) != policy::Gate::Direct)
}

#[derive(Deserialize)]
pub(crate) struct Expiry {
    /// Unix seconds, or null for none.
    expires_at: Option<i64>,
}

/// `POST /api/v1/users/{username}/expiry` `{"expires_at": unix | null}` (Owner): the account
/// stops working then; sessions, tokens and restore grants never outlive it.
pub(crate) async fn set_user_expiry(
    State(state): St,
    p: Principal,
    Path(username): Path<String>,
    Json(body): Json<Expiry>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let user =
        other_user(&state, &p, &username, "set account expiry", "you cannot set your own account's expiry").await?;
    // Expiring a Security Admin removes one in effect: critical (202 with the approval).
    if restricting_is_critical(&state, &user).await? {
        let action = crate::critical::Action::UserExpiry { user: username, expires_at: body.expires_at };
        return crate::critical::gate_or_request(&state, &p, None, action).await;
    }
    state.store.set_user_expiry(&user.id, body.expires_at).await?;
    audit(
        &state,
        "user.expiry",
        &p.user.username,
        "success",
        serde_json::json!({"user": username, "expires_at": body.expires_at}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Checks a role's command-line name.
pub fn check_role_name(role: &str) -> ApiResult<()> {
    match policy::Role::parse(role) {
        Some(_) => Ok(()),
        None => Err(ApiError::BadRequest(format!(
            "unknown role {role:?}; one of {}",
            policy::Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// User names: 1–64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn validate_username(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest("a user name is 1–64 characters: letters, digits, . _ - @".into()))
    }
}

// ---------- device authorization grant (RFC 8628) ----------

/// OAuth errors (RFC 6749 §5.2 shape, which OAuth clients expect from these two endpoints).
pub(crate) struct OAuthError(StatusCode, &'static str, String);

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(serde_json::json!({"error": self.1, "error_description": self.2}))).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

impl From<ApiError> for OAuthError {
    fn from(e: ApiError) -> Self {
        if let ApiError::RateLimited { retry_after } = e {
            // RFC 6749 has no rate-limit error; `slow_down` (RFC 8628) is what pollers obey.
            return OAuthError(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                format!("too many requests; wait {retry_after} s"),
            );
        }
        tracing::error!(error = %e, "oauth endpoint failed");
        OAuthError(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error".into())
    }
}

impl From<store::StoreError> for OAuthError {
    fn from(e: store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

#[derive(Deserialize)]
pub(crate) struct DeviceAuthRequest {
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// `POST /api/v1/oauth/device_authorization`
pub(crate) async fn device_authorization(
    State(state): St,
    Form(req): Form<DeviceAuthRequest>,
) -> Result<Response, OAuthError> {
    let client_id = req
        .client_id
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .ok_or_else(|| OAuthError(StatusCode::BAD_REQUEST, "invalid_request", "client_id is required".into()))?;
    let now = state.clock.now();
    let device_code = random_token(&mut rand_core::OsRng);
    let user_code = identity::codes::user_code(&mut rand_core::OsRng);
    state
        .store
        .create_device_code(&store::DeviceCode {
            device_code_hash: token_hash(&device_code),
            user_code: user_code.clone(),
            client_id,
            scope: req.scope.unwrap_or_default().chars().take(256).collect(),
            created_at: now,
            expires_at: now + DEVICE_CODE_SECONDS,
            interval: DEVICE_POLL_INTERVAL,
            last_poll_at: None,
            status: "pending".into(),
            session_id: None,
            user_id: None,
        })
        .await?;
    let mut r = Json(serde_json::json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": state.link("/device"),
        "verification_uri_complete": state.link(&format!("/device?user_code={user_code}")),
        "expires_in": DEVICE_CODE_SECONDS,
        "interval": DEVICE_POLL_INTERVAL,
    }))
    .into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    device_code: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn grant_error(code: &'static str, msg: &str) -> OAuthError {
    OAuthError(StatusCode::BAD_REQUEST, code, msg.to_string())
}

async fn token_response(
    state: &AppState,
    session: &store::Session,
    family: Option<String>,
) -> Result<Response, OAuthError> {
    let now = state.clock.now();
    let access = access_token(state, session)?;
    let refresh = random_token(&mut rand_core::OsRng);
    let family = family.unwrap_or_else(|| random_token(&mut rand_core::OsRng));
    state.store.insert_refresh_token(&token_hash(&refresh), &family, &session.id, session.expires_at, now).await?;
    let mut r = Json(serde_json::json!({
        "access_token": access, "token_type": "Bearer", "expires_in": state.access_token_seconds, "refresh_token": refresh,
    }))
    .into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `POST /api/v1/oauth/token`: device-code and refresh-token grants.
pub(crate) async fn token(State(state): St, Form(req): Form<TokenRequest>) -> Result<Response, OAuthError> {
    let now = state.clock.now();
    match req.grant_type.as_str() {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = req.device_code.ok_or_else(|| grant_error("invalid_request", "device_code is required"))?;
            state.limits.check_account(&format!("grant:{}", token_hash(&code)))?;
            match state.store.poll_device(&token_hash(&code), now).await? {
                store::DevicePoll::Pending => {
                    Err(grant_error("authorization_pending", "waiting for the user to approve"))
                }
                store::DevicePoll::SlowDown => Err(grant_error("slow_down", "polling too fast")),
                store::DevicePoll::Denied => Err(grant_error("access_denied", "the user denied the request")),
                store::DevicePoll::Expired => Err(grant_error("expired_token", "the device code expired")),
                store::DevicePoll::Unknown => Err(grant_error("invalid_grant", "unknown or used device code")),
                store::DevicePoll::Approved { session_id, .. } => {
                    let p = crate::auth::live_session(&state, &session_id, now)
                        .await
                        .map_err(|_| grant_error("invalid_grant", "the approving session is no longer valid"))?;
                    audit(
                        &state,
                        "token.issue",
                        &p.user.username,
                        "success",
                        serde_json::json!({"grant": "device_code", "sid": p.session.id}),
                    )
                    .await?;
                    token_response(&state, &p.session, None).await
                }
                _ => Err(grant_error("invalid_grant", "unusable device code")),
            }
        }
        "refresh_token" => {
            let rt = req.refresh_token.ok_or_else(|| grant_error("invalid_request", "refresh_token is required"))?;
            state.limits.check_account(&format!("grant:{}", token_hash(&rt)))?;
            match state.store.use_refresh_token(&token_hash(&rt), now).await? {
                store::RefreshUse::Valid { family_id, session_id } => {
                    let p = crate::auth::live_session(&state, &session_id, now)
                        .await
                        .map_err(|_| grant_error("invalid_grant", "the session behind this token has ended"))?;
                    audit(
                        &state,
                        "token.issue",
                        &p.user.username,
                        "success",
                        serde_json::json!({"grant": "refresh_token", "sid": p.session.id}),
                    )
                    .await?;
                    token_response(&state, &p.session, Some(family_id)).await
                }
                store::RefreshUse::Reused { family_id } => {
                    audit(
                        &state,
                        "security.refresh_reuse",
                        "",
                        "family_revoked",
                        serde_json::json!({"family": family_id}),
                    )
                    .await?;
                    Err(grant_error("invalid_grant", "refresh token reused: all tokens of this login are revoked"))
                }
                _ => Err(grant_error("invalid_grant", "unknown or expired refresh token")),
            }
        }
        _ => Err(grant_error("unsupported_grant_type", "use the device_code or refresh_token grant")),
    }
}

#[derive(Deserialize)]
pub(crate) struct ApproveStart {
    user_code: String,
}

/// `POST /api/v1/device/approve/start`: the signed-in user confirms a device code with a passkey.
pub(crate) async fn device_approve_start(
    State(state): St,
    p: Principal,
    Json(body): Json<ApproveStart>,
) -> ApiResult<Json<serde_json::Value>> {
    let code = identity::codes::normalize_user_code(&body.user_code)
        .ok_or_else(|| ApiError::BadRequest("that is not a user code (XXXX-XXXX)".into()))?;
    let dev = state
        .store
        .device_by_user_code(&code)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such code: check it and try again".into()))?;
    if dev.status != "pending" || dev.expires_at <= state.clock.now() {
        return Err(ApiError::NotFound("this code has expired or was already used".into()));
    }
    // The first signed-in user to act on a code owns it: nobody else can approve or deny it.
    if !state.store.claim_device(&code, &p.user.id, state.clock.now()).await? {
        return Err(ApiError::Forbidden("someone else is approving this code".into()));
    }
    let creds = active_credentials(&state, &p.user.id).await?;
    let (rcr, auth_state) = state.rp.start_authentication(creds)?;
    let id = put_ceremony(
        &state,
        "device",
        &code,
        &LoginCeremony {
            state: auth_state,
            user_id: Some(p.user.id.clone()),
            user_code: Some(code.clone()),
            approval: None,
            nonce: None,
        },
    )
    .await?;
    Ok(Json(
        serde_json::json!({ "ceremony_id": id, "options": serde_json::to_value(rcr).map_err(internal)?, "client_id": dev.client_id, "user_code": code }),
    ))
}

/// `POST /api/v1/device/approve/finish`
pub(crate) async fn device_approve_finish(
    State(state): St,
    p: Principal,
    Json(body): Json<AssertionFinish>,
) -> ApiResult<Json<serde_json::Value>> {
    let c: LoginCeremony = take_ceremony(&state, &body.ceremony_id, "device").await?;
    if c.user_id.as_deref() != Some(p.user.id.as_str()) {
        return Err(ApiError::CeremonyInvalid);
    }
    let (user, record, strength) = verify_assertion(&state, &c, &body.credential, "device.approve", None).await?;
    let code = c.user_code.ok_or(ApiError::CeremonyInvalid)?;
    let (_, session) = new_session(&state, &user, &record, &strength, DEVICE_SESSION_SECONDS).await?;
    if !state.store.approve_device(&code, &user.id, &session.id, state.clock.now()).await? {
        state.store.revoke_session(&session.id, state.clock.now()).await?;
        return Err(ApiError::NotFound("this code has expired or was already used".into()));
    }
    audit(
        &state,
        "device.approve",
        &user.username,
        "success",
        serde_json::json!({"user_code": code, "credential_id": record.id, "amr": strength.amr()}),
    )
    .await?;
    Ok(Json(serde_json::json!({ "approved": true })))
}

/// `POST /api/v1/device/deny`
pub(crate) async fn device_deny(
    State(state): St,
    p: Principal,
    Json(body): Json<ApproveStart>,
) -> ApiResult<Json<serde_json::Value>> {
    let code = identity::codes::normalize_user_code(&body.user_code)
        .ok_or_else(|| ApiError::BadRequest("that is not a user code".into()))?;
    // Only the code's own approver (the first signed-in user who acted on it) may deny it.
    if !state.store.claim_device(&code, &p.user.id, state.clock.now()).await? {
        audit(
            &state,
            "device.deny",
            &p.user.username,
            "refused",
            serde_json::json!({"user_code": code, "reason": "not this user's code"}),
        )
        .await?;
        return Err(ApiError::Forbidden("this code is not yours to deny".into()));
    }
    let denied = state.store.deny_device(&code, &p.user.id, state.clock.now()).await?;
    audit(
        &state,
        "device.deny",
        &p.user.username,
        if denied { "success" } else { "not_pending" },
        serde_json::json!({"user_code": code}),
    )
    .await?;
    Ok(Json(serde_json::json!({ "denied": denied })))
}

// ---------- discovery ----------

/// `GET /.well-known/openid-configuration`
pub(crate) async fn openid_configuration(State(state): St) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "issuer": state.signer.issuer(),
        "jwks_uri": state.link("/.well-known/jwks.json"),
        "token_endpoint": state.link("/api/v1/oauth/token"),
        "device_authorization_endpoint": state.link("/api/v1/oauth/device_authorization"),
        "userinfo_endpoint": state.link("/api/v1/me"),
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["none"],
        "acr_values_supported": ["phrh", "phr"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "amr", "acr", "sid"],
    }))
}

/// `GET /.well-known/jwks.json`
pub(crate) async fn jwks(State(state): St) -> Json<serde_json::Value> {
    Json(state.signer.jwks())
}

/// `GET /healthz`
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Unknown API routes answer in the API's error shape.
pub(crate) async fn not_found(headers: HeaderMap) -> ApiError {
    let _ = headers;
    ApiError::NotFound("no such route".into())
}
