//! `cmbuild key`, `attest`, `verify-attestations` and `log` end to end through the binary.

use std::path::Path;
use std::process::{Command, Output};

use cmbuild_store::cid::cid_of_bytes;
use cmbuild_store::sha256::Sha256;

fn cmbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A build directory as `cmbuild run` writes it (one triple).
fn write_build(dir: &Path, content: &[u8]) {
    let triple = "x86_64-unknown-linux-gnu";
    std::fs::create_dir_all(dir.join(triple)).unwrap();
    std::fs::write(dir.join(triple).join("hello"), content).unwrap();
    let manifest = serde_json::json!({
        "schema": "cmbuild-manifest-v1", "release": "v1", "commit": "ab".repeat(20),
        "artifacts": [{
            "package": "hello", "target": triple, "bin": "hello",
            "bin_path": format!("{triple}/hello"), "crate": "hello", "version": "0.1.0",
            "crate_lock_sha256": "00".repeat(32),
            "toolchain": cid_of_bytes(b"toolchain").to_string(),
            "sha256": Sha256::of(content).to_string(), "cid": cid_of_bytes(content).to_string(),
        }],
    });
    let machine = serde_json::json!({
        "schema": "cmbuild-machine-v1", "emulator_version": "0.1.0",
        "hash_scheme": "cmvm-sha256-v1",
        "inputs": {"SOURCE_CID": cid_of_bytes(b"source").to_string()},
        "machines": [{"targets": [triple], "root_hash": format!("cmvm-sha256-v1:{}", "11".repeat(32)),
                      "mcycle": 42, "exit_code": 0}],
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
fn keys_attestations_threshold_and_log() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let build = t.join("build");
    write_build(&build, b"hello binary");
    let atts = t.join("atts");
    std::fs::create_dir(&atts).unwrap();
    let mut trusted = String::new();
    for name in ["a", "b", "c", "log"] {
        let key = t.join(format!("{name}.key"));
        let out = ok(&cmbuild(&["key", "generate", "--out", p(&key)]));
        assert!(out.contains("keyid"));
        if name != "log" {
            trusted.push_str(&std::fs::read_to_string(t.join(format!("{name}.key.pub"))).unwrap());
        }
    }
    // Never overwritten.
    assert_eq!(
        cmbuild(&["key", "generate", "--out", p(&t.join("a.key"))])
            .status
            .code(),
        Some(2)
    );
    let trusted_file = t.join("trusted");
    std::fs::write(&trusted_file, trusted).unwrap();
    for name in ["a", "b"] {
        let out = atts.join(format!("{name}.json"));
        ok(&cmbuild(&[
            "attest",
            p(&build),
            "--key",
            p(&t.join(format!("{name}.key"))),
            "--out",
            p(&out),
        ]));
    }
    let verify = |k: &str, build: Option<&Path>| {
        let mut args = vec![
            "verify-attestations",
            "--attestations",
            p(&atts),
            "--trusted-keys",
            p(&trusted_file),
            "--threshold",
            k,
        ];
        if let Some(b) = build {
            args.push(p(b));
        }
        cmbuild(&args)
    };
    assert!(ok(&verify("2", Some(&build))).contains("Attestation check PASSED"));
    let out = verify("3", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Attestation check FAILED"));
    // A different build directory is not what they attested.
    let other = t.join("other");
    write_build(&other, b"another binary");
    let out = verify("2", Some(&other));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("x86_64-unknown-linux-gnu/hello"));

    // Attestations shipped inside the build directory (the default place) are found there.
    ok(&cmbuild(&[
        "attest",
        p(&build),
        "--key",
        p(&t.join("c.key")),
    ]));
    let out = ok(&cmbuild(&[
        "verify-attestations",
        "--trusted-keys",
        p(&trusted_file),
        "--threshold",
        "1",
        p(&build),
    ]));
    assert!(out.contains("1 of 1 required"), "{out}");
    assert!(!out.contains("not counted"), "{out}");

    // The transparency log.
    let log = t.join("log");
    let log_key = t.join("log.key");
    ok(&cmbuild(&[
        "log",
        "append",
        "--log",
        p(&log),
        "--key",
        p(&log_key),
        p(&atts.join("a.json")),
    ]));
    let head1 = t.join("head1.json");
    std::fs::write(&head1, ok(&cmbuild(&["log", "head", "--log", p(&log)]))).unwrap();
    ok(&cmbuild(&[
        "log",
        "append",
        "--log",
        p(&log),
        "--key",
        p(&log_key),
        p(&atts.join("b.json")),
    ]));
    let proof = t.join("incl.json");
    ok(&cmbuild(&[
        "log",
        "prove",
        "--log",
        p(&log),
        "--attestation",
        p(&atts.join("a.json")),
        "--out",
        p(&proof),
    ]));
    let pubkey = t.join("log.key.pub");
    let out = ok(&cmbuild(&[
        "log",
        "verify",
        "--log-key",
        p(&pubkey),
        "--inclusion",
        p(&proof),
        "--attestation",
        p(&atts.join("a.json")),
    ]));
    assert!(out.contains("Log check PASSED"));
    // The proof does not prove another attestation.
    let out = cmbuild(&[
        "log",
        "verify",
        "--log-key",
        p(&pubkey),
        "--inclusion",
        p(&proof),
        "--attestation",
        p(&atts.join("b.json")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let cons = t.join("cons.json");
    ok(&cmbuild(&[
        "log",
        "prove",
        "--log",
        p(&log),
        "--from-size",
        "1",
        "--out",
        p(&cons),
    ]));
    ok(&cmbuild(&[
        "log",
        "verify",
        "--log-key",
        p(&pubkey),
        "--consistency",
        p(&cons),
        "--old-head",
        p(&head1),
    ]));
    ok(&cmbuild(&["log", "verify", "--log", p(&log)]));
    // Another key is not the log's key.
    let out = cmbuild(&[
        "log",
        "verify",
        "--log-key",
        p(&t.join("a.key.pub")),
        "--consistency",
        p(&cons),
    ]);
    assert_eq!(out.status.code(), Some(1));

    // An artifact proof: the binary, its attestations and their log proofs, checked offline.
    let hello_proof = t.join("hello.proof.json");
    ok(&cmbuild(&[
        "prove",
        p(&build),
        "x86_64-unknown-linux-gnu/hello",
        "--attestations",
        p(&atts),
        "--log",
        p(&log),
        "--out",
        p(&hello_proof),
    ]));
    let bin = build.join("x86_64-unknown-linux-gnu/hello");
    let verify_proof = |k: &str, artifact: &Path| {
        cmbuild(&[
            "verify-proof",
            p(&hello_proof),
            "--artifact",
            p(artifact),
            "--trusted-keys",
            p(&trusted_file),
            "--threshold",
            k,
            "--log-key",
            p(&pubkey),
        ])
    };
    assert!(ok(&verify_proof("2", &bin)).contains("Attestation check PASSED"));
    assert_eq!(verify_proof("3", &bin).status.code(), Some(1));
    // Another binary: refused.
    let out = verify_proof("2", &other.join("x86_64-unknown-linux-gnu/hello"));
    assert_ne!(out.status.code(), Some(0));
}
