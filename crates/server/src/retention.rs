//! Retention on the server: `forget` applies keep rules to a vault's snapshots and `prune`
//! removes the data no snapshot references. Both run here, on snapshot times the server's own
//! clock recorded at commit, so a client cannot backdate snapshots to get good ones deleted.
//! Prune rewrites packs, so it takes the vault exclusively (no backup or restore meanwhile).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use policy::{Operation, Resource};
use repo::maintenance::{PruneOptions, Retention};
use serde::Deserialize;

use crate::auth::Principal;
use crate::backups::{begin_maintenance, evict_repo, open_fresh, open_repo, vault_policy};
use crate::error::{ApiError, ApiResult};
use crate::routes::audit;
use crate::state::AppState;
use crate::vaults::authorize;

type St = State<Arc<AppState>>;

/// Largest count a keep rule accepts (beyond it a rule keeps everything anyway).
const MAX_KEEP: usize = 1_000_000;

/// Body of `POST /api/v1/vaults/{vault}/forget`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForgetBody {
    #[serde(default)]
    keep_last: usize,
    #[serde(default)]
    keep_daily: usize,
    #[serde(default)]
    keep_weekly: usize,
    #[serde(default)]
    keep_monthly: usize,
    #[serde(default)]
    dry_run: bool,
    /// Prune right after forgetting.
    #[serde(default)]
    prune: bool,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn engine_err(e: repo::Error) -> ApiError {
    match e {
        repo::Error::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `POST /api/v1/vaults/{vault}/forget`: applies keep rules (Retention on the vault).
pub(crate) async fn forget(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    Json(body): Json<ForgetBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::Retention, &Resource::Vault { name: &vault, policy: &policy }).await?;
    let rules = Retention {
        keep_last: body.keep_last,
        keep_daily: body.keep_daily,
        keep_weekly: body.keep_weekly,
        keep_monthly: body.keep_monthly,
    };
    if rules.is_empty() {
        return Err(ApiError::BadRequest(
            "give at least one keep rule (keep_last, keep_daily, keep_weekly, keep_monthly): none would delete every snapshot"
                .into(),
        ));
    }
    if [rules.keep_last, rules.keep_daily, rules.keep_weekly, rules.keep_monthly].iter().any(|&n| n > MAX_KEEP) {
        return Err(ApiError::BadRequest(format!("keep counts are at most {MAX_KEEP}")));
    }
    // Prune takes the vault for itself; take it before forgetting, so a forget+prune either
    // runs whole or not at all.
    let maintenance = if body.prune && !body.dry_run { Some(begin_maintenance(&state, &vault).await?) } else { None };
    let repo = open_repo(&state, &vault).await?;
    let dry_run = body.dry_run;
    // Keep rules apply to the snapshots in use; deleted ones are already on their way out.
    let live = crate::critical::live_snapshots(&state, &vault).await?;
    let mut decisions = repo::maintenance::plan_forget(&live, &rules).map_err(engine_err)?;
    // Retention protects every snapshot younger than the vault's retention days, whatever the
    // rules say; the rest go to soft delete (or straight away when soft delete is off).
    let now = state.clock.now();
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        if policy.protected_until(d.time.unix_timestamp()) > now {
            d.keep = true;
            d.reasons.push("retention".into());
        }
    }
    let removed: Vec<String> = decisions.iter().filter(|d| !d.keep).map(|d| d.id.to_hex()).collect();
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            crate::critical::delete_snapshot_as(&state, &vault, d.id, &p.user.username, &policy).await?;
        }
    }
    audit(
        &state,
        "vault.forget",
        &p.user.username,
        if dry_run { "dry_run" } else { "success" },
        serde_json::json!({"vault": vault, "rules": {"keep_last": body.keep_last, "keep_daily": body.keep_daily, "keep_weekly": body.keep_weekly, "keep_monthly": body.keep_monthly}, "removed": removed}),
    )
    .await?;
    let prune = match maintenance {
        Some(held) => Some(run_prune(&state, &p, &vault, repo, PruneOptions::default(), held).await?),
        None => None,
    };
    Ok(Json(serde_json::json!({
        "vault": vault, "dry_run": dry_run, "snapshots": decisions, "removed": removed.len(),
        "kept": decisions.len() - removed.len(), "prune": prune,
    })))
}

/// Body of `POST /api/v1/vaults/{vault}/prune`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PruneBody {
    #[serde(default)]
    dry_run: bool,
    /// Repack packs with more than this percentage unreferenced (default 20).
    #[serde(default)]
    max_unused_percent: Option<u8>,
}

