//! Range proofs: the path from a byte range of one memory range (a flash drive) to the
//! machine's state hash, so that someone holding only those bytes can check they are part of
//! a machine whose root hash they know, without the rest of the machine.
//!
//! # Recipe (over the `cmvm-sha256-v1` tree of [`crate::merkle`]; nothing new is hashed)
//!
//! The proven bytes are `length > 0` bytes at `offset` of the range that is top-level leaf
//! `leaf_index` of `leaf_count` (see [`crate::machine`]: leaf 0 the state, 1 the device
//! tree, 2 RAM, `3 + i` flash drive `i`). They lie in pages `a = offset / 4096` to
//! `b = (offset + length - 1) / 4096` of the range.
//!
//! 1. `head` is the `offset % 4096` bytes of page `a` before the range, `tail` the bytes
//!    after it to the end of page `b` (zero-extended past the end of the range). Then
//!    `head || bytes || tail` is exactly pages `a..=b`; each page's leaf is `H(page)`.
//!    Pages wholly inside the range are recomputed from the bytes themselves.
//! 2. The range's tree has `P = 2^h` leaves, `P` the smallest power of two `>=` the range's
//!    page count (`range_length` bytes, page count at least 1). Walk it from the root,
//!    depth first, left before right: a node whose pages are all outside `a..=b` takes the
//!    next hash of `page_siblings`; a leaf inside takes the next page hash; any other node is
//!    `H(left || right)` of its children. Every sibling must be used. The result is the
//!    range's root. (`page_siblings` is the minimal set of subtree roots covering the pages
//!    outside the range: at most `2h`.)
//! 3. From the range's root up to the state hash: `leaf_siblings[k]` is the sibling at level
//!    `k` of the top-level tree ([`crate::merkle::combine_leaves`]: `leaf_count` leaves padded
//!    to a power of two with `[0; 32]`). With `i = leaf_index`, at each level the node
//!    becomes `H(node || sibling)` if `i` is even, else `H(sibling || node)`, and `i /= 2`.
//!
//! The result must equal the published state hash. Page leaves hash 4096 bytes and inner
//! nodes 64, so (short of a SHA-256 collision) a proof that checks pins the bytes to that
//! offset of that range; the verifier must itself insist on the `leaf_index` and
//! `leaf_count` it expects (which drive of which board), as the proof's own claim is only
//! as good as the hashes beside it.

use sha2::{Digest, Sha256};

use crate::machine::{Machine, MEMORY_LIMIT};
use crate::merkle::{self, hash_pair, Hash, PageTree, PAGE_SIZE};

/// At most this many top-level leaves (state, device tree, RAM and the flash drives).
pub const MAX_LEAVES: usize = 64;

/// The path from a byte range of one memory range to the machine's state hash (see the
/// module documentation for the recipe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeProof {
    /// Top-level leaves of the machine.
    pub leaf_count: usize,
    /// Which leaf the range is (3 + flash drive index).
    pub leaf_index: usize,
    /// Bytes of the memory range.
    pub range_length: u64,
    /// Where the proven bytes start, from the start of the range.
    pub offset: u64,
    /// How many bytes are proven.
    pub length: u64,
    /// The bytes of the first page before `offset`.
    pub head: Vec<u8>,
    /// The bytes after the proven ones to the end of their last page.
    pub tail: Vec<u8>,
    /// Roots of the subtrees outside the proven pages, depth first, left to right.
    pub page_siblings: Vec<Hash>,
    /// The sibling at each level of the top-level tree, from the leaf up.
    pub leaf_siblings: Vec<Hash>,
}

/// Why a range proof could not be made or does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeProofError {
    /// the machine has no flash drive {0}
    #[error("the machine has no flash drive {0}")]
    NoDrive(usize),
    /// {length} bytes at offset {offset} are empty or outside a range of {range_length} bytes
    #[error(
        "{length} bytes at offset {offset} are empty or outside a range of {range_length} bytes"
    )]
    OutOfRange {
        /// Claimed offset.
        offset: u64,
        /// Claimed length.
        length: u64,
        /// Length of the memory range.
        range_length: u64,
    },
    /// the proof is malformed: {0}
    #[error("the proof is malformed: {0}")]
    Malformed(&'static str),
    /// the bytes given are not the {0} bytes the proof is about
    #[error("the bytes given are not the {0} bytes the proof is about")]
    WrongLength(u64),
}

