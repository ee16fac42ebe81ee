//! Every device of the board table: its state is in the state hash and survives a snapshot.
//!
//! Generic over `board::DEVICES`, so a device added to the table is covered without a new
//! test: its state must change the hash and round-trip through snapshot bytes.

use cmbuild_machine::board::{DeviceId, DEVICES};
use cmbuild_machine::machine::{Machine, MachineConfig};
use cmbuild_machine::snapshot::{self, SnapshotConfig};
use cmbuild_machine::state::Reader;

fn config() -> MachineConfig {
    MachineConfig {
        ram_length: 1 << 20,
        ram_image: Some(vec![0x73, 0x00, 0x50, 0x10]), // wfi
        bootargs: "devices".into(),
        ..MachineConfig::default()
    }
}

fn device_state(m: &Machine, id: DeviceId) -> Vec<u8> {
    let mut out = Vec::new();
    m.bus.devices.get(id).save_state(&mut out);
    out
}

/// A state of device `i` that differs from its reset state and that it accepts: the reset
/// bytes with one bit flipped, the first such flip the device loads.
fn perturbed(m: &mut Machine, id: DeviceId) -> Vec<u8> {
    let reset = device_state(m, id);
    assert!(!reset.is_empty(), "{id:?} saves no state");
    for at in 0..reset.len() {
        for bit in 0..8 {
            let mut bytes = reset.clone();
            bytes[at] ^= 1 << bit;
            let device = m.bus.devices.get_mut(id);
            let mut r = Reader::new(&bytes);
            if device.load_state(&mut r).is_ok() && r.remaining().is_empty() {
                return bytes;
            }
        }
    }
    panic!("no one-bit change of {id:?}'s state loads");
}

#[test]
fn every_device_state_changes_the_hash_and_round_trips_through_a_snapshot() {
    let cfg = config();
    for id in DEVICES.iter().map(|d| d.id) {
        let mut m = Machine::new(&cfg).unwrap();
        let reset_hash = m.root_hash();
        let changed = perturbed(&mut m, id);
        assert_eq!(device_state(&m, id), changed, "{id:?}");
        assert_ne!(
            m.root_hash(),
            reset_hash,
            "{id:?}'s state is not in the state hash"
        );
        let sc = SnapshotConfig::from_config(&cfg);
        let hash = m.root_hash();
        let files = snapshot::encode(&mut m, &sc).unwrap().to_map();
        let mut loaded = snapshot::load_files(&files).unwrap().machine;
        assert_eq!(loaded.root_hash(), hash, "{id:?}");
        for other in DEVICES.iter().map(|d| d.id) {
            assert_eq!(
                device_state(&loaded, other),
                device_state(&m, other),
                "{other:?} after a snapshot with {id:?} changed"
            );
        }
    }
}

#[test]
fn device_windows_answer_through_the_table() {
    // Each device answers a load at its base (the CLINT's msip, HTIF's tohost, the PLIC's
    // priority 0, the UART's RBR).
    let mut m = Machine::new(&config()).unwrap();
    for slot in DEVICES {
        assert!(
            m.bus.read_mmio(slot.base, 4, 0).is_some()
                || m.bus.read_mmio(slot.base, 1, 0).is_some(),
            "{:?}",
            slot.id
        );
    }
}
