//! The whole guest-image build: locked `.deb`s in, kernel, firmware, initramfs and root
//! image out, byte-identical on every run and every host.
//!
//! Inputs are only the lock, the package bytes (handed over by the caller, who fetches
//! them verified from the mirror; their sha256 is checked again here against the lock) and
//! the guest scripts compiled into this crate. Nothing reads host time, owners, umask or
//! directory order: the trees are in-memory maps and every writer fixes its own metadata.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use cmbuild_store::atomic::{write_atomically, AtomicError, AtomicFile};
use cmbuild_store::sha256::Sha256;

use crate::deb::{extract_deb, DebError};
use crate::erofs::{write_erofs, ErofsError, ErofsOptions};
use crate::initramfs::{initramfs_bytes, initramfs_tree, kernel_image, InitramfsError};
use crate::lock::{Lock, LockedPackage};
use crate::locking::BoxError;
use crate::rootfs::{add_skeleton, apply_fixups, RootfsError, Tree, CMBUILD_DIR};

/// `/init` of the initramfs.
pub const INIT_SCRIPT: &str = include_str!("../../../guest-image/init");
/// The build driver the init runs inside the root image.
pub const BUILD_DRIVER: &str = include_str!("../../../guest-image/build-driver.sh");
/// Cross-linking configuration for cargo inside the guest: the committed file, which a test
/// keeps byte-identical to [`crate::triple::cargo_config`]'s output.
pub const CARGO_CONFIG: &str = include_str!("../../../guest-image/cargo-config.toml");

