//! Restores that start only after a passkey approves that exact restore.
//!
//! A restore request stores its operation as canonical JSON under a SHA-256 digest. Approving
//! means a WebAuthn assertion whose challenge is SHA-256("strongroom approval v1" || digest ||
//! nonce): the authenticator's signature covers the operation itself, and the full evidence
//! (authenticator data, client data, signature) is audited so it can be re-verified offline.
//! The server only ever executes the operation stored under the approved digest. Approval
//! rules (role, another person, hardware, freshness) come from `policy::decide`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use policy::{ApprovalFacts, Decision, Operation, Resource, VaultPolicy};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::auth::Principal;
use crate::backups::vault_policy;
use crate::error::{ApiError, ApiResult};
use crate::routes::{audit, put_ceremony, take_ceremony, verify_assertion, AssertionFinish, LoginCeremony};
use crate::state::AppState;
use crate::vaults::{authorize, policy_principal};

type St = State<Arc<AppState>>;

/// How long a restore request waits for its approval.
pub const APPROVAL_SECONDS: i64 = 24 * 3600;
/// How long a restore grant lets the job run.
pub const GRANT_SECONDS: i64 = 12 * 3600;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The operation a restore approval covers. Fields are in lexicographic order so serde_json's
/// output is the canonical (sorted-key, no-whitespace) form that the digest is taken over.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreOperation {
    /// `server` for a restore the server runs into its restore directory (requested in the
    /// console); absent for a restore the requesting client runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Always `restore`.
    pub kind: String,
    /// Snapshot-relative paths (empty: everything).
    pub paths: Vec<String>,
    /// When it was requested (server clock, unix seconds).
    pub request_time: i64,
    /// Requester's user name.
    pub requester: String,
    /// Requester's user id.
    pub requester_id: String,
    /// Full snapshot id.
    pub snapshot: String,
    /// Target directory on the requesting client.
    pub target: String,
    /// Vault name.
    pub vault: String,
}

/// Canonical bytes and SHA-256 digest (hex) of an operation.
pub fn digest_of(op: &RestoreOperation) -> ApiResult<(String, String)> {
    let json = serde_json::to_string(op).map_err(internal)?;
    let digest = hex::encode(sha2::Sha256::digest(json.as_bytes()));
    Ok((json, digest))
}

/// The WebAuthn challenge that binds an assertion to `digest` (hex) and `nonce` (shared with
/// the offline verifier).
pub fn approval_challenge(digest_hex: &str, nonce: &[u8; 32]) -> [u8; 32] {
    auditlog::assertion::approval_challenge(digest_hex, nonce)
}

#[derive(Deserialize)]
pub(crate) struct RestoreRequest {
    snapshot: String,
    #[serde(default)]
    paths: Vec<String>,
    target: String,
    /// Restore on the server, into `<data-dir>/restores/<target>` (target: a relative name).
    #[serde(default)]
    on_server: bool,
}

/// `POST /api/v1/vaults/{vault}/restores` → `{"restore_id", "approval_id", "approval_url", "digest"}`
pub(crate) async fn request(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    Json(body): Json<RestoreRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let policy = vault_policy(&state, &vault).await?;
    let decision =
        authorize(&state, &p, Operation::RestoreRequest, &Resource::Vault { name: &vault, policy: &policy }).await?;
    if !matches!(decision, Decision::ApprovalRequired { .. }) {
        return Err(ApiError::Internal("restores always need an approval".into()));
    }
    if body.target.is_empty() || body.target.len() > 4096 || body.paths.len() > 1000 {
        return Err(ApiError::BadRequest("give a target directory (and at most 1000 paths)".into()));
    }
    for path in &body.paths {
        if !repo::tree::is_safe_relative_path(path.trim_matches('/').as_bytes()) {
            return Err(ApiError::BadRequest(format!("bad path to restore: {path:?}")));
        }
    }
    if body.on_server {
        let t = body.target.trim_end_matches('/');
        if t.contains('/') || !repo::tree::is_safe_relative_path(t.as_bytes()) {
            return Err(ApiError::BadRequest(
                "a restore on the server goes into a new directory of the server's restore directory: give a name (no /)".into(),
            ));
        }
        if server_restore_dir(&state, t).exists() {
            return Err(ApiError::Conflict(format!(
                "the server's restore directory already has {t}; pick another name"
            )));
        }
    }
    // The snapshot must exist (and not be deleted): resolve a prefix to the full id now, so
    // the digest names it exactly.
    let (snap_id, _) = crate::critical::live_snapshot(&state, &vault, &body.snapshot).await?;
    let now = state.clock.now();
    let op = RestoreOperation {
        destination: body.on_server.then(|| "server".to_string()),
        kind: "restore".into(),
        paths: body.paths.iter().map(|p| p.trim_matches('/').to_string()).collect(),
        request_time: now,
        requester: p.user.username.clone(),
        requester_id: p.user.id.clone(),
        snapshot: snap_id.to_hex(),
        target: if body.on_server { body.target.trim_end_matches('/').to_string() } else { body.target.clone() },
        vault: vault.clone(),
    };
    let (json, digest) = digest_of(&op)?;
    let id = identity::codes::random_token(&mut rand_core::OsRng);
    state
        .store
        .create_approval(&store::Approval {
            id: id.clone(),
            kind: "restore".into(),
            vault: vault.clone(),
            operation_json: json,
            digest: digest.clone(),
            requester_id: p.user.id.clone(),
            requester_session: p.session.id.clone(),
            created_at: now,
            expires_at: now + APPROVAL_SECONDS,
            status: "pending".into(),
            approver_id: None,
            approved_at: None,
            evidence_json: None,
            grant_hash: None,
            required: 1,
            result_json: None,
        })
        .await?;
    let url = state.link(&format!("/approvals/{id}"));
    audit(
        &state,
        "restore.request",
        &p.user.username,
        "pending_approval",
        serde_json::json!({"approval_id": id, "digest": digest, "operation": op}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "restore_id": id, "approval_id": id, "approval_url": url, "digest": digest })),
    ))
}

