//! Helpers shared by the integration tests: where the repository and the download cache
//! are, and git with a fixed identity and fixed dates (so commits, hence source archives,
//! are the same on every run).
#![allow(dead_code)] // Each test crate uses its own subset.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$CMBUILD_CACHE`, else `~/.cache/cmbuild`: downloads by pinned hash, kept between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CMBUILD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/cmbuild"))
}

/// Runs git in `dir` with a fixed identity and dates and no signing; panics on failure.
pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_AUTHOR_NAME", "cmbuild")
        .env("GIT_AUTHOR_EMAIL", "demo@cmbuild.invalid")
        .env("GIT_COMMITTER_NAME", "cmbuild")
        .env("GIT_COMMITTER_EMAIL", "demo@cmbuild.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// Makes `dir` a git repository whose one commit holds everything in it, tagged `tag`.
pub fn commit_tagged(dir: &Path, tag: &str) {
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", tag]);
    git(dir, &["tag", tag]);
}

/// Runs the cmbuild under test with `args`, its command line and stderr shown as it runs
/// (a heavy test's progress); returns its output (stdout captured).
pub fn cmbuild_shown(args: &[&str]) -> std::process::Output {
    eprintln!("$ cmbuild {}", args.join(" "));
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap()
}

/// The command line of `cmbuild run` building release `tag` of `project` from `mirror`
/// into `out`, for a test to add its options to.
pub fn run_release<'a>(
    tag: &'a str,
    project: &'a Path,
    mirror: &'a Path,
    out: &'a Path,
) -> Vec<&'a str> {
    vec![
        "run",
        "--release",
        tag,
        "--project",
        s(project),
        "--mirror",
        s(mirror),
        "--out",
        s(out),
    ]
}

/// A path as the `&str` command lines take.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A committed package `p` 0.1.0 with no dependencies at `dir`, tagged v0.1.0:
/// `package_extra` goes at the end of its `[package]` table, `files` beside its Cargo.toml.
pub fn tiny_project(dir: &Path, package_extra: &str, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"p\"\nversion = \"0.1.0\"\nedition = \"2021\"\n{package_extra}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("Cargo.lock"),
        "version = 4\n\n[[package]]\nname = \"p\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "p"]);
    git(dir, &["tag", "v0.1.0"]);
    dir.to_path_buf()
}

/// Copies a source tree, leaving out `target/` directories.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}
