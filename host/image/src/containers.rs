//! The container layer (issue 15): what a build from a Dockerfile (`cmbuild run
//! --dockerfile`) runs inside the machine, and nothing a Rust build ever reads.
//!
//! It is a layer over the base like a toolchain's (the closure of `[containers]` in
//! `guest-image/packages.toml` minus the base's packages, locked into
//! `guest-image/containers.lock.json` by `cmbuild image lock --containers-only`, built into
//! one EROFS image pinned as [`PIN`]), and it also carries the kernel modules its storage
//! needs ([`MODULES`], with their dependencies, decompressed from the base's own kernel
//! package, under [`MODULES_DIR`] with their load order in `order`): the initramfs loads
//! only what mounting the root needs, and adding to it would move every published root
//! hash.
//!
//! A build from a Dockerfile carries the layer on its scratch drive, as the first of two
//! partitions ([`scratch_drive`]); the guest mounts it from there (no loop device, whose
//! module the guest would not have), loads the modules, and puts container storage on an
//! ext2 file system it makes on the second partition.

use std::path::{Path, PathBuf};

use crate::image::{self, ImageError, LayerSpec, Step};
use crate::lock::{Lock, LockFileError, LockedPackage};
use crate::locking::BoxError;

/// The container layer's lock this cmbuild was built with.
pub const SHIPPED_LOCK: &str = include_str!("../../../guest-image/containers.lock.json");

/// The pin of the container layer's image in `digests.lock.env`.
pub const PIN: &str = "GUEST_CONTAINERS_CID";

/// The file `cmbuild image build` writes the layer to.
pub const FILE_NAME: &str = "containers.erofs";

/// The kernel modules the layer carries (their dependencies come along): ext4, whose
/// driver mounts the storage's ext2 file system.
pub const MODULES: &[&str] = &["ext4"];

/// Where in the layer the modules and their load order (`order`, one name a line) are.
pub const MODULES_DIR: &str = "usr/lib/cmbuild/containers/modules";

/// The container layer's lock this cmbuild was built with, parsed.
pub fn shipped() -> Result<Lock, LockFileError> {
    Lock::parse(SHIPPED_LOCK)
}

/// Builds the container layer from its lock `layer` and the kernel package of the base
/// lock `base` (both read through `load`, each checked against its pin) as
/// `out_dir/`[`FILE_NAME`]; returns its path.
pub fn build_layer(
    layer: &Lock,
    base: &Lock,
    mut load: impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
    out_dir: &Path,
    progress: impl FnMut(Step),
) -> Result<PathBuf, ImageError> {
    let kernel = image::kernel_tree(base, &mut load)?;
    let (_, modules) = crate::initramfs::ordered_modules(&kernel, MODULES)?;
    drop(kernel);
    let spec = LayerSpec {
        file_name: FILE_NAME.to_owned(),
        uuid_seed: "cmbuild-container-layer".to_owned(),
        volume_name: "cmbuild-containers",
    };
    image::build_layer_as(&spec, layer, load, out_dir, progress, |tree| {
        let mut order = String::new();
        for (name, bytes) in modules {
            tree.add_file(&format!("{MODULES_DIR}/{name}.ko"), 0o644, bytes)?;
            order.push_str(&name);
            order.push('\n');
        }
        tree.add_file(&format!("{MODULES_DIR}/order"), 0o644, order.into_bytes())?;
        Ok(())
    })
}

/// Bytes per sector in the scratch drive's partition table.
const SECTOR: u64 = 512;
/// Where the first partition starts, and what both partitions' starts are aligned to.
const ALIGN: u64 = 1 << 20;

/// Why a scratch drive could not be laid out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScratchError {
    /// the container layer ({layer} bytes) leaves no room for storage on a {drive}-byte scratch drive
    #[error(
        "the container layer ({layer} bytes) leaves no room for storage on a {drive}-byte \
         scratch drive"
    )]
    TooSmall {
        /// The layer's size.
        layer: u64,
        /// The drive's size.
        drive: u64,
    },
}

