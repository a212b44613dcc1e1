//! The storage engine's integration suite: what a backup vault must never get wrong.
//!
//! Round trips of real trees and sparse images, incremental and deduplicated backups, crash
//! safety at every write of a backup and of a prune (power cut and process crash), damage
//! detection by `check`, restore safety against planted links, retention, prune and index
//! repair. Every restore is compared with the original by `testkit::assert_trees_equal`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use repo::backup::{backup_local, Progress};
use repo::check::{check, CheckReport};
use repo::chunker::ChunkerParams;
use repo::maintenance::{forget, prune, repair_index, retire_key, rotate_key, PruneOptions, Retention};
use repo::model::{Content, Snapshot};
use repo::pack::pack_name;
use repo::repository::snapshot_name;
use repo::restore::{restore, RestoreOptions, RestoreProgress, RestoreSummary};
use repo::{Backend, Error, Id, InitOptions, ObjectStoreBackend, Repository, SharedRng};
use tempfile::TempDir;
use testkit::{
    assert_trees_equal, compressible_bytes, copy_tree, fixed_time, make_sparse_image, make_tree, master_key,
    random_bytes, seeded_rng, set_mtime, FaultBackend, MemBackend,
};

const HOST: &str = "testhost";
const MASTER: u64 = 7;
/// 2023-11-14 00:00:00 UTC.
const DAY0: i64 = 1_699_920_000;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// A fresh seed for every repository session: two sessions drawing the same "random" ids
/// would overwrite each other's index files.
fn rng() -> SharedRng {
    static SEED: AtomicU64 = AtomicU64::new(1);
    seeded_rng(SEED.fetch_add(1, Ordering::Relaxed))
}

/// Small chunks and 1 MiB packs, so a few MiB of data makes many packs and few puts.
fn small_opts() -> InitOptions {
    InitOptions {
        chunker: ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10, fixed: 64 << 10 },
        pack_size: 1 << 20,
        compression_level: 3,
    }
}

fn init(backend: Arc<dyn Backend>, opts: InitOptions) -> Repository {
    Repository::init(backend, &master_key(MASTER), opts, fixed_time(DAY0), rng()).unwrap()
}

fn open(backend: Arc<dyn Backend>) -> Repository {
    Repository::open(backend, &master_key(MASTER), rng()).unwrap_or_else(|e| panic!("open: {e}"))
}

fn tempdir() -> TempDir {
    tempfile::tempdir().unwrap()
}

fn backup(repo: &Repository, path: &Path, parent: Option<Id>, now: i64) -> (Id, Snapshot) {
    let (id, snap, warnings) =
        backup_local(repo, &[path.to_path_buf()], parent, HOST, fixed_time(now), &Progress::default())
            .unwrap_or_else(|e| panic!("backup of {}: {e}", path.display()));
    assert!(warnings.is_empty(), "backup warnings: {warnings:?}");
    (id, snap)
}

fn try_restore(repo: &Repository, id: &Id, target: &Path) -> repo::Result<RestoreSummary> {
    let snap = repo.load_snapshot(id)?;
    restore(repo, &snap, target, &RestoreOptions::default(), &RestoreProgress::default())
}

/// Restores snapshot `id` into a fresh directory and compares the result with `expected`,
/// whose last path component is the name of the backed-up root.
fn assert_restores_to(repo: &Repository, id: &Id, expected: &Path) {
    let t = tempdir();
    try_restore(repo, id, t.path()).unwrap_or_else(|e| panic!("restore of snapshot {}: {e}", id.short()));
    assert_trees_equal(expected, &t.path().join(expected.file_name().unwrap()));
}

/// `check` with `read_data`: no errors (warnings allowed).
fn assert_no_errors(repo: &Repository, label: &str) -> CheckReport {
    let r = check(repo, true).unwrap_or_else(|e| panic!("{label}: check failed to run: {e}"));
    assert!(r.errors.is_empty(), "{label}: check found errors: {:#?}", r.errors);
    r
}

/// `check` with `read_data`: neither errors nor warnings.
fn assert_spotless(repo: &Repository, label: &str) {
    let r = assert_no_errors(repo, label);
    assert!(r.warnings.is_empty(), "{label}: check found warnings: {:#?}", r.warnings);
}

/// Bytes stored under the repository's object prefixes.
fn stored_bytes(b: &dyn Backend) -> u64 {
    ["data", "index", "snapshots", "keys"].iter().flat_map(|p| b.list(p).unwrap()).map(|(_, n)| n).sum()
}

/// Regular files (hard links counted once) and their total size.
fn count_files(dir: &Path) -> (u64, u64) {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<u64>, acc: &mut (u64, u64)) {
        let m = fs::symlink_metadata(p).unwrap();
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), seen, acc);
            }
        } else if m.is_file() && seen.insert(m.ino()) {
            acc.0 += 1;
            acc.1 += m.len();
        }
    }
    let mut acc = (0, 0);
    walk(dir, &mut Default::default(), &mut acc);
    acc
}

/// Writes `data` to `path` and sets its mtime (so change detection sees the change whatever
/// the clock's granularity), keeping the parent directory's mtime if the file existed.
fn rewrite(path: &Path, data: &[u8], mtime: i64) {
    fs::write(path, data).unwrap();
    set_mtime(path, mtime, 500);
}

/// The chunk ids of the file at snapshot-relative path `rel`.
fn chunks_of(repo: &Repository, snap: &Snapshot, rel: &str) -> Vec<Id> {
    let mut out = Vec::new();
    repo.walk(&snap.tree, &mut |path, node| {
        if path == rel.as_bytes() {
            out = node
                .content
                .iter()
                .filter_map(|c| match c {
                    Content::Chunk { id, .. } => Some(*id),
                    Content::Zero { .. } => None,
                })
                .collect();
        }
        Ok(())
    })
    .unwrap();
    assert!(!out.is_empty(), "no chunks found for {rel}");
    out
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn real_tree_and_fixture_round_trip_through_a_local_repository() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    let doc = Path::new("/usr/share/doc");
    if doc.is_dir() {
        copy_tree(doc, &src.join("usr-share-doc"));
    } else {
        eprintln!("note: /usr/share/doc is missing; round trip of the fixture tree only");
    }
    make_tree(&src.join("fixture"));
    set_mtime(&src, DAY0, 1);
    let (files, bytes) = count_files(&src);

    let repo_dir = tmp.path().join("repo");
    let snap_id = {
        let repo = init(Arc::new(ObjectStoreBackend::local(&repo_dir).unwrap()), InitOptions::default());
        let (id, snap) = backup(&repo, &src, None, DAY0);
        assert_eq!((snap.summary.files_read, snap.summary.bytes_read), (files, bytes));
        assert_eq!(snap.summary.skipped, 0);
        id
    };
    // A new session on the directory: everything needed is on disk.
    let repo = open(Arc::new(ObjectStoreBackend::local(&repo_dir).unwrap()));
    let target = tmp.path().join("restore");
    let summary = try_restore(&repo, &snap_id, &target).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_trees_equal(&src, &target.join("data"));
    let report = check(&repo, true).unwrap();
    assert!(report.errors.is_empty() && report.warnings.is_empty(), "{report:#?}");
    assert!(report.blobs_verified > 0 && report.snapshots == 1);
}

#[test]
fn sparse_image_restores_identical_still_sparse_and_stores_little() {
    const SIZE: u64 = 256 << 20;
    const MIB: u64 = 1 << 20;
    let tmp = tempdir();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    // Sparse by its holes alone (no image extension): data, then holes, at odd offsets.
    let ranges = [0..MIB, 100 * MIB..101 * MIB + MIB / 2, 200 * MIB + 4096..202 * MIB, SIZE - 64 * 1024..SIZE];
    let data_bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    make_sparse_image(&src.join("sparse.bin"), SIZE, &ranges);
    let m = fs::metadata(src.join("sparse.bin")).unwrap();
    assert!(m.blocks() * 512 < SIZE / 16, "this filesystem did not keep the fixture sparse");
    // A fully allocated disk image (by extension): its zero blocks must become holes.
    let mut img = vec![0u8; 32 << 20];
    img[8 << 20..9 << 20].copy_from_slice(&random_bytes(9, 1 << 20));
    fs::write(src.join("disk.img"), &img).unwrap();
    set_mtime(&src.join("disk.img"), DAY0, 0);
    set_mtime(&src, DAY0, 0);

    let backend = Arc::new(ObjectStoreBackend::local(&tmp.path().join("repo")).unwrap());
    let repo = init(backend.clone(), InitOptions::default());
    let (id, snap) = backup(&repo, &src, None, DAY0);
    assert_eq!(snap.summary.bytes, SIZE + (32 << 20));
    let stored = stored_bytes(&*backend);
    assert!(
        stored < 3 * (data_bytes + MIB),
        "stored {stored} bytes for {data_bytes} bytes of data in a {SIZE}-byte image"
    );

    let target = tmp.path().join("restore");
    try_restore(&repo, &id, &target).unwrap();
    assert_trees_equal(&src, &target.join("data"));
    let r = fs::metadata(target.join("data/sparse.bin")).unwrap();
    assert_eq!(r.len(), SIZE);
    assert!(
        r.blocks() * 512 <= SIZE / 8,
        "restored image is not sparse: {} of {SIZE} bytes allocated",
        r.blocks() * 512
    );
    let d = fs::metadata(target.join("data/disk.img")).unwrap();
    assert!(
        d.blocks() * 512 <= 8 << 20,
        "zero blocks of disk.img were written out: {} bytes allocated",
        d.blocks() * 512
    );
    assert_spotless(&repo, "sparse");
}

