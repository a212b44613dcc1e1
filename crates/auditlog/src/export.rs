//! The export format and its offline verification (`strongroom audit verify DIR`).
//!
//! ```text
//! DIR/records.jsonl          one record per line: each line without its '\n' is exactly the
//!                            canonical bytes of one leaf, in log order
//! DIR/checkpoint             the latest signed checkpoint (C2SP signed note)
//! DIR/checkpoints/<size>     earlier signed checkpoints, by tree size
//! DIR/audit.vkey             the verifier key line
//! ```
//!
//! Verification recomputes the tree, checks every checkpoint's signature and root, checks a
//! checkpoint the auditor saved earlier (consistency: same root at its size), and re-verifies
//! every recorded passkey approval against the key the log recorded for that credential.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::assertion::{self, CredentialKey, RecordedAssertion};
use crate::note::Checkpoint;
use crate::record::Record;
use crate::tree::Tree;
use crate::{AuditError, Result};

/// An export in memory.
#[derive(Clone, Debug, Default)]
pub struct Export {
    /// `records.jsonl`.
    pub records: Vec<u8>,
    /// The latest checkpoint note.
    pub checkpoint: String,
    /// Earlier checkpoint notes by size.
    pub checkpoints: Vec<(u64, String)>,
    /// The verifier key line.
    pub vkey: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.display().to_string(), source }
}

impl Export {
    /// Reads an export directory.
    pub fn read(dir: &Path) -> Result<Export> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(io(&p))
        };
        let text = |name: &str| read(name).map(|b| String::from_utf8_lossy(&b).into_owned());
        let mut checkpoints = Vec::new();
        let cdir = dir.join("checkpoints");
        if cdir.is_dir() {
            for e in std::fs::read_dir(&cdir).map_err(io(&cdir))? {
                let e = e.map_err(io(&cdir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(size) = name.parse::<u64>() else { continue };
                let body = std::fs::read(e.path()).map_err(io(&e.path()))?;
                checkpoints.push((size, String::from_utf8_lossy(&body).into_owned()));
            }
        }
        checkpoints.sort_by_key(|(s, _)| *s);
        Ok(Export {
            records: read("records.jsonl")?,
            checkpoint: text("checkpoint")?,
            checkpoints,
            vkey: text("audit.vkey")?.trim().to_string(),
        })
    }

    /// Writes an export directory (created if missing; files replaced).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let cdir = dir.join("checkpoints");
        std::fs::create_dir_all(&cdir).map_err(io(&cdir))?;
        let put = |name: &Path, bytes: &[u8]| std::fs::write(name, bytes).map_err(io(name));
        put(&dir.join("records.jsonl"), &self.records)?;
        put(&dir.join("checkpoint"), self.checkpoint.as_bytes())?;
        for (size, note) in &self.checkpoints {
            put(&cdir.join(size.to_string()), note.as_bytes())?;
        }
        put(&dir.join("audit.vkey"), format!("{}\n", self.vkey.trim()).as_bytes())
    }
}

/// What to trust beyond the export itself.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The verifier key to use instead of the export's `audit.vkey` (the auditor's own copy).
    pub vkey: Option<String>,
    /// A checkpoint the auditor saved earlier; the log must still contain that exact tree.
    pub trusted_checkpoint: Option<String>,
}

/// What was verified.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Records in the export.
    pub records: u64,
    /// Size of the latest checkpoint.
    pub checkpoint_size: u64,
    /// Its root, hex.
    pub root: String,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints_checked: usize,
    /// Credentials registered in the log.
    pub credentials: usize,
    /// Passkey approvals whose authenticator signature was re-verified.
    pub approvals_verified: usize,
}

