use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use cmbuild::guest::MachineSettings;
use cmbuild::progress::{ConsoleLine, LineSplitter};
use cmbuild::run::{Progress, RunOptions, RunSummary};
use cmbuild::terminal::Stream;

use super::common::{ImageDirArg, JobsArg, MirrorArg, PinsArg};

/// Build a release of the project offline, inside the deterministic machine, for every triple.
///
/// Takes REV (a tag or commit) from the project's git, makes a deterministic source archive
/// of it, checks that every crate of its Cargo.lock and every pinned guest-image input is in
/// the mirror, boots the pinned guest image on cmbuild's machine with the source and the
/// vendored crates, runs `cargo build --release --locked --offline --target T` for each
/// triple, and writes `OUT/REV/manifest.json`, `OUT/REV/machine.json` and
/// `OUT/REV/<triple>/<bin>`. Nothing here reads the network, the host's clock or the host's
/// toolchain: anyone re-running it gets the same bytes and the same root hashes.
///
/// Examples:
///   cmbuild run --release v0.1.0
///   cmbuild run --release v0.1.0 --target x86_64-unknown-linux-gnu --out /tmp/builds
///   cmbuild run --release v0.1.0 --test-reproduce
///   cmbuild run --release v0.1.0 --toolchain 1.96
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The tag or commit to build.
    #[arg(long, value_name = "REV")]
    release: String,
    /// The project (any directory inside its git repository).
    #[arg(long, default_value = ".", value_name = "DIR")]
    project: PathBuf,
    /// One target triple, or `all` (the triples of cmbuild.toml, by default
    /// x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu and riscv64gc-unknown-linux-gnu).
    #[arg(long, value_name = "TRIPLE")]
    target: Option<String>,
    /// A profile of cmbuild.toml (packages, bins, features).
    #[arg(long)]
    profile: Option<String>,
    /// The pinned Rust toolchain to build with (each pinned toolchain is an image layer
    /// over the base): `stable` (the newest pinned), `1.96` (the newest pinned 1.96.x) or
    /// `1.96.0`. Default: the channel of the commit's rust-toolchain / rust-toolchain.toml,
    /// else the default pinned toolchain. A channel no pinned toolchain matches, or a
    /// package whose rust-version is newer, fails before any machine boots, listing the
    /// pinned ones.
    #[arg(long, value_name = "VERSION")]
    toolchain: Option<String>,
    /// Where REV/ is written.
    #[arg(long, default_value = "builds", value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    mirror: MirrorArg,
    #[command(flatten)]
    image_dir: ImageDirArg,
    #[command(flatten)]
    jobs: JobsArg,
    /// Build all triples in one machine instead of one machine per triple.
    #[arg(long)]
    single_machine: bool,
    /// RAM of each machine, in MiB.
    #[arg(long, default_value_t = MachineSettings::default().ram_length >> 20, value_name = "MIB")]
    ram_mib: u64,
    /// Stop a machine that has not halted by this mcycle (the run then fails).
    #[arg(long, default_value_t = MachineSettings::default().max_mcycle, value_name = "N")]
    max_mcycle: u64,
    /// Stop a machine that has made no visible progress (no console byte, no write to a
    /// drive, asleep in WFI) for this many guest seconds, with its last console lines and a
    /// snapshot in OUT to debug from (the run then fails); 0 never stops one.
    #[arg(long, default_value_t = cmbuild::watchdog::DEFAULT_STALL_SECONDS, value_name = "SECONDS")]
    stall_seconds: u64,
    #[command(flatten)]
    pins: PinsArg,
    /// Run twice, into OUT/run1 and OUT/run2, then compare the two.
    #[arg(long)]
    test_reproduce: bool,
    /// Append a symbol for every block of translated code of every machine to
    /// /tmp/perf-<pid>.map (`START SIZE rv:<guest pc>:<instructions>`), so that
    /// `perf report` on this process names the guest blocks the host time went to. The
    /// results (artifacts, root hashes) are unchanged.
    #[arg(long)]
    perf_map: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let opts = RunOptions {
        project_dir: args.project.clone(),
        rev: args.release.clone(),
        target: args.target.clone(),
        profile: args.profile.clone(),
        out_dir: args.out.clone(),
        mirror_dir: args.mirror.dir.clone(),
        image_dir: Some(args.image_dir.dir.clone()),
        jobs: args.jobs.get(),
        machine: MachineSettings {
            ram_length: args.ram_mib.saturating_mul(1 << 20),
            max_mcycle: args.max_mcycle,
            ..MachineSettings::default()
        },
        machine_per_target: !args.single_machine,
        pins: args.pins.load()?,
        toolchain: args.toolchain.clone(),
        stall_seconds: args.stall_seconds,
        perf_map: args.perf_map,
    };
    let started = Instant::now();
    let printer = ProgressPrinter::new("cmbuild run");
    let mut on_run = |name: &str, summary: Option<&RunSummary>| match summary {
        None => eprintln!("== {name}"),
        Some(summary) => print_summary(summary, started),
    };
    let report = cmbuild::ops::run::run(
        &opts,
        args.test_reproduce,
        &|event| printer.show(event),
        &mut on_run,
    )?;
    Ok(match report {
        Some(report) => super::compare::print_report(&report),
        None => ExitCode::SUCCESS,
    })
}

