//! The client half of a backup: walk, read, chunk, hash, compress; send to a [`ChunkSink`].
//!
//! The walk is sequential and cheap (one `lstat` per entry). Files that have not changed since
//! the parent snapshot (same size, mtime and inode, and all their chunks still stored) are not
//! read again. Everything else is read on rayon's pool, one task per file; a large file is cut
//! into batches whose chunks are hashed and compressed in parallel, so one disk image does not
//! leave a core idle. Directory listings are built bottom-up once all files are done.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::chunker::{self, ChunkHasher, ChunkReadError, ChunkerParams};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::model::{Content, Node, NodeKind, RawName, Summary, Tree};
use crate::pack::BlobKind;
use crate::writer::{ChunkSink, PreparedChunk};

/// Where the client reads earlier listings from (the repository in process, the server over HTTP).
pub trait TreeSource {
    /// The listing with this id.
    fn tree(&self, id: &Id) -> Result<Tree>;
    /// The listings with these ids, in order (over HTTP: few requests for many listings).
    fn trees(&self, ids: &[Id]) -> Result<Vec<Tree>> {
        ids.iter().map(|id| self.tree(id)).collect()
    }
}

impl TreeSource for crate::repository::Repository {
    fn tree(&self, id: &Id) -> Result<Tree> {
        self.load_tree(id)
    }
}

/// Live counters of a backup, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    /// True once the walk has counted everything.
    pub walk_done: AtomicBool,
    /// Regular files found.
    pub files_total: AtomicU64,
    /// Bytes of regular files found.
    pub bytes_total: AtomicU64,
    /// Files finished (read or unchanged).
    pub files_done: AtomicU64,
    /// Bytes finished (read or unchanged).
    pub bytes_done: AtomicU64,
    /// Plaintext bytes of chunks that were new.
    pub bytes_new: AtomicU64,
    /// Compressed bytes of chunks that were new.
    pub bytes_stored: AtomicU64,
    /// Chunks that were new.
    pub chunks_new: AtomicU64,
}

/// Settings of the client half.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Chunk sizes (must be the repository's).
    pub chunker: ChunkerParams,
    /// zstd level.
    pub compression_level: i32,
}

/// What the client half produced; the caller commits it as a snapshot.
#[derive(Debug)]
pub struct BackupOutput {
    /// Root listing id.
    pub tree: Id,
    /// Absolute paths that were backed up.
    pub paths: Vec<String>,
    /// Figures.
    pub summary: Summary,
    /// Entries skipped, with the reason.
    pub warnings: Vec<String>,
}

/// Regular files of a parent snapshot by snapshot-relative path, for change detection.
#[derive(Default)]
pub struct ParentFiles {
    files: HashMap<Vec<u8>, Node>,
}

impl ParentFiles {
    /// Loads every listing of the snapshot whose root listing is `root`.
    pub fn load(source: &dyn TreeSource, root: &Id) -> Result<ParentFiles> {
        let mut files = HashMap::new();
        // Level by level, so each level's listings are fetched together.
        let mut level = vec![(Vec::new(), *root)];
        while !level.is_empty() {
            let ids: Vec<Id> = level.iter().map(|(_, id)| *id).collect();
            let trees = source.trees(&ids)?;
            if trees.len() != ids.len() {
                return Err(Error::Invalid(format!("asked for {} listings, got {}", ids.len(), trees.len())));
            }
            let mut next = Vec::new();
            for ((prefix, _), tree) in level.into_iter().zip(trees) {
                for node in tree.nodes {
                    let mut path = prefix.clone();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(&node.name.0);
                    match node.kind {
                        NodeKind::Dir => {
                            if let Some(sub) = node.subtree {
                                next.push((path, sub));
                            }
                        }
                        NodeKind::File => {
                            files.insert(path, node);
                        }
                        _ => {}
                    }
                }
            }
            level = next;
        }
        Ok(ParentFiles { files })
    }

    /// Number of files known.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

struct Entry {
    rel: Vec<u8>,
    abs: PathBuf,
    node: Node,
    children: Vec<usize>,
    fixed: bool,
    skipped: bool,
}

/// Extensions treated as disk images (fixed-size chunks, zero blocks become holes).
const IMAGE_EXTENSIONS: &[&str] = &["raw", "img", "iso", "qcow2", "vmdk", "vdi", "vhd", "vhdx"];

/// The client half of a backup.
pub struct Archiver<'a> {
    hasher: &'a ChunkHasher,
    opts: BackupOptions,
    progress: &'a Progress,
    warnings: Mutex<Vec<String>>,
}

