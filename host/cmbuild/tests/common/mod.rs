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

/// A path as the `&str` command lines take.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
