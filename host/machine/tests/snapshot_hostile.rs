//! Snapshots from someone else: sizes are bounded before anything is allocated, and the
//! processor state is legalised on load (pc and WARL CSR fields as software could have
//! left them), so no snapshot can make the machine panic or allocate without bound.
//!
//! Needs no cross compiler: the machines here run a few hand-encoded instructions.

use std::collections::BTreeMap;

use cmbuild_machine::board::RAM_BASE;
use cmbuild_machine::hart::csr::{num, MSTATUS_MPP};
use cmbuild_machine::machine::{FlashConfig, Machine, MachineConfig};
use cmbuild_machine::snapshot::{self, SnapshotConfig};
use sha2::Digest;

const RAM: u64 = 2 << 20;

fn config() -> MachineConfig {
    MachineConfig {
        ram_length: RAM,
        // addi a0, a0, 1; sd a0, 64(zero)... kept simple: addi a0, a0, 1; j .-4
        ram_image: Some(vec![0x13, 0x05, 0x15, 0x00, 0xf5, 0xbf]),
        bootargs: "hostile".into(),
        flash_drives: vec![FlashConfig {
            label: "d".into(),
            image: vec![0x13; 4096], // a page of `addi x0, x0, 0`-like bytes
            shared: false,
        }],
        ..MachineConfig::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `manifest` with `f` applied and the checksum line recomputed, as a forger would.
fn reseal(manifest: &[u8], f: impl FnOnce(String) -> String) -> Vec<u8> {
    let edited = f(String::from_utf8(manifest.to_vec()).unwrap());
    let body = &edited[..edited.rfind("checksum ").unwrap()];
    format!(
        "{body}checksum {}\nend\n",
        hex(&sha2::Sha256::digest(body.as_bytes()))
    )
    .into_bytes()
}

fn files_of(m: &mut Machine) -> BTreeMap<String, Vec<u8>> {
    snapshot::encode(m, &SnapshotConfig::from_config(&config()))
        .unwrap()
        .to_map()
}

fn load_err(files: &BTreeMap<String, Vec<u8>>) -> String {
    match snapshot::load_files(files) {
        Ok(_) => panic!("the forged snapshot was accepted"),
        Err(e) => e.to_string(),
    }
}

/// What is forged, how, and what the error must say.
type Case = (&'static str, Box<dyn Fn(String) -> String>, &'static str);

#[test]
fn sizes_are_refused_before_anything_is_allocated() {
    let mut m = Machine::new(&config()).unwrap();
    m.run(100);
    let good = files_of(&mut m);
    snapshot::load_files(&good).unwrap();
    let cases: [Case; 6] = [
        (
            "64 GiB of RAM",
            Box::new(|t| {
                t.replace(
                    &format!("\nram-length {RAM}\n"),
                    &format!("\nram-length {}\n", 64u64 << 30),
                )
            }),
            "below 64 GiB",
        ),
        (
            "2^62 bytes of RAM",
            Box::new(|t| {
                t.replace(
                    &format!("\nram-length {RAM}\n"),
                    &format!("\nram-length {}\n", 1u64 << 62),
                )
            }),
            "below 64 GiB",
        ),
        (
            "a 2^63-byte drive",
            Box::new(|t| {
                t.replace(
                    "\nimage-length 4096\n",
                    &format!("\nimage-length {}\n", 1u64 << 63),
                )
                .replace(
                    "\nrange-length 2097152\n",
                    &format!("\nrange-length {}\n", u64::MAX),
                )
            }),
            "64 GiB or more",
        ),
        (
            "a small image in a 2^50-byte range",
            Box::new(|t| {
                t.replace(
                    "\nrange-length 2097152\n",
                    &format!("\nrange-length {}\n", 1u64 << 50),
                )
            }),
            "range length 1125899906842624 is 64 GiB or more",
        ),
        (
            "a 2^60-byte pages file",
            Box::new(|t| {
                let at = t.find("\nfile ram.pages ").unwrap() + "\nfile ram.pages ".len();
                let end = at + t[at..].find(' ').unwrap();
                format!("{}{}{}", &t[..at], 1u64 << 60, &t[end..])
            }),
            "more than the",
        ),
        (
            "a state file of 2^40 bytes",
            Box::new(|t| {
                let at = t.find("\nfile state ").unwrap() + "\nfile state ".len();
                let end = at + t[at..].find(' ').unwrap();
                format!("{}{}{}", &t[..at], 1u64 << 40, &t[end..])
            }),
            "more than the",
        ),
    ];
    for (what, edit, expected) in cases {
        let mut files = good.clone();
        let manifest = reseal(&files["manifest"], edit);
        // The manifest alone is refused: a caller reads nothing else.
        let err = snapshot::parse_manifest(&manifest).unwrap_err().to_string();
        assert!(err.contains(expected), "{what}: {err}");
        files.insert("manifest".into(), manifest);
        let err = load_err(&files);
        assert!(err.contains(expected), "{what}: {err}");
    }
}

/// Stores `hostile` (a machine whose fields were set to values no software could leave)
/// as a snapshot sealed the way a forger would: with the state hash of what this build
/// loads from it, so that the hash check passes and the legalised machine comes back.
fn forge(hostile: &mut Machine) -> BTreeMap<String, Vec<u8>> {
    let mut state = Vec::new();
    hostile.save_state(&mut state);
    let mut files = files_of(hostile);
    // The hash a loader computes: the same memory with the state as loaded (legalised).
    let mut probe = Machine::new(&config()).unwrap();
    probe.bus.ram = hostile.bus.ram.clone();
    probe.bus.flash = hostile.bus.flash.clone();
    probe.load_state(&state).unwrap();
    probe.memory_replaced();
    let hash = probe.root_hash();
    let stored = snapshot::parse_manifest(&files["manifest"])
        .unwrap()
        .root_hash()
        .to_string();
    let manifest = reseal(&files["manifest"], |t| t.replace(&stored, &hash));
    files.insert("manifest".into(), manifest);
    files
}

#[test]
fn pc_and_csrs_are_legalised_on_load_and_the_machine_runs() {
    let mut reference = Machine::new(&config()).unwrap();
    let hostile_csrs: [(u16, u64); 10] = [
        (num::MSTATUS, !0), // MPP = 2 among everything else
        (num::SATP, 5 << 60 | 0x1234),
        (num::MTVEC, 0x8000_0002),
        (num::STVEC, 0x8000_0003),
        (num::MEPC, 0x8000_0001),
        (num::SEPC, 0x8000_0003),
        (num::MEDELEG, !0),
        (num::MIDELEG, !0),
        (num::MIE, !0),
        (num::MCOUNTEREN, !0),
    ];
    // What csrw from reset makes of the same values (mstatus.FS on so that the fcsr
    // write below is allowed, as it must be for the FS bits stored).
    for &(csr, value) in &hostile_csrs {
        reference.hart.write_csr(csr, value).unwrap();
    }
    reference.hart.write_csr(num::FCSR, !0).unwrap();
    assert_ne!(
        (reference.hart.csr.mstatus & MSTATUS_MPP) >> 11,
        2,
        "csrw never stores MPP = 2"
    );
    for pc in [
        RAM_BASE + 1,
        RAM_BASE + RAM - 1,
        RAM_BASE + RAM - 2,
        RAM_BASE + RAM - 3,
        RAM_BASE + 0x7ff,
    ] {
        let mut hostile = Machine::new(&config()).unwrap();
        hostile.run(10);
        hostile.hart.pc = pc;
        hostile.hart.csr.mstatus = (!(1 << 63) & !MSTATUS_MPP) | (2 << 11);
        assert_eq!((hostile.hart.csr.mstatus & MSTATUS_MPP) >> 11, 2);
        hostile.hart.csr.satp = 5 << 60 | 0x1234;
        hostile.hart.csr.mtvec = 0x8000_0002;
        hostile.hart.csr.stvec = 0x8000_0003;
        hostile.hart.csr.mepc = 0x8000_0001;
        hostile.hart.csr.sepc = 0x8000_0003;
        hostile.hart.csr.medeleg = !0;
        hostile.hart.csr.mideleg = !0;
        hostile.hart.csr.mie = !0;
        hostile.hart.csr.mip = !0;
        hostile.hart.csr.mcounteren = !0;
        hostile.hart.csr.scounteren = !0;
        hostile.hart.csr.frm = 0xff;
        hostile.hart.csr.fflags = 0xff;
        hostile.hart.csr.pmpcfg = [!0; 2];
        hostile.hart.csr.pmpaddr = [!0; 16];
        let files = forge(&mut hostile);
        let mut m = snapshot::load_files(&files).unwrap().machine;
        assert_eq!(m.hart.pc, pc & !1, "pc {pc:#x}");
        let c = &m.hart.csr;
        let r = &reference.hart.csr;
        assert_eq!(
            (c.mstatus & MSTATUS_MPP) >> 11,
            0,
            "MPP = 2 becomes the reset mode"
        );
        assert_eq!(c.mstatus & !MSTATUS_MPP, r.mstatus & !MSTATUS_MPP);
        assert_eq!(c.satp, 0, "an unsupported mode leaves satp at reset");
        for (got, want) in [
            (c.mtvec, r.mtvec),
            (c.stvec, r.stvec),
            (c.mepc, r.mepc),
            (c.sepc, r.sepc),
            (c.medeleg, r.medeleg),
            (c.mideleg, r.mideleg),
            (c.mie, r.mie),
            (c.mcounteren, r.mcounteren),
        ] {
            assert_eq!(got, want);
        }
        assert_eq!((c.frm, c.fflags), (r.frm, r.fflags));
        assert_eq!(c.pmpcfg[0], 0x9f9f_9f9f_9f9f_9f9f);
        // And it runs, translated and interpreted alike.
        let mut twin = snapshot::load_files(&files).unwrap().machine;
        twin.hart.set_jit(false);
        let end = m.mcycle() + 10_000;
        m.run(end);
        twin.run(end);
        assert_eq!(m.root_hash(), twin.root_hash(), "pc {pc:#x}");
    }
}
