//! The JSON the web console reads beyond what the CLI needs: browsing a snapshot's tree, the
//! approvals inbox, a server-side restore job's progress, the authenticator behind an audited
//! assertion and a one-file audit export. Every route decides through `policy` like the rest.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use policy::{Decision, Operation, Resource};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::vaults::{authorize, policy_principal};

type St = State<Arc<AppState>>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Entries one tree page lists at most.
pub const MAX_ENTRIES: usize = 5_000;

#[derive(Deserialize)]
pub(crate) struct TreeQuery {
    #[serde(default)]
    path: String,
}

/// `GET /api/v1/vaults/{vault}/snapshots/{id}/tree?path=a/b` (vault-read): the listing of one
/// directory of a snapshot, `{"snapshot", "path", "entries": [{"name", "kind", "size", "mtime",
/// "target"?}], "truncated"}`; directories first, then by name.
pub(crate) async fn tree(
    State(state): St,
    p: Principal,
    Path((vault, id)): Path<(String, String)>,
    Query(q): Query<TreeQuery>,
) -> ApiResult<Json<Value>> {
    crate::critical::authorized(&state, &p, Operation::VaultRead, &vault).await?;
    let path = q.path.trim_matches('/').to_string();
    if path.len() > 4096 || (!path.is_empty() && !repo::tree::is_safe_relative_path(path.as_bytes())) {
        return Err(ApiError::BadRequest("not a path inside a snapshot".into()));
    }
    let (sid, snap) = crate::critical::live_snapshot(&state, &vault, &id).await?;
    let repo = crate::backups::open_repo(&state, &vault).await?;
    let p2 = path.clone();
    let listing = tokio::task::spawn_blocking(move || -> Result<repo::model::Tree, ApiError> {
        let mut tree = repo.load_tree(&snap.tree).map_err(internal)?;
        for part in p2.split('/').filter(|s| !s.is_empty()) {
            let node = tree
                .nodes
                .iter()
                .find(|n| n.name.0 == part.as_bytes())
                .ok_or_else(|| ApiError::NotFound(format!("no {part:?} in this snapshot")))?;
            let sub = node.subtree.ok_or_else(|| ApiError::BadRequest(format!("{part:?} is not a directory")))?;
            tree = repo.load_tree(&sub).map_err(internal)?;
        }
        Ok(tree)
    })
    .await
    .map_err(internal)??;
    let mut entries: Vec<&repo::model::Node> = listing.nodes.iter().collect();
    entries.sort_by_key(|n| (n.kind != repo::model::NodeKind::Dir, n.name.0.clone()));
    let truncated = entries.len() > MAX_ENTRIES;
    let entries: Vec<Value> = entries
        .into_iter()
        .take(MAX_ENTRIES)
        .map(|n| {
            json!({
                "name": n.name.display(),
                "kind": n.kind,
                "size": n.size,
                "mtime": n.mtime_ns / 1_000_000_000,
                "target": n.target.as_ref().map(|t| t.display()),
            })
        })
        .collect();
    Ok(Json(json!({"snapshot": sid.to_hex(), "path": path, "entries": entries, "truncated": truncated})))
}

/// `GET /api/v1/approvals` — the inbox: pending approvals the caller can act on (approve or
/// confirm) and the caller's own pending requests, newest first.
pub(crate) async fn inbox(State(state): St, p: Principal) -> ApiResult<Json<Value>> {
    let now = state.clock.now();
    let principal = policy_principal(&state, &p.user.id).await?;
    let fresh = policy::AuthContext { hardware: true, user_verified: true, auth_time: now };
    let mut waiting = Vec::new();
    let mut mine = Vec::new();
    for a in state.store.pending_approvals(now).await? {
        let policy: Option<policy::VaultPolicy> = match state.store.vault(&a.vault).await? {
            Some(v) => Some(serde_json::from_str(&v.policy_json).map_err(internal)?),
            None => None,
        };
        let resource = match &policy {
            Some(pol) => Resource::Vault { name: &a.vault, policy: pol },
            None => Resource::Server,
        };
        let facts = policy::ApprovalFacts { requester_id: &a.requester_id, introduced_by_requester: false };
        let op = if a.kind == "critical" { Operation::CriticalApprove } else { Operation::RestoreApprove };
        let voted = a.kind == "critical" && state.store.votes(&a.id).await?.iter().any(|v| v.user_id == p.user.id);
        // The policy says whether the requester may approve their own restore (test vaults);
        // a critical operation's requester confirms instead.
        let confirms_instead = a.kind == "critical" && a.requester_id == p.user.id;
        let can_approve = !confirms_instead
            && !voted
            && policy::decide(&principal, &fresh, op, &resource, Some(&facts), now) == Decision::Allow;
        let own = a.requester_id == p.user.id;
        if !can_approve && !own {
            continue;
        }
        let operation: Value = serde_json::from_str(&a.operation_json).map_err(internal)?;
        let item = json!({
            "approval_id": a.id, "kind": a.kind, "vault": a.vault, "digest": a.digest,
            "operation": operation, "created_at": a.created_at, "expires_at": a.expires_at,
            "url": state.link(&format!("/approvals/{}", a.id)),
            "needs_my_confirmation": own && a.kind == "critical" && !voted,
        });
        if can_approve || (own && a.kind == "critical" && !voted) {
            waiting.push(item);
        } else {
            mine.push(item);
        }
    }
    Ok(Json(json!({"waiting_for_me": waiting, "my_requests": mine})))
}

