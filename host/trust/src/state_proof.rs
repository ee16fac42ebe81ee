//! State proofs: the path from an artifact's bytes to the state hash (`root_hash`) of the
//! machine that built it, checked without the machine crate and without rerunning anything.
//!
//! `cmbuild run` writes one per artifact as `proofs/<triple>/<bin>.json` in the build
//! directory; `cmbuild prove` embeds it in the artifact proof ([`crate::artifact`]) and
//! `cmbuild verify-proof --artifact FILE` checks it. Format, canonical JSON with a final
//! newline (hashes lower-case hex, byte strings base64):
//!
//! ```text
//! {"head": <base64>, "leafCount": 8, "leafIndex": 5, "leafSiblings": [<hex>...],
//!  "length": n, "machine": "machine/<triples joined by ,>", "offset": n,
//!  "pageSiblings": [<hex>...], "rangeLength": n, "tail": <base64>,
//!  "type": "cmbuild-state-proof-v1"}
//! ```
//!
//! # Recipe (the `cmvm-sha256-v1` state hash, read backwards)
//!
//! The state hash is a SHA-256 Merkle tree (`H` = SHA-256, inner node `H(left || right)`)
//! over `leafCount` top-level leaves padded to a power of two with 32 zero bytes: the
//! processor/device state, the device-tree ROM, RAM, then each flash drive (cmbuild's
//! output drive is leaf [`OUTPUT_LEAF_INDEX`] of [`LEAF_COUNT`]). A flash drive's leaf is the
//! root of its own tree over 4 KiB pages (`rangeLength` bytes; a page's leaf is `H(4096
//! bytes)`; leaves padded to a power of two `2^h` with the hash of a zero page).
//!
//! The artifact is the `length` bytes at `offset` of the output drive (the guest writes a tar
//! from offset 0; each file's bytes follow its 512-byte header). They lie in pages `a =
//! offset / 4096` to `b = (offset + length - 1) / 4096`.
//!
//! 1. `head` is the `offset % 4096` bytes of page `a` before the artifact and `tail` the
//!    bytes after it to the end of page `b`, so `head || artifact || tail` is pages `a..=b`.
//! 2. Walk the drive's tree from its root, depth first, left before right: a node whose
//!    pages all lie outside `a..=b` takes the next hash of `pageSiblings`; a page inside
//!    takes `H(page)`; any other node is `H(left || right)`. All siblings must be used. This
//!    gives the drive's root.
//! 3. With `i = leafIndex`, for each hash `s` of `leafSiblings` in order: node =
//!    `H(node || s)` if `i` is even, else `H(s || node)`; `i /= 2`. The result, as
//!    `cmvm-sha256-v1:<hex>`, must be the root hash the attestations give for `machine`.
//!
//! Page leaves hash 4096 bytes and inner nodes 64, so (short of a SHA-256 collision) a
//! proof that checks pins the bytes to that offset of the output drive. The verifier takes
//! `leafIndex`/`leafCount` only if they are the output drive's ([`OUTPUT_LEAF_INDEX`],
//! [`LEAF_COUNT`]): bytes proven to lie in RAM or on the input drive (which holds the
//! source) would prove nothing.

use std::path::Path;

use base64::Engine as _;
use cmbuild_store::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical;
use crate::files;

/// `type` of a state proof.
pub const STATE_PROOF_TYPE: &str = "cmbuild-state-proof-v1";
/// The state hash recipe state proofs are about.
pub const HASH_SCHEME: &str = "cmvm-sha256-v1";
/// Top-level leaves of a cmbuild machine: state, device tree, RAM and five flash drives
/// (root, input, output, scratch, toolchain layer).
pub const LEAF_COUNT: usize = 8;
/// Top-level leaf of the output drive (flash drive 2).
pub const OUTPUT_LEAF_INDEX: usize = 5;
/// Largest state proof file read (two partial pages and a few hundred hashes fit easily).
pub const MAX_STATE_PROOF_BYTES: u64 = 256 << 10;
/// A drive is smaller than this (64 GiB, the machine's limit): bounds the tree height.
pub const MAX_RANGE_LENGTH: u64 = 64 << 30;
const PAGE: u64 = 4096;

