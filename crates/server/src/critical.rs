//! Critical operations, soft delete and immutability: the changes that could destroy or weaken
//! backups, or hand out the power to approve them, run only after the requester's own passkey
//! step-up and approvals from Security Admins other than the requester, each a WebAuthn
//! assertion bound to the operation's digest (the generic approvals resource, see
//! `approvals`). Which changes are critical and what an immutable vault refuses outright is
//! `policy::gate`; this module files the request, counts the votes and runs the operation
//! exactly once — checking the gate again right before it runs, so a vault locked meanwhile
//! still refuses. Changes that are not critical (a longer retention, deleting a snapshot whose
//! retention ended) run through the same code at once.
//!
//! Deleting is soft: a deleted snapshot keeps its file (and its data through prunes) and a
//! deleted vault its directory until the vault's retention has passed; `undelete` brings them
//! back, housekeeping purges them after.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use policy::{Change, Decision, Gate, Immutability, Operation, Resource, Role, VaultPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::auth::Principal;
use crate::backups::{begin_maintenance, evict_repo, open_fresh, open_repo};
use crate::error::{ApiError, ApiResult};
use crate::routes::audit;
use crate::state::AppState;
use crate::vaults::{authorize, policy_principal};

type St = State<Arc<AppState>>;

/// How long a critical request waits for its approvals.
pub const CRITICAL_SECONDS: i64 = 24 * 3600;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// What a critical operation does.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Soft-delete the vault (recoverable for its retention, then purged).
    VaultDelete,
    /// Soft-delete one snapshot.
    SnapshotDelete {
        /// Full snapshot id.
        snapshot: String,
    },
    /// Change the retention (and soft-delete) period.
    SetRetention {
        /// Days now.
        from: u32,
        /// Days after.
        to: u32,
    },
    /// Change immutability.
    SetImmutability {
        /// Setting now.
        from: Immutability,
        /// Setting after.
        to: Immutability,
    },
    /// Change the restore-approval policy.
    SetPolicy {
        /// Policy now.
        from: VaultPolicy,
        /// Policy after.
        to: VaultPolicy,
    },
    /// Retire a key-encryption key version (rotating first if it is the current one).
    RetireKey {
        /// The version.
        version: u32,
    },
    /// Grant a role (on `vault`, or server-wide).
    RoleAssign {
        /// User name.
        user: String,
        /// Role.
        role: Role,
    },
    /// Take a role away.
    RoleRevoke {
        /// User name.
        user: String,
        /// Role.
        role: Role,
    },
    /// Disable a Security Admin's account (which ends their sessions).
    UserDisable {
        /// User name.
        user: String,
    },
    /// Set or clear a Security Admin's account expiry.
    UserExpiry {
        /// User name.
        user: String,
        /// Unix seconds, or none.
        expires_at: Option<i64>,
    },
}

/// The one-time flag of the first Security Admin's grant without approval.
pub const BOOTSTRAP_FLAG: &str = "security_admin_bootstrap";

/// Setting up: no Security Admin holds the role anywhere and none was ever granted through the
/// bootstrap. Only then may an invite carry Owner, or the first Security Admin be granted
/// without an approval (nobody could approve anything otherwise).
pub(crate) async fn setting_up(state: &AppState) -> ApiResult<bool> {
    if state.store.flag(BOOTSTRAP_FLAG).await?.is_some() {
        return Ok(false);
    }
    let any_admin = state.store.all_roles().await?.iter().any(|r| r.role == Role::SecurityAdmin.as_str());
    Ok(!any_admin)
}

/// Takes the bootstrap (once, atomically): true if and only if this caller may grant the first
/// Security Admin without an approval.
pub(crate) async fn claim_bootstrap(state: &AppState) -> ApiResult<bool> {
    Ok(setting_up(state).await? && state.store.claim_flag(BOOTSTRAP_FLAG, state.clock.now()).await?)
}

/// Whether `user` holds Security Admin anywhere.
pub(crate) async fn is_security_admin(state: &AppState, user_id: &str) -> ApiResult<bool> {
    Ok(state.store.roles_of(user_id).await?.iter().any(|r| r.role == Role::SecurityAdmin.as_str()))
}

/// A critical operation as approved: its canonical JSON (RFC 8785) is what the digest covers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CriticalOperation {
    /// Always `critical`.
    pub kind: String,
    /// What it does.
    #[serde(flatten)]
    pub action: Action,
    /// The vault concerned (none for server-wide roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// Requester's user name.
    pub requester: String,
    /// Requester's user id.
    pub requester_id: String,
    /// When it was requested (server clock, unix seconds).
    pub request_time: i64,
    /// Security Admin approvals needed besides the requester's own step-up.
    pub approvals_required: u32,
}

/// A vault in use, with its policy; a deleted one is a conflict naming `undelete`.
pub(crate) async fn live_vault(state: &AppState, name: &str) -> ApiResult<(store::Vault, VaultPolicy)> {
    let v = state.store.vault(name).await?.ok_or_else(|| ApiError::NotFound(format!("no vault {name}")))?;
    if v.deleted_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "vault {name} is deleted (recoverable until {}): `strongroom vault undelete {name}` brings it back",
            rfc3339(v.purge_at.unwrap_or(0))
        )));
    }
    let policy = serde_json::from_str(&v.policy_json).map_err(internal)?;
    Ok((v, policy))
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Whether a snapshot taken at `time` is still within `policy`'s retention at `now`.
fn protected(policy: &VaultPolicy, time: time::OffsetDateTime, now: i64) -> bool {
    policy.protected_until(time.unix_timestamp()) > now
}

