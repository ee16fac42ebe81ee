//! The page tree of the state hash: a SHA-256 binary Merkle tree over the 4 KiB pages of one
//! memory range (RAM, or one flash drive), kept up to date incrementally.
//!
//! # Recipe (hash scheme `cmvm-sha256-v1`; never change it without bumping the version)
//!
//! All hashes are SHA-256; `H(x)` is the 32-byte digest of the byte string `x`, and `||` is
//! concatenation.
//!
//! 1. The range is cut into pages of [`PAGE_SIZE`] = 4096 bytes, in address order. A final
//!    partial page is extended with zero bytes to 4096. A range of length 0 has one page,
//!    all zeros. Let `n` be the number of pages.
//! 2. Leaf `i` is `H(page_i)`, the hash of the 4096 page bytes.
//! 3. The leaves are padded on the right to `P`, the smallest power of two `>= n`, with
//!    leaves equal to `H(4096 zero bytes)` (the "zero page hash", [`zero_subtree_hash`]`(0)`).
//! 4. Each inner node is `H(left || right)` over its two 32-byte children; level 0 holds the
//!    `P` leaves, level `k + 1` holds `P / 2^(k+1)` nodes, and the single node of level
//!    `log2(P)` is the range's root. A range of one page has its leaf as root.
//!
//! Hence a subtree of height `k` whose pages are all zero hashes to `Z(k)` with
//! `Z(0) = H(zero page)` and `Z(k+1) = H(Z(k) || Z(k))`; the code uses that to skip hashing
//! zero pages and all-zero subtrees, so building the tree of a mostly-zero multi-GiB range
//! costs a scan for non-zero bytes and nothing else.
//!
//! The state hash of the whole machine combines one 32-byte leaf per part, in address
//! order, with [`combine_leaves`] (the same tree shape: pad to a power of two with
//! all-zero 32-byte leaves `[0; 32]`, then `H(left || right)` upwards).
//!
//! # Incremental use
//!
//! [`PageTree`] keeps every level of the tree (64 bytes of hashes per page, about 1.6 % of the
//! range). After the guest writes memory, [`PageTree::update`] rehashes only the dirty pages
//! and the nodes on their paths to the root; [`range_root`] recomputes the same root from
//! scratch without keeping a tree, to check the incremental one.

use sha2::{Digest, Sha256};

/// Bytes per page, the leaf granularity of the tree.
pub const PAGE_SIZE: usize = 4096;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Errors of the page tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// the data given to the tree has {actual} bytes, but the tree covers {expected}
    #[error("the data given to the tree has {actual} bytes, but the tree covers {expected}")]
    LengthMismatch {
        /// Bytes the tree was built over.
        expected: u64,
        /// Bytes handed to `update`.
        actual: u64,
    },
    /// dirty page {page} is outside the range's {pages} pages
    #[error("dirty page {page} is outside the range's {pages} pages")]
    PageOutOfRange {
        /// The offending page index.
        page: usize,
        /// Pages in the range.
        pages: usize,
    },
}

