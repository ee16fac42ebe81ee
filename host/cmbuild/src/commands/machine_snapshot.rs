//! The snapshot side of `cmbuild machine run`: `--store DIR` and `--load DIR`.
//!
//! The format and its checks are the machine crate's (`cmbuild_machine::snapshot`), the
//! directory I/O is `cmbuild::snapshot_dir`'s; this module matches the `--flash-drive`
//! arguments given with `--load` to the snapshot's drives (a resumed run writes a shared
//! drive back only where the command line says, never where a snapshot says), and turns
//! library errors into messages that name the directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cmbuild::snapshot_dir;
use cmbuild_machine::machine::Machine;
use cmbuild_machine::snapshot::SnapshotConfig;

/// Fails early (before a long run) when `--store DIR` could not be written at the end.
pub fn check_store_target(dir: &Path) -> anyhow::Result<()> {
    if dir.symlink_metadata().is_ok() {
        bail!(
            "--store {}: the directory already exists; remove it or choose another",
            dir.display()
        );
    }
    Ok(())
}

/// Where each flash drive of a resumed machine is written back at the end of the run:
/// `Some(path)` for a shared drive the command line names (`--flash-drive
/// label:NAME,filename:PATH,shared`, matched by label), `None` otherwise. A snapshot never
/// decides this: it names no host paths.
pub fn write_back_targets(
    record: &SnapshotConfig,
    given: &[(String, PathBuf, bool)],
) -> anyhow::Result<Vec<Option<PathBuf>>> {
    let mut targets = vec![None; record.flash_drives.len()];
    for (label, path, shared) in given {
        let Some(i) = record.flash_drives.iter().position(|d| &d.label == label) else {
            let labels: Vec<&str> = record
                .flash_drives
                .iter()
                .map(|d| d.label.as_str())
                .collect();
            bail!(
                "--flash-drive label:{label}: the snapshot has no drive of that label (it has {labels:?})"
            );
        };
        let drive = &record.flash_drives[i];
        if drive.shared != *shared {
            bail!(
                "--flash-drive label:{label}: the snapshot's drive is {}; give the same flags as when it was stored",
                if drive.shared { "shared (add ,shared)" } else { "not shared (drop ,shared)" }
            );
        }
        if targets[i].is_some() {
            bail!("--flash-drive label:{label} is given twice");
        }
        if *shared {
            targets[i] = Some(path.clone());
        }
    }
    for (drive, target) in record.flash_drives.iter().zip(&targets) {
        if drive.shared && target.is_none() {
            eprintln!(
                "cmbuild-machine: note: shared flash drive {:?} is not written back (no --flash-drive label:{},filename:PATH,shared)",
                drive.label, drive.label
            );
        }
    }
    Ok(targets)
}

/// Loads the snapshot in `dir`, with every check of the library.
pub fn load(dir: &Path) -> anyhow::Result<(Machine, SnapshotConfig)> {
    let loaded = snapshot_dir::load(dir)
        .with_context(|| format!("--load {}: refusing the snapshot", dir.display()))?;
    Ok((loaded.machine, loaded.config))
}

/// At the end of a run: writes the shared drives of a resumed machine back to the files
/// the command line named (`targets`, from [`write_back_targets`]; a run built from flags
/// has already written its own), then stores the snapshot if `--store` was given.
pub fn finish(
    machine: &mut Machine,
    record: Option<&SnapshotConfig>,
    targets: &[Option<PathBuf>],
    store: Option<&Path>,
) -> anyhow::Result<()> {
    for (drive, target) in machine.bus.flash.iter().zip(targets) {
        if let (true, Some(path)) = (drive.shared, target) {
            let bytes = &drive.mem.bytes()[..drive.image_length as usize];
            std::fs::write(path, bytes)
                .with_context(|| format!("writing back flash drive {}", path.display()))?;
        }
    }
    if let Some(dir) = store {
        let record = record.context("internal: --store without a snapshot record")?;
        snapshot_dir::store(dir, machine, record)
            .with_context(|| format!("--store {}", dir.display()))?;
    }
    Ok(())
}