#[test]
fn incremental_backup_reads_only_changed_files_and_each_snapshot_restores_its_state() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    make_tree(&src);
    let (files, _) = count_files(&src);
    let repo = init(Arc::new(ObjectStoreBackend::local(&tmp.path().join("repo")).unwrap()), InitOptions::default());
    let (s1, snap1) = backup(&repo, &src, None, DAY0);
    assert_eq!(snap1.summary.files_read, files);
    let state1 = tmp.path().join("state1/data");
    copy_tree(&src, &state1);

    // Content changes (with new mtimes), an mtime-only change, a new file, a deletion, and a
    // mode-only change (which must be recorded without reading the file).
    let t = DAY0 + DAY;
    rewrite(&src.join("small.txt"), b"changed contents\n", t);
    let mut log = fs::read(src.join("app.log")).unwrap();
    log.extend_from_slice(&compressible_bytes(99, 10_000));
    rewrite(&src.join("app.log"), &log, t + 1);
    rewrite(&src.join("nested/a/b/c/deep.txt"), b"deeper\n", t + 2);
    set_mtime(&src.join("nested/a/sibling.dat"), t + 3, 0);
    rewrite(&src.join("new.bin"), &random_bytes(77, 300 << 10), t + 4);
    fs::remove_file(src.join("names/.hidden")).unwrap();
    fs::set_permissions(src.join("perms/everyone"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let changed = ["small.txt", "app.log", "nested/a/b/c/deep.txt", "nested/a/sibling.dat", "new.bin"];
    let changed_bytes: u64 = changed.iter().map(|p| fs::metadata(src.join(p)).unwrap().len()).sum();

    let (s2, snap2) = backup(&repo, &src, Some(s1), t + 10);
    assert_eq!(snap2.parent, Some(s1));
    assert_eq!(
        (snap2.summary.files_read, snap2.summary.bytes_read),
        (changed.len() as u64, changed_bytes),
        "only the changed files may be read"
    );
    // Nothing changed since: nothing is read, nothing stored.
    let (s3, snap3) = backup(&repo, &src, Some(s2), t + 20);
    assert_eq!((snap3.summary.files_read, snap3.summary.new_chunks), (0, 0));

    assert_restores_to(&repo, &s1, &state1);
    assert_restores_to(&repo, &s2, &src);
    assert_restores_to(&repo, &s3, &src);
    assert_spotless(&repo, "incremental");
}

#[test]
fn backing_up_the_same_data_twice_adds_almost_nothing() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    make_tree(&src);
    let (files, bytes) = count_files(&src);
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone(), small_opts());
    let (s1, first) = backup(&repo, &src, None, DAY0);
    let after_first = mem.total_bytes();
    assert!(first.summary.new_chunks > 10);

    // No parent: every file is read again, and every chunk is found already stored.
    let (s2, second) = backup(&repo, &src, None, DAY0 + HOUR);
    assert_eq!((second.summary.files_read, second.summary.bytes_read), (files, bytes));
    assert_eq!((second.summary.new_chunks, second.summary.new_bytes), (0, 0));
    let growth = mem.total_bytes() - after_first;
    assert!(growth < 64 << 10, "second backup of the same data added {growth} bytes");

    // The same data under another path dedups too.
    let copy = tmp.path().join("elsewhere/data");
    copy_tree(&src, &copy);
    let before = mem.total_bytes();
    let (s3, third) = backup(&repo, &copy, None, DAY0 + 2 * HOUR);
    assert_eq!(third.summary.new_chunks, 0);
    assert!(mem.total_bytes() - before < 64 << 10);

    for id in [s1, s2, s3] {
        assert_restores_to(&repo, &id, &src);
    }
    assert_spotless(&repo, "dedup");
}

// ---------------------------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------------------------

/// Reopens a repository from what a crash left, and checks it is whole: no check errors,
/// the first snapshot and every other snapshot restore exactly, a new backup succeeds.
fn assert_survives(label: &str, state: MemBackend, s1: Id, state1: &Path, src: &Path, completed: Option<Id>) {
    let mem = Arc::new(state);
    let repo = Repository::open(mem.clone(), &master_key(MASTER), rng())
        .unwrap_or_else(|e| panic!("{label}: cannot reopen the repository: {e}"));
    assert_no_errors(&repo, label);
    let ids = repo.snapshot_ids().unwrap();
    assert!(ids.contains(&s1), "{label}: the first snapshot is gone");
    if let Some(s2) = completed {
        assert!(ids.contains(&s2), "{label}: a completed backup's snapshot is gone");
    }
    for id in &ids {
        assert_restores_to(&repo, id, if *id == s1 { state1 } else { src });
    }
    let (s3, _) = backup(&repo, src, Some(s1), DAY0 + 2 * DAY);
    assert_restores_to(&repo, &s3, src);
    assert_no_errors(&repo, &format!("{label}, after a new backup"));
}

#[test]
fn backup_interrupted_at_any_put_leaves_a_whole_repository() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    make_tree(&src);
    let state1 = tmp.path().join("state1/data");
    copy_tree(&src, &state1);
    let mem = Arc::new(MemBackend::new());
    let s1 = backup(&init(mem.clone(), small_opts()), &src, None, DAY0).0;
    assert!(mem.is_synced(), "a committed snapshot must be durable");

    rewrite(&src.join("new.bin"), &random_bytes(5, 3 << 20), DAY0 + DAY);
    rewrite(&src.join("small.txt"), b"second version\n", DAY0 + DAY);
    let mut log = fs::read(src.join("app.log")).unwrap();
    log.extend_from_slice(&compressible_bytes(6, 64 << 10));
    rewrite(&src.join("app.log"), &log, DAY0 + DAY);

    let needed = {
        let f = Arc::new(FaultBackend::new(Arc::new(mem.fork())));
        backup(&open(f.clone()), &src, Some(s1), DAY0 + DAY);
        f.puts()
    };
    assert!(needed >= 5, "the second backup should take several packs, took {needed} puts");

    // Pack counts can vary a little with thread timing: go on until a run completes unharmed.
    let mut n = 0;
    let mut completed_once = false;
    let mut interrupted = 0;
    while n <= needed || !completed_once {
        assert!(n < 100, "the backup never completed");
        for crash in [false, true] {
            let m = Arc::new(mem.fork());
            let f = Arc::new(if crash {
                FaultBackend::crash_after_puts(m.clone(), n)
            } else {
                FaultBackend::fail_after(m.clone(), n)
            });
            let result = backup_local(
                &open(f.clone()),
                std::slice::from_ref(&src),
                Some(s1),
                HOST,
                fixed_time(DAY0 + DAY),
                &Progress::default(),
            );
            let mode = if crash { "crash" } else { "failing puts" };
            let completed = match result {
                Ok((id, _, _)) => {
                    assert_eq!(f.faults(), 0, "{mode} at put {n}: backup reported success despite a failed put");
                    completed_once = true;
                    Some(id)
                }
                Err(e) => {
                    interrupted += 1;
                    assert!(f.faults() > 0, "{mode} at put {n}: backup failed without a fault: {e}");
                    assert!(matches!(e, Error::Backend { .. }), "{mode} at put {n}: unexpected error {e}");
                    None
                }
            };
            assert_survives(&format!("{mode} after {n} puts, power cut"), m.crash(), s1, &state1, &src, completed);
            assert_survives(&format!("{mode} after {n} puts, process crash"), m.fork(), s1, &state1, &src, completed);
        }
        n += 1;
    }
    eprintln!("second backup: {needed} puts, {interrupted} interrupted runs checked");
    // Every put before the last one was a crash point.
    assert!(interrupted >= 2 * (needed - 1), "only {interrupted} runs were interrupted");
}

/// A tree for the maintenance tests: shared data, plus `unique.bin` whose contents depend on
/// `version`, so each snapshot holds some data no other snapshot has.
fn write_version(src: &Path, version: u64, mtime: i64) {
    fs::create_dir_all(src).unwrap();
    if version == 0 {
        rewrite(&src.join("shared.bin"), &random_bytes(1000, 512 << 10), DAY0);
    }
    rewrite(&src.join("unique.bin"), &random_bytes(2000 + version, 600 << 10), mtime);
    rewrite(&src.join("log.txt"), &compressible_bytes(version, 64 << 10), mtime);
    set_mtime(src, mtime, 0);
}

/// Three backups of `src` (a version per day), then `forget --keep-last 1`: prune has the
/// first two versions' unique data to remove. Returns the store and the kept snapshot.
fn three_versions_last_kept(src: &Path) -> (Arc<MemBackend>, Id) {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone(), small_opts());
    let mut parent = None;
    for v in 0..3 {
        write_version(src, v, DAY0 + v as i64 * DAY);
        parent = Some(backup(&repo, src, parent, DAY0 + v as i64 * DAY).0);
    }
    let policy = Retention { keep_last: 1, ..Default::default() };
    forget(&repo, &policy, false).unwrap();
    (mem, parent.unwrap())
}

#[test]
fn prune_after_an_interrupted_prune_keeps_superseded_index_files_dead() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    let (mem, last) = three_versions_last_kept(&src);
    let old_index = mem.names_under("index");
    // The power cut that leaves the new index durable and the files it supersedes in place.
    let crashed = (0..100)
        .map(|n| {
            let m = Arc::new(mem.fork());
            let _ = prune(&open(Arc::new(FaultBackend::crash_after_writes(m.clone(), n))), &PruneOptions::default());
            m.crash()
        })
        .find(|s| {
            let now = s.names_under("index");
            now.len() > old_index.len() && old_index.iter().all(|o| now.contains(o))
        })
        .expect("no crash point between writing prune's index and deleting the old ones");
    let crashed = Arc::new(crashed);
    prune(&open(crashed.clone()), &PruneOptions::default()).unwrap();
    // The superseded files must be gone with the index that superseded them; were they
    // left, the next session would load them and point at packs prune has deleted.
    let left = crashed.names_under("index");
    assert!(old_index.iter().all(|o| !left.contains(o)), "superseded index files survived: {left:?}");
    let repo = open(crashed.clone());
    assert_spotless(&repo, "second prune after an interrupted one");
    assert_restores_to(&repo, &last, &src);
}

