//! `check`: is the repository whole? Structure always; with `read_data`, every byte.
//!
//! Findings name the object they concern. Errors mean data is lost or damaged; warnings are
//! harmless leftovers (an unindexed pack after an interrupted backup) that `prune` or
//! `repair index` tidy up.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::model::{Content, NodeKind};
use crate::pack::{self, pack_name, FOOTER_LEN, PACK_KEY_AAD};
use crate::repository::{snapshot_name, Repository};

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The object concerned (`data/ab/ab…`, `index/…`, `snapshots/…`, `tree …`).
    pub object: String,
    /// What is wrong.
    pub message: String,
}

/// The result of a check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees read.
    pub trees: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Blobs read and verified (with `read_data`).
    pub blobs_verified: usize,
    /// Damage: data that cannot be restored.
    pub errors: Vec<Finding>,
    /// Harmless leftovers.
    pub warnings: Vec<Finding>,
}

impl CheckReport {
    /// True if and only if no errors were found.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

fn finding(e: &Error) -> Finding {
    match e {
        Error::Corrupt { object, reason } => Finding { object: object.clone(), message: reason.clone() },
        Error::NotFound(what) => Finding { object: what.clone(), message: "missing".into() },
        Error::Key { object } => Finding { object: object.clone(), message: "cannot be decrypted".into() },
        other => Finding { object: String::new(), message: other.to_string() },
    }
}

/// Checks the repository. With `read_data`, downloads every pack and verifies every blob.
pub fn check(repo: &Repository, read_data: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    for e in repo.index_errors().iter() {
        report.errors.push(finding(e));
    }

    // Packs: the index and the storage must agree.
    let stored: HashMap<Id, u64> = repo
        .backend()
        .list("data")?
        .into_iter()
        .filter_map(|(name, size)| name.rsplit('/').next().and_then(Id::from_hex).map(|id| (id, size)))
        .collect();
    let index_packs: Vec<(u32, crate::index::PackMeta)> =
        repo.index().packs().iter().enumerate().map(|(i, p)| (i as u32, p.clone())).collect();
    report.packs = index_packs.len();
    let indexed: HashSet<Id> = index_packs.iter().map(|(_, p)| p.id).collect();
    for (_, p) in &index_packs {
        match stored.get(&p.id) {
            None => report.errors.push(Finding {
                object: pack_name(&p.id),
                message: "pack is in the index but missing from storage".into(),
            }),
            Some(&size) if size != p.size => report.errors.push(Finding {
                object: pack_name(&p.id),
                message: format!("pack is {size} bytes, the index says {}", p.size),
            }),
            Some(_) => {}
        }
    }
    for id in stored.keys().filter(|id| !indexed.contains(id)) {
        report.warnings.push(Finding {
            object: pack_name(id),
            message:
                "pack is not in the index (left by an interrupted backup; `prune` removes it, `repair index` adopts it)"
                    .into(),
        });
    }

    // Snapshots and trees: everything referenced must be indexed and readable.
    let mut trees_seen: HashSet<Id> = HashSet::new();
    for id in repo.snapshot_ids()? {
        report.snapshots += 1;
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                let mut f = finding(&e);
                f.object = snapshot_name(&id);
                report.errors.push(f);
                continue;
            }
        };
        let mut stack = vec![snap.tree];
        while let Some(tree_id) = stack.pop() {
            if !trees_seen.insert(tree_id) {
                continue;
            }
            report.trees += 1;
            let tree = match repo.load_tree(&tree_id) {
                Ok(t) => t,
                Err(e) => {
                    let mut f = finding(&e);
                    f.message = format!("{} (snapshot {})", f.message, id.short());
                    report.errors.push(f);
                    continue;
                }
            };
            let index = repo.index();
            for node in &tree.nodes {
                if node.kind == NodeKind::Dir {
                    if let Some(sub) = node.subtree {
                        stack.push(sub);
                    }
                }
                for c in &node.content {
                    if let Content::Chunk { id: cid, len } = c {
                        match index.get(cid) {
                            None => report.errors.push(Finding {
                                object: format!("chunk {cid}"),
                                message: format!(
                                    "missing; needed by {:?} in snapshot {}",
                                    node.name.display(),
                                    id.short()
                                ),
                            }),
                            Some(loc) if loc.raw_len != *len => report.errors.push(Finding {
                                object: format!("chunk {cid}"),
                                message: "length in the tree differs from the index".into(),
                            }),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }

    if read_data {
        let results: Vec<(usize, Vec<Finding>)> = index_packs
            .par_iter()
            .filter(|(_, p)| stored.contains_key(&p.id))
            .map(|(pos, p)| verify_pack(repo, *pos, p))
            .collect();
        for (n, f) in results {
            report.blobs_verified += n;
            report.errors.extend(f);
        }
    }
    report.errors.sort_by(|a, b| a.object.cmp(&b.object));
    Ok(report)
}

/// Downloads one pack and verifies its name, header and every blob.
fn verify_pack(repo: &Repository, pos: u32, meta: &crate::index::PackMeta) -> (usize, Vec<Finding>) {
    let name = pack_name(&meta.id);
    let mut findings = Vec::new();
    let bytes = match repo.backend().get(&name) {
        Ok(b) => b,
        Err(e) => return (0, vec![finding(&e)]),
    };
    if Id::hash_of(&bytes) != meta.id {
        findings.push(Finding {
            object: name.clone(),
            message: "pack contents do not match its name (bit rot or tampering)".into(),
        });
    }
    // The header must agree with the index.
    if let Err(e) = parse_pack(repo, &name, &bytes) {
        findings.push(finding(&e));
    }
    let mut verified = 0;
    let blobs: Vec<(Id, crate::index::BlobLoc)> =
        repo.index().blobs().filter(|(_, l)| l.pack == pos).map(|(id, l)| (*id, *l)).collect();
    for (id, loc) in blobs {
        let s = loc.offset as usize;
        let Some(ct) = bytes.get(s..s + loc.len as usize) else {
            findings.push(Finding {
                object: name.clone(),
                message: format!("blob {} lies beyond the end of the pack", id.short()),
            });
            continue;
        };
        match repo.decode_blob(&id, &loc, ct) {
            Ok(_) => verified += 1,
            Err(e) => findings.push(finding(&e)),
        }
    }
    (verified, findings)
}

/// Reads a pack's footer and header (used by check and by `repair index`).
pub(crate) fn parse_pack(repo: &Repository, name: &str, bytes: &[u8]) -> Result<(pack::Footer, Vec<pack::PackEntry>)> {
    if bytes.len() < FOOTER_LEN {
        return Err(Error::corrupt(name, "too short to be a pack"));
    }
    let footer = pack::parse_footer(name, &bytes[bytes.len() - FOOTER_LEN..])?;
    let data_end = (bytes.len() - FOOTER_LEN)
        .checked_sub(footer.header_len as usize)
        .ok_or_else(|| Error::corrupt(name, "header length exceeds the pack"))?;
    let kek = repo
        .kek(footer.kek_version)
        .ok_or_else(|| Error::corrupt(name, format!("unknown key version {}", footer.kek_version)))?;
    let dek = kek
        .unwrap_key(&footer.wrapped, PACK_KEY_AAD, name)
        .map_err(|_| Error::corrupt(name, "pack data key fails authentication"))?;
    let entries = pack::parse_header(name, &dek, &bytes[data_end..bytes.len() - FOOTER_LEN], data_end as u64)?;
    Ok((footer, entries))
}
