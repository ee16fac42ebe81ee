//! Reading what an untrusted party wrote: build records from another machine, and the output
//! drive the guest filled.
//!
//! The rules are the same everywhere: a path named inside such data is relative, made only of
//! plain components (no `..`, `.`, root or drive prefix, no backslash, no NUL), every component
//! on disk is a real directory or file (never a symlink), and every read is size-capped. A
//! guest can therefore never make cmbuild read or write outside the directory it was given.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Why reading an untrusted file failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is larger than allowed.
    #[error("file is larger than allowed ({0} bytes or more)")]
    TooLarge(u64),
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a path named by untrusted data was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// The path is absolute, or has a root or drive prefix.
    #[error("{0:?} is absolute")]
    Absolute(String),
    /// The path has a `..` or `.` component.
    #[error("{0:?} has a `..` or `.` component")]
    Traversal(String),
    /// The path has characters cmbuild never writes in a path.
    #[error("{0:?} has a backslash, NUL or other forbidden character")]
    BadCharacter(String),
    /// A component of the path is a symbolic link on disk.
    #[error("{0:?} goes through a symbolic link")]
    Symlink(String),
    /// The path does not name a regular file.
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    /// The path does not exist.
    #[error("{0:?} does not exist")]
    Missing(String),
    /// Resolving the path's symbolic links leads outside the tree.
    #[error("{0:?} leads outside the tree through a symbolic link")]
    Escapes(String),
    /// The path's symbolic links nest too deep or loop.
    #[error("{0:?} has too many levels of symbolic links")]
    LinkLoop(String),
}

/// Most symbolic links followed while resolving one path (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

/// Resolves `rel` under the directory `root` the way the kernel would, following symbolic
/// links, but refusing any step that leaves `root` (an absolute link target, or `..` above
/// it) — whatever the links look like lexically. Returns the resolved path relative to
/// `root`; components that do not exist are taken as they are written.
pub fn resolve_confined(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut todo: std::collections::VecDeque<std::ffi::OsString> =
        rel.split('/').map(Into::into).collect();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            if resolved.pop().is_none() {
                return Err(PathError::Escapes(rel.to_owned()));
            }
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&resolved);
        here.push(&part);
        match fs::symlink_metadata(&here) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(PathError::LinkLoop(rel.to_owned()));
                }
                let target =
                    fs::read_link(&here).map_err(|_| PathError::Missing(rel.to_owned()))?;
                if target.has_root() {
                    return Err(PathError::Escapes(rel.to_owned()));
                }
                // The target replaces the link, relative to the link's directory.
                for component in target.iter().rev() {
                    todo.push_front(component.to_owned());
                }
            }
            _ => resolved.push(part),
        }
    }
    Ok(resolved.iter().collect())
}

/// Reads the project file `rel` of the extracted tree `root`: resolved with
/// [`resolve_confined`], it must be a regular file of at most `max` bytes. `Ok(None)` when
/// it does not exist.
pub fn read_confined(root: &Path, rel: &str, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let refused = |e: PathError| ReadError::Io(io::Error::new(io::ErrorKind::InvalidInput, e));
    let path = root.join(resolve_confined(root, rel).map_err(refused)?);
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
        Ok(_) => read_capped(&path, max).map(Some),
    }
}

/// Checks the shape of a relative path written by untrusted data, without touching the disk.
pub fn check_relative(path: &str) -> Result<PathBuf, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains(['\\', '\0']) || path.chars().any(char::is_control) {
        return Err(PathError::BadCharacter(path.to_owned()));
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(path.to_owned()))
            }
            Component::ParentDir | Component::CurDir => {
                return Err(PathError::Traversal(path.to_owned()))
            }
        }
    }
    // `Path::components` silently drops interior `.`; refuse them by looking at the text.
    if path.split('/').any(|part| part == "." || part == "..") {
        return Err(PathError::Traversal(path.to_owned()));
    }
    Ok(out)
}