#[test]
fn prune_interrupted_at_any_write_loses_nothing_and_a_rerun_finishes() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    let (mem, last) = three_versions_last_kept(&src);
    let before = stored_bytes(&*mem);
    let needed = {
        let f = Arc::new(FaultBackend::new(Arc::new(mem.fork())));
        let r = prune(&open(f.clone()), &PruneOptions::default()).unwrap();
        assert!(r.packs_deleted + r.packs_repacked > 0, "{r:?}");
        f.writes()
    };

    let mut n = 0;
    let mut completed_once = false;
    let mut interrupted = 0;
    while n <= needed || !completed_once {
        assert!(n < 200, "prune never completed");
        let m = Arc::new(mem.fork());
        let f = Arc::new(FaultBackend::crash_after_writes(m.clone(), n));
        let result = prune(&open(f.clone()), &PruneOptions::default());
        completed_once |= result.is_ok() && f.faults() == 0;
        interrupted += usize::from(result.is_err());
        let states = [
            ("power cut", m.crash()),
            ("process crash", m.fork()),
            ("power cut keeping pending index changes", m.crash_keeping(|x| x.starts_with("index/"))),
            ("power cut keeping pending pack changes", m.crash_keeping(|x| x.starts_with("data/"))),
        ];
        for (what, state) in states {
            let label = format!("prune crashed after {n} writes, {what}");
            let state = Arc::new(state);
            let repo = open(state.clone());
            assert_no_errors(&repo, &label);
            assert_restores_to(&repo, &last, &src);
            prune(&repo, &PruneOptions::default()).unwrap_or_else(|e| panic!("{label}: rerun of prune: {e}"));
            drop(repo);
            let repo = open(state.clone());
            assert_spotless(&repo, &format!("{label}, after a rerun"));
            assert_restores_to(&repo, &last, &src);
            let after = stored_bytes(&*state);
            assert!(after < before, "{label}: prune freed nothing ({before} -> {after} bytes)");
        }
        n += 1;
    }
    eprintln!("prune: {needed} writes, {interrupted} interrupted runs checked");
    assert!(interrupted >= needed - 1, "only {interrupted} prunes were interrupted of {needed} writes");
}

#[test]
fn prune_deletes_orphan_packs_left_by_a_crashed_backup() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    write_version(&src, 0, DAY0);
    let state1 = tmp.path().join("state1/data");
    copy_tree(&src, &state1);
    let mem = Arc::new(MemBackend::new());
    let s1 = backup(&init(mem.clone(), small_opts()), &src, None, DAY0).0;
    let packs_before = mem.names_under("data");

    rewrite(&src.join("big.bin"), &random_bytes(3, 3 << 20), DAY0 + DAY);
    let f = Arc::new(FaultBackend::fail_after(mem.clone(), 2));
    assert!(backup_local(
        &open(f),
        std::slice::from_ref(&src),
        Some(s1),
        HOST,
        fixed_time(DAY0 + DAY),
        &Progress::default()
    )
    .is_err());

    // What the dead process left: packs nobody indexed.
    let repo = open(mem.clone());
    let orphans: Vec<String> = mem.names_under("data").into_iter().filter(|n| !packs_before.contains(n)).collect();
    assert!(!orphans.is_empty());
    let report = assert_no_errors(&repo, "after the crash");
    for o in &orphans {
        assert!(report.warnings.iter().any(|w| w.object == *o), "{o} not reported: {:#?}", report.warnings);
    }
    let r = prune(&repo, &PruneOptions::default()).unwrap();
    assert_eq!(r.orphans_deleted, orphans.len());
    let left = mem.names_under("data");
    assert!(orphans.iter().all(|o| !left.contains(o)), "orphans still stored");
    assert!(mem.is_synced());
    assert_spotless(&open(mem.clone()), "after prune");
    assert_restores_to(&open(mem.clone()), &s1, &state1);
}

#[test]
fn an_interrupted_backup_resumes_from_its_last_checkpoint_without_uploading_it_again() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    // About 24 one-MiB packs of incompressible data: three checkpoints' worth.
    for i in 0..6u64 {
        rewrite(&src.join(format!("part{i}.bin")), &random_bytes(40 + i, 4 << 20), DAY0);
    }
    let mem = Arc::new(MemBackend::new());
    init(mem.clone(), small_opts());
    let full_puts = {
        let f = Arc::new(FaultBackend::new(Arc::new(mem.fork())));
        backup(&open(f.clone()), &src, None, DAY0);
        f.puts()
    };
    assert!(full_puts >= 24, "expected many packs, got {full_puts} puts");

    // The process dies three quarters of the way through (nothing after that put lands).
    let cut = full_puts * 3 / 4;
    let f = Arc::new(FaultBackend::crash_after_puts(mem.clone(), cut));
    let err =
        backup_local(&open(f.clone()), std::slice::from_ref(&src), None, HOST, fixed_time(DAY0), &Progress::default());
    assert!(err.is_err(), "the backup should have been cut off");
    assert!(open(mem.clone()).snapshot_ids().unwrap().is_empty(), "nothing was committed");

    // The next run finds the checkpointed chunks and uploads only the rest.
    let f = Arc::new(FaultBackend::new(mem.clone()));
    let repo = open(f.clone());
    let (id, snap) = backup(&repo, &src, None, DAY0 + HOUR);
    let resumed_puts = f.puts();
    assert!(
        resumed_puts + repo::writer::CHECKPOINT_PACKS * 2 <= full_puts,
        "resumed backup put {resumed_puts} objects, a full one {full_puts}: checkpoints were not used"
    );
    assert!(snap.summary.new_bytes < snap.summary.bytes / 2, "{:?}", snap.summary);
    assert_restores_to(&repo, &id, &src);
    assert_no_errors(&open(mem.clone()), "after the resumed backup");
}

#[test]
fn key_rotation_rewraps_old_packs_new_data_uses_the_new_version_and_a_crash_loses_nothing() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    let (mem, last) = three_versions_last_kept(&src);
    let state1 = tmp.path().join("state1/data");
    copy_tree(&src, &state1);
    let packs_before = mem.names_under("data");

    // A crash at any write of a rotation leaves a repository that opens, checks and restores.
    let writes = {
        let f = Arc::new(FaultBackend::new(Arc::new(mem.fork())));
        rotate_key(open(f.clone()), &master_key(MASTER), fixed_time(DAY0 + 5 * DAY)).unwrap();
        f.writes()
    };
    for n in 0..writes {
        let m = Arc::new(mem.fork());
        let _ = rotate_key(
            open(Arc::new(FaultBackend::crash_after_writes(m.clone(), n))),
            &master_key(MASTER),
            fixed_time(DAY0 + 5 * DAY),
        );
        for (label, state) in [("power cut", m.crash()), ("process crash", m.fork())] {
            let repo = open(Arc::new(state));
            assert_no_errors(&repo, &format!("rotation cut after {n} writes, {label}"));
            assert_restores_to(&repo, &last, &state1);
        }
    }

    let report = rotate_key(open(mem.clone()), &master_key(MASTER), fixed_time(DAY0 + 5 * DAY)).unwrap();
    assert_eq!((report.new_version, report.versions.clone()), (2, vec![1, 2]));
    assert!(report.packs_rewrapped > 0);
    assert_eq!(mem.names_under("data"), packs_before, "no pack was rewritten");
    let repo = open(mem.clone());
    assert_eq!(repo.current_kek().0, 2);
    assert!(repo.index().packs().iter().all(|p| p.kek_version == 2), "every data key is wrapped by version 2");
    assert_restores_to(&repo, &last, &state1);

    // A backup after the rotation writes under version 2; both snapshots restore.
    rewrite(&src.join("after-rotation.bin"), &random_bytes(77, 3 << 20), DAY0 + 6 * DAY);
    let (s2, _) = backup(&repo, &src, Some(last), DAY0 + 6 * DAY);
    let repo = open(mem.clone());
    assert!(repo.index().packs().iter().all(|p| p.kek_version == 2));
    assert_restores_to(&repo, &last, &state1);
    assert_restores_to(&repo, &s2, &src);
    assert_spotless(&repo, "after rotation and a new backup");
    // The packs themselves still name version 1 in their footers: the index rebuilt from
    // them alone is whole as long as version 1 exists.
    repair_index(&repo).unwrap();
    assert_restores_to(&open(mem.clone()), &s2, &src);
}

/// The key versions named by every pack footer and every sealed snapshot in storage.
fn stored_key_versions(b: &dyn Backend) -> std::collections::BTreeSet<u32> {
    let mut out = std::collections::BTreeSet::new();
    for (name, size) in b.list("data").unwrap() {
        let tail = b.get_range(&name, size - repo::pack::FOOTER_LEN as u64..size).unwrap();
        out.insert(repo::pack::parse_footer(&name, &tail).unwrap().kek_version);
    }
    for (name, _) in b.list("snapshots").unwrap() {
        out.insert(repo::sealed::peek(&name, &b.get(&name).unwrap()).unwrap().1);
    }
    out
}

