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

/// `csrs mip` in M-mode (OpenSBI raising the supervisor timer) while the PLIC's SEIP line
/// is high must not latch the line into the software-writable SEIP bit: the latched bit
/// would keep an external interrupt pending that no claim clears, and S-mode would take it
/// forever (the console hang of issue 12).
#[test]
fn csrs_mip_does_not_latch_the_plic_seip_line() {
    use cmbuild_machine::board::{PLIC_BASE, UART_BASE};
    use cmbuild_machine::hart::csr::{MIP_SEIP, MIP_STIP};
    let mut code = Vec::new();
    for w in [0x0200_0293u32, 0x3442_a073, 0x0000_006f] {
        // li t0, 32; csrs mip, t0; j .
        code.extend_from_slice(&w.to_le_bytes());
    }
    let mut m = Machine::new(&MachineConfig {
        ram_image: Some(code),
        ..config()
    })
    .unwrap();
    // UART source 1 enabled for context 1 (S) with priority 1, and its THRE interrupt on.
    m.bus.write_mmio(PLIC_BASE + 4, 4, 1, 0).unwrap();
    m.bus.write_mmio(PLIC_BASE + 0x2080, 4, 1 << 1, 0).unwrap();
    m.bus.write_mmio(UART_BASE + 1, 1, 2, 0).unwrap();
    assert!(m.bus.devices.plic.seip());
    m.run(2);
    assert_eq!(m.hart.csr.mip, MIP_STIP, "only STIP is written");
    assert_ne!(m.hart.mip(&m.bus) & MIP_SEIP, 0, "the line still shows");
    // Served: the line drops and the claim takes the pending interrupt: SEIP is clear.
    m.bus.write_mmio(UART_BASE + 1, 1, 0, 0).unwrap();
    assert_eq!(m.bus.read_mmio(PLIC_BASE + 0x20_1004, 4, 0), Some(1));
    assert_eq!(m.hart.mip(&m.bus) & MIP_SEIP, 0);
}
