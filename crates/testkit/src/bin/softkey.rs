//! `strongroom-softkey`: a software passkey for automation and tests. It enrolls from a link,
//! signs in (printing an access token), and approves a device code — with real WebAuthn
//! ceremonies against a running server. Its credentials are software keys (`swk`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use testkit::softkey::SoftKey;

/// A software WebAuthn authenticator for automation. Never use it where a hardware key is required.
#[derive(Parser)]
#[command(name = "strongroom-softkey", version, about)]
struct Cli {
    /// Key file (created 0600 on first enroll).
    #[arg(long)]
    key: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll a new passkey from an enrollment link `<server>/enroll/<token>`.
    Enroll {
        /// The enrollment URL.
        url: String,
        /// Name for the credential.
        #[arg(long, default_value = "softkey")]
        name: String,
    },
    /// Sign in and print an access token.
    Login {
        /// Server URL.
        #[arg(long)]
        server: String,
        /// User name (omit for a discoverable sign-in).
        #[arg(long)]
        username: Option<String>,
    },
    /// Approve what an approval URL asks (a device login: `<server>/device?user_code=…`).
    Approve {
        /// The approval URL.
        url: String,
        /// User name to sign in as (omit for discoverable).
        #[arg(long)]
        username: Option<String>,
    },
}

fn origin_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut key = SoftKey::load_or_create(&cli.key)?;
    let http = reqwest::blocking::Client::builder().build()?;
    match cli.cmd {
        Cmd::Enroll { url, name } => {
            let u = url::Url::parse(&url).context("enrollment URL")?;
            let token = u.path().strip_prefix("/enroll/").context("not an enrollment URL (<server>/enroll/<token>)")?;
            let base = origin_of(&u);
            let start: serde_json::Value =
                post(&http, &format!("{base}/api/v1/enroll/{token}/start"), &serde_json::json!({}), None)?;
            let options = serde_json::from_value(start["options"].clone())?;
            let cred = key.register(&base, options)?;
            // Save before finishing, so a credential the server accepts is never lost.
            key.save(&cli.key)?;
            let done: serde_json::Value = post(
                &http,
                &format!("{base}/api/v1/enroll/{token}/finish"),
                &serde_json::json!({"ceremony_id": start["ceremony_id"], "credential": cred, "name": name}),
                None,
            )?;
            println!("{}", done["credential_id"].as_str().unwrap_or_default());
        }
        Cmd::Login { server, username } => {
            let base = origin_of(&url::Url::parse(&server)?);
            let token = login(&http, &mut key, &base, username.as_deref())?;
            key.save(&cli.key)?;
            println!("{token}");
        }
        Cmd::Approve { url, username } => {
            let u = url::Url::parse(&url)?;
            let base = origin_of(&u);
            if let Some(id) = u.path().strip_prefix("/approvals/") {
                let token = login(&http, &mut key, &base, username.as_deref())?;
                let start: serde_json::Value =
                    post(&http, &format!("{base}/api/v1/approvals/{id}/start"), &serde_json::json!({}), Some(&token))?;
                let pkc = key.assert(&base, serde_json::from_value(start["options"].clone())?)?;
                key.save(&cli.key)?;
                post::<serde_json::Value>(
                    &http,
                    &format!("{base}/api/v1/approvals/{id}/finish"),
                    &serde_json::json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
                    Some(&token),
                )?;
                println!("approved {}", start["digest"].as_str().unwrap_or(""));
                key.save(&cli.key)?;
                return Ok(());
            }
            if u.path() != "/device" {
                bail!("this softkey approves device logins (<server>/device?user_code=…) and approvals (<server>/approvals/<id>); got {}", u.path());
            }
            let code = u
                .query_pairs()
                .find(|(k, _)| k == "user_code")
                .map(|(_, v)| v.into_owned())
                .context("no user_code in the URL")?;
            let token = login(&http, &mut key, &base, username.as_deref())?;
            let start: serde_json::Value = post(
                &http,
                &format!("{base}/api/v1/device/approve/start"),
                &serde_json::json!({"user_code": code}),
                Some(&token),
            )?;
            let pkc = key.assert(&base, serde_json::from_value(start["options"].clone())?)?;
            key.save(&cli.key)?;
            post::<serde_json::Value>(
                &http,
                &format!("{base}/api/v1/device/approve/finish"),
                &serde_json::json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
                Some(&token),
            )?;
            println!("approved {code}");
        }
    }
    key.save(&cli.key)?;
    Ok(())
}

fn login(
    http: &reqwest::blocking::Client,
    key: &mut SoftKey,
    base: &str,
    username: Option<&str>,
) -> anyhow::Result<String> {
    let body = match username {
        Some(u) => serde_json::json!({"username": u}),
        None => serde_json::json!({}),
    };
    let start: serde_json::Value = post(http, &format!("{base}/api/v1/auth/login/start"), &body, None)?;
    let pkc = key.assert(base, serde_json::from_value(start["options"].clone())?)?;
    let done: serde_json::Value = post(
        http,
        &format!("{base}/api/v1/auth/login/finish"),
        &serde_json::json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
        None,
    )?;
    done["access_token"].as_str().map(str::to_string).context("no access token in the answer")
}

fn post<T: serde::de::DeserializeOwned>(
    http: &reqwest::blocking::Client,
    url: &str,
    body: &serde_json::Value,
    bearer: Option<&str>,
) -> anyhow::Result<T> {
    let mut req = http.post(url).json(body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text()?;
    if !status.is_success() {
        bail!("{url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}