#[test]
fn retiring_a_key_version_leaves_nothing_wrapped_under_it_and_a_crash_at_any_write_loses_nothing() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    let (mem, s1) = three_versions_last_kept(&src);
    let state1 = tmp.path().join("state1/data");
    copy_tree(&src, &state1);
    rotate_key(open(mem.clone()), &master_key(MASTER), fixed_time(DAY0 + 5 * DAY)).unwrap();
    rewrite(&src.join("after-rotation.bin"), &random_bytes(78, 3 << 20), DAY0 + 6 * DAY);
    let (s2, _) = backup(&open(mem.clone()), &src, Some(s1), DAY0 + 6 * DAY);
    assert_eq!(stored_key_versions(mem.as_ref()), [1, 2].into(), "old packs and snapshots still name version 1");

    // The current version cannot be retired, nor one that does not exist.
    assert!(matches!(retire_key(open(mem.clone()), 2), Err(Error::Invalid(m)) if m.contains("current")));
    assert!(matches!(retire_key(open(mem.clone()), 7), Err(Error::Invalid(m)) if m.contains("no key version")));

    // A crash at any write of a retirement leaves a repository that checks and restores both
    // snapshots, and running it again finishes the job.
    let writes = {
        let f = Arc::new(FaultBackend::new(Arc::new(mem.fork())));
        retire_key(open(f.clone()), 1).unwrap();
        f.writes()
    };
    assert!(writes > 4, "expected several writes, got {writes}");
    for n in 0..writes {
        let m = Arc::new(mem.fork());
        let _ = retire_key(open(Arc::new(FaultBackend::crash_after_writes(m.clone(), n))), 1);
        for (label, state) in [("power cut", m.crash()), ("process crash", m.fork())] {
            let state = Arc::new(state);
            let repo = open(state.clone());
            assert_no_errors(&repo, &format!("retirement cut after {n} writes, {label}"));
            assert_restores_to(&repo, &s1, &state1);
            assert_restores_to(&repo, &s2, &src);
            if repo.kek_versions().contains(&1) {
                retire_key(repo, 1).unwrap();
            }
            let repo = open(state.clone());
            assert_eq!(repo.kek_versions(), vec![2], "cut after {n} writes, {label}, then rerun");
            assert_restores_to(&repo, &s1, &state1);
        }
    }

    let report = retire_key(open(mem.clone()), 1).unwrap();
    assert!(report.packs_rewritten > 0 && report.snapshots_resealed == 1, "{report:?}");
    assert_eq!(report.versions, vec![2]);
    assert_eq!(stored_key_versions(mem.as_ref()), [2].into(), "nothing is wrapped under version 1 any more");
    assert!(mem.names_under("keys").iter().all(|n| !n.ends_with("kek-1")), "the key file is gone");
    let repo = open(mem.clone());
    assert_eq!(repo.kek_versions(), vec![2]);
    assert_spotless(&repo, "after retiring version 1");
    assert_restores_to(&repo, &s1, &state1);
    assert_restores_to(&repo, &s2, &src);
    // The packs alone rebuild the index without version 1.
    repair_index(&repo).unwrap();
    let repo = open(mem.clone());
    assert_spotless(&repo, "after repair index");
    assert_restores_to(&repo, &s1, &state1);
}

// ---------------------------------------------------------------------------------------------
// Damage
// ---------------------------------------------------------------------------------------------

/// A repository in memory with two snapshots of a small tree; `victim.bin` (2 MiB random)
/// is in both. Returns the tree's two states as copies.
struct Damaged {
    _tmp: TempDir,
    mem: Arc<MemBackend>,
    snaps: [Id; 2],
    states: [PathBuf; 2],
}

fn two_snapshots() -> Damaged {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    rewrite(&src.join("victim.bin"), &random_bytes(11, 2 << 20), DAY0);
    rewrite(&src.join("other.txt"), b"unrelated file\n", DAY0);
    set_mtime(&src, DAY0, 0);
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone(), small_opts());
    let s1 = backup(&repo, &src, None, DAY0).0;
    let state1 = tmp.path().join("state1/data");
    copy_tree(&src, &state1);
    rewrite(&src.join("second.txt"), &compressible_bytes(3, 100 << 10), DAY0 + DAY);
    let s2 = backup(&repo, &src, Some(s1), DAY0 + DAY).0;
    let state2 = tmp.path().join("state2/data");
    copy_tree(&src, &state2);
    Damaged { _tmp: tmp, mem, snaps: [s1, s2], states: [state1, state2] }
}

fn assert_reports(report: &CheckReport, name: &str) {
    assert!(
        report.errors.iter().any(|f| f.object.contains(name)),
        "check should report damage to {name}; errors: {:#?}",
        report.errors
    );
}

/// Asserts every byte of the restored `got` file is either the original byte or a zero never
/// overwritten: a failed restore may leave a file incomplete, never with wrong bytes.
fn assert_no_wrong_bytes(original: &Path, got: &Path) {
    let Ok(got) = fs::read(got) else { return };
    let want = fs::read(original).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w || *g == 0, "byte {i} of a failed restore is wrong");
    }
}

#[test]
fn bit_flip_in_a_pack_is_reported_by_check_and_restore_refuses_the_damaged_file() {
    let d = two_snapshots();
    let (pack, blob_at, blob_len) = {
        let repo = open(d.mem.clone());
        let snap = repo.load_snapshot(&d.snaps[0]).unwrap();
        let chunk = chunks_of(&repo, &snap, "data/victim.bin")[0];
        let index = repo.index();
        let loc = index.get(&chunk).unwrap();
        (pack_name(&index.pack(loc.pack).unwrap().id), loc.offset as usize, loc.len as usize)
    };
    let size = d.mem.object(&pack).unwrap().len();
    let spots = [
        ("inside a data blob", blob_at + blob_len / 2),
        ("in the header", size - repo::pack::FOOTER_LEN - 5),
        ("in the footer's wrapped key", size - repo::pack::FOOTER_LEN + 20),
        ("in the last byte", size - 1),
    ];
    for (where_, at) in spots {
        let mem = Arc::new(d.mem.fork());
        mem.flip_bit(&pack, at, 3);
        let repo = open(mem.clone());
        let report = check(&repo, true).unwrap();
        assert_reports(&report, &pack);
        assert!(
            report.errors.iter().all(|f| f.object.contains(&pack)),
            "{where_}: blamed elsewhere: {:#?}",
            report.errors
        );
        if where_ == "inside a data blob" {
            for (snap, state) in d.snaps.iter().zip(&d.states) {
                let t = tempdir();
                let err = try_restore(&repo, snap, t.path()).expect_err("restore of a damaged file must fail");
                assert!(err.to_string().contains(&pack), "{err}");
                assert_no_wrong_bytes(&state.join("victim.bin"), &t.path().join("data/victim.bin"));
            }
            // The damage is contained: other files still restore.
            let t = tempdir();
            let snap = repo.load_snapshot(&d.snaps[0]).unwrap();
            let opts = RestoreOptions { include: vec!["data/other.txt".into()], owners: false };
            restore(&repo, &snap, t.path(), &opts, &RestoreProgress::default()).unwrap();
            assert_eq!(fs::read(t.path().join("data/other.txt")).unwrap(), b"unrelated file\n");
        } else {
            // The blobs themselves are intact and authenticated: restore still works.
            assert_restores_to(&repo, &d.snaps[1], &d.states[1]);
        }
    }
}

#[test]
fn lost_pack_is_reported_by_name_and_restore_fails_without_wrong_bytes() {
    let d = two_snapshots();
    let mem = Arc::new(d.mem.fork());
    let pack = {
        let repo = open(mem.clone());
        let snap = repo.load_snapshot(&d.snaps[0]).unwrap();
        let chunk = chunks_of(&repo, &snap, "data/victim.bin")[0];
        let index = repo.index();
        pack_name(&index.pack(index.get(&chunk).unwrap().pack).unwrap().id)
    };
    mem.remove(&pack);
    let repo = open(mem.clone());
    let report = check(&repo, false).unwrap();
    assert_reports(&report, &pack);
    for (s, state) in d.snaps.iter().zip(&d.states) {
        let t = tempdir();
        let err = try_restore(&repo, s, t.path()).expect_err("restore needing a lost pack must fail");
        assert!(err.to_string().contains(&pack), "{err}");
        assert_no_wrong_bytes(&state.join("victim.bin"), &t.path().join("data/victim.bin"));
    }
}

/// Positions worth flipping in a sealed object (index file, snapshot): magic, kind, key
/// version, wrapped key, ciphertext, tag.
fn sealed_spots(len: usize) -> [usize; 6] {
    [0, 4, 8, 20, repo::sealed::HEADER_LEN + 3, len - 1]
}

#[test]
fn bit_flip_in_an_index_file_is_reported_and_repair_index_recovers() {
    let d = two_snapshots();
    for name in d.mem.names_under("index") {
        flip_index_file_and_repair(&d, &name);
    }
}

fn flip_index_file_and_repair(d: &Damaged, name: &str) {
    let len = d.mem.object(name).unwrap().len();
    for at in sealed_spots(len) {
        let mem = Arc::new(d.mem.fork());
        mem.flip_bit(name, at, 1);
        let repo = open(mem.clone());
        assert!(repo.index_errors().iter().any(|e| e.to_string().contains(name)), "byte {at}");
        let report = check(&repo, true).unwrap();
        assert_reports(&report, name);
        // Whatever that index described is unreachable now: a restore that needs it fails and
        // writes nothing wrong; one that does not is exact.
        let mut failed = 0;
        for (s, state) in d.snaps.iter().zip(&d.states) {
            let t = tempdir();
            match try_restore(&repo, s, t.path()) {
                Ok(_) => assert_trees_equal(state, &t.path().join("data")),
                Err(_) => {
                    failed += 1;
                    assert_no_wrong_bytes(&state.join("victim.bin"), &t.path().join("data/victim.bin"));
                }
            }
        }
        assert!(failed > 0, "byte {at}: every restore succeeded without {name}");

        repair_index(&repo).unwrap();
        let repo = open(mem.clone());
        assert_spotless(&repo, &format!("index flip at byte {at}, after repair"));
        for (s, state) in d.snaps.iter().zip(&d.states) {
            assert_restores_to(&repo, s, state);
        }
    }
}

