//! The vendored crates of a run: the commit's Cargo.lock mapped to blobs of the mirror and
//! unpacked as a cargo directory source.

use std::path::Path;

use cmbuild_store::crates::{write_directory_source, VendoredCrate};
use cmbuild_store::lockfile::{parse_lockfile, Source};
use cmbuild_store::mirror::{Key, Mirror};

/// Why the locked crates could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum VendoringError {
    /// The lock file is invalid.
    #[error("Cargo.lock: {0}")]
    Lock(String),
    /// The lock has dependencies cmbuild cannot vendor.
    #[error("Cargo.lock has dependencies that are not from crates.io: {0}")]
    Unsupported(String),
    /// Crates are not in the mirror.
    #[error("crates missing from the mirror: {0}")]
    Missing(String),
    /// The mirror failed.
    #[error("mirror: {0}")]
    Mirror(String),
}

/// Unpacks every crates.io package of `lock_bytes` from `mirror` into `dest`.
pub fn unpack_locked_crates(
    mirror: &Mirror,
    lock_bytes: &[u8],
    dest: &Path,
) -> Result<usize, VendoringError> {
    let text =
        std::str::from_utf8(lock_bytes).map_err(|_| VendoringError::Lock("not UTF-8".into()))?;
    let lock = parse_lockfile(text, Path::new("Cargo.lock"))
        .map_err(|e| VendoringError::Lock(format!("{e:#}")))?;
    let index = mirror
        .load_index()
        .map_err(|e| VendoringError::Mirror(e.to_string()))?;
    let mut crates = Vec::new();
    let mut missing = Vec::new();
    let mut unsupported = Vec::new();
    for package in &lock.packages {
        match &package.source {
            Source::Local => {}
            Source::CratesIo { sha256 } => {
                let key = Key::crate_(&package.name, &package.version);
                match index.get(&key) {
                    Some(entry) => crates.push(VendoredCrate {
                        name: package.name.clone(),
                        version: package.version.clone(),
                        sha256: *sha256,
                        cid: entry.cid,
                    }),
                    None => missing.push(format!("{} {}", package.name, package.version)),
                }
            }
            Source::Git(s) | Source::Other(s) => {
                unsupported.push(format!("{} {} ({s})", package.name, package.version))
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(VendoringError::Unsupported(unsupported.join(", ")));
    }
    if !missing.is_empty() {
        return Err(VendoringError::Missing(missing.join(", ")));
    }
    write_directory_source(mirror, &crates, dest)
        .map_err(|e| VendoringError::Mirror(e.to_string()))?;
    Ok(crates.len())
}