/// The ids (hex) of `vault`'s soft-deleted snapshots.
pub(crate) async fn deleted_ids(state: &AppState, vault: &str) -> ApiResult<std::collections::HashSet<String>> {
    Ok(state.store.deleted_snapshots(vault).await?.into_iter().map(|d| d.snapshot).collect())
}

/// `vault`'s snapshots in use (not soft-deleted), oldest first.
pub(crate) async fn live_snapshots(state: &AppState, vault: &str) -> ApiResult<Vec<(repo::Id, repo::model::Snapshot)>> {
    let deleted = deleted_ids(state, vault).await?;
    let repo = open_repo(state, vault).await?;
    let all = tokio::task::spawn_blocking(move || repo.snapshots())
        .await
        .map_err(internal)?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(all.into_iter().filter(|(id, _)| !deleted.contains(&id.to_hex())).collect())
}

/// Deletes a snapshot as `by`: to soft delete for the vault's retention, or for good when the
/// vault keeps none (retention 0). Shared by `snapshot delete` and `forget`.
pub(crate) async fn delete_snapshot_as(
    state: &AppState,
    vault: &str,
    id: repo::Id,
    by: &str,
    policy: &VaultPolicy,
) -> ApiResult<Value> {
    if policy.retention_days == 0 {
        let repo = open_repo(state, vault).await?;
        tokio::task::spawn_blocking(move || repo.delete_snapshot(&id))
            .await
            .map_err(internal)?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        return Ok(json!({"vault": vault, "snapshot": id.to_hex(), "purged": true}));
    }
    let now = state.clock.now();
    let d = store::DeletedSnapshot {
        vault: vault.to_string(),
        snapshot: id.to_hex(),
        deleted_at: now,
        deleted_by: by.to_string(),
        purge_at: policy.purge_at(now),
    };
    state.store.soft_delete_snapshot(&d).await?;
    Ok(json!({"vault": vault, "snapshot": id.to_hex(), "deleted_at": now, "purge_at": d.purge_at}))
}

/// A live (not soft-deleted) snapshot of `vault` by id, unique prefix or `latest`.
pub(crate) async fn live_snapshot(
    state: &AppState,
    vault: &str,
    spec: &str,
) -> ApiResult<(repo::Id, repo::model::Snapshot)> {
    let deleted = deleted_ids(state, vault).await?;
    let repo = open_repo(state, vault).await?;
    let spec = spec.to_string();
    let found = tokio::task::spawn_blocking(move || -> Result<_, repo::Error> {
        if spec == "latest" {
            return repo
                .snapshots()?
                .into_iter()
                .rev()
                .find(|(id, _)| !deleted.contains(&id.to_hex()))
                .map(|s| (s, false))
                .ok_or_else(|| repo::Error::NotFound("no snapshots yet".into()));
        }
        let (id, snap) = repo.find_snapshot(&spec)?;
        let gone = deleted.contains(&id.to_hex());
        Ok(((id, snap), gone))
    })
    .await
    .map_err(internal)?
    .map_err(|e| match e {
        repo::Error::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::NotFound(other.to_string()),
    })?;
    match found {
        ((id, _), true) => Err(ApiError::Conflict(format!(
            "snapshot {} is deleted: `strongroom snapshot undelete --vault {vault} {}` brings it back",
            id.short(),
            id.short()
        ))),
        (s, false) => Ok(s),
    }
}

/// The policy of vault `name` in use, once `p` is allowed `op` on it (decided and audited).
pub(crate) async fn authorized(state: &AppState, p: &Principal, op: Operation, name: &str) -> ApiResult<VaultPolicy> {
    let (_, policy) = live_vault(state, name).await?;
    authorize(state, p, op, &Resource::Vault { name, policy: &policy }).await?;
    Ok(policy)
}

/// The `policy::Change` an operation makes, from the state of things now.
async fn change_of(state: &AppState, op: &CriticalOperation) -> ApiResult<(Change, Option<VaultPolicy>)> {
    let policy = match &op.vault {
        Some(v) => Some(live_vault(state, v).await?.1),
        None => None,
    };
    let now = state.clock.now();
    let change = match (&op.action, &policy, &op.vault) {
        (Action::VaultDelete, Some(p), Some(v)) => {
            let protected = live_snapshots(state, v).await?.iter().any(|(_, s)| protected(p, s.time, now));
            Change::DeleteVault { protected }
        }
        (Action::SnapshotDelete { snapshot }, Some(p), Some(v)) => {
            let (_, snap) = live_snapshot(state, v, snapshot).await?;
            Change::DeleteSnapshot { protected: protected(p, snap.time, now) }
        }
        (Action::SetRetention { to, .. }, Some(_), _) => Change::SetRetention(*to),
        (Action::SetImmutability { to, .. }, Some(_), _) => Change::SetImmutability(*to),
        (Action::SetPolicy { .. }, Some(_), _) => Change::SetPolicy,
        (Action::RetireKey { .. }, Some(_), _) => Change::RetireKey,
        (Action::RoleAssign { role, .. }, _, _) => Change::GrantRole(*role),
        (Action::RoleRevoke { role, .. }, _, _) => Change::RevokeRole(*role),
        (Action::UserDisable { user } | Action::UserExpiry { user, .. }, _, _) => {
            let u =
                state.store.user_by_name(user).await?.ok_or_else(|| ApiError::NotFound(format!("no user {user}")))?;
            Change::RestrictUser { security_admin: is_security_admin(state, &u.id).await? }
        }
        _ => return Err(ApiError::BadRequest("this operation needs a vault".into())),
    };
    Ok((change, policy))
}

