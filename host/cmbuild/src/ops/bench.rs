//! `cmbuild machine bench`: times the fixed programs of `cmbuild_machine::bench` on the
//! machine and under `qemu-system-riscv64 -icount shift=0` (one instruction per virtual
//! nanosecond, the deterministic mode that is QEMU's fair counterpart), in the same run, and
//! a Linux boot when its inputs are cached.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cmbuild_machine::bench::{integer_loop, memory_loop, Platform, Program};
use cmbuild_machine::machine::{Break, Machine, MachineConfig, MachineError};

use crate::perf_map::{PerfMap, PerfMapError};

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The machine could not be built.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// QEMU could not be run.
    #[error("running qemu-system-riscv64")]
    Qemu(#[source] std::io::Error),
    /// A run did not end as it must.
    #[error("{0}")]
    Failed(String),
    /// An input could not be read (or the QEMU image written).
    #[error("reading the {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The report could not be written.
    #[error("writing the report")]
    Output(#[from] std::io::Error),
    /// The perf map could not be written.
    #[error(transparent)]
    PerfMap(#[from] PerfMapError),
}

type Result<T, E = BenchError> = std::result::Result<T, E>;

/// What `cmbuild machine bench` measures.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Instructions (millions) each benchmark program runs.
    pub mega_instructions: u64,
    /// Compare with QEMU (when installed).
    pub qemu: bool,
    /// Add the Linux boot figure (when its inputs are cached).
    pub linux: bool,
    /// Run translated code for hot blocks (else the interpreter alone).
    pub jit: bool,
    /// Append the translated blocks' symbols to `/tmp/perf-<pid>.map` (see
    /// [`crate::perf_map`]).
    pub perf_map: bool,
}

fn read(path: &Path, _what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| BenchError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs the benchmark and writes its report to `out`.
pub fn bench(opts: &BenchOptions, out: &mut dyn Write) -> Result<(), BenchError> {
    let (mega, with_qemu, with_linux, jit, perf_map) = (
        opts.mega_instructions,
        opts.qemu,
        opts.linux,
        opts.jit,
        opts.perf_map,
    );
    let instructions = mega.max(1) * 1_000_000;
    writeln!(
        out,
        "cmbuild: {}",
        if jit {
            "translated code for hot integer blocks (--no-jit: interpreter alone)"
        } else {
            "interpreter alone"
        }
    )?;
    let qemu = with_qemu && qemu_available();
    if with_qemu && !qemu {
        writeln!(
            out,
            "qemu-system-riscv64 not found: showing the machine's figures only"
        )?;
    }
    // QEMU's start-up and shutdown, measured on a program that halts at once.
    let overhead = if qemu {
        let empty = integer_loop(1, Platform::QemuVirt);
        let runs: Vec<Duration> = (0..3).map(|_| time_qemu(&empty)).collect::<Result<_>>()?;
        runs.into_iter().min().unwrap_or_default()
    } else {
        Duration::ZERO
    };
    if qemu {
        writeln!(
            out,
            "qemu start-up overhead: {:.3} s (subtracted)",
            overhead.as_secs_f64()
        )?;
    }
    let mut ratios = Vec::new();
    for make in [integer_loop, memory_loop] {
        let ours = make(instructions, Platform::Cmvm);
        let secs = time_machine(&ours, jit, perf_map)?;
        let mips = ours.instructions as f64 / secs / 1e6;
        write!(
            out,
            "{:<13} {:>6} M instr  cmbuild {:>8.1} MIPS ({:.3} s)",
            ours.name,
            ours.instructions / 1_000_000,
            mips,
            secs
        )?;
        if qemu {
            let theirs = make(instructions, Platform::QemuVirt);
            let wall = time_qemu(&theirs)?;
            let q_secs = (wall.saturating_sub(overhead)).as_secs_f64().max(1e-6);
            let q_mips = theirs.instructions as f64 / q_secs / 1e6;
            let ratio = mips / q_mips;
            ratios.push(ratio);
            write!(
                out,
                "  qemu-icount {:>8.1} MIPS ({:.3} s)  ratio {:.2}x",
                q_mips, q_secs, ratio
            )?;
        }
        writeln!(out)?;
    }
    if !ratios.is_empty() {
        let geo = ratios
            .iter()
            .product::<f64>()
            .powf(1.0 / ratios.len() as f64);
        writeln!(
            out,
            "geometric mean ratio cmbuild/qemu-icount: {geo:.2}x (target >= 0.75x)"
        )?;
    }
    if with_linux {
        linux_boot(qemu, jit, perf_map, out)?;
    }
    Ok(())
}

/// The inputs of the Linux boot figure: OpenSBI fw_jump.bin, vmlinux, initramfs.
struct BootInputs {
    bios: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// From the BOOT_TEST_* variables (what scripts/boot-test-inputs prints), else the
/// first complete directory the script left in its cache.
fn boot_inputs() -> Option<BootInputs> {
    let var = |k: &str| std::env::var_os(k).map(PathBuf::from);
    if let (Some(bios), Some(kernel), Some(initrd)) = (
        var("BOOT_TEST_FW_JUMP"),
        var("BOOT_TEST_VMLINUX"),
        var("BOOT_TEST_INITRAMFS"),
    ) {
        return Some(BootInputs {
            bios,
            kernel,
            initrd,
        });
    }
    let cache = var("CMBUILD_CACHE")
        .or_else(|| var("HOME").map(|h| h.join(".cache/cmbuild")))?
        .join("boot-test-inputs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| BootInputs {
            bios: d.join("fw_jump.bin"),
            kernel: d.join("vmlinux"),
            initrd: d.join("initramfs.cpio"),
        })
        .find(|i| i.bios.is_file() && i.kernel.is_file() && i.initrd.is_file())
}

/// Boots Debian's kernel and the boot-test initramfs to power-off on the machine and
/// under QEMU, and prints both speeds.
fn linux_boot(qemu: bool, jit: bool, perf_map: bool, out: &mut dyn Write) -> Result<()> {
    let Some(inputs) = boot_inputs() else {
        writeln!(
            out,
            "linux boot: skipped (no inputs cached; run scripts/boot-test-inputs, or set \
             BOOT_TEST_FW_JUMP, BOOT_TEST_VMLINUX and BOOT_TEST_INITRAMFS)"
        )?;
        return Ok(());
    };
    const APPEND: &str = "console=ttyS0";
    let mut m = Machine::new(&MachineConfig {
        ram_length: 256 << 20,
        bios: Some(read(&inputs.bios, "firmware")?),
        kernel: Some(read(&inputs.kernel, "kernel")?),
        initrd: Some(read(&inputs.initrd, "initrd")?),
        bootargs: APPEND.into(),
        ..MachineConfig::default()
    })?;
    m.hart.set_jit(jit);
    let mut map = PerfMap::open_if(perf_map, &mut m)?;
    let start = Instant::now();
    let brk = m.run(20_000_000_000);
    let secs = start.elapsed().as_secs_f64();
    if let Some(map) = &mut map {
        map.drain(&mut m)?;
    }
    if !matches!(brk, Break::Halted(_)) {
        return Err(BenchError::Failed(format!(
            "the Linux boot did not power off ({brk:?})"
        )));
    }
    let instret = m.hart.minstret();
    let mips = instret as f64 / secs / 1e6;
    write!(
        out,
        "linux boot    {:>6} M instr  cmbuild {:>8.1} MIPS ({:.3} s, mcycle {})",
        instret / 1_000_000,
        mips,
        secs,
        m.mcycle()
    )?;
    if qemu {
        let wall = time_qemu_boot(&inputs, APPEND)?.as_secs_f64();
        // QEMU does not report how many instructions it executed; the boot does the
        // same work there (same kernel, initramfs and command line; QEMU's virt board
        // lacks the flash drives), so its figure is the machine's instruction count
        // over QEMU's wall time, and the ratio is the ratio of wall times.
        let q_mips = instret as f64 / wall / 1e6;
        write!(
            out,
            "  qemu-icount {:>8.1} MIPS ({:.3} s)  ratio {:.2}x",
            q_mips,
            wall,
            mips / q_mips
        )?;
    }
    writeln!(out)?;
    if qemu {
        writeln!(
            out,
            "  (qemu: -M virt -icount shift=0,sleep=off, same kernel/initrd/append; its MIPS \
             is cmbuild's instruction count of the boot over qemu's wall time)"
        )?;
    }
    Ok(())
}

fn time_qemu_boot(inputs: &BootInputs, append: &str) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new("qemu-system-riscv64")
        .args(["-M", "virt", "-m", "256M", "-smp", "1", "-no-reboot"])
        .args(["-icount", "shift=0,sleep=off"])
        .args(["-display", "none", "-monitor", "none", "-serial", "null"])
        .arg("-bios")
        .arg(&inputs.bios)
        .arg("-kernel")
        .arg(&inputs.kernel)
        .arg("-initrd")
        .arg(&inputs.initrd)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(BenchError::Qemu)?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(BenchError::Failed(format!(
            "qemu-system-riscv64 failed on the Linux boot ({status})"
        )));
    }
    Ok(elapsed)
}

