//! `cmbuild compare` as a user runs it: exit codes, verdict lines and drift messages.

use std::path::Path;
use std::process::Command;

use cmbuild::manifest::{
    to_canonical_json, Artifact, MachineRecord, MachineRun, Manifest, MACHINE_SCHEMA,
    MANIFEST_SCHEMA,
};
use cmbuild_store::cid::{cid_of_bytes, Cid};
use cmbuild_store::sha256::Sha256;

fn cmbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
}

fn cid_of(bytes: &[u8]) -> Cid {
    cid_of_bytes(bytes)
}

/// Writes a build of `hello` for the given targets, as `cmbuild run` lays it out.
fn write_build(dir: &Path, bins: &[(&str, &[u8])], lock_sha256: &str) {
    let mut artifacts = Vec::new();
    for (target, bytes) in bins {
        std::fs::create_dir_all(dir.join(target)).unwrap();
        std::fs::write(dir.join(target).join("hello"), bytes).unwrap();
        artifacts.push(Artifact {
            package: "hello".into(),
            target: (*target).into(),
            bin: "hello".into(),
            bin_path: format!("{target}/hello"),
            krate: "hello".into(),
            version: "0.1.0".into(),
            crate_lock_sha256: lock_sha256.parse().unwrap(),
            toolchain: cid_of(b"toolchain"),
            sha256: Sha256::of(bytes),
            cid: cid_of(bytes),
            abi: None,
            toolchain_version: None,
        });
    }
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA.into(),
        release: "v0.1.0".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        artifacts,
    };
    std::fs::write(dir.join("manifest.json"), to_canonical_json(&manifest)).unwrap();
    let record = MachineRecord {
        schema: MACHINE_SCHEMA.into(),
        emulator_version: "0.1.0".into(),
        hash_scheme: "cmvm-sha256-v1".into(),
        inputs: [("SOURCE_CID".to_string(), cid_of(b"source"))].into(),
        machines: bins
            .iter()
            .map(|(target, _)| MachineRun {
                targets: vec![(*target).into()],
                root_hash: format!("cmvm-sha256-v1:{}", Sha256::of(target)),
                mcycle: 1,
                exit_code: 0,
            })
            .collect(),
        config: None,
    };
    std::fs::write(dir.join("machine.json"), to_canonical_json(&record)).unwrap();
}

fn compare(a: &Path, b: &Path) -> (i32, String) {
    let out = cmbuild().arg("compare").arg(a).arg(b).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap(), stdout)
}

const X86: &str = "x86_64-unknown-linux-gnu";
const ARM: &str = "aarch64-unknown-linux-gnu";
const LOCK: &str = "5e7d9c1bbf1f63f4e7f0dd2e0f2c25b5b4a4c6d0c8f1f5e5b9a6c3d2e1f0a9b8";

#[test]
fn identical_builds_and_a_subset_pass() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    write_build(&a, &[(X86, b"\x7fELF x86"), (ARM, b"\x7fELF arm")], LOCK);
    write_build(&b, &[(X86, b"\x7fELF x86")], LOCK);
    let (code, out) = compare(&a, &b);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.trim_end().ends_with("Reproducibility check PASSED"),
        "{out}"
    );
}

#[test]
fn a_flipped_byte_is_output_drift() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    write_build(&a, &[(X86, b"\x7fELF x86")], LOCK);
    write_build(&b, &[(X86, b"\x7fELF x87")], LOCK);
    let (code, out) = compare(&a, &b);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("output drift: x86_64-unknown-linux-gnu/hello"),
        "{out}"
    );
    assert!(!out.contains("input drift"), "{out}");
    assert!(
        out.trim_end().ends_with("Reproducibility check FAILED"),
        "{out}"
    );
}

#[test]
fn a_changed_lock_is_input_drift() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    write_build(&a, &[(X86, b"\x7fELF x86")], LOCK);
    write_build(&b, &[(X86, b"\x7fELF x86")], &LOCK.replace('5', "6"));
    let (code, out) = compare(&a, &b);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("input drift"), "{out}");
    assert!(out.contains("crate_lock_sha256 differs"), "{out}");
    assert!(!out.contains("output drift"), "{out}");
}

#[test]
fn a_manifest_lying_about_its_file_or_escaping_fails() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    write_build(&a, &[(X86, b"\x7fELF x86")], LOCK);
    write_build(&b, &[(X86, b"\x7fELF x86")], LOCK);
    // Tamper with b's binary after its manifest was written: both claims must fail.
    std::fs::write(b.join(X86).join("hello"), b"\x7fELF evil").unwrap();
    let (code, out) = compare(&a, &b);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("but the file hashes to"), "{out}");
    // A manifest pointing outside its directory is refused, not followed.
    let text = std::fs::read_to_string(a.join("manifest.json")).unwrap();
    let evil = text.replace(
        "\"bin_path\": \"x86_64-unknown-linux-gnu/hello\"",
        "\"bin_path\": \"../b/x86_64-unknown-linux-gnu/hello\"",
    );
    assert_ne!(evil, text);
    std::fs::write(a.join("manifest.json"), evil).unwrap();
    let (code, out) = compare(&a, &a);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bin_path refused"), "{out}");
}

#[test]
fn a_missing_manifest_is_an_error_not_a_verdict() {
    let t = tempfile::tempdir().unwrap();
    let out = cmbuild()
        .arg("compare")
        .arg(t.path())
        .arg(t.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("manifest.json"), "{stderr}");
}

#[test]
fn an_empty_published_build_or_one_without_machine_json_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    write_build(&a, &[(X86, b"hello")], LOCK);
    write_build(&b, &[], LOCK);
    let (code, out) = compare(&a, &b);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lists no artifacts"), "{out}");
    write_build(&b, &[(X86, b"hello")], LOCK);
    std::fs::remove_file(b.join("machine.json")).unwrap();
    let (code, out) = compare(&a, &b);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("has no machine.json"), "{out}");
}