/// The start of a scratch drive of `drive_length` bytes carrying `layer`: an MBR partition
/// table whose first partition holds the layer (from 1 MiB) and whose second, the rest of
/// the drive (from the next MiB), is left to the guest for container storage; returns the
/// bytes to write at the drive's start (table and layer) and the second partition's
/// `(offset, length)` in bytes.
pub fn scratch_drive(
    layer: &[u8],
    drive_length: u64,
) -> Result<(Vec<u8>, (u64, u64)), ScratchError> {
    let layer_len = layer.len() as u64;
    let first_len = layer_len.div_ceil(ALIGN).max(1) * ALIGN;
    let second_start = ALIGN + first_len;
    let second_len = (drive_length / ALIGN * ALIGN).saturating_sub(second_start);
    // The storage needs room for more than its own metadata.
    if second_len < 64 * ALIGN || second_start + second_len > u64::from(u32::MAX) * SECTOR {
        return Err(ScratchError::TooSmall {
            layer: layer_len,
            drive: drive_length,
        });
    }
    let mut bytes = vec![0u8; (ALIGN + layer_len) as usize];
    for (slot, (start, len)) in [(ALIGN, first_len), (second_start, second_len)]
        .into_iter()
        .enumerate()
    {
        let entry = &mut bytes[446 + 16 * slot..462 + 16 * slot];
        entry[0] = 0; // not bootable
        entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS: beyond, use the LBA fields
        entry[4] = 0x83; // Linux
        entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        entry[8..12].copy_from_slice(&((start / SECTOR) as u32).to_le_bytes());
        entry[12..16].copy_from_slice(&((len / SECTOR) as u32).to_le_bytes());
    }
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    bytes[ALIGN as usize..].copy_from_slice(layer);
    Ok((bytes, (second_start, second_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_lock_is_a_layer_over_the_shipped_base() {
        let layer = shipped().unwrap();
        let base = crate::lock::shipped_lock().unwrap();
        let names: Vec<&str> = layer.packages.iter().map(|p| p.name.as_str()).collect();
        for wanted in ["buildah", "crun", "netavark"] {
            assert!(names.contains(&wanted), "{wanted} is not in the layer");
        }
        for p in &layer.packages {
            assert!(
                !base
                    .packages
                    .iter()
                    .any(|b| b.name == p.name && b.architecture == p.architecture),
                "{} is in the base too",
                p.name
            );
        }
    }

    #[test]
    fn the_scratch_drive_holds_a_partition_table_and_the_layer() {
        let layer = vec![7u8; 3 * 4096];
        let drive = 256 << 20;
        let (bytes, (start, len)) = scratch_drive(&layer, drive).unwrap();
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(&bytes[ALIGN as usize..], &layer[..]);
        let field = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
        // First partition: the layer, from 1 MiB, a whole MiB long.
        assert_eq!(
            (bytes[446 + 4], field(446 + 8), field(446 + 12)),
            (0x83, 2048, 2048)
        );
        // Second: the rest of the drive, from 2 MiB.
        assert_eq!((start, len), (2 << 20, drive - (2 << 20)));
        assert_eq!((field(462 + 8), field(462 + 12)), (start / 512, len / 512));
        // Partitions never overlap, whatever the layer's size.
        for size in [1, 4096, (1 << 20) - 1, 1 << 20, (1 << 20) + 1] {
            let (bytes, (start, len)) = scratch_drive(&vec![1; size], drive).unwrap();
            assert!(ALIGN + field(446 + 12) * 512 <= start && start + len <= drive);
            assert_eq!(bytes.len(), (1 << 20) + size);
        }
        assert!(matches!(
            scratch_drive(&layer, 16 << 20),
            Err(ScratchError::TooSmall { .. })
        ));
    }
}