/// Pages (first, last) holding `length > 0` bytes at `offset`.
fn page_span(offset: u64, length: u64) -> (u64, u64) {
    let page = PAGE_SIZE as u64;
    (offset / page, (offset + length - 1) / page)
}

/// Checks that `length` bytes at `offset` lie in a range of `range_length` bytes.
fn check_span(offset: u64, length: u64, range_length: u64) -> Result<(), RangeProofError> {
    let end = offset.checked_add(length);
    if length == 0 || range_length >= MEMORY_LIMIT || end.is_none_or(|e| e > range_length) {
        return Err(RangeProofError::OutOfRange {
            offset,
            length,
            range_length,
        });
    }
    Ok(())
}

/// Height of the tree over `n` leaves padded to a power of two.
fn height(n: u64) -> usize {
    n.next_power_of_two().trailing_zeros() as usize
}

/// Makes the proof for `length` bytes at `offset` of the range whose page tree is `tree`
/// and whose bytes are `data`, top-level leaf `leaf_index` of `leaves` (the leaves whose
/// [`merkle::combine_leaves`] is the state hash).
pub fn range_proof_of(
    leaves: &[Hash],
    leaf_index: usize,
    tree: &PageTree,
    data: &[u8],
    offset: u64,
    length: u64,
) -> Result<RangeProof, RangeProofError> {
    if leaf_index >= leaves.len() || leaves.len() > MAX_LEAVES {
        return Err(RangeProofError::Malformed("no such top-level leaf"));
    }
    if data.len() as u64 != tree.length() {
        return Err(RangeProofError::Malformed(
            "the data is not the tree's range",
        ));
    }
    check_span(offset, length, tree.length())?;
    let (a, b) = page_span(offset, length);
    let page = PAGE_SIZE as u64;
    let head = data[(a * page) as usize..offset as usize].to_vec();
    let end = (offset + length) as usize;
    let tail_end = ((b + 1) * page).min(tree.length()) as usize;
    let mut tail = data[end..tail_end].to_vec();
    tail.resize(((b + 1) * page) as usize - end, 0);
    let mut page_siblings = Vec::new();
    collect_siblings(tree, tree.height(), 0, a, b, &mut page_siblings);
    // The top-level tree, every level, to read the siblings off.
    let mut level = leaves.to_vec();
    level.resize(leaves.len().next_power_of_two(), [0; 32]);
    let mut leaf_siblings = Vec::new();
    let mut i = leaf_index;
    while level.len() > 1 {
        leaf_siblings.push(level[i ^ 1]);
        level = level
            .chunks_exact(2)
            .map(|pair| hash_pair(&pair[0], &pair[1]))
            .collect();
        i /= 2;
    }
    Ok(RangeProof {
        leaf_count: leaves.len(),
        leaf_index,
        range_length: tree.length(),
        offset,
        length,
        head,
        tail,
        page_siblings,
        leaf_siblings,
    })
}

/// Pushes, depth first, the roots of the subtrees under node (`level`, `index`) whose pages
/// are all outside `a..=b`.
fn collect_siblings(
    tree: &PageTree,
    level: usize,
    index: u64,
    a: u64,
    b: u64,
    out: &mut Vec<Hash>,
) {
    let lo = index << level;
    let hi = ((index + 1) << level) - 1;
    if hi < a || lo > b {
        out.push(tree.node(level, index as usize));
    } else if level > 0 {
        collect_siblings(tree, level - 1, 2 * index, a, b, out);
        collect_siblings(tree, level - 1, 2 * index + 1, a, b, out);
    }
}