/// Gates `action` for `p`: runs it now if it is not critical (`200` with the result), files a
/// critical request if it is (`202` with the approval URL), refuses it if nothing may do it.
pub(crate) async fn gate_or_request(
    state: &Arc<AppState>,
    p: &Principal,
    vault: Option<&str>,
    action: Action,
) -> ApiResult<Response> {
    let now = state.clock.now();
    let op = CriticalOperation {
        kind: "critical".into(),
        action,
        vault: vault.map(str::to_string),
        requester: p.user.username.clone(),
        requester_id: p.user.id.clone(),
        request_time: now,
        approvals_required: state.critical_approvals,
    };
    let (change, vault_policy) = change_of(state, &op).await?;
    let mut gate = policy::gate(&change, vault_policy.as_ref());
    // The first Security Admin: with none at all, nobody could ever approve anything, so the
    // grant of the first one is the one role change that goes through alone (and says so in
    // the log). From then on granting the role needs their approval.
    // Server-wide only, claimed once for good: disabling the only Security Admin later does
    // not reopen it.
    let bootstrap = matches!(op.action, Action::RoleAssign { role: Role::SecurityAdmin, .. })
        && op.vault.is_none()
        && claim_bootstrap(state).await?;
    if bootstrap {
        gate = Gate::Direct;
    }
    match gate {
        Gate::Refused(reason) => {
            audit(
                state,
                "critical.refuse",
                &p.user.username,
                "refused",
                json!({"operation": op, "reason": reason.code()}),
            )
            .await?;
            state.metrics.refused(reason.code());
            Err(ApiError::Denied(reason))
        }
        Gate::Direct => {
            let result = apply(state, &op).await?;
            audit(
                state,
                "critical.direct",
                &p.user.username,
                "success",
                json!({"operation": op, "result": result, "bootstrap": bootstrap}),
            )
            .await?;
            Ok((StatusCode::OK, Json(json!({"status": "done", "result": result}))).into_response())
        }
        Gate::Critical => request(state, p, op).await,
    }
}

async fn request(state: &Arc<AppState>, p: &Principal, op: CriticalOperation) -> ApiResult<Response> {
    let json = serde_json_canonicalizer::to_string(&op).map_err(internal)?;
    let digest = hex::encode(sha2::Sha256::digest(json.as_bytes()));
    let id = identity::codes::random_token(&mut rand_core::OsRng);
    let now = op.request_time;
    state
        .store
        .create_approval(&store::Approval {
            id: id.clone(),
            kind: "critical".into(),
            vault: op.vault.clone().unwrap_or_default(),
            operation_json: json,
            digest: digest.clone(),
            requester_id: p.user.id.clone(),
            requester_session: p.session.id.clone(),
            created_at: now,
            expires_at: now + CRITICAL_SECONDS,
            status: "pending".into(),
            approver_id: None,
            approved_at: None,
            evidence_json: None,
            grant_hash: None,
            required: i64::from(op.approvals_required),
            result_json: None,
        })
        .await?;
    let url = state.link(&format!("/approvals/{id}"));
    audit(
        state,
        "critical.request",
        &p.user.username,
        "pending_approval",
        json!({"approval_id": id, "digest": digest, "operation": op}),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "pending_approval", "approval_id": id, "approval_url": url, "digest": digest,
            "operation": op, "approvals_needed": op.approvals_required, "requester_confirmed": false,
            "expires_at": now + CRITICAL_SECONDS,
        })),
    )
        .into_response())
}

