//! Rules every directory listing, and every snapshot's tree as a whole, must satisfy before
//! anything trusts them.
//!
//! Listings come from clients (a backup uploads them) and from storage (which an attacker with
//! storage access may have written), so they are hostile input: `validate` checks one listing,
//! [`MAX_DEPTH`] and [`MAX_ENTRIES`] bound the work any walk over a snapshot may do.

use crate::model::{NodeKind, Tree};

/// Deepest directory nesting a snapshot may have (Linux paths stop at 4096 bytes, so no real
/// tree comes near it).
pub const MAX_DEPTH: usize = 1024;

/// Most entries (after expanding shared subtrees) a snapshot may hold: a listing that names
/// the same subtree twice at every level would otherwise describe 2^depth paths.
pub const MAX_ENTRIES: u64 = 50_000_000;

/// How many times over a new snapshot's entries may repeat the entries of the listings that
/// store them (identical directories are stored once), beyond the first million.
pub const MAX_EXPANSION: u64 = 32;

/// Most entries one listing may hold.
pub const MAX_LISTING_ENTRIES: usize = 4_000_000;

/// Largest listing, in plaintext bytes.
pub const MAX_LISTING_BYTES: usize = 1 << 27;

/// Checks that names are safe path components, unique and sorted, and that each node carries
/// exactly the fields of its kind (a subtree only on directories, contents only on files, a
/// target only on symlinks, a link only on hard links). Returns the first problem found.
pub fn validate(tree: &Tree) -> Result<(), String> {
    if tree.nodes.len() > MAX_LISTING_ENTRIES {
        return Err(format!("{} entries in one directory (at most {MAX_LISTING_ENTRIES})", tree.nodes.len()));
    }
    let mut prev: Option<&[u8]> = None;
    for node in &tree.nodes {
        let name = &node.name.0;
        if !is_safe_name(name) {
            return Err(format!("unsafe entry name {:?}", node.name.display()));
        }
        if let Some(p) = prev {
            if p >= name.as_slice() {
                return Err(format!("entries not sorted or duplicated at {:?}", node.name.display()));
            }
        }
        prev = Some(name);
        let (subtree, content, target, link) =
            (node.subtree.is_some(), !node.content.is_empty(), node.target.is_some(), node.link.is_some());
        let ok = match node.kind {
            NodeKind::Dir => subtree && !content && !target && !link,
            NodeKind::File => {
                !subtree
                    && !target
                    && !link
                    && node.content.iter().try_fold(0u64, |sum, c| sum.checked_add(c.len())) == Some(node.size)
            }
            NodeKind::Symlink => {
                !subtree
                    && !content
                    && !link
                    && node.target.as_ref().is_some_and(|t| !t.0.is_empty() && !t.0.contains(&0))
            }
            NodeKind::Hardlink => {
                !subtree && !content && !target && node.link.as_ref().is_some_and(|l| is_safe_relative_path(&l.0))
            }
        };
        if !ok {
            return Err(format!("entry {:?} has fields that do not fit its type", node.name.display()));
        }
    }
    Ok(())
}

