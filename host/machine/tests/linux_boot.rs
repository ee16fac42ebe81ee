//! Boots Debian's OpenSBI 1.6 (`fw_jump.bin`) and Linux 6.12 (`/boot/vmlinux-*`) with the
//! busybox initramfs of `scripts/boot-test-inputs` on the machine, twice at once: once
//! with translated code (the default) and once with the interpreter alone.
//!
//! The initramfs's `/init` loads libnvdimm, nd_btt, nd_pmem and of_pmem, prints the first
//! line of `/dev/pmem0`, writes a line to `/dev/pmem1` (the shared drive) and powers off
//! through OpenSBI's HTIF reset. The test checks each marker, the bytes the guest left on
//! the shared drive, exit code 0, and that both boots end in the same console output,
//! `mcycle` and state hash (so translation changes nothing the guest can see, over 1.8e9
//! instructions of firmware, kernel and user space), the incremental hash equal to one
//! recomputed from scratch.
//!
//! The inputs are pinned .debs downloaded once into `$CMBUILD_CACHE` (default
//! `~/.cache/cmbuild`); the script needs curl, dpkg-deb, xz, cpio and
//! riscv64-linux-gnu-objcopy (`.ci/install-deps`).

mod common;

use cmbuild_machine::machine::{Break, Machine, MachineConfig};

/// Generous bound: the boot takes about 1.8e9 cycles.
const MAX_MCYCLE: u64 = 6_000_000_000;
const GUEST_LINE: &[u8] = b"cmbuild-boot-test: written by the guest\n";

struct Outcome {
    brk: Break,
    console: Vec<u8>,
    mcycle: u64,
    hash: String,
    scratch_matches: bool,
    shared: Vec<u8>,
}

fn boot(config: &MachineConfig, jit: bool) -> Outcome {
    let mut m = Machine::new(config).expect("machine");
    m.hart.set_jit(jit);
    let brk = m.run(MAX_MCYCLE);
    let console = m.drain_console();
    let hash = m.root_hash();
    let scratch_matches = m.root_hash_bytes() == m.root_hash_from_scratch();
    let shared = m.bus.flash[1].mem.bytes().to_vec();
    Outcome {
        brk,
        console,
        mcycle: m.mcycle(),
        hash,
        scratch_matches,
        shared,
    }
}

#[test]
fn debian_linux_boots_uses_pmem_and_powers_off_deterministically() {
    let inputs = common::fetch_boot_inputs()
        .unwrap_or_else(|e| panic!("scripts/boot-test-inputs failed:\n{e}"));
    let config = common::linux_boot_config(&inputs);

    // Two boots side by side: a machine must not depend on anything but its inputs, nor
    // on whether its code was translated.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| boot(&config, true));
        let b = s.spawn(|| boot(&config, false));
        (
            a.join().expect("first boot"),
            b.join().expect("second boot"),
        )
    });

    let text = String::from_utf8_lossy(&a.console);
    let tail: String = text
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        a.brk,
        Break::Halted(0),
        "no clean power-off by mcycle {}; console tail:\n{tail}",
        a.mcycle
    );
    for marker in [
        "OpenSBI v1.6".to_owned(),
        "Run /init as init process".to_owned(),
        "cmbuild-boot-test: init reached".to_owned(),
        "cmbuild-boot-test: 2 pmem-region nodes".to_owned(),
        format!("cmbuild-boot-test: pmem0: {}", common::PMEM0_LINE),
        "cmbuild-boot-test: pmem1 written".to_owned(),
        "reboot: Power down".to_owned(),
    ] {
        assert!(
            text.contains(&marker),
            "missing {marker:?}; console tail:\n{tail}"
        );
    }
    assert!(!text.contains("insmod"), "a module failed to load:\n{tail}");
    assert_eq!(&a.shared[..GUEST_LINE.len()], GUEST_LINE);
    assert!(a.shared[GUEST_LINE.len()..].iter().all(|&x| x == 0));
    assert!(
        a.scratch_matches,
        "incremental state hash differs from scratch"
    );

    assert_eq!(a.brk, b.brk);
    assert_eq!(a.mcycle, b.mcycle);
    assert!(
        a.console == b.console,
        "console output differs between boots"
    );
    assert_eq!(a.hash, b.hash);
    assert!(a.shared == b.shared);
    eprintln!("booted to power-off in {} cycles, {}", a.mcycle, a.hash);
}
