//! Atomic, durable file writes: the one way cmbuild replaces a file.
//!
//! Bytes go to a temporary file in the target's own directory (`.tmp-<pid>-<n>`), which is
//! synced, renamed over the target, and then the directory is synced: a crash leaves either
//! the old file or the whole new one, never a mix. A temporary file that is dropped before
//! [`AtomicFile::commit`] is removed; one left by a killed process is removed by
//! [`remove_stale_temp_files`] once that process is gone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file name.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A write that could not be done; the target is left as it was.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}")]
pub struct AtomicError {
    /// What was being done (create, write, sync, rename into place, ...).
    pub action: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicError {
    let path = path.to_owned();
    move |source| AtomicError {
        action,
        path,
        source,
    }
}

/// Creates a new temporary file in `dir`, never reusing an existing name.
pub(crate) fn create_temp_file(dir: &Path) -> Result<(PathBuf, File), AtomicError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            // A leftover of an earlier process with the same pid: take the next number.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(io_error("create", &path)(err)),
        }
    }
}

/// Makes a rename durable: the directory entry itself must reach the disk.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}

/// Removes the temporary file on drop unless it was renamed into place.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// A file being written in place of `target`; nothing is visible until
/// [`AtomicFile::commit`], and dropping it uncommitted leaves nothing behind.
#[derive(Debug)]
pub struct AtomicFile {
    temp: TempFile,
    file: Option<File>,
    target: PathBuf,
    dir: PathBuf,
}

impl AtomicFile {
    /// Starts replacing `target` (its directory is created if needed).
    pub fn create(target: &Path) -> Result<AtomicFile, AtomicError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let (path, file) = create_temp_file(&dir)?;
        Ok(AtomicFile {
            temp: TempFile { path: Some(path) },
            file: Some(file),
            target: target.to_owned(),
            dir,
        })
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        self.temp.path.as_deref().expect("present until commit")
    }

    /// Syncs the bytes, renames them over the target and syncs the directory.
    pub fn commit(mut self) -> Result<(), AtomicError> {
        let file = self.file.take().expect("present until commit");
        let temp = self.temp_path().to_owned();
        file.sync_all().map_err(io_error("sync", &temp))?;
        drop(file);
        fs::rename(&temp, &self.target).map_err(io_error("rename into place", &self.target))?;
        self.temp.path = None;
        sync_dir(&self.dir)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("present until commit").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("present until commit").flush()
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    let mut file = AtomicFile::create(path)?;
    let temp = file.temp_path().to_owned();
    file.write_all(bytes).map_err(io_error("write", &temp))?;
    file.commit()
}

/// Writes `value` as pretty JSON with a final newline to `path` ([`write_atomically`]),
/// creating its directory first: the one way a record (a template's, a cached job's) goes
/// into a mirror.
pub fn write_json_atomically(
    path: &Path,
    value: &impl serde::Serialize,
) -> Result<(), AtomicError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    }
    let mut json = serde_json::to_vec_pretty(value).expect("a record always serializes");
    json.push(b'\n');
    write_atomically(path, &json)
}

/// Removes the temporary files in `dir` whose writer has ended (best effort: a directory
/// that cannot be listed, or a file another process just removed, is not an error).
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
            if temp_owner_is_gone(rest, &entry.path()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether the process that created temp file `.tmp-<pid>-...` has ended: on Linux by
/// `/proc/<pid>`, elsewhere when the file is more than a day old.
fn temp_owner_is_gone(rest: &str, path: &Path) -> bool {
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    if Path::new("/proc/self").exists() {
        return match pid {
            Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
            None => true,
        };
    }
    let age = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    age.is_some_and(|age| age.as_secs() > 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/out.bin");
        write_atomically(&target, b"first").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"first");
        // An uncommitted replacement leaves the old file and no temporary behind.
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"half").unwrap();
        assert_eq!(names(&dir.path().join("sub")).len(), 2);
        drop(file);
        assert_eq!(names(&dir.path().join("sub")), ["out.bin"]);
        assert_eq!(fs::read(&target).unwrap(), b"first");
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"second").unwrap();
        file.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"second");
        assert_eq!(names(&dir.path().join("sub")), ["out.bin"]);
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid 0 is never a user process; our own pid is alive.
        fs::write(dir.path().join(".tmp-0-1"), b"x").unwrap();
        let ours = format!(".tmp-{}-99999", std::process::id());
        fs::write(dir.path().join(&ours), b"x").unwrap();
        fs::write(dir.path().join("keep"), b"x").unwrap();
        remove_stale_temp_files(dir.path());
        assert_eq!(names(dir.path()), [ours, "keep".to_owned()]);
    }
}
