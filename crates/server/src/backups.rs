//! Backups through the server: the server half of the engine behind HTTP. The client (CLI)
//! chunks, hashes and compresses; asks which chunks are missing; uploads only those in binary
//! batches; commits the snapshot, whose time is the server's clock. Every chunk from the network
//! is re-verified (decompress + keyed hash) before it is stored: a client cannot put data under
//! another chunk's id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::Json;
use policy::{Operation, Resource, VaultPolicy};
use repo::{Id, PreparedChunk, Repository, Writer};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::routes::audit;
use crate::state::AppState;
use crate::vaults::authorize;

type St = State<Arc<AppState>>;

/// Largest upload batch.
pub const MAX_BATCH: usize = 64 << 20;
/// Ids per `missing` query.
pub const MAX_IDS: usize = 100_000;

/// A backup session unused for this long is closed: what it uploaded is indexed (so the next
/// backup does not send it again) and its id stops working.
pub const SESSION_IDLE_SECONDS: i64 = 900;

/// One backup in progress.
pub struct BackupSession {
    vault: String,
    user_id: String,
    started: i64,
    last_used: AtomicI64,
    writer: Writer<'static>,
}

/// Open repositories, backup sessions, restores in progress and running maintenance.
///
/// Lock order, where more than one is held: `sessions`, then `restoring`, then `maintenance`.
#[derive(Default)]
pub struct Vaults {
    repos: Mutex<HashMap<String, Arc<Repository>>>,
    sessions: Mutex<HashMap<String, Arc<BackupSession>>>,
    /// Approved restore plans and their chunk sets, by approval id.
    pub(crate) plans: Mutex<HashMap<String, Arc<RestorePlan>>>,
    /// Restores reading a vault: approval id → (vault, time of the last request).
    pub(crate) restoring: Mutex<HashMap<String, (String, i64)>>,
    /// Vaults a prune is rewriting: no backup or restore may start meanwhile.
    maintenance: Mutex<HashSet<String>>,
    /// Restores the server runs itself (requested in the console), by approval id.
    pub(crate) jobs: Mutex<HashMap<String, Arc<crate::approvals::RestoreJob>>>,
    /// Upload bytes being received or verified, per user id.
    inflight: Arc<Mutex<HashMap<String, u64>>>,
}

/// How long a commit waits for the session's other requests to finish.
const COMMIT_WAIT_MS: u32 = 120_000;

/// Backup sessions one user may have open at once.
pub const MAX_SESSIONS_PER_USER: usize = 8;

/// Upload bytes one user may have in flight (received, not yet stored) at once: two full
/// batches. Together with the per-chunk length bound this caps what one account can make the
/// server hold in memory.
pub const MAX_INFLIGHT_PER_USER: u64 = 2 * MAX_BATCH as u64;

/// A reservation of upload bytes for one user, released on drop.
struct Inflight {
    map: Arc<Mutex<HashMap<String, u64>>>,
    user: String,
    bytes: u64,
}

