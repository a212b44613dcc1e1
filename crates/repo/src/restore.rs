//! Restoring a snapshot into a directory: parallel, verified, metadata restored, holes kept,
//! and never writing outside the target.
//!
//! Safety: the plan is hostile input. Every name was checked by `tree::validate` (no `/`,
//! `.`, `..`, NUL), every entry's parent must be a directory of the plan, and every path is
//! opened through [`crate::beneath::Beneath`]: relative to a handle on the target, resolving
//! no symbolic link in any component (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`,
//! or `openat` with `O_NOFOLLOW` one component at a time). An existing symlink where a
//! directory or file belongs is removed, never followed; a hard link's target is looked up in
//! the snapshot's own plan. So no byte is written outside the target, even if a link appears
//! in it while the restore runs.
//!
//! Speed: blobs are grouped by pack and each pack is read once (contiguous blobs in one range
//! request), on all cores; a chunk shared by several files is decrypted once.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::beneath::Beneath;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::model::{Content, Node, NodeKind, Snapshot};
use crate::pack::pack_name;
use crate::repository::Repository;
use crate::tree::is_safe_relative_path;

/// What to restore and how.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Snapshot-relative paths to restore (with everything below them); empty means all.
    pub include: Vec<String>,
    /// Restore file owners (needs root; off means files belong to the restoring user).
    pub owners: bool,
}

/// Live counters of a restore.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Bytes of file contents to write.
    pub bytes_total: AtomicU64,
    /// Bytes written so far (holes count as written).
    pub bytes_done: AtomicU64,
    /// Files to restore.
    pub files_total: AtomicU64,
    /// Set by whoever runs the restore to stop it: checked before every write of every phase
    /// (a server stops a job whose approval no longer holds).
    pub stop: std::sync::atomic::AtomicBool,
}

impl RestoreProgress {
    /// Fails once [`RestoreProgress::stop`] is set.
    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Error::Invalid("the restore was stopped: its approval no longer holds".into()));
        }
        Ok(())
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Bytes of file contents.
    pub bytes: u64,
    /// Things that could not be done exactly (e.g. a hard link whose target was excluded).
    pub warnings: Vec<String>,
}

struct Item {
    rel: Vec<u8>,
    node: Node,
}

fn included(rel: &[u8], include: &[Vec<u8>]) -> bool {
    if include.is_empty() {
        return true;
    }
    include.iter().any(|inc| {
        let below = rel.starts_with(inc) && (rel.len() == inc.len() || rel[inc.len()] == b'/');
        let above = inc.starts_with(rel) && inc.len() > rel.len() && inc[rel.len()] == b'/';
        below || above
    })
}

/// A file made of exactly one chunk (most files): created, written and finished in one go
/// when its chunk arrives, with one open instead of three.
fn single_chunk(item: &Item) -> bool {
    item.node.kind == NodeKind::File && matches!(item.node.content.as_slice(), [Content::Chunk { .. }])
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Restores `snapshot` into `target` (created if missing).
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreSummary> {
    let entries = plan(repo, &snapshot.tree, &opts.include)?;
    restore_plan(entries, target, opts.owners, progress, &RepoSource(repo))
}

/// One entry of a restore plan: a snapshot-relative path and its node, in pre-order.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PlanEntry {
    /// `/`-separated path inside the snapshot.
    pub path: crate::model::RawName,
    /// The entry.
    pub node: Node,
}

/// The entries of snapshot tree `tree` under the `include` paths (all if empty), directories
/// before their contents. Every name has passed `tree::validate`.
pub fn plan(repo: &Repository, tree: &Id, include: &[String]) -> Result<Vec<PlanEntry>> {
    let include: Vec<Vec<u8>> = include
        .iter()
        .map(|p| p.trim_matches('/').as_bytes().to_vec())
        .map(|p| {
            if is_safe_relative_path(&p) {
                Ok(p)
            } else {
                Err(Error::Invalid(format!("bad path to restore: {:?}", String::from_utf8_lossy(&p))))
            }
        })
        .collect::<Result<_>>()?;
    let mut entries = Vec::new();
    repo.walk(tree, &mut |rel, node| {
        if included(rel, &include) {
            entries.push(PlanEntry { path: crate::model::RawName(rel.to_vec()), node: node.clone() });
        }
        Ok(())
    })?;
    if !include.is_empty() && entries.is_empty() {
        return Err(Error::NotFound("none of the requested paths are in the snapshot".into()));
    }
    Ok(entries)
}

