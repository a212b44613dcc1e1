//! Fixture trees: the awkward cases a backup must round-trip, built reproducibly from a seed.

use std::ffi::OsStr;
use std::fs::{File, FileTimes, OpenOptions, Permissions};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{RngCore, SeedableRng};

/// `len` random bytes from `seed` (incompressible).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `len` bytes of log-like text from `seed` (compresses well, but is not one repeated block,
/// so content-defined chunking still finds boundaries).
pub fn compressible_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let words = ["backup", "vault", "chunk", "pack", "index", "snapshot", "restore", "prune", "ok", "error"];
    let mut out = Vec::with_capacity(len + 128);
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        let w1 = words[(rng.next_u32() % 10) as usize];
        let w2 = words[(rng.next_u32() % 10) as usize];
        let n = rng.next_u32() % 100_000;
        out.extend_from_slice(format!("{line:08} 2026-01-01T00:00:{:02}Z {w1} {w2} value={n}\n", line % 60).as_bytes());
    }
    out.truncate(len);
    out
}

fn time_at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Sets a file's or directory's atime and mtime (following no symlink at `path`'s last
/// component), with nanoseconds.
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn write(path: &Path, data: &[u8], mode: u32, secs: u64, nanos: u32) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = File::options().write(true).open(path).unwrap();
    f.set_times(FileTimes::new().set_accessed(time_at(secs, nanos)).set_modified(time_at(secs, nanos))).unwrap();
    f.set_permissions(Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn symlink(target: &[u8], at: &Path) {
    std::os::unix::fs::symlink(OsStr::from_bytes(target), at).unwrap_or_else(|e| panic!("{}: {e}", at.display()));
}

/// [`make_tree_seeded`] with a fixed seed.
pub fn make_tree(dir: &Path) {
    make_tree_seeded(dir, 1);
}

/// Builds (inside `dir`, created if missing) a tree of about 3.4 MiB with: nested and empty
/// directories; empty, small and multi-MiB files of random and of compressible data; relative,
/// absolute, dangling and non-UTF-8 symlinks; a hard-link pair; non-UTF-8, Unicode and
/// newline names; setuid, setgid, sticky, read-only and locked (0555) modes; and mtimes with
/// nanoseconds everywhere. The same seed gives the same bytes and times.
pub fn make_tree_seeded(dir: &Path, seed: u64) {
    let s = seed.wrapping_mul(1000);
    let base = 1_600_000_000 + (seed % 1000) * 86_400;
    mkdir(dir);
    write(&dir.join("empty.txt"), b"", 0o644, base, 0);
    write(&dir.join("small.txt"), b"hello, vault\n", 0o644, base + 1, 123_456_789);
    write(&dir.join("random.bin"), &random_bytes(s + 1, 2 << 20), 0o644, base + 2, 1);
    write(&dir.join("app.log"), &compressible_bytes(s + 2, 1 << 20), 0o640, base + 3, 999_999_999);

    let deep = dir.join("nested/a/b/c");
    mkdir(&deep);
    write(&deep.join("deep.txt"), b"four levels down\n", 0o600, base + 4, 42);
    write(&dir.join("nested/a/sibling.dat"), &random_bytes(s + 3, 200 << 10), 0o644, base + 5, 5);
    mkdir(&dir.join("nested/empty-dir"));

    let links = dir.join("links");
    mkdir(&links);
    symlink(b"../small.txt", &links.join("to-small"));
    symlink(b"does/not/exist", &links.join("dangling"));
    symlink(b"/etc/hostname", &links.join("absolute"));
    symlink(b"\xff\xfe-target", &links.join("non-utf8-target"));
    symlink(b"../nested", &links.join("to-dir"));
    for (i, name) in ["to-small", "dangling", "absolute", "non-utf8-target", "to-dir"].iter().enumerate() {
        set_mtime(&links.join(name), (base + 10 + i as u64) as i64, 7_000 + i as u32);
    }

    let hard = dir.join("hard");
    mkdir(&hard);
    write(&hard.join("one.dat"), &random_bytes(s + 4, 64 << 10), 0o644, base + 20, 20);
    std::fs::hard_link(hard.join("one.dat"), hard.join("two.dat")).unwrap();
    mkdir(&dir.join("nested/a/b/other-link-dir"));
    std::fs::hard_link(hard.join("one.dat"), dir.join("nested/a/b/other-link-dir/three.dat")).unwrap();

    let names = dir.join("names");
    mkdir(&names);
    write(&names.join(OsStr::from_bytes(b"caf\xe9-latin1.txt")), b"non-UTF-8 name\n", 0o644, base + 30, 30);
    write(&names.join("with space and\nnewline.txt"), b"odd name\n", 0o644, base + 31, 31);
    write(&names.join("ünïcødé-名前.txt"), b"unicode name\n", 0o644, base + 32, 32);
    write(&names.join("-starts-with-dash"), b"dash\n", 0o644, base + 33, 33);
    write(&names.join(".hidden"), b"hidden\n", 0o644, base + 34, 34);

    let perms = dir.join("perms");
    mkdir(&perms);
    write(&perms.join("setuid"), b"#!/bin/sh\n", 0o4755, base + 40, 40);
    write(&perms.join("setgid"), b"#!/bin/sh\n", 0o2750, base + 41, 41);
    write(&perms.join("readonly"), b"read only\n", 0o444, base + 42, 42);
    write(&perms.join("owner-only"), b"secret\n", 0o400, base + 43, 43);
    write(&perms.join("everyone"), b"open\n", 0o777, base + 44, 44);
    let sticky = perms.join("sticky-dir");
    mkdir(&sticky);
    write(&sticky.join("inside"), b"x\n", 0o644, base + 45, 45);
    std::fs::set_permissions(&sticky, Permissions::from_mode(0o1777)).unwrap();
    let locked = perms.join("locked-dir");
    mkdir(&locked);
    write(&locked.join("inside"), b"y\n", 0o644, base + 46, 46);
    std::fs::set_permissions(&locked, Permissions::from_mode(0o555)).unwrap();

    // Directory times last, deepest first: creating entries moves a directory's mtime.
    let dirs = [
        "nested/a/b/c",
        "nested/a/b/other-link-dir",
        "nested/a/b",
        "nested/a",
        "nested/empty-dir",
        "nested",
        "links",
        "hard",
        "names",
        "perms/sticky-dir",
        "perms/locked-dir",
        "perms",
        "",
    ];
    for (i, d) in dirs.iter().enumerate() {
        set_mtime(&dir.join(d), (base + 100 + i as u64) as i64, 100_000_000 + i as u32);
    }
}

/// Creates a sparse file of `size` bytes at `path` whose only data is random bytes in each of
/// `data_ranges` (everything else is a hole).
pub fn make_sparse_image(path: &Path, size: u64, data_ranges: &[Range<u64>]) {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.set_len(size).unwrap();
    for r in data_ranges {
        assert!(r.start < r.end && r.end <= size, "range {r:?} outside a {size}-byte image");
        f.write_all_at(&random_bytes(r.start ^ 0x5eed, (r.end - r.start) as usize), r.start).unwrap();
    }
    f.sync_all().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn fixture_tree_is_reproducible_and_has_its_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        make_tree(&t.join("a"));
        make_tree(&t.join("b"));
        crate::assert_trees_equal(&t.join("a"), &t.join("b"));
        let m = std::fs::symlink_metadata(t.join("a/hard/two.dat")).unwrap();
        assert_eq!(m.nlink(), 3);
        assert_eq!(std::fs::symlink_metadata(t.join("a/perms/setuid")).unwrap().mode() & 0o7777, 0o4755);
        assert!(std::fs::symlink_metadata(t.join("a/links/dangling")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::symlink_metadata(t.join("a/small.txt")).unwrap().mtime_nsec(), 123_456_789);
        make_tree_seeded(&t.join("c"), 2);
        assert_ne!(std::fs::read(t.join("a/random.bin")).unwrap(), std::fs::read(t.join("c/random.bin")).unwrap());
    }

    #[test]
    fn sparse_image_is_sparse() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("img");
        make_sparse_image(&p, 64 << 20, &[0..4096, (32 << 20)..(33 << 20)]);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(m.blocks() * 512 < 4 << 20, "{} blocks", m.blocks());
    }
}
