use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use cmbuild::guest::MachineSettings;
use cmbuild::progress::{ConsoleLine, LineSplitter};
use cmbuild::run::{Offload, Progress, RunOptions, RunSummary};
use cmbuild::terminal::Stream;

use super::common::{ImageDirArg, JobsArg, MirrorArg, PinsArg};

/// Build a release of the project offline, inside the deterministic machine, for every triple.
///
/// Takes REV (a tag or commit) from the project's git, makes a deterministic source archive
/// of it, checks that every crate of its Cargo.lock and every pinned guest-image input is in
/// the mirror, boots the pinned guest image on cmbuild's machine with the source and the
/// vendored crates, runs `cargo build --release --locked --offline --target T` for each
/// triple, and writes `OUT/REV/manifest.json`, `OUT/REV/machine.json` and
/// `OUT/REV/<triple>/<bin>`. The guest's cargo hands its rustc jobs to sibling machines, up
/// to --jobs at a time, each finishing at a machine cycle fixed by its own work; their
/// results are cached in the mirror, so the next release recompiles only what changed.
/// Nothing here reads the network, the host's clock or the host's toolchain: anyone
/// re-running it, with any --jobs, gets the same bytes and the same root hashes.
///
/// Examples:
///   cmbuild run --release v0.1.0
///   cmbuild run --release v0.1.0 --jobs 16
///   cmbuild run --release v0.1.0 --no-offload
///   cmbuild run --release v0.1.0 --target x86_64-unknown-linux-gnu --out /tmp/builds
///   cmbuild run --release v0.1.0 --test-reproduce
///   cmbuild run --release v0.1.0 --toolchain 1.96
///   cmbuild run --release v0.1.0 --dockerfile Dockerfile --target-stage final
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
    /// Size of each machine's input drive (the project's sources and vendored crates as
    /// one tar), in MiB. A setting of the template machine: a size other than the default
    /// derives (once) and resumes from a template of its own, whose hash is not pinned.
    #[arg(long, default_value_t = MachineSettings::default().input_length >> 20, value_name = "MIB")]
    input_mib: u64,
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
    /// Run twice, into OUT/run1 and OUT/run2, then compare the two. The second run
    /// computes every rustc job again (as with --recompute-jobs), so the comparison covers
    /// the sibling machines too.
    #[arg(long)]
    test_reproduce: bool,
    /// Append a symbol for every block of translated code of every machine (build
    /// machines and the sibling machines of offloaded jobs) to
    /// /tmp/perf-<pid>.map (`START SIZE rv:<guest pc>:<instructions>`, its slow paths
    /// `rv:<guest pc>:cold`, the code they share `rv:chain`, `rv:load`, `rv:exec`), so that
    /// `perf report` on this process names the guest blocks the host time went to. The
    /// results (artifacts, root hashes) are unchanged.
    #[arg(long)]
    perf_map: bool,
    /// Offload (the default, said explicitly; under a glibc floor too): the guest's
    /// rustc jobs for libraries, proc macros, build scripts and the project's binaries go
    /// to sibling machines, --jobs of them at a time (docs/parallel-builds.md). Each job
    /// completes in the build machine at a cycle fixed by its own instruction count, so
    /// artifacts and root hashes do not depend on --jobs or on the host; results are
    /// cached in the mirror by their inputs, so the next release recompiles only what
    /// changed.
    #[arg(long, conflicts_with = "no_offload")]
    offload: bool,
    /// Build each triple in one machine, one rustc after another (the default before
    /// recipe 4). Same artifacts, other root hashes (the board has no offload channel);
    /// slower on projects with many crates, faster on the smallest ones when the cache is
    /// cold.
    #[arg(long)]
    no_offload: bool,
    /// Compute every rustc job in a sibling machine even when the mirror's cache holds its
    /// result, and replace the entry: for a builder who vouches for a release and will not
    /// take job results from a mirror it pulled from others. Each job is computed once per
    /// run (one the scout ran ahead, or another triple's identical build script, takes
    /// this run's own result). Same artifacts and root hashes when the jobs are
    /// deterministic. `--test-reproduce` does this in its second run.
    #[arg(long, conflicts_with = "no_offload")]
    recompute_jobs: bool,
    /// No scout. By default, with --jobs above 1, a copy of each build machine runs ahead
    /// of it, its jobs answered as soon as they are computed, so that a job starts when
    /// its inputs exist rather than when the machine's time reaches it, and the host runs
    /// the longest chain of crates first (docs/parallel-builds.md, "The scout"). It
    /// changes when the host computes jobs, never what a machine sees: artifacts and root
    /// hashes are the same either way. It costs one more machine's memory and host time.
    #[arg(long, conflicts_with = "no_offload")]
    no_scout: bool,
    /// Build the image of this Dockerfile (a path in the commit, relative to the project)
    /// instead of the Rust binaries: buildah in the machine, with no network, every base
    /// image from the mirror by digest (`cmbuild vendor --dockerfile` first), times set to
    /// the commit's. Writes OUT/REV/image.tar (an OCI image layout), its digest in
    /// manifest.json, and machine.json; the same commit gives the same image digest.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["target", "profile", "offload", "toolchain", "single_machine"]
    )]
    dockerfile: Option<String>,
    /// With --dockerfile: the stage to build (buildah's --target); default the last.
    #[arg(long, value_name = "STAGE", requires = "dockerfile")]
    target_stage: Option<String>,
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
            input_length: args.input_mib.saturating_mul(1 << 20),
            max_mcycle: args.max_mcycle,
            ..MachineSettings::default()
        },
        machine_per_target: !args.single_machine,
        pins: args.pins.load()?,
        toolchain: args.toolchain.clone(),
        stall_seconds: args.stall_seconds,
        perf_map: args.perf_map,
        // `--offload` and `--no-offload` conflict; offloading is the default.
        offload: match (args.offload, args.no_offload) {
            (false, true) => Offload::Off,
            (true, _) | (false, false) => Offload::On,
        },
        recompute_jobs: args.recompute_jobs,
        scout: !args.no_scout,
    };
    let started = Instant::now();
    let printer = ProgressPrinter::new("cmbuild run");
    if let Some(dockerfile) = args.dockerfile {
        let container = cmbuild::container::ContainerOptions {
            dockerfile,
            target_stage: args.target_stage,
        };
        let progress = |event| printer.show(event);
        if !args.test_reproduce {
            let summary = cmbuild::container::run_container_release(&opts, &container, &progress)?;
            printer.clear();
            print_container_summary(&summary, started);
            return Ok(ExitCode::SUCCESS);
        }
        let mut on_run =
            |name: &str, summary: Option<&cmbuild::container::ContainerSummary>| match summary {
                None => eprintln!("== {name}"),
                Some(summary) => {
                    printer.clear();
                    print_container_summary(summary, started)
                }
            };
        let (first, _) =
            cmbuild::container::run_container_twice(&opts, &container, &progress, &mut on_run)?;
        println!(
            "reproduced: both runs gave image {} and root hash {}",
            first.manifest.image.digest, first.machine.machines[0].root_hash
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut on_run = |name: &str, summary: Option<&RunSummary>| match summary {
        None => eprintln!("== {name}"),
        Some(summary) => {
            printer.clear();
            print_summary(summary, started)
        }
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

/// A progress printer for machines. On a terminal, one bar per machine on stderr: the
/// crate cargo is compiling and its `n/N` (from the build driver's `cmbuild-progress:`
/// lines), MIPS and an ETA (from an earlier build's mcycle, else, for a machine that
/// compiles its crates itself, from the crate count), with the guest's console lines
/// (sanitised) printed above the bars; an offloaded build adds one for its sibling
/// machines (the jobs running and how long, the jobs done). Elsewhere (a log, a pipe), the
/// console goes to stdout and one pace line per machine (and one for the siblings) every
/// 10 s to stderr.
pub struct ProgressPrinter {
    label: &'static str,
    started: Instant,
    /// The bars, when stderr is a terminal.
    bars: Option<MultiProgress>,
    /// Per machine: its console and its pace.
    machines: Mutex<BTreeMap<String, MachineView>>,
    /// The sibling machines of an offloaded build.
    siblings: Mutex<SiblingsView>,
}

/// The sibling machines of an offloaded build as the printer follows them.
#[derive(Default)]
struct SiblingsView {
    /// The jobs running in siblings now: the sibling's number, its crate and start.
    running: BTreeMap<u64, (String, Instant)>,
    /// Siblings that ended.
    done: u64,
    /// When the last line was printed (lines only).
    printed: Option<Instant>,
    /// Its bar, when there are bars (made at the first sibling).
    bar: Option<ProgressBar>,
}

/// The siblings' line: the jobs running (longest first, the first [`SHOWN_JOBS`] named,
/// with the seconds each has run) and the siblings that ended. (Jobs answered from the
/// cache, or by another machine's identical job, need no sibling; the run's summary
/// counts them.)
fn siblings_line(running: &[(&str, f64)], done: u64) -> String {
    let mut running: Vec<&(&str, f64)> = running.iter().collect();
    running.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let mut line = match running.len() {
        0 => "none running".to_owned(),
        n => {
            let named: Vec<String> = running
                .iter()
                .take(SHOWN_JOBS)
                .map(|(name, secs)| format!("{name} {secs:.0}s"))
                .collect();
            let more = match n.saturating_sub(SHOWN_JOBS) {
                0 => String::new(),
                more => format!(" and {more} more"),
            };
            format!("{n} running: {}{more}", named.join(", "))
        }
    };
    line.push_str(&format!("; {done} done"));
    line
}

/// How many running jobs the siblings' line names.
const SHOWN_JOBS: usize = 4;

/// A machine's ETA from `elapsed` seconds into the run: the mcycle an earlier build of the
/// same targets ended at (`expected`) at its pace of `mips`; else, for a machine of one
/// triple that compiles its crates itself, from the share of crates cargo started
/// (`started`: n of N, which errs long since N bounds the crates from above). None for a
/// machine that offloads without an earlier build: cargo starts its crates long before
/// the siblings finish them, so their count says little of what is left.
fn eta(
    expected: Option<u64>,
    mcycle: u64,
    mips: f64,
    started: Option<(u32, u32)>,
    offloads: bool,
    one_triple: bool,
    elapsed: f64,
) -> Option<String> {
    match (expected, started) {
        (Some(end), _) if end > mcycle && mips > 0.0 => {
            Some(format!("ETA {:.0}s", (end - mcycle) as f64 / (mips * 1e6)))
        }
        (None, Some((n, total))) if !offloads && one_triple && n > 0 && total > n => Some(format!(
            "ETA ~{:.0}s",
            elapsed * f64::from(total - n) / f64::from(n)
        )),
        _ => None,
    }
}

/// One machine as the printer follows it.
struct MachineView {
    stream: Stream,
    lines: LineSplitter,
    /// The last `cmbuild-progress:` line: crate and version, n, N.
    compiling: Option<(String, u32, u32)>,
    /// When its pace was last measured, and its mcycle and idle cycles then.
    last: (Instant, u64, u64),
    /// Its MIPS over the last measured stretch.
    mips: f64,
    /// Its bar, when there are bars.
    bar: Option<ProgressBar>,
}

/// A machine's pace over `seconds` in which its mcycle moved by `cycles`, of which it ran
/// instructions for `ran` (the rest asleep). An offloaded build machine (`offloads`) stops
/// or sleeps between reports to wait for the host: it runs no further than its jobs'
/// answers allow, and follows them asleep as they come. Another machine mostly asleep is
/// just that (its guest waits for a timer).
fn pace(cycles: u64, ran: u64, seconds: f64, offloads: bool) -> String {
    match (ran.saturating_mul(20) <= cycles, offloads) {
        (true, true) => "waiting for its offloaded jobs".to_owned(),
        (true, false) => "asleep".to_owned(),
        (false, _) => format!("{:.0} MIPS", ran as f64 / seconds.max(1e-3) / 1e6),
    }
}

/// How often the pace is measured (bars) or printed (lines).
const PACE_EVERY: Duration = Duration::from_secs(2);
const LINE_EVERY: Duration = Duration::from_secs(10);

impl ProgressPrinter {
    pub fn new(label: &'static str) -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        ProgressPrinter {
            label,
            started: Instant::now(),
            bars,
            machines: Mutex::new(BTreeMap::new()),
            siblings: Mutex::new(SiblingsView::default()),
        }
    }

    /// Shows the siblings' state: on their bar, or as a line if `LINE_EVERY` has passed
    /// since the last.
    fn show_siblings(&self) {
        let mut view = self.siblings.lock().expect("progress lock");
        if view.running.is_empty() && view.done == 0 {
            return;
        }
        let running: Vec<(&str, f64)> = view
            .running
            .values()
            .map(|(name, at)| (name.as_str(), at.elapsed().as_secs_f64()))
            .collect();
        let line = siblings_line(&running, view.done);
        match &self.bars {
            Some(bars) => {
                let bar = view.bar.get_or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:>28} {msg}")
                            .expect("a valid template"),
                    );
                    bar.set_prefix("sibling machines");
                    bar
                });
                bar.set_message(line);
            }
            None => {
                if view.printed.is_some_and(|at| at.elapsed() < LINE_EVERY) {
                    return;
                }
                view.printed = Some(Instant::now());
                eprintln!("{}: [siblings] {line}", self.label);
            }
        }
    }

    /// Takes the bars off the terminal (before a summary is printed; a later run gets new
    /// ones), and forgets the siblings (a later run counts its own).
    pub fn clear(&self) {
        if let Some(bars) = &self.bars {
            let _ = bars.clear();
            self.machines.lock().expect("progress lock").clear();
        }
        *self.siblings.lock().expect("progress lock") = SiblingsView::default();
    }

    /// Prints a line above the bars, or to stderr.
    fn note(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn show(&self, event: Progress) {
        let label = self.label;
        match event {
            Progress::Phase(text) => self.note(&format!("{label}: {text}")),
            Progress::SiblingStarted { id, name } => {
                let mut view = self.siblings.lock().expect("progress lock");
                view.running.insert(id, (name, Instant::now()));
                drop(view);
                self.show_siblings();
            }
            Progress::SiblingEnded { id } => {
                let mut view = self.siblings.lock().expect("progress lock");
                view.running.remove(&id);
                view.done += 1;
                drop(view);
                self.show_siblings();
            }
            Progress::JobDone {
                name,
                cycles,
                seconds,
                cached,
            } => {
                if !cached {
                    self.note(&format!(
                        "{label}: offload: {name}: {:.2}e9 instructions in {seconds:.1} s \
                         ({:.0} MIPS)",
                        cycles as f64 / 1e9,
                        cycles as f64 / 1e6 / seconds.max(1e-3),
                    ));
                }
            }
            Progress::Machine {
                name,
                mcycle,
                idle_cycles,
                offloads,
                expected_mcycle,
                console,
            } => {
                let mut machines = self.machines.lock().expect("progress lock");
                let view = machines.entry(name.clone()).or_insert_with(|| MachineView {
                    stream: Stream::default(),
                    lines: LineSplitter::default(),
                    compiling: None,
                    // Its pace is measured from its first event (a machine resumes
                    // long after the run began, at the template's mcycle).
                    last: (Instant::now(), mcycle, idle_cycles),
                    mips: 0.0,
                    bar: self.bars.as_ref().map(|bars| {
                        let bar = bars.add(ProgressBar::new(0));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix:>28} [{bar:24}] {pos}/{len} {msg}",
                            )
                            .expect("a valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(name.clone());
                        bar
                    }),
                });
                let text = view.stream.push(&console);
                let lines = view.lines.push(&text);
                for line in &lines {
                    if let Some(ConsoleLine::Compiling {
                        target,
                        n,
                        total,
                        krate,
                        version,
                    }) = ConsoleLine::parse(line.trim_end())
                    {
                        // A machine building several triples says which one.
                        let what = if name == target.as_str() {
                            format!("{krate} {version}")
                        } else {
                            format!("{target}: {krate} {version}")
                        };
                        view.compiling = Some((what, n, total));
                    }
                }
                match &self.bars {
                    Some(bars) => {
                        for line in &lines {
                            let _ = bars.println(line.trim_end());
                        }
                    }
                    None => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(text.as_bytes());
                        let _ = out.flush();
                    }
                }
                let every = if view.bar.is_some() {
                    PACE_EVERY
                } else {
                    LINE_EVERY
                };
                let elapsed = view.last.0.elapsed();
                if elapsed < every {
                    return;
                }
                // Its pace is that of the instructions it ran, not of its mcycle: an
                // offloaded build machine's mcycle moves on, asleep, as its jobs' answers
                // come (at the cycles they fix), while the host runs the siblings.
                let cycles = mcycle.saturating_sub(view.last.1);
                let ran = cycles.saturating_sub(idle_cycles.saturating_sub(view.last.2));
                view.last = (Instant::now(), mcycle, idle_cycles);
                // The ETA goes by mcycle, as the estimate of the end does.
                view.mips = cycles as f64 / elapsed.as_secs_f64() / 1e6;
                let total_elapsed = self.started.elapsed().as_secs_f64();
                // A machine building several triples counts its crates again for each.
                let eta = eta(
                    expected_mcycle,
                    mcycle,
                    view.mips,
                    view.compiling.as_ref().map(|(_, n, total)| (*n, *total)),
                    offloads,
                    !name.contains(','),
                    total_elapsed,
                )
                .map(|eta| format!(", {eta}"))
                .unwrap_or_default();
                let pace = format!(
                    "{}, {total_elapsed:.0}s{eta}",
                    pace(cycles, ran, elapsed.as_secs_f64(), offloads)
                );
                match (&view.bar, &view.compiling) {
                    (Some(bar), Some((what, n, total))) => {
                        bar.set_length(u64::from(*total));
                        bar.set_position(u64::from(*n));
                        bar.set_message(format!("{what} | {pace}"));
                    }
                    (Some(bar), None) => {
                        bar.set_message(format!("booting | mcycle {mcycle} | {pace}"))
                    }
                    (None, compiling) => {
                        let crate_now = match (compiling, offloads) {
                            (Some((what, n, total)), false) => format!(" {n}/{total} {what} |"),
                            (Some((what, n, total)), true) => {
                                format!(" {n}/{total} crates started, last {what} |")
                            }
                            (None, _) => String::new(),
                        };
                        eprintln!("{label}: [{name}]{crate_now} mcycle {mcycle} ({pace})");
                    }
                }
                drop(machines);
                self.show_siblings();
            }
            Progress::MachineDone {
                name,
                mcycle,
                exit_code,
            } => {
                let text = format!(
                    "halted, exit code {} at mcycle {mcycle}",
                    exit_code.map_or("?".into(), |c| c.to_string())
                );
                let machines = self.machines.lock().expect("progress lock");
                match machines.get(&name).and_then(|view| view.bar.as_ref()) {
                    Some(bar) => bar.finish_with_message(text),
                    None => self.note(&format!("{label}: [{name}] {text}")),
                }
            }
        }
    }
}

