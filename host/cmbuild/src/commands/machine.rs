//! `cmbuild machine`: the low-level runner over `cmbuild-machine`, and its benchmark.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use cmbuild_machine::machine::{Break, FlashConfig, Machine, MachineConfig};
use cmbuild_machine::snapshot::SnapshotConfig;

use super::machine_snapshot;

/// Run cmbuild's deterministic RISC-V machine directly (the low-level runner).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Boot a program or a kernel on the machine; console to stdout, a summary line to stderr.
    Run(Box<RunArgs>),
    /// Measure the machine's speed (MIPS) on fixed bare-metal loops, beside QEMU's.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// RAM size: bytes, or with a Ki/Mi/Gi suffix.
    #[arg(long, default_value = "128Mi", value_parser = parse_size)]
    ram_length: u64,
    /// Raw image loaded at the start of RAM (a bare-metal program).
    #[arg(long)]
    ram_image: Option<PathBuf>,
    /// Firmware loaded at the start of RAM (OpenSBI fw_jump.bin).
    #[arg(long)]
    bios: Option<PathBuf>,
    /// Kernel image loaded 2 MiB into RAM.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd, loaded at the top of RAM and named in /chosen.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (/chosen/bootargs).
    #[arg(long, default_value = "")]
    append: String,
    /// A flash drive: label:NAME,filename:PATH[,shared] (repeatable; /dev/pmem0, 1, ...).
    /// With --load, names where a shared drive of the snapshot is written back at the
    /// end (matched by label; its contents come from the snapshot, not from PATH).
    #[arg(long = "flash-drive", value_parser = parse_flash_drive)]
    flash_drives: Vec<FlashArg>,
    /// Stop when mcycle reaches N (exit status 124).
    #[arg(long)]
    max_mcycle: Option<u64>,
    /// Print the machine's state hash after the summary line.
    #[arg(long)]
    final_hash: bool,
    /// When the run ends (halt or --max-mcycle), write a snapshot into DIR (must not exist).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Resume the snapshot in DIR; it carries the whole configuration and every drive's
    /// contents, so only --max-mcycle (absolute), --final-hash, --store and --flash-drive
    /// may accompany it. A snapshot names no host files: to have a shared drive written back
    /// at the end, give --flash-drive label:NAME,filename:PATH,shared again (matched by
    /// label; the file is only written, its contents come from the snapshot).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["ram_length", "ram_image", "bios", "kernel", "initrd", "append"]
    )]
    load: Option<PathBuf>,
    /// Interpret every instruction instead of running translated x86-64 code for hot
    /// integer blocks. The results (console, mcycle, hashes) are identical; this is for
    /// cross-checking the translator, at a few times the run time.
    #[arg(long)]
    no_jit: bool,
}

