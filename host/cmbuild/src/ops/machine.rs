//! `cmbuild machine run`: boot a program or a kernel on the machine directly, optionally
//! resuming a snapshot (`--load`) or storing one at the end (`--store`).
//!
//! The snapshot format and its checks are the machine crate's (`cmbuild_machine::snapshot`),
//! the directory I/O is [`crate::snapshot_dir`]'s; this module matches the flash drives given
//! with a resumed snapshot to its drives (a resumed run writes a shared drive back only where
//! the command line says, never where a snapshot says).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cmbuild_machine::machine::{Break, FlashConfig, Machine, MachineConfig, MachineError};
use cmbuild_machine::snapshot::SnapshotConfig;

use crate::perf_map::{PerfMap, PerfMapError};
use crate::snapshot_dir::{self, SnapshotDirError};
use crate::terminal::Stream;
use crate::watchdog::{Stall, Watchdog};

/// Why `cmbuild machine run` failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineRunError {
    /// The `--store` directory exists already.
    #[error("--store {}: the directory already exists; remove it or choose another", .0.display())]
    StoreExists(PathBuf),
    /// An input file could not be read.
    #[error("reading the {what} {}", .path.display())]
    Read {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Nothing to boot.
    #[error("nothing to run: give --ram-image, --bios or --kernel (or --load DIR)")]
    NothingToRun,
    /// The machine could not be built.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A flash drive given with `--load` names no drive of the snapshot.
    #[error(
        "--flash-drive label:{label}: the snapshot has no drive of that label (it has {labels:?})"
    )]
    NoSuchDrive {
        /// The label given.
        label: String,
        /// The snapshot's labels.
        labels: Vec<String>,
    },
    /// A flash drive given with `--load` differs from the snapshot's in being shared.
    #[error(
        "--flash-drive label:{label}: the snapshot's drive is {}; give the same flags as when it was stored",
        if *.shared { "shared (add ,shared)" } else { "not shared (drop ,shared)" }
    )]
    SharedMismatch {
        /// The label.
        label: String,
        /// Whether the snapshot's drive is shared.
        shared: bool,
    },
    /// A flash drive is given twice.
    #[error("--flash-drive label:{0} is given twice")]
    GivenTwice(String),
    /// The snapshot was refused.
    #[error("--load {}: refusing the snapshot", .dir.display())]
    Load {
        /// The snapshot directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: SnapshotDirError,
    },
    /// The snapshot could not be stored.
    #[error("--store {}", .dir.display())]
    Store {
        /// The snapshot directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: SnapshotDirError,
    },
    /// A shared drive could not be written back.
    #[error("writing back flash drive {}", .path.display())]
    WriteBack {
        /// The drive's file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: cmbuild_store::atomic::AtomicError,
    },
    /// The stall watchdog stopped the machine ([`crate::watchdog`]).
    #[error(
        "the machine made no visible progress (no console byte, no drive write, idle) for \
         {seconds} guest seconds, from mcycle {since_mcycle} to {mcycle}; stopped\n\
         last console lines:\n{console_tail}\n{snapshot}"
    )]
    Stalled {
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
    /// The console could not be written.
    #[error("writing the console")]
    Console(#[source] io::Error),
    /// The perf map could not be written.
    #[error(transparent)]
    PerfMap(#[from] PerfMapError),
}

type Result<T, E = MachineRunError> = std::result::Result<T, E>;

/// A flash drive given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashDrive {
    /// Its label.
    pub label: String,
    /// Its file: read for a fresh machine, written back at the end when shared.
    pub path: PathBuf,
    /// Whether its final contents are written back to `path`.
    pub shared: bool,
}

/// What `cmbuild machine run` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct MachineRunOptions {
    /// RAM size, bytes.
    pub ram_length: u64,
    /// Raw image loaded at the start of RAM.
    pub ram_image: Option<PathBuf>,
    /// Firmware loaded at the start of RAM.
    pub bios: Option<PathBuf>,
    /// Kernel loaded 2 MiB into RAM.
    pub kernel: Option<PathBuf>,
    /// Initrd, at the top of RAM.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub append: String,
    /// Flash drives, in order.
    pub flash_drives: Vec<FlashDrive>,
    /// Stop when mcycle reaches this.
    pub max_mcycle: Option<u64>,
    /// Compute the final state hash.
    pub final_hash: bool,
    /// Store a snapshot here at the end (must not exist).
    pub store: Option<PathBuf>,
    /// Resume the snapshot here.
    pub load: Option<PathBuf>,
    /// Run translated code for hot blocks (else interpret every instruction).
    pub jit: bool,
    /// Append the translated blocks' symbols to `/tmp/perf-<pid>.map` (see
    /// [`crate::perf_map`]).
    pub perf_map: bool,
    /// Stop the machine after this many guest seconds without visible progress, leaving a
    /// snapshot in `store` (or `./stalled-at-MCYCLE`); 0 never stops it (see
    /// [`crate::watchdog`]).
    pub stall_seconds: u64,
}

