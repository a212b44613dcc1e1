//! Helpers shared by the server's integration suites: a server on loopback with a real SQLite
//! file, HTTP helpers, passkey ceremonies with the software authenticator, fixtures.
#![allow(dead_code, unreachable_pub)]

pub use std::sync::Arc;

pub use reqwest::StatusCode;
pub use serde_json::{json, Value};
pub use testkit::softkey::SoftKey;

pub struct Srv {
    pub base: String,
    pub state: Arc<server::AppState>,
    pub http: reqwest::Client,
    pub _dir: tempfile::TempDir,
}

pub async fn spawn() -> Srv {
    spawn_with(|_| {}).await
}

/// A server whose configuration `adjust` changes first.
pub async fn spawn_with(adjust: impl FnOnce(&mut server::ServerConfig)) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://localhost:{port}");
    let mut config = server::ServerConfig::new(dir.path().join("data"), url::Url::parse(&base).unwrap());
    adjust(&mut config);
    let state = Arc::new(server::open_state(&config, server::Clock::default()).await.unwrap());
    tokio::spawn(server::serve(state.clone(), listener, std::future::pending()));
    let http = reqwest::Client::builder().cookie_store(true).build().unwrap();
    Srv { base, state, http, _dir: dir }
}

impl Srv {
    pub async fn post(&self, path: &str, body: Value, bearer: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn first_link(&self) -> String {
        server::first_start_link(&self.state).await.unwrap().expect("no users yet")
    }

    pub async fn link_for(&self, user: &str, role: &str) -> String {
        server::routes::create_enroll_link(&self.state, user, role, None, None, "test").await.unwrap()
    }

    pub fn token_of(link: &str) -> String {
        link.rsplit('/').next().unwrap().to_string()
    }

    /// Enrolls `key` from `link`; returns the finish answer.
    pub async fn enroll(&self, key: &mut SoftKey, link: &str) -> (StatusCode, Value) {
        let token = Self::token_of(link);
        let (st, start) = self.post(&format!("/api/v1/enroll/{token}/start"), json!({}), None).await;
        assert_eq!(st, StatusCode::OK, "{start}");
        let cred = key.register(&self.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
        self.post(
            &format!("/api/v1/enroll/{token}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": cred}),
            None,
        )
        .await
    }

    pub async fn login_start(&self, username: Option<&str>) -> Value {
        let body = username.map(|u| json!({"username": u})).unwrap_or(json!({}));
        let (st, start) = self.post("/api/v1/auth/login/start", body, None).await;
        assert_eq!(st, StatusCode::OK, "{start}");
        start
    }

    pub async fn login(&self, key: &mut SoftKey, username: Option<&str>) -> (StatusCode, Value) {
        let start = self.login_start(username).await;
        let pkc = key.assert(&self.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
        self.post("/api/v1/auth/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": pkc}), None)
            .await
    }

    pub async fn token(&self, key: &mut SoftKey, username: Option<&str>) -> String {
        let (st, v) = self.login(key, username).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }

    pub async fn delete(&self, path: &str, bearer: &str) -> (StatusCode, Value) {
        let resp = self.http.delete(format!("{}{path}", self.base)).bearer_auth(bearer).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn audit_kinds(&self) -> Vec<String> {
        self.state.store.audit_events(0, 10_000).await.unwrap().into_iter().map(|e| e.event.kind).collect()
    }
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Owner, a restore operator (alice) and a reader (carol), the two enrolled from links made on
/// the server host; vaults `prod` (production) and `hw`
/// (hardware-only approvals), each with one snapshot.
pub async fn restore_fixture() -> (Srv, String, (SoftKey, String), (SoftKey, String), (SoftKey, String)) {
    // A whole organisation's weeks of sign-ins and approvals run here in seconds, from one
    // loopback address: the quotas are raised for it (the default quotas have their own tests
    // in attacks.rs, on servers from `spawn`).
    let s = spawn_with(|c| {
        c.rate_limit_per_minute = 6_000;
        c.account_rate_limit_per_minute = 6_000;
    })
    .await;
    let mut owner = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut owner, &s.first_link().await).await.0, StatusCode::OK);
    let to = s.token(&mut owner, Some("owner")).await;
    for (name, hw) in [("prod", false), ("hw", true)] {
        let (st, v) = s
            .post("/api/v1/vaults", json!({"name": name, "kind": "production", "require_hardware": hw}), Some(&to))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let repo = server::backups::open_repo(&s.state, name).await.unwrap();
        let src = s._dir.path().join(format!("src-{name}"));
        testkit::make_tree(&src);
        tokio::task::spawn_blocking(move || {
            repo::backup::backup_local(
                &repo,
                &[src],
                None,
                "h",
                testkit::fixed_time(1_800_000_000),
                &Default::default(),
            )
            .unwrap()
        })
        .await
        .unwrap();
    }
    let mut people = Vec::new();
    for (user, role) in [("alice", "restore-operator"), ("carol", "reader")] {
        // Enrolled from links made on the server host, not by the owner: an account the owner
        // enrolled would not count as another person for the owner's own requests.
        let link = s.link_for(user, role).await;
        let mut key = SoftKey::new().unwrap();
        assert_eq!(s.enroll(&mut key, &link).await.0, StatusCode::OK);
        let t = s.token(&mut key, Some(user)).await;
        people.push((key, t));
    }
    let carol = people.pop().unwrap();
    let alice = people.pop().unwrap();
    (s, to, (owner, String::new()), alice, carol)
}