impl Inflight {
    fn reserve(vaults: &Vaults, user: &str, bytes: u64) -> ApiResult<Inflight> {
        let mut map = guard(&vaults.inflight);
        let used = map.entry(user.to_string()).or_default();
        if *used + bytes > MAX_INFLIGHT_PER_USER {
            return Err(ApiError::RateLimited { retry_after: 1 });
        }
        *used += bytes;
        Ok(Inflight { map: vaults.inflight.clone(), user: user.to_string(), bytes })
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut map = guard(&self.map);
        if let Some(used) = map.get_mut(&self.user) {
            *used = used.saturating_sub(self.bytes);
            if *used == 0 {
                map.remove(&self.user);
            }
        }
    }
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes backup sessions idle for longer than [`SESSION_IDLE_SECONDS`], indexing what they
/// stored. Returns how many were closed.
pub async fn close_idle_sessions(state: &AppState) -> usize {
    let cutoff = state.clock.now() - SESSION_IDLE_SECONDS;
    let idle: Vec<(String, Arc<BackupSession>)> = {
        let mut sessions = guard(&state.vaults.sessions);
        let ids: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| s.last_used.load(Ordering::Relaxed) < cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter().filter_map(|id| sessions.remove(&id).map(|s| (id, s))).collect()
    };
    let n = idle.len();
    for (id, s) in idle {
        let vault = s.vault.clone();
        // A request still holding the session ends soon; its uploads then stay unindexed
        // orphans (reported by check, removed by prune) rather than blocking here.
        if let Ok(mut session) = Arc::try_unwrap(s) {
            let flushed = tokio::task::spawn_blocking(move || session.writer.flush()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!(%vault, backup_id = %id, "an idle backup session could not index its uploads");
            }
        }
        tracing::info!(%vault, backup_id = %id, "closed an idle backup session");
    }
    n
}

/// Holds a vault for maintenance; released on drop.
pub(crate) struct MaintenanceGuard {
    state: Arc<AppState>,
    vault: String,
}

impl Drop for MaintenanceGuard {
    fn drop(&mut self) {
        guard(&self.state.vaults.maintenance).remove(&self.vault);
    }
}

/// Takes a vault for maintenance, or says what is using it.
pub(crate) async fn begin_maintenance(state: &Arc<AppState>, vault: &str) -> ApiResult<MaintenanceGuard> {
    close_idle_sessions(state).await;
    let now = state.clock.now();
    let sessions = guard(&state.vaults.sessions);
    if sessions.values().any(|s| s.vault == vault) {
        return Err(ApiError::Conflict(format!(
            "a backup to vault {vault} is in progress; run this again when it has finished"
        )));
    }
    let restoring = guard(&state.vaults.restoring);
    if restoring.values().any(|(v, last)| v == vault && *last >= now - SESSION_IDLE_SECONDS) {
        return Err(ApiError::Conflict(format!(
            "a restore from vault {vault} is in progress; run this again when it has finished"
        )));
    }
    let mut maintenance = guard(&state.vaults.maintenance);
    if !maintenance.insert(vault.to_string()) {
        return Err(ApiError::Conflict(format!("vault {vault} is already being pruned")));
    }
    Ok(MaintenanceGuard { state: state.clone(), vault: vault.to_string() })
}

/// Records that a restore reads `vault` now; refused while the vault is being pruned.
pub(crate) fn note_restore_activity(state: &AppState, approval_id: &str, vault: &str) -> ApiResult<()> {
    let mut restoring = guard(&state.vaults.restoring);
    if guard(&state.vaults.maintenance).contains(vault) {
        return Err(ApiError::Conflict(format!("vault {vault} is being pruned; try again in a minute")));
    }
    restoring.insert(approval_id.to_string(), (vault.to_string(), state.clock.now()));
    Ok(())
}

/// An approved restore's entries and the chunks they may read.
pub(crate) type RestorePlan = (Vec<repo::restore::PlanEntry>, std::collections::HashSet<Id>);

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn repo_err(e: repo::Error) -> ApiError {
    match e {
        e @ repo::Error::InvalidTree { .. } => {
            ApiError::refused("snapshot.invalid_tree", axum::http::StatusCode::BAD_REQUEST, e.to_string())
        }
        e @ repo::Error::MissingReferences { .. } => {
            ApiError::refused("snapshot.missing_references", axum::http::StatusCode::BAD_REQUEST, e.to_string())
        }
        repo::Error::Invalid(m) => ApiError::BadRequest(m),
        repo::Error::NotFound(m) => ApiError::NotFound(m),
        other => ApiError::Internal(other.to_string()),
    }
}

/// The open repository of a vault (opened once, then shared).
pub async fn open_repo(state: &AppState, vault: &str) -> ApiResult<Arc<Repository>> {
    if let Some(r) = state.vaults.repos.lock().unwrap_or_else(|p| p.into_inner()).get(vault) {
        return Ok(r.clone());
    }
    let dir = state.data_dir.join("vaults").join(vault);
    let master = state.master_key.clone();
    let repo = tokio::task::spawn_blocking(move || -> Result<Repository, repo::Error> {
        let backend = Arc::new(repo::ObjectStoreBackend::local(&dir)?);
        Repository::open(backend, &master, repo::SharedRng::os())
    })
    .await
    .map_err(internal)?
    .map_err(repo_err)?;
    let repo = Arc::new(repo);
    let mut map = state.vaults.repos.lock().unwrap_or_else(|p| p.into_inner());
    Ok(map.entry(vault.to_string()).or_insert(repo).clone())
}

/// Forgets the open repository of `vault`: the next request opens it again (after a key
/// rotation, whose new version only a fresh open knows).
pub(crate) fn evict_repo(state: &AppState, vault: &str) {
    state.vaults.repos.lock().unwrap_or_else(|p| p.into_inner()).remove(vault);
}

/// Opens a vault's repository afresh, bypassing the shared one (for operations that consume it).
pub(crate) async fn open_fresh(state: &AppState, vault: &str) -> ApiResult<Repository> {
    let dir = state.data_dir.join("vaults").join(vault);
    let master = state.master_key.clone();
    tokio::task::spawn_blocking(move || -> Result<Repository, repo::Error> {
        let backend = Arc::new(repo::ObjectStoreBackend::local(&dir)?);
        Repository::open(backend, &master, repo::SharedRng::os())
    })
    .await
    .map_err(internal)?
    .map_err(repo_err)
}

/// The policy of a vault in use (a deleted vault is a conflict that names `undelete`).
pub(crate) async fn vault_policy(state: &AppState, name: &str) -> ApiResult<VaultPolicy> {
    Ok(crate::critical::live_vault(state, name).await?.1)
}

/// `POST /api/v1/vaults/{vault}/backups`: opens a backup session.
pub(crate) async fn start(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::Backup, &Resource::Vault { name: &vault, policy: &policy }).await?;
    close_idle_sessions(&state).await;
    let repo = open_repo(&state, &vault).await?;
    let id = identity::codes::random_token(&mut rand_core::OsRng);
    let config = repo.config().clone();
    let key = hex::encode(repo.hasher_key());
    let mut writer = Writer::shared(repo);
    writer.set_checkpoint_packs(state.checkpoint_packs);
    let now = state.clock.now();
    let session = BackupSession {
        vault: vault.clone(),
        user_id: p.user.id.clone(),
        started: now,
        last_used: AtomicI64::new(now),
        writer,
    };
    {
        // Counted and inserted under one lock, so concurrent starts cannot pass the cap.
        let mut sessions = guard(&state.vaults.sessions);
        if sessions.values().filter(|s| s.user_id == p.user.id).count() >= MAX_SESSIONS_PER_USER {
            return Err(ApiError::refused(
                "backup.too_many_sessions",
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("you have {MAX_SESSIONS_PER_USER} backups open already; finish one (or wait 15 minutes for an abandoned one to close)"),
            ));
        }
        if guard(&state.vaults.maintenance).contains(&vault) {
            return Err(ApiError::Conflict(format!("vault {vault} is being pruned; try again in a minute")));
        }
        sessions.insert(id.clone(), Arc::new(session));
    }
    audit(&state, "backup.start", &p.user.username, "success", serde_json::json!({"vault": vault, "backup_id": id}))
        .await?;
    Ok(Json(serde_json::json!({
        "backup_id": id,
        "chunker": config.chunker,
        "compression_level": config.compression_level,
        "chunk_id_key": key,
    })))
}

