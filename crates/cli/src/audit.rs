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
        // Only regular files hold data, so what is read is bounded by the archive's own size:
        // a sparse entry could claim terabytes of zeros in a few hundred bytes.
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            bail!("{}: {name} is not a regular file: not an audit export", path.display());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Writes `bytes` to a file and reads it as an export archive.
    fn read(bytes: &[u8]) -> anyhow::Result<Export> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.tar");
        std::fs::write(&path, bytes).unwrap();
        read_archive(&path)
    }

    /// A GNU header for `name` of `kind` holding `size` bytes.
    fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    /// The three files every export has, as `tar::Builder` writes them.
    fn complete(b: &mut tar::Builder<Vec<u8>>) {
        for (name, data) in [("e/records.jsonl", &b""[..]), ("e/checkpoint", b"note\n"), ("e/audit.vkey", b"key\n")] {
            b.append(&header(name, tar::EntryType::Regular, data.len() as u64), data).unwrap();
        }
    }

    /// A GNU sparse entry whose one block of one byte sits at `offset`: a few hundred bytes
    /// of archive that expand to `offset + 1` bytes when read.
    fn sparse(name: &str, offset: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(1);
        h.set_mode(0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(offset + 1);
        gnu.sparse[0].set_offset(offset);
        gnu.sparse[0].set_length(1);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        let mut block = vec![0u8; 512];
        block[0] = b'x';
        out.extend(block);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A file of any bytes given as an export archive is read or refused, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_archive_reader(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..2048),
                // A real header followed by anything: fields parse, data does not match.
                (proptest::collection::vec(any::<u8>(), 0..1024), any::<u64>()).prop_map(|(tail, size)| {
                    let mut b = header("e/records.jsonl", tar::EntryType::Regular, size).as_bytes().to_vec();
                    b.extend(tail);
                    b
                }),
            ],
        ) {
            let _ = read(&bytes);
        }

        /// Archives of regular files with any names and contents are read exactly when they
        /// hold the three files of an export (text where text is needed).
        #[test]
        fn archives_of_any_files_are_read_only_when_complete(
            files in proptest::collection::vec(
                (
                    prop::sample::select(vec![
                        "e/records.jsonl", "e/checkpoint", "e/audit.vkey", "e/checkpoints/3",
                        "e/checkpoints/x", "records.jsonl", "e/other", "e/a/b/c",
                    ]),
                    prop_oneof![
                        proptest::collection::vec(any::<u8>(), 0..64),
                        "[ -~\n]{0,40}".prop_map(String::into_bytes),
                    ],
                ),
                0..8,
            ),
        ) {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in &files {
                b.append(&header(name, tar::EntryType::Regular, data.len() as u64), &data[..]).unwrap();
            }
            let r = read(&b.into_inner().unwrap());
            // What the reader goes by: the path below the archive's top directory.
            let rel = |f: &'static str| f.split_once('/').map(|(_, r)| r).unwrap_or(f);
            let has = |n: &str| files.iter().any(|(f, _)| rel(f) == n);
            let complete = has("records.jsonl") && has("checkpoint") && has("audit.vkey");
            let texts = files
                .iter()
                .filter(|(f, _)| {
                    let r = rel(f);
                    let numbered = r.strip_prefix("checkpoints/").is_some_and(|n| n.parse::<u64>().is_ok());
                    r == "checkpoint" || r == "audit.vkey" || numbered
                })
                .all(|(_, d)| std::str::from_utf8(d).is_ok());
            prop_assert_eq!(r.is_ok(), complete && texts, "{:?}", r.err());
        }

        /// A complete export with one entry that is not a regular file (a sparse file claiming
        /// up to a terabyte, a link, a device, a FIFO) is refused before anything is read.
        #[test]
        fn archives_with_special_entries_are_refused_without_reading_them(
            claim in prop_oneof![0u64..4096, Just(1u64 << 40), (1u64 << 30)..(1u64 << 40)],
            kind in prop::sample::select(vec![
                tar::EntryType::GNUSparse, tar::EntryType::Symlink, tar::EntryType::Link, tar::EntryType::Char,
                tar::EntryType::Block, tar::EntryType::Fifo, tar::EntryType::Continuous,
            ]),
            name in prop::sample::select(vec!["e/records.jsonl", "e/checkpoint", "e/other"]),
        ) {
            let mut b = tar::Builder::new(Vec::new());
            complete(&mut b);
            let mut bytes = b.into_inner().unwrap();
            // Drop the end-of-archive marker, add the entry, end the archive again.
            bytes.truncate(bytes.len() - 1024);
            if kind == tar::EntryType::GNUSparse {
                bytes.extend(sparse(name, claim));
            } else {
                bytes.extend_from_slice(header(name, kind, 0).as_bytes());
            }
            bytes.extend(vec![0u8; 1024]);
            let r = read(&bytes);
            let refused = r.as_ref().is_err_and(|e| e.to_string().contains("not a regular file"));
            prop_assert!(refused, "{:?}", r.map(|e| e.records.len()));
        }
    }
}
