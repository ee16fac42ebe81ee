//! State proofs of a run's artifacts: where each binary's bytes lie on the output drive, and
//! the path from them to the machine's state hash ([`cmbuild_trust::state_proof`] is the
//! format and the verifier; [`cmbuild_machine::range_proof`] makes the path).
//!
//! `cmbuild run` writes one per artifact as `proofs/<triple>/<bin>.json` in the build
//! directory. The guest writes the output drive as a tar from offset 0, so a file's bytes
//! lie contiguously after its header; [`locate_files`] reads the headers (untrusted, bounded)
//! and the proof is made only after the bytes there are checked to be the artifact's.

use std::collections::BTreeMap;

use base64::Engine as _;
use cmbuild_machine::machine::Machine;
use cmbuild_machine::merkle::{Hash, PageTree};
use cmbuild_machine::range_proof::{range_proof_of, RangeProof, RangeProofError};
use cmbuild_store::hex;
use cmbuild_trust::state_proof::{StateProof, STATE_PROOF_TYPE};

use crate::guest::Drive;

/// At most this many tar entries are read when locating files.
pub const MAX_ENTRIES: usize = 100_000;

/// Why a state proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StateProofsError {
    /// The output drive has no regular file at this path.
    #[error("the output drive has no file {0}")]
    NotOnDrive(String),
    /// The bytes on the drive are not the artifact's.
    #[error("the bytes of {0} on the output drive are not the artifact's")]
    Mismatch(String),
    /// The machine crate refused to make the path.
    #[error("{0}: {1}")]
    Range(String, RangeProofError),
}

/// Where each regular file of the tar at the start of `drive` lies: path (without a leading
/// `./`) to (offset of its first byte, length). Reading stops at the end of the archive, at
/// the first malformed header, or after [`MAX_ENTRIES`] entries; a path seen twice keeps its
/// first place.
pub fn locate_files(drive: &[u8]) -> BTreeMap<String, (u64, u64)> {
    let mut found = BTreeMap::new();
    let mut archive = tar::Archive::new(drive);
    let Ok(entries) = archive.entries() else {
        return found;
    };
    for entry in entries.take(MAX_ENTRIES) {
        let Ok(entry) = entry else { break };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Ok(path) = String::from_utf8(entry.path_bytes().into_owned()) else {
            continue;
        };
        let path = path.strip_prefix("./").unwrap_or(&path).to_owned();
        let Ok(size) = entry.header().size() else {
            continue;
        };
        found
            .entry(path)
            .or_insert((entry.raw_file_position(), size));
    }
    found
}

/// The proof that `bytes`, the file `path` of the output drive `drive`, are part of the state
/// hash of the machine `machine` (named `machine/<targets>`), whose top-level leaves are
/// `leaves` and whose output drive's page tree is `tree`.
pub fn prove_file(
    machine: &str,
    leaves: &[Hash],
    tree: &PageTree,
    drive: &[u8],
    located: &BTreeMap<String, (u64, u64)>,
    path: &str,
    bytes: &[u8],
) -> Result<StateProof, StateProofsError> {
    let &(offset, length) = located
        .get(path)
        .ok_or_else(|| StateProofsError::NotOnDrive(path.to_owned()))?;
    let on_drive = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(length).ok())
        .and_then(|(o, l)| drive.get(o..o.checked_add(l)?));
    if on_drive != Some(bytes) {
        return Err(StateProofsError::Mismatch(path.to_owned()));
    }
    let leaf = Machine::FLASH_LEAVES_START + Drive::Output.index();
    let range = range_proof_of(leaves, leaf, tree, drive, offset, length)
        .map_err(|e| StateProofsError::Range(path.to_owned(), e))?;
    Ok(to_state_proof(machine, &range))
}

