//! Server-rendered pages: plain HTML, one stylesheet inline, two scripts served by the server
//! itself (no CDN, no build step): `/assets/app.js` (WebAuthn ceremonies) and
//! `/assets/console.js` (the data pages, rendered from the same JSON API the CLI uses, with
//! `textContent` only). Dynamic values in the HTML are escaped. docs/console.md says why.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::auth::{cookie, live_session};
use crate::state::{AppState, SESSION_COOKIE};

const APP_JS: &str = include_str!("../assets/app.js");
const CONSOLE_JS: &str = include_str!("../assets/console.js");

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn page(title: &str, name: &str, data: &str, body: &str) -> Response {
    render(title, name, data, body, "")
}

/// A console page: the navigation, then the page.
fn console_page(title: &str, name: &str, data: &str, body: &str) -> Response {
    let nav = r#"<header><nav aria-label="Console"><a href="/vaults">Vaults</a> <a href="/approvals">Approvals</a> <a href="/audit">Audit</a> <a href="/users">Users</a> <a href="/credentials">My passkeys</a> <button id="nav-logout" type="button">Sign out</button></nav></header>"#;
    render(title, name, data, body, nav)
}

fn render(title: &str, name: &str, data: &str, body: &str, nav: &str) -> Response {
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Strongroom</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:68rem;margin:1rem auto;padding:0 1rem;line-height:1.5;color:#1b1b1b;overflow-wrap:break-word}}
h1{{font-size:1.5rem}} h2{{font-size:1.2rem;margin-top:1.5rem}} button{{font-size:1rem;padding:.4rem .9rem;margin:.2rem 0;cursor:pointer}}
input,select,textarea{{font-size:1rem;padding:.4rem;width:100%;max-width:24rem;box-sizing:border-box}}
.status{{margin-top:1rem;min-height:1.5rem}} .error{{color:#a00000}} code{{font-size:1rem;word-break:break-all}}
:focus{{outline:3px solid #1a5fb4;outline-offset:2px}}
nav{{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;border-bottom:1px solid #ccc;padding:.5rem 0}} nav button{{margin-left:auto}}
table{{border-collapse:collapse;width:100%;table-layout:auto}} th,td{{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}} th,td.nw{{white-space:nowrap}} td.wrap{{overflow-wrap:anywhere;min-width:12rem}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}} dt{{font-weight:600}} dd{{margin:0}}
.badge{{display:inline-block;padding:.3rem .7rem;border-radius:.3rem;font-weight:600}} .ok{{background:#dff3e4;color:#0b4f1c}} .bad{{background:#fbe0e0;color:#7a0000}}
.visually-hidden{{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}}
form{{margin:.5rem 0}} label{{display:block;margin-top:.4rem}} ul.cards>li{{margin-bottom:1rem}} progress{{width:100%;max-width:30rem}}
</style></head>
<body data-page="{name}" {data}>{nav}<main><h1>{title}</h1>{body}<p id="status" class="status" role="status" aria-live="polite"></p></main>
<script src="/assets/app.js"></script><script src="/assets/console.js"></script></body></html>"#
    );
    let mut r = Html(html).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    r
}

/// `GET /assets/app.js`
pub(crate) async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}

/// `GET /assets/console.js`
pub(crate) async fn console_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], CONSOLE_JS).into_response()
}

/// The signed-in user of a page request, or the redirect to sign in first and come back.
async fn signed_in(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    here: &str,
) -> Result<crate::auth::Principal, Response> {
    let principal = match cookie(headers, SESSION_COOKIE) {
        Some(t) => live_session(state, &identity::codes::token_hash(t), state.clock.now()).await.ok(),
        None => None,
    };
    principal.ok_or_else(|| Redirect::to(&format!("/login?next={}", url_encode(here))).into_response())
}

/// Keeps what may appear in a path segment of ours (vault names, ids).
fn segment(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(128).collect()
}

/// `GET /vaults`
pub(crate) async fn vaults_page(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(r) = signed_in(&state, &headers, "/vaults").await {
        return r;
    }
    console_page(
        "Vaults",
        "vaults",
        "",
        r#"<table id="vaults" aria-label="Vaults"><thead><tr><th scope="col">Vault</th><th scope="col">Kind</th><th scope="col">Size</th><th scope="col">Snapshots</th><th scope="col">Last backup</th><th scope="col">Policy</th></tr></thead><tbody></tbody></table>
<p>New vaults and backups: <code>strongroom vault create NAME</code>, <code>strongroom backup --vault NAME PATH…</code>.</p>"#,
    )
}

/// `GET /vaults/{name}`: snapshots, deleted snapshots, retention and immutability.
pub(crate) async fn vault_page(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let name = segment(&name);
    if let Err(r) = signed_in(&state, &headers, &format!("/vaults/{name}")).await {
        return r;
    }
    console_page(
        &format!("Vault {name}"),
        "vault",
        &format!(r#"data-vault="{}""#, esc(&name)),
        r#"<dl id="vault-summary"></dl>
<h2>Snapshots</h2>
<table id="snapshots" aria-label="Snapshots"><thead><tr><th scope="col">Snapshot</th><th scope="col">Time</th><th scope="col">Host</th><th scope="col">Paths</th><th scope="col">Size</th><th scope="col">Protected</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead><tbody></tbody></table>
<section id="deleted-section" hidden><h2>Deleted snapshots</h2>
<table id="deleted" aria-label="Deleted snapshots"><thead><tr><th scope="col">Snapshot</th><th scope="col">Time</th><th scope="col">Deleted by</th><th scope="col">Purged after</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead><tbody></tbody></table></section>
<h2>Protection</h2>
<form id="retention-form"><label for="retention-days">Retention in days (snapshots protected, deleted things recoverable)</label><input id="retention-days" type="number" min="0" max="3650" required> <button type="submit">Set retention</button></form>
<form id="immutability-form"><label for="immutability">Immutability</label><select id="immutability"><option value="disabled">disabled</option><option value="enabled">enabled</option><option value="locked">locked (for good)</option></select> <button type="submit">Set immutability</button></form>
<p><button id="delete-vault" type="button">Delete vault</button><button id="undelete-vault" type="button" hidden>Undelete vault</button></p>
<div id="gated" aria-live="polite"></div>"#,
    )
}

/// `GET /vaults/{name}/snapshots/{id}?path=`: browse a snapshot, request a restore.
pub(crate) async fn snapshot_page(
    State(state): State<Arc<AppState>>,
    Path((name, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let (name, id) = (segment(&name), segment(&id));
    if let Err(r) = signed_in(&state, &headers, &format!("/vaults/{name}/snapshots/{id}")).await {
        return r;
    }
    console_page(
        &format!("Snapshot {} of {name}", id.get(..8).unwrap_or(&id)),
        "snapshot",
        &format!(r#"data-vault="{}" data-snapshot="{}""#, esc(&name), esc(&id)),
        &format!(
            r#"<p><a href="/vaults/{v}">Back to vault {n}</a></p>
<nav aria-label="Folder" id="crumbs"></nav>
<table id="entries" aria-label="Files"><thead><tr><th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Size</th><th scope="col">Modified</th></tr></thead><tbody></tbody></table>
<h2>Restore</h2>
<form id="restore-form"><label for="restore-paths">Paths to restore, one per line (empty: everything)</label><textarea id="restore-paths" rows="3"></textarea>
<label for="restore-target">Restore into (a new directory under the server's restore directory)</label><input id="restore-target" required pattern="[A-Za-z0-9._-]+" title="letters, digits, . _ - (one name, no /)">
<button type="submit">Request restore</button></form>
<div id="requested" aria-live="polite"></div>"#,
            v = esc(&name),
            n = esc(&name),
        ),
    )
}

/// `GET /restores/{id}`: a server-side restore's progress, live.
pub(crate) async fn restore_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let id = segment(&id);
    if let Err(r) = signed_in(&state, &headers, &format!("/restores/{id}")).await {
        return r;
    }
    console_page(
        "Restore",
        "restore",
        &format!(r#"data-restore="{}""#, esc(&id)),
        r#"<p>Status: <strong id="job-status">…</strong></p>
<p><label for="progress">Progress</label><progress id="progress" max="1" value="0"></progress></p>
<dl id="job"></dl>"#,
    )
}

/// `GET /approvals`: the inbox.
pub(crate) async fn inbox_page(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(r) = signed_in(&state, &headers, "/approvals").await {
        return r;
    }
    console_page(
        "Approvals",
        "inbox",
        "",
        r#"<h2>Waiting for you</h2><ul id="waiting" class="cards" aria-label="Waiting for you"></ul>
<h2>Your pending requests</h2><ul id="mine" aria-label="Your pending requests"></ul>"#,
    )
}

/// `GET /users`: users, roles, invites and the policy simulator.
pub(crate) async fn users_page(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(r) = signed_in(&state, &headers, "/users").await {
        return r;
    }
    let roles: String =
        policy::Role::ALL.iter().map(|r| format!(r#"<option value="{0}">{0}</option>"#, r.as_str())).collect();
    let ops: String = policy::Operation::ALL
        .iter()
        .map(|o| {
            let v = serde_json::to_value(o).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            format!(r#"<option value="{0}">{0}</option>"#, esc(&v))
        })
        .collect();
    console_page(
        "Users and roles",
        "users",
        "",
        &format!(
            r#"<table id="users" aria-label="Users"><thead><tr><th scope="col">User</th><th scope="col">Roles</th><th scope="col">State</th><th scope="col">Account expires</th></tr></thead><tbody></tbody></table>
<h2>Invite</h2>
<form id="invite-form"><label for="invite-user">New user's name</label><input id="invite-user" required autocomplete="off">
<label for="invite-role">Role</label><select id="invite-role">{roles}</select> <button type="submit">Create invite</button></form>
<div id="invite-link" aria-live="polite"></div>
<h2>Roles</h2>
<table id="roles" aria-label="Role assignments"><thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">Where</th></tr></thead><tbody></tbody></table>
<form id="role-form"><label for="role-user">User</label><input id="role-user" autocomplete="off">
<label for="role-role">Role</label><select id="role-role">{roles}</select>
<label for="role-vault">Vault (empty: every vault)</label><input id="role-vault" autocomplete="off">
<button id="assign" type="button">Assign role</button> <button id="revoke" type="button">Revoke role</button></form>
<div id="gated" aria-live="polite"></div>
<h2>Policy simulator</h2>
<form id="simulate-form"><label for="sim-user">What would user</label><input id="sim-user" required autocomplete="off">
<label for="sim-op">need to</label><select id="sim-op">{ops}</select>
<label for="sim-vault">on vault (empty: the server)</label><input id="sim-vault" autocomplete="off">
<button type="submit">Simulate</button></form>
<ul id="sim-result" aria-live="polite"></ul>"#
        ),
    )
}

/// `GET /audit`: the log, verified in the browser against the signed checkpoint.
pub(crate) async fn audit_page(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(r) = signed_in(&state, &headers, "/audit").await {
        return r;
    }
    console_page(
        "Audit log",
        "audit",
        "",
        r#"<p><span id="badge" class="badge" role="status" aria-live="polite">Verifying the latest checkpoint…</span> <a href="/api/v1/audit/export" download>Export (tar, for strongroom audit verify)</a></p>
<form id="audit-filter"><label for="audit-search">Search</label><input id="audit-search" type="search">
<label for="audit-kind">Kind</label><select id="audit-kind"><option value="">all</option></select>
<label for="audit-outcome">Outcome</label><select id="audit-outcome"><option value="">all</option><option>success</option><option>approved</option><option>allow</option><option>deny</option><option>denied</option><option>refused</option><option>failure</option><option>pending_approval</option></select></form>
<p id="audit-count"></p>
<table id="audit" aria-label="Audit records"><thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Kind</th><th scope="col">Actor</th><th scope="col">Outcome</th><th scope="col">About</th></tr></thead><tbody></tbody></table>"#,
    )
}

/// `GET /enroll/{token}`
pub(crate) async fn enroll_page(Path(token): Path<String>) -> Response {
    page(
        "Create your passkey",
        "enroll",
        &format!(r#"data-token="{}""#, esc(&token)),
        r#"<p>This one-time link lets you create a passkey for Strongroom. Your authenticator will ask for your PIN or biometric.</p>
<p><label for="cred-name">Name for this passkey (optional)</label><br><input id="cred-name" autocomplete="off"></p>
<button id="create" type="button">Create passkey</button>
<p id="after" hidden><a href="/login">Continue to sign in</a></p>"#,
    )
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: `next` parsed as a URL against the server's public URL and
/// kept only if it stays on the server's own origin (so `/\evil.example/x`, `//evil.example`,
/// `https://evil.example` and `javascript:` all fall back to `/vaults`); returned as a path.
pub fn safe_next(public: &url::Url, next: &str) -> String {
    let fallback = "/vaults".to_string();
    if next.is_empty() || next.len() > 2048 || next.chars().any(|c| c.is_control()) {
        return fallback;
    }
    match public.join(next) {
        Ok(u)
            if u.origin() == public.origin()
                && matches!(u.scheme(), "http" | "https")
                && !u.path().starts_with("//")
                && !u.path().starts_with("/\\") =>
        {
            let mut out = u.path().to_string();
            if let Some(q) = u.query() {
                out.push('?');
                out.push_str(q);
            }
            out
        }
        _ => fallback,
    }
}

/// `GET /login`
pub(crate) async fn login_page(State(state): State<Arc<AppState>>, Query(q): Query<LoginQuery>) -> Response {
    page(
        "Sign in",
        "login",
        &format!(r#"data-next="{}""#, esc(&safe_next(state.rp.origin(), &q.next))),
        r#"<p><label for="username">User name (optional with a discoverable passkey)</label><br>
<input id="username" autocomplete="username webauthn"></p>
<button id="signin" type="button">Sign in with a passkey</button>"#,
    )
}

#[derive(Deserialize)]
pub(crate) struct DeviceQuery {
    #[serde(default)]
    user_code: String,
}

/// `GET /device`: approve a device login (sign in first).
pub(crate) async fn device_page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<DeviceQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let code: String = q.user_code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(16).collect();
    if let Err(r) = signed_in(&state, &headers, &format!("/device?user_code={code}")).await {
        return r;
    }
    page(
        "Approve a device login",
        "device",
        "",
        &format!(
            r#"<p>A command-line tool asks to sign in as you. Approve only if you started it and the code below matches the one it shows.</p>
<p><label for="user-code">Code</label><br><input id="user-code" value="{}" autocomplete="off"></p>
<button id="approve" type="button">Approve with passkey</button> <button id="deny" type="button">Deny</button>"#,
            esc(&code)
        ),
    )
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /approvals/{id}`: what will be restored, by whom, to where; approve with one touch.
pub(crate) async fn approval_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect();
    let p = match signed_in(&state, &headers, &format!("/approvals/{id}")).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let missing = || page("Approval not found", "approval-missing", "", "<p>No such approval request.</p>");
    let Ok(Some(a)) = state.store.approval(&id).await else {
        return missing();
    };
    // Shown to those the API would show it to (the requester, possible approvers, auditors).
    let visible = if a.kind == "critical" {
        crate::critical::may_see(&state, &p, &a).await.is_ok()
    } else {
        a.requester_id == p.user.id || may_read_vault(&state, &p, &a.vault).await
    };
    if !visible {
        return missing();
    }
    let op: serde_json::Value = serde_json::from_str(&a.operation_json).unwrap_or_default();
    let when = time::OffsetDateTime::from_unix_timestamp(a.created_at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let introduced = introduction_note(&state, &p, &a).await;
    if a.kind == "critical" {
        return critical_page(&state, &a, &op, &when, &introduced).await;
    }
    let paths = op["paths"]
        .as_array()
        .map(|v| v.iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let body = format!(
        r#"<p>Someone asks to restore data. Approve only if you know why.</p>
<dl>
<dt>Vault</dt><dd>{vault}</dd>
<dt>Snapshot</dt><dd><code>{snapshot}</code></dd>
<dt>Paths</dt><dd>{paths}</dd>
<dt>Target directory</dt><dd><code>{target}</code>{where_}</dd>
<dt>Requested by</dt><dd>{requester}</dd>
<dt>Requested at</dt><dd>{when}</dd>
<dt>Status</dt><dd id="approval-status">{status}</dd>
<dt>Operation digest (SHA-256)</dt><dd><code id="digest">{digest}</code></dd>
</dl>
{introduced}<button id="approve" type="button">Approve with passkey</button> <button id="deny" type="button">Deny</button>
{follow}"#,
        follow = if op["destination"] == "server" {
            format!(r#"<p id="follow" hidden><a href="/restores/{}">Follow the restore</a></p>"#, esc(&a.id))
        } else {
            String::new()
        },
        vault = esc(op["vault"].as_str().unwrap_or("")),
        snapshot = esc(op["snapshot"].as_str().unwrap_or("")),
        paths = if paths.is_empty() { "everything".to_string() } else { esc(&paths) },
        target = esc(op["target"].as_str().unwrap_or("")),
        where_ = if op["destination"] == "server" {
            " (on the server, under its restore directory)"
        } else {
            " (on the requester's machine)"
        },
        requester = esc(op["requester"].as_str().unwrap_or("")),
        when = esc(&when),
        status = esc(&a.status),
        digest = esc(&a.digest),
    );
    console_page("Approve a restore", "approval", &format!(r#"data-approval="{}""#, esc(&id)), &body)
}

/// Who enrolled the viewer's account (and, once decided, the approver's): an approver the
/// requester enrolled does not count as another person, and the page says so before the
/// passkey is touched.
async fn introduction_note(state: &AppState, p: &crate::auth::Principal, a: &store::Approval) -> String {
    let requester = state.store.user_by_id(&a.requester_id).await.ok().flatten().map(|u| u.username);
    let mut out = String::new();
    if a.requester_id != p.user.id {
        let by = state.store.introducers(&p.user.id, None).await.unwrap_or_default();
        if !by.is_empty() {
            out.push_str(&format!(
                r#"<p id="invited-by">Your account was enrolled from a link made by {}."#,
                esc(&by.join(", "))
            ));
            if requester.as_ref().is_some_and(|r| by.contains(r)) {
                out.push_str(" That is the requester: your approval does not count as another person's.");
            }
            out.push_str("</p>\n");
        }
    }
    if let Some(approver) = &a.approver_id {
        let name = state.store.user_by_id(approver).await.ok().flatten().map(|u| u.username).unwrap_or_default();
        let by = state.store.introducers(approver, None).await.unwrap_or_default();
        out.push_str(&format!(
            r#"<p id="approver-invited-by">Approved by {}, whose account was enrolled from a link made by {}.</p>"#,
            esc(&name),
            esc(&if by.is_empty() { "nobody on record".to_string() } else { by.join(", ") })
        ));
    }
    out
}

/// The approval page of a critical operation: every field of the operation, who asked, what
/// is still needed, and the digest the passkey signs.
async fn critical_page(
    state: &AppState,
    a: &store::Approval,
    op: &serde_json::Value,
    when: &str,
    introduced: &str,
) -> Response {
    let shown = crate::critical::show(state, a).await.unwrap_or_default();
    let details: String = op
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "kind" | "requester_id" | "request_time"))
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("<dt>{}</dt><dd><code>{}</code></dd>\n", esc(k), esc(&v))
        })
        .collect();
    let waiting: Vec<String> = serde_json::from_value(shown["waiting_for"].clone()).unwrap_or_default();
    let approved_by: Vec<String> = serde_json::from_value(shown["approved_by"].clone()).unwrap_or_default();
    let body = format!(
        r#"<p>A critical operation waits for a second person. The requester confirms it with their own passkey; Security Admins other than the requester approve it. It runs exactly as shown, once, or not at all.</p>
<dl>
{details}<dt>Requested at</dt><dd>{when}</dd>
<dt>Status</dt><dd id="approval-status">{status}</dd>
<dt>Still needed</dt><dd id="approval-waiting">{waiting}</dd>
<dt>Approved by</dt><dd>{approved_by}</dd>
<dt>Operation digest (SHA-256)</dt><dd><code id="digest">{digest}</code></dd>
</dl>
{introduced}<button id="approve" type="button">Approve with passkey</button> <button id="deny" type="button">Deny</button>"#,
        when = esc(when),
        status = esc(shown["status"].as_str().unwrap_or("")),
        waiting = if waiting.is_empty() { "nothing".to_string() } else { esc(&waiting.join(", ")) },
        approved_by = if approved_by.is_empty() { "nobody yet".to_string() } else { esc(&approved_by.join(", ")) },
        digest = esc(&a.digest),
    );
    console_page("Approve a critical operation", "approval", &format!(r#"data-approval="{}""#, esc(&a.id)), &body)
}

async fn may_read_vault(state: &AppState, p: &crate::auth::Principal, vault: &str) -> bool {
    let Ok((_, policy)) = crate::critical::live_vault(state, vault).await else { return false };
    crate::vaults::authorize(
        state,
        p,
        policy::Operation::VaultRead,
        &policy::Resource::Vault { name: vault, policy: &policy },
    )
    .await
    .is_ok()
}

/// `GET /credentials`
pub(crate) async fn credentials_page(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(r) = signed_in(&state, &headers, "/credentials").await {
        return r;
    }
    console_page(
        "My passkeys",
        "credentials",
        "",
        r#"<ul id="credentials" aria-label="Your passkeys"></ul>
<button id="add" type="button">Add another passkey</button>"#,
    )
}

/// `GET /`
pub(crate) async fn index() -> Redirect {
    Redirect::to("/vaults")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_servers_origin() {
        let public = url::Url::parse("http://localhost:8440").unwrap();
        for bad in [
            "/\\evil.example/x",
            "//evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "http://localhost:8441/x",
            "",
        ] {
            assert_eq!(safe_next(&public, bad), "/vaults", "{bad}");
        }
        assert_eq!(safe_next(&public, "http://localhost:8440//evil.example/x"), "/vaults");
        assert_eq!(safe_next(&public, "/approvals/x?y=1"), "/approvals/x?y=1");
        assert_eq!(safe_next(&public, "http://localhost:8440/vaults/prod"), "/vaults/prod");
    }
}