#[test]
fn bit_flip_in_a_snapshot_is_reported_and_prune_refuses_to_guess() {
    let d = two_snapshots();
    let name = snapshot_name(&d.snaps[0]);
    let len = d.mem.object(&name).unwrap().len();
    for at in sealed_spots(len) {
        let mem = Arc::new(d.mem.fork());
        mem.flip_bit(&name, at, 6);
        let repo = open(mem.clone());
        let report = check(&repo, true).unwrap();
        assert_reports(&report, &name);
        let err = repo.load_snapshot(&d.snaps[0]).expect_err("a damaged snapshot must not load");
        assert!(err.to_string().contains(&name), "{err}");
        assert!(repo.snapshots().is_err());
        // The other snapshot is unaffected.
        assert_restores_to(&repo, &d.snaps[1], &d.states[1]);
        // Prune cannot know what the damaged snapshot needs, so it must delete nothing.
        let names = mem.names();
        assert!(prune(&repo, &PruneOptions::default()).is_err(), "byte {at}: prune ran with an unreadable snapshot");
        assert_eq!(mem.names(), names);
    }
}

#[test]
fn bit_flip_in_config_or_key_file_is_refused_by_name_or_harmless() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    fs::create_dir(&src).unwrap();
    rewrite(&src.join("a.txt"), b"alpha\n", DAY0);
    rewrite(&src.join("b.bin"), &random_bytes(4, 20_000), DAY0);
    let mem = Arc::new(MemBackend::new());
    let snap = backup(&init(mem.clone(), small_opts()), &src, None, DAY0).0;
    for name in ["config", "keys/kek-1"] {
        let len = mem.object(name).unwrap().len();
        let text = String::from_utf8(mem.object(name).unwrap().to_vec()).unwrap();
        let wrapped_at = text.find("\"wrapped\"").unwrap();
        let (mut refused, mut harmless) = (0, 0);
        for at in 0..len {
            let m = Arc::new(mem.fork());
            m.flip_bit(name, at, (at % 8) as u8);
            match Repository::open(m.clone(), &master_key(MASTER), rng()) {
                Err(e) => {
                    assert!(e.to_string().contains(name), "flip at byte {at} of {name}: error does not name it: {e}");
                    refused += 1;
                }
                Ok(repo) => {
                    // Key material is authenticated: a flip there can never go unnoticed.
                    assert!(
                        at < wrapped_at || at > wrapped_at + 100,
                        "flip at byte {at} of {name}'s wrapped key accepted"
                    );
                    assert_restores_to(&repo, &snap, &src);
                    harmless += 1;
                }
            }
        }
        eprintln!("{name}: {refused} flips refused, {harmless} accepted and harmless");
        assert!(refused > harmless, "{name}: most flips should be refused");
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_master_key_cannot_open_and_init_refuses_an_existing_repository() {
    let mem = Arc::new(MemBackend::new());
    match Repository::open(mem.clone(), &master_key(MASTER), rng()) {
        Err(Error::NotFound(what)) => assert!(what.contains("config"), "{what}"),
        other => panic!("opening an empty store: {:?}", other.err()),
    }
    drop(init(mem.clone(), small_opts()));
    let names = mem.names();
    match Repository::open(mem.clone(), &master_key(MASTER + 1), rng()) {
        Err(e @ Error::Key { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("config") && msg.contains("wrong key"), "unclear error: {msg}");
        }
        other => panic!("a wrong master key must be refused with Error::Key, got {:?}", other.err()),
    }
    for key in [MASTER, MASTER + 1] {
        let again = Repository::init(mem.clone(), &master_key(key), small_opts(), fixed_time(DAY0), rng());
        assert!(matches!(again, Err(Error::AlreadyExists(_))), "init over a repository: {:?}", again.err());
    }
    assert_eq!(mem.names(), names, "refused operations changed the repository");
    open(mem);
}

// ---------------------------------------------------------------------------------------------
// Restore safety
// ---------------------------------------------------------------------------------------------

#[test]
fn restore_replaces_planted_links_and_never_writes_outside_the_target() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    make_tree(&src);
    let outside = tmp.path().join("outside");
    for d in ["dir", "dir2", "dir3"] {
        fs::create_dir_all(outside.join(d)).unwrap();
        fs::write(outside.join(d).join("victim.txt"), b"must not change\n").unwrap();
    }
    fs::write(outside.join("file.txt"), b"must not change\n").unwrap();
    fs::write(outside.join("linked.txt"), b"must not change\n").unwrap();
    let pristine = tmp.path().join("pristine/outside");
    copy_tree(&outside, &pristine);

    let mem = Arc::new(MemBackend::new());
    let repo = init(mem, small_opts());
    let snap = backup(&repo, &src, None, DAY0).0;

    // Links planted inside the target where the snapshot has a directory or a file.
    let target = tmp.path().join("target");
    let t = target.join("data");
    for d in ["nested", "hard"] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    let sym = |to: &Path, at: &str| std::os::unix::fs::symlink(to, t.join(at)).unwrap();
    sym(&outside.join("dir"), "nested/a"); // a directory of the snapshot
    sym(&outside.join("dir2"), "links"); // a directory holding symlinks
    sym(&outside.join("file.txt"), "small.txt"); // a regular file
    sym(&outside.join("file.txt"), "hard/two.dat"); // a hard link's second name
    fs::hard_link(outside.join("linked.txt"), t.join("random.bin")).unwrap(); // a hard link out
    try_restore(&repo, &snap, &target).unwrap();
    assert_trees_equal(&pristine, &outside);
    for (p, dir) in [("nested/a", true), ("links", true), ("small.txt", false), ("hard/two.dat", false)] {
        let m = fs::symlink_metadata(t.join(p)).unwrap();
        assert!(if dir { m.is_dir() } else { m.is_file() }, "{p} is still a planted link");
    }
    assert_trees_equal(&src, &t);

    // The restored root itself planted as a link to a directory outside.
    let target2 = tmp.path().join("target2");
    fs::create_dir(&target2).unwrap();
    std::os::unix::fs::symlink(outside.join("dir3"), target2.join("data")).unwrap();
    try_restore(&repo, &snap, &target2).unwrap();
    assert_trees_equal(&pristine, &outside);
    assert!(fs::symlink_metadata(target2.join("data")).unwrap().is_dir());
    assert_trees_equal(&src, &target2.join("data"));
}

/// Every file under `dir`, with its bytes: what an attack must leave unchanged.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(contents(&p));
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_symlink_carrying_a_subtree_planted_in_storage_restores_nothing_outside_the_target() {
    let tmp = tempdir();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep.txt"), b"must not change\n").unwrap();
    let before = contents(&outside);
    let repo = init(Arc::new(MemBackend::new()), small_opts());
    let root = testkit::hostile::symlink_with_subtree(&repo, &outside);
    let snap = testkit::hostile::plant_snapshot(&repo, root, fixed_time(DAY0));
    let target = tmp.path().join("target");
    let err = try_restore(&repo, &snap, &target).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(contents(&outside), before, "the restore wrote outside its target");
    assert!(!outside.join("pwned").exists());
}

/// Plain bytes by id, as a server would stream them.
struct Served(std::collections::HashMap<Id, Vec<u8>>);

impl repo::restore::ContentSource for Served {
    fn fetch(&self, wanted: &[(Id, u32)], sink: &(dyn Fn(&Id, &[u8]) -> repo::Result<()> + Sync)) -> repo::Result<()> {
        for (id, _) in wanted {
            sink(id, &self.0[id])?;
        }
        Ok(())
    }
}

#[test]
fn a_hostile_plan_from_a_server_writes_nothing_outside_the_target() {
    use repo::model::{NodeKind, RawName};
    use repo::restore::{restore_plan, PlanEntry};
    use testkit::hostile::node;
    let tmp = tempdir();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep.txt"), b"must not change\n").unwrap();
    let before = contents(&outside);
    let data = b"written through a link".to_vec();
    let id = Id([9; 32]);
    let served = Served([(id, data.clone())].into());
    let file = |name: &str| {
        let mut n = node(name.rsplit('/').next().unwrap(), NodeKind::File);
        n.size = data.len() as u64;
        n.content = vec![Content::Chunk { id, len: data.len() as u32 }];
        PlanEntry { path: RawName(name.as_bytes().to_vec()), node: n }
    };
    let link = |name: &str| {
        let mut n = node(name, NodeKind::Symlink);
        n.target = Some(RawName::from_os(outside.as_os_str()));
        PlanEntry { path: RawName(name.as_bytes().to_vec()), node: n }
    };
    let dir = |name: &str| {
        let mut n = node(name, NodeKind::Dir);
        n.subtree = Some(Id([1; 32]));
        PlanEntry { path: RawName(name.as_bytes().to_vec()), node: n }
    };
    let attacks: Vec<(&str, Vec<PlanEntry>)> = vec![
        ("a file below a symlink", vec![link("escape"), file("escape/pwned")]),
        ("a file whose parent is not in the plan", vec![file("escape/pwned")]),
        ("a directory and a symlink of the same name", vec![dir("escape"), link("escape"), file("escape/pwned")]),
        ("a symlink then a directory of the same name", vec![link("escape"), dir("escape"), file("escape/pwned")]),
        ("a dot-dot path", vec![file("../pwned")]),
        ("an absolute path", vec![file("/pwned")]),
    ];
    for (what, plan) in attacks {
        let target = tmp.path().join(format!("target-{}", what.replace(' ', "-")));
        let r = restore_plan(plan, &target, false, &RestoreProgress::default(), &served);
        assert!(r.is_err(), "{what}: the plan was accepted");
        assert_eq!(contents(&outside), before, "{what}: the restore wrote outside its target");
    }
    // A symlink planted in the target between the plan's directory and its file is replaced.
    let target = tmp.path().join("target-planted");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("d")).unwrap();
    restore_plan(vec![dir("d"), file("d/pwned")], &target, false, &RestoreProgress::default(), &served).unwrap();
    assert_eq!(fs::read(target.join("d/pwned")).unwrap(), data);
    assert_eq!(contents(&outside), before);
}

