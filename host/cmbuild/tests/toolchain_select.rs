//! `cmbuild run` selects a pinned Rust toolchain before any machine boots: from
//! `--toolchain`, the commit's `rust-toolchain` / `rust-toolchain.toml`, or the newest
//! pinned; a channel no pinned toolchain matches, or a package whose `rust-version` is newer
//! than the selected toolchain, is a clear error listing the pinned ones. A run that passes
//! selection goes on to the mirror (empty here), so "checking inputs in the mirror" tells the
//! two apart.

mod common;

use std::process::Command;

/// Runs `cmbuild run` on a committed project made of `files` plus a minimal package whose
/// `[package]` gets `package_extra`; returns (exit code, stderr).
fn run(files: &[(&str, &str)], package_extra: &str, extra_args: &[&str]) -> (i32, String) {
    let root = tempfile::tempdir().unwrap();
    let dir = common::tiny_project(&root.path().join("p"), package_extra, files);
    let (mirror, builds) = (root.path().join("mirror"), root.path().join("builds"));
    let out = Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(common::run_release("v0.1.0", &dir, &mirror, &builds))
        .args(extra_args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PASSED: &str = "checking inputs in the mirror";

fn assert_selected(result: (i32, String)) {
    let (code, stderr) = result;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(PASSED), "{stderr}");
}

fn assert_refused(result: (i32, String), expected: &str) {
    let (code, stderr) = result;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(
        stderr.contains("the pinned toolchains are: 1.85.1, 1.96.0, 1.97.1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(PASSED),
        "refused only after planning: {stderr}"
    );
}

#[test]
fn channel_forms_that_match_the_pinned_toolchain() {
    assert_selected(run(&[], "", &[]));
    for channel in [
        "stable", "1.85", "1.85.1", "1.96", "1.96.0", "1.97", "1.97.1",
    ] {
        let file = format!("[toolchain]\nchannel = \"{channel}\"\ncomponents = [\"clippy\"]\n");
        assert_selected(run(&[("rust-toolchain.toml", &file)], "", &[]));
    }
    assert_selected(run(&[("rust-toolchain", "1.85\n")], "", &[]));
    assert_selected(run(&[], "rust-version = \"1.85\"\n", &[]));
    // A newer rust-version is fine with a newer pinned toolchain selected.
    assert_selected(run(
        &[],
        "rust-version = \"1.90\"\n",
        &["--toolchain", "1.96"],
    ));
    // --toolchain overrides the project's file.
    assert_selected(run(
        &[("rust-toolchain.toml", "[toolchain]\nchannel = \"1.98\"\n")],
        "",
        &["--toolchain", "1.85"],
    ));
}

#[test]
fn unpinned_channels_fail_before_any_machine_boots() {
    assert_refused(
        run(
            &[("rust-toolchain.toml", "[toolchain]\nchannel = \"1.96.1\"\n")],
            "",
            &[],
        ),
        "the Rust toolchain \"1.96.1\" (rust-toolchain.toml) is not one cmbuild has pinned",
    );
    assert_refused(
        run(&[("rust-toolchain", "nightly-2025-01-01\n")], "", &[]),
        "\"nightly-2025-01-01\" (rust-toolchain)",
    );
    assert_refused(
        run(&[], "", &["--toolchain", "1.85.0"]),
        "\"1.85.0\" (--toolchain)",
    );
}

#[test]
fn a_rust_version_newer_than_the_toolchain_fails_early() {
    assert_refused(
        run(&[], "rust-version = \"1.88\"\n", &[]),
        "package p requires rustc 1.88 (its rust-version), but the selected toolchain is 1.85.1",
    );
}
