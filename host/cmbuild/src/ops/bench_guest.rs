//! The guest workloads of `cmbuild machine bench`: resuming build machines from the
//! template (`resume`), and a real build (`rustc`): `examples/hello` compiled for x86_64
//! inside the guest image, started from the template exactly as `cmbuild run` starts it
//! (the same plan, input drive and template: [`crate::run`]'s own functions), and, when
//! `qemu-system-riscv64` is installed, the same build in the same image under QEMU's TCG,
//! plain and with `-icount shift=0` ([`crate::qemu`]).
//!
//! The project is the demo's: `examples/hello` as a git repository with the identity and
//! dates of `scripts/demo`, tagged v0.1.0, so its commit, and the build's root hash, are
//! the demo's (the README publishes that hash).
//!
//! Wall times on a shared host are noisy: the figures that count are the ratios, measured in
//! the same run (`--repeat N` takes the median of N).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cmbuild_image::triple::Triple;
use cmbuild_machine::machine::{Break, Machine};

use crate::guest::MachineSettings;
use crate::perf_map::PerfMap;
use crate::pins::Pins;
use crate::plan;
use crate::run::{self, Progress, ReleaseInputs, RunOptions};

/// The demo project's files (`examples/hello`), embedded so that the workload is the same
/// wherever cmbuild runs.
const HELLO_FILES: &[(&str, &[u8])] = &[
    (
        "Cargo.toml",
        include_bytes!("../../../../examples/hello/Cargo.toml"),
    ),
    (
        "Cargo.lock",
        include_bytes!("../../../../examples/hello/Cargo.lock"),
    ),
    (
        "src/main.rs",
        include_bytes!("../../../../examples/hello/src/main.rs"),
    ),
];

/// The demo's tag.
const HELLO_REV: &str = "v0.1.0";

