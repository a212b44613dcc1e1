//! Strongroom's HTTP server: the router, start-up, and serving with graceful shutdown.
//!
//! Handlers are thin (extract, call `identity` and `store`, convert); one error type with
//! stable codes ([`error::ApiError`]) is mapped to HTTP in one place.

pub mod approvals;
pub mod audit_api;
pub mod audit_log;
pub mod auth;
pub mod backups;
pub mod console;
pub mod critical;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod pages;
pub mod retention;
pub mod routes;
pub mod state;
pub mod vaults;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{delete, get, patch, post};
use axum::Router;

pub use state::{open_state, rotate_token_key, AppState, Clock, ServerConfig, StartError};

/// Largest request body accepted (WebAuthn responses are a few KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// The whole application; built once and tested without a socket or served with one.
pub fn app(state: Arc<AppState>) -> Router {
    use routes::*;
    // What anyone can reach without signing in: rate-limited per client address (and per
    // account inside the handlers).
    let open = Router::new()
        .route("/enroll/{token}/start", post(enroll_start))
        .route("/enroll/{token}/finish", post(enroll_finish))
        .route("/auth/login/start", post(login_start))
        .route("/auth/login/finish", post(login_finish))
        .route("/oauth/device_authorization", post(device_authorization))
        .route("/oauth/token", post(token))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::limit_unauthenticated));
    let api = Router::new()
        .merge(open)
        .route("/auth/logout", post(logout))
        .route("/me", get(me))
        .route("/me/credentials", get(my_credentials))
        .route("/me/credentials/add", post(add_credential_link))
        .route("/me/credentials/{id}", patch(rename_credential))
        .route("/me/credentials/{id}", delete(revoke_credential))
        .route("/invites", post(invite))
        .route("/users", get(list_users))
        .route("/vaults", post(vaults::create_vault).get(vaults::list_vaults))
        .route("/vaults/{name}", get(vaults::show_vault).delete(critical::delete_vault))
        .route("/vaults/{name}/undelete", post(critical::undelete_vault))
        .route("/vaults/{name}/snapshots/{id}", delete(critical::delete_snapshot))
        .route("/vaults/{name}/snapshots/{id}/undelete", post(critical::undelete_snapshot))
        .route("/vaults/{name}/snapshots/{id}/tree", get(console::tree))
        .route("/approvals", get(console::inbox))
        .route("/restores/{id}/job", get(approvals::job))
        .route("/audit/credentials/{id}", get(console::credential))
        .route("/audit/export", get(console::export_tar))
        .route("/vaults/{name}/retention", post(critical::set_retention))
        .route("/vaults/{name}/immutability", post(critical::set_immutability))
        .route("/vaults/{name}/policy", post(critical::set_policy))
        .route("/vaults/{name}/retire-key", post(critical::retire_key))
        .route("/roles", post(vaults::assign_role).get(vaults::list_roles))
        .route("/roles/revoke", post(vaults::revoke_role))
        .route("/policy/simulate", post(vaults::simulate))
        .route("/vaults/{name}/backups", post(backups::start))
        .route("/vaults/{name}/snapshots", get(backups::snapshots))
        .route("/vaults/{name}/check", post(backups::check))
        .route("/vaults/{name}/forget", post(retention::forget))
        .route("/vaults/{name}/prune", post(retention::prune))
        .route("/vaults/{name}/rotate-key", post(retention::rotate_key))
        .route("/vaults/{name}/trees/{id}", get(backups::tree))
        .route("/vaults/{name}/trees", post(backups::trees))
        .route("/backups/{id}/missing", post(backups::missing))
        .route("/backups/{id}/commit", post(backups::commit))
        .route("/vaults/{name}/restores", post(approvals::request))
        .route("/approvals/{id}", get(approvals::show))
        .route("/approvals/{id}/start", post(approvals::start))
        .route("/approvals/{id}/finish", post(approvals::finish))
        .route("/approvals/{id}/deny", post(approvals::deny))
        .route("/restores/{id}", get(approvals::status))
        .route("/restores/{id}/plan", get(approvals::plan))
        .route("/restores/{id}/chunks", post(approvals::chunks))
        .route("/restores/{id}/done", post(approvals::done))
        .route("/users/{username}/disable", post(disable_user))
        .route("/users/{username}/expiry", post(routes::set_user_expiry))
        .route("/audit/key", get(audit_api::key))
        .route("/audit/checkpoint", get(audit_api::checkpoint).post(audit_api::sign_checkpoint))
        .route("/audit/checkpoints", get(audit_api::checkpoints))
        .route("/audit/records", get(audit_api::records))
        .route("/audit/proof/inclusion", get(audit_api::inclusion))
        .route("/audit/proof/consistency", get(audit_api::consistency))
        .route("/device/approve/start", post(device_approve_start))
        .route("/device/approve/finish", post(device_approve_finish))
        .route("/device/deny", post(device_deny))
        .fallback(not_found);
    Router::new()
        .nest("/api/v1", api)
        .route("/.well-known/openid-configuration", get(openid_configuration))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/", get(pages::index))
        .route("/login", get(pages::login_page))
        .route("/enroll/{token}", get(pages::enroll_page))
        .route("/device", get(pages::device_page))
        .route("/credentials", get(pages::credentials_page))
        .route("/approvals/{id}", get(pages::approval_page))
        .route("/approvals", get(pages::inbox_page))
        .route("/vaults", get(pages::vaults_page))
        .route("/vaults/{name}", get(pages::vault_page))
        .route("/vaults/{name}/snapshots/{id}", get(pages::snapshot_page))
        .route("/restores/{id}", get(pages::restore_page))
        .route("/users", get(pages::users_page))
        .route("/audit", get(pages::audit_page))
        .route("/assets/app.js", get(pages::app_js))
        .route("/assets/console.js", get(pages::console_js))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        // Chunk uploads are the one route with large bodies.
        .merge(
            Router::new()
                .route("/api/v1/backups/{id}/chunks", post(backups::chunks))
                .layer(axum::extract::DefaultBodyLimit::max(backups::UPLOAD_LIMIT))
                .layer(tower_http::limit::RequestBodyLimitLayer::new(backups::UPLOAD_LIMIT)),
        )
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request with the route template, never the raw path: enrollment tokens
/// travel in paths and must not reach the log.
async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".into());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::info!(%method, route, status = resp.status().as_u16(), ms = start.elapsed().as_millis() as u64, "request");
    resp
}