/// Recomputes the state hash from `bytes` and the proof (the module's recipe); the caller
/// compares it with the hash it trusts and checks `leaf_index` and `leaf_count` are the
/// ones it expects.
pub fn verify_range_proof(proof: &RangeProof, bytes: &[u8]) -> Result<Hash, RangeProofError> {
    let p = proof;
    check_span(p.offset, p.length, p.range_length)?;
    if bytes.len() as u64 != p.length {
        return Err(RangeProofError::WrongLength(p.length));
    }
    if p.leaf_count == 0 || p.leaf_count > MAX_LEAVES || p.leaf_index >= p.leaf_count {
        return Err(RangeProofError::Malformed("no such top-level leaf"));
    }
    if p.leaf_siblings.len() != height(p.leaf_count as u64) {
        return Err(RangeProofError::Malformed(
            "the top-level path has the wrong length",
        ));
    }
    let page = PAGE_SIZE as u64;
    let end = p.offset + p.length;
    if p.head.len() as u64 != p.offset % page || p.tail.len() as u64 != (page - end % page) % page {
        return Err(RangeProofError::Malformed(
            "the partial pages have the wrong length",
        ));
    }
    let pages = merkle::page_count(p.range_length) as u64;
    let h = height(pages);
    if p.page_siblings.len() > 2 * h {
        return Err(RangeProofError::Malformed("too many page siblings"));
    }
    let (a, b) = page_span(p.offset, p.length);
    let mut walk = Walk {
        stream: [&p.head[..], bytes, &p.tail[..]],
        siblings: p.page_siblings.iter(),
        next_page: 0,
    };
    let mut node = walk.root(h, 0, a, b)?;
    if walk.siblings.next().is_some() {
        return Err(RangeProofError::Malformed("unused page siblings"));
    }
    let mut i = p.leaf_index;
    for sibling in &p.leaf_siblings {
        node = if i % 2 == 0 {
            hash_pair(&node, sibling)
        } else {
            hash_pair(sibling, &node)
        };
        i /= 2;
    }
    Ok(node)
}

/// The state of the depth-first walk of [`verify_range_proof`].
struct Walk<'a> {
    /// `head`, the bytes, `tail`: the proven pages, in order.
    stream: [&'a [u8]; 3],
    /// The page siblings not yet used.
    siblings: std::slice::Iter<'a, Hash>,
    /// Index of the next proven page to hash (0 = page `a`).
    next_page: usize,
}

impl Walk<'_> {
    fn root(&mut self, level: usize, index: u64, a: u64, b: u64) -> Result<Hash, RangeProofError> {
        let lo = index << level;
        let hi = ((index + 1) << level) - 1;
        if hi < a || lo > b {
            return self
                .siblings
                .next()
                .copied()
                .ok_or(RangeProofError::Malformed("too few page siblings"));
        }
        if level == 0 {
            let hash = self.page_hash(self.next_page);
            self.next_page += 1;
            return Ok(hash);
        }
        let left = self.root(level - 1, 2 * index, a, b)?;
        let right = self.root(level - 1, 2 * index + 1, a, b)?;
        Ok(hash_pair(&left, &right))
    }

    /// `H(page)` of proven page `n`, copied out of the three parts.
    fn page_hash(&self, n: usize) -> Hash {
        let mut start = n * PAGE_SIZE;
        let mut h = Sha256::new();
        let mut need = PAGE_SIZE;
        for part in self.stream {
            if start >= part.len() {
                start -= part.len();
                continue;
            }
            let take = need.min(part.len() - start);
            h.update(&part[start..start + take]);
            need -= take;
            start = 0;
            if need == 0 {
                break;
            }
        }
        h.finalize().into()
    }
}

