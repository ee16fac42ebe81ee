//! Agreement of `cmbuild_store::cid` with an independent UnixFS encoder (`rust-unixfs`,
//! configured like `ipfs add --cid-version=1 --raw-leaves`: 256 KiB chunks, balanced layout
//! with 174 links per node, raw leaves) at every size where the tree changes shape.

use std::collections::BTreeMap;
use std::convert::Infallible;

use cmbuild_store::cid::{self, Cid, Codec, CHUNK_SIZE, MAX_LINKS};
use rust_unixfs::file::adder::FileAdder;

/// Deterministic bytes that differ from chunk to chunk (xorshift), so that equal leaves
/// cannot hide a misplaced link.
fn data(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    out
}

/// Every block (binary CID -> bytes) and the root, as the reference encoder makes them.
/// Its root is the last block it yields (from `finish`, or from `push` when the file is
/// exactly one chunk).
fn reference(bytes: &[u8]) -> (Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>) {
    let mut adder = FileAdder::default();
    let mut blocks = BTreeMap::new();
    let mut root = None;
    let mut rest = bytes;
    while !rest.is_empty() {
        let (made, consumed) = adder.push(rest);
        for (cid, block) in made {
            root = Some(cid.to_bytes());
            blocks.insert(cid.to_bytes(), block);
        }
        rest = &rest[consumed..];
    }
    for (cid, block) in adder.finish() {
        root = Some(cid.to_bytes());
        blocks.insert(cid.to_bytes(), block);
    }
    (root.expect("the reference always yields a root"), blocks)
}

/// Every block and the root as cmbuild makes them.
fn ours(bytes: &[u8]) -> (Cid, BTreeMap<Vec<u8>, Vec<u8>>) {
    let mut blocks = BTreeMap::new();
    // Odd read sizes, so that chunks straddle the builder's reads.
    let reader = std::io::BufReader::with_capacity(100_003, bytes);
    let root = cid::for_each_block(reader, |block| {
        blocks.insert(block.cid.to_bytes().to_vec(), block.bytes.to_vec());
        Ok::<(), Infallible>(())
    })
    .unwrap();
    (root, blocks)
}

fn assert_agreement(len: usize) -> Cid {
    let bytes = data(len);
    let (root, blocks) = ours(&bytes);
    let (ref_root, ref_blocks) = reference(&bytes);
    assert_eq!(
        root.to_bytes().to_vec(),
        ref_root,
        "root CID for {len} bytes"
    );
    assert_eq!(
        blocks.keys().collect::<Vec<_>>(),
        ref_blocks.keys().collect::<Vec<_>>(),
        "block set for {len} bytes"
    );
    assert!(blocks == ref_blocks, "block bytes for {len} bytes");
    assert_eq!(cid::cid_of_bytes(&bytes), root);
    root
}

#[test]
fn small_sizes_agree_and_are_single_raw_leaves() {
    for len in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE] {
        let root = assert_agreement(len);
        assert_eq!(root.codec(), Codec::Raw, "{len} bytes fit one leaf");
    }
}

#[test]
fn two_leaves_agree() {
    let root = assert_agreement(CHUNK_SIZE + 1);
    assert_eq!(root.codec(), Codec::DagPb);
}

#[test]
fn full_first_level_agrees() {
    // One node with 173 and with exactly 174 leaves: a two-level tree.
    assert_agreement(MAX_LINKS * CHUNK_SIZE - 1);
    assert_agreement(MAX_LINKS * CHUNK_SIZE);
}

#[test]
fn three_level_tree_agrees() {
    // 175 leaves: the root links a full node and a node holding the one extra leaf.
    let len = MAX_LINKS * CHUNK_SIZE + 1;
    let (root, blocks) = ours(&data(len));
    let nodes = blocks.keys().filter(|k| k[1] == 0x70).count();
    assert_eq!(nodes, 3, "root plus two depth-1 nodes");
    assert_eq!(assert_agreement(len), root);
    // A wider three-level tree with a partial last node of several leaves.
    assert_agreement(2 * MAX_LINKS * CHUNK_SIZE + 3 * CHUNK_SIZE + 17);
}