/// Runs an operation (approved, or not critical). Checks that what was approved still
/// describes the vault (a `from` that no longer holds refuses: approvers saw that value).
async fn apply(state: &Arc<AppState>, op: &CriticalOperation) -> ApiResult<Value> {
    let now = state.clock.now();
    let by = op.requester.as_str();
    let vault = op.vault.as_deref().unwrap_or_default();
    let set_policy = |policy: VaultPolicy| async move {
        let json = serde_json::to_string(&policy).map_err(internal)?;
        state.store.set_vault_policy(vault, &json).await?;
        Ok::<_, ApiError>(json!({"vault": vault, "policy": policy}))
    };
    let stale = || ApiError::Conflict("the vault changed since this operation was requested; request it again".into());
    match &op.action {
        Action::VaultDelete => {
            let (_, policy) = live_vault(state, vault).await?;
            let held = begin_maintenance(state, vault).await?;
            let purge_at = policy.purge_at(now);
            if !state.store.soft_delete_vault(vault, by, now, purge_at).await? {
                return Err(ApiError::Conflict(format!("vault {vault} is already deleted")));
            }
            drop(held);
            evict_repo(state, vault);
            if policy.retention_days == 0 {
                purge_vault(state, vault).await?;
                return Ok(json!({"vault": vault, "purged": true}));
            }
            Ok(json!({"vault": vault, "deleted_at": now, "purge_at": purge_at}))
        }
        Action::SnapshotDelete { snapshot } => {
            let (_, policy) = live_vault(state, vault).await?;
            let (id, _) = live_snapshot(state, vault, snapshot).await?;
            delete_snapshot_as(state, vault, id, by, &policy).await
        }
        Action::SetRetention { from, to } => {
            let (_, policy) = live_vault(state, vault).await?;
            if policy.retention_days != *from {
                return Err(stale());
            }
            set_policy(VaultPolicy { retention_days: *to, ..policy }).await
        }
        Action::SetImmutability { from, to } => {
            let (_, policy) = live_vault(state, vault).await?;
            if policy.immutability != *from {
                return Err(stale());
            }
            set_policy(VaultPolicy { immutability: *to, ..policy }).await
        }
        Action::SetPolicy { from, to } => {
            let (_, policy) = live_vault(state, vault).await?;
            if policy != *from {
                return Err(stale());
            }
            set_policy(to.clone()).await
        }
        Action::RetireKey { version } => {
            live_vault(state, vault).await?;
            let held = begin_maintenance(state, vault).await?;
            let (held, rotated) = if open_fresh(state, vault).await?.current_kek().0 == *version {
                let r = crate::retention::rotate(state, vault, by, "to retire the current version", held).await?;
                (begin_maintenance(state, vault).await?, Some(r.new_version))
            } else {
                (held, None)
            };
            let repo = open_fresh(state, vault).await?;
            let v = *version;
            let report = tokio::task::spawn_blocking(move || repo::maintenance::retire_key(repo, v))
                .await
                .map_err(internal)?
                .map_err(|e| match e {
                    repo::Error::Invalid(m) => ApiError::BadRequest(m),
                    other => ApiError::Internal(other.to_string()),
                });
            evict_repo(state, vault);
            drop(held);
            Ok(json!({"vault": vault, "rotated_to": rotated, "report": report?}))
        }
        Action::UserDisable { user } => {
            let u =
                state.store.user_by_name(user).await?.ok_or_else(|| ApiError::NotFound(format!("no user {user}")))?;
            state.store.set_user_disabled(&u.id, true).await?;
            state.store.revoke_sessions_of_user(&u.id, now).await?;
            Ok(json!({"user": user, "disabled": true}))
        }
        Action::UserExpiry { user, expires_at } => {
            let u =
                state.store.user_by_name(user).await?.ok_or_else(|| ApiError::NotFound(format!("no user {user}")))?;
            state.store.set_user_expiry(&u.id, *expires_at).await?;
            Ok(json!({"user": user, "expires_at": expires_at}))
        }
        Action::RoleAssign { user, role } | Action::RoleRevoke { user, role } => {
            let u =
                state.store.user_by_name(user).await?.ok_or_else(|| ApiError::NotFound(format!("no user {user}")))?;
            let assignment =
                store::RoleAssignment { user_id: u.id.clone(), role: role.as_str().into(), vault: op.vault.clone() };
            if matches!(op.action, Action::RoleAssign { .. }) {
                state.store.add_role(&assignment).await?;
                Ok(json!({"user": user, "role": role, "vault": op.vault, "granted": true}))
            } else {
                let removed = state.store.remove_role(&assignment).await?;
                Ok(json!({"user": user, "role": role, "vault": op.vault, "revoked": removed}))
            }
        }
    }
}

/// Runs an approved critical operation once: claims it (exactly one caller wins), checks the
/// gate and the requester's account again, runs it and records the result. `resume` re-runs
/// one claimed by a process that died before recording a result (every action is idempotent).
pub async fn run_approved(state: &Arc<AppState>, id: &str, resume: bool) -> ApiResult<()> {
    let a = state.store.approval(id).await?.ok_or_else(|| ApiError::NotFound("no such approval".into()))?;
    if !resume && !state.store.claim_approved(id).await? {
        return Ok(());
    }
    let op: CriticalOperation = serde_json::from_str(&a.operation_json).map_err(internal)?;
    let now = state.clock.now();
    let outcome: ApiResult<Value> = async {
        if resume {
            if let Some(done) = already_done(state, &op).await? {
                return Ok(done);
            }
        }
        let requester = state.store.user_by_id(&op.requester_id).await?;
        if !requester.is_some_and(|u| !u.disabled && u.expires_at.is_none_or(|t| t > now)) {
            return Err(ApiError::Forbidden("the requester's account is no longer active".into()));
        }
        requester_still_may(state, &op).await?;
        let (change, policy) = change_of(state, &op).await?;
        if let Gate::Refused(reason) = policy::gate(&change, policy.as_ref()) {
            return Err(ApiError::Denied(reason));
        }
        apply(state, &op).await
    }
    .await;
    let (outcome_word, result) = match &outcome {
        Ok(v) => ("success", json!({"ok": true, "result": v})),
        Err(e @ ApiError::Denied(_)) => ("refused", json!({"ok": false, "code": e.code(), "error": e.to_string()})),
        Err(e) => ("failure", json!({"ok": false, "code": e.code(), "error": e.to_string()})),
    };
    state.store.set_approval_result(id, &result.to_string()).await?;
    audit(
        state,
        "critical.execute",
        &op.requester,
        outcome_word,
        json!({"approval_id": id, "digest": a.digest, "operation": op, "result": result}),
    )
    .await?;
    Ok(())
}

