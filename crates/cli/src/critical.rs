//! Waiting on critical operations: a request the server gates as critical comes back with an
//! approval URL; the command prints it alone on a line, then follows the approval until the
//! operation ran (exit 0), failed, was denied or expired (exit 1).

use std::time::Duration;

use anyhow::bail;

use crate::client::Api;

/// How often the approval is polled.
const POLL: Duration = Duration::from_secs(2);

/// Follows the server's answer to a gated request: a change that was not critical is already
/// `done`; a critical one is waited for. Returns the operation's result.
pub(crate) async fn follow(api: &mut Api, answer: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    match answer["status"].as_str() {
        Some("done") => return Ok(answer["result"].clone()),
        Some("pending_approval") => {}
        _ => bail!("unexpected answer from the server: {answer}"),
    }
    let id = answer["approval_id"].as_str().unwrap_or_default().to_string();
    // The approval URL alone on its line: scripts and people pick it up from here.
    println!("{}", answer["approval_url"].as_str().unwrap_or_default());
    let needed = answer["approvals_needed"].as_u64().unwrap_or(1);
    eprintln!(
        "This is a critical operation (digest {}). It runs once you confirm it with your own passkey at \
         that URL and {needed} Security Admin{} other than you approve it there; the request expires in 24 hours.",
        answer["digest"].as_str().unwrap_or("?"),
        if needed == 1 { "" } else { "s" }
    );
    let mut last_waiting = String::new();
    loop {
        let s = api.call(reqwest::Method::GET, &format!("/api/v1/approvals/{id}"), None).await?;
        match s["status"].as_str() {
            Some("pending") | Some("approved") | Some("running") => {
                let waiting: Vec<String> = serde_json::from_value(s["waiting_for"].clone()).unwrap_or_default();
                let now = if waiting.is_empty() { "running".to_string() } else { waiting.join(" and ") };
                if now != last_waiting {
                    eprintln!("waiting for: {now}");
                    last_waiting = now;
                }
                tokio::time::sleep(POLL).await;
            }
            Some("executed") => return Ok(s["result"]["result"].clone()),
            Some("failed") => bail!(
                "approved, but the operation did not run: {} ({})",
                s["result"]["error"].as_str().unwrap_or("?"),
                s["result"]["code"].as_str().unwrap_or("?")
            ),
            Some("denied") => bail!("the operation was denied; nothing was changed"),
            Some("expired") => bail!("the request expired before it was approved; nothing was changed"),
            other => bail!("unexpected approval status {other:?}"),
        }
    }
}
