//! `cmbuild run --release REV`: the release build, end to end, offline.
//!
//! In order: resolve REV to a commit and make the deterministic source archive; read the
//! commit's Cargo.lock and check that every crate and every pinned guest-image input is in
//! the mirror (else name what is missing and say to run `cmbuild vendor`); build the input
//! drive (`guest-image/PROTOCOL.md`); boot one machine per group of targets (in parallel
//! up to `jobs`), each a pure function of its inputs; extract each output drive
//! defensively; write `manifest.json`, `machine.json` and `<triple>/<bin>` into a temporary
//! directory and rename it into place, so a failed run leaves nothing half-written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cmbuild_machine::machine::{Break, FlashConfig, Machine, MachineConfig, HASH_SCHEME};
use cmbuild_store::cid::{cid_of_bytes, Cid};
use cmbuild_store::mirror::Mirror;
use cmbuild_store::sha256::Sha256;

use crate::manifest::{
    to_canonical_json, Artifact, MachineRecord, MachineRun, Manifest, MACHINE_SCHEMA,
    MANIFEST_SCHEMA,
};
use crate::plan::{self, Plan, DRIVE_ALIGN};
use crate::{pins, project};

/// Everything `cmbuild run` needs to know.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub project_dir: PathBuf,
    pub rev: String,
    pub target: Option<String>,
    pub profile: Option<String>,
    /// Where `REV/` is created.
    pub out_dir: PathBuf,
    pub mirror_dir: PathBuf,
    /// Where `cmbuild image build` wrote the guest image; consulted for pinned image files
    /// the mirror does not hold (each file is still checked against its pinned CID).
    pub image_dir: Option<PathBuf>,
    /// Machines run at once.
    pub jobs: usize,
    /// RAM of each machine, bytes.
    pub ram_length: u64,
    /// Scratch drive of each machine, bytes.
    pub scratch_length: u64,
    /// Output drive of each machine, bytes.
    pub output_length: u64,
    /// A machine that reaches this mcycle is stopped and the run fails.
    pub max_mcycle: u64,
    /// One machine per target (true) or one machine for all targets (false).
    pub machine_per_target: bool,
    /// The pins (`digests.lock.env`) to use.
    pub pins: BTreeMap<String, String>,
}