/// `GET /metrics`: Prometheus text, for a token of someone who may read the audit log (Owner,
/// Security Admin, Auditor), or for anyone with `--open-metrics`.
async fn metrics_text(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    p: Result<auth::Principal, error::ApiError>,
) -> Result<impl axum::response::IntoResponse, error::ApiError> {
    if !state.open_metrics {
        let p = p?;
        let principal = vaults::policy_principal(&state, &p.user.id).await?;
        let auth = vaults::auth_context(&p);
        let decision = policy::decide(
            &principal,
            &auth,
            policy::Operation::AuditRead,
            &policy::Resource::Server,
            None,
            state.clock.now(),
        );
        if let policy::Decision::Deny { reason } = decision {
            return Err(error::ApiError::Denied(reason));
        }
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()))
}

/// Creates the first Owner's enrollment link if there are no users and no open link yet;
/// returns it so the caller can print it.
pub async fn first_start_link(state: &AppState) -> Result<Option<String>, error::ApiError> {
    if !state.store.list_users().await?.is_empty() {
        return Ok(None);
    }
    let url = routes::create_enroll_link(state, "owner", "owner", None, None, "first-start").await?;
    Ok(Some(url))
}

/// Device codes, enrollment links, refresh tokens and sessions stay this long after they
/// expire (so a late poll or click is told "expired", not "unknown"), then housekeeping deletes
/// them; ceremony states go as soon as they expire.
pub const PURGE_GRACE_SECONDS: i64 = 24 * 3600;

/// Housekeeping every [`audit_log::CHECKPOINT_SECONDS`]: signs an audit checkpoint if the log
/// grew (besides every [`audit_log::CHECKPOINT_RECORDS`] records), rotates vault keys whose
/// policy says they are due, purges expired sign-in state (ceremonies, device codes, links,
/// sessions) and rate-limit buckets, purges deleted snapshots and vaults whose retention has passed and
/// runs approved critical operations not run yet (at start also those a previous process was
/// running when it died); stops when the server state is gone.
fn spawn_housekeeping(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(audit_log::CHECKPOINT_SECONDS));
        tick.tick().await;
        if let Some(state) = weak.upgrade() {
            if let Err(e) = critical::resume(&state, true).await {
                tracing::error!(error = %e, "could not finish interrupted critical operations");
            }
        }
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            if let Err(e) = critical::resume(&state, false).await {
                tracing::error!(error = %e, "could not run approved critical operations");
            }
            if let Err(e) = critical::purge_due(&state).await {
                tracing::error!(error = %e, "could not purge deleted snapshots or vaults");
            }
            match state.store.purge_expired(state.clock.now(), PURGE_GRACE_SECONDS).await {
                Ok(p) if p.total() > 0 => tracing::info!(purged = ?p, "purged expired sign-in state"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not purge expired sign-in state"),
            }
            state.limits.forget_idle();
            if let Err(e) = audit_refusal_summaries(&state, false).await {
                tracing::error!(error = %e, "could not audit refused sign-ins");
            }
            if let Err(e) = state.audit_log.checkpoint(&state.store, state.clock.now()).await {
                tracing::error!(error = %e, "could not sign an audit checkpoint");
            }
            match retention::rotate_due_keys(&state).await {
                Ok(done) => {
                    for (vault, version) in done {
                        tracing::info!(%vault, version, "rotated the vault key (policy)");
                    }
                }
                Err(e) => tracing::error!(error = %e, "scheduled key rotation failed"),
            }
        }
    });
}

/// Writes one `auth.refused_summary` audit record per source whose window of refused sign-ins
/// is over (every window when `flush`); returns how many.
pub async fn audit_refusal_summaries(state: &AppState, flush: bool) -> Result<usize, error::ApiError> {
    let summaries = state.limits.summaries(flush);
    let n = summaries.len();
    for summary in summaries {
        routes::audit(state, "auth.refused_summary", "", "refused", summary).await?;
    }
    Ok(n)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    spawn_housekeeping(&state);
    axum::serve(listener, app(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves HTTPS with rustls on `addr` until `shutdown` resolves (graceful: in-flight requests
/// get 10 seconds to finish).
pub async fn serve_tls(
    state: Arc<AppState>,
    addr: SocketAddr,
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    spawn_housekeeping(&state);
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert_pem, key_pem).await?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    axum_server::bind_rustls(addr, config)
        .handle(handle)
        .serve(app(state).into_make_service_with_connect_info::<SocketAddr>())
        .await
}