impl Machine {
    /// The proof that `length` bytes at `offset` of flash drive `drive` are part of
    /// [`Machine::root_hash`] (which this refreshes).
    pub fn range_proof(
        &mut self,
        drive: usize,
        offset: u64,
        length: u64,
    ) -> Result<RangeProof, RangeProofError> {
        if drive >= self.bus.flash.len() {
            return Err(RangeProofError::NoDrive(drive));
        }
        let leaves = self.hash_leaves();
        let leaf_index = Machine::FLASH_LEAVES_START + drive;
        let tree = self
            .page_tree(1 + drive)
            .ok_or(RangeProofError::NoDrive(drive))?;
        range_proof_of(
            &leaves,
            leaf_index,
            tree,
            self.bus.flash[drive].mem.bytes(),
            offset,
            length,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{FlashConfig, MachineConfig};

    fn machine(drive: Vec<u8>) -> Machine {
        let cfg = MachineConfig {
            ram_length: 1 << 20,
            ram_image: Some(vec![0x73, 0x00, 0x50, 0x10]), // wfi
            flash_drives: vec![
                FlashConfig {
                    label: "a".into(),
                    image: vec![3; 10_000],
                    shared: false,
                },
                FlashConfig {
                    label: "out".into(),
                    image: drive,
                    shared: true,
                },
            ],
            ..MachineConfig::default()
        };
        Machine::new(&cfg).unwrap()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn range_proofs_from_a_real_machine_verify_against_the_root_hash() {
        let mut image = vec![0u8; 5 * PAGE_SIZE + 100];
        let many = pattern(3 * PAGE_SIZE + 777, 1); // odd offset, spans 5 pages
        image[1234..1234 + many.len()].copy_from_slice(&many);
        let small = pattern(300, 9); // inside one page
        image[5 * PAGE_SIZE - 400..5 * PAGE_SIZE - 100].copy_from_slice(&small);
        let mut m = machine(image);
        // The guest writes the drive's last bytes (the range is 2 MiB, the image shorter).
        let range_length = m.bus.flash[1].mem.len();
        let last = pattern(5000, 4);
        let last_offset = range_length - last.len() as u64;
        assert!(m.bus.flash[1].mem.write_bytes(last_offset, &last));
        let root = m.root_hash_bytes();
        assert_eq!(root, m.root_hash_from_scratch());
        for (offset, bytes) in [
            (1234, &many),
            (5 * PAGE_SIZE as u64 - 400, &small),
            (last_offset, &last),
        ] {
            let proof = m.range_proof(1, offset, bytes.len() as u64).unwrap();
            assert_eq!(proof.leaf_index, 4);
            assert_eq!(proof.leaf_count, 5);
            assert!(proof.page_siblings.len() <= 2 * 9);
            assert_eq!(verify_range_proof(&proof, bytes), Ok(root));
            // A flipped byte.
            let mut flipped = bytes.clone();
            flipped[bytes.len() / 2] ^= 0x10;
            assert_ne!(verify_range_proof(&proof, &flipped), Ok(root));
            // A tampered sibling, page or top-level.
            let mut bad = proof.clone();
            bad.page_siblings[0][0] ^= 1;
            assert_ne!(verify_range_proof(&bad, bytes), Ok(root));
            let mut bad = proof.clone();
            bad.leaf_siblings[1][5] ^= 1;
            assert_ne!(verify_range_proof(&bad, bytes), Ok(root));
            // Another leaf (the other drive's position).
            let mut bad = proof.clone();
            bad.leaf_index = 3;
            assert_ne!(verify_range_proof(&bad, bytes), Ok(root));
        }
        // The whole drive's root matches too (one page in the tree of another drive).
        let proof = m.range_proof(0, 1, 9_000).unwrap();
        assert_eq!(verify_range_proof(&proof, &[3; 9_000]), Ok(root));

        // A wrong offset: the same bytes, shifted, with the head and tail moved to fit.
        let proof = m.range_proof(1, 1234, many.len() as u64).unwrap();
        let mut shifted = proof.clone();
        shifted.offset += 1;
        shifted.head.push(0);
        shifted.tail.pop();
        assert_ne!(verify_range_proof(&shifted, &many), Ok(root));
        shifted.offset += PAGE_SIZE as u64 - 1;
        shifted.head = proof.head.clone();
        shifted.tail = proof.tail.clone();
        assert_ne!(verify_range_proof(&shifted, &many), Ok(root));
        // Inconsistent shapes are refused, not guessed at.
        let mut bad = proof.clone();
        bad.offset += 1;
        assert!(matches!(
            verify_range_proof(&bad, &many),
            Err(RangeProofError::Malformed(_))
        ));
        // A proof for another artifact.
        let other = m.range_proof(1, 5 * PAGE_SIZE as u64 - 400, 300).unwrap();
        assert!(verify_range_proof(&other, &many).is_err());
        assert_ne!(verify_range_proof(&other, &many[..300]), Ok(root));
        // Hostile shapes: no panic.
        let mut bad = proof.clone();
        bad.page_siblings.clear();
        assert!(verify_range_proof(&bad, &many).is_err());
        bad = proof.clone();
        bad.page_siblings.push([0; 32]);
        assert!(verify_range_proof(&bad, &many).is_err());
        bad = proof.clone();
        bad.range_length = u64::MAX;
        assert!(verify_range_proof(&bad, &many).is_err());
        bad = proof.clone();
        bad.offset = u64::MAX - 10;
        assert!(verify_range_proof(&bad, &many).is_err());
        bad = proof.clone();
        bad.leaf_siblings.pop();
        assert!(verify_range_proof(&bad, &many).is_err());
        bad = proof;
        bad.leaf_index = 5;
        assert!(verify_range_proof(&bad, &many).is_err());
        assert_eq!(m.range_proof(2, 0, 1), Err(RangeProofError::NoDrive(2)));
        assert!(m.range_proof(1, range_length - 1, 2).is_err());
        assert!(m.range_proof(1, 0, 0).is_err());
    }
}