async fn load(state: &AppState, id: &str) -> ApiResult<store::Approval> {
    if id.len() > 128 {
        return Err(ApiError::NotFound("no such approval".into()));
    }
    state.store.approval(id).await?.ok_or_else(|| ApiError::NotFound("no such approval".into()))
}

/// `GET /api/v1/approvals/{id}`: the operation in full (for the requester and possible approvers).
pub(crate) async fn show(State(state): St, p: Principal, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let a = load(&state, &id).await?;
    if a.kind == "critical" {
        crate::critical::may_see(&state, &p, &a).await?;
        return Ok(Json(crate::critical::show(&state, &a).await?));
    }
    let policy = vault_policy(&state, &a.vault).await?;
    if a.requester_id != p.user.id {
        authorize(&state, &p, Operation::VaultRead, &Resource::Vault { name: &a.vault, policy: &policy }).await?;
    }
    let op: serde_json::Value = serde_json::from_str(&a.operation_json).map_err(internal)?;
    let approver = match &a.approver_id {
        Some(uid) => state.store.user_by_id(uid).await?.map(|u| u.username),
        None => None,
    };
    let status = if a.status == "pending" && a.expires_at <= state.clock.now() {
        "expired".to_string()
    } else {
        a.status.clone()
    };
    let approver_invited_by = match &a.approver_id {
        Some(uid) => state.store.introducers(uid, None).await?,
        None => Vec::new(),
    };
    Ok(Json(serde_json::json!({
        "approver_invited_by": approver_invited_by,
        "approval_id": a.id, "kind": a.kind, "status": status, "digest": a.digest, "operation": op,
        "operation_json": a.operation_json, "created_at": a.created_at, "expires_at": a.expires_at,
        "approvals_needed": if status == "pending" { 1 } else { 0 }, "approved_by": approver, "approved_at": a.approved_at,
        "policy": policy,
    })))
}

/// Checks, before any ceremony, that this person could approve at all (role, other person).
async fn may_approve(
    state: &AppState,
    p: &Principal,
    a: &store::Approval,
    policy: &VaultPolicy,
    auth: &policy::AuthContext,
    credential: Option<&str>,
) -> ApiResult<()> {
    let principal = policy_principal(state, &p.user.id).await?;
    let resource = Resource::Vault { name: &a.vault, policy };
    let introduced_by_requester =
        crate::vaults::introduced_by_requester(state, &p.user.id, credential, &a.requester_id).await?;
    let decision = policy::decide(
        &principal,
        auth,
        Operation::RestoreApprove,
        &resource,
        Some(&ApprovalFacts { requester_id: &a.requester_id, introduced_by_requester }),
        state.clock.now(),
    );
    let (outcome, reason) = match &decision {
        Decision::Allow => ("allow", None),
        Decision::Deny { reason } => ("deny", Some(reason.code())),
        _ => ("deny", Some("unexpected")),
    };
    audit(
        state,
        "decision",
        &p.user.username,
        outcome,
        serde_json::json!({"operation": "restore-approve", "approval_id": a.id, "digest": a.digest, "reason": reason}),
    )
    .await?;
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny { reason } => {
            state.metrics.refused(reason.code());
            Err(ApiError::Denied(reason))
        }
        _ => Err(ApiError::Denied(policy::DenyReason::NoRole)),
    }
}

