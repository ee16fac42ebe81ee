//! The RFC 9162 (Certificate Transparency v2) Merkle tree: hashes, inclusion and consistency
//! proofs, and their verification (RFC 9162 §2.1.1, §2.1.3, §2.1.4).
//!
//! The tree over leaves `d[0..n]` is `MTH({}) = SHA-256()`, `MTH({d0}) = SHA-256(0x00 || d0)`,
//! and for `n > 1`, with `k` the largest power of two smaller than `n`,
//! `MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`.

use sha2::{Digest, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// Why a proof could not be produced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf {index} is not in a tree of {size} leaves")]
    NoSuchLeaf {
        /// The index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof was asked from a larger tree to a smaller one.
    #[error("no consistency proof from size {from} to size {to}: {from} is larger")]
    Shrinks {
        /// The old size.
        from: u64,
        /// The new size.
        to: u64,
    },
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree, `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The tree head hash of the given leaf hashes, computed incrementally: a stack of perfect
/// subtrees is merged as leaves arrive, then folded from the right.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut stack: Vec<Hash> = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        stack.push(*leaf);
        // Every trailing one bit of i (a completed pair) merges the top two subtrees.
        let mut done = i;
        while done & 1 == 1 {
            let right = stack.pop().expect("two subtrees present");
            let left = stack.pop().expect("two subtrees present");
            stack.push(node_hash(&left, &right));
            done >>= 1;
        }
    }
    let Some(mut acc) = stack.pop() else {
        return empty_root();
    };
    while let Some(left) = stack.pop() {
        acc = node_hash(&left, &acc);
    }
    acc
}

/// The inclusion proof `PATH(index, D[n])` of RFC 9162 §2.1.3.1.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::NoSuchLeaf { index, size });
    }
    let mut out = Vec::new();
    path(index as usize, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split(d.len());
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// The consistency proof `PROOF(m, D[n])` of RFC 9162 §2.1.4.1 (empty when `m` is 0 or `n`).
pub fn consistency_proof(m: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let n = leaves.len() as u64;
    if m > n {
        return Err(ProofError::Shrinks { from: m, to: n });
    }
    let mut out = Vec::new();
    if m > 0 {
        subproof(m as usize, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, d: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !whole {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], whole, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2): that the leaf with hash `leaf` sits at
/// `index` of the tree of `size` leaves whose head is `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2): that the tree of `second` leaves with
/// head `second_root` extends the tree of `first` leaves with head `first_root`.
///
/// Beyond the RFC's `0 < first < second` case: `first == second` needs an empty proof and
/// equal roots, and `first == 0` (the empty tree, a prefix of every tree) an empty proof.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == empty_root();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *first_root && sr == *second_root && snode == 0
}