/// Where chunk contents come from during a restore: the local repository, or a server.
pub trait ContentSource: Sync {
    /// Delivers the plaintext of every chunk in `wanted`, each verified against its id, to
    /// `sink` (possibly from several threads at once).
    fn fetch(&self, wanted: &[(Id, u32)], sink: &(dyn Fn(&Id, &[u8]) -> Result<()> + Sync)) -> Result<()>;
}

/// Reads chunks from a local repository, each pack once, on all cores.
pub struct RepoSource<'a>(pub &'a Repository);

impl ContentSource for RepoSource<'_> {
    fn fetch(&self, wanted: &[(Id, u32)], sink: &(dyn Fn(&Id, &[u8]) -> Result<()> + Sync)) -> Result<()> {
        let repo = self.0;
        let ids: Vec<Id> = wanted.iter().map(|(id, _)| *id).collect();
        for_each_blob(repo, &ids, &|id, loc, ciphertext| sink(id, &repo.decode_blob(id, loc, ciphertext)?))
    }
}

/// What [`for_each_blob`] calls for each blob: id, index entry, ciphertext.
pub type BlobVisitor<'f> = dyn Fn(&Id, &crate::index::BlobLoc, &[u8]) -> Result<()> + Sync + 'f;

/// Reads the ciphertext of each blob in `ids` and hands it to `f` with its index entry: pack by
/// pack on all cores, neighbouring blobs of a pack in one range read.
pub fn for_each_blob(repo: &Repository, ids: &[Id], f: &BlobVisitor<'_>) -> Result<()> {
    let mut by_pack: HashMap<u32, Vec<(Id, crate::index::BlobLoc)>> = HashMap::new();
    {
        let index = repo.index();
        for id in ids {
            let loc = index.get(id).ok_or_else(|| Error::NotFound(format!("chunk {id} (not in the index)")))?;
            by_pack.entry(loc.pack).or_default().push((*id, loc));
        }
    }
    let mut packs: Vec<(u32, Vec<(Id, crate::index::BlobLoc)>)> = by_pack.into_iter().collect();
    packs.sort_by_key(|(p, _)| *p);
    packs.par_iter_mut().try_for_each(|(pack, blobs)| -> Result<()> {
        blobs.sort_by_key(|(_, l)| l.offset);
        let pack_id = repo.index().pack(*pack).map(|p| p.id).unwrap_or(Id([0; 32]));
        let name = pack_name(&pack_id);
        // Coalesce blobs separated by small gaps into one range read.
        let mut start = 0;
        while start < blobs.len() {
            let mut end = start + 1;
            while end < blobs.len()
                && u64::from(blobs[end].1.offset)
                    <= u64::from(blobs[end - 1].1.offset) + u64::from(blobs[end - 1].1.len) + (256 << 10)
                && u64::from(blobs[end].1.offset) - u64::from(blobs[start].1.offset) < (32 << 20)
            {
                end += 1;
            }
            let first = u64::from(blobs[start].1.offset);
            let last = u64::from(blobs[end - 1].1.offset) + u64::from(blobs[end - 1].1.len);
            let bytes = repo.backend().get_range(&name, first..last)?;
            if bytes.len() as u64 != last - first {
                return Err(Error::corrupt(&name, "pack is shorter than its index says"));
            }
            for (id, loc) in &blobs[start..end] {
                let s = (u64::from(loc.offset) - first) as usize;
                f(id, loc, &bytes[s..s + loc.len as usize])?;
            }
            start = end;
        }
        Ok(())
    })
}