/// Fixed volume UUID of the root image ("cmbuild rootfs v1" in ASCII, truncated).
const ROOTFS_UUID: [u8; 16] = *b"cmbuild-rootfs-1";
/// Every inode's time: 2000-01-01T00:00:00Z, so no build time leaks in.
const FIXED_TIME: u64 = 946_684_800;
/// Where OpenSBI's generic fw_jump lives in Debian's opensbi package.
const FIRMWARE_PATH: &str = "usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin";

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// package {name} ({arch}) could not be loaded
    #[error("package {name} ({arch}) could not be loaded")]
    Load {
        /// Package name.
        name: String,
        /// Debian architecture.
        arch: String,
        #[source]
        /// The underlying error.
        source: BoxError,
    },
    /// package {name} ({arch}) does not match the lock: sha256 {actual}, lock says {expected}
    #[error(
        "package {name} ({arch}) does not match the lock: sha256 {actual}, lock says {expected}"
    )]
    Mismatch {
        /// Package name.
        name: String,
        /// Debian architecture.
        arch: String,
        /// What was pinned or expected.
        expected: Sha256,
        /// What was found.
        actual: Sha256,
    },
    /// the lock has no {0} package
    #[error("the lock has no {0} package")]
    MissingPackage(String),
    /// extracting {name} ({arch})
    #[error("extracting {name} ({arch})")]
    Deb {
        /// Package name.
        name: String,
        /// Debian architecture.
        arch: String,
        #[source]
        /// The underlying error.
        source: DebError,
    },
    /// assembling the root tree
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// writing the root image
    #[error(transparent)]
    Erofs(#[from] ErofsError),
    /// building the initramfs
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// writing an output file atomically
    #[error(transparent)]
    Write(#[from] AtomicError),
    /// writing {path}
    #[error("writing {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        #[source]
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What a build produced: output file name -> path.
#[derive(Debug, Clone)]
pub struct Built {
    /// Output file name -> path.
    pub files: BTreeMap<String, PathBuf>,
}

/// Progress reports, so the CLI can say what is going on during a minutes-long build.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    /// A package is being extracted.
    Extracting {
        /// Package name.
        name: &'a str,
        /// Its position, from 0.
        index: usize,
        /// How many packages.
        total: usize,
    },
    /// An output file is being written.
    Writing(&'a str),
}

/// Build the four images into `out_dir`. `load` returns a locked package's bytes.
pub fn build_image(
    lock: &Lock,
    mut load: impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
    out_dir: &Path,
    mut progress: impl FnMut(Step),
) -> Result<Built, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    // Temporaries of an earlier build that was killed.
    cmbuild_store::atomic::remove_stale_temp_files(out_dir);
    let mut root = Tree::new();
    add_skeleton(&mut root)?;
    let mut kernel: Option<Tree> = None;
    let mut firmware: Option<Vec<u8>> = None;
    for_each_package(lock, &mut load, &mut progress, |package, entries| {
        let ships_kernel = package.name.starts_with("linux-image-")
            && entries.iter().any(|e| e.path.starts_with("boot/vmlinux-"));
        if ships_kernel {
            // The kernel and its modules belong to the boot files, not the build root
            // (the `linux-image-riscv64` metapackage ships only docs and goes to the root).
            let mut tree = Tree::new();
            tree.install(&entries)?;
            kernel = Some(tree);
        } else if package.name == "opensbi" {
            let mut tree = Tree::new();
            tree.install(&entries)?;
            firmware = Some(tree.read_file(FIRMWARE_PATH)?.to_vec());
        } else {
            root.install(&entries)?;
        }
        Ok(())
    })?;
    let kernel = kernel.ok_or_else(|| ImageError::MissingPackage("linux-image-*".into()))?;
    let firmware = firmware.ok_or_else(|| ImageError::MissingPackage("opensbi".into()))?;

    apply_fixups(&mut root)?;
    root.add_file(
        &format!("{CMBUILD_DIR}/build-driver.sh"),
        0o755,
        BUILD_DRIVER.into(),
    )?;
    root.add_file(
        &format!("{CMBUILD_DIR}/cargo-config.toml"),
        0o644,
        CARGO_CONFIG.into(),
    )?;

    let busybox = root.read_file("usr/bin/busybox")?;
    let initrd = initramfs_bytes(
        &initramfs_tree(&kernel, &busybox, INIT_SCRIPT)?,
        FIXED_TIME as u32,
    )?;
    let mut files = BTreeMap::new();
    for (name, bytes) in [
        ("vmlinux", kernel_image(&kernel)?),
        ("fw_jump.bin", firmware),
        ("initramfs.cpio", initrd),
    ] {
        progress(Step::Writing(name));
        let path = out_dir.join(name);
        write_atomically(&path, &bytes)?;
        files.insert(name.to_string(), path);
    }

    progress(Step::Writing("rootfs.erofs"));
    let path = out_dir.join("rootfs.erofs");
    let options = ErofsOptions {
        uuid: ROOTFS_UUID,
        volume_name: "cmbuild-root".into(),
        build_time: FIXED_TIME,
    };
    write_erofs_file(&path, &root, &options)?;
    files.insert("rootfs.erofs".to_string(), path);
    Ok(Built { files })
}

/// The file a toolchain layer is written to: `toolchain-1.96.0.erofs`.
pub fn layer_file_name(id: &str) -> String {
    format!("toolchain-{id}.erofs")
}

/// Build the toolchain layer `id` (its lock holds only what the base lacks) as an EROFS
/// image at `out_dir/toolchain-<id>.erofs`, returning its path. The layer carries the
/// base's skeleton (the merged-`/usr` links and mount points, identical to the base's, so
/// that the overlay shows the same tree) and the packages' files; nothing else.
pub fn build_layer(
    lock: &Lock,
    id: &str,
    load: impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
    out_dir: &Path,
    progress: impl FnMut(Step),
) -> Result<PathBuf, ImageError> {
    let spec = LayerSpec {
        file_name: layer_file_name(id),
        uuid_seed: format!("cmbuild-toolchain-layer {id}"),
        volume_name: "cmbuild-rust",
    };
    build_layer_as(&spec, lock, load, out_dir, progress, |_| Ok(()))
}

/// What tells one layer image from another: its file name, the text its volume UUID is
/// derived from, and its volume name.
pub struct LayerSpec {
    /// The file written in the output directory.
    pub file_name: String,
    /// Its UUID is the first 16 bytes of this text's sha256.
    pub uuid_seed: String,
    /// The EROFS volume name.
    pub volume_name: &'static str,
}

/// Build a layer over the base (the base's skeleton and `lock`'s packages, then whatever
/// `extra` adds) as the EROFS image `spec` describes, in `out_dir`; returns its path.
pub fn build_layer_as(
    spec: &LayerSpec,
    lock: &Lock,
    mut load: impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
    out_dir: &Path,
    mut progress: impl FnMut(Step),
    extra: impl FnOnce(&mut Tree) -> Result<(), ImageError>,
) -> Result<PathBuf, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let mut tree = Tree::new();
    add_skeleton(&mut tree)?;
    for_each_package(lock, &mut load, &mut progress, |_, entries| {
        Ok(tree.install(&entries)?)
    })?;
    extra(&mut tree)?;
    progress(Step::Writing(&spec.file_name));
    let path = out_dir.join(&spec.file_name);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&Sha256::of(&spec.uuid_seed).as_bytes()[..16]);
    let options = ErofsOptions {
        uuid,
        volume_name: spec.volume_name.into(),
        build_time: FIXED_TIME,
    };
    write_erofs_file(&path, &tree, &options)?;
    Ok(path)
}