/// The caller's backup session `id`, re-decided: every use of a session (a `missing` query, a
/// chunk batch, the commit) asks the policy again with the caller's current roles and the
/// vault's current policy and state, so losing the role (or the vault) stops the backup.
async fn session(state: &AppState, p: &Principal, id: &str) -> ApiResult<Arc<BackupSession>> {
    let s = state
        .vaults
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound("no such backup session (it may have ended)".into()))?;
    if s.user_id != p.user.id {
        return Err(ApiError::NotFound("no such backup session (it may have ended)".into()));
    }
    crate::vaults::recheck(state, p, Operation::Backup, &s.vault).await?;
    s.last_used.store(state.clock.now(), Ordering::Relaxed);
    Ok(s)
}

#[derive(Deserialize)]
pub(crate) struct Missing {
    ids: Vec<String>,
}

/// `POST /api/v1/backups/{id}/missing` `{"ids": [hex…]}` → `{"missing": [bool…]}`
pub(crate) async fn missing(
    State(state): St,
    p: Principal,
    Path(id): Path<String>,
    Json(body): Json<Missing>,
) -> ApiResult<Json<serde_json::Value>> {
    let s = session(&state, &p, &id).await?;
    if body.ids.len() > MAX_IDS {
        return Err(ApiError::BadRequest(format!("at most {MAX_IDS} ids per query")));
    }
    let ids = body
        .ids
        .iter()
        .map(|h| Id::from_hex(h).ok_or_else(|| ApiError::BadRequest("ids are 64 hex digits".into())))
        .collect::<ApiResult<Vec<Id>>>()?;
    let missing = repo::ChunkSink::missing(&s.writer, &ids).map_err(repo_err)?;
    Ok(Json(serde_json::json!({ "missing": missing })))
}