/// How a machine run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRunOutcome {
    /// Halted (with the guest's exit code) or stopped at the mcycle limit.
    pub brk: Break,
    /// The machine's mcycle at the end.
    pub mcycle: u64,
    /// The final state hash, if asked for.
    pub root_hash: Option<String>,
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| MachineRunError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Runs the machine, writing its console (sanitised) to `console` as the guest produces
/// it; `note` hears remarks about the run.
pub fn run(
    opts: &MachineRunOptions,
    console: &mut dyn Write,
    note: &mut dyn FnMut(&str),
) -> Result<MachineRunOutcome> {
    if let Some(dir) = &opts.store {
        // Fail early, before a long run, when the snapshot could not be written at the end.
        if dir.symlink_metadata().is_ok() {
            return Err(MachineRunError::StoreExists(dir.clone()));
        }
    }
    let (mut machine, record, targets) = match &opts.load {
        Some(dir) => {
            let loaded = snapshot_dir::load(dir).map_err(|source| MachineRunError::Load {
                dir: dir.clone(),
                source,
            })?;
            let targets = write_back_targets(&loaded.config, &opts.flash_drives, note)?;
            (loaded.machine, loaded.config, targets)
        }
        None => {
            let config = build_config(opts)?;
            // Also what a stalled machine's snapshot records.
            let record = SnapshotConfig::from_config(&config);
            // A fresh machine writes its shared drives back to the files they came from.
            let targets = opts
                .flash_drives
                .iter()
                .map(|f| f.shared.then(|| f.path.clone()))
                .collect();
            (Machine::new(&config)?, record, targets)
        }
    };
    machine.hart.set_jit(opts.jit);
    let mut perf_map = PerfMap::open_if(opts.perf_map, &mut machine)?;
    let limit = opts.max_mcycle.unwrap_or(u64::MAX);
    let mut watchdog = Watchdog::new(opts.stall_seconds, &machine);
    let brk = match run_streaming(
        &mut machine,
        limit,
        console,
        &mut watchdog,
        perf_map.as_mut(),
    )? {
        Ok(brk) => brk,
        Err(stall) => {
            let dir = opts
                .store
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("stalled-at-{}", stall.mcycle)));
            let snapshot = crate::watchdog::store_snapshot(&dir, &mut machine, &record);
            return Err(MachineRunError::Stalled {
                seconds: stall.seconds,
                since_mcycle: stall.since_mcycle,
                mcycle: stall.mcycle,
                console_tail: stall.console_tail,
                snapshot,
            });
        }
    };
    for (drive, target) in machine.bus.flash.iter().zip(&targets) {
        if let (true, Some(path)) = (drive.shared, target) {
            let bytes = &drive.mem.bytes()[..drive.image_length as usize];
            // Atomically: a run killed while writing back leaves the old drive file or the
            // new one, never a mix (and its temporary file is removed here, next time).
            remove_stale_write_back_temps(path);
            cmbuild_store::atomic::write_atomically(path, bytes).map_err(|source| {
                MachineRunError::WriteBack {
                    path: path.clone(),
                    source,
                }
            })?;
        }
    }
    if let Some(dir) = &opts.store {
        snapshot_dir::store(dir, &mut machine, &record).map_err(|source| {
            MachineRunError::Store {
                dir: dir.clone(),
                source,
            }
        })?;
    }
    Ok(MachineRunOutcome {
        brk,
        mcycle: machine.mcycle(),
        root_hash: opts.final_hash.then(|| machine.root_hash()),
    })
}