/// Progress events, for the CLI to display.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A phase began.
    Phase(String),
    /// A machine advanced: its name, mcycle, and console bytes since the last event.
    Machine {
        name: String,
        mcycle: u64,
        /// The mcycle at which an earlier build of the same targets halted, if one is
        /// known (an estimate of the end, for an ETA).
        expected_mcycle: Option<u64>,
        console: Vec<u8>,
    },
    /// A machine ended.
    MachineDone {
        name: String,
        mcycle: u64,
        exit_code: Option<u64>,
    },
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Project(#[from] project::ProjectError),
    #[error(transparent)]
    Pins(#[from] pins::PinsError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// A pin that must be a content ID is not one.
    #[error("pin {key}: {source}")]
    Pin {
        key: String,
        #[source]
        source: cmbuild_store::cid::CidError,
    },
    /// Inputs are missing from the mirror.
    #[error("the mirror {mirror} lacks {}:\n  {}\nrun `cmbuild vendor` (online) first", .missing.len(), .missing.join("\n  "))]
    MissingInputs {
        mirror: String,
        missing: Vec<String>,
    },
    /// The mirror failed.
    #[error("mirror: {0}")]
    Mirror(String),
    /// The machine could not be built.
    #[error("machine {0}: {1}")]
    Machine(String, String),
    /// The machine did not halt in time.
    #[error("machine {name} reached --max-mcycle {mcycle} without halting")]
    Timeout { name: String, mcycle: u64 },
    /// The guest reported a failed build.
    #[error("the build failed inside machine {name} (exit code {exit_code}):\n{log}")]
    GuestFailed {
        name: String,
        exit_code: u64,
        log: String,
    },
    /// The output directory exists already.
    #[error("{0} exists already; remove it or choose another --out")]
    OutputExists(String),
    /// The source archive could not be unpacked on the host.
    #[error("unpacking the source archive: {0}")]
    Source(#[from] crate::untrusted::TarError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub machine: MachineRecord,
}

/// The pin `key` as a content ID.
fn pinned_cid(pins: &BTreeMap<String, String>, key: &str) -> Result<Cid, RunError> {
    pins::require(pins, key)?
        .parse()
        .map_err(|source| RunError::Pin {
            key: key.to_owned(),
            source,
        })
}

/// The file `cmbuild image build` writes for each guest-image pin.
fn image_file_name(pin: &str) -> Option<&'static str> {
    match pin {
        pins::KERNEL => Some("vmlinux"),
        pins::FIRMWARE => Some("fw_jump.bin"),
        pins::INITRD => Some("initramfs.cpio"),
        pins::ROOTFS => Some("rootfs.erofs"),
        _ => None,
    }
}

/// Reads a pinned blob from the mirror (or the image directory), verified against its CID;
/// records a missing one.
fn read_pinned(
    mirror: &Mirror,
    image_dir: Option<&Path>,
    name: &str,
    cid: &str,
    missing: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let parsed: Cid = match cid.parse() {
        Ok(c) => c,
        Err(_) => {
            missing.push(format!("{name}: {cid:?} is not a CID"));
            return None;
        }
    };
    let mirror_error = match mirror.read_verified(&parsed) {
        Ok(bytes) => return Some(bytes),
        Err(e) => e.to_string(),
    };
    if let (Some(dir), Some(file)) = (image_dir, image_file_name(name)) {
        let path = dir.join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            if cmbuild_store::cid::cid_of_bytes(&bytes) == parsed {
                return Some(bytes);
            }
            missing.push(format!(
                "{name} {cid}: not in the mirror, and {} has other bytes (run `cmbuild image build`)",
                path.display()
            ));
            return None;
        }
    }
    missing.push(format!("{name} {cid} ({mirror_error})"));
    None
}

/// The guest image, read from the mirror by its pins.
struct GuestImage {
    kernel: Vec<u8>,
    firmware: Vec<u8>,
    initrd: Vec<u8>,
    rootfs: Vec<u8>,
}

/// The machine groups of a run: which targets each machine builds.
fn machine_groups(targets: &[String], per_target: bool) -> Vec<Vec<String>> {
    if per_target {
        targets.iter().map(|t| vec![t.clone()]).collect()
    } else {
        vec![targets.to_vec()]
    }
}