#[test]
fn a_stopped_restore_writes_nothing_more() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    make_tree(&src);
    let repo = init(Arc::new(MemBackend::new()), small_opts());
    let snap = repo.load_snapshot(&backup(&repo, &src, None, DAY0).0).unwrap();
    let plan = repo::restore::plan(&repo, &snap.tree, &[]).unwrap();
    let progress = RestoreProgress::default();
    progress.stop.store(true, Ordering::Relaxed);
    let target = tmp.path().join("target");
    let err = repo::restore::restore_plan(plan, &target, false, &progress, &repo::restore::RepoSource(&repo));
    assert!(err.is_err());
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "a stopped restore created entries");
}

/// A listing, uploaded through a writer as a client would (validated, uncompressed).
fn put_tree(w: &repo::Writer<'_>, repo: &Repository, nodes: Vec<repo::model::Node>) -> Id {
    let json = serde_json::to_vec(&repo::model::Tree { nodes }).unwrap();
    let id = repo.hasher().id(&json);
    let chunk = repo::PreparedChunk {
        id,
        kind: repo::pack::BlobKind::Tree,
        raw_len: json.len() as u32,
        compressed: false,
        data: json,
    };
    repo::ChunkSink::put(w, chunk).unwrap();
    id
}

fn put_data(w: &repo::Writer<'_>, repo: &Repository, data: &[u8]) -> Id {
    let id = repo.hasher().id(data);
    let chunk = repo::PreparedChunk {
        id,
        kind: repo::pack::BlobKind::Data,
        raw_len: data.len() as u32,
        compressed: false,
        data: data.to_vec(),
    };
    repo::ChunkSink::put(w, chunk).unwrap();
    id
}

fn commit(w: repo::Writer<'_>, root: Id) -> repo::Result<(Id, Snapshot)> {
    w.commit(root, vec!["x".into()], HOST.into(), None, Default::default(), fixed_time(DAY0))
}

#[test]
fn commit_refuses_snapshots_whose_references_are_not_stored_or_not_what_they_claim() {
    use repo::model::NodeKind;
    use testkit::hostile::node;
    let repo = init(Arc::new(MemBackend::new()), small_opts());
    let file_of = |id: Id, len: u32| repo::model::Node {
        size: u64::from(len),
        content: vec![Content::Chunk { id, len }],
        ..node("f", NodeKind::File)
    };
    let dir_of = |name: &str, sub: Id| repo::model::Node { subtree: Some(sub), ..node(name, NodeKind::Dir) };

    // A data chunk never uploaded.
    let w = repo.writer();
    let root = put_tree(&w, &repo, vec![file_of(Id([5; 32]), 10)]);
    match commit(w, root) {
        Err(Error::MissingReferences { count: 1, missing }) => assert!(missing[0].contains(&Id([5; 32]).to_hex())),
        other => panic!("{other:?}"),
    }
    // A subtree never uploaded.
    let w = repo.writer();
    let root = put_tree(&w, &repo, vec![dir_of("d", Id([6; 32]))]);
    assert!(matches!(commit(w, root), Err(Error::MissingReferences { count: 1, .. })));
    // A root that was uploaded as file data.
    let w = repo.writer();
    let json = serde_json::to_vec(&repo::model::Tree { nodes: vec![] }).unwrap();
    let root = put_data(&w, &repo, &json);
    assert!(matches!(commit(w, root), Err(Error::InvalidTree { .. })));
    // A listing named as a file's data, and a chunk whose length the file misstates.
    let w = repo.writer();
    let inner = put_tree(&w, &repo, vec![]);
    let data = put_data(&w, &repo, b"twelve bytes");
    let a = put_tree(&w, &repo, vec![file_of(inner, 13)]);
    let b = put_tree(&w, &repo, vec![file_of(data, 11)]);
    let root = put_tree(&w, &repo, vec![dir_of("a", a)]);
    assert!(matches!(commit(w, root), Err(Error::InvalidTree { .. })));
    let w = repo.writer();
    let root = put_tree(&w, &repo, vec![dir_of("b", b)]);
    assert!(matches!(commit(w, root), Err(Error::InvalidTree { .. })));
    // Nesting deeper than MAX_DEPTH.
    let w = repo.writer();
    let mut t = put_tree(&w, &repo, vec![]);
    for _ in 0..repo::tree::MAX_DEPTH {
        t = put_tree(&w, &repo, vec![dir_of("d", t)]);
    }
    assert!(matches!(commit(w, t), Err(Error::InvalidTree { .. })));
    // A tree that expands to 2^30 entries through shared subtrees.
    let w = repo.writer();
    let mut t = put_tree(&w, &repo, vec![file_of(data, 12)]);
    for _ in 0..30 {
        t = put_tree(&w, &repo, vec![dir_of("a", t), dir_of("b", t)]);
    }
    assert!(matches!(commit(w, t), Err(Error::InvalidTree { .. })));
    assert!(repo.snapshot_ids().unwrap().is_empty(), "a refused commit left a snapshot");

    // What is stored and well formed commits, and restores.
    let w = repo.writer();
    let ok = put_tree(&w, &repo, vec![dir_of("b", put_tree(&w, &repo, vec![file_of(data, 12)]))]);
    let (id, _) = commit(w, ok).unwrap();
    let t = tempdir();
    try_restore(&repo, &id, t.path()).unwrap();
    assert_eq!(fs::read(t.path().join("b/f")).unwrap(), b"twelve bytes");
}

#[test]
fn a_symlink_with_a_subtree_and_other_kinds_with_foreign_fields_are_refused_as_listings() {
    use repo::model::{NodeKind, RawName};
    use testkit::hostile::node;
    let sub = Some(Id([1; 32]));
    let chunk = vec![Content::Chunk { id: Id([2; 32]), len: 3 }];
    let target = Some(RawName(b"/etc".to_vec()));
    let link = Some(RawName(b"a".to_vec()));
    let bad = [
        repo::model::Node { subtree: sub, target: target.clone(), ..node("x", NodeKind::Symlink) },
        repo::model::Node { subtree: sub, link: link.clone(), ..node("x", NodeKind::Hardlink) },
        repo::model::Node { subtree: sub, ..node("x", NodeKind::File) },
        repo::model::Node { subtree: sub, target: target.clone(), ..node("x", NodeKind::Dir) },
        repo::model::Node { subtree: sub, link: link.clone(), ..node("x", NodeKind::Dir) },
        repo::model::Node { content: chunk.clone(), size: 3, target: target.clone(), ..node("x", NodeKind::Symlink) },
        repo::model::Node { content: chunk.clone(), size: 2, ..node("x", NodeKind::File) },
        repo::model::Node { target: Some(RawName(Vec::new())), ..node("x", NodeKind::Symlink) },
        repo::model::Node { link: Some(RawName(b"../a".to_vec())), ..node("x", NodeKind::Hardlink) },
        repo::model::Node {
            content: vec![Content::Zero { zero: u64::MAX }, Content::Zero { zero: 2 }],
            size: 1,
            ..node("x", NodeKind::File)
        },
    ];
    for n in bad {
        assert!(repo::tree::validate(&repo::model::Tree { nodes: vec![n.clone()] }).is_err(), "{n:?}");
    }
    let good = [
        repo::model::Node { subtree: sub, ..node("x", NodeKind::Dir) },
        repo::model::Node { content: chunk, size: 3, ..node("x", NodeKind::File) },
        repo::model::Node { target, ..node("x", NodeKind::Symlink) },
        repo::model::Node { link, ..node("x", NodeKind::Hardlink) },
    ];
    for n in good {
        assert!(repo::tree::validate(&repo::model::Tree { nodes: vec![n.clone()] }).is_ok(), "{n:?}");
    }
}

#[test]
fn a_listing_that_breaks_the_rules_is_refused_on_upload() {
    use repo::model::{NodeKind, RawName};
    use testkit::hostile::node;
    let repo = init(Arc::new(MemBackend::new()), small_opts());
    let w = repo.writer();
    let bad = vec![repo::model::Node {
        target: Some(RawName(b"/etc".to_vec())),
        subtree: Some(Id([1; 32])),
        ..node("escape", NodeKind::Symlink)
    }];
    let json = serde_json::to_vec(&repo::model::Tree { nodes: bad }).unwrap();
    let chunk = repo::PreparedChunk {
        id: repo.hasher().id(&json),
        kind: repo::pack::BlobKind::Tree,
        raw_len: json.len() as u32,
        compressed: false,
        data: json,
    };
    assert!(matches!(repo::writer::verify_chunk(&repo, &chunk), Err(Error::InvalidTree { .. })));
    assert!(matches!(repo::ChunkSink::put(&w, chunk), Err(Error::InvalidTree { .. })));
}

