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

    fn node(kind: NodeKind) -> Node {
        Node {
            name: RawName(b"x".to_vec()),
            kind,
            mode: 0o644,
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

    #[test]
    fn symlink_with_a_subtree_and_other_kinds_with_foreign_fields_are_refused() {
        let sub = Some(Id([1; 32]));
        let chunk = vec![Content::Chunk { id: Id([2; 32]), len: 3 }];
        let target = Some(RawName(b"/etc".to_vec()));
        let link = Some(RawName(b"a".to_vec()));
        let bad = [
            Node { subtree: sub, target: target.clone(), ..node(NodeKind::Symlink) },
            Node { subtree: sub, link: link.clone(), ..node(NodeKind::Hardlink) },
            Node { subtree: sub, ..node(NodeKind::File) },
            Node { subtree: sub, target: target.clone(), ..node(NodeKind::Dir) },
            Node { subtree: sub, link: link.clone(), ..node(NodeKind::Dir) },
            Node { content: chunk.clone(), size: 3, target: target.clone(), ..node(NodeKind::Symlink) },
            Node { content: chunk.clone(), size: 2, ..node(NodeKind::File) },
            Node { target: Some(RawName(Vec::new())), ..node(NodeKind::Symlink) },
            Node { link: Some(RawName(b"../a".to_vec())), ..node(NodeKind::Hardlink) },
            Node {
                content: vec![Content::Zero { zero: u64::MAX }, Content::Zero { zero: 2 }],
                size: 1,
                ..node(NodeKind::File)
            },
        ];
        for n in bad {
            assert!(validate(&Tree { nodes: vec![n.clone()] }).is_err(), "{n:?}");
        }
        let good = [
            Node { subtree: sub, ..node(NodeKind::Dir) },
            Node { content: chunk, size: 3, ..node(NodeKind::File) },
            Node { target, ..node(NodeKind::Symlink) },
            Node { link, ..node(NodeKind::Hardlink) },
        ];
        for n in good {
            assert!(validate(&Tree { nodes: vec![n.clone()] }).is_ok(), "{n:?}");
        }
    }
}