/// Resolves `rel` under `base` to a regular file, refusing symlinks at every step.
pub fn resolve_file(base: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let relative = check_relative(rel)?;
    let mut current = base.to_path_buf();
    let parts: Vec<_> = relative.components().collect();
    for (i, part) in parts.iter().enumerate() {
        current.push(part);
        let meta =
            fs::symlink_metadata(&current).map_err(|_| PathError::Missing(rel.to_owned()))?;
        if meta.file_type().is_symlink() {
            return Err(PathError::Symlink(rel.to_owned()));
        }
        let last = i + 1 == parts.len();
        if last && !meta.file_type().is_file() {
            return Err(PathError::NotAFile(rel.to_owned()));
        }
        if !last && !meta.file_type().is_dir() {
            return Err(PathError::NotAFile(rel.to_owned()));
        }
    }
    Ok(current)
}

/// Reads a whole file of at most `max` bytes, refusing a symlink in the last component.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || !meta.file_type().is_file() {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut bytes = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max + 1));
    }
    Ok(bytes)
}

/// Limits for [`extract_tar`].
#[derive(Clone, Copy, Debug)]
pub struct TarLimits {
    /// Most entries accepted.
    pub max_entries: usize,
    /// Largest single file accepted, in bytes.
    pub max_file_bytes: u64,
    /// Most bytes accepted in all.
    pub max_total_bytes: u64,
    /// Accept symlinks whose target stays inside the tree (for cmbuild's own source
    /// archives, which carry the project's symlinks); never for guest output.
    pub allow_inner_symlinks: bool,
}

impl Default for TarLimits {
    fn default() -> Self {
        TarLimits {
            max_entries: 10_000,
            max_file_bytes: 1 << 30,
            max_total_bytes: 4 << 30,
            allow_inner_symlinks: false,
        }
    }
}

/// Why an untrusted tar archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// An entry has a path cmbuild refuses.
    #[error("entry {index}: {source}")]
    Path {
        /// The entry's position.
        index: usize,
        /// Why its path was refused.
        source: PathError,
    },
    /// An entry is a link, device, FIFO or other non-regular file.
    #[error(
        "entry {index} ({path:?}) is a {kind}; only regular files and directories are accepted"
    )]
    Kind {
        /// The entry's position.
        index: usize,
        /// Its path.
        path: String,
        /// What it is.
        kind: String,
    },
    /// An entry's path is not UTF-8.
    #[error("entry {index} has a path that is not UTF-8")]
    NotUtf8 {
        /// The entry's position.
        index: usize,
    },
    /// Two entries name the same path.
    #[error("entry {index} ({path:?}) appears twice")]
    Duplicate {
        /// The entry's position.
        index: usize,
        /// Its path.
        path: String,
    },
    /// The archive exceeds a limit.
    #[error("the archive exceeds a limit: {0}")]
    Limit(String),
    /// The archive is malformed or cannot be written out.
    #[error("reading the archive failed: {0}")]
    Io(#[from] io::Error),
}

