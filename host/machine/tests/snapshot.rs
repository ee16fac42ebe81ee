//! Snapshots: a run stopped at any `mcycle`, stored, loaded and resumed ends exactly like an
//! uninterrupted one (console bytes, `mcycle`, exit code, state hash, flash contents); a
//! corrupted or foreign snapshot is refused; snapshots are compact. Also deterministic idle:
//! a WFI with nothing pending jumps `mcycle` to the next timer deadline.
//!
//! The bare-metal programs are assembled here with Debian's riscv64-linux-gnu-gcc; without
//! it the tests fail under CI=true and print a loud SKIP otherwise.

mod common;

use std::path::{Path, PathBuf};

use cmbuild_machine::machine::{Break, FlashConfig, Machine, MachineConfig};
use cmbuild_machine::snapshot::{self, Snapshot, SnapshotConfig, SnapshotError};

/// Writes the snapshot files of `m` into the new directory `dir`, one file each (the
/// library does no I/O; cmbuild's `snapshot_dir` is the real, atomic writer).
fn store(dir: &Path, m: &mut Machine, sc: &SnapshotConfig) -> Result<String, SnapshotError> {
    let encoded = snapshot::encode(m, sc)?;
    std::fs::create_dir_all(dir).unwrap();
    for f in &encoded.files {
        std::fs::write(dir.join(&f.name), f.to_vec()).unwrap();
    }
    Ok(encoded.root_hash)
}

/// Loads every file of `dir` through the library.
fn load(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let files = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    snapshot::load_files(&files)
}

/// The bytes of the files in `dir`.
fn size_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Console output, timer interrupts, WFI sleeps, RAM and flash writes, exit code 3 (see the
/// file's header).
const PROGRAM: &str = include_str!("snapshot/ticks.S");

/// Deterministic idle, observed from inside: the first WFI waits for a deadline 1000 ticks
/// ahead with the timer enabled; s2 = the deadline in mcycles, s3/s4 = mcycle and minstret
/// right after the WFI. The second WFI has every interrupt disabled (mie = 0): nothing can
/// wake it, so it sleeps to the end of the run.
const IDLE: &str = r#"
#define TOHOST 0x40008000
#define MTIMECMP 0x02004000
#define MTIME 0x0200bff8
	.section .text.init, "ax"
	.globl _start
_start:
	li t0, 1 << 7
	csrw mie, t0
	li t0, MTIME
	ld t1, 0(t0)
	addi t1, t1, 1000
	li t0, MTIMECMP
	sd t1, 0(t0)
	slli s2, t1, 13            /* deadline = mtimecmp * 8192 */
	wfi
	csrr s3, mcycle
	csrr s4, minstret
	li t1, -1
	sd t1, 0(t0)               /* timer off */
	csrw mie, zero
	li s6, 1
	wfi                        /* nothing enabled: sleeps until the run's limit */
	li s7, 1
	li t0, 1
	li t1, TOHOST
	sd t0, 0(t1)
1:	j 1b
"#;

/// Assembles `source` with FLASH_BASE defined; `None` (after a loud SKIP, or a panic under
/// CI=true) when the cross toolchain is missing.
fn assemble(name: &str, source: &str, flash_base: u64) -> Option<Vec<u8>> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshot");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.S"));
    std::fs::write(&src, source).unwrap();
    common::build_with(
        name,
        "snapshot",
        &[src],
        &[format!("-DFLASH_BASE={flash_base:#x}")],
    )
}

/// Where the first flash drive lands for a RAM of `ram_length` (2 MiB aligned above RAM).
fn flash_base(ram_length: u64) -> u64 {
    (0x8000_0000 + ram_length).div_ceil(2 << 20) * (2 << 20)
}

/// The snapshot program on 16 MiB of RAM with a 1 MiB shared flash drive.
fn program_config() -> Option<MachineConfig> {
    let ram_length = 16 << 20;
    let image = assemble("ticks", PROGRAM, flash_base(ram_length))?;
    let flash: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    Some(MachineConfig {
        ram_length,
        ram_image: Some(image),
        bootargs: "snapshot test".into(),
        flash_drives: vec![FlashConfig {
            label: "data".into(),
            image: flash,
            shared: true,
        }],
        ..MachineConfig::default()
    })
}

