//! Snapshot directories: the on-disk form of a machine snapshot (`cmbuild machine run
//! --store DIR` and `--load DIR`).
//!
//! The files, their format and every check of their contents are the machine crate's
//! (`cmbuild_machine::snapshot`, which works on bytes only); this module writes them as a
//! directory and reads them back.
//!
//! - Writing goes into a temporary directory beside the target (`.<name>.tmp-<pid>`):
//!   every file is written and fsynced, then the directory, which is renamed to the
//!   target, then the parent is fsynced; so a snapshot directory either exists complete or
//!   not at all. A target that already exists is refused.
//! - Reading treats the directory as untrusted: each file is opened without following a
//!   symbolic link and without blocking (a FIFO or device is refused, never waited on),
//!   must be a regular file, and is read only up to the length its manifest entry gives
//!   (which the machine crate has bounded by the machine's sizes) — or, for the manifest,
//!   up to `MAX_MANIFEST`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cmbuild_machine::machine::Machine;
use cmbuild_machine::snapshot::{self, Snapshot, SnapshotConfig, SnapshotError, MAX_MANIFEST};

/// Why a snapshot directory could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDirError {
    /// cannot {action} {path}
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error (the next link of the error chain).
        source: io::Error,
    },
    /// snapshot directory {0} already exists; remove it or choose another
    #[error("snapshot directory {0} already exists; remove it or choose another")]
    Exists(PathBuf),
    /// snapshot file {0} is not a regular file (a link, FIFO, device or directory)
    #[error("snapshot file {0} is not a regular file (a link, FIFO, device or directory)")]
    NotRegular(PathBuf),
    /// snapshot file {file} is {actual} bytes, the manifest says {expected} (truncated or replaced)
    #[error("snapshot file {file} is {actual} bytes, the manifest says {expected} (truncated or replaced)")]
    FileLength {
        /// The file.
        file: String,
        /// Length in the manifest.
        expected: u64,
        /// Length on disk.
        actual: u64,
    },
    /// snapshot manifest {0} is larger than 1 MiB
    #[error("snapshot manifest {0} is larger than 1 MiB")]
    ManifestTooLarge(PathBuf),
    /// the snapshot's contents are refused: {0}
    #[error("the snapshot's contents are refused: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// Writes `machine`, built from `config`, as the snapshot directory `dir` (which must not
/// exist; missing parents are created). Returns the state hash stored.
pub fn store(
    dir: &Path,
    machine: &mut Machine,
    config: &SnapshotConfig,
) -> Result<String, SnapshotDirError> {
    if dir.symlink_metadata().is_ok() {
        return Err(SnapshotDirError::Exists(dir.to_path_buf()));
    }
    let encoded = snapshot::encode(machine, config)?;
    let parent = parent_of(dir);
    std::fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
    let tmp = temp_dir_for(dir);
    // A leftover of an earlier store by a process with the same id; never a user's file.
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp).map_err(io_err("remove the stale", &tmp))?;
    }
    remove_stale_temp_dirs(dir);
    std::fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
    let result = (|| {
        for file in &encoded.files {
            write_file(&tmp.join(&file.name), &file.pieces)?;
        }
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, dir).map_err(io_err("rename the temporary directory to", dir))?;
        sync_dir(&parent)
    })();
    if result.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| encoded.root_hash)
}

/// Loads the snapshot directory `dir`, with every check of the machine crate.
pub fn load(dir: &Path) -> Result<Snapshot, SnapshotDirError> {
    let manifest_path = dir.join("manifest");
    let manifest = read_bounded(&manifest_path, None)?;
    let m = snapshot::parse_manifest(&manifest)?;
    let mut contents = Vec::with_capacity(m.files().len());
    for entry in m.files() {
        contents.push(read_bounded(&dir.join(&entry.name), Some(entry))?);
    }
    let views: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    Ok(snapshot::load(&m, &views)?)
}

/// Bytes a snapshot directory takes on disk (the sum of its files' lengths).
pub fn size_on_disk(dir: &Path) -> Result<u64, SnapshotDirError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
        total += meta.len();
    }
    Ok(total)
}

/// Opens `path` for reading without following a final symbolic link and without blocking
/// on a FIFO, and checks that it is a regular file.
fn open_regular(path: &Path) -> Result<(File, u64), SnapshotDirError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        // O_NOFOLLOW on a symbolic link.
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SnapshotDirError::NotRegular(path.to_path_buf()))
        }
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.file_type().is_file() {
        return Err(SnapshotDirError::NotRegular(path.to_path_buf()));
    }
    Ok((file, meta.len()))
}

