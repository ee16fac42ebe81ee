//! Helpers of the integration tests: build bare-metal programs with Debian's RISC-V cross
//! toolchain, run them on the machine, find QEMU.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cmbuild_machine::machine::{Break, FlashConfig, Machine, MachineConfig};

/// The directory of the ISA test sources.
pub fn isa_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/isa")
}

/// Whether a missing tool must fail the test (CI) rather than skip it loudly.
pub fn require_tools() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports a missing tool: a panic under CI=true, a loud SKIP otherwise. Returns false so
/// callers can `if !have(..) { return; }`.
pub fn have(tool: &str, why: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg =
            format!("{tool} not found ({why}); install the Debian packages in .ci/install-deps");
        if require_tools() {
            panic!("{msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    found
}

/// Builds the raw image of a bare-metal program from `sources` (in tests/isa, .S or .c),
/// linked at RAM_BASE with tests/isa/link.ld. `None` when the cross compiler is missing.
pub fn build(name: &str, sources: &[&str]) -> Option<Vec<u8>> {
    let dir = isa_dir();
    let paths: Vec<PathBuf> = sources.iter().map(|s| dir.join(s)).collect();
    build_with(name, "isa", &paths, &[])
}

/// Like [`build`], for sources anywhere, with extra compiler arguments (e.g. `-DNAME=..`);
/// outputs go to `$CARGO_TARGET_TMPDIR/<out_subdir>/`.
pub fn build_with(
    name: &str,
    out_subdir: &str,
    sources: &[PathBuf],
    extra_args: &[String],
) -> Option<Vec<u8>> {
    if !have("riscv64-linux-gnu-gcc", "needed to build the test programs")
        || !have(
            "riscv64-linux-gnu-objcopy",
            "needed to build the test programs",
        )
    {
        return None;
    }
    // Tests of one binary run on parallel threads and build the same program into the same
    // files: one at a time, or a test can read a binary another is rewriting (and run
    // garbage: tests/offload.rs hung about one run in ten).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = isa_dir();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(out_subdir);
    std::fs::create_dir_all(&out).unwrap();
    let elf = out.join(format!("{name}.elf"));
    let bin = out.join(format!("{name}.bin"));
    let mut cmd = Command::new("riscv64-linux-gnu-gcc");
    cmd.args([
        "-nostdlib",
        "-nostartfiles",
        "-ffreestanding",
        "-fno-pic",
        "-static",
        "-march=rv64gc",
        "-mabi=lp64d",
        "-mcmodel=medany",
        "-O2",
        "-Wl,--no-relax",
        "-Wl,--build-id=none",
    ])
    .args(extra_args)
    .arg("-T")
    .arg(dir.join("link.ld"))
    .arg("-I")
    .arg(&dir)
    .arg("-o")
    .arg(&elf);
    for s in sources {
        cmd.arg(s);
    }
    let o = cmd.output().expect("run riscv64-linux-gnu-gcc");
    assert!(
        o.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("riscv64-linux-gnu-objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .output()
        .expect("run riscv64-linux-gnu-objcopy");
    assert!(o.status.success(), "objcopy {name} failed");
    Some(std::fs::read(&bin).unwrap())
}

/// Path of the ELF [`build`] wrote for `name`.
pub fn elf_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("isa")
        .join(format!("{name}.elf"))
}

/// Runs a raw image with 16 MiB of RAM for at most `max_mcycle`, twice: with translated
/// code (the default) and with the interpreter alone, which must end in the same break,
/// console output, `mcycle` and state hash. Returns the first run.
pub fn run_image(image: &[u8], max_mcycle: u64) -> (Break, Vec<u8>, Machine) {
    let config = MachineConfig {
        ram_length: 16 << 20,
        ram_image: Some(image.to_vec()),
        ..MachineConfig::default()
    };
    let run = |jit: bool| {
        let mut m = Machine::new(&config).expect("machine");
        m.hart.set_jit(jit);
        let brk = m.run(max_mcycle);
        let console = m.drain_console();
        (brk, console, m)
    };
    let (brk, console, mut m) = run(true);
    let (brk_i, console_i, mut m_i) = run(false);
    assert_eq!(
        brk, brk_i,
        "translated and interpreted runs stop differently"
    );
    assert_eq!(
        console, console_i,
        "translated and interpreted consoles differ"
    );
    assert_eq!(
        m.mcycle(),
        m_i.mcycle(),
        "translated and interpreted mcycle differ"
    );
    assert_eq!(
        m.root_hash(),
        m_i.root_hash(),
        "translated and interpreted states differ"
    );
    (brk, console, m)
}

/// The first line the Linux boot tests put on `/dev/pmem0`.
pub const PMEM0_LINE: &str = "pmem0 says hello to the boot test";

/// Runs `scripts/boot-test-inputs` (pinned Debian firmware, kernel and initramfs, cached
/// outside the repository) and returns the paths it prints by name, or its stderr.
pub fn fetch_boot_inputs() -> Result<BTreeMap<String, PathBuf>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/boot-test-inputs");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout)
        .expect("utf-8 paths")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
        .collect())
}

/// The machine the Linux boot tests start: 256 MiB RAM, the pinned firmware, kernel and
/// initramfs, a read-only drive starting with [`PMEM0_LINE`] and an empty shared drive.
pub fn linux_boot_config(inputs: &BTreeMap<String, PathBuf>) -> MachineConfig {
    let read = |key: &str| {
        let path = inputs
            .get(key)
            .unwrap_or_else(|| panic!("{key} not printed"));
        std::fs::read(path).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let mut pmem0 = format!("{PMEM0_LINE}\nsecond line\n").into_bytes();
    pmem0.resize(1 << 20, 0);
    MachineConfig {
        ram_length: 256 << 20,
        bios: Some(read("BOOT_TEST_FW_JUMP")),
        kernel: Some(read("BOOT_TEST_VMLINUX")),
        initrd: Some(read("BOOT_TEST_INITRAMFS")),
        bootargs: "console=ttyS0 earlycon".into(),
        flash_drives: vec![
            FlashConfig {
                label: "data".into(),
                image: pmem0,
                shared: false,
            },
            FlashConfig {
                label: "shared".into(),
                image: vec![0; 1 << 20],
                shared: true,
            },
        ],
        ..MachineConfig::default()
    }
}
