//! The snapshot side of `cmbuild machine run`: `--store DIR` and `--load DIR`.
//!
//! The format and its checks are the machine crate's (`cmbuild_machine::snapshot`), the
//! directory I/O is `cmbuild::snapshot_dir`'s; this module records where shared flash drives live on the host, so that a resumed run
//! writes a shared drive's final contents back to the same file an uninterrupted run would
//! have written, and turns library errors into messages that name the directory.

use std::path::Path;

use anyhow::{bail, Context};
use cmbuild::snapshot_dir;
use cmbuild_machine::machine::{Machine, MachineConfig};
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

/// The record of a machine built from flags: `config` plus the host files of its drives
/// (`host_files[i]` for drive `i`), made absolute so that `--load` works from any directory.
pub fn record<'a>(
    config: &MachineConfig,
    host_files: impl IntoIterator<Item = &'a Path>,
) -> anyhow::Result<SnapshotConfig> {
    let mut record = SnapshotConfig::from_config(config);
    for (drive, path) in record.flash_drives.iter_mut().zip(host_files) {
        if !drive.shared {
            continue;
        }
        let absolute = std::fs::canonicalize(path)
            .with_context(|| format!("resolving flash drive file {}", path.display()))?;
        let Some(text) = absolute.to_str() else {
            bail!(
                "--store: the shared flash drive file {} has a name that is not UTF-8",
                absolute.display()
            );
        };
        drive.host_file = Some(text.to_string());
    }
    Ok(record)
}

/// Loads the snapshot in `dir`, with every check of the library.
pub fn load(dir: &Path) -> anyhow::Result<(Machine, SnapshotConfig)> {
    let loaded = snapshot_dir::load(dir)
        .with_context(|| format!("--load {}: refusing the snapshot", dir.display()))?;
    Ok((loaded.machine, loaded.config))
}

/// At the end of a run: writes the shared drives of a resumed machine back to the host
/// files the snapshot recorded (a run built from flags has already written its own), then
/// stores the snapshot if `--store` was given.
pub fn finish(
    machine: &mut Machine,
    record: Option<&SnapshotConfig>,
    resumed: bool,
    store: Option<&Path>,
) -> anyhow::Result<()> {
    if let (true, Some(record)) = (resumed, record) {
        for (drive, rec) in machine.bus.flash.iter().zip(&record.flash_drives) {
            if let (true, Some(path)) = (drive.shared, &rec.host_file) {
                let bytes = &drive.mem.bytes()[..drive.image_length as usize];
                std::fs::write(path, bytes)
                    .with_context(|| format!("writing back flash drive {path}"))?;
            }
        }
    }
    if let Some(dir) = store {
        let record = record.context("internal: --store without a snapshot record")?;
        snapshot_dir::store(dir, machine, record)
            .with_context(|| format!("--store {}", dir.display()))?;
    }
    Ok(())
}