/// Runs the whole release build.
pub fn run_release(
    opts: &RunOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RunSummary, RunError> {
    progress(Progress::Phase(format!("resolving {}", opts.rev)));
    let rev = project::resolve_revision(&opts.project_dir, &opts.rev)?;
    let final_dir = opts.out_dir.join(sanitize_dir_name(&opts.rev));
    if final_dir.exists() {
        return Err(RunError::OutputExists(final_dir.display().to_string()));
    }

    progress(Progress::Phase(format!(
        "source archive of {} (SOURCE_DATE_EPOCH={})",
        rev.commit, rev.commit_time
    )));
    let mut source_tar = Vec::new();
    project::write_source_archive(&opts.project_dir, &rev, &mut source_tar)?;
    let work = tempfile::Builder::new()
        .prefix(".cmbuild-run-")
        .tempdir_in(ensure_dir(&opts.out_dir)?)?;
    let source_dir = work.path().join("source");
    std::fs::create_dir(&source_dir)?;
    crate::untrusted::extract_tar_with_links(&source_tar[..], &source_dir)?;

    let config = match std::fs::read_to_string(source_dir.join("cmbuild.toml")) {
        Ok(text) => project::parse_config(&text)?,
        Err(_) => project::ProjectConfig::default(),
    };
    let selection = project::select(&config, opts.profile.as_deref(), opts.target.as_deref())?;
    let workspace_bins = plan::list_workspace_bins(&source_dir)?;
    let plan = Plan::new(&selection, rev.commit_time, &workspace_bins)?;
    let lock_bytes = std::fs::read(source_dir.join("Cargo.lock")).map_err(|_| {
        plan::PlanError::Metadata(format!(
            "{} has no Cargo.lock at {}; commit one (cmbuild builds with --locked)",
            opts.rev, rev.commit
        ))
    })?;
    let lock_sha256 = Sha256::of(&lock_bytes);

    progress(Progress::Phase("checking inputs in the mirror".into()));
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|e| RunError::Mirror(e.to_string()))?;
    let mut missing = Vec::new();
    let mut blob = |key: &str| -> Option<Vec<u8>> {
        match pins::require(&opts.pins, key) {
            Ok(cid) => read_pinned(&mirror, opts.image_dir.as_deref(), key, cid, &mut missing),
            Err(e) => {
                missing.push(e.to_string());
                None
            }
        }
    };
    let image = (
        blob(pins::KERNEL),
        blob(pins::FIRMWARE),
        blob(pins::INITRD),
        blob(pins::ROOTFS),
    );
    let vendor_dir = work.path().join("vendor");
    if let Err(e) = crate::vendoring::unpack_locked_crates(&mirror, &lock_bytes, &vendor_dir) {
        missing.push(e.to_string());
    }
    let image = match image {
        (Some(kernel), Some(firmware), Some(initrd), Some(rootfs)) if missing.is_empty() => {
            GuestImage {
                kernel,
                firmware,
                initrd,
                rootfs,
            }
        }
        _ => {
            return Err(RunError::MissingInputs {
                mirror: opts.mirror_dir.display().to_string(),
                missing,
            })
        }
    };
    let mut vendor_tar = plan::DeterministicTar::new(Vec::new(), rev.commit_time);
    vendor_tar.tree("", &vendor_dir)?;
    let vendor_tar = vendor_tar.finish()?;

    let mut inputs = BTreeMap::new();
    for key in [pins::KERNEL, pins::FIRMWARE, pins::INITRD, pins::ROOTFS] {
        inputs.insert(key.to_owned(), pinned_cid(&opts.pins, key)?);
    }
    inputs.insert("SOURCE_CID".to_owned(), cid_of_bytes(&source_tar));
    inputs.insert("VENDOR_CID".to_owned(), cid_of_bytes(&vendor_tar));

    // One machine per group; each gets the plan restricted to its targets.
    let groups = machine_groups(&plan.targets, opts.machine_per_target);
    let results: Mutex<BTreeMap<usize, MachineResult>> = Mutex::new(BTreeMap::new());
    let next = Mutex::new(0usize);
    let jobs = opts.jobs.clamp(1, groups.len().max(1));
    progress(Progress::Phase(format!(
        "building {} target(s) in {} machine(s), {} at a time",
        plan.targets.len(),
        groups.len(),
        jobs
    )));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = {
                    let mut n = next.lock().expect("no panics hold this lock");
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(targets) = groups.get(index) else {
                    break;
                };
                let group_plan = Plan {
                    targets: targets.clone(),
                    ..plan.clone()
                };
                let result = build_input_drive_for(&group_plan, &source_tar, &vendor_tar)
                    .map_err(RunError::from)
                    .and_then(|input| run_machine(opts, &image, targets, input, &inputs, progress));
                results
                    .lock()
                    .expect("no panics hold this lock")
                    .insert(index, result);
            });
        }
    });

    progress(Progress::Phase("collecting artifacts".into()));
    let staging = work.path().join("out");
    std::fs::create_dir(&staging)?;
    let mut artifacts = Vec::new();
    let mut machines = Vec::new();
    let results = results.into_inner().expect("threads ended");
    for (index, result) in results {
        let (run, output_drive) = result?;
        let extract = work.path().join(format!("extract-{index}"));
        std::fs::create_dir(&extract)?;
        let group_plan = Plan {
            targets: groups[index].clone(),
            ..plan.clone()
        };
        let outputs = plan::collect_outputs(&output_drive, &extract, &group_plan)?;
        for (target, output) in &outputs {
            if output.status != Some(0) || output.bins.len() != plan.bins.len() {
                return Err(RunError::GuestFailed {
                    name: target.clone(),
                    exit_code: u64::from(run.exit_code),
                    log: output.log_tail.clone(),
                });
            }
            std::fs::create_dir_all(staging.join(target))?;
            for planned in &plan.bins {
                let bytes = std::fs::read(&output.bins[&planned.bin])?;
                let rel = format!("{target}/{}", planned.bin);
                write_executable(&staging.join(&rel), &bytes)?;
                let toolchain_key = pins::toolchain_key(target);
                let toolchain = if opts.pins.contains_key(&toolchain_key) {
                    pinned_cid(&opts.pins, &toolchain_key)?
                } else {
                    pinned_cid(&opts.pins, pins::ROOTFS)?
                };
                artifacts.push(Artifact {
                    package: planned.package.clone(),
                    target: target.clone(),
                    bin: planned.bin.clone(),
                    bin_path: rel,
                    krate: planned.package.clone(),
                    version: planned.version.clone(),
                    crate_lock_sha256: lock_sha256,
                    toolchain,
                    sha256: Sha256::of(&bytes),
                    cid: cid_of_bytes(&bytes),
                });
            }
        }
        machines.push(run);
    }
    artifacts.sort_by_key(|a| a.key());
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA.into(),
        release: opts.rev.clone(),
        commit: rev.commit.clone(),
        artifacts,
    };
    let machine = MachineRecord {
        schema: MACHINE_SCHEMA.into(),
        emulator_version: env!("CARGO_PKG_VERSION").into(),
        hash_scheme: HASH_SCHEME.into(),
        inputs,
        machines,
    };
    std::fs::write(staging.join("manifest.json"), to_canonical_json(&manifest))?;
    std::fs::write(staging.join("machine.json"), to_canonical_json(&machine))?;
    std::fs::rename(&staging, &final_dir)?;
    Ok(RunSummary {
        dir: final_dir,
        manifest,
        machine,
    })
}

