//! A repository: config, keys, index and the operations every command builds on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::backend::Backend;
use crate::chunker::{self, ChunkHasher, ChunkerParams};
use crate::crypto::{Key, MasterKey};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLoc, Index};
use crate::model::{Config, IndexFile, KekFile, Snapshot, Tree, WrappedKey, Wrapping};
use crate::pack::{self, PACK_KEY_AAD};
use crate::rng::SharedRng;
use crate::sealed::{self, ObjectKind};

const CONFIG: &str = "config";
const CHUNK_KEY_AAD: &[u8] = b"strongroom chunk-id key v1";
/// Largest pack size a repository may choose.
pub const MAX_PACK_SIZE: u32 = 256 << 20;

/// Choices fixed when a repository is created.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Chunk sizes.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Default zstd level for backups.
    pub compression_level: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { chunker: ChunkerParams::default(), pack_size: 16 << 20, compression_level: 3 }
    }
}

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    keks: BTreeMap<u32, Key>,
    kek_created: BTreeMap<u32, OffsetDateTime>,
    current: (u32, Key),
    hasher: ChunkHasher,
    pub(crate) index: RwLock<Index>,
    index_files: Mutex<Vec<Id>>,
    index_errors: Mutex<Vec<Error>>,
    dek_cache: RwLock<HashMap<u32, Key>>,
    /// Trees whose whole reach was verified by [`Repository::verify_references`] against the
    /// current index (cleared whenever the index is replaced).
    verified: Mutex<HashMap<Id, TreeFacts>>,
    pub(crate) rng: SharedRng,
}

/// What verifying a tree found: its height and how many entries it expands to.
#[derive(Clone, Copy, Debug)]
struct TreeFacts {
    height: usize,
    entries: u64,
}

/// Most missing references one refusal lists (the count says how many there are in all).
const MISSING_LISTED: usize = 50;

/// State of one [`Repository::verify_references`] walk.
struct Verification {
    /// Entries of the listings read by this walk (each listing once), plus the entries of
    /// earlier-verified subtrees it reuses (each once).
    distinct_entries: u64,
    credited: std::collections::HashSet<Id>,
    done: HashMap<Id, TreeFacts>,
    in_progress: std::collections::HashSet<Id>,
    missing: Vec<String>,
    missing_count: u64,
}

fn kek_aad(version: u32) -> Vec<u8> {
    format!("strongroom kek v1 version {version}").into_bytes()
}

fn wrap_with_master(master: &MasterKey, key: &Key, aad: &[u8], rng: &mut SharedRng) -> WrappedKey {
    WrappedKey {
        wrappings: vec![Wrapping {
            kind: "master".into(),
            key_id: master.0.fingerprint(),
            wrapped: base64::engine::general_purpose::STANDARD.encode(master.0.wrap(key, aad, rng)),
        }],
    }
}

fn unwrap_with_master(master: &MasterKey, w: &WrappedKey, aad: &[u8], object: &str) -> Result<Key> {
    let fp = master.0.fingerprint();
    let wrapping = w
        .wrappings
        .iter()
        .find(|x| x.kind == "master" && x.key_id == fp)
        .ok_or_else(|| Error::Key { object: format!("{object} (not wrapped by master key {fp})") })?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&wrapping.wrapped)
        .map_err(|_| Error::corrupt(object, "bad base64 in wrapped key"))?;
    master.0.unwrap_key(&raw, aad, object)
}

/// Plaintext documents (`config`, `keys/kek-N`) carry a MAC so that nothing in them (chunker
/// sizes, versions) can be changed unnoticed by someone without the master key.
trait Authenticated: serde::Serialize + Clone {
    fn mac(&self) -> &str;
    fn set_mac(&mut self, mac: String);
}

impl Authenticated for Config {
    fn mac(&self) -> &str {
        &self.mac
    }
    fn set_mac(&mut self, mac: String) {
        self.mac = mac;
    }
}

