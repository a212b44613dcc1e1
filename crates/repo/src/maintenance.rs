//! `forget` (retention rules), `prune` (drop unreferenced data, repack sparse packs) and
//! `repair index` (rebuild the index from the packs alone).
//!
//! Order of writes keeps every step crash-safe: new packs, then an index that covers them and
//! names the index files it supersedes, then deletion of old index files, then of old packs.
//! An interruption anywhere leaves a readable repository; at worst some unreferenced packs.
//! Prune must not run while a backup writes to the same repository (the server serialises them).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{index_pack, Index};
use crate::model::{Content, IndexFile, Snapshot};
use crate::pack::{self, pack_name, FOOTER_LEN};
use crate::repository::{index_name, Repository};
use crate::writer::PreparedChunk;

/// Which snapshots to keep. A snapshot is kept if any rule keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// Keep the newest N.
    pub keep_last: usize,
    /// Keep the newest snapshot of each of the last N days that have snapshots.
    pub keep_daily: usize,
    /// Same per ISO week.
    pub keep_weekly: usize,
    /// Same per calendar month.
    pub keep_monthly: usize,
}

impl Retention {
    /// True if no rule is set (such a policy would delete everything, so it is refused).
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0 && self.keep_daily == 0 && self.keep_weekly == 0 && self.keep_monthly == 0
    }
}

/// The decision for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForgetDecision {
    /// Snapshot id.
    pub id: Id,
    /// Snapshot time.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Whether it stays.
    pub keep: bool,
    /// The rules that keep it (empty when removed).
    pub reasons: Vec<String>,
}

/// Applies `policy` to snapshots, separately for each (host, paths) group. Pure: no I/O.
pub fn plan_forget(snapshots: &[(Id, Snapshot)], policy: &Retention) -> Result<Vec<ForgetDecision>> {
    if policy.is_empty() {
        return Err(Error::Invalid("a retention policy needs at least one keep rule".into()));
    }
    type Group = (String, Vec<String>);
    let mut groups: HashMap<Group, Vec<&(Id, Snapshot)>> = HashMap::new();
    for s in snapshots {
        groups.entry((s.1.hostname.clone(), s.1.paths.clone())).or_default().push(s);
    }
    let mut out = Vec::new();
    for (_, mut list) in groups {
        list.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
        type Bucket = fn(&OffsetDateTime) -> (i32, u32);
        let rules: [(&str, usize, Bucket); 4] = [
            ("last", policy.keep_last, |_| (0, 0)),
            ("daily", policy.keep_daily, |t| (t.year(), t.ordinal() as u32)),
            ("weekly", policy.keep_weekly, |t| {
                let (y, w, _) = t.to_iso_week_date();
                (y, w as u32)
            }),
            ("monthly", policy.keep_monthly, |t| (t.year(), t.month() as u32)),
        ];
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); list.len()];
        for (rule, count, bucket) in rules {
            let mut left = count;
            let mut last: Option<(i32, u32)> = None;
            for (i, (_, snap)) in list.iter().map(|s| (&s.0, &s.1)).enumerate() {
                if left == 0 {
                    break;
                }
                let b = if rule == "last" { (0, i as u32) } else { bucket(&snap.time.to_offset(time::UtcOffset::UTC)) };
                if last != Some(b) {
                    reasons[i].push(rule.to_string());
                    left -= 1;
                    last = Some(b);
                }
            }
        }
        for (s, r) in list.iter().zip(reasons) {
            out.push(ForgetDecision { id: s.0, time: s.1.time, keep: !r.is_empty(), reasons: r });
        }
    }
    out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Applies a retention policy: deletes the snapshots it does not keep (data stays until prune).
pub fn forget(repo: &Repository, policy: &Retention, dry_run: bool) -> Result<Vec<ForgetDecision>> {
    let plan = plan_forget(&repo.snapshots()?, policy)?;
    if !dry_run {
        for d in plan.iter().filter(|d| !d.keep) {
            repo.backend().delete(&crate::repository::snapshot_name(&d.id))?;
        }
        repo.backend().sync()?;
    }
    Ok(plan)
}

/// Settings of prune.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack a pack when more than this percentage of its bytes is unreferenced.
    pub max_unused_percent: u8,
    /// Only report what would be done.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { max_unused_percent: 20, dry_run: false }
    }
}