fn print_container_summary(summary: &cmbuild::container::ContainerSummary, started: Instant) {
    let m = &summary.manifest;
    println!(
        "release {} (commit {}): {}",
        m.release, m.commit, m.dockerfile
    );
    println!(
        "  image {} ({}), config {}",
        m.image.digest, m.image.platform, m.image.config
    );
    println!(
        "  {} {} bytes {}",
        m.image.archive, m.image.archive_size, m.image.archive_cid
    );
    for base in &m.base_images {
        println!("  base {} -> {}", base.reference, base.manifest);
    }
    for run in &summary.machine.machines {
        println!(
            "  machine [{}] {} mcycle {}",
            run.targets.join(","),
            run.root_hash,
            run.mcycle
        );
    }
    eprintln!(
        "cmbuild run: wrote {} in {:.0}s",
        summary.dir.display(),
        started.elapsed().as_secs_f64()
    );
}

fn print_summary(summary: &RunSummary, started: Instant) {
    println!(
        "release {} (commit {})",
        summary.manifest.release, summary.manifest.commit
    );
    for a in &summary.manifest.artifacts {
        println!("  {:<30} {:<12} {}  {}", a.target, a.bin, a.sha256, a.cid);
        if let Some(abi) = &a.abi {
            // Which systems it will not start on, and the floor it was linked against.
            let floor = a
                .glibc_floor
                .as_ref()
                .map(|f| format!("glibc floor {f}: "))
                .unwrap_or_default();
            println!("  {:<30} {:<12} {floor}{}", "", "", abi.summary());
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

#[cfg(test)]
mod tests {
    use super::{eta, pace, siblings_line};

    #[test]
    fn the_siblings_line_names_the_longest_running_jobs_first() {
        assert_eq!(siblings_line(&[], 0), "none running; 0 done");
        assert_eq!(
            siblings_line(&[("syn", 12.2), ("rustix", 41.0)], 19),
            "2 running: rustix 41s, syn 12s; 19 done"
        );
        let many = [
            ("a", 1.0),
            ("b", 2.0),
            ("c", 3.0),
            ("d", 4.0),
            ("e", 5.0),
            ("f", 6.0),
        ];
        assert_eq!(
            siblings_line(&many, 7),
            "6 running: f 6s, e 5s, d 4s, c 3s and 2 more; 7 done"
        );
    }

    #[test]
    fn an_offloading_machine_without_an_earlier_build_shows_no_eta() {
        // 25 of 112 crates started after 800 s: a machine compiling them itself is a
        // quarter through; an offloading one may be nearly done or far from it.
        let started = Some((25, 112));
        assert_eq!(
            eta(None, 0, 100.0, started, false, true, 800.0).as_deref(),
            Some("ETA ~2784s")
        );
        assert_eq!(eta(None, 0, 100.0, started, true, true, 800.0), None);
        // Several triples in one machine: cargo counts again for each.
        assert_eq!(eta(None, 0, 100.0, started, false, false, 800.0), None);
        // An earlier build's end gives an ETA either way, at the machine's pace.
        for offloads in [false, true] {
            assert_eq!(
                eta(
                    Some(10_000_000_000),
                    4_000_000_000,
                    200.0,
                    started,
                    offloads,
                    true,
                    800.0
                )
                .as_deref(),
                Some("ETA 30s")
            );
        }
        // Past that end: no ETA rather than a negative one.
        assert_eq!(eta(Some(1), 2, 200.0, started, true, true, 800.0), None);
    }

    #[test]
    fn a_machine_s_pace_is_what_it_ran_and_asleep_it_is_waiting() {
        assert_eq!(pace(5_000_000_000, 5_000_000_000, 10.0, true), "500 MIPS");
        // Its mcycle moved on by 5e9 while it ran 1e9 instructions: 100 MIPS, not 500.
        assert_eq!(pace(5_000_000_000, 1_000_000_000, 10.0, true), "100 MIPS");
        // Following its jobs' answers asleep, or not moved at all: waiting.
        assert_eq!(
            pace(5_000_000_000, 1_000_000, 10.0, true),
            "waiting for its offloaded jobs"
        );
        assert_eq!(pace(0, 0, 10.0, true), "waiting for its offloaded jobs");
        // A machine that offloads nothing and sleeps waits for no job.
        assert_eq!(pace(5_000_000_000, 1_000_000, 10.0, false), "asleep");
        assert_eq!(pace(5_000_000_000, 5_000_000_000, 10.0, false), "500 MIPS");
    }
}
