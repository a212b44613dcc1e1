//! Vaults, roles and the policy simulator over HTTP. Every decision comes from `policy::decide`
//! (called here, in the domain path, not in middleware) and is audited, allow and deny alike.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use policy::{AuthContext, Decision, Grant, Operation, Resource, Role, Scope, VaultKind, VaultPolicy};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::routes::audit;
use crate::state::AppState;

type St = State<Arc<AppState>>;

/// Vault names: 1–63 characters, lower-case letters, digits, `-`, `_`, `.`, starting with a letter or digit.
pub fn validate_vault_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "a vault name is 1–63 characters: a-z, 0-9, - _ . (starting with a letter or digit)".into(),
        ))
    }
}

/// The policy principal of a user: their grants.
pub async fn policy_principal(state: &AppState, user_id: &str) -> ApiResult<policy::Principal> {
    let grants = state
        .store
        .roles_of(user_id)
        .await?
        .into_iter()
        .filter_map(|r| {
            Role::parse(&r.role).map(|role| Grant { role, scope: r.vault.map(Scope::Vault).unwrap_or(Scope::Server) })
        })
        .collect();
    Ok(policy::Principal { user_id: user_id.to_string(), grants })
}

/// How the caller authenticated, from their session.
pub fn auth_context(p: &Principal) -> AuthContext {
    let amr: Vec<String> = serde_json::from_str(&p.session.amr).unwrap_or_default();
    AuthContext {
        hardware: amr.iter().any(|m| m == "hwk"),
        user_verified: amr.iter().any(|m| m == "user"),
        auth_time: p.session.auth_time,
    }
}

/// Decides, audits, and turns anything but `Allow`/`ApprovalRequired` into an error.
pub async fn authorize(state: &AppState, p: &Principal, op: Operation, resource: &Resource<'_>) -> ApiResult<Decision> {
    let principal = policy_principal(state, &p.user.id).await?;
    let decision = policy::decide(&principal, &auth_context(p), op, resource, None, state.clock.now());
    let target = match resource {
        Resource::Server => "server".to_string(),
        Resource::Vault { name, .. } => format!("vault:{name}"),
    };
    let (outcome, reason) = match &decision {
        Decision::Allow => ("allow", None),
        Decision::ApprovalRequired { .. } => ("approval_required", None),
        Decision::StepUp { .. } => ("step_up", Some("insufficient_user_authentication")),
        Decision::Deny { reason } => ("deny", Some(reason.code())),
    };
    audit(
        state,
        "decision",
        &p.user.username,
        outcome,
        serde_json::json!({"operation": op, "resource": target, "reason": reason, "decision": decision}),
    )
    .await?;
    match decision {
        Decision::Deny { reason } => {
            state.metrics.refused(reason.code());
            Err(ApiError::Denied(reason))
        }
        Decision::StepUp { acr_values, max_age } => Err(ApiError::StepUp { acr_values, max_age }),
        d => Ok(d),
    }
}

/// Re-decides an authority decided earlier (a backup session) at one use of it, with the
/// caller's current roles and the vault's current policy and state. Allowing is not audited
/// again (the decision that opened it was); a refusal is, and ends the use with its reason.
pub async fn recheck(state: &AppState, p: &Principal, op: Operation, vault: &str) -> ApiResult<()> {
    let policy = crate::critical::live_vault(state, vault).await?.1;
    let principal = policy_principal(state, &p.user.id).await?;
    let resource = Resource::Vault { name: vault, policy: &policy };
    match policy::decide(&principal, &auth_context(p), op, &resource, None, state.clock.now()) {
        Decision::Allow | Decision::ApprovalRequired { .. } => Ok(()),
        decision => {
            authorize(state, p, op, &resource).await?;
            Err(ApiError::Internal(format!("decision changed between two reads: {decision:?}")))
        }
    }
}

/// Whether the approver and the requester are not two independent people: the approver's
/// account, or the credential they approve with, was enrolled from a link the requester
/// created, or the requester's account from a link the approver created (an Owner's sock
/// account asking, the Owner approving).
pub async fn introduced_by_requester(
    state: &AppState,
    approver_id: &str,
    credential_id: Option<&str>,
    requester_id: &str,
) -> ApiResult<bool> {
    let (Some(requester), Some(approver)) =
        (state.store.user_by_id(requester_id).await?, state.store.user_by_id(approver_id).await?)
    else {
        return Ok(false);
    };
    if state.store.introducers(approver_id, credential_id).await?.contains(&requester.username) {
        return Ok(true);
    }
    Ok(state.store.introducers(requester_id, None).await?.contains(&approver.username))
}