fn pending(a: &store::Approval, now: i64) -> ApiResult<()> {
    if a.status != "pending" {
        return Err(ApiError::Conflict(format!("this approval is already {}", a.status)));
    }
    if a.expires_at <= now {
        return Err(ApiError::Conflict("this approval request has expired".into()));
    }
    Ok(())
}

/// `POST /api/v1/approvals/{id}/start` → `{"ceremony_id", "options", "digest"}`
pub(crate) async fn start(
    State(state): St,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let a = load(&state, &id).await?;
    pending(&a, state.clock.now())?;
    // Role and four-eyes are known before the ceremony; strength and freshness are checked on
    // the assertion itself at finish.
    if a.kind == "critical" {
        crate::critical::may_vote(&state, &p, &a).await?;
    } else {
        let policy = vault_policy(&state, &a.vault).await?;
        let provisional = policy::AuthContext { hardware: true, user_verified: true, auth_time: state.clock.now() };
        may_approve(&state, &p, &a, &policy, &provisional, None).await?;
    }
    let creds = crate::routes::active_credentials(&state, &p.user.id).await?;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let challenge = approval_challenge(&a.digest, &nonce);
    let (rcr, auth_state) = state.rp.start_bound_authentication(creds, challenge)?;
    let ceremony = LoginCeremony {
        state: auth_state,
        user_id: Some(p.user.id.clone()),
        user_code: None,
        approval: Some((a.id.clone(), a.digest.clone())),
        nonce: Some(hex::encode(nonce)),
    };
    let cid = put_ceremony(&state, "approval", &hex::encode(nonce), &ceremony).await?;
    Ok(Json(
        serde_json::json!({ "ceremony_id": cid, "options": serde_json::to_value(rcr).map_err(internal)?, "digest": a.digest, "nonce": hex::encode(nonce) }),
    ))
}

/// `POST /api/v1/approvals/{id}/finish` `{"ceremony_id", "credential"}`
pub(crate) async fn finish(
    State(state): St,
    p: Principal,
    Path(id): Path<String>,
    Json(body): Json<AssertionFinish>,
) -> ApiResult<Json<serde_json::Value>> {
    let c: LoginCeremony = take_ceremony(&state, &body.ceremony_id, "approval").await?;
    let a = load(&state, &id).await?;
    let kind = if a.kind == "critical" { "critical.approve" } else { "restore.approve" };
    match &c.approval {
        Some((cid, digest)) if *cid == a.id && *digest == a.digest => {}
        _ => {
            audit(
                &state,
                kind,
                &p.user.username,
                "refused",
                serde_json::json!({"approval_id": a.id, "reason": "ceremony belongs to another approval"}),
            )
            .await?;
            return Err(ApiError::CeremonyInvalid);
        }
    }
    if c.user_id.as_deref() != Some(p.user.id.as_str()) {
        return Err(ApiError::CeremonyInvalid);
    }
    let now = state.clock.now();
    pending(&a, now)?;
    let (user, record, strength) = verify_assertion(&state, &c, &body.credential, kind, None).await?;
    let credential_id = record.id.clone();
    let r = &body.credential.response;
    let b64 = identity::passkey::b64url;
    let evidence = serde_json::json!({
        "credential_id": record.id,
        "authenticator_data": b64(&r.authenticator_data),
        "client_data_json": b64(&r.client_data_json),
        "signature": b64(&r.signature),
        "user_handle": r.user_handle.as_ref().map(|h| b64(h)),
        "digest": a.digest,
        "amr": strength.amr(),
        "acr": strength.acr(),
    });
    // Everything an auditor needs to re-check this approval offline: the assertion, and what
    // its challenge was derived from (see `auditlog::export`).
    let record = serde_json::json!({
        "approval_id": a.id, "vault": a.vault, "amr": strength.amr(), "acr": strength.acr(),
        "assertion": {
            "credential_id": record.id,
            "authenticator_data": b64(&r.authenticator_data),
            "client_data_json": b64(&r.client_data_json),
            "signature": b64(&r.signature),
        },
        "approval": {
            "digest": a.digest, "nonce": c.nonce, "operation_json": a.operation_json,
            "rp_id": state.rp.rp_id(), "origin": state.rp.origin().as_str().trim_end_matches('/'),
        },
    });
    if a.kind == "critical" {
        return crate::critical::vote(&state, &p, &a, &strength, &credential_id, evidence, record).await;
    }
    let policy = vault_policy(&state, &a.vault).await?;
    let auth =
        policy::AuthContext { hardware: strength.hardware, user_verified: strength.user_verified, auth_time: now };
    may_approve(&state, &p, &a, &policy, &auth, Some(&credential_id)).await?;
    if !state.store.decide_approval(&a.id, &a.digest, true, &user.id, &evidence.to_string(), now).await? {
        return Err(ApiError::Conflict("this approval was decided meanwhile".into()));
    }
    state.metrics.approvals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state
        .metrics
        .approval_seconds_sum
        .fetch_add((now - a.created_at).max(0) as u64, std::sync::atomic::Ordering::Relaxed);
    audit(&state, "restore.approve", &user.username, "approved", record).await?;
    let op: RestoreOperation = serde_json::from_str(&a.operation_json).map_err(internal)?;
    if op.destination.as_deref() == Some("server") {
        start_server_restore(&state, &a, op).await?;
    }
    Ok(Json(serde_json::json!({ "approved": true, "digest": a.digest })))
}