#[test]
fn a_decompression_bomb_is_refused_before_anything_is_allocated() {
    let repo = init(Arc::new(MemBackend::new()), small_opts());
    // 2 GiB of zeros compress to a few KiB; the chunk claims all of it.
    let claimed = 2u32 << 30;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    for kind in [repo::pack::BlobKind::Data, repo::pack::BlobKind::Tree] {
        let chunk =
            repo::PreparedChunk { id: Id([3; 32]), kind, raw_len: claimed, compressed: true, data: bomb.clone() };
        assert!(repo::writer::verify_chunk(&repo, &chunk).is_err());
        // Within the listing limit but expanding past it: stopped at the claimed length.
        let chunk =
            repo::PreparedChunk { id: Id([3; 32]), kind, raw_len: 20 << 20, compressed: true, data: bomb.clone() };
        assert!(repo::writer::verify_chunk(&repo, &chunk).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests: hostile chunks and plans
// ---------------------------------------------------------------------------------------------

mod hostile_input {
    use super::*;
    use proptest::prelude::*;
    use repo::model::{Node, NodeKind, RawName};
    use repo::pack::BlobKind;
    use repo::restore::{restore_plan, PlanEntry};
    use repo::writer::{max_raw_len, verify_chunk};
    use repo::PreparedChunk;

    /// `cases` cases; failures are kept beside this file (an integration test has no
    /// `lib.rs` above it for proptest's default place).
    fn config(cases: u32) -> ProptestConfig {
        let persistence = proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions");
        ProptestConfig { cases, failure_persistence: Some(Box::new(persistence)), ..ProptestConfig::default() }
    }

    /// One small repository for every case: `verify_chunk` only reads its config and keys.
    static REPO: std::sync::LazyLock<Repository> =
        std::sync::LazyLock::new(|| init(Arc::new(MemBackend::new()), small_opts()));

    /// What a client might put in a chunk: noise, JSON that is almost a listing, or a
    /// listing with hostile names and fields.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(vec!["a", "b", ".", "..", "/etc", "a/b", "\u{0}", "", "é"]);
        let kind = prop::sample::select(vec!["dir", "file", "symlink", "hardlink", "socket"]);
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            (name.clone(), kind, any::<u64>(), name, any::<bool>()).prop_map(|(name, kind, size, other, sub)| {
                let mut node = serde_json::json!({
                    "name": name, "type": kind, "mode": 0o755, "uid": 0, "gid": 0, "mtime_ns": 0,
                    "atime_ns": 0, "size": size, "target": other, "link": other,
                });
                if sub {
                    node["subtree"] = serde_json::json!("11".repeat(32));
                }
                serde_json::to_vec(&serde_json::json!({ "nodes": [node] })).unwrap()
            }),
            Just(b"{\"nodes\":[]}".to_vec()),
            Just(b"{\"nodes\":{}}".to_vec()),
        ]
    }

    #[derive(Debug, Clone)]
    enum ClaimedId {
        /// The keyed hash of the plaintext (an honest client).
        Honest,
        /// Any 32 bytes.
        Any([u8; 32]),
    }

    #[derive(Debug, Clone)]
    enum Len {
        /// The plaintext's true length.
        True,
        /// Off by a little.
        Off(i8),
        /// Anything up to `u32::MAX`.
        Any(u32),
    }

    /// Lengths at the edges: the test repository's largest chunk, where `decompress_limited`
    /// switches to streaming, the largest listing.
    const LIMITS: [u32; 6] = [256 << 10, (256 << 10) + 1, 16 << 20, (16 << 20) + 1, 1 << 27, (1 << 27) + 1];

    fn chunk() -> impl Strategy<Value = PreparedChunk> {
        let id = prop_oneof![3 => Just(ClaimedId::Honest), 1 => any::<[u8; 32]>().prop_map(ClaimedId::Any)];
        let len = prop_oneof![
            6 => Just(Len::True),
            2 => any::<i8>().prop_map(Len::Off),
            1 => any::<u32>().prop_map(Len::Any),
            1 => Just(Len::Any(u32::MAX)),
            // Around the limits: the chunker's largest chunk, 16 MiB, the largest listing.
            1 => prop::sample::select(LIMITS.to_vec()).prop_map(Len::Any),
        ];
        // 0: stored raw; 1: a zstd frame of the payload; 2: the payload claims to be a frame.
        let stored = prop_oneof![2 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)];
        (any::<bool>(), payload(), id, len, stored).prop_map(|(tree, plain, id, len, stored)| {
            let repo = &*REPO;
            let id = match id {
                ClaimedId::Honest => repo.hasher().id(&plain),
                ClaimedId::Any(b) => Id(b),
            };
            let raw_len = match len {
                Len::True => plain.len() as u32,
                Len::Off(d) => (plain.len() as i64 + i64::from(d)).clamp(0, i64::from(u32::MAX)) as u32,
                Len::Any(n) => n,
            };
            let (compressed, data) = match stored {
                0 => (false, plain),
                1 => (true, zstd::bulk::compress(&plain, 3).unwrap()),
                _ => (true, plain),
            };
            PreparedChunk { id, kind: if tree { BlobKind::Tree } else { BlobKind::Data }, raw_len, compressed, data }
        })
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any chunk a client can upload (any kind, any id, `raw_len` up to `u32::MAX`, stored
        /// raw or as a frame, or claiming to be one) is accepted or refused with a typed error;
        /// accepted chunks are exactly what their id says, within the limits, and listings
        /// among them validate. An honest data chunk is always accepted.
        #[test]
        fn arbitrary_chunks_are_refused_with_a_typed_error_never_a_panic(c in chunk()) {
            let repo = &*REPO;
            let result = verify_chunk(repo, &c);
            let plain = if c.compressed { zstd::bulk::decompress(&c.data, 1 << 20).ok() } else { Some(c.data.clone()) };
            let honest = plain.as_ref().is_some_and(|p| p.len() == c.raw_len as usize && repo.hasher().id(p) == c.id);
            match (&result, c.kind) {
                (Ok(()), kind) => {
                    prop_assert!(honest, "a chunk that is not what its id says was accepted");
                    prop_assert!(c.raw_len as usize <= max_raw_len(repo, kind));
                    if kind == BlobKind::Tree {
                        let tree: repo::model::Tree = serde_json::from_slice(plain.as_deref().unwrap()).unwrap();
                        prop_assert!(repo::tree::validate(&tree).is_ok());
                    }
                }
                (Err(Error::InvalidTree { .. }), BlobKind::Tree) | (Err(Error::Invalid(_)), BlobKind::Data) => {
                    prop_assert!(!(honest && c.kind == BlobKind::Data), "an honest chunk was refused: {result:?}");
                }
                (Err(e), kind) => prop_assert!(false, "{kind:?} chunk refused with the wrong error: {e}"),
            }
        }
    }

    /// Paths of a hostile plan: mostly ordinary names (so many plans get as far as writing),
    /// sometimes `.`, `..`, empty, NUL or a leading `/`.
    fn path() -> impl Strategy<Value = Vec<u8>> {
        let component = prop_oneof![
            30 => prop::sample::select(vec![&b"a"[..], b"b", b"escape", b"pwned"]),
            1 => prop::sample::select(vec![&b"."[..], b"..", b"", b"\0", b"a\0b", b"/"]),
        ];
        (proptest::collection::vec(component, 1..4), prop::bool::weighted(0.02)).prop_map(|(parts, absolute)| {
            let joined = parts.join(&b'/');
            if absolute {
                [&b"/"[..], &joined].concat()
            } else {
                joined
            }
        })
    }

    /// Chunks the test source serves (any bytes, whatever length the plan says).
    fn served_ids() -> Vec<Id> {
        (0..3).map(|i| Id([i; 32])).collect()
    }

    fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            (0u8..3, 0u32..64).prop_map(|(i, len)| Content::Chunk { id: Id([i; 32]), len }),
            prop_oneof![18 => 0u64..4096, 1 => Just(u64::MAX), 1 => Just(1 << 62)]
                .prop_map(|zero| Content::Zero { zero }),
        ]
    }

    /// Stands for the sibling directory's absolute path in generated symlink targets.
    const OUTSIDE: &[u8] = b"\x01outside";

    /// A plan entry of any kind whose fields point anywhere: at the sibling directory
    /// (absolute, or through `..`), at other entries, or nowhere.
    fn entry() -> impl Strategy<Value = PlanEntry> {
        let kind = prop_oneof![
            3 => Just(NodeKind::Dir),
            3 => Just(NodeKind::File),
            2 => Just(NodeKind::Symlink),
            2 => Just(NodeKind::Hardlink),
        ];
        let target = prop_oneof![
            1 => Just(None),
            3 => Just(Some(OUTSIDE.to_vec())),
            3 => Just(Some(b"../outside".to_vec())),
            3 => path().prop_map(Some),
        ];
        let link = proptest::option::weighted(0.9, path());
        let fields = (proptest::collection::vec(content(), 0..3), target, link);
        (path(), kind, fields, any::<u32>(), prop::bool::weighted(0.9)).prop_map(
            |(path, kind, (content, target, link), mode, fit)| {
                let size = content.iter().try_fold(0u64, |s, c| s.checked_add(c.len())).unwrap_or(0);
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default().to_vec();
                let mut node = Node {
                    name: RawName(name),
                    kind,
                    // Owner access always, so the temporary directory can be removed by anyone.
                    mode: mode | 0o700,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 0,
                    atime_ns: 0,
                    size,
                    inode: 0,
                    content,
                    subtree: Some(Id([1; 32])),
                    target: target.map(RawName),
                    link: link.map(RawName),
                };
                if fit {
                    // Only the kind's own fields, so more plans get past validation.
                    node.subtree = node.subtree.filter(|_| kind == NodeKind::Dir);
                    node.target = node.target.take().filter(|_| kind == NodeKind::Symlink);
                    node.link = node.link.take().filter(|_| kind == NodeKind::Hardlink);
                    if kind != NodeKind::File {
                        node.content.clear();
                    }
                }
                PlanEntry { path: RawName(path), node }
            },
        )
    }

    /// The plan with a directory entry for every parent it lacks, parents before their
    /// contents and each path once, as a real plan has them (entries keep their hostile
    /// kinds and fields: a parent may still be a file or a symlink).
    fn tidied(mut plan: Vec<PlanEntry>) -> Vec<PlanEntry> {
        let parents: Vec<Vec<u8>> = plan
            .iter()
            .flat_map(|e| {
                let p = &e.path.0;
                p.iter().enumerate().filter(|(_, &b)| b == b'/').map(|(i, _)| p[..i].to_vec()).collect::<Vec<_>>()
            })
            .collect();
        for p in parents {
            let name = RawName(p.rsplit(|&b| b == b'/').next().unwrap_or_default().to_vec());
            let node = Node { name, subtree: Some(Id([1; 32])), ..testkit::hostile::node("", NodeKind::Dir) };
            plan.push(PlanEntry { path: RawName(p), node });
        }
        plan.sort_by(|a, b| a.path.cmp(&b.path));
        plan.dedup_by(|a, b| a.path == b.path);
        plan
    }

    /// Names in a directory, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Small plans of random paths (made of `a`, `..`, `.`, `/`, NUL, empty names) and
        /// kinds, with symlinks at a sibling directory and links to it planted in the target,
        /// restore or are refused without a panic, and never create, change or remove
        /// anything outside the target.
        #[test]
        fn hostile_restore_plans_never_write_outside_the_target(
            plan in proptest::collection::vec(entry(), 0..8),
            plant in any::<bool>(),
            tidy in prop::bool::weighted(0.75),
            served in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 3),
        ) {
            let tmp = tempdir();
            let outside = tmp.path().join("outside");
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("keep.txt"), b"must not change\n").unwrap();
            let before = contents(&outside);
            let target = tmp.path().join("target");
            if plant {
                fs::create_dir(&target).unwrap();
                std::os::unix::fs::symlink(&outside, target.join("escape")).unwrap();
                std::os::unix::fs::symlink(&outside, target.join("a")).unwrap();
            }
            let mut plan = if tidy { tidied(plan) } else { plan };
            for e in &mut plan {
                if e.node.target.as_ref().is_some_and(|t| t.0 == OUTSIDE) {
                    e.node.target = Some(RawName::from_os(outside.as_os_str()));
                }
            }
            let source = Served(served_ids().into_iter().zip(served).collect());
            let _ = restore_plan(plan, &target, false, &RestoreProgress::default(), &source);
            prop_assert_eq!(contents(&outside), before, "the restore changed the sibling directory");
            prop_assert_eq!(names(&outside), vec!["keep.txt".to_string()]);
            prop_assert_eq!(names(tmp.path()), vec!["outside".to_string(), "target".to_string()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Retention, prune, repair
// ---------------------------------------------------------------------------------------------

#[test]
fn forget_keeps_last_and_daily_then_prune_shrinks_and_keeps_the_rest() {
    let tmp = tempdir();
    let src = tmp.path().join("data");
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone(), small_opts());
    // (day, hour) of each snapshot; days 3 has none.
    let times = [(0, 10), (0, 18), (1, 12), (2, 9), (2, 20), (4, 8)];
    let mut ids = Vec::new();
    let mut states = Vec::new();
    for (v, (day, hour)) in times.iter().enumerate() {
        let now = DAY0 + day * DAY + hour * HOUR;
        write_version(&src, v as u64, now - 60);
        ids.push(backup(&repo, &src, ids.last().copied(), now).0);
        let state = tmp.path().join(format!("state{v}/data"));
        copy_tree(&src, &state);
        states.push(state);
    }
    let policy = Retention { keep_last: 1, keep_daily: 3, ..Default::default() };
    let dry = forget(&repo, &policy, true).unwrap();
    assert_eq!(repo.snapshot_ids().unwrap().len(), times.len(), "a dry run deleted snapshots");
    let plan = forget(&repo, &policy, false).unwrap();
    assert_eq!(dry, plan);
    let kept: Vec<(Id, Vec<String>)> = plan.iter().filter(|d| d.keep).map(|d| (d.id, d.reasons.clone())).collect();
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        kept,
        vec![(ids[2], strs(&["daily"])), (ids[4], strs(&["daily"])), (ids[5], strs(&["last", "daily"]))],
        "newest of each of the last 3 days with snapshots, plus the newest"
    );
    let mut left = repo.snapshot_ids().unwrap();
    left.sort();
    let mut want = vec![ids[2], ids[4], ids[5]];
    want.sort();
    assert_eq!(left, want);

    let before = stored_bytes(&*mem);
    let report = prune(&repo, &PruneOptions::default()).unwrap();
    let after = stored_bytes(&*mem);
    // Three forgotten versions of unique.bin (600 KiB of random bytes each) are gone.
    assert!(before - after > 1 << 20, "prune freed only {} bytes: {report:?}", before - after);
    assert!(report.blobs_removed > 0 && report.bytes_freed > 0, "{report:?}");
    assert!(mem.is_synced(), "prune returned before its deletions were durable");
    for i in [2, 4, 5] {
        assert_restores_to(&repo, &ids[i], &states[i]);
    }
    let repo = open(mem.clone());
    assert_spotless(&repo, "after prune");
    for i in [2, 4, 5] {
        assert_restores_to(&repo, &ids[i], &states[i]);
    }
    // Nothing left to remove.
    let again = prune(&repo, &PruneOptions::default()).unwrap();
    assert_eq!(
        (again.blobs_removed, again.packs_deleted, again.packs_repacked, again.orphans_deleted),
        (0, 0, 0, 0),
        "{again:?}"
    );
}