/// What prune did (or would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Blobs referenced by some snapshot.
    pub blobs_used: usize,
    /// Blobs dropped.
    pub blobs_removed: usize,
    /// Packs deleted outright (nothing in them referenced).
    pub packs_deleted: usize,
    /// Packs rewritten because they were mostly unreferenced.
    pub packs_repacked: usize,
    /// Packs found in storage but not in the index, deleted.
    pub orphans_deleted: usize,
    /// Bytes of storage freed (net of what repacking wrote).
    pub bytes_freed: i64,
}

/// Every blob id referenced by any snapshot. Fails if any snapshot or tree cannot be read:
/// deciding what is unused from a partial view would delete live data.
pub fn used_blobs(repo: &Repository) -> Result<HashSet<Id>> {
    let mut used = HashSet::new();
    for (_, snap) in repo.snapshots()? {
        let mut stack = vec![snap.tree];
        while let Some(t) = stack.pop() {
            if !used.insert(t) {
                continue;
            }
            for node in repo.load_tree(&t)?.nodes {
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
                for c in node.content {
                    if let Content::Chunk { id, .. } = c {
                        used.insert(id);
                    }
                }
            }
        }
    }
    Ok(used)
}

/// Removes unreferenced data. See the module documentation for the crash-safe order.
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    // Packs the index does not know are deleted as orphans, so the index must be complete:
    // an unreadable or lost index file would turn packs of live data into "orphans".
    if let Some(e) = repo.index_errors().first() {
        return Err(Error::Invalid(format!(
            "refusing to prune: an index file is unreadable ({e}); run `repair index` first"
        )));
    }
    let used = used_blobs(repo)?;
    {
        let index = repo.index();
        let unindexed = used.iter().filter(|id| !index.contains(id)).count();
        if unindexed > 0 {
            return Err(Error::Invalid(format!(
                "refusing to prune: {unindexed} chunks used by snapshots are not in the index; run `repair index` first"
            )));
        }
    }
    let mut report = PruneReport { blobs_used: used.len(), ..Default::default() };
    let (mut keep, mut delete, mut repack) = (Vec::new(), Vec::new(), Vec::new());
    {
        let index = repo.index();
        let mut used_bytes: HashMap<u32, u64> = HashMap::new();
        let mut unused_blobs: HashMap<u32, usize> = HashMap::new();
        for (id, loc) in index.blobs() {
            if used.contains(id) {
                *used_bytes.entry(loc.pack).or_default() += u64::from(loc.len);
            } else {
                *unused_blobs.entry(loc.pack).or_default() += 1;
            }
        }
        for (pos, meta) in index.packs().iter().enumerate() {
            let pos = pos as u32;
            // Unused = everything but live blobs: dead blobs, duplicates, header and footer.
            let live = used_bytes.get(&pos).copied().unwrap_or(0);
            if live == 0 {
                delete.push(pos);
            } else if (meta.size - live.min(meta.size)) * 100 > meta.size * u64::from(opts.max_unused_percent) {
                repack.push(pos);
            } else {
                keep.push(pos);
            }
        }
        // Unused blobs in kept packs stay; only those in deleted or rewritten packs go.
        report.blobs_removed = delete.iter().chain(&repack).filter_map(|p| unused_blobs.get(p)).sum();
    }
    let indexed: HashSet<Id> = repo.index().packs().iter().map(|p| p.id).collect();
    let orphans: Vec<(String, u64)> = repo
        .backend()
        .list("data")?
        .into_iter()
        .filter(|(n, _)| n.rsplit('/').next().and_then(Id::from_hex).is_none_or(|id| !indexed.contains(&id)))
        .collect();
    report.packs_deleted = delete.len();
    report.packs_repacked = repack.len();
    report.orphans_deleted = orphans.len();
    let size_of = |pos: &u32| repo.index().pack(*pos).map(|p| p.size as i64).unwrap_or(0);
    report.bytes_freed =
        delete.iter().chain(&repack).map(size_of).sum::<i64>() + orphans.iter().map(|o| o.1 as i64).sum::<i64>();
    if opts.dry_run || (delete.is_empty() && repack.is_empty() && orphans.is_empty()) {
        return Ok(report);
    }

    // 1. Copy the live blobs of sparse packs into new packs.
    let mut writer = repo.writer();
    writer.force_rewrite();
    for pos in &repack {
        let blobs: Vec<(Id, crate::index::BlobLoc)> = repo
            .index()
            .blobs()
            .filter(|(id, l)| l.pack == *pos && used.contains(*id))
            .map(|(i, l)| (*i, *l))
            .collect();
        for (id, loc) in blobs {
            let plain = repo.read_blob(&id)?;
            let raw_len = plain.len() as u32;
            let chunk = match crate::chunker::compress(&plain, repo.config().compression_level) {
                Some(z) => PreparedChunk { id, kind: loc.kind, raw_len, compressed: true, data: z },
                None => PreparedChunk { id, kind: loc.kind, raw_len, compressed: false, data: plain },
            };
            crate::writer::ChunkSink::put(&writer, chunk)?;
        }
    }
    let new_packs = writer.finish_packs()?;
    report.bytes_freed -= new_packs.iter().map(|p| p.size as i64).sum::<i64>();

    // 2. One index covering kept and new packs, superseding every current index file; then
    // the old index files.
    let mut file = IndexFile::default();
    {
        let index = repo.index();
        for pos in &keep {
            if let Some(meta) = index.pack(*pos) {
                file.packs.push(index_pack_entries(&index, *pos, meta));
            }
        }
    }
    file.packs.extend(new_packs);
    let new_id = replace_all_index_files(repo, &mut file)?;
    let mut fresh = Index::default();
    fresh.add_file(&index_name(&new_id), &file)?;

    // 3. Old packs.
    let doomed: Vec<String> = {
        let index = repo.index();
        delete.iter().chain(&repack).filter_map(|p| index.pack(*p)).map(|m| pack_name(&m.id)).collect()
    };
    repo.replace_index(fresh, vec![new_id]);
    for name in doomed.iter().chain(orphans.iter().map(|o| &o.0)) {
        repo.backend().delete(name)?;
    }
    repo.backend().sync()?;
    Ok(report)
}