/// The kernel package of the base lock `base` (the `linux-image-*` package that ships
/// `boot/vmlinux-*`), unpacked.
pub fn kernel_tree(
    base: &Lock,
    mut load: impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
) -> Result<Tree, ImageError> {
    for package in base
        .packages
        .iter()
        .filter(|p| p.name.starts_with("linux-image-"))
    {
        let entries = read_package(package, &mut load)?;
        if entries.iter().any(|e| e.path.starts_with("boot/vmlinux-")) {
            let mut tree = Tree::new();
            tree.install(&entries)?;
            return Ok(tree);
        }
    }
    Err(ImageError::MissingPackage("linux-image-*".into()))
}

/// Writes `tree` as an EROFS image at `path`: nothing is visible under the name until the
/// whole image is written and synced.
fn write_erofs_file(path: &Path, tree: &Tree, options: &ErofsOptions) -> Result<(), ImageError> {
    let file = AtomicFile::create(path)?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    write_erofs(tree, options, &mut writer)?;
    writer
        .into_inner()
        .map_err(|err| ImageError::Io {
            path: path.to_path_buf(),
            source: err.into_error(),
        })?
        .commit()?;
    Ok(())
}

/// Reads, checks and extracts every package of `lock` in one fixed order (name, then
/// architecture), so that a later package overwrites an earlier one the same way on every
/// host, and hands each package's entries to `install`.
fn for_each_package(
    lock: &Lock,
    load: &mut impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
    progress: &mut impl FnMut(Step),
    mut install: impl FnMut(&LockedPackage, Vec<crate::deb::Entry>) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let mut packages: Vec<&LockedPackage> = lock.packages.iter().collect();
    packages.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    let total = packages.len();
    for (index, package) in packages.into_iter().enumerate() {
        progress(Step::Extracting {
            name: &package.name,
            index,
            total,
        });
        install(package, read_package(package, load)?)?;
    }
    Ok(())
}

fn read_package(
    package: &LockedPackage,
    load: &mut impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
) -> Result<Vec<crate::deb::Entry>, ImageError> {
    let bytes = load(package).map_err(|source| ImageError::Load {
        name: package.name.clone(),
        arch: package.architecture.clone(),
        source,
    })?;
    let actual = Sha256::of(&bytes);
    if actual != package.sha256 {
        return Err(ImageError::Mismatch {
            name: package.name.clone(),
            arch: package.architecture.clone(),
            expected: package.sha256,
            actual,
        });
    }
    extract_deb(&bytes).map_err(|source| ImageError::Deb {
        name: package.name.clone(),
        arch: package.architecture.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, arch: &str) -> LockedPackage {
        LockedPackage {
            architecture: arch.into(),
            cid: cmbuild_store::cid::cid_of_bytes(name.as_bytes()),
            filename: format!("pool/{name}_{arch}.deb"),
            name: name.into(),
            sha256: Sha256::of(format!("{name}{arch}")),
            size: 1,
            version: "1.0".into(),
        }
    }

    fn lock(packages: Vec<LockedPackage>) -> Lock {
        Lock {
            format: crate::lock::LOCK_FORMAT.into(),
            indices: BTreeMap::new(),
            mirror: String::new(),
            packages,
            release_date: String::new(),
            release_version: String::new(),
            suite: "trixie".into(),
        }
    }

    #[test]
    fn a_package_not_matching_the_lock_is_refused() {
        let lock = lock(vec![package("busybox-static", "riscv64")]);
        let dir = tempfile::tempdir().unwrap();
        let err = build_image(&lock, |_| Ok(b"tampered".to_vec()), dir.path(), |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::Mismatch { .. }), "{err}");
        let err = build_image(&lock, |_| Err("gone".into()), dir.path(), |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::Load { .. }), "{err}");
    }

    #[test]
    fn image_files_appear_whole_or_not_at_all() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.erofs");
        let mut staged = AtomicFile::create(&path).unwrap();
        staged.write_all(b"half").unwrap();
        drop(staged); // a failed build
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut staged = AtomicFile::create(&path).unwrap();
        staged.write_all(b"whole").unwrap();
        assert!(!path.exists(), "visible before it is complete");
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
