//! `/api/v1/audit/...`: the verifier key and the latest checkpoint for anyone (they are public
//! by design, so third-party note verifiers can fetch them); records, checkpoints and proofs
//! for Auditors, Owners and Security Admins (`audit-read`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use policy::{Operation, Resource};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::vaults::authorize;

type St = State<Arc<AppState>>;

/// Records per page of `GET /api/v1/audit/records`.
pub const MAX_RECORDS: u32 = 10_000;

fn text(body: String) -> axum::response::Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `GET /api/v1/audit/key`: the verifier key line `<origin>+<key id>+<base64 key>`.
pub(crate) async fn key(State(state): St) -> axum::response::Response {
    text(format!("{}\n", state.audit_log.vkey()))
}

/// `GET /api/v1/audit/checkpoint`: the latest signed checkpoint (a C2SP signed note). Public,
/// so it never signs: checkpoints come every 1,000 records, every minute while the log grows,
/// and on an auditor's request (`POST`).
pub(crate) async fn checkpoint(State(state): St) -> ApiResult<axum::response::Response> {
    let cp = state.audit_log.latest().ok_or_else(|| ApiError::NotFound("no checkpoint signed yet".into()))?;
    Ok(text(cp.note))
}

/// `POST /api/v1/audit/checkpoint` (audit-read): signs a checkpoint of the whole log now if it
/// grew, and answers it — what an export starts from.
pub(crate) async fn sign_checkpoint(State(state): St, p: Principal) -> ApiResult<axum::response::Response> {
    may_read(&state, &p).await?;
    let cp = state.audit_log.checkpoint(&state.store, state.clock.now()).await?;
    let cp = cp.ok_or_else(|| ApiError::NotFound("the audit log is empty".into()))?;
    Ok(text(cp.note))
}

async fn may_read(state: &AppState, p: &Principal) -> ApiResult<()> {
    authorize(state, p, Operation::AuditRead, &Resource::Server).await.map(|_| ())
}

#[derive(Deserialize)]
pub(crate) struct Range {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/audit/records?after=SEQ&limit=N`: `{"records": ["<canonical JSON>", …], "next",
/// "size"}`; each string is exactly one leaf's bytes; `size` is the log's length now.
pub(crate) async fn records(
    State(state): St,
    p: Principal,
    Query(q): Query<Range>,
) -> ApiResult<Json<serde_json::Value>> {
    may_read(&state, &p).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_RECORDS);
    let rows = state.store.audit_leaves(q.after.max(0), limit).await?;
    let next = rows.last().map(|(s, _)| *s);
    let leaves: Vec<String> = rows.into_iter().map(|(_, l)| l.unwrap_or_default()).collect();
    Ok(Json(serde_json::json!({ "records": leaves, "next": next, "size": state.audit_log.size() })))
}

/// `GET /api/v1/audit/checkpoints`: every signed checkpoint, `{"checkpoints": [{"size", "note"}]}`.
pub(crate) async fn checkpoints(State(state): St, p: Principal) -> ApiResult<Json<serde_json::Value>> {
    may_read(&state, &p).await?;
    let list: Vec<serde_json::Value> = state
        .store
        .audit_checkpoints()
        .await?
        .into_iter()
        .map(|(size, _, note, time)| serde_json::json!({"size": size, "note": note, "created_at": time}))
        .collect();
    Ok(Json(serde_json::json!({ "checkpoints": list })))
}

#[derive(Deserialize)]
pub(crate) struct InclusionQuery {
    seq: u64,
    size: Option<u64>,
}

/// `GET /api/v1/audit/proof/inclusion?seq=N[&size=M]`: `{"seq", "size", "root", "proof": [hex]}`
/// (size defaults to the latest checkpoint's).
pub(crate) async fn inclusion(
    State(state): St,
    p: Principal,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    may_read(&state, &p).await?;
    let size = match q.size {
        Some(s) => s,
        None => state.audit_log.latest().map(|c| c.size).unwrap_or_else(|| state.audit_log.size()),
    };
    let (root, proof) = state.audit_log.inclusion_proof(q.seq, size)?;
    Ok(Json(serde_json::json!({
        "seq": q.seq, "size": size, "root": hex::encode(root),
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
pub(crate) struct ConsistencyQuery {
    from: u64,
    to: u64,
}

/// `GET /api/v1/audit/proof/consistency?from=M&to=N`: `{"from", "to", "from_root", "to_root", "proof": [hex]}`.
pub(crate) async fn consistency(
    State(state): St,
    p: Principal,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    may_read(&state, &p).await?;
    let (old, new, proof) = state.audit_log.consistency_proof(q.from, q.to)?;
    Ok(Json(serde_json::json!({
        "from": q.from, "to": q.to, "from_root": hex::encode(old), "to_root": hex::encode(new),
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })))
}
