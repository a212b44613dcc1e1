//! Filesystem access confined to one directory: every path is resolved relative to a handle on
//! that directory, and no symbolic link is ever followed, in any component.
//!
//! A restore writes names that come from a snapshot, which is hostile input (written by a
//! client, an old version, or someone with storage access). Checking names is not enough: a
//! link already in the target, or one the restore itself created from a forged listing, could
//! redirect a later write. So every open goes through [`Beneath`]: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it (Linux 5.6+), else a walk
//! that opens each component with `openat(…, O_NOFOLLOW | O_DIRECTORY)` relative to the
//! previous one. Either way no byte can land outside the directory.
//!
//! Written by hand because the crates that do this (`cap-std` and friends) bring a whole
//! capability API for what here is a dozen system calls over `rustix`, which we already use.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// A directory that paths are resolved beneath.
pub(crate) struct Beneath {
    root: OwnedFd,
    path: PathBuf,
    /// False once the kernel said it has no `openat2` (then the component walk is used).
    openat2: AtomicBool,
}

/// Splits a relative path into its directory part and last name.
fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

impl Beneath {
    /// Opens `dir` (which the caller chose, so links in it are followed) as the root.
    pub(crate) fn open(dir: &Path) -> io::Result<Beneath> {
        let root = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Beneath { root, path: dir.to_path_buf(), openat2: AtomicBool::new(true) })
    }

    /// The path of `rel` under the root, for messages.
    pub(crate) fn display(&self, rel: &[u8]) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        self.path.join(std::ffi::OsStr::from_bytes(rel))
    }

    /// Opens `rel` (a `/`-separated relative path; empty means the root) with `flags`, never
    /// following a link and never leaving the root.
    pub(crate) fn open_at(&self, rel: &[u8], flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
        if self.openat2.load(Ordering::Relaxed) {
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root, rel, flags, Mode::from_raw_mode(mode), how) {
                // No openat2, or a seccomp filter (older container runtimes) that refuses it.
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => self.openat2.store(false, Ordering::Relaxed),
                // Resolution raced with a rename elsewhere in the tree: the walk decides.
                Err(rustix::io::Errno::AGAIN) => {}
                other => return other.map_err(io::Error::from),
            }
        }
        let (dir, name) = split(rel);
        if name == b".." || (name == b"." && rel != b".") {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "path leaves its directory"));
        }
        let parent = self.walk(dir)?;
        Ok(rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(mode))?)
    }

    /// Opens every component of `dir` in turn, each relative to the one before and refusing
    /// links, `.` and `..`.
    fn walk(&self, dir: &[u8]) -> io::Result<OwnedFd> {
        let mut cur =
            rustix::fs::openat(&self.root, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        for comp in dir.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if comp == b"." || comp == b".." {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "path leaves its directory"));
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            cur = rustix::fs::openat(&cur, comp, flags, Mode::empty())?;
        }
        Ok(cur)
    }

    /// A handle on the directory that holds `rel`, and `rel`'s last name.
    pub(crate) fn parent<'a>(&self, rel: &'a [u8]) -> io::Result<(OwnedFd, &'a [u8])> {
        let (dir, name) = split(rel);
        if name.is_empty() || name == b"." || name == b".." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a name"));
        }
        let fd = self.open_at(dir, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        Ok((fd, name))
    }

    /// Makes `rel` a real directory (not a link to one): created if missing, a non-directory
    /// in the way removed.
    pub(crate) fn ensure_dir(&self, rel: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
            Err(rustix::io::Errno::EXIST) => {}
            other => return other.map_err(io::Error::from),
        }
        let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            return Ok(());
        }
        rustix::fs::unlinkat(&parent, name, AtFlags::empty())?;
        Ok(rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))?)
    }

    /// Removes whatever non-directory is at `rel` (a planted link, an old file). A directory
    /// there is an error.
    pub(crate) fn clear(&self, rel: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory => {
                Err(io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way of a file in the snapshot"))
            }
            Ok(_) => Ok(rustix::fs::unlinkat(&parent, name, AtFlags::empty())?),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a new regular file at `rel` (mode 0600 until its metadata is set); whatever
    /// non-directory is in the way is removed first.
    pub(crate) fn create_file(&self, rel: &[u8]) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        match self.open_at(rel, flags, 0o600) {
            Ok(fd) => Ok(File::from(fd)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear(rel)?;
                Ok(File::from(self.open_at(rel, flags, 0o600)?))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the existing regular file `rel` for writing.
    pub(crate) fn open_write(&self, rel: &[u8]) -> io::Result<File> {
        Ok(File::from(self.open_at(rel, OFlags::WRONLY, 0)?))
    }

    /// Opens `rel` for reading its metadata (a directory when `dir`).
    pub(crate) fn open_read(&self, rel: &[u8], dir: bool) -> io::Result<File> {
        let flags = if dir { OFlags::RDONLY | OFlags::DIRECTORY } else { OFlags::RDONLY };
        Ok(File::from(self.open_at(rel, flags, 0)?))
    }

    /// Creates a symbolic link at `rel` whose text is `target` (never resolved by us).
    pub(crate) fn symlink(&self, target: &[u8], rel: &[u8]) -> io::Result<()> {
        self.clear(rel)?;
        let (parent, name) = self.parent(rel)?;
        Ok(rustix::fs::symlinkat(target, &parent, name)?)
    }

    /// Makes `rel` another name of the file `existing` (both beneath the root; neither
    /// resolved through a link).
    pub(crate) fn hard_link(&self, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        self.clear(rel)?;
        let (from_dir, from) = self.parent(existing)?;
        let (to_dir, to) = self.parent(rel)?;
        Ok(rustix::fs::linkat(&from_dir, from, &to_dir, to, AtFlags::empty())?)
    }

    /// Sets a symbolic link's own owner and times.
    pub(crate) fn link_metadata(
        &self,
        rel: &[u8],
        owner: Option<(u32, u32)>,
        atime_ns: i64,
        mtime_ns: i64,
    ) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        if let Some((uid, gid)) = owner {
            rustix::fs::chownat(
                &parent,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        let ts = |ns: i64| rustix::fs::Timespec {
            tv_sec: ns.div_euclid(1_000_000_000),
            tv_nsec: ns.rem_euclid(1_000_000_000) as _,
        };
        let times = rustix::fs::Timestamps { last_access: ts(atime_ns), last_modification: ts(mtime_ns) };
        Ok(rustix::fs::utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_any_component_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("f")).unwrap();
        for openat2 in [true, false] {
            let b = Beneath::open(root.path()).unwrap();
            b.openat2.store(openat2, Ordering::Relaxed);
            assert!(b.create_file(b"out/x").is_err());
            assert!(b.open_write(b"f").is_err());
            assert!(b.ensure_dir(b"out/d").is_err());
            assert!(b.symlink(b"/etc", b"out/l").is_err());
            assert!(b.open_at(b"../x", OFlags::WRONLY | OFlags::CREATE, 0o600).is_err());
            // A link where a directory belongs is replaced by a directory, not followed.
            b.ensure_dir(b"out").unwrap();
            b.create_file(b"out/x").unwrap();
            std::fs::remove_dir_all(root.path().join("out")).unwrap();
            std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
            // A file where a link was: the link goes, the file is created in its place.
            b.create_file(b"f").unwrap();
            assert!(root.path().join("f").symlink_metadata().unwrap().is_file());
            std::fs::remove_file(root.path().join("f")).unwrap();
            std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("f")).unwrap();
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing was written outside");
    }
}
