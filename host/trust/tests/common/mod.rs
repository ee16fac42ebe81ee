//! A fake build directory as `cmbuild run` writes it, for the attestation tests.

#![allow(dead_code)]

use cmbuild_store::hex;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

pub const TRIPLES: [&str; 2] = ["riscv64gc-unknown-linux-gnu", "x86_64-unknown-linux-gnu"];

/// Writes a build of `hello` for two triples whose binaries contain `flavour`, and whose
/// machines end at root hashes derived from `root_seed`.
pub fn write_build(dir: &Path, flavour: &str, root_seed: &str) {
    let mut artifacts = Vec::new();
    let mut machines = Vec::new();
    for triple in TRIPLES {
        std::fs::create_dir_all(dir.join(triple)).unwrap();
        let bytes = format!("ELF hello for {triple} {flavour}").into_bytes();
        std::fs::write(dir.join(triple).join("hello"), &bytes).unwrap();
        artifacts.push(json!({
            "package": "hello", "target": triple, "bin": "hello",
            "bin_path": format!("{triple}/hello"), "crate": "hello", "version": "0.1.0",
            "crate_lock_sha256": "ab".repeat(32),
            "toolchain": cmbuild_store::cid::cid_of_bytes(triple.as_bytes()).to_string(),
            "sha256": hex::encode(Sha256::digest(&bytes)),
            "cid": cmbuild_store::cid::cid_of_bytes(&bytes).to_string(),
        }));
        machines.push(json!({
            "targets": [triple],
            "root_hash": format!("cmvm-sha256-v1:{}", hex::encode(Sha256::digest(format!("{root_seed}{triple}")))),
            "mcycle": 123_456_789_u64,
            "exit_code": 0,
        }));
    }
    let manifest = json!({
        "schema": "cmbuild-manifest-v1", "release": "v0.1.0", "commit": "c0".repeat(20),
        "artifacts": artifacts,
    });
    let machine = json!({
        "schema": "cmbuild-machine-v1", "emulator_version": "0.1.0",
        "hash_scheme": "cmvm-sha256-v1",
        "inputs": {
            "GUEST_KERNEL_CID": "bafybeidritw47676x6xkw4cgerkuqetksxouluur3wcyrwqvjikyvihbay",
            "SOURCE_CID": cmbuild_store::cid::cid_of_bytes(b"source tar").to_string(),
        },
        "machines": machines,
        "config": {"ram_length": 4294967296_u64, "scratch_length": 268435456, "output_length": 536870912, "max_mcycle": 17592186044416_u64},
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("machine.json"),
        serde_json::to_vec_pretty(&machine).unwrap(),
    )
    .unwrap();
}