/// Parses an upload batch: repeated `id[32] kind u8 flags u8 raw_len u32le len u32le data[len]`.
pub fn parse_batch(body: &[u8]) -> Result<Vec<PreparedChunk>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let head = body.get(at..at + 42).ok_or("truncated chunk header")?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&head[..32]);
        let kind = match head[32] {
            0 => repo::pack::BlobKind::Data,
            1 => repo::pack::BlobKind::Tree,
            k => return Err(format!("unknown chunk kind {k}")),
        };
        let compressed = match head[33] {
            0 => false,
            1 => true,
            f => return Err(format!("unknown chunk flags {f}")),
        };
        let raw_len = u32::from_le_bytes([head[34], head[35], head[36], head[37]]);
        let len = u32::from_le_bytes([head[38], head[39], head[40], head[41]]) as usize;
        let data = body.get(at + 42..at + 42 + len).ok_or("truncated chunk data")?;
        out.push(PreparedChunk { id: Id(id), kind, raw_len, compressed, data: data.to_vec() });
        at += 42 + len;
    }
    Ok(out)
}

/// `POST /api/v1/backups/{id}/chunks` (binary batch): verifies and stores every chunk. The
/// body is read only after the session is re-decided and its length (`Content-Length`,
/// required) is reserved against the user's in-flight budget.
pub(crate) async fn chunks(
    State(state): St,
    p: Principal,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<serde_json::Value>> {
    let s = session(&state, &p, &id).await?;
    let len = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::refused(
                "request.length_required",
                axum::http::StatusCode::LENGTH_REQUIRED,
                "send chunk batches with a Content-Length",
            )
        })?;
    if len > MAX_BATCH as u64 {
        return Err(ApiError::refused(
            "request.too_large",
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("a chunk batch holds at most {MAX_BATCH} bytes"),
        ));
    }
    let reserved = Inflight::reserve(&state.vaults, &p.user.id, len)?;
    let body = axum::body::to_bytes(body, len as usize)
        .await
        .map_err(|_| ApiError::BadRequest("the chunk batch is longer than its Content-Length or was cut off".into()))?;
    let batch = parse_batch(&body).map_err(ApiError::BadRequest)?;
    let n = batch.len();
    let stored: u64 = batch.iter().map(|c| c.data.len() as u64).sum();
    state.metrics.bytes_in.fetch_add(stored, std::sync::atomic::Ordering::Relaxed);
    // The reservation lives as long as the work, not the request: a client that hangs up
    // while its batch is verified does not free its budget early.
    tokio::task::spawn_blocking(move || -> Result<(), repo::Error> {
        let _reserved = reserved;
        // The session's writer verifies every chunk it stores (and skips what is stored).
        for chunk in batch {
            repo::ChunkSink::put(&s.writer, chunk)?;
        }
        Ok(())
    })
    .await
    .map_err(internal)?
    .map_err(repo_err)?;
    Ok(Json(serde_json::json!({ "stored": n, "bytes": stored })))
}