/// Replaces the whole index with `file`, crash-safely: `file` names every index file now in
/// storage as superseded (not only those loaded: files that an index left by an interrupted
/// prune or repair supersedes must not come back to life), is written and made durable, and
/// only then are the superseded files deleted. Returns the new file's id.
fn replace_all_index_files(repo: &Repository, file: &mut IndexFile) -> Result<Id> {
    file.supersedes = repo
        .backend()
        .list("index")?
        .into_iter()
        .filter_map(|(n, _)| n.strip_prefix("index/").and_then(Id::from_hex))
        .collect();
    let new_id = repo.write_index_file(file)?;
    repo.backend().sync()?;
    for id in &file.supersedes {
        repo.backend().delete(&index_name(id))?;
    }
    repo.backend().sync()?;
    Ok(new_id)
}

/// The index record of an indexed pack, with the blobs the in-memory index places there.
fn index_pack_entries(index: &Index, pos: u32, meta: &crate::index::PackMeta) -> crate::model::IndexPack {
    let mut rec = index_pack(meta.id, meta.size, meta.kek_version, &meta.wrapped, &[]);
    rec.blobs = index
        .blobs()
        .filter(|(_, l)| l.pack == pos)
        .map(|(id, l)| crate::model::IndexBlob {
            n: l.n,
            id: *id,
            kind: l.kind,
            offset: l.offset,
            len: l.len,
            raw_len: l.raw_len,
            compressed: l.compressed,
        })
        .collect();
    rec.blobs.sort_by_key(|b| b.n);
    rec
}

/// What key rotation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RotateReport {
    /// The new key-encryption key version (used by everything written from now on).
    pub new_version: u32,
    /// Packs whose data key was rewrapped under it.
    pub packs_rewrapped: usize,
    /// Key versions that still exist (older ones stay until retired).
    pub versions: Vec<u32>,
}

/// Rotates the key-encryption key: writes version N+1, then rewraps every indexed pack's data
/// key under it — the data is not re-encrypted; only the 60-byte wrappings change, in one new
/// index file that supersedes the others (the crash-safe order of `prune`). Takes the
/// repository by value: the object is stale afterwards, open the repository again to write
/// with the new version. Must not run while a backup writes (the server serialises them).
pub fn rotate_key(repo: Repository, master: &crate::crypto::MasterKey, now: OffsetDateTime) -> Result<RotateReport> {
    if let Some(e) = repo.index_errors().first() {
        return Err(Error::Invalid(format!(
            "refusing to rotate: an index file is unreadable ({e}); run `repair index` first"
        )));
    }
    let (version, kek) = repo.add_kek(master, now)?;
    let mut rng = repo.rng.clone();
    let mut file = IndexFile::default();
    let count = repo.index().packs().len();
    for pos in 0..count as u32 {
        let Some(meta) = repo.index().pack(pos).cloned() else { continue };
        let dek = repo.data_key(pos)?;
        let wrapped = kek.wrap(&dek, pack::PACK_KEY_AAD, &mut rng);
        let meta = crate::index::PackMeta { kek_version: version, wrapped, ..meta };
        let index = repo.index();
        file.packs.push(index_pack_entries(&index, pos, &meta));
    }
    let packs_rewrapped = file.packs.len();
    replace_all_index_files(&repo, &mut file)?;
    let mut versions = repo.kek_versions();
    versions.push(version);
    Ok(RotateReport { new_version: version, packs_rewrapped, versions })
}