/// What a run ends with.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    brk: Break,
    mcycle: u64,
    console: Vec<u8>,
    root_hash: String,
    flash: Vec<Vec<u8>>,
}

fn outcome(brk: Break, m: &mut Machine, console: Vec<u8>) -> Outcome {
    Outcome {
        brk,
        mcycle: m.mcycle(),
        console,
        root_hash: m.root_hash(),
        flash: m.bus.flash.iter().map(|f| f.mem.bytes().to_vec()).collect(),
    }
}

fn run_whole(config: &MachineConfig) -> Outcome {
    let mut m = Machine::new(config).unwrap();
    let brk = m.run(u64::MAX);
    let console = m.drain_console();
    outcome(brk, &mut m, console)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("snapshot-dirs")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The encoding of WFI.
const WFI: u32 = 0x1050_0073;

/// Runs from reset, storing and reloading at every cut (increasing mcycles), to the end.
/// Also returns how many cuts stopped the hart asleep in a WFI.
fn run_with_cuts(config: &MachineConfig, cuts: &[u64], dir: &Path) -> (Outcome, usize) {
    let mut m = Machine::new(config).unwrap();
    let mut asleep = 0;
    let snap_config = SnapshotConfig::from_config(config);
    let mut console = Vec::new();
    for (i, &cut) in cuts.iter().enumerate() {
        let brk = m.run(cut);
        console.extend(m.drain_console());
        let at = m.hart.pc - 0x8000_0000;
        asleep += (u32::from_le_bytes(m.bus.ram.read::<4>(at)) == WFI) as usize;
        let before = m.root_hash();
        let snap_dir = dir.join(format!("cut-{i}"));
        let stored = store(&snap_dir, &mut m, &snap_config).unwrap();
        assert_eq!(stored, before);
        drop(m);
        let loaded = load(&snap_dir).unwrap();
        assert_eq!(loaded.root_hash, before);
        assert_eq!(loaded.config, snap_config);
        m = loaded.machine;
        assert_eq!(m.root_hash(), before, "hash right after loading cut {cut}");
        if let Break::Halted(code) = brk {
            assert_eq!(m.halted(), Some(code));
        } else {
            assert_eq!(m.mcycle(), cut, "a run stops exactly at its limit");
        }
    }
    let brk = m.run(u64::MAX);
    console.extend(m.drain_console());
    (outcome(brk, &mut m, console), asleep)
}

#[test]
fn resumed_runs_end_exactly_like_an_uninterrupted_one() {
    let Some(config) = program_config() else {
        return;
    };
    let whole = run_whole(&config);
    assert_eq!(
        whole.brk,
        Break::Halted(3),
        "console: {:?}",
        String::from_utf8_lossy(&whole.console)
    );
    let text = String::from_utf8_lossy(&whole.console).into_owned();
    assert!(text.starts_with("A.B.C."), "{text:?}");
    assert_eq!(text.matches('.').count(), 12, "{text:?}");
    assert_ne!(
        whole.flash[0][..8],
        (0..8).collect::<Vec<u8>>()[..],
        "the guest wrote the drive"
    );
    eprintln!(
        "uninterrupted: mcycle {} console {text:?} {}",
        whole.mcycle, whole.root_hash
    );
    assert_eq!(run_whole(&config), whole, "the machine is deterministic");

    let end = whole.mcycle;
    let dir = scratch("cuts");
    // Single cuts: at the first instruction, inside WFI sleeps and compute loops at
    // assorted points, one before the halt; then a chain of cuts in one run; then a cut
    // past the end (stored halted).
    let singles = [
        1,
        2,
        end / 13,
        end / 7,
        end / 3 + 4097,
        end / 2,
        end - end / 5,
        end - 1,
    ];
    let mut asleep = 0;
    for (i, &cut) in singles.iter().enumerate() {
        let (resumed, n) = run_with_cuts(&config, &[cut], &dir.join(format!("single-{i}")));
        assert_eq!(resumed, whole, "resumed after a cut at mcycle {cut}");
        asleep += n;
    }
    let chain: Vec<u64> = (1..10).map(|k| end * k / 10 + k * 977).collect();
    let (resumed, n) = run_with_cuts(&config, &chain, &dir.join("chain"));
    assert_eq!(resumed, whole, "chain of cuts {chain:?}");
    asleep += n;
    // Most of the program's cycles are WFI sleeps: cuts inside them are exercised.
    assert!(asleep >= 5, "only {asleep} cuts landed in a WFI sleep");
    let (resumed, _) = run_with_cuts(&config, &[end + 1000], &dir.join("halted"));
    assert_eq!(resumed, whole, "stored halted");
}

#[test]
fn storing_the_same_state_gives_identical_files_and_reload_restores_it() {
    let Some(config) = program_config() else {
        return;
    };
    let dir = scratch("identical");
    let mut m = Machine::new(&config).unwrap();
    m.run(200_000);
    let sc = SnapshotConfig::from_config(&config);
    store(&dir.join("a"), &mut m, &sc).unwrap();
    store(&dir.join("b"), &mut m, &sc).unwrap();
    let mut loaded = load(&dir.join("a")).unwrap();
    store(&dir.join("c"), &mut loaded.machine, &sc).unwrap();
    let files = |d: &str| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join(d))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let a = files("a");
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["dtb", "flash-0.pages", "manifest", "ram.pages", "state"]
    );
    assert_eq!(a, files("b"));
    assert_eq!(
        a,
        files("c"),
        "load then store reproduces the snapshot byte for byte"
    );
    // The DTB (bootargs, rng-seed) survives although the images are gone.
    assert_eq!(loaded.machine.bus.dtb, m.bus.dtb);
    let manifest =
        String::from_utf8(a.iter().find(|(n, _)| n == "manifest").unwrap().1.clone()).unwrap();
    assert!(
        manifest.starts_with(
            "cmbuild-machine-snapshot\nformat-version 2\nhash-scheme cmvm-sha256-v1\n"
        ),
        "{manifest}"
    );
    assert!(
        manifest.contains("\nbootargs snapshot test\n"),
        "{manifest}"
    );
    assert!(
        manifest.contains("\nlabel data\nshared yes\nimage-length 1048576\n"),
        "{manifest}"
    );
    // A configuration that does not describe the machine is refused.
    let mut wrong = sc.clone();
    wrong.ram_length *= 2;
    let err = store(&dir.join("d"), &mut m, &wrong).unwrap_err();
    assert!(matches!(err, SnapshotError::ConfigMismatch(_)), "{err}");
    assert!(!dir.join("d").exists());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Edits the manifest with `f` and recomputes its checksum line, as a forger would, so that
