//! Vendored crates as a cargo *directory source*: one unpacked `NAME-VERSION/` directory per
//! crate with a `.cargo-checksum.json`, which `cargo build --offline` reads in place of
//! crates.io (`[source.crates-io] replace-with = ...`, `directory = DIR`).
//!
//! Unpacking is deterministic: the same `.crate` bytes always give the same tree. Only
//! regular files are written (links and devices are refused), paths must stay under
//! `NAME-VERSION/` with no `..`, files get mode 0644 (0755 when the archive marks them
//! executable) and the modification time recorded in the archive. Each crate is unpacked into
//! a temporary directory and renamed into place, so a directory under its final name is
//! always complete. `cmbuild run` builds the same directory into the guest's input drive.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::cid::Cid;
use crate::lockfile::{is_valid_crate_name, is_valid_version};
use crate::mirror::{Mirror, MirrorError};
use crate::sha256::Sha256;
use crate::tarball::{Limits, TarError, TarReader};

/// The file cargo reads to check a directory-source crate.
pub const CHECKSUM_FILE: &str = ".cargo-checksum.json";
const TEMP_PREFIX: &str = ".tmp-";

/// Errors of unpacking crates.
#[derive(Debug, thiserror::Error)]
pub enum CrateError {
    /// {name} {version}: the archive's sha256 is {actual}, the lock says {expected}
    #[error("{name} {version}: the archive's sha256 is {actual}, the lock says {expected}")]
    Checksum {
        /// Package or crate name.
        name: String,
        /// Its version.
        version: String,
        /// What was pinned or expected.
        expected: Sha256,
        /// What was found.
        actual: Sha256,
    },
    /// {name:?} {version:?} is not a crate name and version; nothing was written
    #[error("{name:?} {version:?} is not a crate name and version; nothing was written")]
    BadName {
        /// The refused name.
        name: String,
        /// The refused version.
        version: String,
    },
    /// {name} {version}: the archive is not a readable .crate (gzip tar within the caps)
    #[error("{name} {version}: the archive is not a readable .crate (gzip tar within the caps)")]
    Archive {
        /// Package or crate name.
        name: String,
        /// Its version.
        version: String,
        #[source]
        /// The underlying error.
        source: TarError,
    },
    /// {name} {version}: archive entry `{entry}` is refused ({why})
    #[error("{name} {version}: archive entry `{entry}` is refused ({why})")]
    Entry {
        /// Package or crate name.
        name: String,
        /// Its version.
        version: String,
        /// The archive entry.
        entry: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// {name} {version}: the archive has no Cargo.toml
    #[error("{name} {version}: the archive has no Cargo.toml")]
    NoManifest {
        /// Package or crate name.
        name: String,
        /// Its version.
        version: String,
    },
    /// cannot {action} {path}
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done (create, read, rename, ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        #[source]
        /// The underlying error.
        source: io::Error,
    },
    /// the mirror cannot provide {name} {version}
    #[error("the mirror cannot provide {name} {version}")]
    Mirror {
        /// Package or crate name.
        name: String,
        /// Its version.
        version: String,
        #[source]
        /// The underlying error.
        source: MirrorError,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CrateError {
    let path = path.to_owned();
    move |source| CrateError::Io {
        action,
        path,
        source,
    }
}

/// A crate to place in a directory source: what the lock pins and where the mirror keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VendoredCrate {
    /// Package or crate name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The lock's checksum: sha256 of the `.crate`.
    pub sha256: Sha256,
    /// Content ID.
    pub cid: Cid,
}

impl VendoredCrate {
    /// The directory name inside the directory source.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
}

/// What [`write_directory_source`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirectorySourceReport {
    /// Crates unpacked now.
    pub unpacked: usize,
    /// Crates already unpacked with the right checksum.
    pub already_present: usize,
    /// Directories of crates no longer wanted, removed.
    pub removed: Vec<String>,
}

/// Makes `dir` a directory source holding exactly `crates` (from `mirror`, verified):
/// crates already unpacked with the right checksum are kept, missing ones are unpacked, and
/// directories of crates no longer wanted (ones with a `.cargo-checksum.json`) are removed.
pub fn write_directory_source(
    mirror: &Mirror,
    crates: &[VendoredCrate],
    dir: &Path,
) -> Result<DirectorySourceReport, CrateError> {
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let mut report = DirectorySourceReport::default();
    let wanted: BTreeSet<String> = crates.iter().map(VendoredCrate::dir_name).collect();
    for krate in crates {
        let target = dir.join(krate.dir_name());
        if recorded_package_checksum(&target) == Some(krate.sha256) {
            report.already_present += 1;
            continue;
        }
        let archive = mirror
            .read_verified(&krate.cid)
            .map_err(|source| CrateError::Mirror {
                name: krate.name.clone(),
                version: krate.version.clone(),
                source,
            })?;
        unpack_crate(&archive, &krate.name, &krate.version, &krate.sha256, dir)?;
        report.unpacked += 1;
    }
    let mut stale = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = entry.path().join(CHECKSUM_FILE).is_file();
        if (ours && !wanted.contains(&name)) || name.starts_with(TEMP_PREFIX) {
            stale.push((name, entry.path()));
        }
    }
    stale.sort();
    for (name, path) in stale {
        fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
        if !name.starts_with(TEMP_PREFIX) {
            report.removed.push(name);
        }
    }
    Ok(report)
}