#[derive(Debug, Clone)]
struct FlashArg {
    label: String,
    path: PathBuf,
    shared: bool,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Instructions (millions) each benchmark program runs.
    #[arg(long, default_value_t = 200)]
    mega_instructions: u64,
    /// Skip the QEMU comparison.
    #[arg(long)]
    no_qemu: bool,
    /// Skip the Linux boot figure (otherwise run when scripts/boot-test-inputs has filled
    /// the cache, or BOOT_TEST_FW_JUMP, BOOT_TEST_VMLINUX and BOOT_TEST_INITRAMFS name the
    /// inputs).
    #[arg(long)]
    no_linux: bool,
    /// Measure the interpreter alone (no translated code).
    #[arg(long)]
    no_jit: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run(a) => run(*a),
        Command::Bench(a) => bench::run(a.mega_instructions, !a.no_qemu, !a.no_linux, !a.no_jit),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("Ki") {
        (n, 1u64 << 10)
    } else if let Some(n) = s.strip_suffix("Mi") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("Gi") {
        (n, 1 << 30)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or a number with Ki, Mi or Gi)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_flash_drive(s: &str) -> Result<FlashArg, String> {
    let (mut label, mut path, mut shared) = (None, None, false);
    for part in s.split(',') {
        match part.split_once(':') {
            Some(("label", v)) => label = Some(v.to_string()),
            Some(("filename", v)) => path = Some(PathBuf::from(v)),
            None if part == "shared" => shared = true,
            _ => {
                return Err(format!(
                    "unknown flash-drive field {part:?} (want label:NAME,filename:PATH[,shared])"
                ))
            }
        }
    }
    match (label, path) {
        (Some(label), Some(path)) => Ok(FlashArg {
            label,
            path,
            shared,
        }),
        _ => Err("a flash drive needs label:NAME and filename:PATH".into()),
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &a.store {
        machine_snapshot::check_store_target(dir)?;
    }
    let (mut machine, record, targets) = match &a.load {
        Some(dir) => {
            let (machine, record) = machine_snapshot::load(dir)?;
            let given: Vec<(String, PathBuf, bool)> = a
                .flash_drives
                .iter()
                .map(|f| (f.label.clone(), f.path.clone(), f.shared))
                .collect();
            let targets = machine_snapshot::write_back_targets(&record, &given)?;
            (machine, Some(record), targets)
        }
        None => {
            let config = build_config(&a)?;
            let record = a
                .store
                .is_some()
                .then(|| SnapshotConfig::from_config(&config));
            (Machine::new(&config)?, record, Vec::new())
        }
    };
    machine.hart.set_jit(!a.no_jit);
    let limit = a.max_mcycle.unwrap_or(u64::MAX);
    let brk = run_streaming(&mut machine, limit)?;
    if a.load.is_none() {
        for (drive, arg) in machine.bus.flash.iter().zip(&a.flash_drives) {
            if drive.shared {
                let bytes = &drive.mem.bytes()[..drive.image_length as usize];
                std::fs::write(&arg.path, bytes)
                    .with_context(|| format!("writing back flash drive {}", arg.path.display()))?;
            }
        }
    }
    machine_snapshot::finish(&mut machine, record.as_ref(), &targets, a.store.as_deref())?;
    let mcycle = machine.mcycle();
    let code = match brk {
        Break::Halted(code) => {
            eprintln!("cmbuild-machine: break=halted exit_code={code} mcycle={mcycle}");
            // Exit statuses are 8 bits: a larger guest code must still read as failure.
            ExitCode::from(code.min(255) as u8)
        }
        Break::MaxMcycle => {
            eprintln!("cmbuild-machine: break=max-mcycle mcycle={mcycle}");
            ExitCode::from(124)
        }
    };
    if a.final_hash {
        eprintln!("root_hash={}", machine.root_hash());
    }
    Ok(code)
}

/// The configuration the command line describes, images read from their files.
fn build_config(a: &RunArgs) -> anyhow::Result<MachineConfig> {
    let opt = |p: &Option<PathBuf>, what: &str| p.as_deref().map(|p| read(p, what)).transpose();
    let config = MachineConfig {
        ram_length: a.ram_length,
        ram_image: opt(&a.ram_image, "RAM image")?,
        bios: opt(&a.bios, "firmware")?,
        kernel: opt(&a.kernel, "kernel")?,
        initrd: opt(&a.initrd, "initrd")?,
        bootargs: a.append.clone(),
        flash_drives: a
            .flash_drives
            .iter()
            .map(|f| {
                Ok(FlashConfig {
                    label: f.label.clone(),
                    image: read(&f.path, "flash drive")?,
                    shared: f.shared,
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if config.ram_image.is_none() && config.bios.is_none() && config.kernel.is_none() {
        bail!("nothing to run: give --ram-image, --bios or --kernel (or --load DIR)");
    }
    Ok(config)
}

/// Runs in slices so that console output reaches stdout as the guest produces it.
fn run_streaming(machine: &mut Machine, limit: u64) -> anyhow::Result<Break> {
    const SLICE: u64 = 4_000_000;
    let mut stdout = std::io::stdout().lock();
    loop {
        let until = machine.mcycle().saturating_add(SLICE).min(limit);
        let brk = machine.run(until);
        stdout.write_all(&machine.drain_console())?;
        stdout.flush()?;
        match brk {
            Break::MaxMcycle if until < limit => continue,
            other => return Ok(other),
        }
    }
}

mod bench {
    //! Times the fixed programs of `cmbuild_machine::bench` on the machine and under
    //! `qemu-system-riscv64 -icount shift=0` (one instruction per virtual nanosecond, the
    //! deterministic mode that is QEMU's fair counterpart), in the same run.

    use super::*;
    use cmbuild_machine::bench::{integer_loop, memory_loop, Platform, Program};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    pub fn run(
        mega: u64,
        with_qemu: bool,
        with_linux: bool,
        jit: bool,
    ) -> anyhow::Result<ExitCode> {
        let instructions = mega.max(1) * 1_000_000;
        println!(
            "cmbuild: {}",
            if jit {
                "translated code for hot integer blocks (--no-jit: interpreter alone)"
            } else {
                "interpreter alone"
            }
        );
        let qemu = with_qemu && qemu_available();
        if with_qemu && !qemu {
            eprintln!("qemu-system-riscv64 not found: showing the machine's figures only");
        }
        // QEMU's start-up and shutdown, measured on a program that halts at once.
        let overhead = if qemu {
            let empty = integer_loop(1, Platform::QemuVirt);
            let runs: Vec<Duration> = (0..3)
                .map(|_| time_qemu(&empty))
                .collect::<anyhow::Result<_>>()?;
            runs.into_iter().min().unwrap_or_default()
        } else {
            Duration::ZERO
        };
        if qemu {
            println!(
                "qemu start-up overhead: {:.3} s (subtracted)",
                overhead.as_secs_f64()
            );
        }
        let mut ratios = Vec::new();
        for make in [integer_loop, memory_loop] {
            let ours = make(instructions, Platform::Cmvm);
            let secs = time_machine(&ours, jit)?;
            let mips = ours.instructions as f64 / secs / 1e6;
            print!(
                "{:<13} {:>6} M instr  cmbuild {:>8.1} MIPS ({:.3} s)",
                ours.name,
                ours.instructions / 1_000_000,
                mips,
                secs
            );
            if qemu {
                let theirs = make(instructions, Platform::QemuVirt);
                let wall = time_qemu(&theirs)?;
                let q_secs = (wall.saturating_sub(overhead)).as_secs_f64().max(1e-6);
                let q_mips = theirs.instructions as f64 / q_secs / 1e6;
                let ratio = mips / q_mips;
                ratios.push(ratio);
                print!(
                    "  qemu-icount {:>8.1} MIPS ({:.3} s)  ratio {:.2}x",
                    q_mips, q_secs, ratio
                );
            }
            println!();
        }
        if !ratios.is_empty() {
            let geo = ratios
                .iter()
                .product::<f64>()
                .powf(1.0 / ratios.len() as f64);
            println!("geometric mean ratio cmbuild/qemu-icount: {geo:.2}x (target >= 0.75x)");
        }
        if with_linux {
            linux_boot(qemu, jit)?;
        }
        Ok(ExitCode::SUCCESS)
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
    fn linux_boot(qemu: bool, jit: bool) -> anyhow::Result<()> {
        let Some(inputs) = boot_inputs() else {
            println!(
                "linux boot: skipped (no inputs cached; run scripts/boot-test-inputs, or set \
                 BOOT_TEST_FW_JUMP, BOOT_TEST_VMLINUX and BOOT_TEST_INITRAMFS)"
            );
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
        let start = Instant::now();
        let brk = m.run(20_000_000_000);
        let secs = start.elapsed().as_secs_f64();
        if !matches!(brk, Break::Halted(_)) {
            bail!("the Linux boot did not power off ({brk:?})");
        }
        let instret = m.hart.minstret();
        let mips = instret as f64 / secs / 1e6;
        print!(
            "linux boot    {:>6} M instr  cmbuild {:>8.1} MIPS ({:.3} s, mcycle {})",
            instret / 1_000_000,
            mips,
            secs,
            m.mcycle()
        );
        if qemu {
            let wall = time_qemu_boot(&inputs, APPEND)?.as_secs_f64();
            // QEMU does not report how many instructions it executed; the boot does the
            // same work there (same kernel, initramfs and command line; QEMU's virt board
            // lacks the flash drives), so its figure is the machine's instruction count
            // over QEMU's wall time, and the ratio is the ratio of wall times.
            let q_mips = instret as f64 / wall / 1e6;
            print!(
                "  qemu-icount {:>8.1} MIPS ({:.3} s)  ratio {:.2}x",
                q_mips,
                wall,
                mips / q_mips
            );
        }
        println!();
        if qemu {
            println!(
                "  (qemu: -M virt -icount shift=0,sleep=off, same kernel/initrd/append; its MIPS \
                 is cmbuild's instruction count of the boot over qemu's wall time)"
            );
        }
        Ok(())
    }

    fn time_qemu_boot(inputs: &BootInputs, append: &str) -> anyhow::Result<Duration> {
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
            .context("running qemu-system-riscv64")?;
        let elapsed = start.elapsed();
        if !status.success() {
            bail!("qemu-system-riscv64 failed on the Linux boot ({status})");
        }
        Ok(elapsed)
    }

    fn time_machine(p: &Program, jit: bool) -> anyhow::Result<f64> {
        let mut m = Machine::new(&MachineConfig {
            ram_length: 16 << 20,
            ram_image: Some(p.image.clone()),
            ..MachineConfig::default()
        })?;
        m.hart.set_jit(jit);
        let start = Instant::now();
        let brk = m.run(p.instructions.saturating_mul(2));
        let secs = start.elapsed().as_secs_f64();
        if brk != Break::Halted(0) || m.hart.minstret() != p.instructions {
            bail!(
                "{} did not halt as expected ({brk:?}, {} instructions)",
                p.name,
                m.hart.minstret()
            );
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

    fn time_qemu(p: &Program) -> anyhow::Result<Duration> {
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
            .context("running qemu-system-riscv64")?;
        let elapsed = start.elapsed();
        let _ = std::fs::remove_file(&path);
        if !status.success() {
            bail!("qemu-system-riscv64 failed on {} ({status})", p.name);
        }
        Ok(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_flash_drive_specs_parse() {
        assert_eq!(parse_size("128Mi"), Ok(128 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        let f = parse_flash_drive("label:root,filename:/tmp/x.img,shared").unwrap();
        assert_eq!(
            (f.label.as_str(), f.path.as_path(), f.shared),
            ("root", Path::new("/tmp/x.img"), true)
        );
        assert!(parse_flash_drive("label:root").is_err());
        assert!(parse_flash_drive("label:a,filename:b,bogus").is_err());
    }
}