/// Why a state proof could not be read or does not check.
#[derive(Debug, thiserror::Error)]
pub enum StateProofError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The proof is malformed.
    #[error("not a state proof: {0}")]
    Malformed(String),
    /// The proof is about another part of the machine than the output drive.
    #[error("the proof is about top-level leaf {index} of {count}, not the output drive (leaf {OUTPUT_LEAF_INDEX} of {LEAF_COUNT})")]
    NotOutputDrive {
        /// Claimed leaf.
        index: usize,
        /// Claimed leaf count.
        count: usize,
    },
    /// The artifact has another length than the proof's.
    #[error("the artifact has {actual} bytes; the proof is about {claimed}")]
    WrongLength {
        /// The proof's length.
        claimed: u64,
        /// The file's.
        actual: u64,
    },
    /// The proof could not be written canonically.
    #[error(transparent)]
    Canonical(#[from] canonical::CanonicalError),
}

/// The path from an artifact's bytes to a machine's state hash (see the module
/// documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateProof {
    /// Always [`STATE_PROOF_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The machine, as attestations name it: `machine/<triples joined by ,>`.
    pub machine: String,
    /// Top-level leaves of the machine.
    pub leaf_count: usize,
    /// The drive's top-level leaf.
    pub leaf_index: usize,
    /// Bytes of the drive.
    pub range_length: u64,
    /// The artifact's first byte on the drive.
    pub offset: u64,
    /// The artifact's length.
    pub length: u64,
    /// Base64 of the bytes of the first page before the artifact.
    pub head: String,
    /// Base64 of the bytes after the artifact to the end of its last page.
    pub tail: String,
    /// Hex roots of the drive's subtrees outside the artifact's pages, depth first.
    pub page_siblings: Vec<String>,
    /// Hex siblings on the top-level path, from the drive's leaf up.
    pub leaf_siblings: Vec<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn hash_pair(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn malformed(what: &str) -> StateProofError {
    StateProofError::Malformed(what.to_owned())
}

fn decode_hashes(
    list: &[String],
    max: usize,
    what: &str,
) -> Result<Vec<[u8; 32]>, StateProofError> {
    if list.len() > max {
        return Err(malformed(&format!("too many {what}")));
    }
    list.iter()
        .map(|h| hex::decode_array::<32>(h).map_err(|_| malformed(&format!("{what}: not a hash"))))
        .collect()
}

/// Height of a tree over `n >= 1` leaves padded to a power of two.
fn height(n: u64) -> usize {
    n.next_power_of_two().trailing_zeros() as usize
}

impl StateProof {
    /// Canonical JSON and a final newline.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, StateProofError> {
        let mut out = canonical::to_vec_of(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses a proof (size-capped, its type checked).
    pub fn parse(bytes: &[u8]) -> Result<StateProof, StateProofError> {
        if bytes.len() as u64 > MAX_STATE_PROOF_BYTES {
            return Err(malformed("larger than a state proof may be"));
        }
        let proof: StateProof =
            serde_json::from_slice(bytes).map_err(|e| StateProofError::Malformed(e.to_string()))?;
        if proof.kind != STATE_PROOF_TYPE {
            return Err(malformed(&format!("type is not {STATE_PROOF_TYPE}")));
        }
        Ok(proof)
    }

    /// Reads a proof file (size-capped).
    pub fn read(path: &Path) -> Result<StateProof, StateProofError> {
        let bytes = files::read_capped(path, MAX_STATE_PROOF_BYTES).map_err(|source| {
            StateProofError::Io {
                path: path.display().to_string(),
                source,
            }
        })?;
        Self::parse(&bytes)
    }

    /// Recomputes the machine's root hash (`cmvm-sha256-v1:<hex>`) from the artifact's
    /// bytes and the proof; refuses a proof that is not about the output drive. The caller
    /// compares the result with the root hash it trusts for [`StateProof::machine`].
    pub fn root_hash(&self, artifact: &[u8]) -> Result<String, StateProofError> {
        if self.leaf_index != OUTPUT_LEAF_INDEX || self.leaf_count != LEAF_COUNT {
            return Err(StateProofError::NotOutputDrive {
                index: self.leaf_index,
                count: self.leaf_count,
            });
        }
        if artifact.len() as u64 != self.length {
            return Err(StateProofError::WrongLength {
                claimed: self.length,
                actual: artifact.len() as u64,
            });
        }
        let end = self
            .offset
            .checked_add(self.length)
            .filter(|&end| self.length > 0 && end <= self.range_length)
            .filter(|_| self.range_length < MAX_RANGE_LENGTH)
            .ok_or_else(|| malformed("the artifact is empty or not inside the drive"))?;
        let head = b64()
            .decode(&self.head)
            .map_err(|_| malformed("head is not base64"))?;
        let tail = b64()
            .decode(&self.tail)
            .map_err(|_| malformed("tail is not base64"))?;
        if head.len() as u64 != self.offset % PAGE
            || tail.len() as u64 != (PAGE - end % PAGE) % PAGE
        {
            return Err(malformed("the partial pages have the wrong length"));
        }
        let pages = self.range_length.div_ceil(PAGE).max(1);
        let h = height(pages);
        let page_siblings = decode_hashes(&self.page_siblings, 2 * h, "page siblings")?;
        let leaf_siblings = decode_hashes(&self.leaf_siblings, 64, "leaf siblings")?;
        if leaf_siblings.len() != height(LEAF_COUNT as u64) {
            return Err(malformed("the top-level path has the wrong length"));
        }
        let mut walk = Walk {
            parts: [&head, artifact, &tail],
            siblings: page_siblings.iter(),
            next_page: 0,
            first: self.offset / PAGE,
            last: (end - 1) / PAGE,
        };
        let mut node = walk.node(h, 0)?;
        if walk.siblings.next().is_some() {
            return Err(malformed("unused page siblings"));
        }
        let mut i = self.leaf_index;
        for sibling in &leaf_siblings {
            node = if i % 2 == 0 {
                hash_pair(&node, sibling)
            } else {
                hash_pair(sibling, &node)
            };
            i /= 2;
        }
        Ok(format!("{HASH_SCHEME}:{}", hex::encode(node)))
    }
}

/// The depth-first walk of [`StateProof::root_hash`].
struct Walk<'a> {
    /// `head`, the artifact, `tail`: the proven pages in order.
    parts: [&'a [u8]; 3],
    siblings: std::slice::Iter<'a, [u8; 32]>,
    /// The next proven page to hash (0 = page `first`).
    next_page: u64,
    first: u64,
    last: u64,
}

impl Walk<'_> {
    fn node(&mut self, level: usize, index: u64) -> Result<[u8; 32], StateProofError> {
        let lo = index << level;
        let hi = ((index + 1) << level) - 1;
        if hi < self.first || lo > self.last {
            return self
                .siblings
                .next()
                .copied()
                .ok_or_else(|| malformed("too few page siblings"));
        }
        if level == 0 {
            let hash = self.page_hash(self.next_page);
            self.next_page += 1;
            return Ok(hash);
        }
        let left = self.node(level - 1, 2 * index)?;
        let right = self.node(level - 1, 2 * index + 1)?;
        Ok(hash_pair(&left, &right))
    }

    /// `H(page)` of proven page `n`.
    fn page_hash(&self, n: u64) -> [u8; 32] {
        let mut skip = (n * PAGE) as usize;
        let mut need = PAGE as usize;
        let mut h = Sha256::new();
        for part in self.parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let take = need.min(part.len() - skip);
            h.update(&part[skip..skip + take]);
            need -= take;
            skip = 0;
            if need == 0 {
                break;
            }
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drive of 3 pages (tree height 2) holding an artifact across pages 0 and 1, and its
    /// proof, computed here by hand from the recipe.
    #[test]
    fn a_hand_made_proof_checks_and_tampering_is_refused() {
        let mut drive = vec![0u8; 3 * PAGE as usize];
        let artifact: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        drive[1000..6000].copy_from_slice(&artifact);
        drive[7000] = 9;
        let page =
            |i: usize| -> [u8; 32] { Sha256::digest(&drive[i * 4096..(i + 1) * 4096]).into() };
        let zero: [u8; 32] = Sha256::digest([0u8; 4096]).into();
        let drive_root = hash_pair(&hash_pair(&page(0), &page(1)), &hash_pair(&page(2), &zero));
        let leaves: Vec<[u8; 32]> = (0..LEAF_COUNT as u8).map(|i| [i; 32]).collect();
        let mut top = leaves.clone();
        top[OUTPUT_LEAF_INDEX] = drive_root;
        top.resize(LEAF_COUNT.next_power_of_two(), [0; 32]);
        let l1: Vec<_> = top.chunks(2).map(|p| hash_pair(&p[0], &p[1])).collect();
        let l2: Vec<_> = l1.chunks(2).map(|p| hash_pair(&p[0], &p[1])).collect();
        let root = hash_pair(&l2[0], &l2[1]);
        let proof = StateProof {
            kind: STATE_PROOF_TYPE.into(),
            machine: "machine/x".into(),
            leaf_count: LEAF_COUNT,
            leaf_index: OUTPUT_LEAF_INDEX,
            range_length: drive.len() as u64,
            offset: 1000,
            length: 5000,
            head: b64().encode(&drive[..1000]),
            tail: b64().encode(&drive[6000..8192]),
            page_siblings: vec![hex::encode(hash_pair(&page(2), &zero))],
            leaf_siblings: vec![hex::encode(top[4]), hex::encode(l1[3]), hex::encode(l2[0])],
        };
        let expected = format!("{HASH_SCHEME}:{}", hex::encode(root));
        assert_eq!(proof.root_hash(&artifact).unwrap(), expected);
        let bytes = proof.to_file_bytes().unwrap();
        assert_eq!(StateProof::parse(&bytes).unwrap(), proof);

        let mut flipped = artifact.clone();
        flipped[4500] ^= 1;
        assert_ne!(proof.root_hash(&flipped).unwrap(), expected);
        let mut bad = proof.clone();
        bad.page_siblings[0] = hex::encode([7u8; 32]);
        assert_ne!(bad.root_hash(&artifact).unwrap(), expected);
        let mut bad = proof.clone();
        bad.leaf_index = 4;
        assert!(matches!(
            bad.root_hash(&artifact),
            Err(StateProofError::NotOutputDrive { .. })
        ));
        let mut bad = proof.clone();
        bad.offset = 1001;
        assert!(bad.root_hash(&artifact).is_err());
        assert!(proof.root_hash(&artifact[1..]).is_err());
        for mutate in [
            |p: &mut StateProof| p.page_siblings.clear(),
            |p: &mut StateProof| p.page_siblings.push(hex::encode([0u8; 32])),
            |p: &mut StateProof| p.leaf_siblings.pop().map(drop).unwrap_or(()),
            |p: &mut StateProof| p.range_length = u64::MAX,
            |p: &mut StateProof| p.offset = u64::MAX - 3,
            |p: &mut StateProof| p.head = "!".into(),
            |p: &mut StateProof| p.page_siblings[0] = "zz".into(),
        ] {
            let mut bad = proof.clone();
            mutate(&mut bad);
            assert!(bad.root_hash(&artifact).is_err(), "{bad:?}");
        }
        assert!(StateProof::parse(b"{\"type\":\"x\"}").is_err());
        assert!(StateProof::parse(&vec![b' '; 300 << 10]).is_err());
    }
}