impl Authenticated for KekFile {
    fn mac(&self) -> &str {
        &self.mac
    }
    fn set_mac(&mut self, mac: String) {
        self.mac = mac;
    }
}

/// Keyed BLAKE3 (key derived from the master key) over the compact JSON with `mac` empty.
fn compute_mac<T: Authenticated>(master: &MasterKey, doc: &T) -> blake3::Hash {
    let mut bare = doc.clone();
    bare.set_mac(String::new());
    let key = blake3::derive_key("strongroom 2026 document mac", master.0.expose());
    blake3::keyed_hash(&key, &serde_json::to_vec(&bare).unwrap_or_default())
}

fn authenticate<T: Authenticated>(master: &MasterKey, mut doc: T) -> T {
    let mac = compute_mac(master, &doc).to_hex().to_string();
    doc.set_mac(mac);
    doc
}

fn verify_authentication<T: Authenticated>(master: &MasterKey, doc: &T, object: &str) -> Result<()> {
    let claimed = blake3::Hash::from_hex(doc.mac()).map_err(|_| Error::corrupt(object, "missing or malformed mac"))?;
    // blake3::Hash compares in constant time.
    if claimed != compute_mac(master, doc) {
        return Err(Error::Key { object: format!("{object} (mac does not verify: tampered, or another master key)") });
    }
    Ok(())
}

fn kek_name(version: u32) -> String {
    format!("keys/kek-{version}")
}

/// The object name of a snapshot.
pub fn snapshot_name(id: &Id) -> String {
    format!("snapshots/{id}")
}

/// The object name of an index file.
pub fn index_name(id: &Id) -> String {
    format!("index/{id}")
}

fn parse_json<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(name, format!("bad JSON: {e}")))
}

