//! `cmbuild prove` and `verify-proof` with a state proof: the artifact's bytes are checked
//! through the output drive's pages to the root hash that the attestations vouch for. The
//! build directory is made by hand around a small real machine whose output drive holds the
//! tar the guest would write.

use std::path::Path;
use std::process::{Command, Output};

use cmbuild::guest::{drive_bytes, Drive};
use cmbuild::state_proofs::{locate_files, prove_file};
use cmbuild_machine::machine::{FlashConfig, Machine, MachineConfig};
use cmbuild_machine::merkle::PageTree;
use cmbuild_store::cid::cid_of_bytes;
use cmbuild_store::sha256::Sha256;

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn cmbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A machine with cmbuild's drives whose output drive holds a tar of `hello`; returns its
/// root hash and the state proof bytes of `TRIPLE/hello`.
fn machine_and_proof(hello: &[u8]) -> (String, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes) in [
        (format!("{TRIPLE}/status"), &b"0\n"[..]),
        (format!("{TRIPLE}/hello"), hello),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, path, bytes).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let cfg = MachineConfig {
        ram_length: 1 << 20,
        ram_image: Some(vec![0x73, 0x00, 0x50, 0x10]), // wfi
        flash_drives: Drive::ALL
            .iter()
            .map(|d| FlashConfig {
                label: d.label().into(),
                image: if *d == Drive::Output {
                    tar.clone()
                } else {
                    vec![1; 100]
                },
                shared: d.shared(),
            })
            .collect(),
        ..MachineConfig::default()
    };
    let mut m = Machine::new(&cfg).unwrap();
    let root = m.root_hash();
    let leaves = m.hash_leaves();
    let drive = drive_bytes(&m, Drive::Output).to_vec();
    let proof = prove_file(
        &format!("machine/{TRIPLE}"),
        &leaves,
        &PageTree::build(&drive),
        &drive,
        &locate_files(&drive),
        &format!("{TRIPLE}/hello"),
        hello,
    )
    .unwrap();
    (root, proof.to_file_bytes().unwrap())
}

fn write_build(dir: &Path, hello: &[u8], root: &str, proof: &[u8]) {
    std::fs::create_dir_all(dir.join(TRIPLE)).unwrap();
    std::fs::create_dir_all(dir.join("proofs").join(TRIPLE)).unwrap();
    std::fs::write(dir.join(TRIPLE).join("hello"), hello).unwrap();
    std::fs::write(dir.join("proofs").join(TRIPLE).join("hello.json"), proof).unwrap();
    let manifest = serde_json::json!({
        "schema": "cmbuild-manifest-v1", "release": "v1", "commit": "ab".repeat(20),
        "artifacts": [{
            "package": "hello", "target": TRIPLE, "bin": "hello",
            "bin_path": format!("{TRIPLE}/hello"), "crate": "hello", "version": "0.1.0",
            "crate_lock_sha256": "00".repeat(32),
            "toolchain": cid_of_bytes(b"toolchain").to_string(),
            "sha256": Sha256::of(hello).to_string(), "cid": cid_of_bytes(hello).to_string(),
        }],
    });
    let machine = serde_json::json!({
        "schema": "cmbuild-machine-v1", "emulator_version": "0.1.0",
        "hash_scheme": "cmvm-sha256-v1",
        "inputs": {"SOURCE_CID": cid_of_bytes(b"source").to_string()},
        "machines": [{"targets": [TRIPLE], "root_hash": root, "mcycle": 42, "exit_code": 0}],
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("machine.json"),
        serde_json::to_vec(&machine).unwrap(),
    )
    .unwrap();
}

#[test]
fn verify_proof_checks_the_bytes_against_the_attested_root_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let hello: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8 + 3).collect();
    let (root, proof_bytes) = machine_and_proof(&hello);
    println!(
        "state proof of a {} byte artifact: {} bytes",
        hello.len(),
        proof_bytes.len()
    );
    let build = t.join("build");
    write_build(&build, &hello, &root, &proof_bytes);
    let mut trusted = String::new();
    for name in ["a", "b"] {
        let key = t.join(format!("{name}.key"));
        let out = cmbuild(&["key", "generate", "--out", p(&key)]);
        assert!(out.status.success(), "{}", text(&out));
        trusted.push_str(&std::fs::read_to_string(t.join(format!("{name}.key.pub"))).unwrap());
        // attest reads a build directory with proofs/ in it.
        let out = cmbuild(&["attest", p(&build), "--key", p(&key)]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let trusted_file = t.join("trusted");
    std::fs::write(&trusted_file, trusted).unwrap();
    // compare ignores proofs/.
    let out = cmbuild(&["compare", p(&build), p(&build)]);
    assert!(out.status.success(), "{}", text(&out));

    let prove = |build: &Path, out: &Path| {
        let o = cmbuild(&[
            "prove",
            p(build),
            &format!("{TRIPLE}/hello"),
            "--out",
            p(out),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("with a state proof"), "{}", text(&o));
    };
    let verify = |proof: &Path, artifact: Option<&Path>| {
        let mut args = vec![
            "verify-proof",
            p(proof),
            "--trusted-keys",
            p(&trusted_file),
            "--threshold",
            "2",
        ];
        if let Some(a) = artifact {
            args.extend(["--artifact", p(a)]);
        }
        cmbuild(&args)
    };
    let proof = t.join("hello.proof.json");
    prove(&build, &proof);
    let bin = build.join(TRIPLE).join("hello");
    let out = verify(&proof, Some(&bin));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "state proof: the bytes lie on the output drive of machine/{TRIPLE}, state hash {root}"
        )),
        "{}",
        text(&out)
    );
    let out = verify(&proof, None);
    assert!(
        text(&out).contains("state proof: not checked"),
        "{}",
        text(&out)
    );

    // A tampered state proof (one sibling hash changed) in the build directory: the
    // attestations still pass, the proof does not.
    let mut value: serde_json::Value = serde_json::from_slice(&proof_bytes).unwrap();
    value["leafSiblings"][0] = serde_json::Value::String("22".repeat(32));
    std::fs::write(
        build.join("proofs").join(TRIPLE).join("hello.json"),
        serde_json::to_vec(&value).unwrap(),
    )
    .unwrap();
    let tampered = t.join("tampered.proof.json");
    prove(&build, &tampered);
    let out = verify(&tampered, Some(&bin));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("state proof FAILED"), "{}", text(&out));
    assert!(
        text(&out).trim_end().ends_with("Attestation check FAILED"),
        "{}",
        text(&out)
    );

    // A proof from a machine with another root hash than the attested one.
    let (_, other_proof) = machine_and_proof(&hello[..19_999]);
    std::fs::write(
        build.join("proofs").join(TRIPLE).join("hello.json"),
        &other_proof,
    )
    .unwrap();
    let other = t.join("other.proof.json");
    prove(&build, &other);
    let out = verify(&other, Some(&bin));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Garbage in proofs/ is an error for prove, not a panic.
    std::fs::write(
        build.join("proofs").join(TRIPLE).join("hello.json"),
        b"{\"type\":1",
    )
    .unwrap();
    let out = cmbuild(&["prove", p(&build), &format!("{TRIPLE}/hello")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