fn build_input_drive_for(
    plan: &Plan,
    source_tar: &[u8],
    vendor_tar: &[u8],
) -> Result<Vec<u8>, std::io::Error> {
    plan::build_input_drive(plan, source_tar, vendor_tar, plan::GUEST_CARGO_CONFIG)
}

/// A machine's record and its output drive, or why it failed.
type MachineResult = Result<(MachineRun, Vec<u8>), RunError>;

/// The kernel command line of a build machine.
pub const BOOTARGS: &str = "console=ttyS0 quiet cmbuild.mode=build";

/// Boots one machine and runs it to halt; returns its record and its output drive.
fn run_machine(
    opts: &RunOptions,
    image: &GuestImage,
    targets: &[String],
    input_drive: Vec<u8>,
    inputs: &BTreeMap<String, Cid>,
    progress: &(dyn Fn(Progress) + Sync),
) -> MachineResult {
    let name = targets.join(",");
    let expected_mcycle = previous_mcycle(&opts.out_dir, targets);
    let zeros = |len: u64| vec![0u8; (len.max(1).div_ceil(DRIVE_ALIGN) * DRIVE_ALIGN) as usize];
    // The input drive's CID enters the machine's identity through the state hash; keep it
    // in the record too.
    let _ = inputs;
    let config = MachineConfig {
        ram_length: opts.ram_length,
        ram_image: None,
        bios: Some(image.firmware.clone()),
        kernel: Some(image.kernel.clone()),
        initrd: Some(image.initrd.clone()),
        bootargs: BOOTARGS.to_owned(),
        flash_drives: vec![
            FlashConfig {
                label: "root".into(),
                image: image.rootfs.clone(),
                shared: false,
            },
            FlashConfig {
                label: "input".into(),
                image: input_drive,
                shared: false,
            },
            FlashConfig {
                label: "output".into(),
                image: zeros(opts.output_length),
                shared: true,
            },
            FlashConfig {
                label: "scratch".into(),
                image: zeros(opts.scratch_length),
                shared: false,
            },
        ],
    };
    let mut machine =
        Machine::from_config(config).map_err(|e| RunError::Machine(name.clone(), e.to_string()))?;
    // Run in slices so the caller sees progress; the slicing does not change the result,
    // since the machine is a pure function of mcycle.
    const SLICE: u64 = 200_000_000;
    let exit_code = loop {
        let limit = (machine.mcycle() + SLICE).min(opts.max_mcycle);
        let stop = machine.run(limit);
        progress(Progress::Machine {
            name: name.clone(),
            mcycle: machine.mcycle(),
            expected_mcycle,
            console: machine.drain_console(),
        });
        match stop {
            Break::Halted(code) => break code,
            Break::MaxMcycle if machine.mcycle() >= opts.max_mcycle => {
                return Err(RunError::Timeout {
                    name,
                    mcycle: opts.max_mcycle,
                })
            }
            Break::MaxMcycle => {}
        }
    };
    progress(Progress::MachineDone {
        name: name.clone(),
        mcycle: machine.mcycle(),
        exit_code: Some(exit_code),
    });
    let root_hash = machine.root_hash();
    let output = machine.bus.flash[2].mem.bytes().to_vec();
    Ok((
        MachineRun {
            targets: targets.to_vec(),
            root_hash,
            mcycle: machine.mcycle(),
            exit_code: u32::try_from(exit_code).unwrap_or(u32::MAX),
        },
        output,
    ))
}