/// True if and only if `name` is one normal path component: not empty, not `.` or `..`, with
/// no `/` and no NUL byte.
pub fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// True if and only if `path` is a `/`-separated sequence of safe names.
pub fn is_safe_relative_path(path: &[u8]) -> bool {
    !path.is_empty() && path.split(|&b| b == b'/').all(is_safe_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::model::{Content, Node, RawName};

    #[test]
    fn names_that_could_escape_a_target_are_unsafe() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"a\0b"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name(b"...") && is_safe_name(b".hidden") && is_safe_name(&[0xff, 0xfe]));
        assert!(!is_safe_relative_path(b"a/../b") && !is_safe_relative_path(b"/a") && is_safe_relative_path(b"a/b"));
    }

    use proptest::prelude::*;

    /// Names and paths: mostly safe names (some not UTF-8, some with dots), often enough
    /// built from pieces an attacker would try: separators, dot segments, NUL, nothing.
    fn hostile_name() -> impl Strategy<Value = RawName> {
        let safe = prop::sample::select(vec![&b"a"[..], b"b", b"...", b".x", b"\xff", b"\xc3\xa9", b"~"]);
        let any = prop::sample::select(vec![&b"a"[..], b"b", b".", b"..", b"/", b"\0", b"\xff", b"a/b"]);
        prop_oneof![
            3 => proptest::collection::vec(safe, 1..4).prop_map(|p| RawName(p.concat())),
            1 => proptest::collection::vec(any, 0..5).prop_map(|p| RawName(p.concat())),
        ]
    }

    fn kind() -> impl Strategy<Value = NodeKind> {
        prop::sample::select(vec![NodeKind::Dir, NodeKind::File, NodeKind::Symlink, NodeKind::Hardlink])
    }

    fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            (any::<[u8; 32]>(), prop_oneof![0u32..8, any::<u32>()])
                .prop_map(|(id, len)| Content::Chunk { id: Id(id), len }),
            prop_oneof![0u64..8, any::<u64>(), Just(u64::MAX)].prop_map(|zero| Content::Zero { zero }),
        ]
    }

    /// A node of any kind with any combination of fields, sizes that may or may not add up.
    fn hostile_node() -> impl Strategy<Value = Node> {
        (
            (hostile_name(), kind(), any::<u32>(), any::<i64>(), any::<i64>()),
            proptest::collection::vec(content(), 0..4),
            prop_oneof![3 => Just(None), 1 => Just(Some(0u64)), 1 => any::<u64>().prop_map(Some)],
            proptest::option::weighted(0.8, any::<[u8; 32]>().prop_map(Id)),
            proptest::option::weighted(0.8, hostile_name()),
            proptest::option::weighted(0.8, hostile_name()),
            prop::bool::weighted(0.8),
        )
            .prop_map(|((name, kind, mode, mtime_ns, atime_ns), content, size, subtree, target, link, fit)| {
                // Usually the size the contents add up to, so validation gets past that check.
                let size = size.or_else(|| content.iter().try_fold(0u64, |s, c| s.checked_add(c.len()))).unwrap_or(0);
                let mut n = Node {
                    name,
                    kind,
                    mode,
                    uid: 0,
                    gid: 0,
                    mtime_ns,
                    atime_ns,
                    size,
                    inode: 0,
                    content,
                    subtree,
                    target,
                    link,
                };
                if fit {
                    // Only the kind's own fields (their values still hostile), so validation
                    // reaches the checks of each kind.
                    n.subtree = n.subtree.filter(|_| kind == NodeKind::Dir);
                    n.target = n.target.take().filter(|_| kind == NodeKind::Symlink);
                    n.link = n.link.take().filter(|_| kind == NodeKind::Hardlink);
                    if kind != NodeKind::File {
                        n.content.clear();
                    }
                }
                n
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A listing from a client or from storage is parsed and validated without panicking,
        /// whatever its bytes.
        #[test]
        fn arbitrary_bytes_never_panic_listing_parsing_or_validation(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok(tree) = serde_json::from_slice::<Tree>(&bytes) {
                let _ = validate(&tree);
            }
        }

        /// Any listing validates or is refused without a panic; one that validates has only
        /// safe, unique, sorted names and exactly its kind's fields, and survives a JSON round
        /// trip unchanged (names that are not UTF-8 included).
        #[test]
        fn arbitrary_listings_validate_only_when_every_rule_holds(
            nodes in proptest::collection::vec(hostile_node(), 0..6),
            sort in prop::bool::weighted(0.8),
        ) {
            let mut nodes = nodes;
            if sort {
                nodes.sort_by(|a, b| a.name.cmp(&b.name));
            }
            let tree = Tree { nodes };
            let json = serde_json::to_vec(&tree);
            prop_assert!(json.is_ok());
            let back: Option<Tree> = serde_json::from_slice(&json.unwrap_or_default()).ok();
            prop_assert_eq!(back.as_ref(), Some(&tree));
            if validate(&tree).is_ok() {
                for w in tree.nodes.windows(2) {
                    prop_assert!(w[0].name < w[1].name);
                }
                for n in &tree.nodes {
                    prop_assert!(is_safe_name(&n.name.0));
                    prop_assert_eq!(n.subtree.is_some(), n.kind == NodeKind::Dir);
                    prop_assert_eq!(n.target.is_some(), n.kind == NodeKind::Symlink);
                    prop_assert_eq!(n.link.is_some(), n.kind == NodeKind::Hardlink);
                    prop_assert!(n.content.is_empty() || n.kind == NodeKind::File);
                    if let Some(l) = &n.link {
                        prop_assert!(is_safe_relative_path(&l.0));
                    }
                }
            }
        }

        /// Listing JSON that has the right shape but hostile values (names as hex of any
        /// bytes, huge numbers, unknown kinds) parses or is refused without a panic.
        #[test]
        fn hostile_listing_json_never_panics(
            name_hex in proptest::collection::vec(any::<u8>(), 0..8),
            text_name in "[a-z./\\\\\\x00-\\x1f]{0,6}",
            kind in prop::sample::select(vec!["dir", "file", "symlink", "hardlink", "fifo", ""]),
            size in any::<u64>(),
            len in any::<u64>(),
            mode in any::<i64>(),
        ) {
            let json = serde_json::json!({"nodes": [
                {"name": {"hex": hex::encode(&name_hex)}, "type": kind, "mode": mode, "uid": 0, "gid": 0,
                 "mtime_ns": 0, "atime_ns": 0, "size": size,
                 "content": [{"id": "00".repeat(32), "len": len}, {"zero": size}],
                 "subtree": "ab".repeat(32), "target": text_name, "link": {"hex": "2f2e2e"}},
                {"name": text_name, "type": kind, "mode": 0, "uid": 0, "gid": 0, "mtime_ns": 0, "atime_ns": 0}
            ]});
            if let Ok(tree) = serde_json::from_value::<Tree>(json) {
                let _ = validate(&tree);
            }
        }
    }
}