/// `POST /api/v1/vaults/{vault}/prune`: removes unreferenced data (Retention on the vault).
pub(crate) async fn prune(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
    body: Option<Json<PruneBody>>,
) -> ApiResult<Json<repo::maintenance::PruneReport>> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::Retention, &Resource::Vault { name: &vault, policy: &policy }).await?;
    let max_unused_percent = body.max_unused_percent.unwrap_or(20);
    if max_unused_percent > 100 {
        return Err(ApiError::BadRequest("max_unused_percent is 0 to 100".into()));
    }
    let held = begin_maintenance(&state, &vault).await?;
    let repo = open_repo(&state, &vault).await?;
    let opts = PruneOptions { max_unused_percent, dry_run: body.dry_run };
    Ok(Json(run_prune(&state, &p, &vault, repo, opts, held).await?))
}

async fn run_prune(
    state: &AppState,
    p: &Principal,
    vault: &str,
    repo: Arc<repo::Repository>,
    opts: PruneOptions,
    held: crate::backups::MaintenanceGuard,
) -> ApiResult<repo::maintenance::PruneReport> {
    let dry_run = opts.dry_run;
    let result = tokio::task::spawn_blocking(move || repo::maintenance::prune(&repo, &opts)).await.map_err(internal)?;
    drop(held);
    let (outcome, details) = match &result {
        Ok(r) => (if dry_run { "dry_run" } else { "success" }, serde_json::json!({"vault": vault, "report": r})),
        Err(e) => ("failure", serde_json::json!({"vault": vault, "error": e.to_string()})),
    };
    audit(state, "vault.prune", &p.user.username, outcome, details).await?;
    result.map_err(engine_err)
}

/// `POST /api/v1/vaults/{vault}/rotate-key` (Owner or Security Admin): a new key-encryption key
/// version for everything written from now on; every pack's data key rewrapped under it, no
/// data re-encrypted. Exclusive like prune.
pub(crate) async fn rotate_key(
    State(state): St,
    p: Principal,
    Path(vault): Path<String>,
) -> ApiResult<Json<repo::maintenance::RotateReport>> {
    let policy = vault_policy(&state, &vault).await?;
    authorize(&state, &p, Operation::PolicyChange, &Resource::Vault { name: &vault, policy: &policy }).await?;
    let held = begin_maintenance(&state, &vault).await?;
    Ok(Json(rotate(&state, &vault, &p.user.username, "requested", held).await?))
}

pub(crate) async fn rotate(
    state: &Arc<AppState>,
    vault: &str,
    actor: &str,
    why: &str,
    held: crate::backups::MaintenanceGuard,
) -> ApiResult<repo::maintenance::RotateReport> {
    let repo = open_fresh(state, vault).await?;
    let master = state.master_key.clone();
    let now = time::OffsetDateTime::from_unix_timestamp(state.clock.now()).map_err(internal)?;
    let result = tokio::task::spawn_blocking(move || repo::maintenance::rotate_key(repo, &master, now))
        .await
        .map_err(internal)?;
    evict_repo(state, vault);
    drop(held);
    let (outcome, details) = match &result {
        Ok(r) => ("success", serde_json::json!({"vault": vault, "reason": why, "report": r})),
        Err(e) => ("failure", serde_json::json!({"vault": vault, "reason": why, "error": e.to_string()})),
    };
    audit(state, "vault.rotate_key", actor, outcome, details).await?;
    result.map_err(engine_err)
}

/// Rotates the key of every vault whose policy asks for rotation every N days and whose newest
/// key version is that old (skipping vaults in use; they are tried again next time). Returns
/// the vaults rotated and their new versions. Run by the server's housekeeping every minute.
pub async fn rotate_due_keys(state: &Arc<AppState>) -> ApiResult<Vec<(String, u32)>> {
    let mut done = Vec::new();
    for v in state.store.list_vaults().await? {
        if v.deleted_at.is_some() {
            continue;
        }
        let policy: policy::VaultPolicy = serde_json::from_str(&v.policy_json).map_err(internal)?;
        let Some(days) = policy.rotate_key_days else { continue };
        let repo = open_repo(state, &v.name).await?;
        let newest = repo.kek_versions().into_iter().max().unwrap_or(0);
        let made = repo.kek_created(newest).map(|t| t.unix_timestamp()).unwrap_or(0);
        if state.clock.now() - made < i64::from(days) * 86_400 {
            continue;
        }
        let Ok(held) = begin_maintenance(state, &v.name).await else { continue };
        let why = format!("policy: every {days} days");
        let report = rotate(state, &v.name, "scheduler", &why, held).await?;
        done.push((v.name.clone(), report.new_version));
    }
    Ok(done)
}
