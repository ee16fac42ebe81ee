//! `cmbuild run --release REV`: the release build, end to end, offline.
//!
//! In order: resolve REV to a commit and make the deterministic source archive; read the
//! commit's manifests ([`crate::workspace`], no host toolchain), select the pinned Rust
//! toolchain (`--toolchain` or the commit's `rust-toolchain(.toml)`, checked against each
//! package's `rust-version`) and the glibc floor (`cmbuild.toml`'s `glibc`, one of the
//! pinned floors: [`crate::floor`]); read the commit's Cargo.lock and check that every
//! crate and every pinned guest-image input is in the mirror (else name what is missing
//! and say to run `cmbuild vendor`); build the input drive (`guest-image/PROTOCOL.md`; under
//! a floor, its sysroots' image goes onto the scratch drive); boot one machine per group of
//! targets (in parallel up to `jobs`), each a pure function of its inputs; extract each
//! output drive defensively (and check every artifact against the floor); write
//! `manifest.json`, `machine.json`, `<triple>/<bin>` and each artifact's
//! state proof `proofs/<triple>/<bin>.json` ([`crate::state_proofs`]) into a working
//! directory, synced, and rename it into place ([`crate::staging`]), so a failed or killed
//! run leaves nothing half-written (and the next run removes a killed run's working
//! directory). A machine that makes no visible progress for `stall_seconds` guest seconds is
//! stopped by the stall watchdog ([`crate::watchdog`]) with its last console lines, leaving
//! a snapshot `OUT/REV.stalled-NAME-at-MCYCLE` to debug from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cmbuild_image::toolchain::{self, RustVersion};
use cmbuild_image::triple::Triple;
use cmbuild_machine::machine::{Break, Machine, HASH_SCHEME};
use cmbuild_machine::merkle::PageTree;
use cmbuild_machine::snapshot::SnapshotConfig;
use cmbuild_store::cid::{cid_of_bytes, Cid};
use cmbuild_store::mirror::Mirror;
use cmbuild_store::sha256::Sha256;

use crate::guest::{drive_bytes, Drive, GuestImage, MachineSettings, SettingsError};
use crate::manifest::{
    to_canonical_json, Artifact, MachineRecord, MachineRun, Manifest, MACHINE_SCHEMA,
    MANIFEST_SCHEMA,
};
use crate::mapped::{DriveImage, MapError};
use crate::pins::{self, Pins};
use crate::plan::{self, Plan};
use crate::project;
use crate::staging::{self, WorkDir};
use crate::state_proofs;
use crate::untrusted;
use crate::watchdog::Watchdog;

/// The build directory's subdirectory of state proofs: `proofs/<triple>/<bin>.json`.
pub const PROOFS_DIR: &str = "proofs";

/// Largest `cmbuild.toml` read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest `Cargo.lock` read.
pub const MAX_LOCK_BYTES: u64 = 16 << 20;
/// Largest `rust-toolchain(.toml)` read.
pub const MAX_TOOLCHAIN_FILE_BYTES: u64 = 64 << 10;

/// Everything `cmbuild run` needs to know.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The project (any directory inside its git repository).
    pub project_dir: PathBuf,
    /// The tag or commit to build.
    pub rev: String,
    /// One target triple, `all` or `None` (the project's configured triples).
    pub target: Option<String>,
    /// A profile of `cmbuild.toml`.
    pub profile: Option<String>,
    /// Where `REV/` is created.
    pub out_dir: PathBuf,
    /// The content-addressed mirror.
    pub mirror_dir: PathBuf,
    /// Where `cmbuild image build` wrote the guest image; consulted for pinned image files
    /// the mirror does not hold (each file is still checked against its pinned CID).
    pub image_dir: Option<PathBuf>,
    /// Machines run at once.
    pub jobs: usize,
    /// The machines' RAM, drive sizes and mcycle limit.
    pub machine: MachineSettings,
    /// One machine per target (true) or one machine for all targets (false).
    pub machine_per_target: bool,
    /// The pins (`digests.lock.env`) to use.
    pub pins: Pins,
    /// The Rust toolchain to build with (`stable`, `1.85`, `1.85.1`), overriding the
    /// project's `rust-toolchain.toml` / `rust-toolchain`; `None`: the project's choice, or
    /// the newest pinned.
    pub toolchain: Option<String>,
    /// Guest seconds without visible progress after which a machine is stopped (0: never;
    /// see [`crate::watchdog`]).
    pub stall_seconds: u64,
    /// Append every machine's translated-block symbols to `/tmp/perf-<pid>.map` (see
    /// [`crate::perf_map`]); changes no result.
    pub perf_map: bool,
    /// Whether the guest's rustc jobs go to sibling machines (issue 13,
    /// `docs/parallel-builds.md`); `jobs` siblings run at once.
    pub offload: Offload,
    /// With `offload`: compute every job in a sibling even when the mirror's action cache
    /// holds it, and replace the entry (the cache is written, never read). Changes no
    /// result of a deterministic job; a job that is not would make this run's records
    /// differ from a cached run's.
    pub recompute_jobs: bool,
    /// With `offload` and more than one job: run a scout beside each build machine
    /// ([`crate::offload::scout`]), which finds jobs before the machine's time reaches
    /// them. Changes when the host computes jobs, nothing a machine sees.
    pub scout: bool,
}

/// Whether a run hands the guest's rustc jobs to sibling machines (issue 13,
/// `docs/parallel-builds.md`). Part of what a build is: an offloaded build machine runs on
/// the board with the channel, so its root hash differs from a machine's that builds alone
/// (`machine.json` says which it was, and `verify` rebuilds the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// Offloaded, under a glibc floor too (the default; `--offload` says so explicitly).
    On,
    /// Each triple in one machine, one rustc after another (`--no-offload`).
    Off,
}

/// `L` of offloaded builds: a job is visible to its parent `L + C` cycles after it was
/// submitted. Large, so that cargo can hand out every ready job before the parent waits
/// (`docs/parallel-builds.md`, "Completion time").
pub const OFFLOAD_LATENCY: u64 = 1 << 28;