/// The file form of a machine range proof.
pub fn to_state_proof(machine: &str, range: &RangeProof) -> StateProof {
    let b64 = base64::engine::general_purpose::STANDARD;
    StateProof {
        kind: STATE_PROOF_TYPE.to_owned(),
        machine: machine.to_owned(),
        leaf_count: range.leaf_count,
        leaf_index: range.leaf_index,
        range_length: range.range_length,
        offset: range.offset,
        length: range.length,
        head: b64.encode(&range.head),
        tail: b64.encode(&range.tail),
        page_siblings: range.page_siblings.iter().map(hex::encode).collect(),
        leaf_siblings: range.leaf_siblings.iter().map(hex::encode).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmbuild_machine::machine::{FlashConfig, MachineConfig};
    use cmbuild_trust::state_proof::{StateProofError, LEAF_COUNT, OUTPUT_LEAF_INDEX};

    #[test]
    fn the_verifier_expects_cmbuilds_board() {
        assert_eq!(LEAF_COUNT, Machine::FLASH_LEAVES_START + Drive::ALL.len());
        assert_eq!(
            OUTPUT_LEAF_INDEX,
            Machine::FLASH_LEAVES_START + Drive::Output.index()
        );
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, path, *bytes).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A machine with cmbuild's four drives, the output drive holding `tar`, made by the
    /// guest (written after boot, as the guest does).
    fn machine_with_output(tar: &[u8]) -> Machine {
        let cfg = MachineConfig {
            ram_length: 1 << 20,
            ram_image: Some(vec![0x73, 0x00, 0x50, 0x10]), // wfi
            flash_drives: Drive::ALL
                .iter()
                .map(|d| FlashConfig {
                    label: d.label().into(),
                    image: vec![d.index() as u8; 5000],
                    shared: d.shared(),
                })
                .collect(),
            ..MachineConfig::default()
        };
        let mut m = Machine::new(&cfg).unwrap();
        m.root_hash();
        let output = &mut m.bus.flash[Drive::Output.index()].mem;
        let mut fill = vec![0u8; output.len() as usize];
        fill[..tar.len()].copy_from_slice(tar);
        assert!(output.write_bytes(0, &fill));
        m
    }

    #[test]
    fn proofs_of_files_on_the_output_drive_verify_against_the_root_hash() {
        let small: Vec<u8> = (0..700u32).map(|i| (i * 7) as u8 | 1).collect();
        let big: Vec<u8> = (0..3 * 4096 + 123)
            .map(|i: u32| (i % 253) as u8 + 2)
            .collect();
        let tar = tar_of(&[("./t/status", b"0\n"), ("t/small", &small), ("t/big", &big)]);
        let mut m = machine_with_output(&tar);
        let root = m.root_hash();
        let leaves = m.hash_leaves();
        let drive = crate::guest::drive_bytes(&m, Drive::Output).to_vec();
        let tree = PageTree::build(&drive);
        let located = locate_files(&drive);
        assert_eq!(located.len(), 3);
        assert_eq!(located["t/status"], (512, 2));
        for (path, bytes) in [("t/small", &small), ("t/big", &big)] {
            let proof =
                prove_file("machine/t", &leaves, &tree, &drive, &located, path, bytes).unwrap();
            let file = proof.to_file_bytes().unwrap();
            let proof = StateProof::parse(&file).unwrap();
            assert_eq!(proof.root_hash(bytes).unwrap(), root);
            // The proof of one file does not prove another.
            assert!(proof
                .root_hash(if path == "t/big" { &small } else { &big })
                .is_err());
            let mut flipped = bytes.clone();
            flipped[0] ^= 4;
            assert_ne!(proof.root_hash(&flipped).unwrap(), root);
            // Size: two partial pages (base64) and a few dozen hashes.
            assert!(file.len() < 12 << 10, "{} bytes", file.len());
        }
        // Other bytes than those on the drive get no proof.
        assert!(matches!(
            prove_file(
                "machine/t",
                &leaves,
                &tree,
                &drive,
                &located,
                "t/small",
                &big
            ),
            Err(StateProofsError::Mismatch(_))
        ));
        assert!(matches!(
            prove_file(
                "machine/t",
                &leaves,
                &tree,
                &drive,
                &located,
                "t/none",
                &big
            ),
            Err(StateProofsError::NotOnDrive(_))
        ));
        // A proof of the input drive is refused by the verifier, whatever its hashes.
        let range = m.range_proof(Drive::Input.index(), 10, 100).unwrap();
        let input = to_state_proof("machine/t", &range);
        assert!(matches!(
            input.root_hash(&[Drive::Input.index() as u8; 100]),
            Err(StateProofError::NotOutputDrive { .. })
        ));
    }

    #[test]
    fn hostile_drives_locate_nothing_and_do_not_panic() {
        assert!(locate_files(&[]).is_empty());
        assert!(locate_files(&[0u8; 4096]).is_empty());
        assert!(locate_files(&[0xffu8; 4096]).is_empty());
        let mut tar = tar_of(&[("a", b"xyz")]);
        tar.truncate(514); // the data runs off the end
        let located = locate_files(&tar);
        assert!(located
            .get("a")
            .is_none_or(|&(o, l)| o + l > tar.len() as u64));
    }
}