/// The first thing that does not hold.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The first bad record, when it can be named.
    pub record: Option<u64>,
    /// What and why.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.record {
            Some(r) => write!(f, "record {r}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

fn problem(record: Option<u64>, what: impl Into<String>) -> Problem {
    Problem { record, what: what.into() }
}

/// Checks one record's evidence: registers credential keys, re-verifies approvals.
fn check_evidence(
    seq: u64,
    r: &Record,
    keys: &mut HashMap<String, (CredentialKey, u64)>,
) -> std::result::Result<bool, Problem> {
    let d = &r.details;
    if let Some(c) = d.get("credential").filter(|c| c.get("public_key").is_some()) {
        let id = c["id"].as_str().ok_or_else(|| problem(Some(seq), "credential without an id"))?.to_string();
        let key: CredentialKey =
            serde_json::from_value(c.clone()).map_err(|e| problem(Some(seq), format!("credential key: {e}")))?;
        if keys.insert(id.clone(), (key, seq)).is_some() {
            return Err(problem(Some(seq), format!("credential {id} is registered a second time")));
        }
    }
    let (Some(a), Some(ap)) = (d.get("assertion"), d.get("approval")) else { return Ok(false) };
    let a: RecordedAssertion =
        serde_json::from_value(a.clone()).map_err(|e| problem(Some(seq), format!("assertion: {e}")))?;
    let field = |k: &str| {
        ap.get(k).and_then(|v| v.as_str()).ok_or_else(|| problem(Some(seq), format!("approval evidence lacks {k}")))
    };
    let (digest, nonce, rp_id, origin) = (field("digest")?, field("nonce")?, field("rp_id")?, field("origin")?);
    if let Some(op) = ap.get("operation_json").and_then(|v| v.as_str()) {
        use sha2::Digest as _;
        if hex::encode(sha2::Sha256::digest(op.as_bytes())) != digest {
            return Err(problem(Some(seq), "the recorded operation does not hash to the approved digest"));
        }
    }
    let nonce = hex::decode(nonce).map_err(|_| problem(Some(seq), "approval nonce is not hex"))?;
    let (key, at) = keys.get(&a.credential_id).ok_or_else(|| {
        problem(Some(seq), format!("approved with credential {} that the log never registered", a.credential_id))
    })?;
    let challenge = assertion::approval_challenge(digest, &nonce);
    assertion::verify(key, &a, &challenge, rp_id, origin).map_err(|why| {
        problem(Some(seq), format!("passkey approval does not verify with the key registered in record {at}: {why}"))
    })?;
    Ok(true)
}

/// Verifies an export. `Ok` only if everything holds; otherwise the first problem.
pub fn verify(export: &Export, opts: &Options) -> std::result::Result<Report, Problem> {
    let vkey = opts.vkey.as_deref().unwrap_or(&export.vkey).trim().to_string();
    let mut tree = Tree::new();
    let mut keys = HashMap::new();
    let mut approvals = 0usize;
    let body = &export.records;
    if !body.is_empty() && !body.ends_with(b"\n") {
        return Err(problem(None, "records.jsonl does not end with a newline: the last record is cut off"));
    }
    let lines = if body.is_empty() { Vec::new() } else { body[..body.len() - 1].split(|&b| b == b'\n').collect() };
    for (i, line) in lines.iter().enumerate() {
        // Records are numbered from 1; leaf index = seq - 1.
        let seq = i as u64 + 1;
        let r = Record::from_canonical(seq, line).map_err(|e| problem(Some(seq), e.to_string()))?;
        if r.seq != seq {
            return Err(problem(
                Some(seq),
                format!("is numbered {} at line {seq}: records were deleted, inserted or reordered", r.seq),
            ));
        }
        if check_evidence(seq, &r, &mut keys)? {
            approvals += 1;
        }
        tree.push(line).map_err(|e| problem(Some(seq), e.to_string()))?;
    }
    let n = tree.size();
    let latest = Checkpoint::open(&export.checkpoint, &vkey).map_err(|e| problem(None, format!("latest {e}")))?;
    let mut all: Vec<Checkpoint> = Vec::new();
    for (size, note) in &export.checkpoints {
        let cp = Checkpoint::open(note, &vkey).map_err(|e| problem(None, format!("checkpoints/{size}: {e}")))?;
        if cp.size != *size {
            return Err(problem(None, format!("checkpoints/{size} is a checkpoint of size {}", cp.size)));
        }
        all.push(cp);
    }
    all.push(latest.clone());
    if let Some(t) = &opts.trusted_checkpoint {
        let t = Checkpoint::open(t, &vkey).map_err(|e| problem(None, format!("trusted {e}")))?;
        if let Some(same) = all.iter().find(|c| c.size == t.size && c.root != t.root) {
            return Err(problem(
                None,
                format!("fork: the log signed two different trees of size {} (yours and the export's)", same.size),
            ));
        }
        if t.size > n {
            return Err(problem(
                Some(n + 1),
                format!("the export holds {n} records but your trusted checkpoint covers {}: the log was truncated or rolled back", t.size),
            ));
        }
        all.push(t);
    }
    all.sort_by_key(|c| c.size);
    for w in all.windows(2) {
        if w[0].size == w[1].size && w[0].root != w[1].root {
            return Err(problem(None, format!("fork: two different signed trees of size {}", w[0].size)));
        }
    }
    let mut good = 0u64;
    for cp in &all {
        if cp.size > n {
            return Err(problem(
                Some(n + 1),
                format!(
                    "a checkpoint covers {} records but the export holds {n}: records were removed from the end",
                    cp.size
                ),
            ));
        }
        let root = tree.root(cp.size).map_err(|e| problem(None, e.to_string()))?;
        if root != cp.root {
            return Err(problem(
                Some(good + 1),
                format!(
                    "records {}..={} do not match the checkpoint signed at size {}: one of them was altered",
                    good + 1,
                    cp.size,
                    cp.size
                ),
            ));
        }
        good = cp.size;
    }
    Ok(Report {
        records: n,
        checkpoint_size: latest.size,
        root: hex::encode(latest.root),
        checkpoints_checked: all.len(),
        credentials: keys.len(),
        approvals_verified: approvals,
    })
}

/// Reads and verifies an export directory.
pub fn verify_dir(dir: &Path, opts: &Options) -> std::result::Result<Report, Problem> {
    let export = Export::read(dir).map_err(|e| problem(None, e.to_string()))?;
    verify(&export, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{json_value, record, text};
    use crate::AuditKey;
    use proptest::prelude::*;

    fn key() -> AuditKey {
        AuditKey::from_seed("example.com/audit", [3; 32]).unwrap()
    }

    /// The checkpoint our key signs over the first `size` of `lines` (sizes past the end sign
    /// the root of what is there, under the larger size: a checkpoint a truncated export
    /// would be checked against).
    fn checkpoint(lines: &[Vec<u8>], size: u64) -> String {
        let mut tree = Tree::new();
        for l in lines.iter().take(size as usize) {
            tree.push(l).unwrap();
        }
        let root = tree.root(tree.size()).unwrap();
        key().sign_checkpoint(size, &root).unwrap().note
    }

    /// Evidence fields as a forger would write them: credential keys and approvals whose
    /// values have the right names but any types and contents.
    fn evidence() -> impl Strategy<Value = serde_json::Value> {
        let s = || prop_oneof![4 => text().prop_map(serde_json::Value::from), 1 => json_value()];
        let credential = (prop_oneof![2 => Just(serde_json::json!("c1")), 1 => s()], s(), s())
            .prop_map(|(id, alg, pk)| serde_json::json!({"id": id, "alg": alg, "public_key": pk}));
        let assertion =
            (prop_oneof![2 => Just(serde_json::json!("c1")), 1 => s()], s(), s(), s()).prop_map(|(id, a, c, sig)| {
                serde_json::json!({
                    "credential_id": id, "authenticator_data": a, "client_data_json": c, "signature": sig
                })
            });
        let approval =
            (s(), prop_oneof![2 => Just(serde_json::json!("00ff")), 1 => s()], s(), s(), proptest::option::of(s()))
                .prop_map(|(d, n, rp, o, op)| {
                    let mut v = serde_json::json!({"digest": d, "nonce": n, "rp_id": rp, "origin": o});
                    if let Some(op) = op {
                        v["operation_json"] = op;
                    }
                    v
                });
        (
            proptest::option::of(credential),
            proptest::option::of(assertion),
            proptest::option::of(approval),
            json_value(),
        )
            .prop_map(|(c, a, ap, other)| {
                let mut d = serde_json::json!({"other": other});
                for (k, v) in [("credential", c), ("assertion", a), ("approval", ap)] {
                    if let Some(v) = v {
                        d[k] = v;
                    }
                }
                d
            })
    }

    /// Canonical record lines numbered from 1 (mostly), with hostile evidence.
    fn lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let line = (record(), prop_oneof![3 => evidence(), 1 => json_value()], prop::bool::weighted(0.9));
        proptest::collection::vec(line, 0..6).prop_map(|rs| {
            rs.into_iter()
                .enumerate()
                .filter_map(|(i, (mut r, details, numbered))| {
                    if numbered {
                        r.seq = i as u64 + 1;
                    }
                    r.details = details;
                    r.canonical().ok()
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// An export whose every file holds anything (records with and without newlines,
        /// notes, key lines), checked with or without the auditor's own key and checkpoint,
        /// is verified or refused with a problem, never a panic.
        #[test]
        fn arbitrary_exports_never_panic_verification(
            records in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(
                    prop::sample::select(vec![b'\n', b'{', b'}', b'"', b'a', b'1', b':']),
                    0..100,
                ),
            ],
            checkpoint_note in prop_oneof![Just(checkpoint(&[], 0)), "(?s).{0,200}"],
            checkpoints in proptest::collection::vec(
                (any::<u64>(), prop_oneof![Just(checkpoint(&[], 0)), "(?s).{0,100}"]),
                0..3,
            ),
            vkey in prop_oneof![Just(key().vkey()), "(?s).{0,80}"],
            auditor_vkey in proptest::option::of(prop_oneof![Just(key().vkey()), "(?s).{0,80}"]),
            trusted in proptest::option::of(prop_oneof![Just(checkpoint(&[], 0)), "(?s).{0,100}"]),
        ) {
            let export = Export { records, checkpoint: checkpoint_note, checkpoints, vkey };
            let opts = Options { vkey: auditor_vkey, trusted_checkpoint: trusted };
            if let Ok(report) = verify(&export, &opts) {
                prop_assert_eq!(report.records, 0);
            }
        }

        /// Records that are canonical and under a valid signature, but whose evidence is
        /// hostile (credential keys and approvals of any shape), numbered wrongly at times,
        /// with earlier, later and trusted checkpoints of any size: verified or refused with
        /// a problem, never a panic; a report covers exactly the records.
        #[test]
        fn hostile_records_under_a_valid_signature_never_panic_verification(
            lines in lines(),
            sizes in proptest::collection::vec(0u64..8, 0..3),
            trusted in proptest::option::of(0u64..8),
        ) {
            let n = lines.len() as u64;
            let mut records = Vec::new();
            for l in &lines {
                records.extend_from_slice(l);
                records.push(b'\n');
            }
            let export = Export {
                records,
                checkpoint: checkpoint(&lines, n),
                checkpoints: sizes.iter().map(|&s| (s, checkpoint(&lines, s))).collect(),
                vkey: key().vkey(),
            };
            let opts = Options { vkey: None, trusted_checkpoint: trusted.map(|s| checkpoint(&lines, s)) };
            if let Ok(report) = verify(&export, &opts) {
                prop_assert_eq!(report.records, n);
                prop_assert_eq!(report.checkpoint_size, n);
            }
        }

        /// An export directory with files of any contents, missing files, directories where
        /// files belong and checkpoint names of any kind is verified or refused, never a panic.
        #[test]
        fn arbitrary_export_directories_never_panic_verify_dir(
            files in proptest::collection::vec(
                (
                    prop::sample::select(vec![
                        "records.jsonl", "checkpoint", "audit.vkey", "checkpoints/0", "checkpoints/1",
                        "checkpoints/18446744073709551615", "checkpoints/99999999999999999999", "checkpoints/x",
                        "checkpoints/-1", "checkpoints",
                    ]),
                    prop_oneof![proptest::collection::vec(any::<u8>(), 0..120), Just(checkpoint(&[], 0).into_bytes())],
                    prop::bool::weighted(0.1),
                ),
                0..8,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            for (name, bytes, as_dir) in files {
                let path = dir.path().join(name);
                if path.exists() {
                    continue;
                }
                if let Some(parent) = path.parent() {
                    if std::fs::create_dir_all(parent).is_err() {
                        continue;
                    }
                }
                let _ = if as_dir { std::fs::create_dir(&path) } else { std::fs::write(&path, bytes) };
            }
            if let Ok(report) = verify_dir(dir.path(), &Options::default()) {
                prop_assert_eq!(report.records, 0);
            }
        }
    }
}
