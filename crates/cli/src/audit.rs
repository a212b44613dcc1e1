//! `strongroom audit tail|export|verify`: read the log, export it for auditors, and verify an
//! export offline — no server, no database, only the files and (ideally) the auditor's own
//! copy of the verifier key and an earlier checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use auditlog::export::{Export, Options};

use crate::client::Api;

/// Records per request.
const PAGE: i64 = 10_000;

/// One line for people: seq, time, actor, what, outcome, vault, why.
fn human(leaf: &str) -> String {
    let Ok(r) = serde_json::from_str::<auditlog::Record>(leaf) else { return leaf.to_string() };
    let time = time::OffsetDateTime::from_unix_timestamp(r.time)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| r.time.to_string());
    let mut line = format!("{:>7}  {time}  {:<12} {:<20} {}", r.seq, r.actor, r.kind, r.outcome);
    if let Some(v) = &r.vault {
        line.push_str(&format!("  vault={v}"));
    }
    if let Some(why) = &r.reason {
        line.push_str(&format!("  reason={why}"));
    }
    if r.details.get("assertion").is_some() {
        line.push_str("  [passkey-signed]");
    }
    line
}

async fn page(api: &mut Api, after: i64, limit: i64) -> anyhow::Result<(Vec<String>, i64)> {
    let v = api.call(reqwest::Method::GET, &format!("/api/v1/audit/records?after={after}&limit={limit}"), None).await?;
    let list: Vec<String> = serde_json::from_value(v["records"].clone()).context("unexpected answer")?;
    let size = v["size"].as_i64().unwrap_or(0);
    Ok((list, size))
}

/// `strongroom audit tail [-n N] [--follow] [--json]`
pub(crate) async fn tail(api: &mut Api, n: i64, follow: bool, json: bool) -> anyhow::Result<()> {
    let (_, size) = page(api, i64::MAX - 1, 1).await?;
    let mut after = (size - n).max(0);
    loop {
        let (list, _) = page(api, after, PAGE).await?;
        for leaf in &list {
            println!("{}", if json { leaf.clone() } else { human(leaf) });
        }
        after += list.len() as i64;
        if !follow {
            return Ok(());
        }
        if list.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
}

/// `strongroom audit export --out DIR`
pub(crate) async fn export(api: &mut Api, out: &Path) -> anyhow::Result<()> {
    // The checkpoint first: the export is exactly the records it covers (reading the log is
    // itself logged, so "everything" would never end).
    let checkpoint = api.text(reqwest::Method::POST, "/api/v1/audit/checkpoint").await?;
    let vkey = api.text(reqwest::Method::GET, "/api/v1/audit/key").await?.trim().to_string();
    let cp = auditlog::Checkpoint::open(&checkpoint, &vkey).context("the server's checkpoint does not verify")?;
    let size = cp.size as i64;
    let mut records = Vec::new();
    let mut after = 0i64;
    while after < size {
        let (list, _) = page(api, after, (size - after).min(PAGE)).await?;
        if list.is_empty() {
            bail!("the server returned no records after {after} of {size}");
        }
        for leaf in &list {
            records.extend_from_slice(leaf.as_bytes());
            records.push(b'\n');
        }
        after += list.len() as i64;
        eprint!("\rexported {after} of {size} records");
    }
    eprintln!();
    let v = api.call(reqwest::Method::GET, "/api/v1/audit/checkpoints", None).await?;
    let checkpoints = v["checkpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["size"].as_u64()?, c["note"].as_str()?.to_string())))
        .filter(|(s, _)| *s < cp.size)
        .collect();
    let export = Export { records, checkpoint, checkpoints, vkey };
    export.write(out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "Exported {size} records and {} checkpoints to {}; verify with: strongroom audit verify {}",
        export.checkpoints.len() + 1,
        out.display(),
        out.display()
    );
    Ok(())
}

/// An export as the console downloads it: the export directory's files in a tar archive
/// (`strongroom-audit-N/records.jsonl`, …).
fn read_archive(path: &Path) -> anyhow::Result<auditlog::export::Export> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let (mut records, mut checkpoint, mut vkey, mut checkpoints) = (None, None, None, Vec::new());
    for entry in archive.entries().with_context(|| format!("{} is not a tar archive", path.display()))? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        let rel = name.split_once('/').map(|(_, r)| r).unwrap_or(&name);
        let text = || String::from_utf8(bytes.clone()).with_context(|| format!("{name} is not text"));
        match rel {
            "records.jsonl" => records = Some(bytes.clone()),
            "checkpoint" => checkpoint = Some(text()?),
            "audit.vkey" => vkey = Some(text()?.trim().to_string()),
            other => {
                if let Some(size) = other.strip_prefix("checkpoints/").and_then(|n| n.parse::<u64>().ok()) {
                    checkpoints.push((size, text()?));
                }
            }
        }
    }
    let missing = |what: &str| anyhow::anyhow!("{} lacks {what}: not an audit export", path.display());
    checkpoints.sort();
    Ok(auditlog::export::Export {
        records: records.ok_or_else(|| missing("records.jsonl"))?,
        checkpoint: checkpoint.ok_or_else(|| missing("checkpoint"))?,
        checkpoints,
        vkey: vkey.ok_or_else(|| missing("audit.vkey"))?,
    })
}

/// `strongroom audit verify DIR|ARCHIVE.tar [--trusted-checkpoint FILE] [--vkey FILE] [--json]`
pub(crate) fn verify(dir: &Path, trusted: Option<&PathBuf>, vkey: Option<&PathBuf>, json: bool) -> anyhow::Result<()> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let opts = Options {
        vkey: vkey.map(read).transpose()?.map(|s| s.trim().to_string()),
        trusted_checkpoint: trusted.map(read).transpose()?,
    };
    let started = std::time::Instant::now();
    let result = if dir.is_file() {
        auditlog::export::verify(&read_archive(dir)?, &opts)
    } else {
        auditlog::export::verify_dir(dir, &opts)
    };
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(r) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "report": r, "seconds": secs}));
            } else {
                println!(
                    "OK: {} records, checkpoint at {} (root {}), {} checkpoints, {} credentials, {} passkey approvals re-verified, in {secs:.2} s",
                    r.records,
                    r.checkpoint_size,
                    &r.root[..16],
                    r.checkpoints_checked,
                    r.credentials,
                    r.approvals_verified
                );
                if opts.vkey.is_none() {
                    eprintln!("note: verified with the export's own audit.vkey; pass --vkey with your own copy of the server's key to rule out a swapped key");
                }
            }
            Ok(())
        }
        Err(p) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "problem": p}));
            }
            bail!("audit log does NOT verify: {p}")
        }
    }
}