#[derive(Deserialize)]
pub(crate) struct Commit {
    tree: String,
    paths: Vec<String>,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    summary: repo::model::Summary,
}

/// `POST /api/v1/backups/{id}/commit`: makes everything durable, then records the snapshot at
/// the server's time.
pub(crate) async fn commit(
    State(state): St,
    p: Principal,
    Path(id): Path<String>,
    Json(body): Json<Commit>,
) -> ApiResult<Json<serde_json::Value>> {
    let tree = Id::from_hex(&body.tree).ok_or_else(|| ApiError::BadRequest("tree is 64 hex digits".into()))?;
    let parent = match &body.parent {
        Some(h) => Some(Id::from_hex(h).ok_or_else(|| ApiError::BadRequest("parent is 64 hex digits".into()))?),
        None => None,
    };
    session(&state, &p, &id).await?;
    let s = state
        .vaults
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)
        .ok_or(ApiError::NotFound("no such backup session".into()))?;
    // Requests still uploading hold the session; wait for them, but not forever (a client
    // trickling a batch cannot hold a commit open), and decide again after the wait.
    let mut s = s;
    let mut waited = 0u32;
    let session = loop {
        match Arc::try_unwrap(s) {
            Ok(x) => break x,
            Err(back) if waited < COMMIT_WAIT_MS / 20 => {
                s = back;
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(_) => {
                return Err(ApiError::Conflict(
                    "chunk uploads of this backup are still running; the backup was abandoned, start it again".into(),
                ))
            }
        }
    };
    crate::vaults::recheck(&state, &p, Operation::Backup, &session.vault).await?;
    let vault = session.vault.clone();
    let now = state.clock.now_precise();
    let hostname: String = body.hostname.chars().take(255).collect();
    let paths = body.paths.clone();
    let started = session.started;
    let committed =
        tokio::task::spawn_blocking(move || session.writer.commit(tree, paths, hostname, parent, body.summary, now))
            .await
            .map_err(internal)?
            .map_err(repo_err);
    let (snap_id, snap) = match committed {
        Ok(x) => x,
        Err(e) => {
            state.metrics.backups_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
    };
    let m = &state.metrics;
    m.backups_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    m.backup_bytes_read.fetch_add(snap.summary.bytes, std::sync::atomic::Ordering::Relaxed);
    m.backup_bytes_new.fetch_add(snap.summary.new_bytes, std::sync::atomic::Ordering::Relaxed);
    m.backup_seconds_sum.fetch_add((state.clock.now() - started).max(0) as u64, std::sync::atomic::Ordering::Relaxed);
    audit(
        &state,
        "backup.commit",
        &p.user.username,
        "success",
        serde_json::json!({"vault": vault, "snapshot": snap_id.to_hex(), "summary": snap.summary}),
    )
    .await?;
    Ok(Json(serde_json::json!({ "snapshot_id": snap_id.to_hex(), "time": snap.time.unix_timestamp() })))
}

/// `GET /api/v1/vaults/{vault}/snapshots`
pub(crate) async fn snapshots(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::VaultRead, &Resource::Vault { name: &vault, policy: &policy }).await?;
    let repo = open_repo(&state, &vault).await?;
    let list = tokio::task::spawn_blocking(move || repo.snapshots()).await.map_err(internal)?.map_err(repo_err)?;
    let deleted: std::collections::HashMap<String, store::DeletedSnapshot> =
        state.store.deleted_snapshots(&vault).await?.into_iter().map(|d| (d.snapshot.clone(), d)).collect();
    let now = state.clock.now();
    let (mut live, mut gone) = (Vec::new(), Vec::new());
    for (id, s) in &list {
        let protected_until = policy.protected_until(s.time.unix_timestamp());
        let mut v = serde_json::json!({
            "id": id.to_hex(), "short_id": id.short(),
            "time": s.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "paths": s.paths, "hostname": s.hostname, "tree": s.tree.to_hex(), "summary": s.summary,
            "protected_until": protected_until, "protected": protected_until > now,
        });
        match deleted.get(&id.to_hex()) {
            Some(d) => {
                v["deleted_at"] = d.deleted_at.into();
                v["deleted_by"] = d.deleted_by.clone().into();
                v["purge_at"] = d.purge_at.into();
                gone.push(v);
            }
            None => live.push(v),
        }
    }
    Ok(Json(serde_json::json!({ "snapshots": live, "deleted": gone })))
}