fn time_ns(secs: i64, nsecs: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

fn node_from_meta(name: RawName, kind: NodeKind, m: &std::fs::Metadata) -> Node {
    Node {
        name,
        kind,
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: time_ns(m.mtime(), m.mtime_nsec()),
        atime_ns: time_ns(m.atime(), m.atime_nsec()),
        size: if kind == NodeKind::File { m.len() } else { 0 },
        inode: m.ino(),
        content: Vec::new(),
        subtree: None,
        target: None,
        link: None,
    }
}

impl<'a> Archiver<'a> {
    /// A client half using the repository's chunk-id key.
    pub fn new(hasher: &'a ChunkHasher, opts: BackupOptions, progress: &'a Progress) -> Self {
        Archiver { hasher, opts, progress, warnings: Mutex::new(Vec::new()) }
    }

    fn warn(&self, msg: String) {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
    }

    /// Backs up `paths`, sending new chunks to `sink`. Unreadable entries are skipped with a
    /// warning; a failure of the sink aborts.
    pub fn run(&self, paths: &[PathBuf], parent: Option<&ParentFiles>, sink: &dyn ChunkSink) -> Result<BackupOutput> {
        if paths.is_empty() {
            return Err(Error::Invalid("nothing to back up: give at least one path".into()));
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut roots = Vec::new();
        let mut abs_paths = Vec::new();
        let mut hardlinks: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        for p in paths {
            let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
            let meta = std::fs::symlink_metadata(&abs).map_err(|e| Error::io(&abs, e))?;
            let name = abs
                .file_name()
                .map(RawName::from_os)
                .or_else(|| abs.canonicalize().ok().and_then(|c| c.file_name().map(RawName::from_os)))
                .unwrap_or_else(|| RawName(b"root".to_vec()));
            if roots.iter().any(|&r: &usize| entries[r].node.name == name) {
                return Err(Error::Invalid(format!("two paths end in the same name {:?}", name.display())));
            }
            abs_paths.push(abs.to_string_lossy().into_owned());
            if let Some(i) = self.walk(&mut entries, &mut hardlinks, name, abs, Vec::new(), meta) {
                roots.push(i);
            }
        }
        roots.sort_by(|&a, &b| entries[a].node.name.cmp(&entries[b].node.name));
        self.progress.walk_done.store(true, Ordering::Relaxed);

        // Reuse the contents of unchanged files, then confirm their chunks still exist.
        let mut jobs: Vec<usize> = Vec::new();
        let mut reused: Vec<usize> = Vec::new();
        for (i, e) in entries.iter_mut().enumerate() {
            if e.node.kind != NodeKind::File {
                continue;
            }
            let old = parent.and_then(|p| p.files.get(&e.rel));
            match old {
                Some(o) if o.size == e.node.size && o.mtime_ns == e.node.mtime_ns && o.inode == e.node.inode => {
                    e.node.content = o.content.clone();
                    reused.push(i);
                }
                _ => jobs.push(i),
            }
        }
        let mut ids: Vec<Id> = reused
            .iter()
            .flat_map(|&i| entries[i].node.content.iter())
            .filter_map(|c| match c {
                Content::Chunk { id, .. } => Some(*id),
                Content::Zero { .. } => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut gone = std::collections::HashSet::new();
        for batch in ids.chunks(50_000) {
            for (id, missing) in batch.iter().zip(sink.missing(batch)?) {
                if missing {
                    gone.insert(*id);
                }
            }
        }
        for &i in &reused {
            let lost =
                entries[i].node.content.iter().any(|c| matches!(c, Content::Chunk { id, .. } if gone.contains(id)));
            if lost {
                entries[i].node.content.clear();
                jobs.push(i);
            } else {
                self.progress.files_done.fetch_add(1, Ordering::Relaxed);
                self.progress.bytes_done.fetch_add(entries[i].node.size, Ordering::Relaxed);
            }
        }

        // Small files (one chunk each) go in groups: one `missing` query per group rather than
        // per file, which over HTTP is the difference between one round trip per file and one
        // per few hundred.
        let min = u64::from(self.opts.chunker.min);
        let (small, large): (Vec<usize>, Vec<usize>) =
            jobs.into_iter().partition(|&i| !entries[i].fixed && entries[i].node.size < min);
        let mut results: Vec<(usize, FileRead)> = small
            .par_chunks(SMALL_GROUP)
            .map(|g| self.read_small_files(&entries, g, sink))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let large: Vec<(usize, FileRead)> =
            large.par_iter().map(|&i| self.read_file(&entries[i], sink).map(|r| (i, r))).collect::<Result<_>>()?;
        results.extend(large);
        let mut files_read = 0;
        let mut bytes_read = 0;
        for (i, r) in results {
            match r {
                Some((content, size)) => {
                    files_read += 1;
                    bytes_read += size;
                    entries[i].node.content = content;
                    entries[i].node.size = size;
                }
                None => entries[i].skipped = true,
            }
        }

        // Listings bottom-up: children always have larger positions than their directory.
        // Ids are computed here; the listings are then stored with batched `missing` queries.
        let mut listings: Vec<(Id, Vec<u8>)> = Vec::new();
        for i in (0..entries.len()).rev() {
            if entries[i].node.kind != NodeKind::Dir || entries[i].skipped {
                continue;
            }
            let nodes: Vec<Node> = entries[i]
                .children
                .iter()
                .filter(|&&c| !entries[c].skipped)
                .map(|&c| entries[c].node.clone())
                .collect();
            entries[i].node.subtree = Some(self.listing(&Tree { nodes }, &mut listings)?);
        }
        let root_nodes: Vec<Node> =
            roots.iter().filter(|&&r| !entries[r].skipped).map(|&r| entries[r].node.clone()).collect();
        if root_nodes.is_empty() {
            return Err(Error::Invalid("nothing could be read from the given paths".into()));
        }
        let tree = self.listing(&Tree { nodes: root_nodes }, &mut listings)?;
        self.store_listings(listings, sink)?;

        let live = entries.iter().filter(|e| !e.skipped);
        let warnings = std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()));
        let summary = Summary {
            files: live.clone().filter(|e| matches!(e.node.kind, NodeKind::File | NodeKind::Hardlink)).count() as u64,
            dirs: live.clone().filter(|e| e.node.kind == NodeKind::Dir).count() as u64,
            bytes: live.filter(|e| e.node.kind == NodeKind::File).map(|e| e.node.size).sum(),
            files_read,
            bytes_read,
            new_chunks: self.progress.chunks_new.load(Ordering::Relaxed),
            new_bytes: self.progress.bytes_new.load(Ordering::Relaxed),
            stored_bytes: self.progress.bytes_stored.load(Ordering::Relaxed),
            skipped: warnings.len() as u64,
        };
        Ok(BackupOutput { tree, paths: abs_paths, summary, warnings })
    }

    /// Adds `abs` (and, for a directory, everything below it) to `entries`; returns its position,
    /// or `None` if it was skipped.
    fn walk(
        &self,
        entries: &mut Vec<Entry>,
        hardlinks: &mut HashMap<(u64, u64), Vec<u8>>,
        name: RawName,
        abs: PathBuf,
        parent_rel: Vec<u8>,
        meta: std::fs::Metadata,
    ) -> Option<usize> {
        let mut rel = parent_rel;
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&name.0);
        let ft = meta.file_type();
        let mut fixed = false;
        let node = if ft.is_dir() {
            node_from_meta(name, NodeKind::Dir, &meta)
        } else if ft.is_symlink() {
            let target = match std::fs::read_link(&abs) {
                Ok(t) => t,
                Err(e) => {
                    self.warn(format!("{}: {e} (skipped)", abs.display()));
                    return None;
                }
            };
            let mut n = node_from_meta(name, NodeKind::Symlink, &meta);
            n.target = Some(RawName::from_os(target.as_os_str()));
            n
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = hardlinks.get(&(meta.dev(), meta.ino())) {
                    let mut n = node_from_meta(name, NodeKind::Hardlink, &meta);
                    n.link = Some(RawName(first.clone()));
                    entries.push(Entry { rel, abs, node: n, children: Vec::new(), fixed, skipped: false });
                    self.progress.files_total.fetch_add(1, Ordering::Relaxed);
                    return Some(entries.len() - 1);
                }
                hardlinks.insert((meta.dev(), meta.ino()), rel.clone());
            }
            let sparse =
                meta.blocks().saturating_mul(512) < meta.len() && meta.len() >= u64::from(self.opts.chunker.fixed);
            let image = is_image_path(&abs);
            fixed = sparse || (image && meta.len() >= u64::from(self.opts.chunker.fixed));
            self.progress.files_total.fetch_add(1, Ordering::Relaxed);
            self.progress.bytes_total.fetch_add(meta.len(), Ordering::Relaxed);
            node_from_meta(name, NodeKind::File, &meta)
        } else {
            self.warn(format!("{}: special file (device, FIFO or socket) not backed up", abs.display()));
            return None;
        };
        let is_dir = node.kind == NodeKind::Dir;
        entries.push(Entry { rel: rel.clone(), abs: abs.clone(), node, children: Vec::new(), fixed, skipped: false });
        let me = entries.len() - 1;
        if is_dir {
            let mut list: Vec<(std::ffi::OsString, PathBuf)> = match std::fs::read_dir(&abs) {
                Ok(rd) => rd.filter_map(|d| d.ok()).map(|d| (d.file_name(), d.path())).collect(),
                Err(e) => {
                    self.warn(format!("{}: {e} (directory contents skipped)", abs.display()));
                    Vec::new()
                }
            };
            list.sort_by(|a, b| {
                use std::os::unix::ffi::OsStrExt;
                a.0.as_bytes().cmp(b.0.as_bytes())
            });
            let mut children = Vec::with_capacity(list.len());
            for (child_name, child_path) in list {
                match std::fs::symlink_metadata(&child_path) {
                    Ok(m) => {
                        if let Some(c) =
                            self.walk(entries, hardlinks, RawName::from_os(&child_name), child_path, rel.clone(), m)
                        {
                            children.push(c);
                        }
                    }
                    Err(e) => self.warn(format!("{}: {e} (skipped)", child_path.display())),
                }
            }
            entries[me].children = children;
        }
        Some(me)
    }

    /// Reads one file; `Ok(None)` if it could not be read (warned), `Err` if the sink failed.
    fn read_file(&self, e: &Entry, sink: &dyn ChunkSink) -> Result<FileRead> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&e.abs)
        {
            Ok(f) => f,
            Err(err) => {
                self.warn(format!("{}: {err} (skipped)", e.abs.display()));
                return Ok(None);
            }
        };
        let mut content: Vec<Content> = Vec::new();
        let mut batch: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut total = 0u64;
        let mut on_chunk = |data: Vec<u8>| -> Result<()> {
            total += data.len() as u64;
            self.progress.bytes_done.fetch_add(data.len() as u64, Ordering::Relaxed);
            if e.fixed && chunker::is_zero(&data) {
                match content.last_mut() {
                    Some(Content::Zero { zero }) => *zero += data.len() as u64,
                    _ => content.push(Content::Zero { zero: data.len() as u64 }),
                }
                return Ok(());
            }
            // A placeholder until the batch is hashed; a chunk, so zero runs never merge into it.
            content.push(Content::Chunk { id: Id([0; 32]), len: 0 });
            batch_bytes += data.len();
            batch.push((content.len() - 1, data));
            if batch_bytes >= BATCH_BYTES {
                self.send_batch(&mut content, std::mem::take(&mut batch), sink)?;
                batch_bytes = 0;
            }
            Ok(())
        };
        let read = if e.fixed {
            chunker::for_each_fixed_chunk(file, self.opts.chunker.fixed as usize, &mut on_chunk)
        } else if e.node.size < u64::from(self.opts.chunker.min) {
            // Most files are smaller than the minimum chunk: one read, one chunk, no chunker
            // (whose buffer of `max` bytes would cost more than the file). A file that grew
            // since the walk is still read whole, as one chunk.
            let mut buf = Vec::with_capacity(e.node.size as usize + 1);
            match std::io::Read::read_to_end(&mut { file }, &mut buf) {
                Ok(_) if buf.len() <= self.opts.chunker.max as usize => {
                    if buf.is_empty() {
                        Ok(())
                    } else {
                        on_chunk(buf).map_err(ChunkReadError::Engine)
                    }
                }
                Ok(_) => chunker::for_each_cdc_chunk(&buf[..], &self.opts.chunker, &mut on_chunk),
                Err(err) => Err(ChunkReadError::Io(err)),
            }
        } else {
            chunker::for_each_cdc_chunk(file, &self.opts.chunker, &mut on_chunk)
        };
        match read {
            Ok(()) => {}
            Err(ChunkReadError::Engine(err)) => return Err(err),
            Err(ChunkReadError::Io(err)) => {
                self.warn(format!("{}: {err} (skipped)", e.abs.display()));
                return Ok(None);
            }
        }
        self.send_batch(&mut content, batch, sink)?;
        self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        // The file may have grown or shrunk since the walk; account for what was actually read.
        let counted = e.node.size;
        if total != counted {
            if total > counted {
                self.progress.bytes_total.fetch_add(total - counted, Ordering::Relaxed);
            } else {
                self.progress.bytes_done.fetch_add(counted - total, Ordering::Relaxed);
            }
        }
        Ok(Some((content, total)))
    }

    /// Hashes a batch in parallel, asks which chunks are missing, compresses and sends those.
    fn send_batch(&self, content: &mut [Content], batch: Vec<(usize, Vec<u8>)>, sink: &dyn ChunkSink) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<Id> = if batch.len() == 1 {
            vec![self.hasher.id(&batch[0].1)]
        } else {
            batch.par_iter().map(|(_, d)| self.hasher.id(d)).collect()
        };
        for ((slot, data), id) in batch.iter().zip(&ids) {
            content[*slot] = Content::Chunk { id: *id, len: data.len() as u32 };
        }
        let missing = sink.missing(&ids)?;
        let todo: Vec<(Id, Vec<u8>)> =
            batch.into_iter().zip(ids).zip(missing).filter(|(_, m)| *m).map(|(((_, d), id), _)| (id, d)).collect();
        let level = self.opts.compression_level;
        let prepare = |(id, data): (Id, Vec<u8>)| -> Result<()> {
            let raw_len = data.len() as u32;
            let chunk = match chunker::compress(&data, level) {
                Some(z) => PreparedChunk { id, kind: BlobKind::Data, raw_len, compressed: true, data: z },
                None => PreparedChunk { id, kind: BlobKind::Data, raw_len, compressed: false, data },
            };
            self.progress.chunks_new.fetch_add(1, Ordering::Relaxed);
            self.progress.bytes_new.fetch_add(u64::from(raw_len), Ordering::Relaxed);
            self.progress.bytes_stored.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
            sink.put(chunk)
        };
        if todo.len() <= 1 {
            todo.into_iter().try_for_each(prepare)
        } else {
            todo.into_par_iter().try_for_each(prepare)
        }
    }

    /// Serialises a listing and computes its id; the bytes wait in `out` for `store_listings`.
    fn listing(&self, tree: &Tree, out: &mut Vec<(Id, Vec<u8>)>) -> Result<Id> {
        let json = serde_json::to_vec(tree).map_err(|e| Error::Invalid(e.to_string()))?;
        let id = self.hasher.id(&json);
        out.push((id, json));
        Ok(id)
    }

    /// Stores the listings the sink lacks (equal listings once).
    fn store_listings(&self, mut listings: Vec<(Id, Vec<u8>)>, sink: &dyn ChunkSink) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        listings.retain(|(id, _)| seen.insert(*id));
        let ids: Vec<Id> = listings.iter().map(|(id, _)| *id).collect();
        let missing = sink.missing(&ids)?;
        let level = self.opts.compression_level;
        listings.into_par_iter().zip(missing).filter(|(_, m)| *m).try_for_each(|((id, json), _)| {
            let raw_len = json.len() as u32;
            let chunk = match chunker::compress(&json, level) {
                Some(z) => PreparedChunk { id, kind: BlobKind::Tree, raw_len, compressed: true, data: z },
                None => PreparedChunk { id, kind: BlobKind::Tree, raw_len, compressed: false, data: json },
            };
            sink.put(chunk)
        })
    }

    /// Reads a group of small files (each one chunk), asks once which of their chunks are
    /// missing, and sends those. A file that grew past the largest chunk since the walk is
    /// read again the ordinary way.
    fn read_small_files(
        &self,
        entries: &[Entry],
        group: &[usize],
        sink: &dyn ChunkSink,
    ) -> Result<Vec<(usize, FileRead)>> {
        enum Small {
            Done(FileRead),
            Chunk(Id, Vec<u8>),
            Large,
        }
        let max = self.opts.chunker.max as usize;
        let read: Vec<(usize, Small)> = group
            .par_iter()
            .map(|&i| {
                let e = &entries[i];
                let opened = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&e.abs);
                let mut buf = Vec::with_capacity(e.node.size as usize + 1);
                let got = opened
                    .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, max as u64 + 1), &mut buf));
                if let Err(err) = got {
                    self.warn(format!("{}: {err} (skipped)", e.abs.display()));
                    return (i, Small::Done(None));
                }
                if buf.len() > max {
                    return (i, Small::Large);
                }
                self.account_read(e, buf.len() as u64);
                if buf.is_empty() {
                    return (i, Small::Done(Some((Vec::new(), 0))));
                }
                (i, Small::Chunk(self.hasher.id(&buf), buf))
            })
            .collect();
        // One query for the group; equal files are sent once.
        let mut first: HashMap<Id, usize> = HashMap::new();
        let mut ids = Vec::new();
        for (n, (_, r)) in read.iter().enumerate() {
            if let Small::Chunk(id, _) = r {
                if let std::collections::hash_map::Entry::Vacant(v) = first.entry(*id) {
                    v.insert(n);
                    ids.push(*id);
                }
            }
        }
        let missing: std::collections::HashSet<Id> =
            ids.iter().zip(sink.missing(&ids)?).filter(|(_, m)| *m).map(|(id, _)| *id).collect();
        let level = self.opts.compression_level;
        read.par_iter().enumerate().try_for_each(|(n, (_, r))| -> Result<()> {
            let Small::Chunk(id, data) = r else { return Ok(()) };
            if !missing.contains(id) || first.get(id) != Some(&n) {
                return Ok(());
            }
            let raw_len = data.len() as u32;
            let chunk = match chunker::compress(data, level) {
                Some(z) => PreparedChunk { id: *id, kind: BlobKind::Data, raw_len, compressed: true, data: z },
                None => PreparedChunk { id: *id, kind: BlobKind::Data, raw_len, compressed: false, data: data.clone() },
            };
            self.progress.chunks_new.fetch_add(1, Ordering::Relaxed);
            self.progress.bytes_new.fetch_add(u64::from(raw_len), Ordering::Relaxed);
            self.progress.bytes_stored.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
            sink.put(chunk)
        })?;
        let mut out = Vec::with_capacity(read.len());
        for (i, r) in read {
            match r {
                Small::Done(d) => out.push((i, d)),
                Small::Chunk(id, data) => {
                    let len = data.len() as u32;
                    out.push((i, Some((vec![Content::Chunk { id, len }], u64::from(len)))));
                }
                Small::Large => out.push((i, self.read_file(&entries[i], sink)?)),
            }
        }
        Ok(out)
    }

    /// Progress for a file read whole: `got` bytes, where the walk saw `e.node.size`.
    fn account_read(&self, e: &Entry, got: u64) {
        let counted = e.node.size;
        self.progress.bytes_done.fetch_add(counted.max(got), Ordering::Relaxed);
        if got > counted {
            self.progress.bytes_total.fetch_add(got - counted, Ordering::Relaxed);
        }
        self.progress.files_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A file's contents and the bytes actually read, or `None` if it was skipped.
type FileRead = Option<(Vec<Content>, u64)>;

/// Chunks are hashed and compressed in parallel batches of about this many bytes.
const BATCH_BYTES: usize = 16 << 20;

/// Small files per `missing` query.
const SMALL_GROUP: usize = 512;

/// Convenience for a whole local backup: client half and server half in one process.
pub fn backup_local(
    repo: &crate::repository::Repository,
    paths: &[PathBuf],
    parent: Option<Id>,
    hostname: &str,
    now: time::OffsetDateTime,
    progress: &Progress,
) -> Result<(Id, crate::model::Snapshot, Vec<String>)> {
    let parent_files = match parent {
        Some(p) => Some(ParentFiles::load(repo, &repo.load_snapshot(&p)?.tree)?),
        None => None,
    };
    let opts = BackupOptions { chunker: repo.config().chunker, compression_level: repo.config().compression_level };
    let archiver = Archiver::new(repo.hasher(), opts, progress);
    let writer = repo.writer();
    let out = archiver.run(paths, parent_files.as_ref(), &writer)?;
    let (id, snap) = writer.commit(out.tree, out.paths, hostname.to_string(), parent, out.summary, now)?;
    Ok((id, snap, out.warnings))
}

/// True if `path` looks like a disk image by its extension.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}
