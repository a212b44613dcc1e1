//! The RFC 6962 Merkle tree over the records (SHA-256, leaf prefix 0x00, node prefix 0x01),
//! on `tlog_tiles` (Cloudflare's port of Go's `sumdb/tlog`): it keeps the "stored hashes"
//! (about two per record), from which the root of any earlier size and proofs between any
//! two sizes follow — what checkpoints and auditors need. The wrappers here check arguments,
//! because the underlying functions assume them.

use tlog_tiles::tlog;

use crate::{AuditError, Result};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The leaf hash of a record: SHA-256(0x00 || canonical bytes).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    tlog::record_hash(leaf).0
}

/// The tree, in memory (32 bytes × ~2 per record).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    stored: Vec<tlog::Hash>,
    size: u64,
}

struct Reader<'a>(&'a [tlog::Hash]);

impl tlog::HashReader for Reader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> std::result::Result<Vec<tlog::Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|&i| usize::try_from(i).ok().and_then(|i| self.0.get(i)).copied().ok_or(tlog::Error::BadMath))
            .collect()
    }
}

fn tree_err(e: tlog::Error) -> AuditError {
    AuditError::Tree(e.to_string())
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Number of records.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a record (its canonical bytes).
    pub fn push(&mut self, leaf: &[u8]) -> Result<()> {
        self.push_hash(leaf_hash(leaf))
    }

    /// Appends a record by its leaf hash.
    pub fn push_hash(&mut self, leaf: Hash) -> Result<()> {
        let new = tlog::stored_hashes_for_record_hash(self.size, tlog::Hash(leaf), &Reader(&self.stored))
            .map_err(tree_err)?;
        self.stored.extend(new);
        self.size += 1;
        Ok(())
    }

    /// The root of the first `size` records.
    pub fn root(&self, size: u64) -> Result<Hash> {
        if size > self.size {
            return Err(AuditError::Tree(format!("size {size} is beyond the log's {}", self.size)));
        }
        Ok(tlog::tree_hash(size, &Reader(&self.stored)).map_err(tree_err)?.0)
    }

    /// Proof that record `index` is in the tree of `size` records (RFC 6962 PATH, bottom-up).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        if index >= size || size > self.size {
            return Err(AuditError::Tree(format!("no record {index} in a tree of {size} (log has {})", self.size)));
        }
        let p = tlog::prove_record(size, index, &Reader(&self.stored)).map_err(tree_err)?;
        Ok(p.into_iter().map(|h| h.0).collect())
    }

    /// Proof that the tree of `old` records is a prefix of the tree of `new` (RFC 6962 PROOF).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        if old == 0 || old > new || new > self.size {
            return Err(AuditError::Tree(format!("no consistency proof from {old} to {new} (log has {})", self.size)));
        }
        if old == new {
            return Ok(Vec::new());
        }
        let p = tlog::prove_tree(new, old, &Reader(&self.stored)).map_err(tree_err)?;
        Ok(p.into_iter().map(|h| h.0).collect())
    }
}

/// Checks an inclusion proof of `leaf` (canonical bytes) at `index` against `root` of `size`.
pub fn verify_inclusion(leaf: &[u8], index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let p: Vec<tlog::Hash> = proof.iter().map(|h| tlog::Hash(*h)).collect();
    tlog::check_record(&p, size, tlog::Hash(*root), index, tlog::record_hash(leaf)).is_ok()
}

/// Checks that the tree of `old` records with `old_root` is a prefix of the tree of `new`
/// records with `new_root`.
pub fn verify_consistency(old: u64, new: u64, proof: &[Hash], old_root: &Hash, new_root: &Hash) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let p: Vec<tlog::Hash> = proof.iter().map(|h| tlog::Hash(*h)).collect();
    tlog::check_tree(&p, new, tlog::Hash(*new_root), old, tlog::Hash(*old_root)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    /// The RFC 6962 / Certificate Transparency reference leaves (transparency-dev/merkle).
    fn ct_leaves() -> Vec<Vec<u8>> {
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
            .iter()
            .map(|x| hex::decode(x).unwrap())
            .collect()
    }

    fn ct_tree() -> Tree {
        let mut t = Tree::new();
        for l in ct_leaves() {
            t.push(&l).unwrap();
        }
        t
    }

    #[test]
    fn certificate_transparency_roots() {
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let t = ct_tree();
        for (n, r) in roots.iter().enumerate() {
            assert_eq!(t.root(n as u64).unwrap(), h(r), "root of {n}");
        }
    }

    #[test]
    fn certificate_transparency_proofs() {
        let t = ct_tree();
        let leaves = ct_leaves();
        let incl: [(u64, u64, &[&str]); 4] = [
            (0, 2, &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"]),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (m, n, want) in incl {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            assert_eq!(t.inclusion_proof(m, n).unwrap(), want, "PATH({m}, {n})");
            assert!(verify_inclusion(&leaves[m as usize], m, n, &want, &t.root(n).unwrap()));
        }
        let cons: [(u64, u64, &[&str]); 3] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (m, n, want) in cons {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            assert_eq!(t.consistency_proof(m, n).unwrap(), want, "PROOF({m}, {n})");
            assert!(verify_consistency(m, n, &want, &t.root(m).unwrap(), &t.root(n).unwrap()));
        }
    }

    /// MTH by the definition in RFC 6962 §2.1, recursively: the naive reference.
    fn naive_root(leaves: &[Vec<u8>]) -> Hash {
        use sha2::Digest;
        match leaves.len() {
            0 => sha2::Sha256::digest(b"").into(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                let mut s = sha2::Sha256::new();
                s.update([1u8]);
                s.update(naive_root(&leaves[..k]));
                s.update(naive_root(&leaves[k..]));
                s.finalize().into()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn proofs_agree_with_naive_recomputation(n in 1usize..70, seed in any::<u64>()) {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("{seed}-{i}").into_bytes()).collect();
            let mut t = Tree::new();
            for l in &leaves {
                t.push(l).unwrap();
            }
            for size in 1..=n {
                let root = t.root(size as u64).unwrap();
                prop_assert_eq!(root, naive_root(&leaves[..size]));
                let m = (seed as usize) % size;
                let p = t.inclusion_proof(m as u64, size as u64).unwrap();
                prop_assert!(verify_inclusion(&leaves[m], m as u64, size as u64, &p, &root));
                prop_assert!(!verify_inclusion(b"other", m as u64, size as u64, &p, &root));
                if size > 1 {
                    prop_assert!(!verify_inclusion(&leaves[m], ((m + 1) % size) as u64, size as u64, &p, &root)
                        || leaves[m] == leaves[(m + 1) % size]);
                }
                let old = 1 + (seed as usize / 7) % size;
                let c = t.consistency_proof(old as u64, size as u64).unwrap();
                let old_root = naive_root(&leaves[..old]);
                prop_assert!(verify_consistency(old as u64, size as u64, &c, &old_root, &root));
                let mut forged = old_root;
                forged[0] ^= 1;
                prop_assert!(!verify_consistency(old as u64, size as u64, &c, &forged, &root));
            }
        }
    }
}
