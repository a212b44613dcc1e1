//! What an attacker with write access to a vault's storage (and its keys) can do: plant blobs
//! and snapshots that no commit would accept, to prove that readers never trust them.

use repo::crypto::Key;
use repo::model::{Node, NodeKind, RawName, Snapshot, Tree};
use repo::pack::{pack_name, BlobKind, PackBuilder, PACK_KEY_AAD};
use repo::{Id, Repository};

/// Writes `blobs` (kind, plaintext; stored uncompressed) into one new pack of `repo`, indexes
/// it through `repair_index`, and returns their ids.
pub fn plant_blobs(repo: &Repository, blobs: &[(BlobKind, Vec<u8>)]) -> Vec<Id> {
    let mut rng = rand::rngs::OsRng;
    let dek = Key::generate(&mut rng);
    let (v, kek) = repo.current_kek();
    let wrapped = kek.wrap(&dek, PACK_KEY_AAD, &mut rng);
    let mut pack = PackBuilder::new(dek, v, wrapped, 1 << 20);
    let mut ids = Vec::new();
    for (kind, plain) in blobs {
        let id = repo.hasher().id(plain);
        pack.add(id, *kind, false, plain.len() as u32, plain);
        ids.push(id);
    }
    let finished = pack.finish();
    repo.backend().put(&pack_name(&finished.id), bytes::Bytes::from(finished.bytes)).unwrap();
    repo.backend().sync().unwrap();
    repo::maintenance::repair_index(repo).unwrap();
    ids
}

/// Plants a listing exactly as given (no validation) and returns its id.
pub fn plant_tree(repo: &Repository, nodes: Vec<Node>) -> Id {
    let json = serde_json::to_vec(&Tree { nodes }).unwrap();
    plant_blobs(repo, &[(BlobKind::Tree, json)])[0]
}

/// Saves a snapshot of `tree` without any of the checks a commit makes.
pub fn plant_snapshot(repo: &Repository, tree: Id, now: time::OffsetDateTime) -> Id {
    let snap = Snapshot {
        time: now,
        tree,
        paths: vec!["planted".into()],
        hostname: "attacker".into(),
        parent: None,
        tags: Vec::new(),
        summary: Default::default(),
    };
    repo.save_snapshot(&snap).unwrap()
}

/// A node of `kind` named `name` with no fields set; fill in what the attack needs.
pub fn node(name: &str, kind: NodeKind) -> Node {
    Node {
        name: RawName(name.as_bytes().to_vec()),
        kind,
        mode: if kind == NodeKind::Dir { 0o40755 } else { 0o100644 },
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        atime_ns: 0,
        size: 0,
        inode: 0,
        content: Vec::new(),
        subtree: None,
        target: None,
        link: None,
    }
}

/// The snapshot an attacker would plant to make a restore write through a link: a symlink
/// `escape` pointing at `outside`, carrying a subtree with a file `pwned` (a listing no commit
/// accepts). Also stores the file's one data chunk. Returns the root listing's id.
pub fn symlink_with_subtree(repo: &Repository, outside: &std::path::Path) -> Id {
    let data = b"written through a planted link".to_vec();
    let chunk = plant_blobs(repo, &[(BlobKind::Data, data.clone())])[0];
    let file = Node {
        size: data.len() as u64,
        content: vec![repo::model::Content::Chunk { id: chunk, len: data.len() as u32 }],
        ..node("pwned", NodeKind::File)
    };
    let inner = plant_tree(repo, vec![file]);
    let link = Node {
        target: Some(RawName::from_os(outside.as_os_str())),
        subtree: Some(inner),
        ..node("escape", NodeKind::Symlink)
    };
    plant_tree(repo, vec![link])
}