/// Extracts an untrusted tar archive into the empty directory `dest`.
///
/// Only regular files and directories are accepted; anything else (symlinks, hard links,
/// devices, FIFOs), any path that is absolute or climbs with `..`, a duplicate path or an
/// archive over `limits` is refused, and on refusal `dest` is left holding at most the
/// entries before the bad one (the caller extracts into a fresh temporary directory and
/// discards it on error). Returns the relative paths of the files written, sorted.
pub fn extract_tar(
    archive: impl Read,
    dest: &Path,
    limits: TarLimits,
) -> Result<Vec<String>, TarError> {
    let mut files = std::collections::BTreeSet::new();
    let mut dirs = std::collections::BTreeSet::new();
    let mut links = Vec::new();
    let mut total = 0u64;
    let mut tar = tar::Archive::new(archive);
    for (index, entry) in tar.entries()?.enumerate() {
        let mut entry = entry?;
        if index >= limits.max_entries {
            return Err(TarError::Limit(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let text = String::from_utf8(raw).map_err(|_| TarError::NotUtf8 { index })?;
        let trimmed = text.strip_suffix('/').unwrap_or(&text);
        let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
        let kind = entry.header().entry_type();
        if kind.is_dir() && (trimmed.is_empty() || trimmed == ".") {
            continue; // the archive's own root
        }
        let rel = check_relative(trimmed).map_err(|source| TarError::Path { index, source })?;
        if kind.is_dir() {
            dirs.insert(trimmed.to_owned());
            create_dirs_checked(dest, &rel)?;
            continue;
        }
        if kind == tar::EntryType::Symlink && limits.allow_inner_symlinks {
            let target = entry
                .link_name()?
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            if !symlink_stays_inside(&rel, &target) {
                return Err(TarError::Kind {
                    index,
                    path: trimmed.to_owned(),
                    kind: format!("symlink to {target:?} that leaves the tree"),
                });
            }
            if let Some(parent) = rel.parent() {
                create_dirs_checked(dest, parent)?;
            }
            std::os::unix::fs::symlink(&target, dest.join(&rel))?;
            files.insert(trimmed.to_owned());
            links.push((index, trimmed.to_owned(), target));
            continue;
        }
        if !kind.is_file() {
            return Err(TarError::Kind {
                index,
                path: trimmed.to_owned(),
                kind: format!("{kind:?}"),
            });
        }
        if files.contains(trimmed) || dirs.contains(trimmed) {
            return Err(TarError::Duplicate {
                index,
                path: trimmed.to_owned(),
            });
        }
        let size = entry.header().size()?;
        if size > limits.max_file_bytes {
            return Err(TarError::Limit(format!(
                "{trimmed:?} is {size} bytes, more than {}",
                limits.max_file_bytes
            )));
        }
        total += size;
        if total > limits.max_total_bytes {
            return Err(TarError::Limit(format!(
                "more than {} bytes in all",
                limits.max_total_bytes
            )));
        }
        if let Some(parent) = rel.parent() {
            create_dirs_checked(dest, parent)?;
        }
        let target = dest.join(&rel);
        // create_new: never write through something that is already there (a symlink planted
        // by an earlier entry cannot exist, but be strict anyway).
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)?;
        let copied = io::copy(&mut (&mut entry).take(size), &mut out)?;
        if copied != size {
            return Err(TarError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{trimmed:?} is truncated"),
            )));
        }
        out.flush()?;
        files.insert(trimmed.to_owned());
    }
    // The lexical check above cannot see through chains of links (`b -> .` makes `b/b/..`
    // climb): now that every link exists, resolve each as the kernel would.
    for (index, path, target) in links {
        if let Err(e) = resolve_confined(dest, &path) {
            return Err(TarError::Kind {
                index,
                path,
                kind: format!("symlink to {target:?} that leaves the tree ({e})"),
            });
        }
    }
    Ok(files.into_iter().collect())
}

/// Whether a symlink at `link` (relative to the tree's root) pointing at `target` resolves,
/// lexically, to a path inside the tree.
fn symlink_stays_inside(link: &Path, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth: Vec<&str> = link
        .parent()
        .map(|p| p.iter().filter_map(|c| c.to_str()).collect())
        .unwrap_or_default();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            other => depth.push(other),
        }
    }
    true
}

/// Extracts cmbuild's own source archive: like [`extract_tar`], but keeping symlinks that
/// stay inside the tree.
pub fn extract_tar_with_links(archive: impl Read, dest: &Path) -> Result<Vec<String>, TarError> {
    let limits = TarLimits {
        allow_inner_symlinks: true,
        ..TarLimits::default()
    };
    extract_tar(archive, dest, limits)
}