fn time_machine(p: &Program, jit: bool, perf_map: bool) -> Result<f64> {
    let mut m = Machine::new(&MachineConfig {
        ram_length: 16 << 20,
        ram_image: Some(p.image.clone()),
        ..MachineConfig::default()
    })?;
    m.hart.set_jit(jit);
    let mut map = PerfMap::open_if(perf_map, &mut m)?;
    let start = Instant::now();
    let brk = m.run(p.instructions.saturating_mul(2));
    let secs = start.elapsed().as_secs_f64();
    if let Some(map) = &mut map {
        map.drain(&mut m)?;
    }
    if brk != Break::Halted(0) || m.hart.minstret() != p.instructions {
        return Err(BenchError::Failed(format!(
            "{} did not halt as expected ({brk:?}, {} instructions)",
            p.name,
            m.hart.minstret()
        )));
    }
    Ok(secs)
}

fn qemu_available() -> bool {
    Command::new("qemu-system-riscv64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn time_qemu(p: &Program) -> Result<Duration> {
    let path = std::env::temp_dir().join(format!("cmbuild-bench-{}.bin", std::process::id()));
    std::fs::write(&path, &p.image)?;
    let start = Instant::now();
    let status = Command::new("qemu-system-riscv64")
        .args([
            "-M",
            "virt",
            "-m",
            "64M",
            "-bios",
            "none",
            "-nographic",
            "-icount",
            "shift=0",
        ])
        .args(["-monitor", "none", "-serial", "null"])
        .arg("-device")
        .arg(format!(
            "loader,file={},addr=0x80000000,force-raw=on",
            path.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(BenchError::Qemu)?;
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        return Err(BenchError::Failed(format!(
            "qemu-system-riscv64 failed on {} ({status})",
            p.name
        )));
    }
    Ok(elapsed)
}