/// `GET /api/v1/vaults/{vault}/trees/{id}`: a directory listing (for incremental backups).
pub(crate) async fn tree(
    State(state): St,
    p: Principal,
    Path((vault, id)): Path<(String, String)>,
) -> ApiResult<Json<repo::model::Tree>> {
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::Backup, &Resource::Vault { name: &vault, policy: &policy }).await?;
    let id = Id::from_hex(&id).ok_or_else(|| ApiError::BadRequest("tree ids are 64 hex digits".into()))?;
    let repo = open_repo(&state, &vault).await?;
    let tree = tokio::task::spawn_blocking(move || repo.load_tree(&id)).await.map_err(internal)?.map_err(repo_err)?;
    Ok(Json(tree))
}

/// Listings per `POST /api/v1/vaults/{vault}/trees` (the ids fit the 64 KiB body limit).
pub const MAX_TREES: usize = 900;

#[derive(Deserialize)]
pub(crate) struct TreeIds {
    ids: Vec<String>,
}

/// `POST /api/v1/vaults/{vault}/trees` `{"ids"}` → `{"trees": [...]}`: many listings at once
/// (an incremental backup reads its parent's listings level by level).
pub(crate) async fn trees(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    Json(body): Json<TreeIds>,
) -> ApiResult<Json<TreesAnswer>> {
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::Backup, &Resource::Vault { name: &vault, policy: &policy }).await?;
    if body.ids.len() > MAX_TREES {
        return Err(ApiError::BadRequest(format!("at most {MAX_TREES} listings per request")));
    }
    let ids = body
        .ids
        .iter()
        .map(|h| Id::from_hex(h).ok_or_else(|| ApiError::BadRequest("tree ids are 64 hex digits".into())))
        .collect::<ApiResult<Vec<Id>>>()?;
    let repo = open_repo(&state, &vault).await?;
    let trees =
        tokio::task::spawn_blocking(move || ids.iter().map(|id| repo.load_tree(id)).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(internal)?
            .map_err(repo_err)?;
    Ok(Json(TreesAnswer { trees }))
}

/// Answer of `POST /api/v1/vaults/{vault}/trees` (serialised straight from the listings).
#[derive(serde::Serialize)]
pub(crate) struct TreesAnswer {
    trees: Vec<repo::model::Tree>,
}