/// Creates `rel` under `dest` one component at a time, refusing to pass through a symlink.
fn create_dirs_checked(dest: &Path, rel: &Path) -> io::Result<()> {
    let mut current = dest.to_path_buf();
    for part in rel.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", current.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&current)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(check_relative("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(check_relative(""), Err(PathError::Empty));
        assert!(matches!(
            check_relative("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            check_relative("a/../../x"),
            Err(PathError::Traversal(_))
        ));
        assert!(matches!(
            check_relative("a/./b"),
            Err(PathError::Traversal(_))
        ));
        assert!(matches!(
            check_relative("a\\b"),
            Err(PathError::BadCharacter(_))
        ));
        assert!(matches!(
            check_relative("a\nb"),
            Err(PathError::BadCharacter(_))
        ));
    }

    #[test]
    fn resolve_refuses_symlinks_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("t")).unwrap();
        fs::write(dir.path().join("t/bin"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("t/evil")).unwrap();
        assert!(resolve_file(dir.path(), "t/bin").is_ok());
        assert!(matches!(
            resolve_file(dir.path(), "link/passwd"),
            Err(PathError::Symlink(_))
        ));
        assert!(matches!(
            resolve_file(dir.path(), "t/evil"),
            Err(PathError::Symlink(_))
        ));
        assert!(matches!(
            resolve_file(dir.path(), "t"),
            Err(PathError::NotAFile(_))
        ));
        assert!(matches!(
            resolve_file(dir.path(), "t/nope"),
            Err(PathError::Missing(_))
        ));
    }

    #[test]
    fn read_capped_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, vec![7u8; 100]).unwrap();
        assert_eq!(read_capped(&path, 100).unwrap().len(), 100);
        assert!(matches!(
            read_capped(&path, 99),
            Err(ReadError::TooLarge(_))
        ));
    }

    /// Builds a tar by hand so that the test can write what a hostile guest would.
    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if let Some(link) = link {
                header.set_link_name(link).unwrap();
            }
            // Write the name bytes directly: `set_path` itself refuses `..`, a guest would not.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn tar_with_regular_files_extracts() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tar_with(&[
            ("x86_64/", tar::EntryType::Directory, b"", None),
            ("x86_64/hello", tar::EntryType::Regular, b"ELF", None),
            ("manifest", tar::EntryType::Regular, b"m", None),
        ]);
        let files = extract_tar(&archive[..], dir.path(), TarLimits::default()).unwrap();
        assert_eq!(
            files,
            vec!["manifest".to_string(), "x86_64/hello".to_string()]
        );
        assert_eq!(fs::read(dir.path().join("x86_64/hello")).unwrap(), b"ELF");
    }

    #[test]
    fn hostile_tars_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            tar_with(&[("../escape", tar::EntryType::Regular, b"x", None)]),
            tar_with(&[("a/../../escape", tar::EntryType::Regular, b"x", None)]),
            tar_with(&[("/abs", tar::EntryType::Regular, b"x", None)]),
            tar_with(&[("link", tar::EntryType::Symlink, b"", Some("/etc/passwd"))]),
            tar_with(&[("hard", tar::EntryType::Link, b"", Some("/etc/passwd"))]),
            tar_with(&[("dev", tar::EntryType::Char, b"", None)]),
            tar_with(&[
                ("f", tar::EntryType::Regular, b"x", None),
                ("f", tar::EntryType::Regular, b"y", None),
            ]),
        ];
        for (i, archive) in cases.iter().enumerate() {
            let outer = tempfile::tempdir().unwrap();
            let dest = outer.path().join("out");
            fs::create_dir(&dest).unwrap();
            let result = extract_tar(&archive[..], &dest, TarLimits::default());
            assert!(result.is_err(), "case {i} was accepted");
            // Nothing escaped the destination.
            let outside: Vec<_> = fs::read_dir(outer.path()).unwrap().collect();
            assert_eq!(outside.len(), 1, "case {i} wrote outside");
        }
    }

    #[test]
    fn inner_symlinks_only_when_allowed() {
        let inner = tar_with(&[
            ("d/f", tar::EntryType::Regular, b"x", None),
            ("d/l", tar::EntryType::Symlink, b"", Some("f")),
            ("up", tar::EntryType::Symlink, b"", Some("d/../d/f")),
        ]);
        let dir = tempfile::tempdir().unwrap();
        extract_tar_with_links(&inner[..], dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("d/l")).unwrap(), b"x");
        let dir = tempfile::tempdir().unwrap();
        assert!(extract_tar(&inner[..], dir.path(), TarLimits::default()).is_err());
        for target in ["../../x", "/etc/passwd", "../d/../../x"] {
            let outer = tar_with(&[("d/l", tar::EntryType::Symlink, b"", Some(target))]);
            let dir = tempfile::tempdir().unwrap();
            assert!(
                extract_tar_with_links(&outer[..], dir.path()).is_err(),
                "{target}"
            );
        }
    }

    #[test]
    fn tar_limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tar_with(&[("big", tar::EntryType::Regular, &[0u8; 2048], None)]);
        let limits = TarLimits {
            max_file_bytes: 1024,
            ..TarLimits::default()
        };
        assert!(matches!(
            extract_tar(&archive[..], dir.path(), limits),
            Err(TarError::Limit(_))
        ));
    }

    #[test]
    fn link_chains_that_climb_out_are_refused() {
        let deep = format!("{}etc/passwd", "b/".repeat(16) + &"../".repeat(16));
        for evil in ["b/b/../../../etc/passwd", deep.as_str()] {
            let archive = tar_with(&[
                ("b", tar::EntryType::Symlink, b"", Some(".")),
                ("cmbuild.toml", tar::EntryType::Symlink, b"", Some(evil)),
            ]);
            let dir = tempfile::tempdir().unwrap();
            let err = extract_tar_with_links(&archive[..], dir.path()).unwrap_err();
            assert!(err.to_string().contains("leaves the tree"), "{evil}: {err}");
        }
        // A chain that stays inside is kept, and reads resolve through it.
        let archive = tar_with(&[
            ("b", tar::EntryType::Symlink, b"", Some(".")),
            ("d/Cargo.lock", tar::EntryType::Regular, b"lock", None),
            (
                "Cargo.lock",
                tar::EntryType::Symlink,
                b"",
                Some("b/b/d/../d/Cargo.lock"),
            ),
        ]);
        let dir = tempfile::tempdir().unwrap();
        extract_tar_with_links(&archive[..], dir.path()).unwrap();
        assert_eq!(
            read_confined(dir.path(), "Cargo.lock", 100)
                .unwrap()
                .unwrap(),
            b"lock"
        );
        assert_eq!(read_confined(dir.path(), "absent", 100).unwrap(), None);
        assert!(matches!(
            read_confined(dir.path(), "Cargo.lock", 3),
            Err(ReadError::TooLarge(_))
        ));
    }

    #[test]
    fn confined_reads_refuse_escapes_loops_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink(".", root.join("here")).unwrap();
        assert!(matches!(
            resolve_confined(&root, "zero"),
            Err(PathError::Escapes(_))
        ));
        assert!(matches!(
            resolve_confined(&root, "loop"),
            Err(PathError::LinkLoop(_))
        ));
        assert!(matches!(
            resolve_confined(&root, "here/here/up/x"),
            Err(PathError::Escapes(_))
        ));
        assert_eq!(
            resolve_confined(&root, "here/./here/a/../b").unwrap(),
            PathBuf::from("b")
        );
        for name in ["zero", "loop", "up/tree/zero"] {
            assert!(read_confined(&root, name, 1 << 20).is_err(), "{name}");
        }
        // A directory is not a file.
        fs::create_dir(root.join("dir")).unwrap();
        assert!(read_confined(&root, "dir", 10).is_err());
    }
}
