//! The project being built: its git revision, its deterministic source archive and its
//! `cmbuild.toml`.
//!
//! The source archive is made from git objects, never from the work tree, so uncommitted
//! files cannot leak in, and it is written by cmbuild itself (not `git archive`, whose output
//! may change between git versions): entries sorted by path, owner 0:0 with empty names,
//! modes 0644/0755 (or a symlink), and every mtime equal to the commit's committer time,
//! which is also the build's `SOURCE_DATE_EPOCH`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cmbuild_image::triple::{Triple, UnsupportedTriple};
use serde::Deserialize;

/// Errors about the project and its revision.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// `git` could not be run.
    #[error("cannot run git: {0}")]
    Git(std::io::Error),
    /// A git command failed.
    #[error("git {args} failed: {stderr}")]
    GitFailed {
        /// The git arguments.
        args: String,
        /// What git said.
        stderr: String,
    },
    /// The revision does not exist.
    #[error("revision {rev:?} is not in the project's git repository ({stderr})")]
    NoSuchRevision {
        /// The revision asked for.
        rev: String,
        /// What git said.
        stderr: String,
    },
    /// The tree has something cmbuild cannot archive.
    #[error("{path}: {what} cannot be part of a source archive")]
    Unsupported {
        /// The entry's path.
        path: String,
        /// What it is.
        what: String,
    },
    /// `cmbuild.toml` is malformed.
    #[error("cmbuild.toml is invalid: {0}")]
    Config(String),
    /// The profile asked for does not exist.
    #[error("profile {0:?} is not defined in cmbuild.toml (defined: {1})")]
    NoSuchProfile(String, String),
    /// A target triple is not one cmbuild can build.
    #[error(transparent)]
    UnsupportedTarget(#[from] UnsupportedTriple),
    /// Writing the archive failed.
    #[error("writing the source archive: {0}")]
    Io(#[from] std::io::Error),
}

/// A project revision resolved to a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// What the user asked for.
    pub rev: String,
    /// The full commit id.
    pub commit: String,
    /// The committer time of the commit, in seconds since the epoch.
    pub commit_time: u64,
    /// The project's directory inside the repository ("" at the top, else "a/b/").
    pub prefix: String,
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, ProjectError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(ProjectError::Git)?;
    if !out.status.success() {
        return Err(ProjectError::GitFailed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

fn trimmed(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// Resolves `rev` (a tag, branch or commit) in the git repository holding `project_dir`.
pub fn resolve_revision(project_dir: &Path, rev: &str) -> Result<Revision, ProjectError> {
    let spec = format!("{rev}^{{commit}}");
    let commit = match git(project_dir, &["rev-parse", "--verify", "--quiet", &spec]) {
        Ok(out) => trimmed(out),
        Err(ProjectError::GitFailed { stderr, .. }) => {
            return Err(ProjectError::NoSuchRevision {
                rev: rev.to_owned(),
                stderr: if stderr.is_empty() {
                    "unknown revision".into()
                } else {
                    stderr
                },
            })
        }
        Err(e) => return Err(e),
    };
    let time = trimmed(git(project_dir, &["show", "-s", "--format=%ct", &commit])?);
    let commit_time = time.parse().map_err(|_| ProjectError::GitFailed {
        args: "show --format=%ct".into(),
        stderr: format!("unexpected output {time:?}"),
    })?;
    let prefix = trimmed(git(project_dir, &["rev-parse", "--show-prefix"])?);
    Ok(Revision {
        rev: rev.to_owned(),
        commit,
        commit_time,
        prefix,
    })
}

/// One file of the project at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path relative to the project directory.
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// The git blob id.
    pub blob: String,
}

/// The kinds of tree entries a source archive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (mode 0644).
    File,
    /// An executable file (mode 0755).
    Executable,
    /// A symbolic link.
    Symlink,
}

/// Lists the project's files at a revision, sorted by path.
pub fn list_tree(project_dir: &Path, rev: &Revision) -> Result<Vec<TreeEntry>, ProjectError> {
    let tree = format!("{}:{}", rev.commit, rev.prefix);
    let out = git(project_dir, &["ls-tree", "-r", "-z", "--full-tree", &tree])?;
    let mut entries = Vec::new();
    for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8(record.to_vec()).map_err(|_| ProjectError::Unsupported {
            path: String::from_utf8_lossy(record).into_owned(),
            what: "a path that is not UTF-8".into(),
        })?;
        let (meta, path) = record
            .split_once('\t')
            .ok_or_else(|| ProjectError::GitFailed {
                args: "ls-tree".into(),
                stderr: format!("unexpected line {record:?}"),
            })?;
        let mut fields = meta.split(' ');
        let (mode, kind, blob) = (fields.next(), fields.next(), fields.next());
        let kind = match (mode, kind) {
            (Some("100644"), Some("blob")) => EntryKind::File,
            (Some("100755"), Some("blob")) => EntryKind::Executable,
            (Some("120000"), Some("blob")) => EntryKind::Symlink,
            (_, Some("commit")) => {
                return Err(ProjectError::Unsupported {
                    path: path.to_owned(),
                    what: "a git submodule".into(),
                })
            }
            (mode, _) => {
                return Err(ProjectError::Unsupported {
                    path: path.to_owned(),
                    what: format!("an entry of mode {}", mode.unwrap_or("?")),
                })
            }
        };
        entries.push(TreeEntry {
            path: path.to_owned(),
            kind,
            blob: blob.unwrap_or_default().to_owned(),
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// Writes the deterministic source archive of the project at `rev` to `out`.
pub fn write_source_archive(
    project_dir: &Path,
    rev: &Revision,
    out: impl Write,
) -> Result<(), ProjectError> {
    let entries = list_tree(project_dir, rev)?;
    // One `git cat-file --batch` process streams every blob, in archive order.
    let mut child = Command::new("git")
        .arg("-C")
        .arg(project_dir)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(ProjectError::Git)?;
    let mut stdin = child.stdin.take().expect("piped");
    let blobs: Vec<String> = entries.iter().map(|e| e.blob.clone()).collect();
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        for blob in blobs {
            writeln!(stdin, "{blob}")?;
        }
        Ok(())
    });
    let mut reader = BufReader::new(child.stdout.take().expect("piped"));
    let mut builder = tar::Builder::new(out);
    let mut dirs_written = std::collections::BTreeSet::new();
    for entry in &entries {
        let mut header_line = String::new();
        reader.read_line(&mut header_line)?;
        let size: u64 = header_line
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ProjectError::GitFailed {
                args: "cat-file --batch".into(),
                stderr: format!("unexpected header {header_line:?}"),
            })?;
        let mut data = Vec::with_capacity(size as usize);
        (&mut reader).take(size).read_to_end(&mut data)?;
        let mut newline = [0u8; 1];
        reader.read_exact(&mut newline)?;
        // Parent directories first, once each, so extraction never depends on umask.
        let mut parent = PathBuf::new();
        let components: Vec<_> = Path::new(&entry.path).components().collect();
        for part in &components[..components.len().saturating_sub(1)] {
            parent.push(part);
            if dirs_written.insert(parent.clone()) {
                let mut header = base_header(rev.commit_time, tar::EntryType::Directory, 0o755);
                header.set_size(0);
                builder.append_data(&mut header, &parent, std::io::empty())?;
            }
        }
        match entry.kind {
            EntryKind::Symlink => {
                let mut header = base_header(rev.commit_time, tar::EntryType::Symlink, 0o777);
                header.set_size(0);
                let target = String::from_utf8(data).map_err(|_| ProjectError::Unsupported {
                    path: entry.path.clone(),
                    what: "a symlink whose target is not UTF-8".into(),
                })?;
                builder.append_link(&mut header, &entry.path, target)?;
            }
            kind => {
                let mode = if kind == EntryKind::Executable {
                    0o755
                } else {
                    0o644
                };
                let mut header = base_header(rev.commit_time, tar::EntryType::Regular, mode);
                header.set_size(size);
                builder.append_data(&mut header, &entry.path, &data[..])?;
            }
        }
    }
    builder.into_inner()?.flush()?;
    feeder.join().expect("feeder thread")?;
    let status = child.wait()?;
    if !status.success() {
        return Err(ProjectError::GitFailed {
            args: "cat-file --batch".into(),
            stderr: format!("exit status {status}"),
        });
    }
    Ok(())
}

fn base_header(mtime: u64, kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header
}

/// `cmbuild.toml`: what to build. Every field is optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Target triples; default: the Linux triples ([`Triple::defaults`]).
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// Named build profiles.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// The glibc floor (`"2.36"`): the oldest glibc the Linux artifacts must start on. It
    /// must be one of the pinned floors (`crate::floor`); `None` links against the guest's
    /// own C runtime.
    #[serde(default)]
    pub glibc: Option<String>,
}

/// A named selection of what to build, in the spirit of a release script's profiles.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Packages to build (`cargo build -p`); empty = the whole workspace.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Binaries to build (`--bin`); empty = every binary of the selected packages.
    #[serde(default)]
    pub bins: Vec<String>,
    /// Cargo features to enable.
    #[serde(default)]
    pub features: Vec<String>,
    /// Build with `--no-default-features`.
    #[serde(default)]
    pub no_default_features: bool,
    /// Targets for this profile, overriding the top-level list.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
}