pub async fn request_restore(s: &Srv, token: &str, vault: &str) -> Value {
    let (st, v) = s
        .post(
            &format!("/api/v1/vaults/{vault}/restores"),
            json!({"snapshot": "latest", "target": "/tmp/restore-here"}),
            Some(token),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    v
}

/// Starts an approval ceremony as `token` and signs it with `key`; returns (start answer, assertion).
pub async fn sign_approval(
    s: &Srv,
    key: &mut SoftKey,
    token: &str,
    approval: &str,
) -> (StatusCode, Value, Option<Value>) {
    let (st, start) = s.post(&format!("/api/v1/approvals/{approval}/start"), json!({}), Some(token)).await;
    if st != StatusCode::OK {
        return (st, start, None);
    }
    let pkc = key.assert(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    (st, start, Some(serde_json::to_value(pkc).unwrap()))
}

pub async fn plan_with_grant(s: &Srv, id: &str, grant: &str) -> StatusCode {
    plan_answer(s, id, grant).await.0
}

/// `GET /api/v1/restores/{id}/plan` with a grant: status and body.
pub async fn plan_answer(s: &Srv, id: &str, grant: &str) -> (StatusCode, Value) {
    let r = s
        .http
        .get(format!("{}/api/v1/restores/{id}/plan", s.base))
        .header("authorization", format!("Grant {grant}"))
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// A restore of `prod` requested as `requester`, approved by the holder of `key`/`approver`,
/// its grant fetched by the requester: (approval id, grant).
pub async fn granted_restore(s: &Srv, requester: &str, key: &mut SoftKey, approver: &str) -> (String, String) {
    let r = request_restore(s, requester, "prod").await;
    let id = r["approval_id"].as_str().unwrap().to_string();
    approve(s, key, approver, &id).await;
    let (st, g) = s.get(&format!("/api/v1/restores/{id}"), Some(requester)).await;
    assert_eq!(st, StatusCode::OK, "{g}");
    (id, g["grant"].as_str().unwrap().to_string())
}

/// Approves `id` as the holder of `key`/`token`; panics unless it is accepted.
pub async fn approve(s: &Srv, key: &mut SoftKey, token: &str, id: &str) {
    let (st, start, pkc) = sign_approval(s, key, token, id).await;
    assert_eq!(st, StatusCode::OK, "{start}");
    let (st, v) = s
        .post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": pkc.unwrap()}),
            Some(token),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// Requests a server-side restore of `vault`'s latest snapshot into `target`; returns its id.
pub async fn request_server_restore(s: &Srv, token: &str, vault: &str, target: &str) -> String {
    let body = json!({"snapshot": "latest", "target": target, "on_server": true});
    let (st, r) = s.post(&format!("/api/v1/vaults/{vault}/restores"), body, Some(token)).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    r["approval_id"].as_str().unwrap().to_string()
}

/// Polls a server-side restore until it is no longer running; returns its last status.
pub async fn wait_for_job(s: &Srv, token: &str, id: &str) -> Value {
    let mut job = Value::Null;
    for _ in 0..200 {
        job = s.get(&format!("/api/v1/restores/{id}/job"), Some(token)).await.1;
        if job["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    job
}

/// Alice requests a restore of `prod`, the owner approves; returns (approval id, grant).
pub async fn alices_grant(s: &Srv, ta: &str, owner: &mut SoftKey, to: &str) -> (String, String) {
    granted_restore(s, ta, owner, to).await
}