/// `POST /api/v1/approvals/{id}/deny`
pub(crate) async fn deny(State(state): St, p: Principal, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let a = load(&state, &id).await?;
    pending(&a, state.clock.now())?;
    if a.kind == "critical" {
        crate::critical::may_deny(&state, &p, &a).await?;
        let denied = state.store.decide_approval(&a.id, &a.digest, false, &p.user.id, "{}", state.clock.now()).await?;
        audit(
            &state,
            "critical.deny",
            &p.user.username,
            if denied { "denied" } else { "not_pending" },
            serde_json::json!({"approval_id": a.id, "digest": a.digest}),
        )
        .await?;
        return Ok(Json(serde_json::json!({ "denied": denied })));
    }
    let policy = vault_policy(&state, &a.vault).await?;
    let principal = policy_principal(&state, &p.user.id).await?;
    let may = a.requester_id == p.user.id
        || policy::decide(
            &principal,
            &policy::AuthContext { hardware: true, user_verified: true, auth_time: state.clock.now() },
            Operation::RestoreApprove,
            &Resource::Vault { name: &a.vault, policy: &policy },
            None,
            state.clock.now(),
        ) == Decision::Allow;
    if !may {
        return Err(ApiError::Denied(policy::DenyReason::NoRole));
    }
    let denied = state.store.decide_approval(&a.id, &a.digest, false, &p.user.id, "{}", state.clock.now()).await?;
    audit(
        &state,
        "restore.deny",
        &p.user.username,
        if denied { "denied" } else { "not_pending" },
        serde_json::json!({"approval_id": a.id}),
    )
    .await?;
    Ok(Json(serde_json::json!({ "denied": denied })))
}

/// `GET /api/v1/restores/{id}`: status for the requester; once approved, the restore grant is
/// handed out exactly once, to the requesting session, if the approval is still fresh enough.
pub(crate) async fn status(
    State(state): St,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let a = load(&state, &id).await?;
    if a.requester_id != p.user.id || a.kind != "restore" {
        return Err(ApiError::NotFound("no such approval".into()));
    }
    let now = state.clock.now();
    let op: RestoreOperation = serde_json::from_str(&a.operation_json).map_err(internal)?;
    if op.destination.is_some() {
        // The server runs it; nobody gets a grant to run it elsewhere.
        let status = if a.status == "pending" && a.expires_at <= now { "expired" } else { a.status.as_str() };
        return Ok(Json(serde_json::json!({ "status": status, "destination": op.destination })));
    }
    match a.status.as_str() {
        "approved" => {
            if a.requester_session != p.session.id {
                return Err(ApiError::Forbidden(
                    "the grant goes only to the session that requested the restore".into(),
                ));
            }
            let policy = vault_policy(&state, &a.vault).await?;
            if now - a.approved_at.unwrap_or(0) > policy.approval_max_age {
                audit(
                    &state,
                    "restore.grant",
                    &p.user.username,
                    "refused",
                    serde_json::json!({"approval_id": a.id, "reason": "policy.approval_too_old"}),
                )
                .await?;
                return Err(ApiError::Denied(policy::DenyReason::ApprovalTooOld));
            }
            redecide(&state, &a, &op).await?;
            let grant = identity::codes::random_token(&mut rand_core::OsRng);
            if !state.store.issue_grant(&a.id, &identity::codes::token_hash(&grant)).await? {
                return Err(ApiError::Conflict("the grant was already issued".into()));
            }
            audit(
                &state,
                "restore.grant",
                &p.user.username,
                "issued",
                serde_json::json!({"approval_id": a.id, "digest": a.digest}),
            )
            .await?;
            Ok(Json(
                serde_json::json!({ "status": "approved", "grant": grant, "grant_expires_at": (now + GRANT_SECONDS).min(p.session.expires_at), "digest": a.digest }),
            ))
        }
        "pending" if a.expires_at <= now => Ok(Json(serde_json::json!({ "status": "expired" }))),
        other => Ok(Json(serde_json::json!({ "status": other }))),
    }
}

/// A restore grant presented by the restoring client (`Authorization: Grant <token>`): it
/// replaces the access token for the job, so a long restore outlives 15-minute tokens, but
/// never the approval, the grant's own lifetime or the requester's account.
pub(crate) struct GrantHolder {
    approval: store::Approval,
    operation: RestoreOperation,
}

