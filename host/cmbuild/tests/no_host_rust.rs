//! No Rust toolchain on the host takes part in a build: `cmbuild vendor` and `cmbuild run`'s
//! planning work with a PATH that holds `git` and nothing else (no cargo, no rustc, no
//! rustup), on a workspace with globbed members, a path-dependency member and a
//! `rust-toolchain.toml` the host could not satisfy.

mod common;

use common::git;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CMBUILD: &str = env!("CARGO_BIN_EXE_cmbuild");

/// A directory whose only program is `git` (a link to the host's).
fn git_only_path(root: &Path) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .unwrap();
    let git = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(!git.is_empty(), "git is needed");
    let bin = root.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(git, bin.join("git")).unwrap();
    for tool in ["cargo", "rustc", "rustup"] {
        assert!(!bin.join(tool).exists());
    }
    bin
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A committed workspace: `crates/*` members, one with a path dependency under the root,
/// no crates.io dependency (nothing to download), tagged v1.0.0.
fn workspace(root: &Path) -> PathBuf {
    let dir = root.join("ws");
    write(
        &dir,
        &[
            (
                "Cargo.toml",
                "[workspace]\nmembers = [\"crates/*\"]\nresolver = \"2\"\n\
                 [workspace.package]\nversion = \"1.2.3\"\n",
            ),
            (
                "crates/app/Cargo.toml",
                "[package]\nname = \"app\"\nversion.workspace = true\nedition = \"2021\"\n\
                 [dependencies]\nutil = { path = \"../../util\" }\n",
            ),
            ("crates/app/src/main.rs", "fn main() { util::f() }\n"),
            ("crates/app/src/bin/tool.rs", "fn main() {}\n"),
            (
                "util/Cargo.toml",
                "[package]\nname = \"util\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            ("util/src/lib.rs", "pub fn f() {}\n"),
            (
                "Cargo.lock",
                "version = 4\n\n[[package]]\nname = \"app\"\nversion = \"1.2.3\"\n\
                 dependencies = [\"util\"]\n\n[[package]]\nname = \"util\"\nversion = \"0.1.0\"\n",
            ),
            ("rust-toolchain.toml", "[toolchain]\nchannel = \"stable\"\n"),
        ],
    );
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "ws"]);
    git(&dir, &["tag", "v1.0.0"]);
    dir
}

fn cmbuild(path: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(CMBUILD)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", path)
        .env("HOME", cwd)
        .env("CMBUILD_CACHE", cwd.join("cache"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn vendor_works_without_rust_on_the_host() {
    let root = tempfile::tempdir().unwrap();
    let path = git_only_path(root.path());
    let ws = workspace(root.path());
    // From a member's directory: the workspace root (and its Cargo.lock) is found above it.
    let mirror = root.path().join("mirror");
    let out = cmbuild(
        &path,
        &ws.join("crates/app"),
        &[
            "vendor",
            "--crates-only",
            "--mirror",
            mirror.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Cargo.lock"), "{stderr}");
}

#[test]
fn run_plans_without_rust_on_the_host() {
    let root = tempfile::tempdir().unwrap();
    let path = git_only_path(root.path());
    let ws = workspace(root.path());
    let out = cmbuild(
        &path,
        &ws,
        &[
            "run",
            "--release",
            "v1.0.0",
            "--out",
            root.path().join("builds").to_str().unwrap(),
            "--mirror",
            root.path().join("mirror").to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checking inputs in the mirror"), "{stderr}");
    // The plan was made; what stops the run is the empty mirror, nothing about Rust.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cmbuild vendor"), "{stderr}");
    for word in ["cargo metadata", "rustup", "No such file"] {
        assert!(!stderr.contains(word), "{word}: {stderr}");
    }
}