#[test]
fn repair_index_rebuilds_deleted_index_files_from_the_packs() {
    let d = two_snapshots();
    let mem = Arc::new(d.mem.fork());
    let packs = mem.names_under("data").len();
    for name in mem.names_under("index") {
        mem.remove(&name);
    }
    let repo = open(mem.clone());
    assert!(!check(&repo, false).unwrap().ok(), "check must notice the missing index");
    assert!(try_restore(&repo, &d.snaps[0], tempdir().path()).is_err());
    let report = repair_index(&repo).unwrap();
    assert_eq!((report.packs, report.unreadable.len()), (packs, 0), "{report:?}");
    for (s, state) in d.snaps.iter().zip(&d.states) {
        assert_restores_to(&repo, s, state);
    }
    let repo = open(mem.clone());
    assert_spotless(&repo, "after repair");
    for (s, state) in d.snaps.iter().zip(&d.states) {
        assert_restores_to(&repo, s, state);
    }
}

#[test]
fn prune_refuses_when_snapshots_reference_data_the_index_has_lost() {
    let d = two_snapshots();
    let mem = Arc::new(d.mem.fork());
    {
        let repo = open(mem.clone());
        repo.delete_snapshot(&d.snaps[0]).unwrap();
    }
    // The first backup's index (which alone knows where victim.bin is) is damaged or lost.
    for damage in ["flip", "delete"] {
        let m = Arc::new(mem.fork());
        let repo = open(m.clone());
        let victim_pack = {
            let snap = repo.load_snapshot(&d.snaps[1]).unwrap();
            let chunk = chunks_of(&repo, &snap, "data/victim.bin")[0];
            let index = repo.index();
            index.pack(index.get(&chunk).unwrap().pack).unwrap().id
        };
        drop(repo);
        // Find the index file that lists victim.bin's pack, and damage or remove it.
        let holder = m
            .names_under("index")
            .into_iter()
            .find(|n| {
                let alone = Arc::new(m.fork());
                for other in alone.names_under("index").into_iter().filter(|o| o != n) {
                    alone.remove(&other);
                }
                open(alone).index().pack_position(&victim_pack).is_some()
            })
            .unwrap();
        if damage == "flip" {
            m.flip_bit(&holder, 100, 0);
        } else {
            m.remove(&holder);
        }
        let repo = open(m.clone());
        let names = m.names();
        let result = prune(&repo, &PruneOptions::default());
        assert!(result.is_err(), "{damage}: prune ran although the index misses live data: {result:?}");
        assert_eq!(m.names(), names, "{damage}: prune deleted objects");
        // Once the index is repaired, prune runs (in a new session: the old one still
        // remembers the unreadable file) and the snapshot is whole.
        repair_index(&repo).unwrap();
        let repo = open(m.clone());
        let r = prune(&repo, &PruneOptions::default()).unwrap();
        assert_eq!(r.orphans_deleted, 0, "{r:?}");
        let repo = open(m.clone());
        assert_spotless(&repo, damage);
        assert_restores_to(&repo, &d.snaps[1], &d.states[1]);
    }
}

#[test]
fn a_refused_chunk_does_not_shadow_a_correct_upload_of_its_id() {
    let repo = init(Arc::new(MemBackend::new()), small_opts());
    let w = repo.writer();
    let json = serde_json::to_vec(&repo::model::Tree { nodes: vec![] }).unwrap();
    let id = repo.hasher().id(&json);
    let chunk = |data: Vec<u8>| repo::PreparedChunk {
        id,
        kind: repo::pack::BlobKind::Tree,
        raw_len: data.len() as u32,
        compressed: false,
        data,
    };
    // An attacker (or a broken client) sends garbage under the id first.
    assert!(repo::ChunkSink::put(&w, chunk(b"{\"nodes\": 1}".to_vec())).is_err());
    assert_eq!(repo::ChunkSink::missing(&w, &[id]).unwrap(), vec![true], "the refused chunk is not counted as stored");
    repo::ChunkSink::put(&w, chunk(json)).unwrap();
    let (snap, _) = commit(w, id).unwrap();
    assert!(repo.load_snapshot(&snap).is_ok());
}
