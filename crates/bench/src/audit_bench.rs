//! `audit`: durable audit appends per second (the server's group commit on a real SQLite file,
//! many concurrent appenders) and offline verification speed of an export (records parsed and
//! re-canonicalised, the tree recomputed, checkpoints checked, every passkey approval's ES256
//! signature re-verified).

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use serde::Serialize;
use sha2::Digest as _;

#[derive(Serialize)]
struct AuditBench {
    machine: String,
    appenders: usize,
    appends: u64,
    append_seconds: f64,
    appends_per_second: f64,
    verify_records: u64,
    verify_approvals: u64,
    verify_seconds: f64,
    records_verified_per_second: f64,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An export of `n` records: one enrollment with a P-256 key, then every 100th record a
/// passkey approval signed by it, the rest ordinary decisions; checkpoints every 100,000.
fn synthetic_export(n: u64) -> anyhow::Result<auditlog::export::Export> {
    let key = auditlog::AuditKey::from_seed("bench.example/audit", [1; 32])?;
    let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32])?;
    let origin = "https://vault.example";
    let rp_hash = sha2::Sha256::digest(b"vault.example");
    let mut tree = auditlog::Tree::new();
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    for seq in 1..=n {
        let details = if seq == 1 {
            serde_json::json!({"credential": {"id": "cred-1", "alg": "ES256",
                "public_key": b64(sk.verifying_key().to_encoded_point(false).as_bytes())}})
        } else if seq % 100 == 0 {
            let op = format!(r#"{{"kind":"restore","seq":{seq},"vault":"prod"}}"#);
            let digest = hex::encode(sha2::Sha256::digest(op.as_bytes()));
            let nonce = [seq as u8; 32];
            let challenge = auditlog::assertion::approval_challenge(&digest, &nonce);
            let mut auth = rp_hash.to_vec();
            auth.push(0x05);
            auth.extend_from_slice(&(seq as u32).to_be_bytes());
            let cd = format!(r#"{{"type":"webauthn.get","challenge":"{}","origin":"{origin}"}}"#, b64(&challenge));
            let mut msg = auth.clone();
            msg.extend_from_slice(&sha2::Sha256::digest(cd.as_bytes()));
            let sig: p256::ecdsa::Signature = sk.sign(&msg);
            serde_json::json!({
                "assertion": {"credential_id": "cred-1", "authenticator_data": b64(&auth),
                    "client_data_json": b64(cd.as_bytes()), "signature": b64(sig.to_der().as_bytes())},
                "approval": {"digest": digest, "nonce": hex::encode(nonce), "operation_json": op,
                    "rp_id": "vault.example", "origin": origin},
            })
        } else {
            serde_json::json!({"operation": "vault-read", "resource": "vault:prod", "decision": {"decision": "allow"}})
        };
        let r = auditlog::Record {
            seq,
            time: 1_800_000_000 + seq as i64,
            kind: if seq % 100 == 0 { "restore.approve".into() } else { "decision".into() },
            actor: format!("user{}", seq % 17),
            outcome: "allow".into(),
            vault: Some("prod".into()),
            reason: None,
            details,
        };
        let leaf = r.canonical()?;
        tree.push(&leaf)?;
        records.extend_from_slice(&leaf);
        records.push(b'\n');
        if seq % 100_000 == 0 && seq < n {
            checkpoints.push((seq, key.sign_checkpoint(seq, &tree.root(seq)?)?.note));
        }
    }
    let checkpoint = key.sign_checkpoint(n, &tree.root(n)?)?.note;
    Ok(auditlog::export::Export { records, checkpoint, checkpoints, vkey: key.vkey() })
}

/// Runs the audit benchmark and writes the results.
pub(crate) fn run(appends: u64, appenders: usize, verify_records: u64, out: &std::path::Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let (append_seconds, done) = rt.block_on(async {
        let store = store::Store::open_sqlite(&dir.path().join("metadata.db")).await?;
        let key = auditlog::AuditKey::from_seed("bench.example/audit", [2; 32])?;
        let log = Arc::new(server::audit_log::AuditLog::open(&store, key).await.map_err(anyhow::Error::msg)?);
        let store = Arc::new(store);
        let per = appends / appenders as u64;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for a in 0..appenders {
            let (log, store) = (log.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    let details = serde_json::json!({"operation": "backup", "resource": "vault:prod", "n": i});
                    let event = store::AuditEvent {
                        time: 1_800_000_000,
                        kind: "decision".into(),
                        actor: format!("bot{a}"),
                        outcome: "allow".into(),
                        details_json: details.to_string(),
                    };
                    log.append(&store, event, details, 1_800_000_000).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok((started.elapsed().as_secs_f64(), per * appenders as u64))
    })?;
    println!(
        "durable appends: {done} by {appenders} concurrent appenders in {append_seconds:.2} s = {:.0}/s",
        done as f64 / append_seconds
    );

    println!("building an export of {verify_records} records (1 % passkey approvals)...");
    let export = synthetic_export(verify_records)?;
    let started = Instant::now();
    let report = auditlog::export::verify(&export, &Default::default()).map_err(|p| anyhow::anyhow!("{p}"))?;
    let verify_seconds = started.elapsed().as_secs_f64();
    println!(
        "verified {} records ({} passkey signatures, {} checkpoints) in {verify_seconds:.2} s = {:.0} records/s",
        report.records,
        report.approvals_verified,
        report.checkpoints_checked,
        report.records as f64 / verify_seconds
    );
    crate::sys::write_json(
        out,
        &AuditBench {
            machine: crate::peers::machine(),
            appenders,
            appends: done,
            append_seconds,
            appends_per_second: done as f64 / append_seconds,
            verify_records: report.records,
            verify_approvals: report.approvals_verified as u64,
            verify_seconds,
            records_verified_per_second: report.records as f64 / verify_seconds,
        },
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