impl axum::extract::FromRequestParts<Arc<AppState>> for GrantHolder {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let h = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let token = h.strip_prefix("Grant ").ok_or(ApiError::Unauthenticated)?.trim();
        if token.len() > 128 {
            return Err(ApiError::Unauthenticated);
        }
        let a = state
            .store
            .approval_by_grant(&identity::codes::token_hash(token))
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let now = state.clock.now();
        if a.status != "consumed" || a.kind != "restore" || a.approved_at.unwrap_or(0) + GRANT_SECONDS <= now {
            return Err(ApiError::Unauthenticated);
        }
        // The grant lives on the requester's session: it ends with the account, the session or
        // the credential that signed the session in (revocation ends its sessions).
        let p = crate::auth::live_session(state, &a.requester_session, now).await?;
        if p.user.id != a.requester_id {
            return Err(ApiError::Unauthenticated);
        }
        let operation: RestoreOperation = serde_json::from_str(&a.operation_json).map_err(internal)?;
        if operation.destination.is_some() {
            return Err(ApiError::Unauthenticated);
        }
        // Every use of the grant re-decides with the current roles, policy and vault state.
        redecide(state, &a, &operation).await?;
        Ok(GrantHolder { approval: a, operation })
    }
}

fn check_restore_id(g: &GrantHolder, id: &str) -> ApiResult<()> {
    if g.approval.id != id {
        return Err(ApiError::Unauthenticated);
    }
    Ok(())
}

/// Re-decides an approved restore at one use of it (the grant's hand-out, every request made
/// with the grant, the server's job before it starts and while it runs): the vault is live,
/// the snapshot not deleted, and `policy::decide_grant_use` allows with the requester's and
/// approver's current roles and the vault's current policy. A refusal is audited
/// (`restore.revoked`) and answered with `restore.grant_revoked`.
pub(crate) async fn redecide(state: &AppState, a: &store::Approval, op: &RestoreOperation) -> ApiResult<()> {
    let why = match still_allowed(state, a, op).await {
        Ok(()) => return Ok(()),
        Err(e @ ApiError::Internal(_)) => return Err(e),
        Err(e) => e,
    };
    // Stopped: what the restore held (its cached plan, its claim on the vault) goes now.
    state.vaults.plans.lock().unwrap_or_else(|p| p.into_inner()).remove(&a.id);
    state.vaults.restoring.lock().unwrap_or_else(|p| p.into_inner()).remove(&a.id);
    audit(
        state,
        "restore.revoked",
        &op.requester,
        "refused",
        serde_json::json!({"approval_id": a.id, "digest": a.digest, "reason": why.code(), "message": why.to_string()}),
    )
    .await?;
    Err(ApiError::refused(
        "restore.grant_revoked",
        StatusCode::FORBIDDEN,
        format!("this restore may no longer run: {why}"),
    ))
}

async fn still_allowed(state: &AppState, a: &store::Approval, op: &RestoreOperation) -> ApiResult<()> {
    let (_, policy) = crate::critical::live_vault(state, &op.vault).await?;
    if crate::critical::deleted_ids(state, &op.vault).await?.contains(&op.snapshot) {
        return Err(ApiError::Conflict(format!("snapshot {} was deleted", &op.snapshot[..8.min(op.snapshot.len())])));
    }
    let now = state.clock.now();
    // Both people must still be able to act: accounts not disabled or expired, and the passkey
    // that approved not revoked or locked since.
    for uid in [Some(a.requester_id.as_str()), a.approver_id.as_deref()] {
        let user = match uid {
            Some(uid) => state.store.user_by_id(uid).await?,
            None => None,
        };
        if !user.is_some_and(|u| !u.disabled && u.expires_at.is_none_or(|t| t > now)) {
            return Err(ApiError::Forbidden("the requester's or the approver's account is no longer active".into()));
        }
    }
    let evidence: serde_json::Value =
        serde_json::from_str(a.evidence_json.as_deref().unwrap_or("{}")).map_err(internal)?;
    let approving_credential = evidence["credential_id"].as_str().unwrap_or_default();
    if !state
        .store
        .credential(approving_credential)
        .await?
        .is_some_and(|c| c.revoked_at.is_none() && c.locked_at.is_none())
    {
        return Err(ApiError::Forbidden("the passkey that approved this restore was revoked or locked".into()));
    }
    let requester = policy_principal(state, &a.requester_id).await?;
    let approver = policy_principal(state, a.approver_id.as_deref().unwrap_or_default()).await?;
    let amr: Vec<String> = serde_json::from_value(evidence["amr"].clone()).unwrap_or_default();
    let approval = policy::AuthContext {
        hardware: amr.iter().any(|m| m == "hwk"),
        user_verified: amr.iter().any(|m| m == "user"),
        auth_time: a.approved_at.unwrap_or(0),
    };
    match policy::decide_grant_use(
        &requester,
        &approver,
        &approval,
        &Resource::Vault { name: &op.vault, policy: &policy },
    ) {
        Decision::Allow => Ok(()),
        Decision::Deny { reason } => Err(ApiError::Denied(reason)),
        other => Err(ApiError::Internal(format!("unexpected grant decision {other:?}"))),
    }
}

