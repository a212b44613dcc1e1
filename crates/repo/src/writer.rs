//! The server half of a backup: dedup lookup, packing, encryption, upload, index, commit.
//!
//! Chunks arrive already hashed and compressed (from the [`crate::backup`] client half, in
//! process or over HTTP). Each calling thread fills its own open pack, so encryption runs on
//! all cores without a shared lock; full packs go to uploader threads through a bounded
//! channel, which caps memory at about `(threads + 2 × uploaders) × pack size`. Ordering gives
//! crash safety: packs, then the index file naming them, then a sync, then the snapshot.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use time::OffsetDateTime;

use crate::backend::Backend;
use crate::crypto::Key;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::index_pack_of;
use crate::model::{IndexFile, IndexPack, Snapshot, Summary};
use crate::pack::{pack_name, BlobKind, FinishedPack, PackBuilder, MAX_BLOBS, PACK_KEY_AAD};
use crate::repository::Repository;

/// A chunk prepared by the client half: id computed, maybe compressed.
#[derive(Clone, Debug)]
pub struct PreparedChunk {
    /// Keyed BLAKE3 of the plaintext.
    pub id: Id,
    /// Data or tree.
    pub kind: BlobKind,
    /// Plaintext length.
    pub raw_len: u32,
    /// Whether `data` is a zstd frame.
    pub compressed: bool,
    /// Stored form.
    pub data: Vec<u8>,
}

/// Where the client half of a backup sends chunks. Implemented by [`Writer`] in process and
/// by the HTTP client of the vault service.
pub trait ChunkSink: Sync {
    /// For each id, true if the repository does not have it yet (and nobody is adding it).
    fn missing(&self, ids: &[Id]) -> Result<Vec<bool>>;
    /// Stores a chunk. Storing a chunk that is already present is a no-op.
    fn put(&self, chunk: PreparedChunk) -> Result<()>;
}

const UPLOADERS: usize = 2;

/// The repository a writer writes to: borrowed (in-process backups) or shared (a server's
/// sessions outlive any one request).
enum RepoRef<'r> {
    Borrowed(&'r Repository),
    Shared(Arc<Repository>),
}

impl std::ops::Deref for RepoRef<'_> {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        match self {
            RepoRef::Borrowed(r) => r,
            RepoRef::Shared(r) => r,
        }
    }
}

/// A write session on a repository.
pub struct Writer<'r> {
    repo: RepoRef<'r>,
    open: Mutex<Vec<PackBuilder>>,
    seen: Mutex<HashSet<Id>>,
    written: Arc<Mutex<Vec<IndexPack>>>,
    failure: Arc<Mutex<Option<Error>>>,
    tx: Option<crossbeam_channel::Sender<FinishedPack>>,
    uploaders: Vec<JoinHandle<()>>,
    stats: WriterStats,
    force: bool,
    checkpoint_packs: usize,
    untrusted: bool,
}

/// Packs uploaded between index checkpoints: an interrupted backup loses at most this many
/// packs' worth of uploads (the next backup finds everything before the last checkpoint).
pub const CHECKPOINT_PACKS: usize = 8;

/// Counters of a write session.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Chunks stored.
    pub chunks: AtomicU64,
    /// Plaintext bytes of stored chunks.
    pub raw_bytes: AtomicU64,
    /// Stored bytes (after compression, before encryption overhead).
    pub stored_bytes: AtomicU64,
    /// Packs uploaded.
    pub packs: AtomicU64,
}

impl<'r> Writer<'r> {
    pub(crate) fn new(repo: &'r Repository) -> Writer<'r> {
        Self::with(RepoRef::Borrowed(repo))
    }

    /// A session that owns a handle on the repository, for servers: its chunks come from the
    /// network, so `put` verifies every one it stores ([`verify_chunk`]).
    pub fn shared(repo: Arc<Repository>) -> Writer<'static> {
        let mut w = Writer::with(RepoRef::Shared(repo));
        w.untrusted = true;
        w
    }