/// What one `cmbuild run` builds: resolved from `cmbuild.toml`, `--profile` and `--target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The triples to build, in order.
    pub targets: Vec<Triple>,
    /// What to build of the project.
    pub profile: Profile,
    /// The profile's name (`default` unless `--profile` named one).
    pub profile_name: String,
}

/// Parses `cmbuild.toml` text.
pub fn parse_config(text: &str) -> Result<ProjectConfig, ProjectError> {
    toml::from_str(text).map_err(|e| ProjectError::Config(e.to_string()))
}

/// Picks targets and profile; `target` is `None` or `Some("all")` for every configured target.
pub fn select(
    config: &ProjectConfig,
    profile: Option<&str>,
    target: Option<&str>,
) -> Result<Selection, ProjectError> {
    let (profile_name, chosen) = match profile {
        Some(name) => match config.profiles.get(name) {
            Some(p) => (name.to_owned(), p.clone()),
            None => {
                let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
                return Err(ProjectError::NoSuchProfile(
                    name.to_owned(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                ));
            }
        },
        None => (
            "default".to_owned(),
            config.profiles.get("default").cloned().unwrap_or_default(),
        ),
    };
    let configured: Vec<Triple> = match chosen.targets.as_ref().or(config.targets.as_ref()) {
        Some(names) => names
            .iter()
            .map(|t| t.parse())
            .collect::<Result<_, UnsupportedTriple>>()?,
        None => Triple::defaults(),
    };
    let targets = match target {
        None | Some("all") => configured,
        Some(t) => vec![t.parse()?],
    };
    Ok(Selection {
        targets,
        profile: chosen,
        profile_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(dir.path().join("proj/src")).unwrap();
        std::fs::write(dir.path().join("proj/Cargo.toml"), "[package]\n").unwrap();
        std::fs::write(dir.path().join("proj/src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(dir.path().join("proj/run.sh"), "#!/bin/sh\n").unwrap();
        let mut perms = std::fs::metadata(dir.path().join("proj/run.sh"))
            .unwrap()
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir.path().join("proj/run.sh"), perms).unwrap();
        std::os::unix::fs::symlink("Cargo.toml", dir.path().join("proj/link")).unwrap();
        std::fs::write(dir.path().join("outside.txt"), "not part of proj\n").unwrap();
        run(dir.path(), &["add", "-A"]);
        run(dir.path(), &["commit", "-q", "-m", "init"]);
        run(dir.path(), &["tag", "v0.1.0"]);
        dir
    }

    #[test]
    fn archive_is_deterministic_and_only_holds_committed_project_files() {
        let dir = repo();
        let proj = dir.path().join("proj");
        let rev = resolve_revision(&proj, "v0.1.0").unwrap();
        assert_eq!(rev.prefix, "proj/");
        assert_eq!(rev.commit_time, 1_704_067_200);
        // Uncommitted changes in the work tree must not leak into the archive.
        std::fs::write(proj.join("src/main.rs"), "fn main() { evil() }\n").unwrap();
        let mut first = Vec::new();
        write_source_archive(&proj, &rev, &mut first).unwrap();
        let mut second = Vec::new();
        write_source_archive(&proj, &rev, &mut second).unwrap();
        assert_eq!(first, second);
        let mut archive = tar::Archive::new(&first[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            assert_eq!(entry.header().mtime().unwrap(), 1_704_067_200);
            assert_eq!(entry.header().uid().unwrap(), 0);
            if path == "src/main.rs" {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                assert_eq!(text, "fn main() {}\n");
            }
            if path == "run.sh" {
                assert_eq!(entry.header().mode().unwrap(), 0o755);
            }
            if path == "link" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
            }
            seen.push(path);
        }
        assert_eq!(seen, ["Cargo.toml", "link", "run.sh", "src", "src/main.rs"]);
    }

    #[test]
    fn unknown_revision_is_a_clear_error() {
        let dir = repo();
        let err = resolve_revision(dir.path(), "v9.9.9").unwrap_err();
        assert!(err.to_string().contains("v9.9.9"), "{err}");
    }

    #[test]
    fn selection_follows_config_profile_and_target() {
        let config = parse_config(
            "targets = [\"x86_64-unknown-linux-gnu\", \"aarch64-unknown-linux-gnu\"]\n\
             [profiles.cam]\npackages = [\"cam\"]\nfeatures = [\"pi\"]\n",
        )
        .unwrap();
        let all = select(&config, None, None).unwrap();
        assert_eq!(all.targets.len(), 2);
        assert_eq!(all.profile, Profile::default());
        let cam = select(&config, Some("cam"), Some("aarch64-unknown-linux-gnu")).unwrap();
        assert_eq!(cam.targets, ["aarch64-unknown-linux-gnu".parse().unwrap()]);
        assert_eq!(cam.profile.features, ["pi"]);
        assert!(matches!(
            select(&config, Some("nope"), None),
            Err(ProjectError::NoSuchProfile(..))
        ));
        assert!(matches!(
            select(&config, None, Some("mips-unknown-linux-gnu")),
            Err(ProjectError::UnsupportedTarget(..))
        ));
        assert_eq!(
            select(&ProjectConfig::default(), None, Some("all"))
                .unwrap()
                .targets
                .len(),
            3
        );
        assert!(parse_config("bogus = 1").is_err());
    }
}