/// A progress printer for machines: the guest's console goes to stdout (sanitised), the
/// machine's pace to stderr: the crate cargo is compiling and its `n/N` (from the build
/// driver's `cmbuild-progress:` lines), mcycle, MIPS, and an ETA (from an earlier build's
/// mcycle, else from the crate count).
pub struct ProgressPrinter {
    label: &'static str,
    started: Instant,
    /// Per machine: when its pace was last printed, and its mcycle then.
    last: Mutex<BTreeMap<String, (Instant, u64)>>,
    /// Per machine: its console, being sanitised and split into lines, and what it said.
    consoles: Mutex<BTreeMap<String, Console>>,
}

/// One machine's console as the printer follows it.
#[derive(Default)]
struct Console {
    stream: Stream,
    lines: LineSplitter,
    /// The last `cmbuild-progress:` line: `T n/N crate version`, and n, N.
    compiling: Option<(String, u32, u32)>,
}

impl ProgressPrinter {
    pub fn new(label: &'static str) -> Self {
        ProgressPrinter {
            label,
            started: Instant::now(),
            last: Mutex::new(BTreeMap::new()),
            consoles: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn show(&self, event: Progress) {
        let label = self.label;
        match event {
            Progress::Phase(text) => eprintln!("{label}: {text}"),
            Progress::Machine {
                name,
                mcycle,
                expected_mcycle,
                console,
            } => {
                let (text, compiling) = {
                    let mut consoles = self.consoles.lock().expect("progress lock");
                    let state = consoles.entry(name.clone()).or_default();
                    let text = state.stream.push(&console);
                    for line in state.lines.push(&text) {
                        if let Some(ConsoleLine::Compiling {
                            target,
                            n,
                            total,
                            krate,
                            version,
                        }) = ConsoleLine::parse(line.trim_end())
                        {
                            state.compiling =
                                Some((format!("{target} {krate} {version}"), n, total));
                        }
                    }
                    (text, state.compiling.clone())
                };
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                let mut all = self.last.lock().expect("progress lock");
                let last = all.entry(name.clone()).or_insert((self.started, 0));
                let elapsed = last.0.elapsed().as_secs_f64();
                if elapsed >= 10.0 {
                    let mips = mcycle.saturating_sub(last.1) as f64 / elapsed / 1e6;
                    let total_elapsed = self.started.elapsed().as_secs_f64();
                    let eta = match (expected_mcycle, &compiling) {
                        (Some(end), _) if end > mcycle && mips > 0.0 => {
                            format!(", ETA {:.0}s", (end - mcycle) as f64 / (mips * 1e6))
                        }
                        // N bounds n from above, so this errs long; it is a rough guide.
                        (None, Some((_, n, total))) if *n > 0 && total > n => format!(
                            ", ETA ~{:.0}s",
                            total_elapsed * f64::from(total - n) / f64::from(*n)
                        ),
                        _ => String::new(),
                    };
                    let crate_now = match &compiling {
                        Some((what, n, total)) => format!(" {n}/{total} {what} |"),
                        None => String::new(),
                    };
                    eprintln!(
                        "{label}: [{name}]{crate_now} mcycle {mcycle} ({mips:.0} MIPS, {total_elapsed:.0}s elapsed{eta})"
                    );
                    *last = (Instant::now(), mcycle);
                }
            }
            Progress::MachineDone {
                name,
                mcycle,
                exit_code,
            } => eprintln!(
                "{label}: [{name}] halted, exit code {} at mcycle {mcycle}",
                exit_code.map_or("?".into(), |c| c.to_string())
            ),
        }
    }
}

fn print_summary(summary: &RunSummary, started: Instant) {
    println!(
        "release {} (commit {})",
        summary.manifest.release, summary.manifest.commit
    );
    for a in &summary.manifest.artifacts {
        println!("  {:<30} {:<12} {}  {}", a.target, a.bin, a.sha256, a.cid);
        if let Some(abi) = &a.abi {
            println!("  {:<30} {:<12} {}", "", "", abi.summary());
        }
    }
    for m in &summary.machine.machines {
        println!(
            "  machine [{}] {} mcycle {}",
            m.targets.join(","),
            m.root_hash,
            m.mcycle
        );
    }
    eprintln!(
        "cmbuild run: wrote {} in {:.0}s",
        summary.dir.display(),
        started.elapsed().as_secs_f64()
    );
}