/// The mcycle at which an earlier build under `out_dir` of exactly these targets halted:
/// the best estimate of how long this one will take (the guest's work depends on the
/// project, not on the host). Unreadable records are ignored; this only feeds an ETA.
fn previous_mcycle(out_dir: &Path, targets: &[String]) -> Option<u64> {
    let mut found = None;
    for entry in std::fs::read_dir(out_dir).ok()?.flatten() {
        let path = entry.path().join("machine.json");
        let Ok(record) = crate::manifest::read_machine_record(&path) else {
            continue;
        };
        for run in record.machines {
            if run.targets == targets {
                found = found.max(Some(run.mcycle));
            }
        }
    }
    found
}

fn ensure_dir(dir: &Path) -> std::io::Result<&Path> {
    std::fs::create_dir_all(dir)?;
    Ok(dir)
}

fn write_executable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// A revision as a directory name: `v0.1.0` stays, `/` and other oddities become `_`.
pub fn sanitize_dir_name(rev: &str) -> String {
    let name: String = rev
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_directory_names_are_safe() {
        assert_eq!(sanitize_dir_name("v0.1.0"), "v0.1.0");
        assert_eq!(sanitize_dir_name("release/1.0"), "release_1.0");
        assert_eq!(sanitize_dir_name(".."), "_..");
        assert_eq!(sanitize_dir_name("HEAD~1"), "HEAD_1");
    }

    #[test]
    fn previous_builds_give_the_expected_mcycle() {
        let out = tempfile::tempdir().unwrap();
        let record = MachineRecord {
            schema: MACHINE_SCHEMA.into(),
            emulator_version: "0".into(),
            hash_scheme: HASH_SCHEME.into(),
            inputs: BTreeMap::new(),
            machines: vec![MachineRun {
                targets: vec!["a".into()],
                root_hash: "h".into(),
                mcycle: 1234,
                exit_code: 0,
            }],
        };
        std::fs::create_dir(out.path().join("v1")).unwrap();
        std::fs::write(
            out.path().join("v1/machine.json"),
            to_canonical_json(&record),
        )
        .unwrap();
        std::fs::create_dir(out.path().join("junk")).unwrap();
        std::fs::write(out.path().join("junk/machine.json"), b"{").unwrap();
        assert_eq!(previous_mcycle(out.path(), &["a".into()]), Some(1234));
        assert_eq!(previous_mcycle(out.path(), &["b".into()]), None);
        assert_eq!(
            previous_mcycle(&out.path().join("none"), &["a".into()]),
            None
        );
    }

    #[test]
    fn groups_follow_the_machine_per_target_choice() {
        let t = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            machine_groups(&t, true),
            vec![vec!["a".to_string()], vec!["b".to_string()]]
        );
        assert_eq!(machine_groups(&t, false), vec![t.clone()]);
    }
}