/// What retiring a key version did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetireReport {
    /// The version that no longer exists.
    pub retired: u32,
    /// Packs whose footer named it: copied with a footer under the current version (the blob
    /// ciphertext is the same bytes; only the 60-byte wrapping of the data key changes).
    pub packs_rewritten: usize,
    /// Bytes of packs copied.
    pub bytes_rewritten: u64,
    /// Snapshots sealed under it, sealed again under the current version (same ids).
    pub snapshots_resealed: usize,
    /// Unindexed packs under it (left by an interrupted backup or retire), deleted.
    pub orphans_deleted: usize,
    /// Key versions that remain.
    pub versions: Vec<u32>,
}

/// Retires key-encryption key `version`: afterwards no stored byte is wrapped under it and its
/// key file is gone, so a copy of that key opens nothing written since. The data is never
/// re-encrypted, but every pack whose footer wraps its data key under `version` is copied
/// under a new name with a footer under the current version (a pack's name is the hash of its
/// bytes); snapshots sealed under it are sealed again in place; one new index names the new
/// packs and supersedes all others. Order: new packs, resealed snapshots, index, deletion of
/// the old packs, deletion of the key. An interruption leaves a whole repository (at worst
/// unindexed packs, which a rerun or prune removes), and a rerun finishes the job. The current
/// version cannot be retired (rotate first). Takes the repository by value: it is stale
/// afterwards. Must not run while a backup writes (the server serialises them).
pub fn retire_key(repo: Repository, version: u32) -> Result<RetireReport> {
    if let Some(e) = repo.index_errors().first() {
        return Err(Error::Invalid(format!(
            "refusing to retire a key: an index file is unreadable ({e}); run `repair index` first"
        )));
    }
    let (current, kek) = {
        let (v, k) = repo.current_kek();
        (v, k.clone())
    };
    if version == current {
        return Err(Error::Invalid(format!(
            "key version {version} is the current one; rotate first (`vault rotate-key`), then retire it"
        )));
    }
    let old = repo.kek(version).cloned().ok_or_else(|| {
        Error::Invalid(format!("there is no key version {version} (versions: {:?})", repo.kek_versions()))
    })?;
    let mut rng = repo.rng.clone();
    let mut report = RetireReport { retired: version, ..RetireReport::default() };

    // 1. Packs whose footer names the old version: a copy with the footer rewrapped.
    let mut moved: HashMap<Id, (Id, [u8; crate::crypto::WRAPPED_LEN])> = HashMap::new();
    let mut doomed = Vec::new();
    for (name, size) in repo.backend().list("data")? {
        let Some(id) = name.rsplit('/').next().and_then(Id::from_hex) else { continue };
        if size < FOOTER_LEN as u64 {
            continue;
        }
        let tail = repo.backend().get_range(&name, size - FOOTER_LEN as u64..size)?;
        let footer = pack::parse_footer(&name, &tail)?;
        if footer.kek_version != version {
            continue;
        }
        if repo.index().pack_position(&id).is_none() {
            report.orphans_deleted += 1;
            doomed.push(name);
            continue;
        }
        let bytes = repo.backend().get(&name)?;
        if Id::hash_of(&bytes) != id {
            return Err(Error::corrupt(&name, "pack contents do not match its name; run `check --read-data`"));
        }
        let dek = old
            .unwrap_key(&footer.wrapped, pack::PACK_KEY_AAD, &name)
            .map_err(|_| Error::corrupt(&name, "pack data key fails authentication"))?;
        let wrapped = kek.wrap(&dek, pack::PACK_KEY_AAD, &mut rng);
        let new_footer = pack::Footer { kek_version: current, wrapped, ..footer };
        let mut copy = Vec::with_capacity(bytes.len());
        copy.extend_from_slice(&bytes[..bytes.len() - FOOTER_LEN]);
        copy.extend_from_slice(&new_footer.encode());
        let new_id = Id::hash_of(&copy);
        repo.backend().put(&pack_name(&new_id), bytes::Bytes::from(copy))?;
        report.packs_rewritten += 1;
        report.bytes_rewritten += size;
        moved.insert(id, (new_id, wrapped));
        doomed.push(name);
    }
    repo.backend().sync()?;

    // 2. Snapshots sealed under it, sealed again under the current version.
    for id in repo.snapshot_ids()? {
        let name = crate::repository::snapshot_name(&id);
        let bytes = repo.backend().get(&name)?;
        if crate::sealed::peek(&name, &bytes)?.1 != version {
            continue;
        }
        let snap = repo.load_snapshot(&id)?;
        repo.write_sealed(crate::sealed::ObjectKind::Snapshot, &name, &snap)?;
        report.snapshots_resealed += 1;
    }
    repo.backend().sync()?;

    // 3. One index over the moved packs, every data key wrapped under the current version.
    let mut file = IndexFile::default();
    let count = repo.index().packs().len();
    for pos in 0..count as u32 {
        let Some(meta) = repo.index().pack(pos).cloned() else { continue };
        let meta = match moved.get(&meta.id) {
            Some((new_id, wrapped)) => {
                crate::index::PackMeta { id: *new_id, kek_version: current, wrapped: *wrapped, ..meta }
            }
            None if meta.kek_version != current => {
                let dek = repo.data_key(pos)?;
                let wrapped = kek.wrap(&dek, pack::PACK_KEY_AAD, &mut rng);
                crate::index::PackMeta { kek_version: current, wrapped, ..meta }
            }
            None => meta,
        };
        let index = repo.index();
        file.packs.push(index_pack_entries(&index, pos, &meta));
    }
    replace_all_index_files(&repo, &mut file)?;

    // 4. The old packs, then 5. the key itself.
    for name in &doomed {
        repo.backend().delete(name)?;
    }
    repo.backend().sync()?;
    repo.remove_kek(version)?;
    report.versions = repo.kek_versions().into_iter().filter(|v| *v != version).collect();
    Ok(report)
}