/// The operation a critical action needs its requester to hold (checked again before it runs).
fn operation_of(action: &Action) -> Operation {
    match action {
        Action::VaultDelete | Action::SnapshotDelete { .. } => Operation::Delete,
        Action::SetRetention { .. }
        | Action::SetImmutability { .. }
        | Action::SetPolicy { .. }
        | Action::RetireKey { .. } => Operation::PolicyChange,
        Action::RoleAssign { .. }
        | Action::RoleRevoke { .. }
        | Action::UserDisable { .. }
        | Action::UserExpiry { .. } => Operation::RoleManage,
    }
}

/// Refuses if the requester no longer holds a role that allows the operation.
async fn requester_still_may(state: &AppState, op: &CriticalOperation) -> ApiResult<()> {
    let policy = match &op.vault {
        Some(v) => Some(live_vault(state, v).await?.1),
        None => None,
    };
    let resource = match (&op.vault, &policy) {
        (Some(v), Some(p)) => Resource::Vault { name: v, policy: p },
        _ => Resource::Server,
    };
    let principal = policy_principal(state, &op.requester_id).await?;
    let now = state.clock.now();
    // The role is what matters here; the requester's passkey vote was the fresh authentication.
    let auth = policy::AuthContext { hardware: true, user_verified: true, auth_time: now };
    match policy::decide(&principal, &auth, operation_of(&op.action), &resource, None, now) {
        Decision::Deny { reason } => Err(ApiError::Denied(reason)),
        _ => Ok(()),
    }
}

/// For an operation a dead process may have run: its result if the state already says so.
async fn already_done(state: &AppState, op: &CriticalOperation) -> ApiResult<Option<Value>> {
    let vault = op.vault.as_deref().unwrap_or_default();
    let row = state.store.vault(vault).await?;
    let policy: Option<VaultPolicy> = match &row {
        Some(v) if v.deleted_at.is_none() => Some(serde_json::from_str(&v.policy_json).map_err(internal)?),
        _ => None,
    };
    let done = match &op.action {
        Action::VaultDelete => row.as_ref().is_none_or(|v| v.deleted_at.is_some()),
        Action::SnapshotDelete { snapshot } => {
            state.store.deleted_snapshots(vault).await?.iter().any(|d| &d.snapshot == snapshot)
        }
        Action::SetRetention { to, .. } => policy.as_ref().is_some_and(|p| p.retention_days == *to),
        Action::SetImmutability { to, .. } => policy.as_ref().is_some_and(|p| p.immutability == *to),
        Action::SetPolicy { to, .. } => policy.as_ref() == Some(to),
        Action::RetireKey { version } => {
            policy.is_some() && !open_fresh(state, vault).await?.kek_versions().contains(version)
        }
        _ => false,
    };
    Ok(done.then(|| json!({"already_done": true})))
}