/// the checks behind the checksum are reached.
fn edit_manifest(dir: &Path, f: impl FnOnce(String) -> String) {
    let edited = f(std::fs::read_to_string(dir.join("manifest")).unwrap());
    let body = &edited[..edited.rfind("checksum ").unwrap()];
    let sealed = format!("{body}checksum {}\nend\n", sha256_hex(body.as_bytes()));
    std::fs::write(dir.join("manifest"), sealed).unwrap();
}

/// Rewrites the manifest's `file NAME LENGTH SHA256` line to match the file on disk (and
/// reseals the manifest), so that the checks behind the digest are reached.
fn refresh_digest(dir: &Path, name: &str) {
    let bytes = std::fs::read(dir.join(name)).unwrap();
    let digest = sha256_hex(&bytes);
    edit_manifest(dir, |manifest| {
        manifest
            .lines()
            .map(|l| {
                if l.starts_with(&format!("file {name} ")) {
                    format!("file {name} {} {digest}\n", bytes.len())
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    });
}

fn edit(dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(dir.join(name)).unwrap();
    f(&mut bytes);
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn corrupted_or_foreign_snapshots_are_refused_with_a_clear_error() {
    let Some(config) = program_config() else {
        return;
    };
    let dir = scratch("corrupt");
    let good = dir.join("good");
    let mut m = Machine::new(&config).unwrap();
    m.run(150_000);
    store(&good, &mut m, &SnapshotConfig::from_config(&config)).unwrap();
    load(&good).unwrap();

    type Corruption = (&'static str, Box<dyn Fn(&Path)>, &'static str);
    let cases: Vec<Corruption> = vec![
        (
            "flipped byte in RAM page data",
            Box::new(|d| edit(d, "ram.pages", |b| *b.last_mut().unwrap() ^= 1)),
            "snapshot file ram.pages does not match its SHA-256 in the manifest",
        ),
        (
            "flipped byte in RAM page data, manifest digest forged",
            Box::new(|d| {
                edit(d, "ram.pages", |b| *b.last_mut().unwrap() ^= 1);
                refresh_digest(d, "ram.pages");
            }),
            // The data is compressed: the flip breaks the frame, or decodes to other bytes.
            "the state hash recomputed after loading is cmvm-sha256-v1:|snapshot memory file ram.pages: ",
        ),
        (
            "flipped byte in flash page data, manifest digest forged",
            Box::new(|d| {
                edit(d, "flash-0.pages", |b| *b.last_mut().unwrap() ^= 0x80);
                refresh_digest(d, "flash-0.pages");
            }),
            "(corrupted snapshot)|snapshot memory file flash-0.pages: ",
        ),
        (
            "flipped register byte in the state, manifest digest forged",
            Box::new(|d| {
                edit(d, "state", |b| b[8 * 5] ^= 4);
                refresh_digest(d, "state");
            }),
            "the state hash recomputed after loading",
        ),
        (
            "truncated state",
            Box::new(|d| edit(d, "state", |b| b.truncate(b.len() - 9))),
            "snapshot file state is",
        ),
        (
            "truncated state, manifest length forged",
            Box::new(|d| {
                edit(d, "state", |b| b.truncate(b.len() - 9));
                refresh_digest(d, "state");
            }),
            "processor and device state does not load: saved state ended early",
        ),
        (
            "truncated memory file",
            Box::new(|d| edit(d, "ram.pages", |b| b.truncate(100))),
            "snapshot file ram.pages is 100 bytes, the manifest says",
        ),
        (
            "wrong magic in the manifest",
            Box::new(|d| edit(d, "manifest", |b| b[0] = b'X')),
            "is not a cmbuild machine snapshot manifest",
        ),
        (
            "changed format version",
            Box::new(|d| {
                let t = std::fs::read_to_string(d.join("manifest")).unwrap();
                std::fs::write(
                    d.join("manifest"),
                    t.replace("format-version 2\n", "format-version 3\n"),
                )
                .unwrap();
            }),
            "snapshot format version \"3\" is not supported",
        ),
        (
            "another hash scheme",
            Box::new(|d| {
                let t = std::fs::read_to_string(d.join("manifest")).unwrap();
                std::fs::write(
                    d.join("manifest"),
                    t.replace(
                        "hash-scheme cmvm-sha256-v1\n",
                        "hash-scheme cmvm-sha256-v2\n",
                    ),
                )
                .unwrap();
            }),
            "hash scheme is \"cmvm-sha256-v2\"",
        ),
        (
            "wrong magic in a memory file, manifest digest forged",
            Box::new(|d| {
                edit(d, "ram.pages", |b| b[0] = b'X');
                refresh_digest(d, "ram.pages");
            }),
            "snapshot memory file ram.pages: bad magic",
        ),
        (
            "changed memory file version, manifest digest forged",
            Box::new(|d| {
                edit(d, "flash-0.pages", |b| b[8] = 7);
                refresh_digest(d, "flash-0.pages");
            }),
            "snapshot memory file flash-0.pages: layout version 7 is not supported",
        ),
        (
            "manifest mcycle changed",
            Box::new(|d| {
                edit_manifest(d, |t| t.replace("\nmcycle 150000\n", "\nmcycle 150001\n"))
            }),
            "holds mcycle 150000, its manifest says 150001",
        ),
        (
            "RAM length changed, manifest resealed",
            Box::new(|d| {
                edit_manifest(d, |t| {
                    t.replace(
                        &format!("\nram-length {}\n", 16 << 20),
                        &format!("\nram-length {}\n", 16u64 << 30),
                    )
                })
            }),
            "the snapshot's layout differs from what this build gives the same configuration: flash drive 0 would be at",
        ),
        (
            "flash range length changed, manifest resealed",
            Box::new(|d| {
                edit_manifest(d, |t| {
                    t.replace("\nrange-length 2097152\n", "\nrange-length 4194304\n")
                })
            }),
            "the snapshot has it at 0x81000000 with 4194304 bytes",
        ),
        (
            "a changed byte in the manifest (the shared drive's host file)",
            Box::new(|d| {
                let t = std::fs::read_to_string(d.join("manifest")).unwrap();
                let t = t.replace("\nhost-file \n", "\nhost-file /etc/passwd\n");
                std::fs::write(d.join("manifest"), t).unwrap();
            }),
            "does not match its checksum line (corrupted)",
        ),
        (
            "truncated manifest",
            Box::new(|d| edit(d, "manifest", |b| b.truncate(b.len() / 2))),
            "does not match its checksum line (corrupted)",
        ),
        (
            "a manifest field out of order, manifest resealed",
            Box::new(|d| edit_manifest(d, |t| t.replace("\nmcycle ", "\nmcycles "))),
            "snapshot manifest line 5: expected `mcycle`, found \"mcycles",
        ),
        (
            "missing memory file",
            Box::new(|d| std::fs::remove_file(d.join("ram.pages")).unwrap()),
            "snapshot file ram.pages is missing",
        ),
    ];
    for (i, (what, corrupt, expected)) in cases.iter().enumerate() {
        let bad = dir.join(format!("bad-{i}"));
        copy_dir(&good, &bad);
        corrupt(&bad);
        let err = match load(&bad) {
            Ok(_) => panic!("{what}: the corrupted snapshot was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            expected.split('|').any(|e| err.contains(e)),
            "{what}: error {err:?} does not say {expected:?}"
        );
    }
}

#[test]
fn snapshot_of_a_1_gib_ram_machine_is_small() {
    let ram_length = 1 << 30;
    let Some(image) = assemble("ticks-1g", PROGRAM, flash_base(ram_length)) else {
        return;
    };
    let config = MachineConfig {
        ram_length,
        ram_image: Some(image),
        flash_drives: vec![FlashConfig {
            label: "data".into(),
            image: vec![0; 64 << 20],
            shared: false,
        }],
        ..MachineConfig::default()
    };
    let mut m = Machine::new(&config).unwrap();
    assert_eq!(m.run(u64::MAX), Break::Halted(3));
    let dir = scratch("big").join("snap");
    let hash = store(&dir, &mut m, &SnapshotConfig::from_config(&config)).unwrap();
    let size = size_on_disk(&dir);
    eprintln!("1 GiB RAM + 64 MiB flash: snapshot of {size} bytes");
    // The program, 12 data pages and 2 flash pages: a few dozen KiB, nowhere near a GiB.
    assert!(size < 256 << 10, "{size} bytes");
    let mut loaded = load(&dir).unwrap();
    assert_eq!(loaded.machine.root_hash(), hash);
    assert_eq!(loaded.machine.bus.ram.bytes(), m.bus.ram.bytes());
    assert_eq!(
        loaded.machine.bus.flash[0].mem.bytes(),
        m.bus.flash[0].mem.bytes()
    );
}

#[test]
fn wfi_with_nothing_pending_jumps_to_the_timer_deadline() {
    let Some(image) = assemble("idle", IDLE, 0) else {
        return;
    };
    let config = MachineConfig {
        ram_length: 1 << 20,
        ram_image: Some(image),
        ..MachineConfig::default()
    };
    let mut m = Machine::new(&config).unwrap();
    // The run stops at its limit inside the second WFI, which nothing can end.
    let limit = 50_000_000;
    assert_eq!(m.run(limit), Break::MaxMcycle);
    let (deadline, woke, retired) = (m.hart.x[18], m.hart.x[19], m.hart.x[20]);
    assert_eq!(
        deadline,
        1000 * 8192,
        "mtimecmp = mtime (0 at start) + 1000 ticks"
    );
    // The first WFI slept straight to the deadline: mcycle right after it is the deadline
    // plus the WFI's retirement, and hardly any instruction retired on the way.
    assert!(
        (deadline..deadline + 4).contains(&woke),
        "woke at mcycle {woke}, deadline {deadline}"
    );
    assert!(retired < 20, "{retired} instructions retired before waking");
    // The second WFI (every interrupt disabled) slept to the end of the run: mcycle is at
    // the limit, the next instruction has not run, and almost nothing retired.
    assert_eq!(m.mcycle(), limit);
    assert_eq!((m.hart.x[22], m.hart.x[23]), (1, 0), "s6 set, s7 not yet");
    assert!(m.hart.minstret() < 40, "minstret {}", m.hart.minstret());
    // Idle is deterministic across run boundaries too: a run cut inside the first sleep
    // and resumed from a snapshot sleeps to the same cycle.
    let mut cut = Machine::new(&config).unwrap();
    assert_eq!(cut.run(deadline / 2), Break::MaxMcycle);
    assert_eq!(cut.mcycle(), deadline / 2);
    let dir = scratch("idle").join("snap");
    store(&dir, &mut cut, &SnapshotConfig::from_config(&config)).unwrap();
    let mut resumed = load(&dir).unwrap().machine;
    assert_eq!(resumed.run(limit), Break::MaxMcycle);
    assert_eq!(resumed.hart.x, m.hart.x);
    assert_eq!(resumed.root_hash(), m.root_hash());
}

/// The pinned boot inputs of `scripts/boot-test-inputs` (see tests/linux_boot.rs), or
/// `None` after a loud SKIP when they cannot be fetched (a failure under CI=true).
fn linux_inputs() -> Option<std::collections::BTreeMap<String, PathBuf>> {
    match common::fetch_boot_inputs() {
        Ok(inputs) => Some(inputs),
        Err(why) => {
            let msg = format!(
                "scripts/boot-test-inputs failed (needed for the Linux snapshot test):\n{why}"
            );
            if common::require_tools() {
                panic!("{msg}");
            }
            eprintln!("SKIP: {msg}");
            None
        }
    }
}

/// Debian's OpenSBI and Linux 6.12, stored mid-boot (after the kernel has set up paging,
/// timers and the UART, about 1e9 of its 1.8e9 cycles), continue to power-off; the
/// snapshot, loaded into a fresh machine, ends in the same console bytes, `mcycle`, exit
/// code, state hash and shared drive contents.
#[test]
fn linux_boot_resumed_from_a_snapshot_ends_identically() {
    let Some(inputs) = linux_inputs() else {
        return;
    };
    let config = common::linux_boot_config(&inputs);
    const CUT: u64 = 1_000_000_000;
    const LIMIT: u64 = 6_000_000_000;
    let mut m = Machine::new(&config).unwrap();
    assert_eq!(m.run(CUT), Break::MaxMcycle);
    let before = m.drain_console();
    let dir = scratch("linux").join("snap");
    store(&dir, &mut m, &SnapshotConfig::from_config(&config)).unwrap();
    let size = size_on_disk(&dir);
    eprintln!("Linux at mcycle {CUT}: snapshot of {size} bytes (256 MiB RAM)");
    let brk = m.run(LIMIT);
    let mut console = before.clone();
    console.extend(m.drain_console());
    let whole = outcome(brk, &mut m, console);
    drop(m);
    assert_eq!(whole.brk, Break::Halted(0));
    assert!(String::from_utf8_lossy(&whole.console).contains("cmbuild-boot-test: powering off"));

    let mut loaded = load(&dir).unwrap().machine;
    let brk = loaded.run(LIMIT);
    let mut console = before;
    console.extend(loaded.drain_console());
    let resumed = outcome(brk, &mut loaded, console);
    assert_eq!(resumed.brk, whole.brk);
    assert_eq!(resumed.mcycle, whole.mcycle);
    assert!(resumed.console == whole.console, "console output differs");
    assert_eq!(resumed.root_hash, whole.root_hash);
    assert!(resumed.flash == whole.flash, "flash drive contents differ");
    assert!(loaded.root_hash_bytes() == loaded.root_hash_from_scratch());
}