/// Removes, beside the drive file `path`, the temporary files of write-backs killed midway:
/// exactly `.tmp-<pid>-<n>` (cmbuild_store::atomic's names) whose process `<pid>` is gone.
/// Only where `/proc` tells which processes live; anything else is left alone.
fn remove_stale_write_back_temps(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, n)) = name
            .strip_prefix(cmbuild_store::atomic::TEMP_PREFIX)
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file
            && numeric(pid)
            && numeric(n)
            && pid != std::process::id().to_string()
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Where each flash drive of a resumed machine is written back at the end of the run:
/// `Some(path)` for a shared drive the command line names (matched by label), `None`
/// otherwise. A snapshot never decides this: it names no host paths.
pub fn write_back_targets(
    record: &SnapshotConfig,
    given: &[FlashDrive],
    note: &mut dyn FnMut(&str),
) -> Result<Vec<Option<PathBuf>>> {
    let mut targets = vec![None; record.flash_drives.len()];
    for f in given {
        let Some(i) = record.flash_drives.iter().position(|d| d.label == f.label) else {
            return Err(MachineRunError::NoSuchDrive {
                label: f.label.clone(),
                labels: record
                    .flash_drives
                    .iter()
                    .map(|d| d.label.clone())
                    .collect(),
            });
        };
        let drive = &record.flash_drives[i];
        if drive.shared != f.shared {
            return Err(MachineRunError::SharedMismatch {
                label: f.label.clone(),
                shared: drive.shared,
            });
        }
        if targets[i].is_some() {
            return Err(MachineRunError::GivenTwice(f.label.clone()));
        }
        if f.shared {
            targets[i] = Some(f.path.clone());
        }
    }
    for (drive, target) in record.flash_drives.iter().zip(&targets) {
        if drive.shared && target.is_none() {
            note(&format!(
                "cmbuild-machine: note: shared flash drive {:?} is not written back (no --flash-drive label:{},filename:PATH,shared)",
                drive.label, drive.label
            ));
        }
    }
    Ok(targets)
}

/// The configuration the options describe, images read from their files.
fn build_config(opts: &MachineRunOptions) -> Result<MachineConfig> {
    let opt = |p: &Option<PathBuf>, what| p.as_deref().map(|p| read(p, what)).transpose();
    let config = MachineConfig {
        offload: None,
        ram_length: opts.ram_length,
        ram_image: opt(&opts.ram_image, "RAM image")?,
        bios: opt(&opts.bios, "firmware")?,
        kernel: opt(&opts.kernel, "kernel")?,
        initrd: opt(&opts.initrd, "initrd")?,
        bootargs: opts.append.clone(),
        flash_drives: opts
            .flash_drives
            .iter()
            .map(|f| {
                Ok(FlashConfig {
                    label: f.label.clone(),
                    image: read(&f.path, "flash drive")?,
                    shared: f.shared,
                })
            })
            .collect::<Result<_>>()?,
    };
    if config.ram_image.is_none() && config.bios.is_none() && config.kernel.is_none() {
        return Err(MachineRunError::NothingToRun);
    }
    Ok(config)
}

/// Runs in slices so that console output reaches `out` (and the translator's symbols the
/// perf map) as the guest produces it, until the machine breaks (`Ok`) or `watchdog` stops
/// it (`Err`).
fn run_streaming(
    machine: &mut Machine,
    limit: u64,
    out: &mut dyn Write,
    watchdog: &mut Watchdog,
    mut perf_map: Option<&mut PerfMap>,
) -> Result<Result<Break, Stall>> {
    const SLICE: u64 = 4_000_000;
    // The guest's console is untrusted: escape sequences are shown, not sent.
    let mut console = Stream::new();
    let mut write = |text: String| -> Result<()> {
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(MachineRunError::Console)
    };
    loop {
        let until = machine.mcycle().saturating_add(SLICE).min(limit);
        let brk = machine.run(until);
        if let Some(map) = perf_map.as_deref_mut() {
            map.drain(machine)?;
        }
        let bytes = machine.drain_console();
        write(console.push(&bytes))?;
        let stall = watchdog.observe(machine, &bytes);
        match (brk, stall) {
            (Break::MaxMcycle, Some(stall)) => {
                write(console.finish())?;
                return Ok(Err(stall));
            }
            (Break::MaxMcycle, None) if until < limit => continue,
            (other, _) => {
                write(console.finish())?;
                return Ok(Ok(other));
            }
        }
    }
}
