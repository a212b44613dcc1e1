//! An in-memory backend that models durability, so crash tests can cut the power.
//!
//! `put` and `delete` change what readers see at once (like a page cache) but only `sync`
//! makes them durable; [`MemBackend::crash`] keeps the durable state alone, which is what a
//! power cut leaves behind.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;
use repo::{Backend, Error, Result};

#[derive(Clone, Default)]
struct State {
    /// What readers see now.
    visible: BTreeMap<String, Bytes>,
    /// What the last `sync` made durable.
    durable: BTreeMap<String, Bytes>,
}

/// An in-memory [`Backend`] that keeps written and durable state apart.
#[derive(Default)]
pub struct MemBackend {
    state: Mutex<State>,
}

impl MemBackend {
    /// An empty store.
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_state(state: State) -> MemBackend {
        MemBackend { state: Mutex::new(state) }
    }

    /// What survives a power cut now: a new store holding only the durable state.
    pub fn crash(&self) -> MemBackend {
        self.crash_keeping(|_| false)
    }

    /// A power cut after which the not-yet-durable changes to the objects for which `keep`
    /// is true happened to reach the disk anyway (a subset of pending writes survives).
    pub fn crash_keeping(&self, keep: impl Fn(&str) -> bool) -> MemBackend {
        let s = self.lock();
        let mut out = s.durable.clone();
        let names: std::collections::BTreeSet<&String> = s.visible.keys().chain(s.durable.keys()).collect();
        for name in names.into_iter().filter(|n| keep(n)) {
            match s.visible.get(name) {
                Some(v) => {
                    out.insert(name.clone(), v.clone());
                }
                None => {
                    out.remove(name);
                }
            }
        }
        MemBackend::with_state(State { visible: out.clone(), durable: out })
    }

    /// An independent copy of the store as it is (what a process crash leaves: every write
    /// that returned is there, durable or not).
    pub fn fork(&self) -> MemBackend {
        MemBackend::with_state(self.lock().clone())
    }

    /// True if every change so far is durable.
    pub fn is_synced(&self) -> bool {
        let s = self.lock();
        s.visible == s.durable
    }

    /// Names of all visible objects, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().visible.keys().cloned().collect()
    }

    /// Names of visible objects below `prefix/`, sorted.
    pub fn names_under(&self, prefix: &str) -> Vec<String> {
        let p = format!("{prefix}/");
        self.lock().visible.keys().filter(|n| n.starts_with(&p)).cloned().collect()
    }

    /// Total size of all visible objects.
    pub fn total_bytes(&self) -> u64 {
        self.lock().visible.values().map(|v| v.len() as u64).sum()
    }

    /// The visible bytes of an object.
    pub fn object(&self, name: &str) -> Option<Bytes> {
        self.lock().visible.get(name).cloned()
    }

    /// Replaces an object's bytes in both the visible and the durable state (damage at rest).
    pub fn overwrite(&self, name: &str, data: Bytes) {
        let mut s = self.lock();
        s.visible.insert(name.to_string(), data.clone());
        s.durable.insert(name.to_string(), data);
    }

    /// Removes an object from both the visible and the durable state (loss at rest).
    pub fn remove(&self, name: &str) {
        let mut s = self.lock();
        s.visible.remove(name);
        s.durable.remove(name);
    }

    /// Flips bit `bit` (0–7) of byte `byte_offset` of object `name`, at rest: the visible and
    /// the durable copy both change. Panics if there is no such object or byte.
    pub fn flip_bit(&self, name: &str, byte_offset: usize, bit: u8) {
        assert!(bit < 8, "bit must be 0 to 7");
        let mut s = self.lock();
        let old = s.visible.get(name).unwrap_or_else(|| panic!("flip_bit: no object {name}"));
        assert!(byte_offset < old.len(), "flip_bit: {name} has {} bytes, offset {byte_offset}", old.len());
        let mut v = old.to_vec();
        v[byte_offset] ^= 1 << bit;
        let v = Bytes::from(v);
        s.visible.insert(name.to_string(), v.clone());
        s.durable.insert(name.to_string(), v);
    }
}

fn range_err(name: &str, range: &Range<u64>, len: u64) -> Error {
    Error::Backend { object: name.to_string(), message: format!("invalid range {range:?} of a {len}-byte object") }
}

impl Backend for MemBackend {
    fn put(&self, name: &str, data: Bytes) -> Result<()> {
        self.lock().visible.insert(name.to_string(), data);
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Bytes> {
        self.lock().visible.get(name).cloned().ok_or_else(|| Error::NotFound(name.to_string()))
    }

    /// Same rules as `object_store`: an empty or inverted range, or one starting at or past
    /// the end, is an error; a range running past the end is cut short.
    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let data = self.get(name)?;
        let len = data.len() as u64;
        if range.end <= range.start || range.start >= len {
            return Err(range_err(name, &range, len));
        }
        Ok(data.slice(range.start as usize..range.end.min(len) as usize))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = format!("{prefix}/");
        Ok(self
            .lock()
            .visible
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.lock().visible.remove(name);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut s = self.lock();
        s.durable = s.visible.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_changes_survive_a_crash() {
        let m = MemBackend::new();
        m.put("a/1", Bytes::from_static(b"one")).unwrap();
        m.sync().unwrap();
        m.put("a/2", Bytes::from_static(b"two")).unwrap();
        m.delete("a/1").unwrap();
        assert_eq!(m.names(), vec!["a/2".to_string()]);
        assert!(!m.is_synced());
        let c = m.crash();
        assert_eq!(c.names(), vec!["a/1".to_string()]);
        let k = m.crash_keeping(|n| n == "a/2");
        assert_eq!(k.names(), vec!["a/1".to_string(), "a/2".to_string()]);
        assert_eq!(m.fork().names(), m.names());
    }

    #[test]
    fn ranges_follow_object_store_rules() {
        let m = MemBackend::new();
        m.put("x", Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(&m.get_range("x", 2..5).unwrap()[..], b"234");
        assert_eq!(&m.get_range("x", 8..20).unwrap()[..], b"89");
        assert!(m.get_range("x", 10..12).is_err());
        assert!(m.get_range("x", 3..3).is_err());
        assert!(matches!(m.get("y"), Err(Error::NotFound(_))));
    }

    #[test]
    fn list_is_by_directory_prefix() {
        let m = MemBackend::new();
        for n in ["data/ab/1", "data/cd/2", "database", "index/3"] {
            m.put(n, Bytes::new()).unwrap();
        }
        let l: Vec<String> = m.list("data").unwrap().into_iter().map(|x| x.0).collect();
        assert_eq!(l, vec!["data/ab/1".to_string(), "data/cd/2".to_string()]);
    }

    #[test]
    fn flip_bit_changes_exactly_one_bit_at_rest() {
        let m = MemBackend::new();
        m.put("o", Bytes::from_static(&[0u8; 4])).unwrap();
        m.flip_bit("o", 2, 7);
        assert_eq!(&m.get("o").unwrap()[..], &[0, 0, 0x80, 0]);
        assert_eq!(&m.crash().get("o").unwrap()[..], &[0, 0, 0x80, 0]);
    }
}