/// Upload batches may be large; everything else keeps the small global limit.
pub const UPLOAD_LIMIT: usize = MAX_BATCH + 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_parse_and_truncation_is_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(&[7u8; 32]);
        b.extend_from_slice(&[0, 1]);
        b.extend_from_slice(&5u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(b"abc");
        let parsed = parse_batch(&b).unwrap();
        assert_eq!(parsed.len(), 1);
        assert!(parsed[0].compressed && parsed[0].raw_len == 5 && parsed[0].data == b"abc");
        assert!(parse_batch(&b[..b.len() - 1]).is_err());
        assert!(parse_batch(&b[..10]).is_err());
    }

    /// The wire form of one chunk, as `HttpSink::put` writes it (`len` may lie).
    fn encode(id: [u8; 32], kind: u8, flags: u8, raw_len: u32, len: u32, data: &[u8]) -> Vec<u8> {
        let mut b = id.to_vec();
        b.extend_from_slice(&[kind, flags]);
        b.extend_from_slice(&raw_len.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    fn reencode(chunks: &[PreparedChunk]) -> Vec<u8> {
        let mut b = Vec::new();
        for c in chunks {
            let kind = u8::from(c.kind == repo::pack::BlobKind::Tree);
            b.extend(encode(c.id.0, kind, u8::from(c.compressed), c.raw_len, c.data.len() as u32, &c.data));
        }
        b
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a client sends, the parser answers with chunks or a reason, and what it
        /// accepts is exactly the body (nothing skipped, nothing invented).
        #[test]
        fn arbitrary_bytes_never_panic_the_batch_parser(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(chunks) = parse_batch(&body) {
                prop_assert_eq!(reencode(&chunks), body);
            }
        }

        /// Well-formed chunks followed by one whose declared length runs past the end of the
        /// body (by one byte up to 4 GiB) are refused as a whole, without allocating what the
        /// header claims; any cut through a well-formed batch is refused too.
        #[test]
        fn batches_whose_declared_len_exceeds_the_body_are_refused(
            good in proptest::collection::vec(
                (any::<[u8; 32]>(), 0u8..2, 0u8..2, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)),
                0..6,
            ),
            data in proptest::collection::vec(any::<u8>(), 0..64),
            excess in prop_oneof![1u32..16, any::<u32>()],
            kind in any::<u8>(),
            flags in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut body = Vec::new();
            let mut boundaries = vec![0];
            for (id, kind, flags, raw_len, data) in &good {
                body.extend(encode(*id, *kind, *flags, *raw_len, data.len() as u32, data));
                boundaries.push(body.len());
            }
            prop_assert_eq!(parse_batch(&body).map(|c| c.len()).ok(), Some(good.len()));
            if !body.is_empty() {
                // Only a cut between two chunks leaves a well-formed (shorter) batch.
                let at = cut.index(body.len());
                prop_assert_eq!(parse_batch(&body[..at]).is_ok(), boundaries.contains(&at));
            }
            let claimed = (data.len() as u32).saturating_add(excess);
            body.extend(encode([7; 32], kind, flags, 0, claimed, &data));
            prop_assert!(parse_batch(&body).is_err());
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct CheckBody {
    #[serde(default)]
    read_data: bool,
}

/// `POST /api/v1/vaults/{vault}/check` `{"read_data"?}`: the engine's check on the server.
pub(crate) async fn check(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    body: Option<Json<CheckBody>>,
) -> ApiResult<Json<repo::check::CheckReport>> {
    let read_data = body.map(|b| b.0.read_data).unwrap_or(false);
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::Check, &Resource::Vault { name: &vault, policy: &policy }).await?;
    let repo = open_repo(&state, &vault).await?;
    let report = tokio::task::spawn_blocking(move || repo::check::check(&repo, read_data))
        .await
        .map_err(internal)?
        .map_err(repo_err)?;
    audit(&state, "vault.check", &p.user.username, if report.ok() { "ok" } else { "errors" }, serde_json::json!({"vault": vault, "read_data": read_data, "errors": report.errors.len(), "warnings": report.warnings.len()})).await?;
    Ok(Json(report))
}