    fn with(repo: RepoRef<'r>) -> Writer<'r> {
        let (tx, rx) = crossbeam_channel::bounded::<FinishedPack>(UPLOADERS);
        let written = Arc::new(Mutex::new(Vec::new()));
        let failure: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let uploaders = (0..UPLOADERS)
            .map(|_| {
                let rx = rx.clone();
                let backend: Arc<dyn Backend> = repo.backend().clone();
                let written = written.clone();
                let failure = failure.clone();
                std::thread::spawn(move || {
                    for pack in rx {
                        let name = pack_name(&pack.id);
                        let entry = index_pack_of(&pack);
                        match backend.put(&name, Bytes::from(pack.bytes)) {
                            Ok(()) => lock(&written).push(entry),
                            Err(e) => {
                                lock(&failure).get_or_insert(e);
                            }
                        }
                    }
                })
            })
            .collect();
        Writer {
            repo,
            open: Mutex::new(Vec::new()),
            seen: Mutex::new(HashSet::new()),
            written,
            failure,
            tx: Some(tx),
            uploaders,
            stats: WriterStats::default(),
            force: false,
            checkpoint_packs: CHECKPOINT_PACKS,
            untrusted: false,
        }
    }

    /// The repository written to.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Counters so far.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    fn check_failure(&self) -> Result<()> {
        match lock(&self.failure).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn new_pack(&self) -> PackBuilder {
        let mut rng = self.repo.rng.clone();
        let dek = Key::generate(&mut rng);
        let (v, kek) = self.repo.current_kek();
        let wrapped = kek.wrap(&dek, PACK_KEY_AAD, &mut rng);
        PackBuilder::new(dek, v, wrapped, self.repo.config().pack_size as usize + (1 << 20))
    }

    fn send(&self, pack: PackBuilder) -> Result<()> {
        let finished = pack.finish();
        self.stats.packs.fetch_add(1, Ordering::Relaxed);
        let tx = self.tx.as_ref().ok_or_else(|| Error::Invalid("writer already finished".into()))?;
        tx.send(finished).map_err(|_| Error::Invalid("uploader stopped".into()))?;
        self.check_failure()
    }

    /// Stores chunks even if the index already has them elsewhere (prune's repacking). Such a
    /// writer never checkpoints: prune writes the index itself, naming what it supersedes.
    pub(crate) fn force_rewrite(&mut self) {
        self.force = true;
        self.checkpoint_packs = usize::MAX;
    }

    /// Writes an index file after every `packs` uploaded packs (at least 1), so an interrupted
    /// session keeps what it uploaded. Default [`CHECKPOINT_PACKS`].
    pub fn set_checkpoint_packs(&mut self, packs: usize) {
        if !self.force {
            self.checkpoint_packs = packs.max(1);
        }
    }

    /// Indexes the packs uploaded so far if there are enough of them.
    fn maybe_checkpoint(&self) -> Result<()> {
        let packs = {
            let mut written = lock(&self.written);
            if written.len() < self.checkpoint_packs {
                return Ok(());
            }
            std::mem::take(&mut *written)
        };
        self.write_index(packs)
    }

    /// Makes `packs` durable, then writes and syncs the index file naming them, then adds it
    /// to the in-memory index (after which `missing` no longer asks for their chunks).
    fn write_index(&self, packs: Vec<IndexPack>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        self.repo.backend().sync()?;
        let file = IndexFile { packs, supersedes: Vec::new() };
        let id = self.repo.write_index_file(&file)?;
        self.repo.backend().sync()?;
        let mut index = self.repo.index.write().unwrap_or_else(|p| p.into_inner());
        index.add_file("(new index)", &file)?;
        drop(index);
        self.repo.note_index_file(id);
        Ok(())
    }

    /// Uploads every pending pack and makes them durable; returns their index records
    /// without writing an index file.
    pub(crate) fn finish_packs(&mut self) -> Result<Vec<IndexPack>> {
        let open: Vec<PackBuilder> = std::mem::take(&mut *lock(&self.open));
        for pack in open.into_iter().filter(|p| !p.is_empty()) {
            self.send(pack)?;
        }
        drop(self.tx.take());
        for h in self.uploaders.drain(..) {
            h.join().map_err(|_| Error::Invalid("uploader thread panicked".into()))?;
        }
        self.check_failure()?;
        let packs: Vec<IndexPack> = std::mem::take(&mut *lock(&self.written));
        if !packs.is_empty() {
            self.repo.backend().sync()?;
        }
        Ok(packs)
    }

    /// Stores every pending pack, writes the index file and makes it all durable. After
    /// this, every chunk put so far is in the index.
    pub fn flush(&mut self) -> Result<()> {
        let packs = self.finish_packs()?;
        self.write_index(packs)
    }

    /// Flushes, then records a snapshot of `tree` taken at `now`. The snapshot is written only
    /// after every chunk it references is durable.
    pub fn commit(
        mut self,
        tree: Id,
        paths: Vec<String>,
        hostname: String,
        parent: Option<Id>,
        summary: Summary,
        now: OffsetDateTime,
    ) -> Result<(Id, Snapshot)> {
        self.flush()?;
        // Everything the snapshot names must be stored, with the right kind and length, and
        // every listing must be valid: a snapshot appears only if it can be restored.
        self.repo.verify_references(&tree)?;
        let snapshot = Snapshot { time: now, tree, paths, hostname, parent, tags: Vec::new(), summary };
        let id = self.repo.save_snapshot(&snapshot)?;
        Ok((id, snapshot))
    }
}

impl ChunkSink for Writer<'_> {
    fn missing(&self, ids: &[Id]) -> Result<Vec<bool>> {
        let index = self.repo.index();
        let seen = lock(&self.seen);
        Ok(ids.iter().map(|id| !index.contains(id) && !seen.contains(id)).collect())
    }