/// Progress events, for the CLI to display.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A phase began.
    Phase(String),
    /// A machine advanced: its name, mcycle, and console bytes since the last event.
    Machine {
        /// The machine's name (its targets, comma-separated).
        name: String,
        /// Its mcycle now.
        mcycle: u64,
        /// Of those, cycles it spent asleep in WFI since it was resumed (an offloaded build
        /// machine sleeps while it follows its jobs' answers): the rest ran instructions.
        idle_cycles: u64,
        /// Whether it offloads its rustc jobs (its board has the channel).
        offloads: bool,
        /// The mcycle at which an earlier build of the same targets halted, if one is
        /// known (an estimate of the end, for an ETA).
        expected_mcycle: Option<u64>,
        /// Console bytes (untrusted guest output) since the last event.
        console: Vec<u8>,
    },
    /// A sibling machine started a job of an offloaded build (`id`: the run's number for
    /// it; `name`: the job's crate, sanitised).
    SiblingStarted {
        /// The sibling's number in the run.
        id: u64,
        /// The job's crate.
        name: String,
    },
    /// That sibling ended, with a result or not.
    SiblingEnded {
        /// The sibling's number in the run.
        id: u64,
    },
    /// A job of an offloaded build has its answer: computed by siblings, or with no sibling
    /// run for it here (taken from the action cache, or from another machine's identical
    /// job; then `seconds` is 0).
    JobDone {
        /// The job's crate, sanitised.
        name: String,
        /// Guest instructions its siblings ran (their recorded count when cached).
        cycles: u64,
        /// Host seconds its siblings ran.
        seconds: f64,
        /// Whether no sibling ran for it here (see above).
        cached: bool,
    },
    /// A machine ended.
    MachineDone {
        /// The machine's name.
        name: String,
        /// Its mcycle at the end.
        mcycle: u64,
        /// The guest's exit code, if it halted.
        exit_code: Option<u64>,
    },
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A build from a Dockerfile failed (`crate::container`).
    #[error(transparent)]
    Container(Box<crate::container::ContainerError>),
    /// Serving the offload channel failed (the host's fault, not the job's).
    #[error("offloading rustc jobs failed: {0}")]
    Offload(String),
    /// The project or its revision.
    #[error(transparent)]
    Project(#[from] project::ProjectError),
    /// The pins.
    #[error(transparent)]
    Pins(#[from] pins::PinsError),
    /// The build plan or the output drive.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// No pinned toolchain fits the project.
    #[error(transparent)]
    Toolchain(#[from] toolchain::ToolchainError),
    /// The project's glibc floor is not pinned, its sysroot could not be made, or an
    /// artifact needs a newer glibc.
    #[error(transparent)]
    Floor(#[from] crate::floor::FloorError),
    /// The machine settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Inputs are missing from the mirror.
    #[error("the mirror {mirror} lacks {}:\n  {}\nrun `cmbuild vendor` (online) first", .missing.len(), .missing.join("\n  "))]
    MissingInputs {
        /// The mirror directory.
        mirror: String,
        /// What is missing, one line each.
        missing: Vec<String>,
    },
    /// The mirror failed.
    #[error("mirror: {0}")]
    Mirror(String),
    /// The guest image was not in the mirror and could not be assembled there.
    #[error(transparent)]
    Assemble(#[from] cmbuild_image::assemble::AssembleError),
    /// This cmbuild's guest-image lock does not parse.
    #[error("the guest-image lock this cmbuild carries: {0}")]
    GuestLock(#[from] cmbuild_image::lock::LockFileError),
    /// The machine could not be built.
    #[error("machine {0}: {1}")]
    Machine(String, String),
    /// The perf map could not be written.
    #[error(transparent)]
    PerfMap(#[from] crate::perf_map::PerfMapError),
    /// The template machine could not be found, derived or checked.
    #[error("the template machine")]
    Template(#[from] crate::template::TemplateError),
    /// The machine did not halt in time.
    #[error("machine {name} reached --max-mcycle {mcycle} without halting")]
    Timeout {
        /// The machine's name.
        name: String,
        /// The limit it reached.
        mcycle: u64,
    },
    /// The stall watchdog stopped a machine ([`crate::watchdog`]).
    #[error(
        "machine {name} made no visible progress (no console byte, no drive write, idle) for \
         {seconds} guest seconds, from mcycle {since_mcycle} to {mcycle}; stopped\n\
         last console lines:\n{console_tail}\n{snapshot}"
    )]
    Stalled {
        /// The machine's name.
        name: String,
        /// Guest seconds without progress.
        seconds: u64,
        /// The mcycle of the last progress.
        since_mcycle: u64,
        /// The mcycle when stopped.
        mcycle: u64,
        /// The last console lines (sanitised guest output).
        console_tail: String,
        /// Where the snapshot to debug from was written, or why it was not.
        snapshot: String,
    },
    /// The guest reported a failed build.
    #[error("the build failed for {name}:\n{log}")]
    GuestFailed {
        /// The targets that failed, comma-separated.
        name: String,
        /// The exit code of the first failed target's machine.
        exit_code: u64,
        /// Each triple's outcome, then per failed triple its first error line and the
        /// tail of its build log (sanitised guest output).
        log: String,
    },
    /// The output directory exists already.
    #[error("{0} exists already; remove it or choose another --out")]
    OutputExists(String),
    /// A project file could not be read (it leaves the tree, is not a regular file, or is
    /// too large).
    #[error("the project's {name}")]
    ProjectFile {
        /// The file.
        name: &'static str,
        /// Why.
        #[source]
        source: untrusted::ReadError,
    },
    /// The source archive could not be unpacked on the host.
    #[error("unpacking the source archive: {0}")]
    Source(#[from] untrusted::TarError),
    /// File I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An artifact's state proof could not be made.
    #[error("state proof: {0}")]
    StateProof(#[from] state_proofs::StateProofsError),
    /// A state proof could not be written.
    #[error("state proof: {0}")]
    StateProofFile(#[from] cmbuild_trust::state_proof::StateProofError),
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunSummary {
    /// The directory written (`OUT/REV`).
    pub dir: PathBuf,
    /// Its `manifest.json`.
    pub manifest: Manifest,
    /// Its `machine.json`.
    pub machine: MachineRecord,
}

/// The image directory's file name of pinned image file `name` (a base image file or a
/// toolchain layer).
fn pinned_file_name(name: &str) -> Option<String> {
    pins::image_file(name).map(str::to_owned).or_else(|| {
        cmbuild_image::layers::shipped().ok().and_then(|layers| {
            layers
                .toolchains
                .keys()
                .find(|id| pins::layer_key(id) == name)
                .map(|id| cmbuild_image::image::layer_file_name(id))
        })
    })
}

/// Reads a pinned blob from the mirror (or the image directory), verified against its CID;
/// records a missing one.
fn read_pinned(
    mirror: &Mirror,
    image_dir: Option<&Path>,
    name: &str,
    cid: &Cid,
    missing: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let mirror_error = match mirror.read_verified(cid) {
        Ok(bytes) => return Some(bytes),
        Err(e) => e.to_string(),
    };
    if let (Some(dir), Some(file)) = (image_dir, pinned_file_name(name)) {
        let path = dir.join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            if cmbuild_store::cid::cid_of_bytes(&bytes) == *cid {
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

/// [`read_pinned`] for a drive image: the file is mapped rather than read (see
/// [`crate::mapped`]), and verified through the mapping.
fn map_pinned(
    mirror: &Mirror,
    image_dir: Option<&Path>,
    name: &str,
    cid: &Cid,
    missing: &mut Vec<String>,
) -> Option<DriveImage> {
    let path = mirror.blob_path(cid);
    let mirror_error = if path.is_file() {
        match DriveImage::map_verified(&path, cid) {
            Ok(image) => return Some(image),
            Err(MapError::Cid { path, actual, .. }) => {
                cmbuild_store::mirror::MirrorError::Corrupt { path, actual }.to_string()
            }
            Err(e) => crate::terminal::error_chain(&e),
        }
    } else {
        cmbuild_store::mirror::MirrorError::Missing {
            cid: *cid,
            root: mirror.root().to_path_buf(),
        }
        .to_string()
    };
    if let (Some(dir), Some(file)) = (image_dir, pinned_file_name(name)) {
        let path = dir.join(file);
        if path.is_file() {
            match DriveImage::map_verified(&path, cid) {
                Ok(image) => return Some(image),
                Err(MapError::Cid { .. }) => {
                    missing.push(format!(
                        "{name} {cid}: not in the mirror, and {} has other bytes (run `cmbuild image build`)",
                        path.display()
                    ));
                    return None;
                }
                Err(e) => missing.push(crate::terminal::error_chain(&e)),
            }
        }
    }
    missing.push(format!("{name} {cid} ({mirror_error})"));
    None
}

/// The pinned guest image from the mirror (or `image_dir`), each file checked against its
/// pin; fails naming every file missing. The root image and the toolchain layer are mapped,
/// not read (see [`crate::mapped`]).
pub fn read_pinned_image(
    mirror: &Mirror,
    pins: &Pins,
    image_dir: Option<&Path>,
    toolchain: RustVersion,
) -> Result<GuestImage, RunError> {
    let mut missing = Vec::new();
    let cid_of = |key: &str, missing: &mut Vec<String>| {
        pins::require_cid(pins, key)
            .map_err(|e| missing.push(e.to_string()))
            .ok()
    };
    let blob = |key: &str, missing: &mut Vec<String>| -> Option<Vec<u8>> {
        let cid = cid_of(key, missing)?;
        read_pinned(mirror, image_dir, key, &cid, missing)
    };
    let kernel = blob(pins::KERNEL, &mut missing);
    let firmware = blob(pins::FIRMWARE, &mut missing);
    let initrd = blob(pins::INITRD, &mut missing);
    let drive = |key: &str, missing: &mut Vec<String>| -> Option<DriveImage> {
        let cid = cid_of(key, missing)?;
        map_pinned(mirror, image_dir, key, &cid, missing)
    };
    let rootfs = drive(pins::ROOTFS, &mut missing);
    let toolchain = drive(&toolchain_layer_key(toolchain), &mut missing);
    match (kernel, firmware, initrd, rootfs, toolchain) {
        (Some(kernel), Some(firmware), Some(initrd), Some(rootfs), Some(toolchain)) => {
            Ok(GuestImage {
                kernel,
                firmware,
                initrd,
                rootfs,
                toolchain,
            })
        }
        _ => Err(RunError::MissingInputs {
            mirror: mirror.root().display().to_string(),
            missing,
        }),
    }
}

/// The machine groups of a run: which targets each machine builds.
fn machine_groups(targets: &[Triple], per_target: bool) -> Vec<Vec<Triple>> {
    if per_target {
        targets.iter().map(|t| vec![*t]).collect()
    } else {
        vec![targets.to_vec()]
    }
}

/// Runs the whole release build: [`plan_release`] (revision, source archive, plan),
/// [`gather_inputs`] (the mirror's blobs), [`run_machines`] (one machine per group of
/// targets), [`collect_release`] (artifacts and records) and [`publish`].
pub fn run_release(
    opts: &RunOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RunSummary, RunError> {
    opts.machine.validate()?;
    let job = plan_release(opts, progress)?;
    let inputs = gather_inputs(opts, &job, progress)?;
    let groups = machine_groups(&job.plan.targets, opts.machine_per_target);
    let siblings = Siblings {
        inputs: &inputs,
        max_mcycle: opts.machine.max_mcycle,
        perf_map: opts.perf_map,
    };
    let blobs = crate::offload::blobs::BlobStore::open(job.work.path().join("offload-blobs"))?;
    let tool = match inputs.parent_template.is_some() {
        true => Some(obtain_offload_tool(
            opts, &job, &inputs, &siblings, progress,
        )?),
        false => None,
    };
    let offload = match &tool {
        Some(tool) => Some(prepare_offload(
            opts, &job, &inputs, &blobs, tool, &siblings, progress,
        )?),
        None => None,
    };
    let results = run_machines(opts, &job, &inputs, &groups, offload.as_ref(), progress);
    if let Some(offload) = &offload {
        progress(Progress::Phase(offload.summary()));
    }
    progress(Progress::Phase("collecting artifacts".into()));
    let tool_cid = tool.as_ref().map(|t| t.cid);
    let (manifest, machine) = collect_release(opts, &job, &inputs, &groups, results, tool_cid)?;
    let dir = publish(&job, &manifest, &machine)?;
    Ok(RunSummary {
        dir,
        manifest,
        machine,
    })
}

/// A release being built: what [`plan_release`] settled.
pub struct ReleaseJob {
    /// The revision, resolved.
    pub rev: project::Revision,
    /// Where the finished run goes (`OUT/REV`; must not exist).
    pub final_dir: PathBuf,
    /// The run's working directory beside `final_dir`, removed when dropped.
    pub work: WorkDir,
    /// The deterministic source archive.
    pub source_tar: Vec<u8>,
    /// The commit's `Cargo.lock`.
    pub lock_bytes: Vec<u8>,
    /// What the guest builds.
    pub plan: Plan,
    /// The pinned Rust toolchain selected (today's guest image carries exactly one).
    pub toolchain: RustVersion,
    /// The glibc floor the project chose, if any.
    pub floor: Option<crate::floor::Floor>,
}

/// A release's revision, resolved, with its source archive and tree: what every kind of
/// build (Rust, [`crate::container`]) starts from.
pub struct Checkout {
    /// The revision, resolved.
    pub rev: project::Revision,
    /// Where the finished run goes (`OUT/REV`; checked not to exist).
    pub final_dir: PathBuf,
    /// The run's working directory beside `final_dir`, removed when dropped.
    pub work: WorkDir,
    /// The deterministic source archive.
    pub source_tar: Vec<u8>,
    /// The archive extracted (links kept inside), in `work`.
    pub source_dir: PathBuf,
}

/// Cleans up after killed runs, resolves `opts.rev`, refuses an existing `OUT/REV`, and
/// makes and extracts the commit's source archive.
pub fn checkout(
    opts: &RunOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Checkout, RunError> {
    // First, whatever happens next: a killed run's working directories go.
    staging::clean_stale(&opts.out_dir)?;
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
    let work = WorkDir::create(&opts.out_dir)?;
    let source_dir = work.path().join("source");
    std::fs::create_dir(&source_dir)?;
    untrusted::extract_tar_with_links(&source_tar[..], &source_dir)?;
    Ok(Checkout {
        rev,
        final_dir,
        work,
        source_tar,
        source_dir,
    })
}

/// Resolves the revision, makes its source archive, and plans the build from the
/// archive's `cmbuild.toml`, `Cargo.toml`s and `Cargo.lock`.
pub fn plan_release(
    opts: &RunOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ReleaseJob, RunError> {
    let Checkout {
        rev,
        final_dir,
        work,
        source_tar,
        source_dir,
    } = checkout(opts, progress)?;

    // Project files are read confined beneath the tree (no link out of it is followed),
    // must be regular files, and are size-capped.
    let read = |name: &'static str, max: u64| {
        untrusted::read_confined(&source_dir, name, max)
            .map_err(|source| RunError::ProjectFile { name, source })
    };
    let config = match read("cmbuild.toml", MAX_CONFIG_BYTES)? {
        Some(bytes) => project::parse_config(&String::from_utf8_lossy(&bytes))?,
        None => project::ProjectConfig::default(),
    };
    let selection = project::select(&config, opts.profile.as_deref(), opts.target.as_deref())?;
    // The floor is checked against the pinned ones before anything else is read.
    let floor = crate::floor::select(config.glibc.as_deref(), &crate::floor::shipped()?)?;
    // The workspace from its manifests, as the commit has them: no host toolchain involved.
    let workspace = crate::workspace::read_workspace(&source_dir).map_err(plan::PlanError::from)?;
    let mut plan = Plan::new(&selection, rev.commit_time, &workspace.bins())?;
    plan.offload = opts.offload == Offload::On;
    let toolchain = select_toolchain(opts, &read, &workspace, &selection)?;
    let lock_bytes = read("Cargo.lock", MAX_LOCK_BYTES)?.ok_or_else(|| {
        plan::PlanError::NoLock(format!(
            "{} has no Cargo.lock at {}; commit one (cmbuild builds with --locked)",
            opts.rev, rev.commit
        ))
    })?;
    Ok(ReleaseJob {
        rev,
        final_dir,
        work,
        source_tar,
        lock_bytes,
        plan,
        toolchain,
        floor,
    })
}

/// Selects the pinned Rust toolchain, before any machine boots: `--toolchain`, else the
/// commit's `rust-toolchain` or `rust-toolchain.toml` (the former wins when both exist, as
/// with rustup), else the default pinned toolchain; then checks the `rust-version` of every
/// selected package against it.
fn select_toolchain(
    opts: &RunOptions,
    read: &dyn Fn(&'static str, u64) -> Result<Option<Vec<u8>>, RunError>,
    workspace: &crate::workspace::Workspace,
    selection: &project::Selection,
) -> Result<RustVersion, RunError> {
    let layers = cmbuild_image::layers::shipped()?;
    let available = layers.versions();
    let (channel, source_name) = toolchain::project_channel(
        opts.toolchain.as_deref(),
        read("rust-toolchain", MAX_TOOLCHAIN_FILE_BYTES)?.as_deref(),
        read("rust-toolchain.toml", MAX_TOOLCHAIN_FILE_BYTES)?.as_deref(),
    )?;
    let selected = toolchain::select(
        channel.as_deref(),
        source_name,
        &available,
        layers.default_version(),
    )?;
    let packages = &selection.profile.packages;
    for member in &workspace.members {
        if !packages.is_empty() && !packages.contains(&member.name) {
            continue;
        }
        if let Some(required) = &member.rust_version {
            toolchain::check_rust_version(&member.name, required, selected, &available)?;
        }
    }
    Ok(selected)
}

/// The machine inputs of a release, from the mirror.
pub struct ReleaseInputs {
    /// The guest image.
    pub image: GuestImage,
    /// The vendored crates as a deterministic tar (a cargo directory source).
    pub vendor_tar: Vec<u8>,
    /// Content ID of every input, by name, as `machine.json` records them.
    pub cids: BTreeMap<String, Cid>,
    /// The template machine every build resumes from.
    pub template: crate::template::Template,
    /// Under a glibc floor (that applies to a target), its sysroots' image.
    pub floor_image: Option<crate::floor::FloorImage>,
    /// For an offloaded build, the build machines' own template (the board with the
    /// channel); siblings resume from `template`.
    pub parent_template: Option<crate::template::Template>,
}

/// Reads the pinned guest image and the locked crates from the mirror; fails naming
/// everything missing.
pub fn gather_inputs(
    opts: &RunOptions,
    job: &ReleaseJob,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ReleaseInputs, RunError> {
    progress(Progress::Phase("checking inputs in the mirror".into()));
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|e| RunError::Mirror(e.to_string()))?;
    // Blobs are hashed once, as they are read: a present but corrupt image file fails that
    // check, and is then assembled again (once) like a missing one.
    let on_first_use = (job.work.path(), job.toolchain);
    let mut assembled = assemble_image_on_first_use(&mirror, opts, on_first_use, progress, false)?;
    let image = loop {
        match read_pinned_image(
            &mirror,
            &opts.pins,
            opts.image_dir.as_deref(),
            job.toolchain,
        ) {
            Ok(image) => break Ok(image),
            Err(RunError::MissingInputs { missing, .. }) if assembled => break Err(missing),
            Err(RunError::MissingInputs { .. }) => {
                assembled =
                    assemble_image_on_first_use(&mirror, opts, on_first_use, progress, true)?
            }
            Err(e) => return Err(e),
        }
    };
    let mut missing = image.as_ref().err().cloned().unwrap_or_default();
    let layer_key = toolchain_layer_key(job.toolchain);
    let vendor_dir = job.work.path().join("vendor");
    if let Err(e) = crate::vendoring::unpack_locked_crates(&mirror, &job.lock_bytes, &vendor_dir) {
        missing.push(e.to_string());
    }
    // The floor's packages, each read verified against its pinned CID (its image holds a
    // sysroot for every Linux triple, so it is the floor's alone), unless the mirror keeps
    // the image they make already.
    let floor = job.floor.as_ref().filter(|_| {
        job.plan
            .targets
            .iter()
            .any(|t| crate::floor::applies_to(*t))
    });
    let mut floor_debs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(floor) = floor.filter(|f| !mirror.blob_path(&f.image).is_file()) {
        for package in &floor.lock.packages {
            match mirror.read_verified(&package.cid) {
                Ok(bytes) => {
                    floor_debs.insert(package.filename.clone(), bytes);
                }
                Err(e) => missing.push(format!(
                    "{} {} of the glibc {} floor ({e})",
                    package.filename, package.cid, floor.id
                )),
            }
        }
    }
    let image = match image {
        Ok(image) if missing.is_empty() => image,
        _ => {
            return Err(RunError::MissingInputs {
                mirror: opts.mirror_dir.display().to_string(),
                missing,
            })
        }
    };
    let mut vendor_tar = plan::DeterministicTar::new(Vec::new(), job.rev.commit_time);
    vendor_tar.tree("", &vendor_dir)?;
    let vendor_tar = vendor_tar.finish()?;

    let mut cids = BTreeMap::new();
    for (key, _file) in pins::IMAGE_FILES {
        cids.insert((*key).to_owned(), pins::require_cid(&opts.pins, key)?);
    }
    cids.insert(
        layer_key.clone(),
        pins::require_cid(&opts.pins, &layer_key)?,
    );
    cids.insert("SOURCE_CID".to_owned(), cid_of_bytes(&job.source_tar));
    cids.insert("VENDOR_CID".to_owned(), cid_of_bytes(&vendor_tar));
    let floor_image = match floor {
        Some(floor) => {
            let started = std::time::Instant::now();
            let (image, source) = crate::floor::obtain(floor, &mirror, || {
                // The packages read above; or, when the mirror's copy of the image turned
                // out corrupt, read now.
                crate::floor::make_image(&floor.id, &floor.lock, |package| {
                    match floor_debs.remove(&package.filename) {
                        Some(bytes) => Ok(bytes),
                        None => Ok(mirror.read_verified(&package.cid)?),
                    }
                })
            })?;
            progress(Progress::Phase(format!(
                "glibc floor {}: sysroots image {} ({} MB, {} in {:.1?})",
                floor.description,
                image.cid,
                image.image.len() >> 20,
                source.as_str(),
                started.elapsed()
            )));
            cids.insert(crate::floor::INPUT_KEY.to_owned(), image.cid);
            Some(image)
        }
        None => None,
    };
    let template = obtain_template(
        &mirror,
        &opts.pins,
        &opts.machine,
        &image,
        job.toolchain,
        progress,
    )?;
    let parent_template = match job.plan.offload {
        true => Some(obtain_template(
            &mirror,
            &opts.pins,
            &parent_settings(&opts.machine),
            &image,
            job.toolchain,
            progress,
        )?),
        false => None,
    };
    Ok(ReleaseInputs {
        image,
        vendor_tar,
        cids,
        template,
        floor_image,
        parent_template,
    })
}

/// The settings of an offloading build machine (a parent) for machines of `settings`: the
/// same, with the offload channel.
pub fn parent_settings(settings: &MachineSettings) -> MachineSettings {
    MachineSettings {
        offload_latency: Some(OFFLOAD_LATENCY),
        ..*settings
    }
}

/// The pin that names the template of `settings` and `toolchain`, if one does: the default
/// settings' ([`crate::template::TEMPLATE_PIN`]) and their parent's
/// ([`crate::template::PARENT_TEMPLATE_PIN`]), with the default toolchain (the mcycle limit
/// is not part of a template).
pub fn template_pin(settings: &MachineSettings, toolchain: RustVersion) -> Option<&'static str> {
    let default_settings = MachineSettings {
        max_mcycle: settings.max_mcycle,
        ..MachineSettings::default()
    };
    let default_toolchain = cmbuild_image::layers::shipped()
        .ok()
        .and_then(|layers| layers.default_version());
    if default_toolchain != Some(toolchain) {
        return None;
    }
    if *settings == default_settings {
        Some(crate::template::TEMPLATE_PIN)
    } else if *settings == parent_settings(&default_settings) {
        Some(crate::template::PARENT_TEMPLATE_PIN)
    } else {
        None
    }
}

/// The template of the run's image, toolchain layer and machine settings, from the mirror
/// or derived now (see [`crate::template`]), checked against the pin that names it, if one
/// does ([`template_pin`]).
pub fn obtain_template(
    mirror: &Mirror,
    pins: &Pins,
    settings: &MachineSettings,
    image: &GuestImage,
    toolchain: RustVersion,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<crate::template::Template, RunError> {
    use crate::template;
    let cids = image_cids(pins, toolchain)?;
    let pinned = template_pin(settings, toolchain)
        .and_then(|key| pins.get(key).map(|hash| template::Pin { key, hash }));
    let started = std::time::Instant::now();
    let found = template::obtain(mirror, image, &cids, settings, pinned, &mut |event| {
        if let template::Event::Note(note) = event {
            progress(Progress::Phase(note));
        }
    })?;
    progress(Progress::Phase(format!(
        "template {} ({}, {} in {:.1?})",
        found.record.root_hash,
        found.record.cid,
        if found.derived {
            "derived"
        } else {
            "from the mirror"
        },
        started.elapsed()
    )));
    // Once for every machine of the run: unpacked, checked, its pages decompressed.
    let started = std::time::Instant::now();
    let prepared = found.prepare()?;
    progress(Progress::Phase(format!(
        "template prepared ({} MiB of pages) in {:.1?}",
        prepared.page_bytes() >> 20,
        started.elapsed()
    )));
    Ok(found)
}

/// The pinned CIDs of the guest image's files and of the toolchain's layer.
pub fn image_cids(
    pins: &Pins,
    toolchain: RustVersion,
) -> Result<crate::template::ImageCids, RunError> {
    Ok(crate::template::ImageCids {
        kernel: pins::require_cid(pins, pins::KERNEL)?,
        firmware: pins::require_cid(pins, pins::FIRMWARE)?,
        initrd: pins::require_cid(pins, pins::INITRD)?,
        rootfs: pins::require_cid(pins, pins::ROOTFS)?,
        toolchain: pins::require_cid(pins, &toolchain_layer_key(toolchain))?,
    })
}

/// The first run after `cmbuild vendor` finds the guest image's files missing from the
/// mirror: assemble them offline from the vendored `.deb`s of the lock this cmbuild carries,
/// check them against the pins and keep them in the mirror by CID (later runs read them from
/// there). Nothing happens when each is in the mirror or in the image directory (where
/// [`read_pinned`] checks it against its pin).
///
/// `present` is checked by name only (the bytes are verified when read); with `repair`, a
/// file read and found corrupt, it is assembled whatever is present. Returns whether it
/// assembled.
fn assemble_image_on_first_use(
    mirror: &Mirror,
    opts: &RunOptions,
    (work, toolchain): (&Path, RustVersion),
    progress: &(dyn Fn(Progress) + Sync),
    repair: bool,
) -> Result<bool, RunError> {
    use cmbuild_image::assemble;
    assemble_layer_on_first_use(mirror, opts, (work, toolchain), progress, repair)?;
    let present = assemble::pinned_files(&opts.pins)?
        .iter()
        .all(|(_, file, cid)| {
            mirror.blob_path(cid).is_file()
                || opts
                    .image_dir
                    .as_ref()
                    .is_some_and(|dir| dir.join(file).is_file())
        });
    if present && !repair {
        return Ok(false);
    }
    progress(Progress::Phase(
        "assembling the guest image from the mirror's Debian packages (first use, offline)".into(),
    ));
    let lock = cmbuild_image::lock::shipped_lock()?;
    let work = work.join("image");
    let mut last = 0;
    assemble::ensure_in_mirror(mirror, &lock, &opts.pins, &work, |step| {
        if let cmbuild_image::image::Step::Extracting { index, total, .. } = step {
            // One line per tenth of the packages: progress without a flood.
            let tenth = (index + 1) * 10 / total.max(1);
            if tenth > last {
                last = tenth;
                progress(Progress::Phase(format!(
                    "guest image: {}/{total} packages extracted",
                    index + 1
                )));
            }
        }
    })?;
    std::fs::remove_dir_all(&work).ok();
    progress(Progress::Phase(
        "guest image assembled, matches its pins, kept in the mirror".into(),
    ));
    Ok(true)
}

/// What a build from a Dockerfile (`crate::container`) needs assembled on first use: the
/// guest image, the `toolchain`'s layer and the container layer, each from the mirror's
/// `.deb`s, checked against its pin and kept in the mirror.
pub fn assemble_for_containers(
    mirror: &Mirror,
    opts: &RunOptions,
    toolchain: RustVersion,
    work: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), RunError> {
    assemble_image_on_first_use(mirror, opts, (work, toolchain), progress, false)?;
    let pinned = pins::require_cid(&opts.pins, cmbuild_image::containers::PIN)?;
    if mirror.has_valid(&pinned).unwrap_or(false) {
        return Ok(());
    }
    progress(Progress::Phase(
        "assembling the container layer from the mirror's Debian packages (first use, offline)"
            .into(),
    ));
    let layer = cmbuild_image::containers::shipped()?;
    let base = cmbuild_image::lock::shipped_lock()?;
    let work = work.join("containers-layer");
    cmbuild_image::assemble::ensure_containers_in_mirror(
        mirror,
        &layer,
        &base,
        &opts.pins,
        &work,
        |_| {},
    )?;
    std::fs::remove_dir_all(&work).ok();
    progress(Progress::Phase(
        "container layer assembled, matches its pin, kept in the mirror".into(),
    ));
    Ok(())
}

/// Runs a machine that is not part of a Rust build (a container build's) to halt under the
/// run's watch (mcycle limit, stall watchdog, progress, the end reported); its exit code.
pub fn run_one_to_halt(
    machine: &mut Machine,
    snapshot_config: &SnapshotConfig,
    opts: &RunOptions,
    name: &str,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<u64, RunError> {
    let watch = Watch {
        name,
        max_mcycle: opts.machine.max_mcycle,
        stall_seconds: opts.stall_seconds,
        snapshot_dir: opts.out_dir.join(format!(
            "{}.stalled-{}",
            sanitize_dir_name(&opts.rev),
            sanitize_dir_name(name)
        )),
        expected_mcycle: None,
    };
    let exit_code = run_to_halt(machine, snapshot_config, &watch, None, None, progress)?;
    progress(Progress::MachineDone {
        name: name.to_owned(),
        mcycle: machine.mcycle(),
        exit_code: Some(exit_code),
    });
    Ok(exit_code)
}

/// The pin of the layer of a selected toolchain (its id is its version).
pub fn toolchain_layer_key(version: RustVersion) -> String {
    pins::layer_key(&version.to_string())
}

/// The selected toolchain's layer on first use: assembled offline from the mirror's `.deb`s
/// of its lock, checked against its pin and kept in the mirror (as the base image is).
fn assemble_layer_on_first_use(
    mirror: &Mirror,
    opts: &RunOptions,
    (work, toolchain): (&Path, RustVersion),
    progress: &(dyn Fn(Progress) + Sync),
    repair: bool,
) -> Result<(), RunError> {
    let key = toolchain_layer_key(toolchain);
    let id = toolchain.to_string();
    let in_dir = opts.image_dir.as_ref().is_some_and(|dir| {
        dir.join(cmbuild_image::image::layer_file_name(&id))
            .is_file()
    });
    let pinned = pins::require_cid(&opts.pins, &key)?;
    // Present is enough here: the read hashes it, and a corrupt one comes back with
    // `repair`, when ensure_layer_in_mirror hashes it and assembles it again.
    if in_dir || (mirror.blob_path(&pinned).is_file() && !repair) {
        return Ok(());
    }
    let layers = cmbuild_image::layers::shipped()?;
    let Some(lock) = layers.toolchains.get(&id) else {
        return Ok(()); // not this cmbuild's toolchain: reported missing with its pin
    };
    progress(Progress::Phase(format!(
        "assembling the Rust {id} toolchain layer from the mirror's Debian packages (first use, offline)"
    )));
    let work = work.join("layer");
    cmbuild_image::assemble::ensure_layer_in_mirror(mirror, lock, &id, &opts.pins, &work, |_| {})?;
    std::fs::remove_dir_all(&work).ok();
    progress(Progress::Phase(format!(
        "Rust {id} toolchain layer assembled, matches its pin, kept in the mirror"
    )));
    Ok(())
}

/// What a machine left: its record, its output drive and the top-level leaves of its final
/// state hash (for the artifacts' state proofs).
#[derive(Debug)]
pub struct MachineOutput {
    /// The record for `machine.json`.
    pub run: MachineRun,
    /// The whole output drive.
    pub output_drive: Vec<u8>,
    /// [`Machine::hash_leaves`] at the end.
    pub leaves: Vec<cmbuild_machine::merkle::Hash>,
}

/// A machine's output, or why it failed.
pub type MachineResult = Result<MachineOutput, RunError>;

/// What the machines of an offloaded run share (issue 13).
pub struct OffloadRun<'a> {
    /// Computes the jobs of every parent.
    pub service: crate::offload::service::Service<'a>,
    /// The run's blobs.
    pub blobs: &'a crate::offload::blobs::BlobStore,
    /// Digests of the files on every build machine's input drive (known to each parent
    /// from cycle 0).
    pub known: Vec<cmbuild_store::sha256::Sha256>,
    /// The platform properties of every job's action.
    pub platform: crate::offload::job::Platform,
    /// `cmbuild-offload`, on every parent's and sibling's input drive.
    pub tool: &'a crate::offload::tool::Tool,
}

impl OffloadRun<'_> {
    /// One line on what the service did.
    pub fn summary(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = &self.service.counts;
        let mut shared = match counts.shared.load(Relaxed) {
            0 => String::new(),
            n => format!(", {n} shared with another machine's identical job"),
        };
        if let n @ 1.. = counts.prefetched.load(Relaxed) {
            shared.push_str(&format!(", {n} started ahead by a scout"));
        }
        if let n @ 1.. = counts.memory_waits.load(Relaxed) {
            shared.push_str(&format!(
                ", {n} waited for the host's memory (fewer siblings at once: {})",
                crate::memory::reserve_text()
            ));
        }
        format!(
            "offload: {} job(s) run in sibling machines, {} from the cache ({} refused entries \
             recomputed){shared}, {} guest instructions in siblings",
            counts.runs.load(Relaxed),
            counts.hits.load(Relaxed),
            counts.refused.load(Relaxed),
            counts.cycles.load(Relaxed)
        )
    }
}

/// A sibling machine (issue 13): a build machine resumed from the run's template with a
/// job's input drive, run to its halt.
pub struct Siblings<'a> {
    /// The run's inputs (image and template).
    pub inputs: &'a ReleaseInputs,
    /// A sibling that reaches this mcycle fails the run.
    pub max_mcycle: u64,
    /// Whether siblings name their translated code in this process's perf map
    /// (`--perf-map`, [`crate::perf_map`]), as the build machines do.
    pub perf_map: bool,
}

impl crate::offload::service::SiblingRunner for Siblings<'_> {
    fn run(
        &self,
        input_drive: Vec<u8>,
        progress: &dyn Fn(u64),
        meta: &dyn Fn(u64, Vec<u8>),
    ) -> Result<crate::offload::service::SiblingRun, String> {
        // Under a glibc floor a sibling's scratch drive carries the floor's sysroots, as its
        // build machine's does (`crate::floor::sibling_plan_env` mounts them).
        let floor = self.inputs.floor_image.as_ref();
        let (mut machine, _) =
            resume_build(self.inputs, &input_drive, floor.map(|floor| &floor.image))
                .map_err(|e| crate::terminal::error_chain(&e))?;
        drop(input_drive);
        let mut perf_map = crate::perf_map::PerfMap::open_if(self.perf_map, &mut machine)
            .map_err(|e| crate::terminal::error_chain(&e))?;
        let start = machine.mcycle();
        let mut console = Vec::new();
        // In slices, each reported: the parent may run up to `T + L + c` meanwhile (its
        // answer comes at `T + L + C`, and `C >= c`), finding its next jobs earlier.
        const SLICE: u64 = 1 << 26;
        loop {
            let limit = machine.mcycle().saturating_add(SLICE).min(self.max_mcycle);
            let stop = machine.run(limit);
            if let Some(map) = perf_map.as_mut() {
                map.drain(&mut machine)
                    .map_err(|e| crate::terminal::error_chain(&e))?;
            }
            match stop {
                Break::Halted(_) => break,
                // run-job's metadata point (pipelining): its record is at the start of
                // the output drive now, at this instruction count.
                Break::Yielded(crate::offload::sibling::META_YIELD) => {
                    let drive = drive_bytes(&machine, Drive::Output);
                    if let Some(record) = crate::offload::sibling::meta_record(drive) {
                        meta(machine.mcycle() - start, record.to_vec());
                    }
                }
                Break::Yielded(_) => {}
                Break::MaxMcycle if machine.mcycle() >= self.max_mcycle => {
                    return Err(format!("a sibling reached mcycle {}", self.max_mcycle))
                }
                Break::MaxMcycle => progress(machine.mcycle() - start),
                Break::OffloadRequest(_) | Break::OffloadWaiting(_) => {
                    return Err("a sibling machine has no offload channel".into())
                }
            }
            // Only the end of a sibling's console is kept, to explain a failed job.
            console.extend(machine.drain_console());
            if console.len() > 4096 {
                console.drain(..console.len() - 4096);
            }
        }
        console.extend(machine.drain_console());
        Ok(crate::offload::service::SiblingRun {
            console_tail: crate::terminal::sanitize_bytes(
                &console[console.len().saturating_sub(4096)..],
            ),
            output_drive: crate::guest::written_part(drive_bytes(&machine, Drive::Output)).to_vec(),
            cycles: machine.mcycle() - start,
            root_hash: machine.root_hash(),
        })
    }
}

/// `cmbuild-offload` for the run's template: from the mirror, or compiled now in a machine
/// resumed from the template (once per template and source).
pub fn obtain_offload_tool(
    opts: &RunOptions,
    job: &ReleaseJob,
    inputs: &ReleaseInputs,
    siblings: &Siblings<'_>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<crate::offload::tool::Tool, RunError> {
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|e| RunError::Mirror(e.to_string()))?;
    let started = std::time::Instant::now();
    let scratch = job.work.path().join("offload-tool");
    std::fs::create_dir_all(&scratch)?;
    let tool = crate::offload::tool::obtain(
        &mirror,
        &inputs.template.record.root_hash,
        siblings,
        &scratch,
    )
    .map_err(|e| RunError::Offload(crate::terminal::error_chain(&e)))?;
    progress(Progress::Phase(format!(
        "offload: cmbuild-offload {} ({} bytes, {} in {:.1?})",
        tool.cid,
        tool.bytes.len(),
        if tool.built {
            "compiled in a machine of the template"
        } else {
            "from the mirror"
        },
        started.elapsed()
    )));
    Ok(tool)
}

/// Sets up an offloaded run: every file of the source and vendor archives goes into the
/// run's blobs (siblings read them from there), the service gets the action cache of the
/// mirror and `opts.jobs` sibling slots.
pub fn prepare_offload<'a>(
    opts: &RunOptions,
    job: &ReleaseJob,
    inputs: &ReleaseInputs,
    blobs: &'a crate::offload::blobs::BlobStore,
    tool: &'a crate::offload::tool::Tool,
    siblings: &'a Siblings<'a>,
    progress: &'a (dyn Fn(Progress) + Sync),
) -> Result<OffloadRun<'a>, RunError> {
    let offload_error =
        |e: &(dyn std::error::Error + 'static)| RunError::Offload(crate::terminal::error_chain(e));
    let mut known = Vec::new();
    // With scouts the host orders its work by rank, estimated from the bytes of Rust
    // sources per top directory of the source and vendor archives.
    let ranked = opts.scout && opts.jobs > 1;
    let (mut source_sizes, mut vendor_sizes) = Default::default();
    for (archive, sizes) in [
        (&job.source_tar, &mut source_sizes),
        (&inputs.vendor_tar, &mut vendor_sizes),
    ] {
        let entries =
            cmbuild_image::deb::read_tar(archive.as_slice()).map_err(|e| offload_error(&e))?;
        for entry in &entries {
            if let cmbuild_image::deb::Node::File(bytes) = &entry.node {
                known.push(blobs.put(bytes).map_err(|e| offload_error(&e))?);
            }
        }
        if ranked {
            *sizes = crate::offload::rank::rust_bytes(&entries);
        }
    }
    known.sort();
    known.dedup();
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|e| RunError::Mirror(e.to_string()))?;
    let mut service = crate::offload::service::Service::new(
        blobs,
        &tool.bytes,
        Some(match opts.recompute_jobs {
            true => crate::offload::cache::ActionCache::write_only(mirror),
            false => crate::offload::cache::ActionCache::new(mirror),
        }),
        siblings,
        opts.jobs,
        job.work.path().join("offload-scratch"),
    );
    if ranked {
        let ranks = crate::offload::rank::Ranks::new(&job.lock_bytes, &vendor_sizes, &source_sizes);
        service.ranks = Some(ranks);
    }
    // Under a glibc floor the siblings mount its sysroots (`Siblings::run` puts them on
    // their scratch drives).
    service.floor = inputs.floor_image.is_some();
    // No more live siblings than the host's memory holds.
    service.set_memory_gate(crate::memory::MemoryGate::host());
    service.on_refused = Box::new(|why| {
        progress(Progress::Phase(format!(
            "offload: a cache entry was refused and its job runs again: {why}"
        )))
    });
    service.on_failed = Box::new(|job, why, console| {
        let name = crate::terminal::sanitize(&job.display_name());
        progress(Progress::Phase(format!(
            "offload: job {name} gave no result in its sibling ({why}); the build machine \
             compiles it itself. The sibling's console ended with:\n{console}"
        )))
    });
    service.on_done = Box::new(|job, done| {
        progress(Progress::JobDone {
            name: crate::terminal::sanitize(&job.display_name()),
            cycles: done.cycles,
            seconds: done.seconds,
            cached: done.cached,
        })
    });
    service.on_sibling = Box::new(|job, event| {
        progress(match event {
            crate::offload::service::SiblingEvent::Started(id) => Progress::SiblingStarted {
                id,
                name: crate::terminal::sanitize(&job.display_name()),
            },
            crate::offload::service::SiblingEvent::Ended(id) => Progress::SiblingEnded { id },
        })
    });
    progress(Progress::Phase(format!(
        "offload: {} input files known to the build machines, {} sibling(s) at a time",
        known.len(),
        opts.jobs
    )));
    Ok(OffloadRun {
        service,
        blobs,
        known,
        platform: crate::offload::job::Platform {
            latency: OFFLOAD_LATENCY,
            scheme: HASH_SCHEME.to_owned(),
            template: inputs.template.record.root_hash.clone(),
            tool: tool.sha256,
            floor: inputs.floor_image.as_ref().map(|image| image.cid),
        },
        tool,
    })
}

/// Runs one machine per group of targets, up to `opts.jobs` at once; each gets the plan
/// restricted to its targets. Returns each group's result by group index.
pub fn run_machines(
    opts: &RunOptions,
    job: &ReleaseJob,
    inputs: &ReleaseInputs,
    groups: &[Vec<Triple>],
    offload: Option<&OffloadRun<'_>>,
    progress: &(dyn Fn(Progress) + Sync),
) -> BTreeMap<usize, MachineResult> {
    let results: Mutex<BTreeMap<usize, MachineResult>> = Mutex::new(BTreeMap::new());
    let next = Mutex::new(0usize);
    let jobs = opts.jobs.clamp(1, groups.len().max(1));
    progress(Progress::Phase(format!(
        "building {} target(s) in {} machine(s), {} at a time",
        job.plan.targets.len(),
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
                let group_plan = job.plan.for_targets(targets);
                let floor = job.floor.as_ref().and_then(|floor| {
                    crate::floor::FloorInput::for_machine(
                        &floor.id,
                        plan::GUEST_CARGO_CONFIG,
                        targets,
                        group_plan.offload,
                    )
                });
                let scratch = floor
                    .as_ref()
                    .and(inputs.floor_image.as_ref())
                    .map(|image| image.image.clone());
                let result = plan::build_input_drive_with(
                    &group_plan,
                    &job.source_tar,
                    &inputs.vendor_tar,
                    plan::GUEST_CARGO_CONFIG,
                    floor.as_ref(),
                    offload.map(|o| o.tool.bytes.as_slice()),
                )
                .map_err(RunError::from)
                .and_then(|input| {
                    run_machine(
                        opts,
                        inputs,
                        targets,
                        input,
                        scratch.as_ref(),
                        offload,
                        progress,
                    )
                });
                results
                    .lock()
                    .expect("no panics hold this lock")
                    .insert(index, result);
            });
        }
    });
    results.into_inner().expect("threads ended")
}

/// Extracts every machine's output drive, checks it against the plan, stages the
/// artifacts under the work directory's `out/`, and makes the two records.
pub fn collect_release(
    opts: &RunOptions,
    job: &ReleaseJob,
    inputs: &ReleaseInputs,
    groups: &[Vec<Triple>],
    results: BTreeMap<usize, MachineResult>,
    offload_tool: Option<Cid>,
) -> Result<(Manifest, MachineRecord), RunError> {
    let staging = job.work.path().join("out");
    std::fs::create_dir(&staging)?;
    let lock_sha256 = Sha256::of(&job.lock_bytes);
    let plan = &job.plan;
    let mut artifacts = Vec::new();
    let mut machines = Vec::new();
    let mut collected = Vec::new();
    for (index, result) in results {
        let MachineOutput {
            run,
            output_drive,
            leaves,
        } = result?;
        let extract = job.work.path().join(format!("extract-{index}"));
        std::fs::create_dir(&extract)?;
        let outputs =
            plan::collect_outputs(&output_drive, &extract, &plan.for_targets(&groups[index]))?;
        collected.push((run, outputs, output_drive, leaves));
    }
    check_outcomes(
        plan,
        collected.iter().map(|(run, outputs, ..)| (run, outputs)),
    )?;
    for (run, outputs, output_drive, leaves) in collected {
        // The state proofs: built once per machine, only if it built something.
        let located = state_proofs::locate_files(&output_drive);
        let mut tree = None;
        let machine_name = format!("machine/{}", run.targets.join(","));
        for (target, output) in &outputs {
            std::fs::create_dir_all(staging.join(target.as_str()))?;
            for planned in &plan.bins {
                let bytes = std::fs::read(&output.bins[&planned.bin])?;
                let rel = format!("{target}/{}", target.artifact_name(&planned.bin));
                staging::write_synced(&staging.join(&rel), &bytes, 0o755)?;
                let tree = tree.get_or_insert_with(|| PageTree::build(&output_drive));
                let proof = state_proofs::prove_file(
                    &machine_name,
                    &leaves,
                    tree,
                    &output_drive,
                    &located,
                    &rel,
                    &bytes,
                )?;
                let proof_path = staging.join(PROOFS_DIR).join(format!("{rel}.json"));
                std::fs::create_dir_all(staging.join(PROOFS_DIR).join(target.as_str()))?;
                staging::write_synced(&proof_path, &proof.to_file_bytes()?, 0o644)?;
                // The toolchain is its layer: the compiler, cargo and every target's std.
                let toolchain = pins::require_cid(&opts.pins, &toolchain_layer_key(job.toolchain))?;
                artifacts.push(Artifact {
                    package: planned.package.clone(),
                    target: target.to_string(),
                    bin: planned.bin.clone(),
                    bin_path: rel,
                    krate: planned.package.clone(),
                    version: planned.version.clone(),
                    crate_lock_sha256: lock_sha256,
                    toolchain,
                    sha256: Sha256::of(&bytes),
                    cid: cid_of_bytes(&bytes),
                    abi: Some(crate::glibc::Abi::of(&bytes)),
                    toolchain_version: Some(job.toolchain.to_string()),
                    glibc_floor: job
                        .floor
                        .as_ref()
                        .filter(|_| crate::floor::applies_to(*target))
                        .map(|f| f.id.clone()),
                });
            }
        }
        machines.push(run);
    }
    artifacts.sort_by_key(|a| a.key());
    // A floor is a promise about every Linux artifact: one that needs more fails the run.
    if let Some(floor) = &job.floor {
        crate::floor::check_artifacts(
            floor,
            artifacts
                .iter()
                .filter(|a| a.glibc_floor.is_some())
                .filter_map(|a| {
                    a.abi
                        .as_ref()
                        .map(|abi| (format!("{}/{}", a.target, a.bin), abi))
                }),
        )?;
    }
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA.into(),
        release: opts.rev.clone(),
        commit: job.rev.commit.clone(),
        artifacts,
    };
    let machine = MachineRecord {
        schema: MACHINE_SCHEMA.into(),
        emulator_version: env!("CARGO_PKG_VERSION").into(),
        hash_scheme: HASH_SCHEME.into(),
        inputs: inputs.cids.clone(),
        machines,
        config: Some(opts.machine),
        template: Some(crate::manifest::TemplateUse {
            hash: inputs.template.record.root_hash.clone(),
            cid: inputs.template.record.cid,
            mcycle: inputs.template.record.mcycle,
        }),
        offload: inputs
            .parent_template
            .as_ref()
            .zip(offload_tool)
            .map(|(t, tool)| crate::manifest::OffloadUse {
                tool,
                latency: OFFLOAD_LATENCY,
                parent_template: crate::manifest::TemplateUse {
                    hash: t.record.root_hash.clone(),
                    cid: t.record.cid,
                    mcycle: t.record.mcycle,
                },
            }),
    };
    Ok((manifest, machine))
}

/// Whether a target's output is a success: cargo's status 0 and every planned binary.
fn succeeded(plan: &plan::Plan, output: &plan::TargetOutput) -> bool {
    output.status == Some(0) && plan.bins.iter().all(|b| output.bins.contains_key(&b.bin))
}

/// Fails with every triple's outcome if any target failed: a failed one shows its first
/// error line (`error: package X requires rustc 1.88`), then the tail of its log.
fn check_outcomes<'a>(
    plan: &plan::Plan,
    collected: impl IntoIterator<Item = (&'a MachineRun, &'a BTreeMap<Triple, plan::TargetOutput>)>,
) -> Result<(), RunError> {
    let mut outcomes = String::new();
    let mut details = String::new();
    let mut failed = Vec::new();
    let mut exit_code = None;
    for (run, outputs) in collected {
        for (target, output) in outputs {
            if succeeded(plan, output) {
                outcomes += &format!("  {target}: built\n");
                continue;
            }
            failed.push(target.to_string());
            exit_code.get_or_insert(u64::from(run.exit_code));
            let status = match output.status {
                Some(0) => "built, but planned binaries are missing".to_owned(),
                Some(code) => format!("failed (cargo exit status {code})"),
                None => "failed (no status reported)".to_owned(),
            };
            let first = output.first_error.as_deref().unwrap_or("(no error line)");
            outcomes += &format!("  {target}: {status}: {first}\n");
            details += &format!(
                "--- {target}: first error\n{first}\n--- {target}: last lines of build.log\n{}",
                output.log_tail
            );
        }
    }
    match exit_code {
        None => Ok(()),
        Some(exit_code) => Err(RunError::GuestFailed {
            name: failed.join(", "),
            exit_code,
            log: outcomes + &details,
        }),
    }
}

/// Writes the records beside the staged artifacts (every file synced) and moves the whole
/// directory into place in one rename, so a failed or killed run leaves nothing
/// half-written (see [`crate::staging`]).
pub fn publish(
    job: &ReleaseJob,
    manifest: &Manifest,
    machine: &MachineRecord,
) -> Result<PathBuf, RunError> {
    let staging = job.work.path().join("out");
    staging::write_synced(
        &staging.join("manifest.json"),
        &to_canonical_json(manifest),
        0o644,
    )?;
    staging::write_synced(
        &staging.join("machine.json"),
        &to_canonical_json(machine),
        0o644,
    )?;
    for target in job.plan.targets.iter() {
        for dir in [
            staging.join(target.as_str()),
            staging.join(PROOFS_DIR).join(target.as_str()),
        ] {
            if dir.exists() {
                staging::sync_dir(&dir)?;
            }
        }
    }
    if staging.join(PROOFS_DIR).exists() {
        staging::sync_dir(&staging.join(PROOFS_DIR))?;
    }
    staging::publish_dir(&staging, &job.final_dir)?;
    Ok(job.final_dir.clone())
}

/// Resumes one machine from the template, fills its input drive (and, under a glibc
/// floor, its scratch drive with the floor's sysroots) and runs it to halt; returns its
/// record and its output drive.
fn run_machine(
    opts: &RunOptions,
    inputs: &ReleaseInputs,
    targets: &[Triple],
    input_drive: Vec<u8>,
    scratch: Option<&DriveImage>,
    offload: Option<&OffloadRun<'_>>,
    progress: &(dyn Fn(Progress) + Sync),
) -> MachineResult {
    let names: Vec<String> = targets.iter().map(Triple::to_string).collect();
    let name = names.join(",");
    let expected_mcycle = previous_mcycle(&opts.out_dir, &names);
    let started = std::time::Instant::now();
    // `snapshot_config` is for the snapshot a stalled machine leaves (it records what the
    // machine was built from).
    let template = match offload {
        Some(_) => inputs
            .parent_template
            .as_ref()
            .expect("an offloaded run has one"),
        None => &inputs.template,
    };
    let (mut machine, snapshot_config) = resume_from(template, inputs, &input_drive, scratch)
        .map_err(|e| RunError::Machine(name.clone(), crate::terminal::error_chain(&e)))?;
    progress(Progress::Phase(format!(
        "[{name}] resumed from the template at mcycle {} in {:.2?}",
        machine.mcycle(),
        started.elapsed()
    )));
    let watch = Watch {
        name: &name,
        max_mcycle: opts.machine.max_mcycle,
        stall_seconds: opts.stall_seconds,
        snapshot_dir: opts.out_dir.join(format!(
            "{}.stalled-{}",
            sanitize_dir_name(&opts.rev),
            sanitize_dir_name(&name)
        )),
        expected_mcycle,
    };
    let mut perf_map = crate::perf_map::PerfMap::open_if(opts.perf_map, &mut machine)?;
    let scout_stop = std::sync::atomic::AtomicBool::new(false);
    // A scout is one more machine: left out when the host lacks the memory for it.
    let mut scout = offload.filter(|_| opts.scout && opts.jobs > 1);
    if let Some(gate) = scout.and_then(|o| o.service.memory_gate()) {
        if !gate.allows() {
            progress(Progress::Phase(format!(
                "[{name}] no scout: the host has {} of memory available ({})",
                crate::memory::gib(gate.available().unwrap_or(0)),
                crate::memory::reserve_text()
            )));
            scout = None;
        }
    }
    let (exit_code, jobs) = std::thread::scope(|scope| {
        if let Some(o) = scout {
            let scout = Scout {
                template,
                inputs,
                input_drive: &input_drive,
                scratch,
                offload: o,
                stop: &scout_stop,
                max_mcycle: opts.machine.max_mcycle,
            };
            let name = &name;
            let started = std::time::Instant::now();
            scope.spawn(move || {
                let said = match scout.run(scope) {
                    Ok((end, mcycle)) => format!(
                        "stopped after {:.0} s, at mcycle {mcycle}: {end}",
                        started.elapsed().as_secs_f64()
                    ),
                    Err(e) => format!("stopped: {e}"),
                };
                progress(Progress::Phase(format!("[{name}] scout {said}")));
            });
        }
        // The scout stops when this machine halts or fails.
        let _stop = StopOnDrop(&scout_stop);
        let mut link = offload.map(|o| {
            let parent =
                crate::offload::parent::Parent::new(o.platform.clone(), o.known.iter().copied());
            crate::offload::link::Link::new(parent, &o.service, o.blobs, scope)
        });
        let exit_code = run_to_halt(
            &mut machine,
            &snapshot_config,
            &watch,
            perf_map.as_mut(),
            link.as_mut(),
            progress,
        )?;
        Ok::<_, RunError>((exit_code, link.map(|l| l.records()).unwrap_or_default()))
    })?;
    progress(Progress::MachineDone {
        name: name.clone(),
        mcycle: machine.mcycle(),
        exit_code: Some(exit_code),
    });
    let root_hash = machine.root_hash();
    let leaves = machine.hash_leaves();
    let output_drive = drive_bytes(&machine, Drive::Output).to_vec();
    Ok(MachineOutput {
        run: MachineRun {
            targets: names,
            root_hash,
            mcycle: machine.mcycle(),
            exit_code: u32::try_from(exit_code).unwrap_or(u32::MAX),
            jobs,
        },
        output_drive,
        leaves,
    })
}

/// A build machine: resumed from the run's template, with `input_drive` on its input drive
/// (and, under a glibc floor, the floor's sysroots image on its scratch drive)
/// and the guest's yield answered ([`crate::template::fill_input`]), ready to run to halt.
/// Also returns the configuration a snapshot of it records.
pub fn resume_build(
    inputs: &ReleaseInputs,
    input_drive: &[u8],
    scratch: Option<&DriveImage>,
) -> Result<(Machine, SnapshotConfig), crate::template::TemplateError> {
    resume_from(&inputs.template, inputs, input_drive, scratch)
}

/// [`resume_build`] from `template` (the run's, or an offloaded build's parent template).
fn resume_from(
    template: &crate::template::Template,
    inputs: &ReleaseInputs,
    input_drive: &[u8],
    scratch: Option<&DriveImage>,
) -> Result<(Machine, SnapshotConfig), crate::template::TemplateError> {
    let image = &inputs.image;
    let (mut machine, snapshot_config) = template.resume(&image.rootfs, &image.toolchain)?;
    crate::template::fill_input(&mut machine, input_drive)?;
    if let Some(image) = scratch {
        crate::template::fill_scratch(&mut machine, image)?;
    }
    Ok((machine, snapshot_config))
}

/// A build machine's scout ([`crate::offload::scout`]): what it is resumed from and runs
/// with.
struct Scout<'a> {
    template: &'a crate::template::Template,
    inputs: &'a ReleaseInputs,
    input_drive: &'a [u8],
    scratch: Option<&'a DriveImage>,
    offload: &'a OffloadRun<'a>,
    stop: &'a std::sync::atomic::AtomicBool,
    max_mcycle: u64,
}

impl<'a> Scout<'a> {
    /// Resumes the scout like its build machine and runs it until it stops: why, and its
    /// mcycle then. Its jobs' threads go on in `scope`.
    fn run<'scope>(
        self,
        scope: &'scope std::thread::Scope<'scope, 'a>,
    ) -> Result<(crate::offload::scout::End, u64), String> {
        let error = |e: &(dyn std::error::Error + 'static)| crate::terminal::error_chain(e);
        let (mut machine, _) =
            resume_from(self.template, self.inputs, self.input_drive, self.scratch)
                .map_err(|e| error(&e))?;
        let o = self.offload;
        let parent =
            crate::offload::parent::Parent::scout(o.platform.clone(), o.known.iter().copied());
        let mut link = crate::offload::link::Link::new(parent, &o.service, o.blobs, scope);
        let end = crate::offload::scout::run(&mut machine, &mut link, self.stop, self.max_mcycle)
            .map_err(|e| error(&e))?;
        Ok((end, machine.mcycle()))
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How [`run_to_halt`] watches a machine.
struct Watch<'a> {
    /// The machine's name.
    name: &'a str,
    /// Stop with [`RunError::Timeout`] at this mcycle.
    max_mcycle: u64,
    /// Stop with [`RunError::Stalled`] after this many guest seconds without visible
    /// progress (0: never).
    stall_seconds: u64,
    /// A stalled machine's snapshot goes to `<snapshot_dir>-at-<mcycle>`.
    snapshot_dir: PathBuf,
    /// For [`Progress::Machine`].
    expected_mcycle: Option<u64>,
}

/// Runs `machine` in slices until it halts (its exit code), reporting progress (and the
/// translator's symbols to `perf_map`) after each;
/// fails at the mcycle limit, or when the stall watchdog ([`crate::watchdog`]) stops it,
/// after writing its snapshot.
fn run_to_halt(
    machine: &mut Machine,
    snapshot_config: &SnapshotConfig,
    watch: &Watch<'_>,
    mut perf_map: Option<&mut crate::perf_map::PerfMap>,
    mut link: Option<&mut crate::offload::link::Link<'_, '_>>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<u64, RunError> {
    let name = watch.name.to_owned();
    let max_mcycle = watch.max_mcycle;
    let mut watchdog = Watchdog::new(watch.stall_seconds, machine);
    // Run in slices so the caller sees progress; the slicing does not change the result,
    // since the machine is a pure function of mcycle. The watchdog looks only at the
    // slices' ends, fixed multiples of SLICE, so its decision is deterministic too, even
    // though the run also stops where the host's answers and promises fall (link.rs).
    const SLICE: u64 = 200_000_000;
    let mut unseen = Vec::new();
    loop {
        let limit = (machine.mcycle() / SLICE + 1)
            .saturating_mul(SLICE)
            .min(max_mcycle);
        let stop = machine.run(limit);
        if let Some(map) = perf_map.as_deref_mut() {
            map.drain(machine)?;
        }
        let console = machine.drain_console();
        unseen.extend_from_slice(&console);
        let boundary = matches!(stop, Break::MaxMcycle) && machine.mcycle() == limit;
        let stall = match boundary {
            true => watchdog.observe(machine, &std::mem::take(&mut unseen)),
            false => None,
        };
        progress(Progress::Machine {
            name: name.clone(),
            mcycle: machine.mcycle(),
            idle_cycles: machine.idle_cycles(),
            offloads: machine.offload().is_some(),
            expected_mcycle: watch.expected_mcycle,
            console,
        });
        if let Some(stall) = stall {
            let mut dir = watch.snapshot_dir.clone().into_os_string();
            dir.push(format!("-at-{}", stall.mcycle));
            let snapshot =
                crate::watchdog::store_snapshot(Path::new(&dir), machine, snapshot_config);
            progress(Progress::MachineDone {
                name: name.clone(),
                mcycle: machine.mcycle(),
                exit_code: None,
            });
            return Err(RunError::Stalled {
                name,
                seconds: stall.seconds,
                since_mcycle: stall.since_mcycle,
                mcycle: stall.mcycle,
                console_tail: stall.console_tail,
                snapshot,
            });
        }
        match stop {
            Break::Halted(code) => return Ok(code),
            // The guest yields once, at its ready point, before the template is taken; a
            // later yield asks nothing of a build: it runs on.
            Break::Yielded(_) => {}
            Break::MaxMcycle if machine.mcycle() >= max_mcycle => {
                return Err(RunError::Timeout {
                    name,
                    mcycle: max_mcycle,
                })
            }
            Break::MaxMcycle => {}
            Break::OffloadRequest(tag) => match link.as_deref_mut() {
                Some(link) => link
                    .submit(machine, tag)
                    .map_err(|e| offload_failed(&name, &e))?,
                None => return Err(offload_failed(&name, &NoChannel)),
            },
            Break::OffloadWaiting(_) => match link.as_deref_mut() {
                Some(link) => link.wait(machine).map_err(|e| offload_failed(&name, &e))?,
                None => return Err(offload_failed(&name, &NoChannel)),
            },
        }
        if let Some(link) = link.as_deref_mut() {
            link.drain(machine).map_err(|e| offload_failed(&name, &e))?;
        }
    }
}

/// A build machine used the offload channel of a run that offloads nothing.
#[derive(Debug, thiserror::Error)]
#[error("the machine used an offload channel this run does not serve")]
struct NoChannel;

fn offload_failed(name: &str, e: &(dyn std::error::Error + 'static)) -> RunError {
    RunError::Offload(format!("[{name}] {}", crate::terminal::error_chain(e)))
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
    fn the_default_settings_and_their_parents_templates_are_pinned_and_no_other() {
        use crate::template::{PARENT_TEMPLATE_PIN, TEMPLATE_PIN};
        let layers = cmbuild_image::layers::shipped().unwrap();
        let default = layers.default_version().unwrap();
        let settings = MachineSettings::default();
        assert_eq!(template_pin(&settings, default), Some(TEMPLATE_PIN));
        let parent = parent_settings(&settings);
        assert_eq!(template_pin(&parent, default), Some(PARENT_TEMPLATE_PIN));
        // The mcycle limit is not part of a template.
        let limited = MachineSettings {
            max_mcycle: 7,
            ..parent
        };
        assert_eq!(template_pin(&limited, default), Some(PARENT_TEMPLATE_PIN));
        let larger = MachineSettings {
            ram_length: settings.ram_length * 2,
            ..settings
        };
        assert_eq!(template_pin(&larger, default), None);
        let latency = MachineSettings {
            offload_latency: Some(OFFLOAD_LATENCY + 1),
            ..settings
        };
        assert_eq!(template_pin(&latency, default), None);
        for other in layers.versions().into_iter().filter(|v| *v != default) {
            assert_eq!(template_pin(&settings, other), None, "{other:?}");
        }
        // Both are in the shipped pins.
        let pins = crate::pins::parse(crate::pins::BUILTIN).unwrap();
        assert!(pins.contains_key(TEMPLATE_PIN) && pins.contains_key(PARENT_TEMPLATE_PIN));
    }

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
            config: None,
            machines: vec![MachineRun {
                targets: vec!["a".into()],
                root_hash: "h".into(),
                mcycle: 1234,
                exit_code: 0,
                jobs: Vec::new(),
            }],
            template: None,
            offload: None,
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

    /// Prints "A" through HTIF, then sleeps in WFI with no interrupt enabled, forever: a
    /// silent, idle machine.
    fn print_then_sleep() -> Machine {
        let program: [u32; 7] = [
            0x4000_82b7, // lui t0, 0x40008          (HTIF tohost)
            0x0101_03b7, // lui t2, 0x1010
            0x0203_9393, // slli t2, t2, 32          (dev 1, cmd 1)
            0x0413_8393, // addi t2, t2, 'A'
            0x0072_b023, // sd t2, 0(t0)             (putchar)
            0x1050_0073, // wfi
            0xffdf_f06f, // j .-4
        ];
        let config = cmbuild_machine::machine::MachineConfig {
            ram_length: 1 << 20,
            ram_image: Some(program.iter().flat_map(|w| w.to_le_bytes()).collect()),
            ..Default::default()
        };
        Machine::new(&config).unwrap()
    }

    #[test]
    fn a_silent_idle_machine_is_stopped_with_its_console_and_a_snapshot() {
        let out = tempfile::tempdir().unwrap();
        let mut machine = print_then_sleep();
        let config = SnapshotConfig {
            ram_length: 1 << 20,
            bootargs: String::new(),
            images: Vec::new(),
            flash_drives: Vec::new(),
        };
        let watch = Watch {
            name: "riscv64gc-unknown-linux-gnu",
            max_mcycle: u64::MAX,
            stall_seconds: 1,
            snapshot_dir: out.path().join("v1.stalled-riscv64gc-unknown-linux-gnu"),
            expected_mcycle: None,
        };
        let seen = Mutex::new(Vec::new());
        let err = run_to_halt(&mut machine, &config, &watch, None, None, &|p| {
            if let Progress::Machine { console, .. } = p {
                seen.lock().unwrap().extend(console);
            }
        })
        .unwrap_err();
        // The first slice printed; the second was silent and idle for 200e6 cycles, more
        // than one guest second (128e6).
        let RunError::Stalled {
            seconds,
            since_mcycle,
            mcycle,
            ref console_tail,
            ref snapshot,
            ..
        } = err
        else {
            panic!("{err}");
        };
        assert_eq!(
            (seconds, since_mcycle, mcycle),
            (1, 200_000_000, 400_000_000)
        );
        assert_eq!(console_tail, "A");
        assert_eq!(seen.into_inner().unwrap(), b"A");
        let dir = out
            .path()
            .join("v1.stalled-riscv64gc-unknown-linux-gnu-at-400000000");
        assert!(snapshot.contains(&dir.display().to_string()), "{snapshot}");
        let loaded = crate::snapshot_dir::load(&dir).unwrap();
        assert_eq!(loaded.machine.mcycle(), 400_000_000);
        let text = err.to_string();
        assert!(
            text.starts_with(
                "machine riscv64gc-unknown-linux-gnu made no visible progress (no console byte, \
                 no drive write, idle) for 1 guest seconds, from mcycle 200000000 to 400000000"
            ),
            "{text}"
        );

        // With the watchdog off, the same machine runs to the mcycle limit.
        let mut machine = print_then_sleep();
        let watch = Watch {
            stall_seconds: 0,
            max_mcycle: 1_000_000_000,
            ..watch
        };
        let err = run_to_halt(&mut machine, &config, &watch, None, None, &|_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                RunError::Timeout {
                    mcycle: 1_000_000_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn groups_follow_the_machine_per_target_choice() {
        let t = Triple::ALL[..2].to_vec();
        assert_eq!(machine_groups(&t, true), vec![vec![t[0]], vec![t[1]]]);
        assert_eq!(machine_groups(&t, false), vec![t.clone()]);
    }
}