/// The `package` checksum of an unpacked crate, if it has a readable checksum file.
fn recorded_package_checksum(crate_dir: &Path) -> Option<Sha256> {
    let text = fs::read(crate_dir.join(CHECKSUM_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    json.get("package")?.as_str()?.parse().ok()
}

/// One regular file of a crate archive.
struct ArchiveFile {
    bytes: Vec<u8>,
    executable: bool,
    mtime: u64,
}

/// Unpacks the `.crate` bytes `archive` into `parent/NAME-VERSION/` (replacing what was
/// there), after checking them against the lock's `sha256` (lowercase hex). Returns the
/// crate's directory.
pub fn unpack_crate(
    archive: &[u8],
    name: &str,
    version: &str,
    sha256: &Sha256,
    parent: &Path,
) -> Result<PathBuf, CrateError> {
    // Name and version become a directory name: never a path of their own.
    if !is_valid_crate_name(name) || !is_valid_version(version) {
        return Err(CrateError::BadName {
            name: name.chars().take(80).collect(),
            version: version.chars().take(80).collect(),
        });
    }
    let actual = Sha256::of(archive);
    if actual != *sha256 {
        return Err(CrateError::Checksum {
            name: name.to_owned(),
            version: version.to_owned(),
            expected: *sha256,
            actual,
        });
    }
    let files = read_archive(archive, name, version)?;
    if !files.contains_key(Path::new("Cargo.toml")) {
        return Err(CrateError::NoManifest {
            name: name.to_owned(),
            version: version.to_owned(),
        });
    }

    fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    let temp = parent.join(format!(
        "{TEMP_PREFIX}{name}-{version}-{}",
        std::process::id()
    ));
    if temp.exists() {
        fs::remove_dir_all(&temp).map_err(io_error("remove", &temp))?;
    }
    let result = write_tree(&temp, &files, sha256);
    let target = parent.join(format!("{name}-{version}"));
    let placed = result.and_then(|()| {
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io_error("remove", &target))?;
        }
        fs::rename(&temp, &target).map_err(io_error("rename into place", &target))
    });
    if placed.is_err() {
        let _ = fs::remove_dir_all(&temp);
    }
    placed.map(|()| target)
}

fn read_archive(
    archive: &[u8],
    name: &str,
    version: &str,
) -> Result<BTreeMap<PathBuf, ArchiveFile>, CrateError> {
    let archive_error = |source| CrateError::Archive {
        name: name.to_owned(),
        version: version.to_owned(),
        source,
    };
    let refuse = |entry: &Path, why| CrateError::Entry {
        name: name.to_owned(),
        version: version.to_owned(),
        entry: entry.display().to_string(),
        why,
    };
    let prefix = format!("{name}-{version}");
    let mut files = BTreeMap::new();
    // Every size a header claims is checked against the caps before it sizes a buffer.
    let mut tar = TarReader::new(flate2::read::GzDecoder::new(archive), Limits::CRATE);
    while let Some(entry) = tar.next_entry().map_err(archive_error)? {
        let Ok(text) = std::str::from_utf8(&entry.path) else {
            let shown = String::from_utf8_lossy(&entry.path);
            return Err(refuse(Path::new(shown.as_ref()), "not UTF-8"));
        };
        let path = PathBuf::from(text);
        if entry.kind == b'5' {
            continue;
        }
        if !entry.is_file() {
            return Err(refuse(&path, "not a regular file"));
        }
        let relative = match path.strip_prefix(&prefix) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_owned(),
            _ => return Err(refuse(&path, "outside the NAME-VERSION/ directory")),
        };
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(refuse(&path, "not a plain relative path"));
        }
        if relative.to_str().is_none() {
            return Err(refuse(&path, "not UTF-8"));
        }
        if relative == Path::new(CHECKSUM_FILE) {
            return Err(refuse(&path, "cmbuild writes this file itself"));
        }
        let file = ArchiveFile {
            bytes: entry.data,
            executable: entry.mode & 0o111 != 0,
            mtime: entry.mtime,
        };
        if files.insert(relative, file).is_some() {
            return Err(refuse(&path, "it appears twice"));
        }
    }
    Ok(files)
}