/// Restores `entries` (from [`plan`]) into `target` (created if missing), reading contents
/// from `source`.
pub fn restore_plan(
    entries: Vec<PlanEntry>,
    target: &Path,
    owners: bool,
    progress: &RestoreProgress,
    source: &dyn ContentSource,
) -> Result<RestoreSummary> {
    std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    let root = Beneath::open(target).map_err(|e| Error::io(target, e))?;
    let io = |rel: &[u8]| {
        let path = root.display(rel);
        move |e: std::io::Error| Error::io(path, e)
    };
    let mut items: Vec<Item> = Vec::with_capacity(entries.len());
    let mut kinds: HashMap<Vec<u8>, NodeKind> = HashMap::with_capacity(entries.len());
    for e in entries {
        // A plan is input like any other (from a server, or walked from a repository someone
        // else could write): every component must be a safe name, no path may appear twice,
        // and the node must carry exactly the fields of its kind.
        if !is_safe_relative_path(&e.path.0) || kinds.insert(e.path.0.clone(), e.node.kind).is_some() {
            return Err(Error::UnsafeName(e.path.display()));
        }
        if let Err(why) = crate::tree::validate(&crate::model::Tree {
            nodes: vec![Node {
                name: crate::model::RawName(e.path.0.rsplit(|&b| b == b'/').next().unwrap_or_default().to_vec()),
                ..e.node.clone()
            }],
        }) {
            return Err(Error::UnsafeName(format!("{}: {why}", e.path.display())));
        }
        items.push(Item { rel: e.path.0, node: e.node });
    }
    // Parents must come before their contents, and be directories.
    for it in &items {
        if let Some(pos) = it.rel.iter().rposition(|&b| b == b'/') {
            let parent = &it.rel[..pos];
            if kinds.get(parent) != Some(&NodeKind::Dir) {
                return Err(Error::UnsafeName(format!(
                    "{}: its parent is not a directory of the plan",
                    String::from_utf8_lossy(&it.rel)
                )));
            }
        }
    }
    let mut summary = RestoreSummary::default();

    // Phase 1: directories (in order, parents first), then empty files of the right size
    // (holes stay holes) and symlinks, in parallel: creating inodes is most of a restore's
    // kernel time, and parallel creation in different directories spreads it over the cores.
    for item in items.iter().filter(|it| it.node.kind == NodeKind::Dir) {
        progress.check()?;
        root.ensure_dir(&item.rel).map_err(io(&item.rel))?;
        summary.dirs += 1;
    }
    items.par_iter().try_for_each(|item| -> Result<()> {
        progress.check()?;
        match item.node.kind {
            NodeKind::File => {
                if !single_chunk(item) {
                    let f = root.create_file(&item.rel).map_err(io(&item.rel))?;
                    f.set_len(item.node.size).map_err(io(&item.rel))?;
                }
                progress.files_total.fetch_add(1, Ordering::Relaxed);
                progress.bytes_total.fetch_add(item.node.size, Ordering::Relaxed);
            }
            NodeKind::Symlink => {
                let t = item.node.target.as_ref().map(|t| t.0.as_slice()).unwrap_or_default();
                root.symlink(t, &item.rel).map_err(io(&item.rel))?;
            }
            NodeKind::Dir | NodeKind::Hardlink => {}
        }
        Ok(())
    })?;
    for item in &items {
        match item.node.kind {
            NodeKind::File => {
                summary.files += 1;
                summary.bytes += item.node.size;
            }
            NodeKind::Symlink => summary.symlinks += 1,
            NodeKind::Dir | NodeKind::Hardlink => {}
        }
    }

    // Phase 2: contents, from the source (each chunk verified there), written where they belong.
    let mut wanted: HashMap<Id, Vec<(u32, u64)>> = HashMap::new();
    // In plan order, which is the order the backup stored them in: a remote source fetching
    // in batches then reads neighbouring data from each pack.
    let mut list: Vec<(Id, u32)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut off = 0u64;
        for c in &item.node.content {
            match c {
                Content::Chunk { id, len } => {
                    let uses = wanted.entry(*id).or_default();
                    if uses.is_empty() {
                        list.push((*id, *len));
                    }
                    uses.push((i as u32, off));
                }
                Content::Zero { zero } => {
                    progress.bytes_done.fetch_add(*zero, Ordering::Relaxed);
                }
            }
            off += c.len();
        }
    }
    let sink = |id: &Id, plain: &[u8]| -> Result<()> {
        for &(item, off) in wanted.get(id).map(|v| v.as_slice()).unwrap_or(&[]) {
            progress.check()?;
            let it = &items[item as usize];
            if single_chunk(it) {
                let f = root.create_file(&it.rel).map_err(io(&it.rel))?;
                f.write_all_at(plain, 0).map_err(io(&it.rel))?;
                apply_metadata(&f, &it.node, owners, &root.display(&it.rel))?;
            } else {
                root.open_write(&it.rel).and_then(|f| f.write_all_at(plain, off)).map_err(io(&it.rel))?;
            }
            progress.bytes_done.fetch_add(plain.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    };
    source.fetch(&list, &sink)?;

    // Phase 3: hard links, to files restored above only.
    let by_rel: HashMap<&[u8], usize> = items
        .iter()
        .enumerate()
        .filter(|(_, it)| it.node.kind == NodeKind::File)
        .map(|(i, it)| (it.rel.as_slice(), i))
        .collect();
    for item in items.iter().filter(|it| it.node.kind == NodeKind::Hardlink) {
        progress.check()?;
        let link = item.node.link.as_ref().map(|l| l.0.as_slice()).unwrap_or_default();
        match by_rel.get(link) {
            Some(&primary) => {
                root.hard_link(&items[primary].rel, &item.rel).map_err(io(&item.rel))?;
                summary.hardlinks += 1;
            }
            None => summary.warnings.push(format!(
                "{}: hard link to {} which is not restored",
                root.display(&item.rel).display(),
                String::from_utf8_lossy(link)
            )),
        }
    }

    // Phase 4: metadata; everything but directories in parallel, then directories deepest
    // first, so a directory's times are set after its contents changed it.
    items
        .par_iter()
        .filter(|it| it.node.kind != NodeKind::Dir && !single_chunk(it))
        .try_for_each(|it| progress.check().and_then(|()| set_metadata(&root, it, owners)))?;
    for item in items.iter().rev().filter(|it| it.node.kind == NodeKind::Dir) {
        progress.check()?;
        set_metadata(&root, item, owners)?;
    }
    Ok(summary)
}

/// Owner (when restoring as root), permissions and times, through an open descriptor.
fn apply_metadata(f: &File, n: &Node, owners: bool, path: &Path) -> Result<()> {
    if owners {
        std::os::unix::fs::fchown(f, Some(n.uid), Some(n.gid)).map_err(|e| Error::io(path, e))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(n.mode & 0o7777)).map_err(|e| Error::io(path, e))?;
    let times = std::fs::FileTimes::new().set_accessed(system_time(n.atime_ns)).set_modified(system_time(n.mtime_ns));
    f.set_times(times).map_err(|e| Error::io(path, e))
}

fn set_metadata(root: &Beneath, item: &Item, owners: bool) -> Result<()> {
    let n = &item.node;
    let path = root.display(&item.rel);
    match n.kind {
        NodeKind::File | NodeKind::Dir => {
            let f = root.open_read(&item.rel, n.kind == NodeKind::Dir).map_err(|e| Error::io(&path, e))?;
            apply_metadata(&f, n, owners, &path)?;
        }
        NodeKind::Symlink => {
            root.link_metadata(&item.rel, owners.then_some((n.uid, n.gid)), n.atime_ns, n.mtime_ns)
                .map_err(|e| Error::io(&path, e))?;
        }
        NodeKind::Hardlink => {}
    }
    Ok(())
}
