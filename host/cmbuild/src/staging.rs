//! Writing a run's outputs so that a crash or a `kill -9` never leaves a half-written build.
//!
//! A run works in `OUT/.cmbuild-run-XXXXXX/` (beside its final directory, so the last step
//! is a rename on one filesystem). Every file is written and `fsync`ed there, the directory
//! is synced and renamed to `OUT/REV` in one step, and `OUT` is synced: `OUT/REV` either
//! does not exist or is complete. The working directory records its owner (process id and
//! start time); the next run under the same `OUT` removes the working directories of owners
//! that are gone, and leaves those of live runs alone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The name prefix of a run's working directory.
pub const PREFIX: &str = ".cmbuild-run-";
/// The file in a working directory naming its owner.
const OWNER: &str = "owner";
/// A working directory without an owner file younger than this may be a run that has only
/// just created it.
const OWNERLESS_GRACE: Duration = Duration::from_secs(60);

/// A run's working directory, removed when dropped.
pub struct WorkDir {
    dir: tempfile::TempDir,
}

impl WorkDir {
    /// Creates a fresh working directory under `out_dir` (created if needed), first
    /// removing the working directories of runs that died.
    pub fn create(out_dir: &Path) -> io::Result<WorkDir> {
        fs::create_dir_all(out_dir)?;
        clean_stale(out_dir)?;
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(out_dir)?;
        write_synced(&dir.path().join(OWNER), owner_of_self()?.as_bytes(), 0o644)?;
        Ok(WorkDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `"<pid> <start time>"` of a process, from `/proc`; `None` if it does not exist.
fn owner_of(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces); the start
    // time is field 22 of the whole line, the 20th after the name.
    let after = stat.rsplit_once(')')?.1;
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}\n"))
}

fn owner_of_self() -> io::Result<String> {
    owner_of(std::process::id())
        .ok_or_else(|| io::Error::other("cannot read this process's start time from /proc"))
}

/// Whether the working directory `dir` belongs to a run that is still alive.
fn owner_alive(dir: &Path) -> bool {
    match fs::read_to_string(dir.join(OWNER)) {
        Ok(text) => {
            let pid = text.split_whitespace().next().and_then(|p| p.parse().ok());
            pid.and_then(owner_of).is_some_and(|now| now == text)
        }
        // No owner yet: give a run that has just created its directory the benefit of the
        // doubt for a while.
        Err(_) => fs::symlink_metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < OWNERLESS_GRACE),
    }
}

/// Removes every `.cmbuild-run-*` directory under `out_dir` whose run is gone; returns
/// what it removed.
pub fn clean_stale(out_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(out_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let is_run_dir =
            entry.file_name().to_string_lossy().starts_with(PREFIX) && entry.file_type()?.is_dir();
        if is_run_dir && !owner_alive(&entry.path()) {
            fs::remove_dir_all(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Writes `bytes` to the new file `path` with permissions `mode` and syncs it to disk.
pub fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Syncs a directory, so that the entries created or renamed in it are on disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves the finished directory `staged` to `target` (which must not exist) in one rename,
/// after syncing it, and syncs `target`'s parent.
pub fn publish_dir(staged: &Path, target: &Path) -> io::Result<()> {
    sync_dir(staged)?;
    if target.symlink_metadata().is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists already", target.display()),
        ));
    }
    fs::rename(staged, target)?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_working_directories_go_and_live_ones_stay() {
        let out = tempfile::tempdir().unwrap();
        // A run that was killed: its owner is a process that no longer exists (the start
        // time does not match).
        let dead = out.path().join(format!("{PREFIX}dead"));
        fs::create_dir_all(dead.join("out/x86_64-unknown-linux-gnu")).unwrap();
        fs::write(dead.join(OWNER), format!("{} 1\n", std::process::id())).unwrap();
        // A run that is alive (this process).
        let live = WorkDir::create(out.path()).unwrap();
        // Something else in OUT.
        fs::create_dir(out.path().join("v0.1.0")).unwrap();
        assert!(!dead.exists(), "the stale directory was not removed");
        assert!(live.path().exists());
        assert_eq!(clean_stale(out.path()).unwrap(), Vec::<PathBuf>::new());
        assert!(live.path().exists() && out.path().join("v0.1.0").exists());
        let owner = fs::read_to_string(live.path().join(OWNER)).unwrap();
        assert!(
            owner.starts_with(&format!("{} ", std::process::id())),
            "{owner}"
        );
    }

    #[test]
    fn publishing_refuses_to_replace_and_leaves_files_synced_in_place() {
        let out = tempfile::tempdir().unwrap();
        let staged = out.path().join("staged");
        fs::create_dir(&staged).unwrap();
        write_synced(&staged.join("manifest.json"), b"{}\n", 0o644).unwrap();
        assert!(write_synced(&staged.join("manifest.json"), b"x", 0o644).is_err());
        let target = out.path().join("v1");
        publish_dir(&staged, &target).unwrap();
        assert_eq!(fs::read(target.join("manifest.json")).unwrap(), b"{}\n");
        fs::create_dir(&staged).unwrap();
        assert!(publish_dir(&staged, &target).is_err());
    }
}