/// Writes the files and the checksum file under `root`.
fn write_tree(
    root: &Path,
    files: &BTreeMap<PathBuf, ArchiveFile>,
    package_sha256: &Sha256,
) -> Result<(), CrateError> {
    fs::create_dir_all(root).map_err(io_error("create", root))?;
    let mut checksums = BTreeMap::new();
    for (relative, file) in files {
        let path = root.join(relative);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        }
        // A new file only: never write through something already there (a symlink).
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        out.write_all(&file.bytes)
            .map_err(io_error("write", &path))?;
        set_permissions(&out, file.executable).map_err(io_error("set mode of", &path))?;
        out.set_modified(UNIX_EPOCH + Duration::from_secs(file.mtime))
            .map_err(io_error("set time of", &path))?;
        // Cargo wants `/`-separated relative paths here on every host.
        let key = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        checksums.insert(key, Sha256::of(&file.bytes).to_string());
    }
    let json = serde_json::json!({ "files": checksums, "package": package_sha256.to_string() });
    let path = root.join(CHECKSUM_FILE);
    fs::write(&path, serde_json::to_vec(&json).expect("json serialises"))
        .map_err(io_error("write", &path))
}

#[cfg(unix)]
fn set_permissions(file: &File, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_permissions(_file: &File, _executable: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip tar with the given (path, bytes, mode) entries and a fixed mtime.
    fn make_crate(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        for (path, bytes, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(1_000_000);
            header.set_entry_type(tar::EntryType::Regular);
            // `set_path` refuses `..`; write the raw name so that hostile archives can be built.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *bytes).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn sha(bytes: &[u8]) -> Sha256 {
        Sha256::of(bytes)
    }

    fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, fs::read(&path).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn unpacks_deterministically_with_checksums() {
        let archive = make_crate(&[
            (
                "demo-1.2.3/Cargo.toml",
                b"[package]\nname = \"demo\"\n",
                0o664,
            ),
            ("demo-1.2.3/src/lib.rs", b"pub fn f() {}\n", 0o600),
            ("demo-1.2.3/run.sh", b"#!/bin/sh\n", 0o775),
        ]);
        let sum = sha(&archive);
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dir_a = unpack_crate(&archive, "demo", "1.2.3", &sum, a.path()).unwrap();
        let dir_b = unpack_crate(&archive, "demo", "1.2.3", &sum, b.path()).unwrap();
        assert_eq!(dir_a, a.path().join("demo-1.2.3"));
        assert_eq!(tree(&dir_a), tree(&dir_b));

        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(dir_a.join(CHECKSUM_FILE)).unwrap()).unwrap();
        assert_eq!(json["package"], sum.to_string().as_str());
        assert_eq!(
            json["files"]["src/lib.rs"],
            sha(b"pub fn f() {}\n").to_string().as_str()
        );
        assert_eq!(json["files"].as_object().unwrap().len(), 3);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| fs::metadata(dir_a.join(p)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("run.sh"), 0o755);
            assert_eq!(mode("src/lib.rs"), 0o644);
        }
        let mtime = fs::metadata(dir_a.join("Cargo.toml"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, UNIX_EPOCH + Duration::from_secs(1_000_000));
    }

    #[test]
    fn wrong_checksum_unpacks_nothing() {
        let archive = make_crate(&[("demo-1.0.0/Cargo.toml", b"x", 0o644)]);
        let dir = tempfile::tempdir().unwrap();
        let err =
            unpack_crate(&archive, "demo", "1.0.0", &Sha256::default(), dir.path()).unwrap_err();
        assert!(matches!(err, CrateError::Checksum { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    /// A raw tar header (GNU format) for `path` of type `kind` claiming `size` bytes.
    fn raw_header(path: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    #[test]
    fn headers_claiming_huge_sizes_fail_cleanly_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        // A file claiming 2^62 bytes (base-256 size field), with 1 KiB behind it.
        let big = [
            raw_header("demo-1.0.0/Cargo.toml", tar::EntryType::Regular, 1 << 62),
            vec![0; 1024],
        ]
        .concat();
        // A GNU long name claiming 512 MiB, and a real one of 5000 bytes.
        let long_claim = [
            raw_header("././@LongLink", tar::EntryType::GNULongName, 512 << 20),
            vec![b'a'; 5000],
        ]
        .concat();
        let long_real = [
            raw_header("././@LongLink", tar::EntryType::GNULongName, 5000),
            vec![b'a'; 5000],
            vec![0; 120],
            raw_header("demo-1.0.0/Cargo.toml", tar::EntryType::Regular, 0),
            vec![0; 1024],
        ]
        .concat();
        for raw in [big, long_claim, long_real] {
            let archive = gzip(&raw);
            let err =
                unpack_crate(&archive, "demo", "1.0.0", &sha(&archive), dir.path()).unwrap_err();
            assert!(
                matches!(
                    err,
                    CrateError::Archive {
                        source: TarError::TooLarge { .. },
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn a_name_or_version_that_is_a_path_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("vendor");
        let archive = make_crate(&[("x-1.0.0/Cargo.toml", b"", 0o644)]);
        for (name, version) in [("../x", "1.0.0"), ("x", "1.0.0/../../y"), ("/x", "1")] {
            let err = unpack_crate(&archive, name, version, &sha(&archive), &parent).unwrap_err();
            assert!(matches!(err, CrateError::BadName { .. }), "{err}");
        }
        assert!(!parent.exists());
    }

    #[test]
    fn hostile_entries_are_refused() {
        for (path, why) in [
            ("demo-1.0.0/../escape", "not a plain relative path"),
            (
                "other-1.0.0/Cargo.toml",
                "outside the NAME-VERSION/ directory",
            ),
            (
                "demo-1.0.0/.cargo-checksum.json",
                "cmbuild writes this file itself",
            ),
        ] {
            let archive =
                make_crate(&[("demo-1.0.0/Cargo.toml", b"x", 0o644), (path, b"y", 0o644)]);
            let dir = tempfile::tempdir().unwrap();
            let err =
                unpack_crate(&archive, "demo", "1.0.0", &sha(&archive), dir.path()).unwrap_err();
            assert!(err.to_string().contains(why), "{path}: {err}");
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "{path}");
        }
        let no_manifest = make_crate(&[("demo-1.0.0/src/lib.rs", b"", 0o644)]);
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack_crate(
                &no_manifest,
                "demo",
                "1.0.0",
                &sha(&no_manifest),
                dir.path()
            ),
            Err(CrateError::NoManifest { .. })
        ));
    }

    #[test]
    fn directory_source_is_kept_in_step_with_the_wanted_set() {
        let store = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(store.path()).unwrap();
        let mut wanted = Vec::new();
        for (name, version) in [("a", "1.0.0"), ("b", "2.0.0")] {
            let archive = make_crate(&[(
                &format!("{name}-{version}/Cargo.toml"),
                format!("[package]\nname = \"{name}\"\n").as_bytes(),
                0o644,
            )]);
            let stored = mirror.put_bytes(&archive).unwrap();
            wanted.push(VendoredCrate {
                name: name.into(),
                version: version.into(),
                sha256: sha(&archive),
                cid: stored.cid,
            });
        }
        let out = tempfile::tempdir().unwrap();
        let first = write_directory_source(&mirror, &wanted, out.path()).unwrap();
        assert_eq!((first.unpacked, first.already_present), (2, 0));
        let again = write_directory_source(&mirror, &wanted[..1], out.path()).unwrap();
        assert_eq!((again.unpacked, again.already_present), (0, 1));
        assert_eq!(again.removed, ["b-2.0.0"]);
        assert!(!out.path().join("b-2.0.0").exists());

        // A corrupt blob in the mirror is refused, not unpacked.
        fs::write(mirror.blob_path(&wanted[1].cid), b"garbage").unwrap();
        let err = write_directory_source(&mirror, &wanted, out.path()).unwrap_err();
        assert!(matches!(err, CrateError::Mirror { .. }), "{err}");
        assert!(!out.path().join("b-2.0.0").exists());
    }
}
