//! The round-trip oracle: two directory trees are equal in everything a restore promises.
//!
//! Compared without following symlinks: names (as raw bytes), entry types, file bytes,
//! symlink targets, permission bits (`mode & 0o7777`), mtimes to the nanosecond, and which
//! paths are hard links of one another. Owners and atimes are not compared (a restore without
//! `owners` gives files to the restoring user; reading a file may move its atime).

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Panics, naming the first difference, unless trees `a` and `b` are equal (see the module
/// documentation for what counts). The roots themselves are compared too.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    let mut links = (HashMap::new(), HashMap::new());
    compare(a, b, Path::new(""), &mut links);
}

type Links = (HashMap<(u64, u64), PathBuf>, HashMap<(u64, u64), PathBuf>);

fn meta(p: &Path) -> Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        "(root)".to_string()
    } else {
        format!("{:?}", rel)
    }
}

fn differ(rel: &Path, what: &str, a: impl std::fmt::Debug, b: impl std::fmt::Debug) -> ! {
    panic!("trees differ at {}: {what}: {a:?} (first tree) vs {b:?} (second tree)", show(rel))
}

fn compare(a: &Path, b: &Path, rel: &Path, links: &mut Links) {
    let (ma, mb) = (meta(a), meta(b));
    if kind(&ma) != kind(&mb) {
        differ(rel, "entry type", kind(&ma), kind(&mb));
    }
    if kind(&ma) == "special file" {
        differ(rel, "special files are not part of a backup", a, b);
    }
    if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        differ(rel, "permission bits", format!("{:o}", ma.mode() & 0o7777), format!("{:o}", mb.mode() & 0o7777));
    }
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        differ(rel, "mtime (s, ns)", (ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()));
    }
    let t = ma.file_type();
    if t.is_symlink() {
        let (ta, tb) = (std::fs::read_link(a).unwrap(), std::fs::read_link(b).unwrap());
        if ta != tb {
            differ(rel, "symlink target", ta, tb);
        }
    } else if t.is_file() {
        if ma.len() != mb.len() {
            differ(rel, "file size", ma.len(), mb.len());
        }
        compare_bytes(a, b, rel);
        // Hard links: the first path (in walk order) of each inode must be the same in both.
        let first_a = links.0.entry((ma.dev(), ma.ino())).or_insert_with(|| rel.to_path_buf()).clone();
        let first_b = links.1.entry((mb.dev(), mb.ino())).or_insert_with(|| rel.to_path_buf()).clone();
        if first_a != first_b {
            differ(rel, "hard-link structure (first name of this inode)", show(&first_a), show(&first_b));
        }
    } else if t.is_dir() {
        let (la, lb) = (list(a), list(b));
        let (na, nb): (Vec<&[u8]>, Vec<&[u8]>) =
            (la.iter().map(|n| n.as_bytes()).collect(), lb.iter().map(|n| n.as_bytes()).collect());
        if na != nb {
            let only_a: Vec<_> = la.iter().filter(|n| !lb.contains(n)).collect();
            let only_b: Vec<_> = lb.iter().filter(|n| !la.contains(n)).collect();
            differ(rel, "directory entries (only in first, only in second)", only_a, only_b);
        }
        for name in &la {
            compare(&a.join(name), &b.join(name), &rel.join(name), links);
        }
    }
}

fn list(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|d| d.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).file_name())
        .collect();
    names.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    names
}

fn compare_bytes(a: &Path, b: &Path, rel: &Path) {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba, a);
        let nb = read_full(&mut fb, &mut bb, b);
        if ba[..na] != bb[..nb] {
            let i = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y).unwrap_or(na.min(nb));
            differ(rel, &format!("file contents at byte {}", offset + i as u64), ba.get(i), bb.get(i));
        }
        if na == 0 {
            return;
        }
        offset += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8], p: &Path) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{}: {e}", p.display()),
        }
    }
    n
}