    fn put(&self, chunk: PreparedChunk) -> Result<()> {
        if (!self.force && self.repo.index().contains(&chunk.id)) || lock(&self.seen).contains(&chunk.id) {
            return Ok(());
        }
        if chunk.data.len() > self.repo.config().pack_size as usize
            || chunk.raw_len as usize > max_raw_len(&self.repo, chunk.kind)
        {
            return Err(Error::Invalid(format!("chunk {} is larger than a pack", chunk.id)));
        }
        // Verified once, and only what is stored: every chunk of an untrusted session, and
        // listings from anyone (so a snapshot that could not be restored is never committed).
        // A refused chunk is not remembered, so a correct upload of its id still counts.
        if self.untrusted || chunk.kind == BlobKind::Tree {
            verify_chunk(&self.repo, &chunk)?;
        }
        if !lock(&self.seen).insert(chunk.id) {
            return Ok(());
        }
        let mut pack = lock(&self.open).pop().unwrap_or_else(|| self.new_pack());
        pack.add(chunk.id, chunk.kind, chunk.compressed, chunk.raw_len, &chunk.data);
        self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        self.stats.raw_bytes.fetch_add(u64::from(chunk.raw_len), Ordering::Relaxed);
        self.stats.stored_bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        if pack.len() >= self.repo.config().pack_size as usize || pack.count() >= MAX_BLOBS {
            self.send(pack)?;
            self.maybe_checkpoint()
        } else {
            lock(&self.open).push(pack);
            Ok(())
        }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // An abandoned session (error path) stops its uploaders; packs already written stay
        // as unindexed orphans, harmless, reported by `check` and removed by `prune`.
        drop(self.tx.take());
        for h in self.uploaders.drain(..) {
            let _ = h.join();
        }
    }
}

/// Largest plaintext a chunk of `kind` may have in `repo`: the chunker's largest chunk for
/// file data, [`crate::tree::MAX_LISTING_BYTES`] for listings.
pub fn max_raw_len(repo: &Repository, kind: BlobKind) -> usize {
    match kind {
        BlobKind::Data => repo.config().chunker.max.max(repo.config().chunker.fixed) as usize,
        BlobKind::Tree => crate::tree::MAX_LISTING_BYTES,
    }
}

/// Checks that a chunk from an untrusted client is what its id says: its declared length is
/// within what the chunker (or a listing) can produce — checked before anything is allocated
/// for it — and it decompresses, under that hard limit, to exactly that length and hashes to
/// its id. Listings must also parse and pass [`crate::tree::validate`]. The server half calls
/// this on every chunk that arrives over the network, so no client can store data under
/// another chunk's id, nor make the server allocate what a chunk merely claims to hold.
pub fn verify_chunk(repo: &Repository, chunk: &PreparedChunk) -> Result<()> {
    let bad = |why: String| match chunk.kind {
        BlobKind::Tree => Error::InvalidTree { tree: chunk.id.to_hex(), reason: why },
        BlobKind::Data => Error::Invalid(format!("chunk {} refused: {why}", chunk.id)),
    };
    let limit = max_raw_len(repo, chunk.kind);
    if chunk.raw_len as usize > limit {
        return Err(bad(format!("it claims {} bytes; at most {limit} are allowed", chunk.raw_len)));
    }
    let plain;
    let data = if chunk.compressed {
        plain = crate::chunker::decompress_limited(&chunk.data, chunk.raw_len as usize)
            .ok_or_else(|| bad("bad compression or wrong length".into()))?;
        &plain[..]
    } else {
        &chunk.data[..]
    };
    if data.len() != chunk.raw_len as usize || repo.hasher().id(data) != chunk.id {
        return Err(bad("contents do not match the id".into()));
    }
    if chunk.kind == BlobKind::Tree {
        let tree: crate::model::Tree = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        crate::tree::validate(&tree).map_err(bad)?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