/// The approved plan, and the set of chunks it may read, cached per approval.
async fn approved_plan(state: &AppState, g: &GrantHolder) -> ApiResult<Arc<crate::backups::RestorePlan>> {
    // A vault deleted since the approval is read no more.
    crate::critical::live_vault(state, &g.operation.vault).await?;
    crate::backups::note_restore_activity(state, &g.approval.id, &g.operation.vault)?;
    if let Some(p) = state.vaults.plans.lock().unwrap_or_else(|p| p.into_inner()).get(&g.approval.id) {
        return Ok(p.clone());
    }
    let repo = crate::backups::open_repo(state, &g.operation.vault).await?;
    let op = g.operation.clone();
    let plan = tokio::task::spawn_blocking(move || -> Result<_, repo::Error> {
        let snap = repo.load_snapshot(&repo::Id::from_hex(&op.snapshot).unwrap_or(repo::Id([0; 32])))?;
        let entries = repo::restore::plan(&repo, &snap.tree, &op.paths)?;
        let chunks = entries
            .iter()
            .flat_map(|e| e.node.content.iter())
            .filter_map(|c| match c {
                repo::model::Content::Chunk { id, .. } => Some(*id),
                repo::model::Content::Zero { .. } => None,
            })
            .collect();
        Ok((entries, chunks))
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let plan = Arc::new(plan);
    state.vaults.plans.lock().unwrap_or_else(|p| p.into_inner()).insert(g.approval.id.clone(), plan.clone());
    Ok(plan)
}

/// `GET /api/v1/restores/{id}/plan` (grant): the approved operation, the entries to restore and
/// the chunk-id key to verify them with.
pub(crate) async fn plan(
    State(state): St,
    g: GrantHolder,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    check_restore_id(&g, &id)?;
    let p = approved_plan(&state, &g).await?;
    let repo = crate::backups::open_repo(&state, &g.operation.vault).await?;
    audit(
        &state,
        "restore.start",
        &g.operation.requester,
        "started",
        serde_json::json!({"approval_id": id, "digest": g.approval.digest, "entries": p.0.len()}),
    )
    .await?;
    Ok(Json(serde_json::json!({
        "operation": g.operation, "digest": g.approval.digest, "entries": p.0,
        "chunk_id_key": hex::encode(repo.hasher_key()),
    })))
}

#[derive(Deserialize)]
pub(crate) struct ChunkIds {
    ids: Vec<String>,
    /// Answer chunks in their stored form (maybe zstd), for the client to decompress.
    #[serde(default)]
    stored: bool,
}

/// Plaintext bytes per chunks request.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// Chunks per request.
pub const CHUNKS_PER_REQUEST: usize = 900;

/// `POST /api/v1/restores/{id}/chunks` (grant) `{"ids"}` → binary `id[32] len u32le data[len]`…,
/// only chunks of the approved plan, each verified before it leaves the server.
pub(crate) async fn chunks(
    State(state): St,
    g: GrantHolder,
    Path(id): Path<String>,
    Json(body): Json<ChunkIds>,
) -> ApiResult<axum::response::Response> {
    check_restore_id(&g, &id)?;
    if body.ids.len() > CHUNKS_PER_REQUEST {
        return Err(ApiError::BadRequest(format!("at most {CHUNKS_PER_REQUEST} chunks per request")));
    }
    let p = approved_plan(&state, &g).await?;
    let ids = body
        .ids
        .iter()
        .map(|h| repo::Id::from_hex(h).ok_or_else(|| ApiError::BadRequest("ids are 64 hex digits".into())))
        .collect::<ApiResult<Vec<_>>>()?;
    if let Some(bad) = ids.iter().find(|i| !p.1.contains(i)) {
        audit(
            &state,
            "restore.chunk",
            &g.operation.requester,
            "refused",
            serde_json::json!({"approval_id": id, "chunk": bad.to_hex(), "reason": "not in the approved restore"}),
        )
        .await?;
        return Err(ApiError::Forbidden("that chunk is not part of the approved restore".into()));
    }
    let repo = crate::backups::open_repo(&state, &g.operation.vault).await?;
    let stored = body.stored;
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, repo::Error> {
        let mut wanted = Vec::with_capacity(ids.len());
        {
            let index = repo.index();
            for i in &ids {
                let loc = index.get(i).ok_or_else(|| repo::Error::NotFound(format!("chunk {i} (not in the index)")))?;
                wanted.push((*i, loc.raw_len));
            }
        }
        let total: u64 = wanted.iter().map(|(_, l)| u64::from(*l)).sum();
        if total > MAX_CHUNK_BYTES {
            return Err(repo::Error::Invalid(format!("ask for at most {MAX_CHUNK_BYTES} bytes of chunks per request")));
        }
        // Read pack by pack (neighbouring chunks in one range read), in any order: the
        // client matches chunks by id. In the stored form the server only decrypts (the AEAD
        // authenticates the bytes); the client decompresses and checks every id.
        let out = std::sync::Mutex::new(Vec::with_capacity(total as usize + 42 * wanted.len()));
        let ids: Vec<repo::Id> = wanted.iter().map(|(i, _)| *i).collect();
        repo::restore::for_each_blob(&repo, &ids, &|id, loc, ciphertext| {
            let (flags, data) = if stored {
                (u8::from(loc.compressed), repo.open_stored_blob(id, loc, ciphertext)?)
            } else {
                (0, repo.decode_blob(id, loc, ciphertext)?)
            };
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            out.extend_from_slice(&id.0);
            if stored {
                out.push(flags);
                out.extend_from_slice(&loc.raw_len.to_le_bytes());
            }
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&data);
            Ok(())
        })?;
        Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
    })
    .await
    .map_err(internal)?
    .map_err(|e| match e {
        repo::Error::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    })?;
    state.metrics.bytes_out.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
}