async fn load_vault(state: &AppState, name: &str) -> ApiResult<(store::Vault, VaultPolicy)> {
    let v = state.store.vault(name).await?.ok_or_else(|| ApiError::NotFound(format!("no vault {name}")))?;
    let policy: VaultPolicy = serde_json::from_str(&v.policy_json).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((v, policy))
}

fn vault_json(v: &store::Vault, policy: &VaultPolicy) -> serde_json::Value {
    serde_json::json!({
        "name": v.name, "kind": v.kind, "created_at": v.created_at, "created_by": v.created_by,
        "policy": policy, "state": if v.deleted_at.is_some() { "deleted" } else { "active" },
        "deleted_at": v.deleted_at, "deleted_by": v.deleted_by, "purge_at": v.purge_at,
    })
}

/// `approval_max_age` is 30 seconds to 7 days.
pub(crate) fn check_approval_max_age(seconds: i64) -> ApiResult<i64> {
    if !(30..=7 * 24 * 3600).contains(&seconds) {
        return Err(ApiError::BadRequest("approval_max_age is 30 seconds to 7 days".into()));
    }
    Ok(seconds)
}

/// `rotate_key_days` is 1 to 3650.
pub(crate) fn check_rotate_key_days(days: u32) -> ApiResult<u32> {
    if !(1..=3650).contains(&days) {
        return Err(ApiError::BadRequest("rotate_key_days is 1 to 3650".into()));
    }
    Ok(days)
}

#[derive(Deserialize)]
pub(crate) struct CreateVault {
    name: String,
    #[serde(default)]
    kind: Option<VaultKind>,
    #[serde(default)]
    require_hardware: Option<bool>,
    #[serde(default)]
    approval_max_age: Option<i64>,
    #[serde(default)]
    distinct_approver: Option<bool>,
    #[serde(default)]
    rotate_key_days: Option<u32>,
    /// Days snapshots are protected and deleted things recoverable (default 14; 0: no soft delete).
    #[serde(default)]
    retention_days: Option<u32>,
    /// `disabled` (default), `enabled` or `locked`.
    #[serde(default)]
    immutability: Option<String>,
}

