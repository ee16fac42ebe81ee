//! Helpers shared by the IPFS tests: mirrors with known blobs, and running `cmbuild`.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::{Entry, Key, Mirror};

/// Bytes that never repeat at a chunk boundary (so each 256 KiB chunk is its own leaf),
/// different for each `seed`.
pub fn varied(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, deterministic, no repeats within any realistic length.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A mirror at `dir` holding `blobs`, each indexed as crate `NAME 1.0.0`.
pub fn make_mirror(dir: &Path, blobs: &[(&str, &[u8])]) -> Vec<Cid> {
    let mirror = Mirror::open(dir).unwrap();
    let mut cids = Vec::new();
    let mut entries = Vec::new();
    for (name, bytes) in blobs {
        let stored = mirror.put_bytes(bytes).unwrap();
        cids.push(stored.cid);
        entries.push((
            Key::crate_(name, "1.0.0"),
            Entry {
                cid: stored.cid,
                sha256: stored.sha256,
                size: stored.size,
                url: None,
            },
        ));
    }
    mirror.record(entries).unwrap();
    cids
}

/// Runs the `cmbuild` binary built for these tests.
pub fn cmbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .output()
        .expect("cmbuild runs")
}

/// Text of both streams, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A copy of examples/hello (manifest, lock, sources) under `dir`, so that vendoring it writes
/// nothing into the repository.
pub fn copy_example(dir: &Path) -> std::path::PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let project = dir.join("hello");
    std::fs::create_dir_all(project.join("src")).unwrap();
    for file in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        std::fs::copy(example.join(file), project.join(file)).unwrap();
    }
    project
}

/// `cmbuild vendor --crates-only` of `project` into `mirror`, pushing to `ipfs_api`.
/// Downloads the example's crates from crates.io (about 75 KiB), like tests/vendor.rs.
pub fn vendor_to_ipfs(project: &Path, mirror: &Path, ipfs_api: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .arg("vendor")
        .arg("--crates-only")
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .arg("--mirror")
        .arg(mirror)
        .arg("--ipfs-api")
        .arg(ipfs_api)
        .output()
        .expect("cmbuild runs")
}