/// `H(left || right)`: an inner node of the tree.
pub fn hash_pair(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of a page; a short final page is hashed as if zero-extended to 4096 bytes.
pub fn hash_page(page: &[u8]) -> Hash {
    debug_assert!(page.len() <= PAGE_SIZE);
    if is_zero(page) {
        return zero_subtree_hash(0);
    }
    let mut h = Sha256::new();
    h.update(page);
    if page.len() < PAGE_SIZE {
        h.update(&[0u8; PAGE_SIZE][page.len()..]);
    }
    h.finalize().into()
}

/// Fewest pages worth splitting across threads (about 5 ms of hashing on one).
const PARALLEL_PAGES: usize = 2048;

/// [`hash_page`] of each page of `data` listed in `pages`, in their order. Large lists are
/// split across the host's cores: each leaf is a function of its page alone, so the
/// result is the same on any number of threads (the one place the machine's work is not
/// on one thread; see clippy.toml).
fn hash_pages(data: &[u8], pages: &[usize]) -> Vec<Hash> {
    let one = |part: &[usize]| -> Vec<Hash> {
        part.iter().map(|&p| hash_page(page_of(data, p))).collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || pages.len() < PARALLEL_PAGES {
        return one(pages);
    }
    std::thread::scope(|s| {
        let parts: Vec<_> = pages
            .chunks(pages.len().div_ceil(threads))
            .map(|part| s.spawn(move || one(part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Number of levels with precomputed zero hashes: enough for 2^63 pages.
const ZERO_LEVELS: usize = 64;

/// `Z(level)`: the root of a subtree of height `level` whose pages are all zero.
pub fn zero_subtree_hash(level: usize) -> Hash {
    zero_hashes()[level]
}

/// The table of `Z(k)`, computed once per call site batch (65 hashes, a few microseconds).
fn zero_hashes() -> &'static [Hash; ZERO_LEVELS] {
    use std::sync::OnceLock;
    static TABLE: OnceLock<[Hash; ZERO_LEVELS]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [[0u8; 32]; ZERO_LEVELS];
        table[0] = Sha256::digest([0u8; PAGE_SIZE]).into();
        for k in 1..ZERO_LEVELS {
            table[k] = hash_pair(&table[k - 1], &table[k - 1]);
        }
        table
    })
}

/// True when every byte is zero; word-wise so that scanning gigabytes of zeros is quick.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    let words_zero = chunks.by_ref().all(|c| {
        c.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))
        }) == 0
    });
    words_zero && chunks.remainder().iter().all(|&b| b == 0)
}

/// Pages covering `length` bytes (at least one: an empty range is one zero page).
pub fn page_count(length: u64) -> usize {
    (length.div_ceil(PAGE_SIZE as u64) as usize).max(1)
}

/// The bytes of page `index` of `data` (short or empty past the end).
fn page_of(data: &[u8], index: usize) -> &[u8] {
    let start = (index * PAGE_SIZE).min(data.len());
    let end = (start + PAGE_SIZE).min(data.len());
    &data[start..end]
}

/// The root of `data` computed from scratch, without keeping the tree.
pub fn range_root(data: &[u8]) -> Hash {
    let pages = page_count(data.len() as u64);
    let height = pages.next_power_of_two().trailing_zeros() as usize;
    subtree_root(data, 0, height, pages)
}

/// The root of a range of `length` bytes whose contents are `data` followed by zeros (a
/// ROM window larger than what it holds, like the device tree's).
pub fn range_root_of_length(data: &[u8], length: u64) -> Hash {
    debug_assert!(data.len() as u64 <= length);
    let pages = page_count(length);
    let height = pages.next_power_of_two().trailing_zeros() as usize;
    subtree_root(data, 0, height, pages)
}

/// Root of the subtree of `height` whose first page is `first`.
fn subtree_root(data: &[u8], first: usize, height: usize, pages: usize) -> Hash {
    if first >= pages {
        return zero_subtree_hash(height);
    }
    if height == 0 {
        return hash_page(page_of(data, first));
    }
    let half = 1usize << (height - 1);
    let left = subtree_root(data, first, height - 1, pages);
    let right = subtree_root(data, first + half, height - 1, pages);
    combine_or_zero(&left, &right, height - 1)
}

/// `H(left || right)`, skipping the hash when both children are zero subtrees of `level`.
fn combine_or_zero(left: &Hash, right: &Hash, level: usize) -> Hash {
    let zero = zero_subtree_hash(level);
    if *left == zero && *right == zero {
        zero_subtree_hash(level + 1)
    } else {
        hash_pair(left, right)
    }
}

/// The root over a list of 32-byte leaves in order, padded to a power of two with `[0; 32]`
/// leaves (how the machine's parts combine into the state hash). One leaf is its own root;
/// no leaves give `[0; 32]`.
pub fn combine_leaves(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return [0; 32];
    }
    let mut level: Vec<Hash> = leaves.to_vec();
    level.resize(leaves.len().next_power_of_two(), [0; 32]);
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|pair| hash_pair(&pair[0], &pair[1]))
            .collect();
    }
    level[0]
}

