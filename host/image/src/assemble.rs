//! The guest image on first use: assembled offline from the `.deb`s already in the mirror,
//! checked against its pins, and kept in the mirror by CID.
//!
//! `cmbuild vendor` fetches the locked Debian packages; the first `cmbuild run` that needs
//! the image finds its four files missing from the mirror and calls [`ensure_in_mirror`],
//! which builds them exactly as `cmbuild image build` does, refuses any file whose CID is not
//! the pinned one, and stores the rest. Later runs read them from the mirror directly, so a
//! user's two steps (`vendor`, then `run`) are enough.

use std::path::{Path, PathBuf};

use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::{Mirror, MirrorError};

use crate::image::{self, ImageError, Step};
use crate::lock::{Lock, LockedPackage};
use crate::pins::{self, Pins, PinsError};

/// Why the guest image could not be assembled into the mirror.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A pin the image needs is missing or not a CID.
    #[error("{0}")]
    Pins(#[from] PinsError),
    /// Building the image failed (typically: a locked package is not in the mirror).
    #[error("assembling the guest image from the mirror's Debian packages (run `cmbuild vendor` to fetch them)")]
    Build(#[source] Box<ImageError>),
    /// The assembled file is not the pinned one.
    #[error(
        "the assembled {file} is {actual}, but {key} pins {pinned}: these pins belong to another \
         guest-image lock than the one this cmbuild carries (assemble it with `cmbuild image build \
         --lock LOCK` and pass `--image-dir`)"
    )]
    Drift {
        /// The file.
        file: String,
        /// Its pin.
        key: String,
        /// The pinned CID.
        pinned: Cid,
        /// What came out.
        actual: Cid,
    },
    /// Reading or storing a file failed.
    #[error("storing {path} in the mirror")]
    Store {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: MirrorError,
    },
    /// A file could not be opened.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The pinned CID of each guest-image file, `(pin key, file name, cid)`, in key order.
pub fn pinned_files(pins: &Pins) -> Result<Vec<(&'static str, &'static str, Cid)>, AssembleError> {
    pins::IMAGE_FILES
        .iter()
        .map(|(key, file)| Ok((*key, *file, pins::require_cid(pins, key)?)))
        .collect()
}

/// Makes sure the toolchain layer `id` pinned in `pins` is in `mirror`: if missing, it is
/// assembled from the `.deb`s of its lock `layer` (read verified from the mirror) inside
/// `work_dir`, checked against its pin, and stored. Returns whether it was assembled.
pub fn ensure_layer_in_mirror(
    mirror: &Mirror,
    layer: &Lock,
    id: &str,
    pins: &Pins,
    work_dir: &Path,
    progress: impl FnMut(Step),
) -> Result<bool, AssembleError> {
    let load = |package: &LockedPackage| Ok(mirror.read_verified(&package.cid)?);
    ensure_built_in_mirror(mirror, &pins::layer_key(id), pins, || {
        image::build_layer(layer, id, load, work_dir, progress)
    })
}

/// Makes sure the container layer pinned in `pins` is in `mirror`, as
/// [`ensure_layer_in_mirror`] a toolchain's: assembled from its lock `layer` and the
/// kernel package of the base lock `base`.
pub fn ensure_containers_in_mirror(
    mirror: &Mirror,
    layer: &Lock,
    base: &Lock,
    pins: &Pins,
    work_dir: &Path,
    progress: impl FnMut(Step),
) -> Result<bool, AssembleError> {
    let load = |package: &LockedPackage| Ok(mirror.read_verified(&package.cid)?);
    ensure_built_in_mirror(mirror, crate::containers::PIN, pins, || {
        crate::containers::build_layer(layer, base, load, work_dir, progress)
    })
}

/// Unless the file pinned as `key` is in `mirror`: `build`s it, checks it against its pin
/// and stores it. Returns whether it built.
fn ensure_built_in_mirror(
    mirror: &Mirror,
    key: &str,
    pins: &Pins,
    build: impl FnOnce() -> Result<PathBuf, ImageError>,
) -> Result<bool, AssembleError> {
    let pinned = pins::require_cid(pins, key)?;
    if mirror.has_valid(&pinned).unwrap_or(false) {
        return Ok(false);
    }
    let path = build().map_err(|e| AssembleError::Build(Box::new(e)))?;
    let actual = cmbuild_store::cid::cid_of_file(&path).map_err(|source| AssembleError::Io {
        path: path.clone(),
        source,
    })?;
    if actual != pinned {
        return Err(AssembleError::Drift {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            key: key.to_owned(),
            pinned,
            actual,
        });
    }
    let file = std::fs::File::open(&path).map_err(|source| AssembleError::Io {
        path: path.clone(),
        source,
    })?;
    mirror
        .put_reader(file)
        .map_err(|source| AssembleError::Store { path, source })?;
    Ok(true)
}

/// Makes sure every guest-image file pinned in `pins` is in `mirror`. Missing ones are
/// assembled from the `.deb`s of `lock` (read verified from the mirror) inside `work_dir`,
/// checked against their pins, and stored. Returns whether anything was assembled.
pub fn ensure_in_mirror(
    mirror: &Mirror,
    lock: &Lock,
    pins: &Pins,
    work_dir: &Path,
    progress: impl FnMut(Step),
) -> Result<bool, AssembleError> {
    let wanted = pinned_files(pins)?;
    let mut missing = false;
    for (_, _, cid) in &wanted {
        if !mirror.has_valid(cid).unwrap_or(false) {
            missing = true;
        }
    }
    if !missing {
        return Ok(false);
    }
    let load = |package: &LockedPackage| Ok(mirror.read_verified(&package.cid)?);
    let built = image::build_image(lock, load, work_dir, progress)
        .map_err(|e| AssembleError::Build(Box::new(e)))?;
    // Check every file before storing any, so a drifting image leaves the mirror as it was.
    let mut checked = Vec::new();
    for (key, file, pinned) in wanted {
        let path = built
            .files
            .get(file)
            .cloned()
            .unwrap_or_else(|| work_dir.join(file));
        let actual =
            cmbuild_store::cid::cid_of_file(&path).map_err(|source| AssembleError::Io {
                path: path.clone(),
                source,
            })?;
        if actual != pinned {
            return Err(AssembleError::Drift {
                file: file.to_owned(),
                key: key.to_owned(),
                pinned,
                actual,
            });
        }
        checked.push(path);
    }
    for path in checked {
        let file = std::fs::File::open(&path).map_err(|source| AssembleError::Io {
            path: path.clone(),
            source,
        })?;
        mirror
            .put_reader(file)
            .map_err(|source| AssembleError::Store { path, source })?;
    }
    Ok(true)
}