impl Repository {
    /// Creates a new repository in an empty backend.
    pub fn init(
        backend: Arc<dyn Backend>,
        master: &MasterKey,
        opts: InitOptions,
        now: OffsetDateTime,
        mut rng: SharedRng,
    ) -> Result<Repository> {
        opts.chunker.validate().map_err(Error::Invalid)?;
        if !(1 << 20..=MAX_PACK_SIZE).contains(&opts.pack_size) {
            return Err(Error::Invalid(format!("pack size must be 1 MiB to 256 MiB, got {}", opts.pack_size)));
        }
        if !(1..=22).contains(&opts.compression_level) {
            return Err(Error::Invalid("compression level must be 1 to 22".into()));
        }
        match backend.get(CONFIG) {
            Ok(_) => return Err(Error::AlreadyExists("config: a repository already exists here".into())),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let chunk_key = Key::generate(&mut rng);
        let config = Config {
            version: 1,
            id: Id::random(&mut rng),
            created: now,
            chunker: opts.chunker,
            pack_size: opts.pack_size,
            compression_level: opts.compression_level,
            chunk_id_key: wrap_with_master(master, &chunk_key, CHUNK_KEY_AAD, &mut rng),
            mac: String::new(),
        };
        let config = authenticate(master, config);
        let kek = Key::generate(&mut rng);
        let kek_file = KekFile {
            version: 1,
            created: now,
            key: wrap_with_master(master, &kek, &kek_aad(1), &mut rng),
            mac: String::new(),
        };
        let kek_file = authenticate(master, kek_file);
        let to_json = |v: &dyn erased_json::Json| Bytes::from(v.json());
        // The KEK first, the config last: a repository exists once its config does.
        backend.put(&kek_name(1), to_json(&kek_file))?;
        backend.sync()?;
        backend.put(CONFIG, to_json(&config))?;
        backend.sync()?;
        Self::open(backend, master, rng)
    }

    /// Opens an existing repository. Index files that cannot be read are skipped and kept in
    /// [`Repository::index_errors`] so `check` can report them; everything else still works.
    pub fn open(backend: Arc<dyn Backend>, master: &MasterKey, rng: SharedRng) -> Result<Repository> {
        let config_bytes = backend.get(CONFIG).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound("config: no repository here (create one first)".into()),
            other => other,
        })?;
        let config: Config = parse_json(CONFIG, &config_bytes)?;
        verify_authentication(master, &config, CONFIG)?;
        if config.version != 1 {
            return Err(Error::corrupt(CONFIG, format!("unsupported repository version {}", config.version)));
        }
        config.chunker.validate().map_err(|e| Error::corrupt(CONFIG, e))?;
        let chunk_key = unwrap_with_master(master, &config.chunk_id_key, CHUNK_KEY_AAD, CONFIG)?;
        let mut keks = BTreeMap::new();
        let mut kek_created = BTreeMap::new();
        for (name, _) in backend.list("keys")? {
            let Some(v) = name.strip_prefix("keys/kek-").and_then(|v| v.parse::<u32>().ok()) else { continue };
            let file: KekFile = parse_json(&name, &backend.get(&name)?)?;
            verify_authentication(master, &file, &name)?;
            if file.version != v {
                return Err(Error::corrupt(&name, "version does not match the object name"));
            }
            keks.insert(v, unwrap_with_master(master, &file.key, &kek_aad(v), &name)?);
            kek_created.insert(v, file.created);
        }
        let current = keks.iter().next_back().map(|(v, k)| (*v, k.clone()));
        let current = current.ok_or_else(|| Error::corrupt("keys/", "no key-encryption key found"))?;
        let mut repo = Repository {
            current,
            backend,
            hasher: ChunkHasher::new(&chunk_key),
            config,
            keks,
            kek_created,
            index: RwLock::new(Index::default()),
            index_files: Mutex::new(Vec::new()),
            index_errors: Mutex::new(Vec::new()),
            dek_cache: RwLock::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            rng,
        };
        repo.load_index()?;
        Ok(repo)
    }

    fn load_index(&mut self) -> Result<()> {
        let mut index = Index::default();
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let mut superseded = std::collections::HashSet::new();
        let mut parsed = Vec::new();
        for (name, _) in self.backend.list("index")? {
            let Some(id) = name.strip_prefix("index/").and_then(Id::from_hex) else { continue };
            match self.read_sealed::<IndexFile>(ObjectKind::Index, &name) {
                Ok(file) => {
                    superseded.extend(file.supersedes.iter().copied());
                    parsed.push((id, name, file));
                }
                Err(e) => errors.push(e),
            }
        }
        // Files superseded by a newer consolidated index (left behind by an interrupted
        // prune or repair) are ignored: the newer file already covers what is still live.
        for (id, name, file) in parsed {
            if superseded.contains(&id) {
                continue;
            }
            match index.add_file(&name, &file) {
                Ok(()) => files.push(id),
                Err(e) => errors.push(e),
            }
        }
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        *self.index_files.lock().unwrap_or_else(|p| p.into_inner()) = files;
        *self.index_errors.lock().unwrap_or_else(|p| p.into_inner()) = errors;
        Ok(())
    }

    /// Index files that could not be read when the repository was opened.
    pub fn index_errors(&self) -> std::sync::MutexGuard<'_, Vec<Error>> {
        self.index_errors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the index files in use.
    pub fn index_file_ids(&self) -> Vec<Id> {
        self.index_files.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn note_index_file(&self, id: Id) {
        self.index_files.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    }

    pub(crate) fn replace_index(&self, index: Index, files: Vec<Id>) {
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        *self.index_files.lock().unwrap_or_else(|p| p.into_inner()) = files;
        // The new index was rebuilt from what is readable: earlier read errors are history.
        self.index_errors.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.dek_cache.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Writes key-encryption key version `newest + 1` (wrapped by `master`, authenticated) and
    /// returns it. This repository object keeps using its current version; a repository opened
    /// afterwards writes with the new one.
    pub(crate) fn add_kek(&self, master: &MasterKey, now: OffsetDateTime) -> Result<(u32, Key)> {
        let v = self.kek_versions().into_iter().max().unwrap_or(0) + 1;
        let mut rng = self.rng.clone();
        let kek = Key::generate(&mut rng);
        let file = KekFile {
            version: v,
            created: now,
            key: wrap_with_master(master, &kek, &kek_aad(v), &mut rng),
            mac: String::new(),
        };
        let file = authenticate(master, file);
        self.backend.put(&kek_name(v), Bytes::from(erased_json::Json::json(&file)))?;
        self.backend.sync()?;
        Ok((v, kek))
    }

    /// Deletes key version `version` for good (`maintenance::retire_key` first makes sure
    /// nothing is wrapped under it any more).
    pub(crate) fn remove_kek(&self, version: u32) -> Result<()> {
        self.backend.delete(&kek_name(version))?;
        self.backend.sync()
    }

    /// The repository's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The chunk hasher (the client half of a backup needs the same key).
    pub fn hasher(&self) -> &ChunkHasher {
        &self.hasher
    }

    /// The chunk-id key itself, for a client half in another process (sent only to callers
    /// allowed to back up into this repository).
    pub fn hasher_key(&self) -> [u8; 32] {
        self.hasher.key()
    }

    /// The storage backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Read access to the index.
    pub fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest KEK version and key, used for new packs and objects.
    pub fn current_kek(&self) -> (u32, &Key) {
        (self.current.0, &self.current.1)
    }

    /// The KEK of a version.
    pub fn kek(&self, version: u32) -> Option<&Key> {
        self.keks.get(&version)
    }

    /// When key-encryption key `version` was made.
    pub fn kek_created(&self, version: u32) -> Option<OffsetDateTime> {
        self.kek_created.get(&version).copied()
    }

    /// Key-encryption key versions present.
    pub fn kek_versions(&self) -> Vec<u32> {
        self.keks.keys().copied().collect()
    }

    /// The data key of the pack at index position `pack`, unwrapped once and cached.
    pub fn data_key(&self, pack: u32) -> Result<Key> {
        if let Some(k) = self.dek_cache.read().unwrap_or_else(|p| p.into_inner()).get(&pack) {
            return Ok(k.clone());
        }
        let meta = self.index().pack(pack).cloned().ok_or_else(|| Error::NotFound(format!("pack #{pack}")))?;
        let name = pack::pack_name(&meta.id);
        let kek = self
            .kek(meta.kek_version)
            .ok_or_else(|| Error::corrupt(&name, format!("unknown key version {}", meta.kek_version)))?;
        let dek = kek
            .unwrap_key(&meta.wrapped, PACK_KEY_AAD, &name)
            .map_err(|_| Error::corrupt(format!("{name} (index entry)"), "pack data key fails authentication"))?;
        self.dek_cache.write().unwrap_or_else(|p| p.into_inner()).insert(pack, dek.clone());
        Ok(dek)
    }

    /// Decrypts (and authenticates) one blob to its stored form: a zstd frame if
    /// `loc.compressed`, else the plaintext. Callers that hand it on must decompress and check
    /// the id themselves (a restoring client does).
    pub fn open_stored_blob(&self, id: &Id, loc: &BlobLoc, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let dek = self.data_key(loc.pack)?;
        pack::open_blob(&dek, loc.n, id, loc.kind, ciphertext).ok_or_else(|| {
            let pack_id = self.index().pack(loc.pack).map(|p| p.id).unwrap_or(Id([0; 32]));
            Error::corrupt(
                format!("{} (blob {} at offset {})", pack::pack_name(&pack_id), id.short(), loc.offset),
                "blob fails authentication",
            )
        })
    }

    /// Decrypts, decompresses and verifies one blob from its ciphertext.
    pub fn decode_blob(&self, id: &Id, loc: &BlobLoc, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let pack_id = self.index().pack(loc.pack).map(|p| p.id).unwrap_or(Id([0; 32]));
        let object = || format!("{} (blob {} at offset {})", pack::pack_name(&pack_id), id.short(), loc.offset);
        let stored = self.open_stored_blob(id, loc, ciphertext)?;
        let plain = if loc.compressed {
            chunker::decompress(&stored, loc.raw_len as usize)
                .ok_or_else(|| Error::corrupt(object(), "blob does not decompress to its recorded length"))?
        } else {
            stored
        };
        if plain.len() != loc.raw_len as usize || self.hasher.id(&plain) != *id {
            return Err(Error::corrupt(object(), "blob contents do not match their id"));
        }
        Ok(plain)
    }

    /// Reads one blob by id, verified.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let loc = self.index().get(id).ok_or_else(|| Error::NotFound(format!("chunk {id} (not in the index)")))?;
        let pack_id = self.index().pack(loc.pack).map(|p| p.id).unwrap_or(Id([0; 32]));
        let name = pack::pack_name(&pack_id);
        let ct = self.backend.get_range(&name, u64::from(loc.offset)..u64::from(loc.offset) + u64::from(loc.len))?;
        if ct.len() != loc.len as usize {
            return Err(Error::corrupt(name, "pack is shorter than its index says"));
        }
        self.decode_blob(id, &loc, &ct)
    }

    /// Reads a directory listing, checking that it was stored as one and that its names are
    /// safe to restore.
    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let loc = self.index().get(id).ok_or_else(|| Error::NotFound(format!("tree {id} (not in the index)")))?;
        if loc.kind != pack::BlobKind::Tree {
            return Err(Error::corrupt(format!("tree {id}"), "stored as file data, not as a directory listing"));
        }
        let bytes = self.read_blob(id)?;
        let tree: Tree = parse_json(&format!("tree {id}"), &bytes)?;
        crate::tree::validate(&tree).map_err(|why| Error::corrupt(format!("tree {id}"), why))?;
        Ok(tree)
    }

    pub(crate) fn read_sealed<T: serde::de::DeserializeOwned>(&self, kind: ObjectKind, name: &str) -> Result<T> {
        let bytes = self.backend.get(name)?;
        let plain = sealed::open(kind, name, &bytes, |v| self.kek(v))?;
        parse_json(name, &plain)
    }

    pub(crate) fn write_sealed<T: serde::Serialize>(&self, kind: ObjectKind, name: &str, value: &T) -> Result<()> {
        let json = serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))?;
        let (v, kek) = self.current_kek();
        let mut rng = self.rng.clone();
        let bytes = sealed::seal(kind, name, &json, kek, v, &mut rng);
        self.backend.put(name, Bytes::from(bytes))
    }

    /// Writes an index file and returns its id (durable only after `backend().sync()`).
    pub(crate) fn write_index_file(&self, file: &IndexFile) -> Result<Id> {
        let id = Id::random(&mut self.rng.clone());
        self.write_sealed(ObjectKind::Index, &index_name(&id), file)?;
        Ok(id)
    }

    /// Ids of all snapshots.
    pub fn snapshot_ids(&self) -> Result<Vec<Id>> {
        Ok(self
            .backend
            .list("snapshots")?
            .into_iter()
            .filter_map(|(n, _)| n.strip_prefix("snapshots/").and_then(Id::from_hex))
            .collect())
    }

    /// Reads one snapshot.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        self.read_sealed(ObjectKind::Snapshot, &snapshot_name(id))
    }

    /// Finds a snapshot by id or unique id prefix (at least 4 hex digits), or `latest`.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            return self.snapshots()?.pop().ok_or_else(|| Error::NotFound("no snapshots yet".into()));
        }
        if spec.len() < 4 {
            return Err(Error::Invalid("give at least 4 hex digits of a snapshot id".into()));
        }
        let matches: Vec<Id> = self.snapshot_ids()?.into_iter().filter(|id| id.to_hex().starts_with(spec)).collect();
        match matches.as_slice() {
            [id] => Ok((*id, self.load_snapshot(id)?)),
            [] => Err(Error::NotFound(format!("snapshot {spec}"))),
            _ => Err(Error::Invalid(format!("snapshot prefix {spec} is ambiguous"))),
        }
    }

    /// All snapshots, oldest first. Fails on the first unreadable one, naming it.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut out = self
            .snapshot_ids()?
            .into_iter()
            .map(|id| self.load_snapshot(&id).map(|s| (id, s)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Stores a snapshot durably. Call only after everything it references is durable (the
    /// [`crate::Writer`] does this for you in `commit`).
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let id = Id::random(&mut self.rng.clone());
        self.write_sealed(ObjectKind::Snapshot, &snapshot_name(&id), snapshot)?;
        self.backend.sync()?;
        Ok(id)
    }

    /// Removes a snapshot (its data stays until `prune`).
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.backend.delete(&snapshot_name(id))?;
        self.backend.sync()
    }

    /// Starts a write session (the server half of a backup).
    pub fn writer(&self) -> crate::writer::Writer<'_> {
        crate::writer::Writer::new(self)
    }

    /// Walks a snapshot's trees depth-first, calling `f(path, node)` for every node. Only
    /// directories are descended into; a tree deeper than [`crate::tree::MAX_DEPTH`] or with
    /// more than [`crate::tree::MAX_ENTRIES`] entries is refused as corrupt.
    pub fn walk(&self, tree: &Id, f: &mut dyn FnMut(&[u8], &crate::model::Node) -> Result<()>) -> Result<()> {
        let mut entries = 0u64;
        self.walk_inner(tree, &mut Vec::new(), 1, &mut entries, f)
    }

    fn walk_inner(
        &self,
        tree: &Id,
        prefix: &mut Vec<u8>,
        depth: usize,
        entries: &mut u64,
        f: &mut dyn FnMut(&[u8], &crate::model::Node) -> Result<()>,
    ) -> Result<()> {
        if depth > crate::tree::MAX_DEPTH {
            return Err(Error::corrupt(format!("tree {tree}"), "directories nested too deeply"));
        }
        let t = self.load_tree(tree)?;
        for node in &t.nodes {
            *entries += 1;
            if *entries > crate::tree::MAX_ENTRIES {
                return Err(Error::corrupt(format!("tree {tree}"), "the snapshot has too many entries"));
            }
            let len = prefix.len();
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(&node.name.0);
            f(prefix, node)?;
            if let (crate::model::NodeKind::Dir, Some(sub)) = (node.kind, &node.subtree) {
                self.walk_inner(sub, prefix, depth + 1, entries, f)?;
            }
            prefix.truncate(len);
        }
        Ok(())
    }

    /// Verifies everything a new snapshot rooted at `root` references, before it is
    /// committed: every listing reachable from it is in the index as a listing (not as file
    /// data) and valid; every data chunk a file names is in the index as data, with the
    /// length the file says; the tree is at most [`crate::tree::MAX_DEPTH`] deep and expands
    /// to at most [`crate::tree::MAX_ENTRIES`] entries. Listings verified before (by an
    /// earlier commit on this repository object) are not walked again.
    ///
    /// Errors: [`Error::MissingReferences`] naming what is not stored,
    /// [`Error::InvalidTree`] for a listing that breaks the rules.
    pub fn verify_references(&self, root: &Id) -> Result<()> {
        let mut v = Verification {
            distinct_entries: 0,
            credited: Default::default(),
            done: HashMap::new(),
            in_progress: Default::default(),
            missing: Vec::new(),
            missing_count: 0,
        };
        let facts = self.verify_tree(root, 1, &mut v)?;
        if v.missing_count > 0 {
            return Err(Error::MissingReferences { count: v.missing_count, missing: v.missing });
        }
        // Identical directories are stored once, so a snapshot may name far more entries than
        // it stores; but a few tiny listings naming each other twice per level would make a
        // restore plan of millions of entries from nothing. Real trees repeat themselves, not
        // exponentially.
        let allowed = v.distinct_entries.saturating_mul(crate::tree::MAX_EXPANSION).saturating_add(1_000_000);
        if facts.entries > allowed {
            return Err(Error::InvalidTree {
                tree: root.to_hex(),
                reason: format!(
                    "{} entries from {} stored: more repetition than any real tree has",
                    facts.entries, v.distinct_entries
                ),
            });
        }
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).extend(v.done);
        Ok(())
    }

    fn verify_tree(&self, id: &Id, depth: usize, v: &mut Verification) -> Result<TreeFacts> {
        let invalid = |reason: String| Error::InvalidTree { tree: id.to_hex(), reason };
        let known = v
            .done
            .get(id)
            .copied()
            .or_else(|| self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied());
        if let (Some(f), false) = (known, v.done.contains_key(id)) {
            // Verified by an earlier commit: its entries count as stored once for the
            // repetition bound (it passed that bound itself).
            if v.credited.insert(*id) {
                v.distinct_entries = v.distinct_entries.saturating_add(f.entries);
            }
        }
        if let Some(f) = known {
            if depth + f.height - 1 > crate::tree::MAX_DEPTH {
                return Err(invalid(format!("directories nested deeper than {}", crate::tree::MAX_DEPTH)));
            }
            return Ok(f);
        }
        if depth > crate::tree::MAX_DEPTH {
            return Err(invalid(format!("directories nested deeper than {}", crate::tree::MAX_DEPTH)));
        }
        let Some(loc) = self.index().get(id) else {
            v.note_missing(format!("listing {id}"));
            return Ok(TreeFacts { height: 1, entries: 0 });
        };
        if loc.kind != pack::BlobKind::Tree {
            return Err(invalid("stored as file data, not as a directory listing".into()));
        }
        if !v.in_progress.insert(*id) {
            return Err(invalid("the listing contains itself".into()));
        }
        // Listings were validated when they were uploaded: one that fails to read or validate
        // now is damaged storage (reported as such), not the committing client's doing.
        let tree = self.load_tree(id)?;
        let mut facts = TreeFacts { height: 1, entries: 0 };
        // Checked and reduced to the subtrees to visit, then dropped: a chain of huge listings
        // is never held in memory all at once.
        let mut subtrees = Vec::new();
        for node in &tree.nodes {
            facts.entries = facts.entries.saturating_add(1);
            match node.kind {
                crate::model::NodeKind::Dir => subtrees.extend(node.subtree),
                crate::model::NodeKind::File => {
                    for c in &node.content {
                        let crate::model::Content::Chunk { id: chunk, len } = c else { continue };
                        match self.index().get(chunk) {
                            None => v.note_missing(format!("file data {chunk} (in {:?})", node.name.display())),
                            Some(l) if l.kind != pack::BlobKind::Data => {
                                return Err(invalid(format!(
                                    "{:?} names listing {chunk} as file data",
                                    node.name.display()
                                )))
                            }
                            Some(l) if l.raw_len != *len => {
                                return Err(invalid(format!(
                                    "{:?} says chunk {chunk} holds {len} bytes; it holds {}",
                                    node.name.display(),
                                    l.raw_len
                                )))
                            }
                            Some(_) => {}
                        }
                    }
                }
                crate::model::NodeKind::Symlink | crate::model::NodeKind::Hardlink => {}
            }
        }
        v.distinct_entries = v.distinct_entries.saturating_add(tree.nodes.len() as u64);
        drop(tree);
        for sub in &subtrees {
            let child = self.verify_tree(sub, depth + 1, v)?;
            facts.height = facts.height.max(child.height + 1);
            facts.entries = facts.entries.saturating_add(child.entries);
            if facts.entries > crate::tree::MAX_ENTRIES {
                return Err(invalid(format!("the snapshot expands to more than {} entries", crate::tree::MAX_ENTRIES)));
            }
        }
        v.in_progress.remove(id);
        v.done.insert(*id, facts);
        Ok(facts)
    }
}

impl Verification {
    fn note_missing(&mut self, what: String) {
        self.missing_count += 1;
        if self.missing.len() < MISSING_LISTED {
            self.missing.push(what);
        }
    }
}

/// Lets `init` serialise its two different documents with one closure.
mod erased_json {
    pub(super) trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec_pretty(self).unwrap_or_default()
        }
    }
}
