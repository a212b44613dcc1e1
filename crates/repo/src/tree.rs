//! Rules every directory listing must satisfy before a restore may trust it.

use crate::model::{NodeKind, Tree};

/// Checks that names are safe path components, unique and sorted, and that each node carries
/// exactly the fields of its kind. Returns the first problem found.
pub fn validate(tree: &Tree) -> Result<(), String> {
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
        let ok = match node.kind {
            NodeKind::Dir => node.subtree.is_some() && node.content.is_empty(),
            NodeKind::File => node.subtree.is_none() && node.content.iter().map(|c| c.len()).sum::<u64>() == node.size,
            NodeKind::Symlink => node.target.is_some(),
            NodeKind::Hardlink => node.link.as_ref().is_some_and(|l| is_safe_relative_path(&l.0)),
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

    #[test]
    fn names_that_could_escape_a_target_are_unsafe() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"a\0b"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name(b"...") && is_safe_name(b".hidden") && is_safe_name(&[0xff, 0xfe]));
        assert!(!is_safe_relative_path(b"a/../b") && !is_safe_relative_path(b"/a") && is_safe_relative_path(b"a/b"));
    }
}
