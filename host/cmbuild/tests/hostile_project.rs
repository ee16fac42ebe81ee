//! A project someone asks you to build or verify is untrusted: its committed symlinks must
//! not make `cmbuild run` read outside the project's tree, whatever chain of links they
//! form, and a link to a device must not be read until memory runs out.

mod common;

use common::{commit_tagged, run_release};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A project whose `name` is a symlink through the chain `b -> .` to `target` (an absolute
/// path outside the tree, reached with as many `..` as `b/` so the lexical check passes).
fn project_with_link(root: &Path, name: &str, target: &str) -> PathBuf {
    let dir = root.join("proj");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"p\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    if name != "Cargo.lock" {
        std::fs::write(
            dir.join("Cargo.lock"),
            "version = 4\n\n[[package]]\nname = \"p\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
    }
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::os::unix::fs::symlink(".", dir.join("b")).unwrap();
    let chain = format!(
        "{}{}{}",
        "b/".repeat(32),
        "../".repeat(32),
        target.trim_start_matches('/')
    );
    std::os::unix::fs::symlink(chain, dir.join(name)).unwrap();
    commit_tagged(&dir, "v0.1.0");
    dir
}

/// Runs `cmbuild run` on the project; fails the test if it takes more than a minute.
fn run(root: &Path, project: &Path) -> (i32, String) {
    let (mirror, builds) = (root.join("mirror"), root.join("builds"));
    let child = Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(run_release("v0.1.0", project, &mirror, &builds))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let started = Instant::now();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
            if !Path::new(&format!("/proc/{id}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
        panic!("cmbuild run did not finish within a minute");
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = watchdog.join();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_link_chain_out_of_the_tree_is_refused_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let project = project_with_link(root.path(), "cmbuild.toml", "/etc/passwd");
    let (code, stderr) = run(root.path(), &project);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("leaves the tree"), "{stderr}");
    assert!(!stderr.contains("root:"), "a host file leaked: {stderr}");
}

#[test]
fn a_lock_file_linked_to_a_device_is_not_read() {
    let root = tempfile::tempdir().unwrap();
    let project = project_with_link(root.path(), "Cargo.lock", "/dev/zero");
    let (code, stderr) = run(root.path(), &project);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("leaves the tree"), "{stderr}");
}