/// `POST /api/v1/vaults`
pub(crate) async fn create_vault(
    State(state): St,
    p: Principal,
    Json(body): Json<CreateVault>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    validate_vault_name(&body.name)?;
    authorize(&state, &p, Operation::VaultCreate, &Resource::Server).await?;
    let kind = body.kind.unwrap_or(VaultKind::Test);
    let mut policy = VaultPolicy::default_for(kind);
    if let Some(h) = body.require_hardware {
        policy.require_hardware = h;
    }
    if let Some(a) = body.approval_max_age {
        policy.approval_max_age = check_approval_max_age(a)?;
    }
    if let Some(d) = body.distinct_approver {
        policy.distinct_approver = d;
    }
    if let Some(days) = body.rotate_key_days {
        policy.rotate_key_days = Some(check_rotate_key_days(days)?);
    }
    // A new vault has nothing to protect yet: any retention and immutability may be set now.
    if let Some(days) = body.retention_days {
        if days > policy::MAX_RETENTION_DAYS {
            return Err(ApiError::BadRequest(format!("retention is 0 to {} days", policy::MAX_RETENTION_DAYS)));
        }
        policy.retention_days = days;
    }
    if let Some(i) = &body.immutability {
        policy.immutability = policy::Immutability::parse(i)
            .ok_or_else(|| ApiError::BadRequest("immutability is one of disabled, enabled, locked".into()))?;
    }
    if let Some(old) = state.store.vault(&body.name).await? {
        return Err(ApiError::Conflict(match old.purge_at {
            Some(t) => format!(
                "vault {} is deleted but recoverable until its purge (unix time {t}): undelete it, or pick another name",
                body.name
            ),
            None => format!("vault {} already exists", body.name),
        }));
    }
    // The repository first: a vault row never points at storage that does not exist.
    let dir = state.data_dir.join("vaults").join(&body.name);
    let master = state.master_key.clone();
    let now_dt =
        time::OffsetDateTime::from_unix_timestamp(state.clock.now()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let d = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<(), repo::Error> {
        let backend = Arc::new(repo::ObjectStoreBackend::local(&d)?);
        repo::Repository::init(backend, &master, repo::InitOptions::default(), now_dt, repo::SharedRng::os())?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| match e {
        repo::Error::AlreadyExists(_) => ApiError::Conflict(format!("storage for vault {} already exists", body.name)),
        other => ApiError::Internal(other.to_string()),
    })?;
    let v = store::Vault {
        name: body.name.clone(),
        kind: match kind {
            VaultKind::Test => "test".into(),
            VaultKind::Production => "production".into(),
        },
        policy_json: serde_json::to_string(&policy).map_err(|e| ApiError::Internal(e.to_string()))?,
        created_at: state.clock.now(),
        created_by: p.user.id.clone(),
        deleted_at: None,
        deleted_by: None,
        purge_at: None,
    };
    state.store.create_vault(&v).await?;
    audit(
        &state,
        "vault.create",
        &p.user.username,
        "success",
        serde_json::json!({"vault": v.name, "kind": v.kind, "policy": policy}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(vault_json(&v, &policy))))
}

/// `GET /api/v1/vaults`: the vaults the caller may see.
pub(crate) async fn list_vaults(State(state): St, p: Principal) -> ApiResult<Json<serde_json::Value>> {
    let principal = policy_principal(&state, &p.user.id).await?;
    let auth = auth_context(&p);
    let now = state.clock.now();
    let mut out = Vec::new();
    for v in state.store.list_vaults().await? {
        let policy: VaultPolicy =
            serde_json::from_str(&v.policy_json).map_err(|e| ApiError::Internal(e.to_string()))?;
        let resource = Resource::Vault { name: &v.name, policy: &policy };
        if policy::decide(&principal, &auth, Operation::VaultRead, &resource, None, now) == Decision::Allow {
            let mut j = vault_json(&v, &policy);
            if v.deleted_at.is_none() {
                // Size, snapshot count and last backup, for the console's list; a vault whose
                // storage cannot be read is listed without them (its check says why).
                match crate::console::vault_stats(&state, &v.name).await {
                    Ok(stats) => j["stats"] = stats,
                    Err(e) => tracing::warn!(vault = %v.name, error = %e, "cannot read vault figures"),
                }
            }
            out.push(j);
        }
    }
    Ok(Json(serde_json::json!({ "vaults": out })))
}

/// `GET /api/v1/vaults/{name}`
pub(crate) async fn show_vault(
    State(state): St,
    p: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let (v, policy) = load_vault(&state, &name).await?;
    authorize(&state, &p, Operation::VaultRead, &Resource::Vault { name: &v.name, policy: &policy }).await?;
    let mut out = vault_json(&v, &policy);
    if v.deleted_at.is_none() {
        // Which key versions exist (what `vault rotate-key --retire` can name).
        let repo = crate::backups::open_repo(&state, &name).await?;
        out["key_versions"] = serde_json::json!(repo.kek_versions());
        out["current_key_version"] = serde_json::json!(repo.current_kek().0);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
pub(crate) struct RoleChange {
    username: String,
    role: String,
    #[serde(default)]
    vault: Option<String>,
}

async fn role_change_target(state: &AppState, p: &Principal, body: &RoleChange) -> ApiResult<(store::User, Role)> {
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown role {:?}; one of {}",
            body.role,
            Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let user = state
        .store
        .user_by_name(&body.username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {}", body.username)))?;
    let policy_holder;
    let resource = match &body.vault {
        Some(v) => {
            let (_, policy) = load_vault(state, v).await?;
            policy_holder = policy;
            Resource::Vault { name: v, policy: &policy_holder }
        }
        None => Resource::Server,
    };
    authorize(state, p, Operation::RoleManage, &resource).await?;
    // Only an Owner may hand out (or take away) Owner.
    if role == Role::Owner {
        let me = policy_principal(state, &p.user.id).await?;
        if !me.grants.iter().any(|g| g.role == Role::Owner && g.scope == Scope::Server) {
            return Err(ApiError::Denied(policy::DenyReason::NoRole));
        }
    }
    Ok((user, role))
}

/// `POST /api/v1/roles` `{"username", "role", "vault"?}`: `204` when done; granting Owner or
/// Security Admin is critical (`202` with the approval to wait for).
pub(crate) async fn assign_role(
    State(state): St,
    p: Principal,
    Json(body): Json<RoleChange>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let (user, role) = role_change_target(&state, &p, &body).await?;
    // What is critical is `policy::gate`'s to say; only the answer's shape is decided here.
    if policy::gate(&policy::Change::GrantRole(role), None) != policy::Gate::Direct {
        let action = crate::critical::Action::RoleAssign { user: user.username.clone(), role };
        return crate::critical::gate_or_request(&state, &p, body.vault.as_deref(), action).await;
    }
    state
        .store
        .add_role(&store::RoleAssignment {
            user_id: user.id.clone(),
            role: role.as_str().into(),
            vault: body.vault.clone(),
        })
        .await?;
    audit(
        &state,
        "role.assign",
        &p.user.username,
        "success",
        serde_json::json!({"user": user.username, "role": role, "vault": body.vault}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/roles/revoke` `{"username", "role", "vault"?}`: `204` when done; removing a
/// Security Admin is critical (`202`).
pub(crate) async fn revoke_role(
    State(state): St,
    p: Principal,
    Json(body): Json<RoleChange>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let (user, role) = role_change_target(&state, &p, &body).await?;
    if role == Role::Owner && body.vault.is_none() {
        let owners = state.store.count_active_users_with_role("owner", state.clock.now()).await?;
        if owners <= 1 {
            return Err(ApiError::Conflict("the last Owner cannot be removed".into()));
        }
    }
    if policy::gate(&policy::Change::RevokeRole(role), None) != policy::Gate::Direct {
        let action = crate::critical::Action::RoleRevoke { user: user.username.clone(), role };
        return crate::critical::gate_or_request(&state, &p, body.vault.as_deref(), action).await;
    }
    let removed = state
        .store
        .remove_role(&store::RoleAssignment {
            user_id: user.id.clone(),
            role: role.as_str().into(),
            vault: body.vault.clone(),
        })
        .await?;
    if !removed {
        return Err(ApiError::NotFound(format!("{} does not hold {} there", user.username, role.as_str())));
    }
    audit(
        &state,
        "role.revoke",
        &p.user.username,
        "success",
        serde_json::json!({"user": user.username, "role": role, "vault": body.vault}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/roles`: every assignment (Owner, Security Admin, Auditor).
pub(crate) async fn list_roles(State(state): St, p: Principal) -> ApiResult<Json<serde_json::Value>> {
    let principal = policy_principal(&state, &p.user.id).await?;
    let allowed = principal
        .grants
        .iter()
        .any(|g| g.scope == Scope::Server && matches!(g.role, Role::Owner | Role::SecurityAdmin | Role::Auditor));
    if !allowed {
        return Err(ApiError::Denied(policy::DenyReason::NoRole));
    }
    let mut out = Vec::new();
    for r in state.store.all_roles().await? {
        let name = state.store.user_by_id(&r.user_id).await?.map(|u| u.username).unwrap_or_default();
        out.push(serde_json::json!({"username": name, "role": r.role, "vault": r.vault}));
    }
    Ok(Json(serde_json::json!({ "roles": out })))
}

#[derive(Deserialize)]
pub(crate) struct Simulate {
    username: String,
    #[serde(default)]
    vault: Option<String>,
    operation: Operation,
}

/// `POST /api/v1/policy/simulate`: what would `username` need to perform `operation`? Answers for
/// a fresh user-verified sign-in with a software passkey and with attested hardware.
pub(crate) async fn simulate(
    State(state): St,
    p: Principal,
    Json(body): Json<Simulate>,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = policy_principal(&state, &p.user.id).await?;
    let may = caller.grants.iter().any(|g| matches!(g.role, Role::Owner | Role::SecurityAdmin | Role::Auditor))
        || body.username == p.user.username;
    if !may {
        return Err(ApiError::Denied(policy::DenyReason::NoRole));
    }
    let user = state
        .store
        .user_by_name(&body.username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {}", body.username)))?;
    let principal = policy_principal(&state, &user.id).await?;
    let now = state.clock.now();
    let holder;
    let resource = match &body.vault {
        Some(v) => {
            holder = load_vault(&state, v).await?.1;
            Resource::Vault { name: v, policy: &holder }
        }
        None => Resource::Server,
    };
    let fresh = |hardware| AuthContext { hardware, user_verified: true, auth_time: now };
    let software = policy::decide(&principal, &fresh(false), body.operation, &resource, None, now);
    let hardware = policy::decide(&principal, &fresh(true), body.operation, &resource, None, now);
    let approve = if body.operation == Operation::RestoreRequest {
        Some(serde_json::json!({
            "software": policy::decide(&principal, &fresh(false), Operation::RestoreApprove, &resource, Some(&policy::ApprovalFacts { requester_id: "another-user", introduced_by_requester: false }), now),
            "hardware": policy::decide(&principal, &fresh(true), Operation::RestoreApprove, &resource, Some(&policy::ApprovalFacts { requester_id: "another-user", introduced_by_requester: false }), now),
        }))
    } else {
        None
    };
    Ok(Json(serde_json::json!({
        "username": user.username, "vault": body.vault, "operation": body.operation,
        "with_software_passkey": software, "with_hardware_passkey": hardware,
        "as_approver_of_others": approve,
    })))
}
