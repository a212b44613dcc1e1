//! The client side: device-code login (RFC 8628), the stored login (mode 0600), whoami.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct StoredLogin {
    server: String,
    access_token: String,
    refresh_token: String,
}

fn login_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(base.join("strongroom").join("login.json"))
}

fn save_login(login: &StoredLogin) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = login_path()?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(login)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn load_login() -> anyhow::Result<Option<StoredLogin>> {
    let path = login_path()?;
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged; run strongroom login", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("strongroom/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

fn server_url(server: Option<&str>, stored: Option<&StoredLogin>) -> anyhow::Result<String> {
    match (server, stored) {
        (Some(s), _) => Ok(s.trim_end_matches('/').to_string()),
        (None, Some(l)) => Ok(l.server.clone()),
        (None, None) => {
            bail!("not signed in and no server given: run strongroom login --server URL (or set STRONGROOM_SERVER)")
        }
    }
}

#[derive(Deserialize)]
struct DeviceAuth {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct TokenOk {
    access_token: String,
    refresh_token: String,
}

#[derive(Deserialize)]
struct OAuthErr {
    error: String,
    #[serde(default)]
    error_description: String,
}

fn qr(text: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build()
        }
        Err(_) => String::new(),
    }
}

/// `strongroom login`
pub(crate) async fn login(server: Option<&str>) -> anyhow::Result<()> {
    let stored = load_login().ok().flatten();
    let base = server_url(server, stored.as_ref())?;
    let client = http()?;
    let resp = client
        .post(format!("{base}/api/v1/oauth/device_authorization"))
        .form(&[("client_id", "strongroom-cli")])
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    if !resp.status().is_success() {
        bail!("the server refused the login request ({})", resp.status());
    }
    let auth: DeviceAuth = resp.json().await.context("unexpected answer from the server")?;
    let link = auth.verification_uri_complete.clone().unwrap_or_else(|| auth.verification_uri.clone());
    println!("To sign in, open this page and approve with your passkey:\n\n  {link}\n\nand check that it shows the code:  {}\n", auth.user_code);
    println!("{}", qr(&link));
    let mut interval = auth.interval.unwrap_or(5).max(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(auth.expires_in);
    loop {
        if std::time::Instant::now() >= deadline {
            bail!("the code expired before it was approved; run strongroom login again");
        }
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let resp = client
            .post(format!("{base}/api/v1/oauth/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &auth.device_code),
                ("client_id", "strongroom-cli"),
            ])
            .send()
            .await?;
        if resp.status().is_success() {
            let t: TokenOk = resp.json().await?;
            let path = save_login(&StoredLogin {
                server: base.clone(),
                access_token: t.access_token,
                refresh_token: t.refresh_token,
            })?;
            println!("Signed in. Login stored in {}", path.display());
            return Ok(());
        }
        let err: OAuthErr =
            resp.json().await.unwrap_or(OAuthErr { error: "server_error".into(), error_description: String::new() });
        match err.error.as_str() {
            "authorization_pending" => {}
            "slow_down" => interval += 5,
            "access_denied" => bail!("the request was denied in the browser"),
            "expired_token" => bail!("the code expired before it was approved; run strongroom login again"),
            other => bail!("login failed: {other} {}", err.error_description),
        }
    }
}

async fn refresh(client: &reqwest::Client, login: &mut StoredLogin) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{}/api/v1/oauth/token", login.server))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", login.refresh_token.as_str())])
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("the stored login has ended; run strongroom login");
    }
    let t: TokenOk = resp.json().await?;
    login.access_token = t.access_token;
    login.refresh_token = t.refresh_token;
    save_login(login)?;
    Ok(())
}

/// An authenticated API client: an explicit token, or the stored login (refreshed once on 401).
pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    explicit: Option<String>,
    stored: Option<StoredLogin>,
}

impl Api {
    pub(crate) fn new(server: Option<&str>, token: Option<&str>) -> anyhow::Result<Api> {
        let stored = load_login()?;
        let base = server_url(server, stored.as_ref())?;
        if token.is_none() && stored.is_none() {
            bail!("not signed in: run strongroom login --server {base} (or pass --token)");
        }
        Ok(Api { client: http()?, base, explicit: token.map(str::to_string), stored })
    }