/// `GET /api/v1/audit/credentials/{id}` (audit-read): the authenticator behind a credential id
/// seen in the log — who holds it, its name, AAGUID, attestation and state.
pub(crate) async fn credential(State(state): St, p: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    authorize(&state, &p, Operation::AuditRead, &Resource::Server).await?;
    if id.len() > 1400 {
        return Err(ApiError::NotFound("no such credential".into()));
    }
    let c = state.store.credential(&id).await?.ok_or_else(|| ApiError::NotFound("no such credential".into()))?;
    let user = state.store.user_by_id(&c.user_id).await?.map(|u| u.username);
    Ok(Json(json!({
        "id": c.id, "user": user, "name": c.name, "aaguid": c.aaguid,
        "attestation_format": c.attestation_format, "hardware": c.attestation_trusted,
        "created_at": c.created_at, "last_used_at": c.last_used_at, "revoked_at": c.revoked_at,
        "locked_at": c.locked_at,
    })))
}

/// `GET /api/v1/audit/export` (audit-read): the export (docs/audit.md) as one tar archive,
/// up to a checkpoint signed for it: `tar xf` it and run `strongroom audit verify` on the
/// directory (or on the archive itself).
pub(crate) async fn export_tar(State(state): St, p: Principal) -> ApiResult<axum::response::Response> {
    authorize(&state, &p, Operation::AuditRead, &Resource::Server).await?;
    let cp = state
        .audit_log
        .checkpoint(&state.store, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::NotFound("the audit log is empty".into()))?;
    let mut records = Vec::new();
    let mut after = 0i64;
    while (after as u64) < cp.size {
        let limit = (cp.size - after as u64).min(u64::from(crate::audit_api::MAX_RECORDS)) as u32;
        let rows = state.store.audit_leaves(after, limit).await?;
        let Some(last) = rows.last().map(|(s, _)| *s) else { break };
        for (_, leaf) in rows {
            records.extend_from_slice(leaf.unwrap_or_default().as_bytes());
            records.push(b'\n');
        }
        after = last;
    }
    let checkpoints: Vec<(u64, String)> = state
        .store
        .audit_checkpoints()
        .await?
        .into_iter()
        .filter(|(size, ..)| *size as u64 <= cp.size)
        .map(|(size, _, note, _)| (size as u64, note))
        .collect();
    let export =
        auditlog::export::Export { records, checkpoint: cp.note.clone(), checkpoints, vkey: state.audit_log.vkey() };
    let dir = format!("strongroom-audit-{}", cp.size);
    let tar = tokio::task::spawn_blocking(move || export_archive(&export, &dir)).await.map_err(internal)??;
    let name = format!("attachment; filename=\"strongroom-audit-{}.tar\"", cp.size);
    Ok(([(header::CONTENT_TYPE, "application/x-tar".to_string()), (header::CONTENT_DISPOSITION, name)], tar)
        .into_response())
}

/// The export directory's files in a tar archive under `dir/`.
fn export_archive(export: &auditlog::export::Export, dir: &str) -> ApiResult<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: String, bytes: &[u8]| -> ApiResult<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes).map_err(internal)
    };
    add(format!("{dir}/records.jsonl"), &export.records)?;
    add(format!("{dir}/checkpoint"), export.checkpoint.as_bytes())?;
    add(format!("{dir}/audit.vkey"), format!("{}\n", export.vkey).as_bytes())?;
    for (size, note) in &export.checkpoints {
        add(format!("{dir}/checkpoints/{size}"), note.as_bytes())?;
    }
    b.into_inner().map_err(internal)
}

/// Figures for the vault list: stored bytes (packs), snapshots and the newest one's time.
pub(crate) async fn vault_stats(state: &AppState, vault: &str) -> ApiResult<Value> {
    let live = crate::critical::live_snapshots(state, vault).await?;
    let size: u64 = crate::backups::open_repo(state, vault).await?.index().packs().iter().map(|p| p.size).sum();
    let last = live.last().map(|(_, s)| s.time.unix_timestamp());
    Ok(json!({"stored_bytes": size, "snapshots": live.len(), "last_backup": last}))
}
