//! Foreign triples with C, assembly and WebAssembly, end to end inside the machine:
//! `examples/c-and-asm` (a build script that compiles C and per-architecture assembly with
//! the `cc` crate, and zlib's C through `libz-sys`) for x86_64 and aarch64, and
//! `examples/hello` for `wasm32-wasip1` and `wasm32-unknown-unknown`.
//!
//! `#[ignore]`d (heavy: the pinned packages and the crates are fetched once into
//! `$CMBUILD_CACHE`, and each build runs billions of guest instructions); `.ci/run` runs it
//! with the other heavy tests when time allows.
//!
//! What it proves: the guest's per-triple C toolchain (`CC_<triple>`, `CFLAGS_<triple>`)
//! cross-compiles C and assembly; the x86_64 artifact runs on the host and prints what its
//! C, assembly and zlib computed; the aarch64 artifact is an aarch64 ELF; the wasip1
//! artifact is a `.wasm` that runs under node's WASI (when node is installed); the manifest
//! names `.wasm` paths.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cmbuild::manifest::read_manifest;
use common::{cache_dir, commit_tagged, copy_tree, repo_root, s};

use common::cmbuild_shown as cmbuild;

/// Copies examples/NAME (its files only, no build output) into a fresh repository tagged
/// v0.1.0, with `cmbuild_toml` as its cmbuild.toml.
fn fixture(dir: &Path, name: &str, cmbuild_toml: &str) -> PathBuf {
    let from = repo_root().join("examples").join(name);
    let project = dir.join(name);
    copy_tree(&from, &project);
    std::fs::write(project.join("cmbuild.toml"), cmbuild_toml).unwrap();
    commit_tagged(&project, "v0.1.0");
    project
}

/// Vendors and builds `project` (all triples of its cmbuild.toml in one machine) and
/// returns the release directory, or `None` when vendoring could not fetch the inputs.
fn build(project: &Path, out: &Path) -> Option<PathBuf> {
    let mirror = cache_dir().join("image-test-mirror");
    let vendored = cmbuild(&[
        "vendor",
        "--manifest-path",
        s(&project.join("Cargo.toml")),
        "--mirror",
        s(&mirror),
    ]);
    if !vendored.status.success() {
        eprintln!(
            "SKIPPED LOUDLY: `cmbuild vendor` could not fetch every input (crates.io or a \
             Debian package that left the archive: re-lock with `cmbuild image lock`)"
        );
        return None;
    }
    let mut args = common::run_release("v0.1.0", project, &mirror, out);
    args.push("--single-machine");
    let run = cmbuild(&args);
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}");
    Some(out.join("v0.1.0"))
}

#[test]
#[ignore = "heavy: pinned packages, crates.io downloads, billions of guest instructions"]
fn c_and_assembly_cross_compile_for_foreign_triples() {
    let work = tempfile::tempdir().unwrap();
    let project = fixture(
        work.path(),
        "c-and-asm",
        "targets = [\"x86_64-unknown-linux-gnu\", \"aarch64-unknown-linux-gnu\"]\n",
    );
    let Some(release) = build(&project, &work.path().join("builds")) else {
        return;
    };
    let x86 = release.join("x86_64-unknown-linux-gnu/c-and-asm");
    let ran = Command::new(&x86).output().unwrap();
    let text = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{text}");
    // 7 * 2654435761 mod 2^32 ^ (64 >> 3), 40 + 2 from the assembly, zlib's CRC-32.
    assert!(
        text.starts_with("mix=1401181151 add=42 crc32=e8da9044 zlib="),
        "{text}"
    );
    let arm = std::fs::read(release.join("aarch64-unknown-linux-gnu/c-and-asm")).unwrap();
    assert_eq!(&arm[..4], b"\x7fELF");
    // e_machine 183: EM_AARCH64.
    assert_eq!(u16::from_le_bytes([arm[18], arm[19]]), 183);
    let manifest = read_manifest(&release.join("manifest.json")).unwrap();
    assert_eq!(manifest.artifacts.len(), 2);
}

#[test]
#[ignore = "heavy: pinned packages and billions of guest instructions"]
fn webassembly_targets_build_wasm_artifacts() {
    let work = tempfile::tempdir().unwrap();
    let project = fixture(
        work.path(),
        "hello",
        "targets = [\"wasm32-wasip1\", \"wasm32-unknown-unknown\"]\n",
    );
    let Some(release) = build(&project, &work.path().join("builds")) else {
        return;
    };
    let manifest = read_manifest(&release.join("manifest.json")).unwrap();
    let paths: Vec<&str> = manifest
        .artifacts
        .iter()
        .map(|a| a.bin_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "wasm32-unknown-unknown/hello.wasm",
            "wasm32-wasip1/hello.wasm"
        ]
    );
    for path in &paths {
        let bytes = std::fs::read(release.join(path)).unwrap();
        assert_eq!(&bytes[..4], b"\0asm", "{path}");
    }
    // The WASI program runs (node's WASI, when node is there).
    let script = "const fs=require('fs');const {WASI}=require('wasi');\
        const w=new WASI({version:'preview1',args:[],env:{}});\
        WebAssembly.instantiate(fs.readFileSync(process.argv[1]),w.getImportObject())\
        .then(({instance})=>w.start(instance));";
    let wasi = release.join("wasm32-wasip1/hello.wasm");
    match Command::new("node")
        .args(["--no-warnings", "-e", script, s(&wasi)])
        .output()
    {
        Ok(ran) => {
            let text = String::from_utf8_lossy(&ran.stdout);
            assert!(ran.status.success(), "{text}");
            assert!(text.contains("hello"), "{text}");
        }
        Err(e) => eprintln!("node is not installed ({e}): the wasip1 program was not run"),
    }
}