/// Copies a tree with `cp -a` (contents, modes, times, symlinks, hard links), so a test can
/// keep the state it backed up while it changes the original. `to` must not exist; its parent
/// is created if missing.
pub fn copy_tree(from: &Path, to: &Path) {
    assert!(std::fs::symlink_metadata(to).is_err(), "copy_tree: {} already exists", to.display());
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .unwrap_or_else(|e| panic!("running cp -a: {e}"));
    assert!(status.success(), "cp -a {} {} failed: {status}", from.display(), to.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    /// Builds a tree twice, applies `change` to the second copy, and returns the panic message
    /// of the comparison (None if the trees compared equal).
    fn diff_after(change: impl FnOnce(&Path)) -> Option<String> {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        crate::make_tree(&a);
        crate::make_tree(&b);
        change(&b);
        std::panic::catch_unwind(|| assert_trees_equal(&a, &b))
            .err()
            .map(|e| e.downcast_ref::<String>().cloned().unwrap_or_else(|| "(non-string panic)".into()))
    }

    /// Runs `f`, then puts back the mtime of `p`'s directory (which adding or removing an
    /// entry moves).
    fn keeping_dir_time(p: &Path, f: impl FnOnce()) {
        let dir = p.parent().unwrap();
        let m = std::fs::metadata(dir).unwrap();
        f();
        crate::set_mtime(dir, m.mtime(), m.mtime_nsec() as u32);
    }

    fn assert_caught(msg: Option<String>, what: &str, path: &str) {
        let msg = msg.unwrap_or_else(|| panic!("a difference in {what} went unnoticed"));
        assert!(msg.contains(what) && msg.contains(path), "message {msg:?} should name {what:?} and {path:?}");
    }

    #[test]
    fn equal_trees_pass() {
        assert_eq!(diff_after(|_| {}), None);
    }

    #[test]
    fn each_kind_of_difference_is_caught_and_named() {
        assert_caught(
            diff_after(|b| {
                let p = b.join("random.bin");
                let mut v = std::fs::read(&p).unwrap();
                v[1_500_000] ^= 1;
                let m = std::fs::metadata(&p).unwrap();
                std::fs::write(&p, v).unwrap();
                crate::set_mtime(&p, m.mtime(), m.mtime_nsec() as u32);
            }),
            "file contents at byte 1500000",
            "random.bin",
        );
        assert_caught(
            diff_after(|b| crate::set_mtime(&b.join("small.txt"), 1_600_000_001, 123_456_780)),
            "mtime",
            "small.txt",
        );
        assert_caught(
            diff_after(|b| std::fs::set_permissions(b.join("perms/setuid"), Permissions::from_mode(0o755)).unwrap()),
            "permission bits",
            "setuid",
        );
        assert_caught(
            diff_after(|b| {
                let p = b.join("links/to-small");
                let m = std::fs::symlink_metadata(&p).unwrap();
                keeping_dir_time(&p, || {
                    std::fs::remove_file(&p).unwrap();
                    std::os::unix::fs::symlink("../small.tx", &p).unwrap();
                });
                crate::set_mtime(&p, m.mtime(), m.mtime_nsec() as u32);
            }),
            "symlink target",
            "to-small",
        );
        assert_caught(
            diff_after(|b| {
                // Same bytes and times, but no longer the same inode as hard/one.dat.
                let p = b.join("hard/two.dat");
                let m = std::fs::metadata(&p).unwrap();
                let data = std::fs::read(&p).unwrap();
                keeping_dir_time(&p, || {
                    std::fs::remove_file(&p).unwrap();
                    std::fs::write(&p, data).unwrap();
                });
                std::fs::set_permissions(&p, m.permissions()).unwrap();
                crate::set_mtime(&p, m.mtime(), m.mtime_nsec() as u32);
            }),
            "hard-link structure",
            "two.dat",
        );
        assert_caught(
            diff_after(|b| {
                keeping_dir_time(&b.join("names/extra"), || std::fs::write(b.join("names/extra"), b"").unwrap())
            }),
            "directory entries",
            "names",
        );
        assert_caught(
            diff_after(|b| {
                keeping_dir_time(&b.join("small.txt"), || {
                    std::fs::remove_file(b.join("small.txt")).unwrap();
                    std::fs::create_dir(b.join("small.txt")).unwrap();
                })
            }),
            "entry type",
            "small.txt",
        );
    }
}