/// Runs critical operations approved but not run (housekeeping); with `interrupted`, also
/// those a previous process claimed and died in (only at start, when nothing else runs them).
pub async fn resume(state: &Arc<AppState>, interrupted: bool) -> ApiResult<usize> {
    let mut n = 0;
    for a in state.store.unfinished_critical().await? {
        if a.status == "approved" || interrupted {
            run_approved(state, &a.id, a.status == "consumed").await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Who voted how, for `GET /api/v1/approvals/{id}` and the approval page.
pub(crate) async fn show(state: &AppState, a: &store::Approval) -> ApiResult<Value> {
    let op: Value = serde_json::from_str(&a.operation_json).map_err(internal)?;
    let votes = state.store.votes(&a.id).await?;
    let mut list = Vec::new();
    let mut approved_by = Vec::new();
    for v in &votes {
        let name = state.store.user_by_id(&v.user_id).await?.map(|u| u.username).unwrap_or_default();
        let ev: Value = serde_json::from_str(&v.evidence_json).unwrap_or(Value::Null);
        if v.role == "approver" {
            approved_by.push(name.clone());
        }
        list.push(json!({
            "user": name, "role": v.role, "at": v.created_at,
            "credential_id": ev["credential_id"], "amr": ev["amr"],
        }));
    }
    let confirmed = votes.iter().any(|v| v.role == "requester");
    let remaining = (a.required - approved_by.len() as i64).max(0);
    let result: Option<Value> = a.result_json.as_deref().and_then(|r| serde_json::from_str(r).ok());
    let status = match (a.status.as_str(), &result) {
        ("pending", _) if a.expires_at <= state.clock.now() => "expired",
        ("consumed", None) => "running",
        ("consumed", Some(r)) if r["ok"] == true => "executed",
        ("consumed", Some(_)) => "failed",
        (s, _) => s,
    };
    let mut waiting = Vec::new();
    if status == "pending" {
        if !confirmed {
            waiting.push("the requester's own passkey step-up".to_string());
        }
        if remaining > 0 {
            waiting.push(format!("{remaining} Security Admin approval{}", if remaining == 1 { "" } else { "s" }));
        }
    }
    Ok(json!({
        "approval_id": a.id, "kind": a.kind, "status": status, "digest": a.digest, "operation": op,
        "operation_json": a.operation_json, "created_at": a.created_at, "expires_at": a.expires_at,
        "approvals_required": a.required, "approvals_needed": if status == "pending" { remaining } else { 0 },
        "requester_confirmed": confirmed, "approved_by": approved_by, "votes": list, "waiting_for": waiting,
        "result": result, "decided_by": a.approver_id,
    }))
}

/// The resource a critical operation is about (its vault, or the server).
async fn resource_policy(state: &AppState, a: &store::Approval) -> ApiResult<Option<VaultPolicy>> {
    if a.vault.is_empty() {
        return Ok(None);
    }
    let v = state.store.vault(&a.vault).await?.ok_or_else(|| ApiError::NotFound(format!("no vault {}", a.vault)))?;
    Ok(Some(serde_json::from_str(&v.policy_json).map_err(internal)?))
}

/// Whether `p` may approve `a` with an assertion made as `auth`: a Security Admin on its scope,
/// not the requester. Audited either way.
pub(crate) async fn may_approve(
    state: &AppState,
    p: &Principal,
    a: &store::Approval,
    auth: &policy::AuthContext,
    credential: Option<&str>,
) -> ApiResult<()> {
    let policy = resource_policy(state, a).await?;
    let resource = match &policy {
        Some(pol) => Resource::Vault { name: &a.vault, policy: pol },
        None => Resource::Server,
    };
    let principal = policy_principal(state, &p.user.id).await?;
    let decision = policy::decide(
        &principal,
        auth,
        Operation::CriticalApprove,
        &resource,
        Some(&policy::ApprovalFacts {
            requester_id: &a.requester_id,
            introduced_by_requester: crate::vaults::introduced_by_requester(
                state,
                &p.user.id,
                credential,
                &a.requester_id,
            )
            .await?,
        }),
        state.clock.now(),
    );
    let reason = match &decision {
        Decision::Allow => None,
        Decision::Deny { reason } => Some(*reason),
        _ => Some(policy::DenyReason::NoRole),
    };
    audit(
        state,
        "decision",
        &p.user.username,
        if reason.is_none() { "allow" } else { "deny" },
        json!({"operation": "critical-approve", "approval_id": a.id, "digest": a.digest, "reason": reason.map(|r| r.code())}),
    )
    .await?;
    match reason {
        None => Ok(()),
        Some(r) => {
            state.metrics.refused(r.code());
            Err(ApiError::Denied(r))
        }
    }
}

/// Checks before a ceremony that `p` may vote on `a` at all: the requester (their step-up) or
/// an eligible approver, once each.
pub(crate) async fn may_vote(state: &AppState, p: &Principal, a: &store::Approval) -> ApiResult<()> {
    if state.store.votes(&a.id).await?.iter().any(|v| v.user_id == p.user.id) {
        return Err(ApiError::Conflict("you have already confirmed or approved this operation".into()));
    }
    if a.requester_id == p.user.id {
        return Ok(());
    }
    let fresh = policy::AuthContext { hardware: true, user_verified: true, auth_time: state.clock.now() };
    may_approve(state, p, a, &fresh, None).await
}

/// Records a verified vote (the assertion was checked against the operation's digest by the
/// caller) and, if it was the last one needed, runs the operation. `record` is the audit
/// evidence (assertion and what its challenge was derived from).
pub(crate) async fn vote(
    state: &Arc<AppState>,
    p: &Principal,
    a: &store::Approval,
    strength: &identity::Strength,
    credential: &str,
    evidence: Value,
    record: Value,
) -> ApiResult<Json<Value>> {
    let now = state.clock.now();
    let role = if a.requester_id == p.user.id { "requester" } else { "approver" };
    let auth =
        policy::AuthContext { hardware: strength.hardware, user_verified: strength.user_verified, auth_time: now };
    if role == "approver" {
        may_approve(state, p, a, &auth, Some(credential)).await?;
    } else if !strength.user_verified {
        audit(
            state,
            "critical.confirm",
            &p.user.username,
            "refused",
            json!({"approval_id": a.id, "reason": policy::DenyReason::UserNotVerified.code()}),
        )
        .await?;
        return Err(ApiError::Denied(policy::DenyReason::UserNotVerified));
    }
    let v = store::Vote {
        approval_id: a.id.clone(),
        user_id: p.user.id.clone(),
        role: role.into(),
        evidence_json: evidence.to_string(),
        created_at: now,
    };
    if !state.store.add_vote(&v, &a.digest).await? {
        return Err(ApiError::Conflict("already voted, or the operation is no longer pending".into()));
    }
    let kind = if role == "requester" { "critical.confirm" } else { "critical.approve" };
    audit(state, kind, &p.user.username, "approved", record).await?;
    if state.store.complete_approval(&a.id, now).await? {
        state.metrics.approvals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        audit(
            state,
            "critical.approved",
            &p.user.username,
            "approved",
            json!({"approval_id": a.id, "digest": a.digest}),
        )
        .await?;
        // Its own task: a client that hangs up does not cut the operation off.
        let (st, id) = (state.clone(), a.id.clone());
        tokio::spawn(async move { run_approved(&st, &id, false).await }).await.map_err(internal)??;
    }
    let a = state.store.approval(&a.id).await?.ok_or_else(|| ApiError::NotFound("no such approval".into()))?;
    Ok(Json(show(state, &a).await?))
}

/// Who may deny (or withdraw) a pending critical request: the requester, or an eligible approver.
pub(crate) async fn may_deny(state: &AppState, p: &Principal, a: &store::Approval) -> ApiResult<()> {
    if a.requester_id == p.user.id {
        return Ok(());
    }
    let fresh = policy::AuthContext { hardware: true, user_verified: true, auth_time: state.clock.now() };
    may_approve(state, p, a, &fresh, None).await
}

/// Who may see a critical request: the requester, anyone who may approve it, auditors.
pub(crate) async fn may_see(state: &AppState, p: &Principal, a: &store::Approval) -> ApiResult<()> {
    if a.requester_id == p.user.id {
        return Ok(());
    }
    let principal = policy_principal(state, &p.user.id).await?;
    let policy = resource_policy(state, a).await?;
    let resource = match &policy {
        Some(pol) => Resource::Vault { name: &a.vault, policy: pol },
        None => Resource::Server,
    };
    let fresh = policy::AuthContext { hardware: true, user_verified: true, auth_time: state.clock.now() };
    let now = state.clock.now();
    let ok = [Operation::CriticalApprove, Operation::AuditRead]
        .into_iter()
        .any(|op| policy::decide(&principal, &fresh, op, &resource, None, now) == Decision::Allow);
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotFound("no such approval".into()))
    }
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/// `DELETE /api/v1/vaults/{vault}`: always critical; refused while an immutable vault holds
/// snapshots within retention.
pub(crate) async fn delete_vault(State(state): St, p: Principal, Path(vault): Path<String>) -> ApiResult<Response> {
    authorized(&state, &p, Operation::Delete, &vault).await?;
    gate_or_request(&state, &p, Some(&vault), Action::VaultDelete).await
}

/// `DELETE /api/v1/vaults/{vault}/snapshots/{id}`: at once when its retention has ended,
/// critical before that, refused on an immutable vault.
pub(crate) async fn delete_snapshot(
    State(state): St,
    p: Principal,
    Path((vault, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorized(&state, &p, Operation::Delete, &vault).await?;
    if id.len() > 64 {
        return Err(ApiError::BadRequest("a snapshot id is at most 64 hex digits".into()));
    }
    let (sid, _) = live_snapshot(&state, &vault, &id).await?;
    gate_or_request(&state, &p, Some(&vault), Action::SnapshotDelete { snapshot: sid.to_hex() }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetentionBody {
    days: u32,
}

/// `POST /api/v1/vaults/{vault}/retention` `{"days"}`: longer at once, shorter critical,
/// shorter refused on an immutable vault.
pub(crate) async fn set_retention(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    Json(body): Json<RetentionBody>,
) -> ApiResult<Response> {
    let policy = authorized(&state, &p, Operation::PolicyChange, &vault).await?;
    if body.days > policy::MAX_RETENTION_DAYS {
        return Err(ApiError::BadRequest(format!("retention is 0 to {} days", policy::MAX_RETENTION_DAYS)));
    }
    if body.days == policy.retention_days {
        return Err(ApiError::Conflict(format!("retention is already {} days", body.days)));
    }
    let action = Action::SetRetention { from: policy.retention_days, to: body.days };
    gate_or_request(&state, &p, Some(&vault), action).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImmutabilityBody {
    state: String,
}

/// `POST /api/v1/vaults/{vault}/immutability` `{"state": "disabled"|"enabled"|"locked"}`:
/// critical; refused once locked.
pub(crate) async fn set_immutability(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    Json(body): Json<ImmutabilityBody>,
) -> ApiResult<Response> {
    let policy = authorized(&state, &p, Operation::PolicyChange, &vault).await?;
    let to = Immutability::parse(&body.state)
        .ok_or_else(|| ApiError::BadRequest("immutability is one of disabled, enabled, locked".into()))?;
    if to == policy.immutability {
        return Err(ApiError::Conflict(format!("immutability is already {}", to.as_str())));
    }
    gate_or_request(&state, &p, Some(&vault), Action::SetImmutability { from: policy.immutability, to }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyBody {
    #[serde(default)]
    require_hardware: Option<bool>,
    #[serde(default)]
    approval_max_age: Option<i64>,
    #[serde(default)]
    distinct_approver: Option<bool>,
    /// 0 turns scheduled rotation off.
    #[serde(default)]
    rotate_key_days: Option<u32>,
}

/// `POST /api/v1/vaults/{vault}/policy` `{"require_hardware"?, "approval_max_age"?,
/// "distinct_approver"?, "rotate_key_days"?}`: critical (retention and immutability have their
/// own routes).
pub(crate) async fn set_policy(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    Json(body): Json<PolicyBody>,
) -> ApiResult<Response> {
    let policy = authorized(&state, &p, Operation::PolicyChange, &vault).await?;
    let mut to = policy.clone();
    if let Some(h) = body.require_hardware {
        to.require_hardware = h;
    }
    if let Some(a) = body.approval_max_age {
        crate::vaults::check_approval_max_age(a)?;
        to.approval_max_age = a;
    }
    if let Some(d) = body.distinct_approver {
        to.distinct_approver = d;
    }
    if let Some(days) = body.rotate_key_days {
        to.rotate_key_days = match days {
            0 => None,
            d => Some(crate::vaults::check_rotate_key_days(d)?),
        };
    }
    if to == policy {
        return Err(ApiError::Conflict("that is the policy already".into()));
    }
    gate_or_request(&state, &p, Some(&vault), Action::SetPolicy { from: policy, to }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetireBody {
    version: u32,
}

/// `POST /api/v1/vaults/{vault}/retire-key` `{"version"}`: critical. Retiring the current
/// version rotates to a new one first.
pub(crate) async fn retire_key(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    Json(body): Json<RetireBody>,
) -> ApiResult<Response> {
    authorized(&state, &p, Operation::PolicyChange, &vault).await?;
    let versions = open_repo(&state, &vault).await?.kek_versions();
    if !versions.contains(&body.version) {
        return Err(ApiError::BadRequest(format!(
            "vault {vault} has no key version {}; versions: {versions:?}",
            body.version
        )));
    }
    gate_or_request(&state, &p, Some(&vault), Action::RetireKey { version: body.version }).await
}

/// `POST /api/v1/vaults/{vault}/undelete`: brings back a deleted vault before its purge.
pub(crate) async fn undelete_vault(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = state.store.vault(&vault).await?.ok_or_else(|| ApiError::NotFound(format!("no vault {vault}")))?;
    let policy: VaultPolicy = serde_json::from_str(&v.policy_json).map_err(internal)?;
    authorize(&state, &p, Operation::Undelete, &Resource::Vault { name: &vault, policy: &policy }).await?;
    if !state.store.undelete_vault(&vault, state.clock.now()).await? {
        return Err(ApiError::Conflict(format!("vault {vault} is not deleted, or its purge is due")));
    }
    audit(&state, "vault.undelete", &p.user.username, "success", json!({"vault": vault})).await?;
    Ok(Json(json!({"vault": vault, "undeleted": true})))
}

/// `POST /api/v1/vaults/{vault}/snapshots/{id}/undelete`: brings back a deleted snapshot.
pub(crate) async fn undelete_snapshot(
    State(state): St,
    p: Principal,
    Path((vault, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    authorized(&state, &p, Operation::Undelete, &vault).await?;
    let matches: Vec<String> = state
        .store
        .deleted_snapshots(&vault)
        .await?
        .into_iter()
        .map(|d| d.snapshot)
        .filter(|s| id.len() >= 4 && s.starts_with(&id))
        .collect();
    let full = match matches.as_slice() {
        [one] => one.clone(),
        [] => return Err(ApiError::NotFound(format!("no deleted snapshot {id} in vault {vault}"))),
        _ => return Err(ApiError::BadRequest(format!("snapshot prefix {id} is ambiguous"))),
    };
    if !state.store.undelete_snapshot(&vault, &full, state.clock.now()).await? {
        return Err(ApiError::Conflict("that snapshot was undeleted meanwhile, or its purge is due".into()));
    }
    audit(&state, "snapshot.undelete", &p.user.username, "success", json!({"vault": vault, "snapshot": full})).await?;
    Ok(Json(json!({"vault": vault, "snapshot": full, "undeleted": true})))
}

// ---------------------------------------------------------------------------------------------
// Purge
// ---------------------------------------------------------------------------------------------

async fn purge_vault(state: &Arc<AppState>, vault: &str) -> ApiResult<()> {
    evict_repo(state, vault);
    let dir = state.data_dir.join("vaults").join(vault);
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    state.store.purge_vault(vault, i64::MAX).await?;
    audit(state, "vault.purge", "scheduler", "success", json!({"vault": vault})).await
}

/// Purges deleted snapshots and vaults whose retention has passed (housekeeping): the files
/// first, then the records, so an interruption only means trying again. Returns how many.
pub async fn purge_due(state: &Arc<AppState>) -> ApiResult<usize> {
    let now = state.clock.now();
    let mut n = 0;
    for d in state.store.snapshots_due_for_purge(now).await? {
        let Some(id) = repo::Id::from_hex(&d.snapshot) else { continue };
        let repo = open_repo(state, &d.vault).await?;
        tokio::task::spawn_blocking(move || match repo.delete_snapshot(&id) {
            Err(repo::Error::NotFound(_)) => Ok(()),
            other => other,
        })
        .await
        .map_err(internal)?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        // The tombstone goes with the file.
        state.store.drop_snapshot_tombstone(&d.vault, &d.snapshot).await?;
        audit(
            state,
            "snapshot.purge",
            "scheduler",
            "success",
            json!({"vault": d.vault, "snapshot": d.snapshot, "deleted_at": d.deleted_at, "deleted_by": d.deleted_by}),
        )
        .await?;
        n += 1;
    }
    for v in state.store.vaults_due_for_purge(now).await? {
        let Ok(held) = begin_maintenance(state, &v.name).await else { continue };
        purge_vault(state, &v.name).await?;
        drop(held);
        n += 1;
    }
    Ok(n)
}