    fn bearer(&self) -> String {
        self.explicit.clone().or_else(|| self.stored.as_ref().map(|l| l.access_token.clone())).unwrap_or_default()
    }

    /// Sends a request; returns the JSON answer (or `null` for an empty one).
    pub(crate) async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let text = self.send(method, path, body).await?;
        Ok(if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).unwrap_or_default() })
    }

    /// A request answered as text (signed notes, keys).
    pub(crate) async fn text(&mut self, method: reqwest::Method, path: &str) -> anyhow::Result<String> {
        self.send(method, path, None).await
    }

    /// Sends a request, refreshing the stored login once on a 401; returns the body of a
    /// success, or the server's error code and message.
    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<String> {
        let mut refreshed = false;
        loop {
            let mut req =
                self.client.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(self.bearer());
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await.with_context(|| format!("cannot reach {}", self.base))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && self.explicit.is_none() && !refreshed {
                let step_up = resp.headers().get(reqwest::header::WWW_AUTHENTICATE).is_some();
                if !step_up {
                    if let Some(l) = self.stored.as_mut() {
                        refresh(&self.client, l).await?;
                        refreshed = true;
                        continue;
                    }
                }
            }
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                return Ok(text);
            }
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let code = json["error"]["code"].as_str().unwrap_or("");
            let message = json["error"]["message"].as_str().unwrap_or("");
            if code == "auth.insufficient_user_authentication" {
                bail!("{message} — run strongroom login again, then retry");
            }
            bail!("the server refused ({status}, {code}): {message}");
        }
    }
}

/// `strongroom whoami`
pub(crate) async fn whoami(server: Option<&str>, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut api = Api::new(server, token)?;
    let me = api.call(reqwest::Method::GET, "/api/v1/me", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&me)?);
    } else {
        let roles: Vec<String> = me["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                r["role"].as_str().map(|role| match r["vault"].as_str() {
                    Some(v) => format!("{role}@{v}"),
                    None => role.to_string(),
                })
            })
            .collect();
        println!(
            "{} ({}) roles: {}",
            me["username"].as_str().unwrap_or("?"),
            me["user_id"].as_str().unwrap_or("?"),
            roles.join(", ")
        );
        for n in me["notices"].as_array().into_iter().flatten() {
            eprintln!(
                "warning: a passkey named {:?} was added to your account (unix time {}) after this login; if that was not you, revoke it in the console under My passkeys",
                n["credential"].as_str().unwrap_or("?"),
                n["at"]
            );
        }
    }
    Ok(())
}

/// `strongroom logout`
pub(crate) async fn logout(server: Option<&str>) -> anyhow::Result<()> {
    let Some(login) = load_login()? else {
        println!("Not signed in.");
        return Ok(());
    };
    let base = server_url(server, Some(&login))?;
    let _ = http()?.post(format!("{base}/api/v1/auth/logout")).bearer_auth(&login.access_token).send().await;
    std::fs::remove_file(login_path()?)?;
    println!("Signed out.");
    Ok(())
}

/// A blocking client for long jobs (backup, restore): explicit token, or the stored login with
/// a refresher that rotates the refresh token and saves it. Call outside async code.
pub(crate) fn remote(server: Option<&str>, token: Option<&str>) -> anyhow::Result<crate::remote::Remote> {
    let stored = load_login()?;
    let base = server_url(server, stored.as_ref())?;
    if let Some(t) = token {
        return crate::remote::Remote::new(base, t.to_string(), None);
    }
    let Some(login) = stored else {
        bail!("not signed in: run strongroom login --server {base} (or pass --token)");
    };
    let access = login.access_token.clone();
    let state = std::sync::Mutex::new(login);
    let refresher = move || -> anyhow::Result<String> {
        let mut l = state.lock().unwrap_or_else(|p| p.into_inner());
        let client = reqwest::blocking::Client::new();
        let resp = client
            .post(format!("{}/api/v1/oauth/token", l.server))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", l.refresh_token.as_str())])
            .send()?;
        if !resp.status().is_success() {
            bail!("the stored login has ended; run strongroom login");
        }
        let t: TokenOk = resp.json()?;
        l.access_token = t.access_token.clone();
        l.refresh_token = t.refresh_token;
        save_login(&l)?;
        Ok(t.access_token)
    };
    crate::remote::Remote::new(base, access, Some(Box::new(refresher)))
}
