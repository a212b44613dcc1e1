//! A backend wrapper that injects failures, to drive the engine through every crash point.
//!
//! Two kinds of fault: a storage that refuses `put`s once N have succeeded (a full disk, a
//! network gone), and a process that dies after N write operations (`put`, `delete`, `sync`):
//! from then on nothing it does reaches the storage.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use repo::{Backend, Error, Result};

#[derive(Default)]
struct Counters {
    /// `put`s that reached the inner backend.
    puts: usize,
    /// Write operations (`put`, `delete`, `sync`) that reached the inner backend.
    writes: usize,
    /// Operations refused.
    faults: usize,
    /// Every write fails from now on.
    crashed: bool,
}

/// Wraps a [`Backend`] and fails writes on cue. Reads always pass through.
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    puts_allowed: usize,
    writes_allowed: usize,
    crash_on_fault: bool,
    c: Mutex<Counters>,
}

impl FaultBackend {
    /// A wrapper that never fails by itself (count writes, or call [`FaultBackend::crash`]).
    pub fn new(inner: Arc<dyn Backend>) -> FaultBackend {
        FaultBackend {
            inner,
            puts_allowed: usize::MAX,
            writes_allowed: usize::MAX,
            crash_on_fault: false,
            c: Mutex::new(Counters::default()),
        }
    }

    /// Fails every `put` once `n` puts have succeeded; deletes and syncs still work.
    pub fn fail_after(inner: Arc<dyn Backend>, n: usize) -> FaultBackend {
        FaultBackend { puts_allowed: n, ..FaultBackend::new(inner) }
    }

    /// Like [`FaultBackend::fail_after`], but the first refused `put` also crashes the process:
    /// every later write (`put`, `delete`, `sync`) fails too.
    pub fn crash_after_puts(inner: Arc<dyn Backend>, n: usize) -> FaultBackend {
        FaultBackend { puts_allowed: n, crash_on_fault: true, ..FaultBackend::new(inner) }
    }

    /// The process dies after `n` write operations (`put`, `delete` or `sync`) succeeded.
    pub fn crash_after_writes(inner: Arc<dyn Backend>, n: usize) -> FaultBackend {
        FaultBackend { writes_allowed: n, crash_on_fault: true, ..FaultBackend::new(inner) }
    }

    /// Every write fails from now on.
    pub fn crash(&self) {
        self.lock().crashed = true;
    }

    /// `put`s that reached the inner backend.
    pub fn puts(&self) -> usize {
        self.lock().puts
    }

    /// Write operations (`put`, `delete`, `sync`) that reached the inner backend.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Operations refused so far.
    pub fn faults(&self) -> usize {
        self.lock().faults
    }

    /// True once writes fail for good.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.c.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether a write may proceed, counting it if so.
    fn admit(&self, op: &str, name: &str, is_put: bool) -> Result<()> {
        let mut c = self.lock();
        let refuse = c.crashed || c.writes >= self.writes_allowed || (is_put && c.puts >= self.puts_allowed);
        if refuse {
            c.faults += 1;
            if self.crash_on_fault {
                c.crashed = true;
            }
            return Err(Error::Backend { object: name.to_string(), message: format!("injected fault: {op} refused") });
        }
        c.writes += 1;
        if is_put {
            c.puts += 1;
        }
        Ok(())
    }
}

impl Backend for FaultBackend {
    fn put(&self, name: &str, data: Bytes) -> Result<()> {
        self.admit("put", name, true)?;
        self.inner.put(name, data)
    }

    fn get(&self, name: &str) -> Result<Bytes> {
        self.inner.get(name)
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(name, range)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.inner.list(prefix)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.admit("delete", name, false)?;
        self.inner.delete(name)
    }

    fn sync(&self) -> Result<()> {
        self.admit("sync", "(sync)", false)?;
        self.inner.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemBackend;

    #[test]
    fn puts_fail_after_n() {
        let mem = Arc::new(MemBackend::new());
        let f = FaultBackend::fail_after(mem.clone(), 2);
        for n in ["a/1", "a/2"] {
            f.put(n, Bytes::new()).unwrap();
        }
        assert!(matches!(f.put("a/3", Bytes::new()), Err(Error::Backend { .. })));
        assert!(f.sync().is_ok() && f.delete("a/1").is_ok());
        assert_eq!((f.puts(), f.faults()), (2, 1));
        assert_eq!(mem.names(), vec!["a/2".to_string()]);
    }

    #[test]
    fn a_crash_stops_every_write() {
        let mem = Arc::new(MemBackend::new());
        let f = FaultBackend::crash_after_writes(mem.clone(), 2);
        f.put("a/1", Bytes::new()).unwrap();
        f.sync().unwrap();
        assert!(f.delete("a/1").is_err());
        assert!(f.crashed() && f.put("a/2", Bytes::new()).is_err() && f.sync().is_err());
        assert!(f.get("a/1").is_ok());
        let g = FaultBackend::new(mem);
        g.crash();
        assert!(g.sync().is_err());
    }
}