/// Reads the file `path`: exactly `entry.length` bytes for a file the manifest lists (its
/// length is checked before anything is read), at most [`MAX_MANIFEST`] for the manifest.
fn read_bounded(
    path: &Path,
    entry: Option<&snapshot::FileEntry>,
) -> Result<Vec<u8>, SnapshotDirError> {
    let (file, actual) = open_regular(path)?;
    let limit = match entry {
        Some(e) => {
            if actual != e.length {
                return Err(SnapshotDirError::FileLength {
                    file: e.name.clone(),
                    expected: e.length,
                    actual,
                });
            }
            e.length
        }
        None if actual > MAX_MANIFEST => {
            return Err(SnapshotDirError::ManifestTooLarge(path.to_path_buf()))
        }
        None => MAX_MANIFEST,
    };
    // The length was checked above; the file may still change under us, so the read is
    // bounded too (one byte more reveals a file that grew).
    let mut bytes = Vec::with_capacity(actual.min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    match entry {
        Some(e) if bytes.len() as u64 != e.length => Err(SnapshotDirError::FileLength {
            file: e.name.clone(),
            expected: e.length,
            actual: bytes.len() as u64,
        }),
        None if bytes.len() as u64 > MAX_MANIFEST => {
            Err(SnapshotDirError::ManifestTooLarge(path.to_path_buf()))
        }
        _ => Ok(bytes),
    }
}

/// Creates `path`, writes `pieces` into it one after another and fsyncs it.
fn write_file(path: &Path, pieces: &[std::borrow::Cow<'_, [u8]>]) -> Result<(), SnapshotDirError> {
    let file = File::create_new(path).map_err(io_err("create", path))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, file);
    for piece in pieces {
        w.write_all(piece).map_err(io_err("write", path))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| io_err("write", path)(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", path))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotDirError {
    let path = path.to_path_buf();
    move |source| SnapshotDirError::Io {
        action,
        path,
        source,
    }
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes the temporary directories of earlier stores to `dir` whose process has ended
/// (killed while writing: `.<name>.tmp-<pid>` with no process `<pid>`). Best effort, and
/// only where `/proc` tells which processes live.
fn remove_stale_temp_dirs(dir: &Path) {
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{name}.tmp-");
    let Ok(listing) = std::fs::read_dir(parent_of(dir)) else {
        return;
    };
    for entry in listing.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = entry_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn temp_dir_for(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    parent_of(dir).join(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotDirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmbuild_machine::machine::{FlashConfig, MachineConfig};

    fn machine() -> (Machine, SnapshotConfig) {
        let config = MachineConfig {
            ram_length: 1 << 20,
            // addi a0, a0, 1; j .-4 (a loop that dirties nothing but a register)
            ram_image: Some(vec![0x13, 0x05, 0x15, 0x00, 0xf5, 0xbf]),
            flash_drives: vec![FlashConfig {
                label: "d".into(),
                image: vec![7; 5000],
                shared: false,
            }],
            ..MachineConfig::default()
        };
        let mut m = Machine::new(&config).unwrap();
        m.run(1000);
        (m, SnapshotConfig::from_config(&config))
    }

    #[test]
    fn store_then_load_round_trips_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut m, sc) = machine();
        let dir = tmp.path().join("nested/snap");
        let hash = store(&dir, &mut m, &sc).unwrap();
        assert_eq!(hash, m.root_hash());
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["dtb", "flash-0.pages", "manifest", "ram.pages", "state"]
        );
        assert!(size_on_disk(&dir).unwrap() > 0);
        let mut loaded = load(&dir).unwrap();
        assert_eq!(loaded.machine.root_hash(), hash);
        assert_eq!(loaded.machine.mcycle(), 1000);
        let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // An existing target is refused, not overwritten.
        let err = store(&dir, &mut m, &sc).unwrap_err();
        assert!(matches!(err, SnapshotDirError::Exists(_)), "{err}");
    }

    #[test]
    fn a_missing_directory_names_the_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load(&tmp.path().join("absent")).unwrap_err().to_string();
        assert!(
            err.contains("cannot open") && err.contains("absent/manifest"),
            "{err}"
        );
    }

    /// A snapshot directory someone else prepared: files replaced by a FIFO (which a plain
    /// read would wait on forever), a symbolic link (which could point anywhere), a
    /// directory, or an oversized manifest are refused at once, before anything is read.
    #[cfg(unix)]
    #[test]
    fn special_files_and_links_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut m, sc) = machine();
        let good = tmp.path().join("good");
        store(&good, &mut m, &sc).unwrap();
        let copy = |name: &str| {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            for e in std::fs::read_dir(&good).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
            dir
        };
        let fifo = |path: &Path| {
            std::fs::remove_file(path).unwrap();
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        let d = copy("fifo-pages");
        fifo(&d.join("ram.pages"));
        let err = load(&d).unwrap_err();
        assert!(matches!(err, SnapshotDirError::NotRegular(_)), "{err}");
        let d = copy("fifo-manifest");
        fifo(&d.join("manifest"));
        let err = load(&d).unwrap_err();
        assert!(matches!(err, SnapshotDirError::NotRegular(_)), "{err}");
        let d = copy("link");
        std::fs::remove_file(d.join("state")).unwrap();
        std::os::unix::fs::symlink(good.join("state"), d.join("state")).unwrap();
        let err = load(&d).unwrap_err();
        assert!(matches!(err, SnapshotDirError::NotRegular(_)), "{err}");
        let d = copy("dir");
        std::fs::remove_file(d.join("dtb")).unwrap();
        std::fs::create_dir(d.join("dtb")).unwrap();
        let err = load(&d).unwrap_err();
        assert!(matches!(err, SnapshotDirError::NotRegular(_)), "{err}");
        let d = copy("huge-manifest");
        std::fs::write(d.join("manifest"), vec![b'x'; (MAX_MANIFEST + 1) as usize]).unwrap();
        let err = load(&d).unwrap_err();
        assert!(
            matches!(err, SnapshotDirError::ManifestTooLarge(_)),
            "{err}"
        );
        // A file whose length differs from its entry is refused before it is read.
        let d = copy("grown");
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("ram.pages"))
            .unwrap();
        f.set_len(1 << 40).unwrap();
        let err = load(&d).unwrap_err();
        assert!(
            matches!(err, SnapshotDirError::FileLength { actual, .. } if actual == 1 << 40),
            "{err}"
        );
        load(&good).unwrap();
    }
}