/// Findings of `repair index`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    /// Packs read and indexed.
    pub packs: usize,
    /// Blobs indexed.
    pub blobs: usize,
    /// Packs that could not be read (left in place, not indexed).
    pub unreadable: Vec<String>,
    /// Index files replaced.
    pub replaced: usize,
}

/// Rebuilds the index from the packs alone and replaces every index file.
pub fn repair_index(repo: &Repository) -> Result<RepairReport> {
    let mut report = RepairReport::default();
    let mut file = IndexFile::default();
    for (name, size) in repo.backend().list("data")? {
        let Some(id) = name.rsplit('/').next().and_then(Id::from_hex) else { continue };
        if size < FOOTER_LEN as u64 {
            report.unreadable.push(name);
            continue;
        }
        let parsed = (|| -> Result<_> {
            let tail = repo.backend().get_range(&name, size - FOOTER_LEN as u64..size)?;
            let footer = pack::parse_footer(&name, &tail)?;
            let data_end = (size - FOOTER_LEN as u64)
                .checked_sub(u64::from(footer.header_len))
                .ok_or_else(|| Error::corrupt(&name, "header length exceeds the pack"))?;
            let tail = repo.backend().get_range(&name, data_end..size - FOOTER_LEN as u64)?;
            let kek = repo
                .kek(footer.kek_version)
                .ok_or_else(|| Error::corrupt(&name, format!("unknown key version {}", footer.kek_version)))?;
            let dek = kek
                .unwrap_key(&footer.wrapped, pack::PACK_KEY_AAD, &name)
                .map_err(|_| Error::corrupt(&name, "pack data key fails authentication"))?;
            let entries = pack::parse_header(&name, &dek, &tail, data_end)?;
            Ok((footer, entries))
        })();
        match parsed {
            Ok((footer, entries)) => {
                report.packs += 1;
                report.blobs += entries.len();
                file.packs.push(index_pack(id, size, footer.kek_version, &footer.wrapped, &entries));
            }
            Err(_) => report.unreadable.push(name),
        }
    }
    let new_id = replace_all_index_files(repo, &mut file)?;
    report.replaced = file.supersedes.len();
    let mut fresh = Index::default();
    fresh.add_file(&index_name(&new_id), &file)?;
    repo.replace_index(fresh, vec![new_id]);
    Ok(report)
}