#[derive(Deserialize)]
pub(crate) struct Done {
    ok: bool,
    #[serde(default)]
    files: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    error: Option<String>,
}

/// `POST /api/v1/restores/{id}/done` (grant): the job's result, for the audit log.
pub(crate) async fn done(
    State(state): St,
    g: GrantHolder,
    Path(id): Path<String>,
    Json(body): Json<Done>,
) -> ApiResult<StatusCode> {
    check_restore_id(&g, &id)?;
    let err: Option<String> = body.error.map(|e| e.chars().take(500).collect());
    let counter = if body.ok { &state.metrics.restores_ok } else { &state.metrics.restores_failed };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    audit(&state, "restore.finish", &g.operation.requester, if body.ok { "success" } else { "failure" }, serde_json::json!({"approval_id": id, "digest": g.approval.digest, "files": body.files, "bytes": body.bytes, "error": err})).await?;
    state.vaults.plans.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    state.vaults.restoring.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Where a server-side restore named `target` goes.
fn server_restore_dir(state: &AppState, target: &str) -> std::path::PathBuf {
    state.data_dir.join("restores").join(target)
}

/// A restore the server runs itself: its progress and outcome.
pub struct RestoreJob {
    /// The approved operation.
    pub operation: RestoreOperation,
    /// Where it writes.
    pub target: std::path::PathBuf,
    /// Bytes and files, live.
    pub progress: repo::restore::RestoreProgress,
    /// `running`, `done` or `failed`, and the summary or the error.
    pub outcome: std::sync::Mutex<(String, serde_json::Value)>,
    /// When it started (server clock).
    pub started: i64,
}

/// How often a running server-side restore is re-decided.
const JOB_RECHECK_SECONDS: u64 = 2;

/// Starts the server-side restore of an approval just approved: the approval is consumed (as a
/// grant would be) and the job runs in the background, audited like a client's restore.
async fn start_server_restore(state: &Arc<AppState>, a: &store::Approval, op: RestoreOperation) -> ApiResult<()> {
    // As approved just now (approver and evidence recorded), decided again before it starts.
    let a = &load(state, &a.id).await?;
    redecide(state, a, &op).await?;
    // Refused while maintenance holds the vault, before the approval is used up.
    crate::backups::note_restore_activity(state, &a.id, &op.vault)?;
    let repo = match crate::backups::open_repo(state, &op.vault).await {
        Ok(r) => r,
        Err(e) => {
            state.vaults.restoring.lock().unwrap_or_else(|p| p.into_inner()).remove(&a.id);
            return Err(e);
        }
    };
    // Consumed here: nobody else gets a grant for it.
    let nobody = identity::codes::random_token(&mut rand_core::OsRng);
    if !state.store.issue_grant(&a.id, &identity::codes::token_hash(&nobody)).await? {
        return Err(ApiError::Conflict("this restore was started already".into()));
    }
    let job = Arc::new(RestoreJob {
        target: server_restore_dir(state, &op.target),
        operation: op.clone(),
        progress: Default::default(),
        outcome: std::sync::Mutex::new(("running".into(), serde_json::Value::Null)),
        started: state.clock.now(),
    });
    state.vaults.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(a.id.clone(), job.clone());
    audit(
        state,
        "restore.start",
        &op.requester,
        "started",
        serde_json::json!({"approval_id": a.id, "digest": a.digest, "destination": "server", "target": job.target.display().to_string()}),
    )
    .await?;
    let (st, id, digest, approval) = (state.clone(), a.id.clone(), a.digest.clone(), a.clone());
    tokio::spawn(async move {
        let j = job.clone();
        let work = tokio::task::spawn_blocking(move || -> Result<repo::restore::RestoreSummary, repo::Error> {
            // A new directory, made here (not followed if something else is there): the job
            // never writes into a directory it did not create.
            let parent = j.target.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let io = |p: &std::path::Path, e: std::io::Error| repo::Error::Invalid(format!("{}: {e}", p.display()));
            std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
            std::fs::create_dir(&j.target).map_err(|e| io(&j.target, e))?;
            let snap = repo.load_snapshot(&repo::Id::from_hex(&j.operation.snapshot).unwrap_or(repo::Id([0; 32])))?;
            let entries = repo::restore::plan(&repo, &snap.tree, &j.operation.paths)?;
            repo::restore::restore_plan(entries, &j.target, false, &j.progress, &repo::restore::RepoSource(&repo))
        });
        // While it runs, the vault stays busy for maintenance (prune, key retirement, purge),
        // and the restore is re-decided: a lost role, a changed policy or a deleted vault or
        // snapshot stops it before its next write.
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tokio::time::sleep(std::time::Duration::from_secs(JOB_RECHECK_SECONDS)) => {
                    let now = st.clock.now();
                    st.vaults.restoring.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), (job.operation.vault.clone(), now));
                    if !job.progress.stop.load(std::sync::atomic::Ordering::Relaxed) && redecide(&st, &approval, &job.operation).await.is_err() {
                        // The job stops before its next write, in whatever phase it is.
                        job.progress.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        };
        let (word, value) = match result {
            Ok(Ok(s)) => (
                "done",
                serde_json::json!({"files": s.files, "dirs": s.dirs, "bytes": s.bytes, "warnings": s.warnings}),
            ),
            Ok(Err(e)) => ("failed", serde_json::json!({"error": e.to_string()})),
            Err(e) => ("failed", serde_json::json!({"error": e.to_string()})),
        };
        *job.outcome.lock().unwrap_or_else(|p| p.into_inner()) = (word.into(), value.clone());
        st.vaults.restoring.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let outcome = if word == "done" { "success" } else { "failure" };
        let details =
            serde_json::json!({"approval_id": id, "digest": digest, "destination": "server", "result": value});
        if let Err(e) = audit(&st, "restore.finish", &job.operation.requester, outcome, details).await {
            tracing::error!(error = %e, "could not audit the end of a server-side restore");
        }
    });
    Ok(())
}

