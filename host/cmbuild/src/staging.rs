//! Writing a run's outputs so that a crash or a `kill -9` never leaves a half-written build.
//!
//! A run works in `OUT/.cmbuild-run-XXXXXX/` (beside its final directory, so the last step
//! is a rename on one filesystem). Every file is written and `fsync`ed there, the directory
//! is synced and renamed to `OUT/REV` in one step, and `OUT` is synced: `OUT/REV` either
//! does not exist or is complete. The working directory's name records its owner
//! (`.cmbuild-run-<pid>-<start time>-<random>`), so a directory never exists without one, even
//! when the run is killed the instant after creating it; the next run under the same `OUT`
//! removes the working directories of owners that are gone, and leaves those of live runs
//! alone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The name prefix of a run's working directory.
pub const PREFIX: &str = ".cmbuild-run-";
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
        let (pid, start) = owner_of_self()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{pid}-{start}-"))
            .tempdir_in(out_dir)?;
        Ok(WorkDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The start time (in clock ticks since boot) of process `pid`, from `/proc`; `None` if it
/// does not exist.
fn start_time_of(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces); the start
    // time is field 22 of the whole line, the 20th after the name.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

fn owner_of_self() -> io::Result<(u32, u64)> {
    let pid = std::process::id();
    let start = start_time_of(pid)
        .ok_or_else(|| io::Error::other("cannot read this process's start time from /proc"))?;
    Ok((pid, start))
}

/// Whether the working directory named `name` belongs to a run that is still alive: its
/// name must be `PREFIX<pid>-<start time>-...` of a process that exists with that start
/// time (a reused pid has another). Anything else under the prefix is a leftover.
fn owner_alive(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let mut parts = rest.splitn(3, '-');
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time_of(pid) == Some(start),
        _ => false,
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
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_run_dir = name.starts_with(PREFIX) && entry.file_type()?.is_dir();
        if is_run_dir && !owner_alive(&name) {
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
        // A run that was killed: its owner is a process that no longer exists (this pid, but
        // another start time: a reused pid), one killed by an older cmbuild (no owner in the
        // name), and one whose pid no kernel hands out.
        let (pid, start) = owner_of_self().unwrap();
        let dead = out.path().join(format!("{PREFIX}{pid}-{}-abc", start + 1));
        fs::create_dir_all(dead.join("out/x86_64-unknown-linux-gnu")).unwrap();
        let old = out.path().join(format!("{PREFIX}xyz"));
        fs::create_dir(&old).unwrap();
        let gone = out.path().join(format!("{PREFIX}4194305-1-q"));
        fs::create_dir(&gone).unwrap();
        // A run that is alive (this process).
        let live = WorkDir::create(out.path()).unwrap();
        // Something else in OUT.
        fs::create_dir(out.path().join("v0.1.0")).unwrap();
        assert!(!dead.exists(), "the stale directory was not removed");
        assert!(!old.exists() && !gone.exists());
        assert!(live.path().exists());
        assert_eq!(clean_stale(out.path()).unwrap(), Vec::<PathBuf>::new());
        assert!(live.path().exists() && out.path().join("v0.1.0").exists());
        let name = live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!("{PREFIX}{pid}-{start}-")),
            "{name}"
        );
        assert!(owner_alive(&name));
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
