//! Server-rendered pages: plain HTML, one stylesheet inline, one script (`/assets/app.js`)
//! served by the server itself (no CDN). Dynamic values are HTML-escaped.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::auth::{cookie, live_session};
use crate::state::{AppState, SESSION_COOKIE};

const APP_JS: &str = include_str!("../assets/app.js");

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
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Strongroom</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1b1b1b}}
h1{{font-size:1.5rem}} button{{font-size:1rem;padding:.5rem 1rem;margin:.25rem 0;cursor:pointer}}
input{{font-size:1rem;padding:.4rem;width:100%;max-width:20rem;box-sizing:border-box}}
.status{{margin-top:1rem;min-height:1.5rem}} .error{{color:#a00000}} code{{font-size:1.2rem;letter-spacing:.1em}}
:focus{{outline:3px solid #1a5fb4;outline-offset:2px}}
</style></head>
<body data-page="{name}" {data}><main><h1>{title}</h1>{body}<p id="status" class="status" role="status" aria-live="polite"></p></main>
<script src="/assets/app.js"></script></body></html>"#
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

/// `GET /login`
pub(crate) async fn login_page() -> Response {
    page(
        "Sign in",
        "login",
        "",
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
    let signed_in = match cookie(&headers, SESSION_COOKIE) {
        Some(t) => live_session(&state, &identity::codes::token_hash(t), state.clock.now()).await.is_ok(),
        None => false,
    };
    let code: String = q.user_code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(16).collect();
    if !signed_in {
        let next = format!("/device?user_code={code}");
        return Redirect::to(&format!("/login?next={}", url_encode(&next))).into_response();
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
    let signed_in = match cookie(&headers, SESSION_COOKIE) {
        Some(t) => live_session(&state, &identity::codes::token_hash(t), state.clock.now()).await.is_ok(),
        None => false,
    };
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect();
    if !signed_in {
        return Redirect::to(&format!("/login?next={}", url_encode(&format!("/approvals/{id}")))).into_response();
    }
    let Ok(Some(a)) = state.store.approval(&id).await else {
        return page("Approval not found", "approval-missing", "", "<p>No such approval request.</p>");
    };
    let op: serde_json::Value = serde_json::from_str(&a.operation_json).unwrap_or_default();
    let when = time::OffsetDateTime::from_unix_timestamp(a.created_at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    if a.kind == "critical" {
        return critical_page(&state, &a, &op, &when).await;
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
<dt>Target directory</dt><dd><code>{target}</code></dd>
<dt>Requested by</dt><dd>{requester}</dd>
<dt>Requested at</dt><dd>{when}</dd>
<dt>Status</dt><dd id="approval-status">{status}</dd>
<dt>Operation digest (SHA-256)</dt><dd><code id="digest">{digest}</code></dd>
</dl>
<button id="approve" type="button">Approve with passkey</button> <button id="deny" type="button">Deny</button>"#,
        vault = esc(op["vault"].as_str().unwrap_or("")),
        snapshot = esc(op["snapshot"].as_str().unwrap_or("")),
        paths = if paths.is_empty() { "everything".to_string() } else { esc(&paths) },
        target = esc(op["target"].as_str().unwrap_or("")),
        requester = esc(op["requester"].as_str().unwrap_or("")),
        when = esc(&when),
        status = esc(&a.status),
        digest = esc(&a.digest),
    );
    page("Approve a restore", "approval", &format!(r#"data-approval="{}""#, esc(&id)), &body)
}

/// The approval page of a critical operation: every field of the operation, who asked, what
/// is still needed, and the digest the passkey signs.
async fn critical_page(state: &AppState, a: &store::Approval, op: &serde_json::Value, when: &str) -> Response {
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
<button id="approve" type="button">Approve with passkey</button> <button id="deny" type="button">Deny</button>"#,
        when = esc(when),
        status = esc(shown["status"].as_str().unwrap_or("")),
        waiting = if waiting.is_empty() { "nothing".to_string() } else { esc(&waiting.join(", ")) },
        approved_by = if approved_by.is_empty() { "nobody yet".to_string() } else { esc(&approved_by.join(", ")) },
        digest = esc(&a.digest),
    );
    page("Approve a critical operation", "approval", &format!(r#"data-approval="{}""#, esc(&a.id)), &body)
}

/// `GET /credentials`
pub(crate) async fn credentials_page(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    let signed_in = match cookie(&headers, SESSION_COOKIE) {
        Some(t) => live_session(&state, &identity::codes::token_hash(t), state.clock.now()).await.is_ok(),
        None => false,
    };
    if !signed_in {
        return Redirect::to("/login?next=/credentials").into_response();
    }
    page(
        "My passkeys",
        "credentials",
        "",
        r#"<ul id="credentials" aria-label="Your passkeys"></ul>
<button id="add" type="button">Add another passkey</button> <button id="logout" type="button">Sign out</button>"#,
    )
}

/// `GET /`
pub(crate) async fn index() -> Redirect {
    Redirect::to("/credentials")
}