/// `GET /api/v1/restores/{id}/job`: a server-side restore's progress, for the requester and
/// anyone who may read the vault: `{"status": "pending"|"approved"|"running"|"done"|"failed"|
/// "denied"|"expired", "target", "files_total", "bytes_total", "bytes_done", "result"}`.
pub(crate) async fn job(State(state): St, p: Principal, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let a = load(&state, &id).await?;
    if a.kind != "restore" {
        return Err(ApiError::NotFound("no such restore".into()));
    }
    if a.requester_id != p.user.id {
        let policy = vault_policy(&state, &a.vault).await?;
        authorize(&state, &p, Operation::VaultRead, &Resource::Vault { name: &a.vault, policy: &policy }).await?;
    }
    let op: RestoreOperation = serde_json::from_str(&a.operation_json).map_err(internal)?;
    let job = state.vaults.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
    let Some(job) = job else {
        if op.destination.is_none() {
            // A restore the requester's own client runs: its progress is there, its end in the log.
            return Ok(Json(serde_json::json!({"status": a.status, "destination": "client", "operation": op})));
        }
        let status = match a.status.as_str() {
            "pending" if a.expires_at <= state.clock.now() => "expired",
            // Consumed without a job in this process: the server restarted during the restore.
            "consumed" if op.destination.is_some() => "interrupted",
            other => other,
        };
        return Ok(Json(serde_json::json!({"status": status, "operation": op})));
    };
    let (status, result) = job.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
    use std::sync::atomic::Ordering::Relaxed;
    Ok(Json(serde_json::json!({
        "status": status, "operation": op, "target": job.target.display().to_string(), "started": job.started,
        "files_total": job.progress.files_total.load(Relaxed), "bytes_total": job.progress.bytes_total.load(Relaxed),
        "bytes_done": job.progress.bytes_done.load(Relaxed), "result": result,
    })))
}
