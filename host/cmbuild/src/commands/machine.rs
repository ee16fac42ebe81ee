//! `cmbuild machine run|bench`: arguments for `cmbuild::ops::machine` and `cmbuild::ops::bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild::ops;
use cmbuild::ops::machine::{FlashDrive, MachineRunOptions};
use cmbuild_machine::machine::Break;

use super::common::{ImageDirArg, MirrorArg, PinsArg};

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
    /// Measure the machine's speed (MIPS) beside QEMU's: fixed bare-metal loops (and a Linux
    /// boot), or a real build inside the guest image (`--workload rustc`), or resuming from
    /// the template (`--workload resume`).
    Bench(Box<BenchArgs>),
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
    /// Stop when mcycle reaches N (exit status 124). The machine also stops where the guest
    /// yields (HTIF device 2, as cmbuild's build driver does at its ready point; exit status
    /// 125): with --store, that is a template to --load and go on from.
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
    /// Append a symbol for every block of translated code to /tmp/perf-<pid>.map
    /// (`START SIZE rv:<guest pc>:<instructions>`, its slow paths
    /// `rv:<guest pc>:cold`, the code they share `rv:chain`, `rv:load`, `rv:exec`), so that `perf report` on this process
    /// names the guest blocks the host time went to. The results are unchanged.
    #[arg(long)]
    perf_map: bool,
    /// Stop the machine when it has made no visible progress (no console byte, no store to
    /// a flash drive, asleep in WFI) for this many guest seconds (128e6 mcycles each); the
    /// last console lines are printed and a snapshot is stored in --store DIR, or else in
    /// ./stalled-at-MCYCLE (exit status 2). 0 never stops it.
    #[arg(long, default_value_t = cmbuild::watchdog::DEFAULT_STALL_SECONDS, value_name = "SECONDS")]
    stall_seconds: u64,
}

#[derive(Debug, Clone)]
struct FlashArg {
    label: String,
    path: PathBuf,
    shared: bool,
}

/// What `cmbuild machine bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    /// Bare-metal integer and memory loops, and a Linux boot when its inputs are cached.
    Loops,
    /// `examples/hello` (the demo, tag v0.1.0) built for x86_64 inside the guest image,
    /// resumed from the template as `cmbuild run` does: guest instructions, wall time and
    /// MIPS, then the same build under qemu-system-riscv64 (plain TCG and -icount shift=0)
    /// and the ratios.
    Rustc,
    /// Resuming a build machine from the template, --repeat times (the median).
    Resume,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Workload::Loops)]
    workload: Workload,
    /// Measure the guest workloads this many times and report the median.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: usize,
    #[command(flatten)]
    mirror: MirrorArg,
    #[command(flatten)]
    image_dir: ImageDirArg,
    #[command(flatten)]
    pins: PinsArg,
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
    /// Append a symbol for every block of translated code to /tmp/perf-<pid>.map
    /// (`START SIZE rv:<guest pc>:<instructions>`, its slow paths
    /// `rv:<guest pc>:cold`, the code they share `rv:chain`, `rv:load`, `rv:exec`), so that `perf record` of the
    /// benchmark and `perf report` name the guest blocks.
    #[arg(long)]
    perf_map: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run(a) => run(*a),
        Command::Bench(a) if a.workload != Workload::Loops => {
            let opts = ops::bench_guest::WorkloadOptions {
                mirror_dir: a.mirror.dir.clone(),
                image_dir: Some(a.image_dir.dir.clone()),
                pins: a.pins.load()?,
                repeat: a.repeat,
                qemu: !a.no_qemu,
                jit: !a.no_jit,
                perf_map: a.perf_map,
            };
            let out = &mut std::io::stdout().lock();
            match a.workload {
                Workload::Rustc => ops::bench_guest::rustc(&opts, out)?,
                _ => ops::bench_guest::resume(&opts, out)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(a) => {
            let opts = ops::bench::BenchOptions {
                mega_instructions: a.mega_instructions,
                qemu: !a.no_qemu,
                linux: !a.no_linux,
                jit: !a.no_jit,
                perf_map: a.perf_map,
            };
            ops::bench::bench(&opts, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
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

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let opts = MachineRunOptions {
        ram_length: a.ram_length,
        ram_image: a.ram_image,
        bios: a.bios,
        kernel: a.kernel,
        initrd: a.initrd,
        append: a.append,
        flash_drives: a
            .flash_drives
            .into_iter()
            .map(|f| FlashDrive {
                label: f.label,
                path: f.path,
                shared: f.shared,
            })
            .collect(),
        max_mcycle: a.max_mcycle,
        final_hash: a.final_hash,
        store: a.store,
        load: a.load,
        jit: !a.no_jit,
        perf_map: a.perf_map,
        stall_seconds: a.stall_seconds,
    };
    let outcome = ops::machine::run(&opts, &mut std::io::stdout().lock(), &mut |line| {
        eprintln!("{line}")
    })?;
    let mcycle = outcome.mcycle;
    let code = match outcome.brk {
        Break::Halted(code) => {
            eprintln!("cmbuild-machine: break=halted exit_code={code} mcycle={mcycle}");
            // Exit statuses are 8 bits: a larger guest code must still read as failure.
            ExitCode::from(code.min(255) as u8)
        }
        Break::MaxMcycle => {
            eprintln!("cmbuild-machine: break=max-mcycle mcycle={mcycle}");
            ExitCode::from(124)
        }
        Break::Yielded(data) => {
            eprintln!("cmbuild-machine: break=yielded data={data} mcycle={mcycle}");
            ExitCode::from(125)
        }
        // Only a snapshot of a board with the offload channel gets here: this runner has
        // no host side for it, so it stops where the guest needs one.
        Break::OffloadRequest(tag) => {
            eprintln!("cmbuild-machine: break=offload-request tag={tag} mcycle={mcycle}");
            ExitCode::from(125)
        }
        Break::OffloadWaiting(tag) => {
            eprintln!("cmbuild-machine: break=offload-waiting tag={tag} mcycle={mcycle}");
            ExitCode::from(125)
        }
    };
    if let Some(hash) = outcome.root_hash {
        eprintln!("root_hash={hash}");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
