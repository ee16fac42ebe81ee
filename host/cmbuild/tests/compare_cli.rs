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
            glibc_floor: None,
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
                jobs: Vec::new(),
            })
            .collect(),
        config: None,
        template: None,
        offload: None,
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

/// splitmix64: a seeded generator, the same sequence everywhere.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Published records are hostile: mutated `manifest.json` and `machine.json` (flipped bytes,
/// cut files, spliced-in JSON tokens) are read and compared in process without a panic, and a
/// mutated side never passes unless its records still say exactly what the honest side says.
/// `CMBUILD_FUZZ_CASES` cases (default 300), seed `CMBUILD_FUZZ_SEED`.
#[test]
fn mutated_published_records_never_panic_and_never_pass_by_accident() {
    let cases: usize = std::env::var("CMBUILD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut state: u64 = std::env::var("CMBUILD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xc0ffee);
    eprintln!("CMBUILD_FUZZ_SEED={state}, {cases} cases");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let bins: &[(&str, &[u8])] = &[
        ("x86_64-unknown-linux-gnu", b"x86 bytes"),
        ("riscv64gc-unknown-linux-gnu", b"riscv bytes"),
    ];
    write_build(&a, bins, &"1".repeat(64));
    write_build(&b, bins, &"1".repeat(64));
    let honest: Vec<(&str, Vec<u8>)> = ["manifest.json", "machine.json"]
        .into_iter()
        .map(|name| (name, std::fs::read(b.join(name)).unwrap()))
        .collect();
    let tokens: &[&[u8]] = &[
        b"\"../../etc/passwd\"",
        b"\"/abs\"",
        b"null",
        b"[]",
        b"{}",
        b"-1",
        b"18446744073709551616",
        b"\"\\u0000\"",
        b"\"x86_64-unknown-linux-gnu/../../x\"",
    ];
    let cid_of_file = |p: &Path| cmbuild_store::cid::cid_of_file(p);
    let started = std::time::Instant::now();
    let (mut passed, mut refused) = (0, 0);
    for _ in 0..cases {
        let which = (next(&mut state) % 2) as usize;
        let (name, original) = &honest[which];
        let mut bytes = original.clone();
        match next(&mut state) % 3 {
            0 => {
                for _ in 0..1 + next(&mut state) % 4 {
                    let i = (next(&mut state) as usize) % bytes.len();
                    bytes[i] ^= 1 << (next(&mut state) % 8);
                }
            }
            1 => bytes.truncate((next(&mut state) as usize) % bytes.len()),
            _ => {
                let at = (next(&mut state) as usize) % bytes.len();
                let len = ((next(&mut state) as usize) % 24).min(bytes.len() - at);
                let token = tokens[(next(&mut state) as usize) % tokens.len()];
                bytes.splice(at..at + len, token.iter().copied());
            }
        }
        std::fs::write(b.join(name), &bytes).unwrap();
        // The readers and the comparison must answer, never panic.
        let _ = cmbuild::manifest::read_manifest(&b.join("manifest.json"));
        let _ = cmbuild::manifest::read_machine_record(&b.join("machine.json"));
        match cmbuild::compare::compare_builds(&a, &b, &cid_of_file) {
            Ok(report) if report.passed() => {
                // Only a mutation that left the records' meaning intact may pass (a typed
                // value such as a digest may change its spelling: upper-case hex is the same
                // digest). The emulator's version is not part of it: two cmbuild versions
                // that reach the same root hashes agree.
                let same = |n: &str| {
                    if n == "manifest.json" {
                        let read = |d: &Path| cmbuild::manifest::read_manifest(&d.join(n)).unwrap();
                        read(&a) == read(&b)
                    } else {
                        let read = |d: &Path| {
                            let mut r = cmbuild::manifest::read_machine_record(&d.join(n)).unwrap();
                            r.emulator_version.clear();
                            r
                        };
                        read(&a) == read(&b)
                    }
                };
                assert!(
                    same("manifest.json") && same("machine.json"),
                    "a mutated {name} passed: {}",
                    String::from_utf8_lossy(&bytes)
                );
                passed += 1;
            }
            _ => refused += 1,
        }
        std::fs::write(b.join(name), original).unwrap();
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    eprintln!(
        "{cases} mutated records: {refused} refused, {passed} passed with the same meaning; {:.0} cases/s",
        cases as f64 / secs
    );
    assert!(refused > cases / 2, "most mutations must be refused");
}
