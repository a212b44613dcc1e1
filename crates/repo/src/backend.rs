//! Where repository objects live: a small synchronous trait over the `object_store` crate.
//!
//! The engine's pipeline runs on OS threads (rayon), so the trait is blocking; the
//! `object_store` implementation drives its async client on a private tokio runtime. Names are
//! `/`-separated relative paths such as `data/ab/ab12…`. Every `put` is atomic: a reader sees
//! the whole object or nothing. Durability is a separate barrier, [`Backend::sync`], because
//! object stores make a write durable when it returns while a local filesystem needs fsync.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};

use crate::error::{Error, Result};

/// Storage for repository objects.
pub trait Backend: Send + Sync {
    /// Atomically stores `data` under `name`, replacing any object of that name.
    fn put(&self, name: &str, data: Bytes) -> Result<()>;
    /// Reads a whole object; [`Error::NotFound`] if it does not exist.
    fn get(&self, name: &str) -> Result<Bytes>;
    /// Reads `range` of an object.
    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes>;
    /// Lists objects whose name starts with `prefix/` with their sizes, in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, name: &str) -> Result<()>;
    /// Returns once every earlier `put` and `delete` is durable.
    fn sync(&self) -> Result<()>;
}

impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn put(&self, name: &str, data: Bytes) -> Result<()> {
        (**self).put(name, data)
    }
    fn get(&self, name: &str) -> Result<Bytes> {
        (**self).get(name)
    }
    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        (**self).get_range(name, range)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        (**self).list(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        (**self).delete(name)
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
}

/// A [`Backend`] over any `object_store` store: local directory, in-memory, S3, Azure Blob.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    /// Always `Some` until dropped (taken out in `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    /// For a local directory: its path, so writes can be fsynced (the `object_store` local
    /// store renames a staged file into place but never calls fsync).
    local_root: Option<PathBuf>,
    dirty_dirs: Mutex<BTreeSet<PathBuf>>,
}

impl ObjectStoreBackend {
    /// Wraps an object store (S3, Azure, in-memory…); writes are durable when `put` returns.
    pub fn new(store: Arc<dyn ObjectStore>) -> Result<Self> {
        Self::build(store, None)
    }

    /// A repository in a local directory, created if missing.
    pub fn local(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| backend_err("(local root)", e))?
            .with_automatic_cleanup(true);
        Self::build(Arc::new(store), Some(root))
    }

    /// An in-memory store, for tests and benchmarks of the engine alone.
    pub fn memory() -> Result<Self> {
        Self::build(Arc::new(object_store::memory::InMemory::new()), None)
    }

    fn build(store: Arc<dyn ObjectStore>, local_root: Option<PathBuf>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strongroom-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("(tokio runtime)", e))?;
        Ok(ObjectStoreBackend { store, runtime: Some(runtime), local_root, dirty_dirs: Mutex::new(BTreeSet::new()) })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.runtime {
            Some(rt) => rt.block_on(f),
            // Unreachable: the runtime is only taken in `Drop`.
            None => futures::executor::block_on(f),
        }
    }

    fn fsync_local(&self, name: &str) -> Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let path = root.join(name);
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        f.sync_all().map_err(|e| Error::io(&path, e))?;
        self.mark_dir_dirty(&path);
        Ok(())
    }

    fn mark_dir_dirty(&self, path: &Path) {
        if let (Some(root), Some(parent)) = (&self.local_root, path.parent()) {
            let mut dirs = self.dirty_dirs.lock().unwrap_or_else(|p| p.into_inner());
            let mut d = Some(parent);
            // Every directory from the object up to the root may have gained an entry.
            while let Some(dir) = d {
                if !dirs.insert(dir.to_path_buf()) || dir == root.as_path() {
                    break;
                }
                d = dir.parent();
            }
        }
    }
}

fn backend_err(object: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend { object: object.to_string(), message: e.to_string() }
}

fn map_err(name: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound(name.to_string()),
        other => backend_err(name, other),
    }
}

impl Backend for ObjectStoreBackend {
    fn put(&self, name: &str, data: Bytes) -> Result<()> {
        let path = ObjPath::from(name);
        self.block_on(self.store.put(&path, PutPayload::from_bytes(data))).map_err(|e| map_err(name, e))?;
        self.fsync_local(name)
    }

    fn get(&self, name: &str) -> Result<Bytes> {
        let path = ObjPath::from(name);
        self.block_on(async { self.store.get(&path).await?.bytes().await }).map_err(|e| map_err(name, e))
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let path = ObjPath::from(name);
        self.block_on(self.store.get_range(&path, range)).map_err(|e| map_err(name, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let path = ObjPath::from(prefix);
        self.block_on(async {
            self.store.list(Some(&path)).map_ok(|m| (m.location.to_string(), m.size)).try_collect::<Vec<_>>().await
        })
        .map_err(|e| map_err(prefix, e))
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = ObjPath::from(name);
        match self.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(map_err(name, e)),
        }
        if let Some(root) = &self.local_root {
            self.mark_dir_dirty(&root.join(name));
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let dirs = std::mem::take(&mut *self.dirty_dirs.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in dirs.iter().rev() {
            match std::fs::File::open(dir) {
                Ok(f) => f.sync_all().map_err(|e| Error::io(dir, e))?,
                // A directory emptied by deletes may have been removed by the store.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(dir, e)),
            }
        }
        Ok(())
    }
}

impl Drop for ObjectStoreBackend {
    fn drop(&mut self) {
        // A server drops repositories from async code; a plain drop of a runtime there panics.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