/// The Merkle tree of one memory range, every level kept for incremental updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageTree {
    /// Length of the range in bytes.
    length: u64,
    /// Pages actually in the range (`page_count(length)`).
    pages: usize,
    /// `levels[0]` are the padded leaves; the last level holds only the root.
    levels: Vec<Vec<Hash>>,
}

impl PageTree {
    /// The tree of a range of `length` zero bytes; no hashing beyond the zero table.
    pub fn new_zeroed(length: u64) -> Self {
        let pages = page_count(length);
        let padded = pages.next_power_of_two();
        let height = padded.trailing_zeros() as usize;
        let levels = (0..=height)
            .map(|k| vec![zero_subtree_hash(k); padded >> k])
            .collect();
        PageTree {
            length,
            pages,
            levels,
        }
    }

    /// The tree of `data`, built from scratch (zero pages and zero subtrees are not hashed).
    pub fn build(data: &[u8]) -> Self {
        Self::build_in(data, data.len() as u64)
    }

    /// The tree of a range of `length` bytes holding `data` and then zeros (`data` longer
    /// than `length` is cut), built from scratch without a buffer of the range: a drive's
    /// image in its larger range, say.
    pub fn build_in(data: &[u8], length: u64) -> Self {
        let mut tree = Self::new_zeroed(length);
        let data = &data[..data.len().min(length as usize)];
        let pages: Vec<usize> = (0..page_count(data.len() as u64).min(tree.pages)).collect();
        tree.levels[0][..pages.len()].copy_from_slice(&hash_pages(data, &pages));
        for k in 0..tree.levels.len() - 1 {
            let (lower, upper) = tree.levels.split_at_mut(k + 1);
            for (i, node) in upper[0].iter_mut().enumerate() {
                *node = combine_or_zero(&lower[k][2 * i], &lower[k][2 * i + 1], k);
            }
        }
        tree
    }

    /// Sets the leaves of the pages `indices` (each in the range) to the hashes
    /// of the pages of `data` (page `k` of `data` for `indices[k]`) and rehashes their
    /// paths to the root: the tree of a range whose other pages keep what the tree had
    /// (a zeroed tree and a snapshot's sparse pages, say), with no buffer of the range.
    pub fn set_pages(&mut self, indices: &[usize], data: &[u8]) -> Result<(), MerkleError> {
        if data.len() != indices.len() * PAGE_SIZE {
            return Err(MerkleError::LengthMismatch {
                expected: (indices.len() * PAGE_SIZE) as u64,
                actual: data.len() as u64,
            });
        }
        if let Some(&page) = indices.iter().find(|&&p| p >= self.pages) {
            return Err(MerkleError::PageOutOfRange {
                page,
                pages: self.pages,
            });
        }
        let all: Vec<usize> = (0..indices.len()).collect();
        for (&page, hash) in indices.iter().zip(hash_pages(data, &all)) {
            self.levels[0][page] = hash;
        }
        let mut dirty = indices.to_vec();
        dirty.sort_unstable();
        dirty.dedup();
        self.rehash_paths(dirty);
        Ok(())
    }

    /// Rehashes the pages listed in `dirty_pages` (any order, repeats allowed) from `data`,
    /// which must be the whole range, and the nodes on their paths to the root.
    pub fn update(
        &mut self,
        data: &[u8],
        dirty_pages: impl IntoIterator<Item = usize>,
    ) -> Result<(), MerkleError> {
        if data.len() as u64 != self.length {
            return Err(MerkleError::LengthMismatch {
                expected: self.length,
                actual: data.len() as u64,
            });
        }
        let mut dirty: Vec<usize> = dirty_pages.into_iter().collect();
        if let Some(&page) = dirty.iter().find(|&&p| p >= self.pages) {
            return Err(MerkleError::PageOutOfRange {
                page,
                pages: self.pages,
            });
        }
        dirty.sort_unstable();
        dirty.dedup();
        for (&page, hash) in dirty.iter().zip(hash_pages(data, &dirty)) {
            self.levels[0][page] = hash;
        }
        self.rehash_paths(dirty);
        Ok(())
    }