/// The triple the workload builds.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Why a guest workload failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The demo project could not be made.
    #[error("making the demo project in {}: {message}", .dir.display())]
    Project {
        /// Where.
        dir: PathBuf,
        /// What failed.
        message: String,
    },
    /// The run pipeline failed (plan, inputs, template).
    #[error(transparent)]
    Run(#[from] run::RunError),
    /// The machine could not be resumed.
    #[error("resuming from the template")]
    Template(#[from] crate::template::TemplateError),
    /// The build did not end as it must.
    #[error("{0}")]
    Failed(String),
    /// QEMU failed.
    #[error(transparent)]
    Qemu(#[from] crate::qemu::QemuError),
    /// The perf map could not be written.
    #[error(transparent)]
    PerfMap(#[from] crate::perf_map::PerfMapError),
    /// File I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a guest workload needs: where the mirror and the image are, and how to measure.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// The mirror (`cmbuild run`'s `--mirror`).
    pub mirror_dir: PathBuf,
    /// The image directory (`cmbuild run`'s `--image-dir`).
    pub image_dir: Option<PathBuf>,
    /// The pins.
    pub pins: Pins,
    /// Times each measurement is taken (the median is reported).
    pub repeat: usize,
    /// Compare with QEMU (when installed).
    pub qemu: bool,
    /// Run translated code for hot blocks (else the interpreter alone).
    pub jit: bool,
    /// Append the translated blocks' symbols to `/tmp/perf-<pid>.map`.
    pub perf_map: bool,
}

/// The run pipeline's inputs of the demo build, ready to resume machines from.
struct Prepared {
    _dir: tempfile::TempDir,
    inputs: ReleaseInputs,
    input_drive: Vec<u8>,
    opts: RunOptions,
}

/// Makes the demo project in a temporary directory and runs the pipeline up to the
/// machines: the plan, the inputs from the mirror (image, crates, template) and the input
/// drive of the x86_64 build. Prints how long the steps took.
fn prepare(opts: &WorkloadOptions, out: &mut dyn Write) -> Result<Prepared, WorkloadError> {
    let dir = tempfile::Builder::new()
        .prefix("cmbuild-bench-")
        .tempdir()?;
    let project = dir.path().join("hello");
    make_demo_project(&project)?;
    let run_opts = RunOptions {
        project_dir: project,
        rev: HELLO_REV.into(),
        target: Some(TARGET.into()),
        profile: None,
        out_dir: dir.path().join("builds"),
        mirror_dir: opts.mirror_dir.clone(),
        image_dir: opts.image_dir.clone(),
        jobs: 1,
        machine: MachineSettings::default(),
        machine_per_target: true,
        pins: opts.pins.clone(),
        toolchain: None,
        stall_seconds: 0,
        perf_map: opts.perf_map,
        offload: crate::run::Offload::Off,
        recompute_jobs: false,
        scout: false,
    };
    std::fs::create_dir(&run_opts.out_dir)?;
    let started = Instant::now();
    let phases = std::sync::Mutex::new(Vec::new());
    let note = |p: Progress| {
        if let Progress::Phase(text) = p {
            let mut phases = phases.lock().expect("no panics hold this lock");
            phases.push(format!(
                "  {:6.2} s  {text}",
                started.elapsed().as_secs_f64()
            ));
        }
    };
    let job = run::plan_release(&run_opts, &note)?;
    let inputs = run::gather_inputs(&run_opts, &job, &note)?;
    for line in phases.into_inner().expect("no panics hold this lock") {
        writeln!(out, "{line}")?;
    }
    let triple: Triple = TARGET
        .parse()
        .map_err(|_| WorkloadError::Failed(format!("{TARGET} is not a triple of this cmbuild")))?;
    let input_drive = plan::build_input_drive(
        &job.plan.for_targets(&[triple]),
        &job.source_tar,
        &inputs.vendor_tar,
        plan::GUEST_CARGO_CONFIG,
        None,
    )
    .map_err(run::RunError::from)?;
    writeln!(
        out,
        "inputs: plan, image, crates and template of {HELLO_REV} ({TARGET}) in {:.2} s; \
         template {} (mcycle {})",
        started.elapsed().as_secs_f64(),
        inputs.template.record.root_hash,
        inputs.template.record.mcycle
    )?;
    Ok(Prepared {
        _dir: dir,
        inputs,
        input_drive,
        opts: run_opts,
    })
}

/// `--workload resume`: resumes `repeat` build machines from the template (as `cmbuild run`
/// does before each build) and reports the median time.
pub fn resume(opts: &WorkloadOptions, out: &mut dyn Write) -> Result<(), WorkloadError> {
    let prepared = prepare(opts, out)?;
    let mut times = Vec::new();
    for _ in 0..opts.repeat.max(1) {
        let started = Instant::now();
        let (machine, _) = run::resume_build(&prepared.inputs, &prepared.input_drive, None)?;
        times.push(started.elapsed());
        let mcycle = machine.mcycle();
        let dropping = Instant::now();
        drop(machine);
        writeln!(
            out,
            "resumed a build machine at mcycle {mcycle} in {:.3} s (dropped in {:.3} s)",
            times.last().map_or(0.0, Duration::as_secs_f64),
            dropping.elapsed().as_secs_f64()
        )?;
    }
    writeln!(
        out,
        "resume: median {:.3} s over {} (min {:.3} s, max {:.3} s)",
        median(&times).as_secs_f64(),
        times.len(),
        times
            .iter()
            .min()
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        times
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
    )?;
    Ok(())
}

/// One build of the demo on the machine.
struct BuildFigures {
    resume: Duration,
    run: Duration,
    /// The machine thread's CPU time over `run`.
    cpu: Duration,
    hash: Duration,
    instructions: u64,
    mcycle: u64,
    root_hash: String,
}

/// `--workload rustc`: the demo's x86_64 build from the template, `repeat` times, then
/// under QEMU.
pub fn rustc(opts: &WorkloadOptions, out: &mut dyn Write) -> Result<(), WorkloadError> {
    let prepared = prepare(opts, out)?;
    let mut runs = Vec::new();
    for i in 0..opts.repeat.max(1) {
        let figures = build_on_machine(&prepared, opts, i == 0)?;
        writeln!(
            out,
            "cmbuild  build {}: {} M guest instructions in {:.1} s (CPU {:.1} s) = {:.0} MIPS \
             (resume {:.2} s, final hash {:.2} s); halted at mcycle {}, root hash {}",
            i + 1,
            figures.instructions / 1_000_000,
            figures.run.as_secs_f64(),
            figures.cpu.as_secs_f64(),
            figures.instructions as f64 / figures.run.as_secs_f64() / 1e6,
            figures.resume.as_secs_f64(),
            figures.hash.as_secs_f64(),
            figures.mcycle,
            figures.root_hash
        )?;
        runs.push(figures);
    }
    let run_times: Vec<Duration> = runs.iter().map(|f| f.run).collect();
    let cpu_times: Vec<Duration> = runs.iter().map(|f| f.cpu).collect();
    let ours = median(&run_times);
    let ours_cpu = median(&cpu_times);
    let instructions = runs[0].instructions;
    writeln!(
        out,
        "cmbuild: median {:.1} s (CPU {:.1} s), {:.0} MIPS, {:.0} MIPS of CPU time ({} M guest \
         instructions, translator {})",
        ours.as_secs_f64(),
        ours_cpu.as_secs_f64(),
        instructions as f64 / ours.as_secs_f64() / 1e6,
        instructions as f64 / ours_cpu.as_secs_f64() / 1e6,
        instructions / 1_000_000,
        if opts.jit { "on" } else { "off" }
    )?;
    if !opts.qemu {
        return Ok(());
    }
    if !crate::qemu::available() {
        writeln!(
            out,
            "qemu-system-riscv64 not found: showing the machine's figures only"
        )?;
        return Ok(());
    }
    for icount in [false, true] {
        let mode = if icount { "qemu-icount" } else { "qemu-tcg" };
        let mut times = Vec::new();
        let mut cpu_times = Vec::new();
        for i in 0..opts.repeat.max(1) {
            let timing = build_under_qemu(&prepared, icount)?;
            writeln!(
                out,
                "{mode:<8} build {}: {:.1} s (CPU {}) (boot to the ready point {:.1} s, not \
                 counted)",
                i + 1,
                timing.build.as_secs_f64(),
                timing
                    .build_cpu
                    .map_or("unknown".into(), |c| format!("{:.1} s", c.as_secs_f64())),
                timing.boot.as_secs_f64()
            )?;
            times.push(timing.build);
            cpu_times.extend(timing.build_cpu);
        }
        let theirs = median(&times);
        write!(
            out,
            "{mode}: median {:.1} s, {:.0} MIPS (cmbuild's instruction count over QEMU's wall \
             time); cmbuild/{mode} speed ratio {:.2}x wall",
            theirs.as_secs_f64(),
            instructions as f64 / theirs.as_secs_f64() / 1e6,
            theirs.as_secs_f64() / ours.as_secs_f64()
        )?;
        if cpu_times.len() == times.len() {
            write!(
                out,
                ", {:.2}x CPU time",
                median(&cpu_times).as_secs_f64() / ours_cpu.as_secs_f64()
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "  (qemu: -M virt -smp 1, the same image, kernel command line and input; its time runs \
         from the driver's ready-point line to its last line, as cmbuild's runs from the \
         resumed template to halt)"
    )?;
    Ok(())
}

/// Resumes the demo's build machine and runs it to halt.
fn build_on_machine(
    prepared: &Prepared,
    opts: &WorkloadOptions,
    first: bool,
) -> Result<BuildFigures, WorkloadError> {
    let started = Instant::now();
    let (mut machine, _) = run::resume_build(&prepared.inputs, &prepared.input_drive, None)?;
    let resume = started.elapsed();
    machine.hart.set_jit(opts.jit);
    // The first build's symbols are enough for a profile (later ones reuse the addresses).
    let mut map = PerfMap::open_if(opts.perf_map && first, &mut machine)?;
    let instret = machine.hart.minstret();
    let max_mcycle = prepared.opts.machine.max_mcycle;
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    let code = loop {
        let limit = (machine.mcycle() + 1_000_000_000).min(max_mcycle);
        let stop = machine.run(limit);
        if let Some(map) = &mut map {
            map.drain(&mut machine)?;
        }
        machine.drain_console();
        match stop {
            Break::Halted(code) => break code,
            Break::MaxMcycle if machine.mcycle() >= max_mcycle => {
                return Err(WorkloadError::Failed(format!(
                    "the build did not halt by mcycle {max_mcycle}"
                )))
            }
            Break::MaxMcycle | Break::Yielded(_) => {}
            // The bench's machine is the template's, which has no offload channel.
            Break::OffloadRequest(_) | Break::OffloadWaiting(_) => {
                unreachable!("a machine without an offload channel reported an offload break")
            }
        }
    };
    let run = started.elapsed();
    let cpu = thread_cpu_time().saturating_sub(cpu_started);
    if code != 0 {
        return Err(WorkloadError::Failed(format!(
            "the guest halted with exit code {code}"
        )));
    }
    let status = built_status(&machine)?;
    if status != "0" {
        return Err(WorkloadError::Failed(format!(
            "cargo failed in the guest (status {status:?})"
        )));
    }
    let started = Instant::now();
    let root_hash = machine.root_hash();
    Ok(BuildFigures {
        resume,
        run,
        cpu,
        hash: started.elapsed(),
        instructions: machine.hart.minstret() - instret,
        mcycle: machine.mcycle(),
        root_hash,
    })
}

/// Cargo's status for the workload's triple, from the output drive's tar.
fn built_status(machine: &Machine) -> Result<String, WorkloadError> {
    let drive = crate::guest::drive_bytes(machine, crate::guest::Drive::Output);
    status_in_output(drive)
}

/// `./<triple>/status` of an output tar (PROTOCOL.md), trimmed.
fn status_in_output(tar: impl std::io::Read) -> Result<String, WorkloadError> {
    let mut archive = tar::Archive::new(tar);
    let wanted = format!("{TARGET}/status");
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") == wanted && entry.size() < 64 {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)?;
            return Ok(text.trim().to_owned());
        }
    }
    Err(WorkloadError::Failed(format!(
        "the output drive has no {wanted}"
    )))
}

/// The same build under QEMU: a boot of the same image with the same input.
fn build_under_qemu(
    prepared: &Prepared,
    icount: bool,
) -> Result<crate::qemu::BuildTiming, WorkloadError> {
    let work = tempfile::Builder::new()
        .prefix("cmbuild-bench-qemu-")
        .tempdir()?;
    let image = crate::qemu::ImageFiles::write(&prepared.inputs.image, work.path())?;
    let settings = prepared.opts.machine;
    let run = crate::qemu::QemuBuild {
        image: &image,
        input: &prepared.input_drive,
        ram_mib: settings.ram_length >> 20,
        output_bytes: settings.output_length,
        cpus: 1,
        icount,
        work: work.path(),
        deadline: Duration::from_secs(4 * 60 * 60),
    };
    let result = run.run()?;
    let status = status_in_output(result.open_output()?)?;
    if status != "0" {
        return Err(WorkloadError::Failed(format!(
            "cargo failed under QEMU (status {status:?}); console tail:\n{}",
            result.console_tail(40)
        )));
    }
    result.timing().ok_or_else(|| {
        WorkloadError::Failed(format!(
            "QEMU's console lacks the driver's ready-point or last line:\n{}",
            result.console_tail(40)
        ))
    })
}

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The median (the upper one of an even count).
fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// `examples/hello` as `scripts/demo` makes it: one commit with a fixed identity and date,
/// tagged v0.1.0.
fn make_demo_project(dir: &Path) -> Result<(), WorkloadError> {
    let fail = |message: String| WorkloadError::Project {
        dir: dir.to_path_buf(),
        message,
    };
    for (name, bytes) in HELLO_FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, bytes)?;
    }
    let git = |args: &[&str]| -> Result<(), WorkloadError> {
        let output = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .env("GIT_AUTHOR_NAME", "cmbuild")
            .env("GIT_AUTHOR_EMAIL", "demo@cmbuild.invalid")
            .env("GIT_COMMITTER_NAME", "cmbuild")
            .env("GIT_COMMITTER_EMAIL", "demo@cmbuild.invalid")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .output()
            .map_err(|e| fail(format!("running git: {e}")))?;
        if !output.status.success() {
            return Err(fail(format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "hello v0.1.0"])?;
    git(&["tag", HELLO_REV])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_project_has_the_demos_commit() {
        let dir = tempfile::tempdir().unwrap();
        make_demo_project(dir.path()).unwrap();
        let rev = crate::project::resolve_revision(dir.path(), HELLO_REV).unwrap();
        // scripts/demo's commit of examples/hello (the README's published hashes build it).
        assert_eq!(rev.commit, "56d77058cc9d623ce11761bacd9ebdb37956fcd8");
        assert_eq!(rev.commit_time, 1_767_225_600);
    }

    #[test]
    fn the_status_is_read_from_the_output_tar() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        tar.append_data(&mut header, format!("./{TARGET}/status"), &b"0\n"[..])
            .unwrap();
        let bytes = tar.into_inner().unwrap();
        assert_eq!(status_in_output(&bytes[..]).unwrap(), "0");
        assert!(status_in_output(&[0; 1024][..]).is_err());
    }

    #[test]
    fn the_median_is_the_middle_time() {
        let s = Duration::from_secs;
        assert_eq!(median(&[s(3), s(1), s(2)]), s(2));
        assert_eq!(median(&[s(4), s(1)]), s(4));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