    /// Recomputes the nodes above the leaves `dirty` (sorted, no repeats).
    fn rehash_paths(&mut self, mut dirty: Vec<usize>) {
        for k in 0..self.levels.len() - 1 {
            // Parents of a sorted list are sorted: dedup keeps one per pair of siblings.
            for index in dirty.iter_mut() {
                *index /= 2;
            }
            dirty.dedup();
            let (lower, upper) = self.levels.split_at_mut(k + 1);
            for &i in &dirty {
                upper[0][i] = combine_or_zero(&lower[k][2 * i], &lower[k][2 * i + 1], k);
            }
        }
    }

    /// The root hash of the range.
    pub fn root(&self) -> Hash {
        self.levels[self.levels.len() - 1][0]
    }

    /// Length of the range in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Pages in the range.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Height of the tree: its padded leaves number `2^height`.
    pub fn height(&self) -> usize {
        self.levels.len() - 1
    }

    /// Node `index` of `level` (0 = the page leaves); `[0; 32]` outside the tree.
    pub fn node(&self, level: usize, index: usize) -> Hash {
        self.levels
            .get(level)
            .and_then(|l| l.get(index))
            .copied()
            .unwrap_or([0; 32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> Hash {
        Sha256::digest(bytes).into()
    }

    fn pair(a: &Hash, b: &Hash) -> Hash {
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        sha(&v)
    }

    /// Small deterministic generator for the randomized tests (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn single_page_root_is_the_page_hash() {
        let mut page = vec![0u8; PAGE_SIZE];
        page[17] = 0x5a;
        assert_eq!(range_root(&page), sha(&page));
        assert_eq!(PageTree::build(&page).root(), sha(&page));
    }

    #[test]
    fn three_pages_are_padded_with_the_zero_page_hash() {
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        let leaves: Vec<Hash> = data.chunks(PAGE_SIZE).map(sha).collect();
        let zero = sha(&[0u8; PAGE_SIZE]);
        let expected = pair(&pair(&leaves[0], &leaves[1]), &pair(&leaves[2], &zero));
        assert_eq!(range_root(&data), expected);
        assert_eq!(PageTree::build(&data).root(), expected);
    }

    #[test]
    fn partial_last_page_is_zero_extended() {
        let data: Vec<u8> = (0..PAGE_SIZE + 10).map(|i| (i % 251) as u8 + 1).collect();
        let mut second = data[PAGE_SIZE..].to_vec();
        second.resize(PAGE_SIZE, 0);
        let expected = pair(&sha(&data[..PAGE_SIZE]), &sha(&second));
        assert_eq!(range_root(&data), expected);
        assert_eq!(PageTree::build(&data).root(), expected);
    }

    #[test]
    fn a_tree_built_in_a_longer_range_is_the_zero_extended_data_s() {
        let data: Vec<u8> = (0..5 * PAGE_SIZE + 100).map(|i| (i % 251) as u8).collect();
        let length = 37 * PAGE_SIZE as u64;
        let mut extended = data.clone();
        extended.resize(length as usize, 0);
        let whole = PageTree::build(&extended);
        let tree = PageTree::build_in(&data, length);
        assert_eq!(tree.root(), whole.root());
        assert_eq!(tree.levels, whole.levels);
        // Data past the range is not the range's.
        let cut = PageTree::build_in(&extended, 3 * PAGE_SIZE as u64);
        assert_eq!(cut.root(), range_root(&extended[..3 * PAGE_SIZE]));
    }

    #[test]
    fn zero_range_root_is_the_zero_subtree_hash() {
        let zero = sha(&[0u8; PAGE_SIZE]);
        let four = pair(&pair(&zero, &zero), &pair(&zero, &zero));
        assert_eq!(range_root(&[0u8; 4 * PAGE_SIZE]), four);
        assert_eq!(PageTree::new_zeroed(4 * PAGE_SIZE as u64).root(), four);
        assert_eq!(zero_subtree_hash(2), four);
        // A multi-GiB zero range: only the zero table is needed.
        let big = PageTree::new_zeroed(1 << 32);
        assert_eq!(big.root(), zero_subtree_hash(20));
        assert_ne!(zero_subtree_hash(20), zero_subtree_hash(19));
    }

    #[test]
    fn incremental_updates_match_from_scratch() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // 37 pages: not a power of two, and a short final page.
        let len = 37 * PAGE_SIZE - 100;
        let mut data = vec![0u8; len];
        let mut tree = PageTree::build(&data);
        for round in 0..200 {
            let mut dirty = Vec::new();
            for _ in 0..rng.below(6) + 1 {
                let at = rng.below(len);
                // Sometimes write zeros back, so that subtrees return to the zero hash.
                data[at] = if round % 3 == 0 { 0 } else { rng.next() as u8 };
                dirty.push(at / PAGE_SIZE);
                dirty.push(at / PAGE_SIZE); // repeats are allowed
            }
            tree.update(&data, dirty).unwrap();
            assert_eq!(tree.root(), range_root(&data), "round {round}");
            assert_eq!(tree, PageTree::build(&data), "round {round}");
        }
        // An update that leaves a changed page out is visibly stale.
        data[5] ^= 1;
        tree.update(&data, [3]).unwrap();
        assert_ne!(tree.root(), range_root(&data));
        tree.update(&data, [0]).unwrap();
        assert_eq!(tree.root(), range_root(&data));
    }

    /// Enough pages for the leaves to be hashed on several threads: building, and
    /// updating most pages at once, give the from-scratch root, whose leaves are hashed
    /// one by one on this thread, and a stale leaf still shows.
    #[test]
    fn many_pages_hashed_across_threads_match_from_scratch() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let pages = 3 * PARALLEL_PAGES + 5;
        let mut data = vec![0u8; pages * PAGE_SIZE - 7];
        for _ in 0..pages {
            let at = rng.below(data.len());
            data[at] = rng.next() as u8;
        }
        let mut tree = PageTree::build(&data);
        assert_eq!(tree.root(), range_root(&data));
        for p in (0..pages).step_by(2) {
            data[p * PAGE_SIZE + rng.below(PAGE_SIZE - 7)] ^= 0x81;
        }
        // Every page that changed, listed backwards.
        let dirty: Vec<usize> = (0..pages).filter(|p| p % 2 == 0).rev().collect();
        tree.update(&data, dirty.clone()).unwrap();
        assert_eq!(tree.root(), range_root(&data));
        assert_eq!(tree, PageTree::build(&data));
        data[(pages - 2) * PAGE_SIZE] ^= 1;
        tree.update(&data, dirty).unwrap();
        assert_ne!(
            tree.root(),
            range_root(&data),
            "an unlisted page was rehashed"
        );
    }

    #[test]
    fn update_rejects_bad_input() {
        let data = vec![0u8; 2 * PAGE_SIZE];
        let mut tree = PageTree::build(&data);
        assert_eq!(
            tree.update(&data, [2]),
            Err(MerkleError::PageOutOfRange { page: 2, pages: 2 })
        );
        assert_eq!(
            tree.update(&data[..PAGE_SIZE], [0]),
            Err(MerkleError::LengthMismatch {
                expected: 2 * PAGE_SIZE as u64,
                actual: PAGE_SIZE as u64
            })
        );
    }

    #[test]
    fn combine_leaves_pads_with_zero_leaves() {
        let a = sha(b"a");
        let b = sha(b"b");
        let c = sha(b"c");
        assert_eq!(combine_leaves(&[a]), a);
        assert_eq!(combine_leaves(&[a, b]), pair(&a, &b));
        assert_eq!(
            combine_leaves(&[a, b, c]),
            pair(&pair(&a, &b), &pair(&c, &[0; 32]))
        );
    }

    #[test]
    fn empty_range_is_one_zero_page() {
        assert_eq!(range_root(&[]), sha(&[0u8; PAGE_SIZE]));
        assert_eq!(PageTree::build(&[]).pages(), 1);
    }
}
