//! Attestations end to end: statements of a build directory, k-of-n verification and its
//! refusals, and an independent check of the DSSE signature with Python's `cryptography`.

mod common;

use cmbuild_store::hex;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use cmbuild_trust::build::{read_build_dir, BuildError};
use cmbuild_trust::dsse::Envelope;
use cmbuild_trust::keys::SecretKey;
use cmbuild_trust::statement::{attest, claim_of_statement, statement, AttestOptions};
use cmbuild_trust::threshold::{evaluate, read_attestation_dir, ThresholdReport};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn opts(builder: &str) -> AttestOptions {
    AttestOptions {
        builder_id: builder.to_owned(),
        cmbuild_version: "0.1.0".to_owned(),
        timestamp: None,
    }
}

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

/// Writes `key`'s attestation of `build` into `out_dir/<name>.json`; returns its bytes.
fn attest_into(build: &Path, key: &SecretKey, out_dir: &Path, name: &str) -> Vec<u8> {
    let facts = read_build_dir(build).unwrap();
    let env = attest(
        &facts,
        &opts(&format!("https://builder.example/{name}")),
        key,
    )
    .unwrap();
    let bytes = env.to_file_bytes().unwrap();
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::write(out_dir.join(format!("{name}.json")), &bytes).unwrap();
    bytes
}

fn check(dir: &Path, trusted: &[&SecretKey], k: usize, build: Option<&Path>) -> ThresholdReport {
    let files = read_attestation_dir(dir).unwrap();
    let keys: Vec<_> = trusted.iter().map(|k| k.public()).collect();
    let claim = build.map(|b| read_build_dir(b).unwrap().claim());
    evaluate(&files, &keys, k, claim.as_ref()).unwrap()
}

#[test]
fn statement_has_the_in_toto_and_slsa_shape_and_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    common::write_build(&build, "a", "r");
    let facts = read_build_dir(&build).unwrap();
    let s = statement(&facts, &opts("https://builder.example/one"));
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(s["predicateType"], "https://slsa.dev/provenance/v1");
    let names: Vec<&str> = s["subject"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "riscv64gc-unknown-linux-gnu/hello",
            "x86_64-unknown-linux-gnu/hello"
        ]
    );
    let bin = std::fs::read(build.join("x86_64-unknown-linux-gnu/hello")).unwrap();
    assert_eq!(
        s["subject"][1]["digest"]["sha256"],
        hex::encode(Sha256::digest(&bin))
    );
    let def = &s["predicate"]["buildDefinition"];
    assert_eq!(def["externalParameters"]["commit"], "c0".repeat(20));
    assert_eq!(
        def["externalParameters"]["targets"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        def["externalParameters"]["pins"]["RUST_TOOLCHAIN__X86_64_UNKNOWN_LINUX_GNU"].is_string()
    );
    assert!(def["externalParameters"]["pins"]["GUEST_KERNEL_CID"].is_string());
    assert!(def.get("internalParameters").is_none());
    assert_eq!(
        def["externalParameters"]["machine"]["ram_length"],
        4_294_967_296_u64
    );
    let deps = def["resolvedDependencies"].as_array().unwrap();
    let source = deps.iter().find(|d| d["name"] == "SOURCE_CID").unwrap();
    // A raw-leaf CID gives the content's sha256; a dag-pb one gives only the URI.
    assert_eq!(
        source["digest"]["sha256"],
        hex::encode(Sha256::digest(b"source tar"))
    );
    let kernel = deps
        .iter()
        .find(|d| d["name"] == "GUEST_KERNEL_CID")
        .unwrap();
    assert!(kernel.get("digest").is_none());
    assert!(kernel["uri"].as_str().unwrap().starts_with("ipfs://bafy"));
    assert!(deps.iter().any(|d| d["name"] == "Cargo.lock"));
    let run = &s["predicate"]["runDetails"];
    assert_eq!(run["builder"]["id"], "https://builder.example/one");
    assert_eq!(run["byproducts"].as_array().unwrap().len(), 2);
    assert_eq!(run["byproducts"][0]["annotations"]["mcycle"], 123_456_789);
    assert!(run.get("metadata").is_none(), "no timestamp unless asked");
    // Same build, same key: byte-identical envelopes.
    let a = attest(&facts, &opts("b"), &key(1))
        .unwrap()
        .to_file_bytes()
        .unwrap();
    let b = attest(&read_build_dir(&build).unwrap(), &opts("b"), &key(1))
        .unwrap()
        .to_file_bytes()
        .unwrap();
    assert_eq!(a, b);
    // The payload is canonical JSON: no whitespace, and it reads back to the same claim.
    let env = Envelope::parse(&a).unwrap();
    let body = env.body().unwrap();
    assert!(!body.contains(&b' ') && !body.contains(&b'\n'));
    assert_eq!(claim_of_statement(&body).unwrap().0, facts.claim());
    // A timestamp only when asked.
    let mut with_ts = opts("b");
    with_ts.timestamp = Some("2026-01-01T00:00:00Z".into());
    assert_eq!(
        statement(&facts, &with_ts)["predicate"]["runDetails"]["metadata"]["finishedOn"],
        "2026-01-01T00:00:00Z"
    );
}

#[test]
fn build_directories_that_lie_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    common::write_build(&build, "a", "r");
    std::fs::write(build.join("x86_64-unknown-linux-gnu/hello"), b"swapped").unwrap();
    assert!(matches!(
        read_build_dir(&build),
        Err(BuildError::Mismatch { .. })
    ));
    #[cfg(unix)]
    {
        common::write_build(&build, "a", "r");
        let target = build.join("x86_64-unknown-linux-gnu/hello");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::rename(&target, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
        assert!(matches!(read_build_dir(&build), Err(BuildError::Io { .. })));
    }
    common::write_build(&build, "a", "r");
    let manifest = std::fs::read_to_string(build.join("manifest.json")).unwrap();
    std::fs::write(
        build.join("manifest.json"),
        manifest.replace(
            "\"x86_64-unknown-linux-gnu/hello\"",
            "\"../x86_64-unknown-linux-gnu/hello\"",
        ),
    )
    .unwrap();
    assert!(matches!(
        read_build_dir(&build),
        Err(BuildError::BadName(_))
    ));
}

#[test]
fn k_of_n_passes_with_k_agreeing_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    common::write_build(&build, "a", "r");
    let atts = tmp.path().join("atts");
    let (k1, k2, k3) = (key(1), key(2), key(3));
    attest_into(&build, &k1, &atts, "one");
    attest_into(&build, &k2, &atts, "two");
    let report = check(&atts, &[&k1, &k2, &k3], 2, None);
    assert!(report.passed, "{}", report.render());
    let report = check(&atts, &[&k1, &k2, &k3], 2, Some(&build));
    assert!(report.passed, "{}", report.render());
    assert!(report.render().ends_with("Attestation check PASSED\n"));
    // The same key twice counts once: K-1 distinct keys do not pass.
    attest_into(&build, &k1, &atts, "one-again");
    let report = check(&atts, &[&k1, &k2, &k3], 3, None);
    assert!(!report.passed);
    assert!(
        report.render().contains("2 of 3 required"),
        "{}",
        report.render()
    );
}

#[test]
fn a_tampered_statement_is_not_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    common::write_build(&build, "a", "r");
    let atts = tmp.path().join("atts");
    let (k1, k2) = (key(1), key(2));
    attest_into(&build, &k1, &atts, "one");
    let bytes = attest_into(&build, &k2, &atts, "two");
    // Swap an artifact digest inside the signed payload, keep the signature.
    let mut env = Envelope::parse(&bytes).unwrap();
    let body = String::from_utf8(env.body().unwrap()).unwrap();
    let bin = std::fs::read(build.join("x86_64-unknown-linux-gnu/hello")).unwrap();
    let tampered = body.replace(&hex::encode(Sha256::digest(&bin)), &"00".repeat(32));
    assert_ne!(tampered, body);
    env.payload = base64::engine::general_purpose::STANDARD.encode(tampered);
    std::fs::write(atts.join("two.json"), env.to_file_bytes().unwrap()).unwrap();
    let report = check(&atts, &[&k1, &k2], 2, None);
    assert!(!report.passed);
    let text = report.render();
    assert!(text.contains("does not verify"), "{text}");
    assert!(text.contains(&k2.public().keyid()), "{text}");
    assert!(text.ends_with("Attestation check FAILED\n"));
}

#[test]
fn an_untrusted_key_is_not_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    common::write_build(&build, "a", "r");
    let atts = tmp.path().join("atts");
    let (k1, k2, stranger) = (key(1), key(2), key(9));
    attest_into(&build, &k1, &atts, "one");
    attest_into(&build, &stranger, &atts, "stranger");
    let report = check(&atts, &[&k1, &k2], 2, None);
    assert!(!report.passed);
    assert_eq!(report.reference.as_ref().unwrap().keyids.len(), 1);
    assert!(report.render().contains(&stranger.public().keyid()));
}

#[test]
fn k_minus_one_signatures_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    common::write_build(&build, "a", "r");
    let atts = tmp.path().join("atts");
    let keys: Vec<SecretKey> = (1..=4).map(key).collect();
    for (i, k) in keys.iter().take(2).enumerate() {
        attest_into(&build, k, &atts, &format!("k{i}"));
    }
    let refs: Vec<&SecretKey> = keys.iter().collect();
    assert!(!check(&atts, &refs, 3, Some(&build)).passed);
    assert!(check(&atts, &refs, 2, Some(&build)).passed);
}

#[test]
fn disagreement_names_the_key_and_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let evil = tmp.path().join("evil");
    common::write_build(&good, "a", "r");
    common::write_build(&evil, "backdoor", "r2");
    let atts = tmp.path().join("atts");
    let (k1, k2, k3) = (key(1), key(2), key(3));
    attest_into(&good, &k1, &atts, "one");
    attest_into(&good, &k2, &atts, "two");
    attest_into(&evil, &k3, &atts, "three");
    let report = check(&atts, &[&k1, &k2, &k3], 2, None);
    assert!(report.passed, "two of three agree: {}", report.render());
    let text = report.render();
    assert!(
        text.contains(&format!("disagrees: key(s) {}", &k3.public().keyid()[..16])),
        "{text}"
    );
    assert!(
        text.contains("artifact x86_64-unknown-linux-gnu/hello:"),
        "{text}"
    );
    assert!(
        text.contains("root hash of machine/x86_64-unknown-linux-gnu:"),
        "{text}"
    );
    // Against the evil build directory, only one key agrees.
    let report = check(&atts, &[&k1, &k2, &k3], 2, Some(&evil));
    assert!(!report.passed);
    // Three of three required: fails.
    assert!(!check(&atts, &[&k1, &k2, &k3], 3, None).passed);
    // A key that signs both claims counts for neither.
    attest_into(&evil, &k1, &atts, "one-evil");
    let report = check(&atts, &[&k1, &k2, &k3], 2, Some(&good));
    assert!(!report.passed);
    assert!(report.equivocators.contains(&k1.public().keyid()));
    assert!(report.render().contains("equivocates"));
}

#[test]
fn impossible_thresholds_are_errors() {
    let keys = [key(1).public()];
    assert!(evaluate(&[], &keys, 0, None).is_err());
    assert!(evaluate(&[], &keys, 2, None).is_err());
    let report = evaluate(&[("x.json".into(), b"{not json".to_vec())], &keys, 1, None).unwrap();
    assert!(!report.passed);
    assert_eq!(report.problems.len(), 1);
}

/// The DSSE signature checked by an independent implementation: Python's `cryptography`,
/// with the pre-authentication encoding written here in Python.
#[test]
fn python_cryptography_verifies_the_dsse_signature() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import cryptography.hazmat.primitives.asymmetric.ed25519",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!(
                "SKIPPED python_cryptography_verifies_the_dsse_signature: python3 with the \
                 `cryptography` package is not available (python3 -m pip install cryptography)"
            );
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    common::write_build(&build, "a", "r");
    let k = key(5);
    let bytes = attest_into(&build, &k, tmp.path(), "att");
    let script = r#"
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.exceptions import InvalidSignature
env = json.load(open(sys.argv[1]))
pub = bytes.fromhex(sys.argv[2])
body = base64.b64decode(env["payload"], validate=True)
ptype = env["payloadType"].encode()
pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(body), body)
assert env["payloadType"] == "application/vnd.in-toto+json"
[sig] = env["signatures"]
assert sig["keyid"] == hashlib.sha256(pub).hexdigest(), "keyid"
stmt = json.loads(body)
assert stmt["_type"] == "https://in-toto.io/Statement/v1"
assert body == json.dumps(stmt, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(), "canonical"
try:
    Ed25519PublicKey.from_public_bytes(pub).verify(base64.b64decode(sig["sig"]), pae)
except InvalidSignature:
    print("BAD SIGNATURE"); sys.exit(1)
print("OK")
"#;
    let script_path = tmp.path().join("check.py");
    std::fs::write(&script_path, script).unwrap();
    let run = |file: &Path| {
        Command::new("python3")
            .arg(&script_path)
            .arg(file)
            .arg(k.public().to_hex())
            .output()
            .unwrap()
    };
    let out = run(&tmp.path().join("att.json"));
    assert!(
        out.status.success(),
        "python: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    // And Python refuses a tampered payload: the check can fail.
    let mut env: Value = serde_json::from_slice(&bytes).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    let tampered = String::from_utf8(body).unwrap().replace("v0.1.0", "v6.6.6");
    env["payload"] = Value::String(base64::engine::general_purpose::STANDARD.encode(tampered));
    std::fs::write(
        tmp.path().join("bad.json"),
        serde_json::to_vec(&env).unwrap(),
    )
    .unwrap();
    let out = run(&tmp.path().join("bad.json"));
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "BAD SIGNATURE");
}

/// Writes a build like `common::write_build` but of another commit.
fn write_build_of_commit(dir: &Path, commit: &str) {
    common::write_build(dir, "a", "r");
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        manifest.replace(&"c0".repeat(20), commit),
    )
    .unwrap();
}

#[test]
fn attestations_of_other_releases_are_ignored_not_rivals() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("v1");
    let v2 = tmp.path().join("v2");
    common::write_build(&v1, "a", "r");
    write_build_of_commit(&v2, &"d1".repeat(20));
    let atts = tmp.path().join("atts");
    let (k1, k2, k3) = (key(1), key(2), key(3));
    for (k, n) in [(&k1, "1"), (&k2, "2"), (&k3, "3")] {
        attest_into(&v1, k, &atts, &format!("v1-{n}"));
    }
    attest_into(&v2, &k1, &atts, "v2-1");
    attest_into(&v2, &k2, &atts, "v2-2");
    // Each release passes against its own build directory; the other is listed as ignored.
    let report = check(&atts, &[&k1, &k2, &k3], 2, Some(&v1));
    assert!(report.passed, "{}", report.render());
    assert_eq!(report.reference.as_ref().unwrap().keyids.len(), 3);
    assert!(report.equivocators.is_empty());
    assert!(report.render().contains("ignored:"), "{}", report.render());
    let report = check(&atts, &[&k1, &k2, &k3], 2, Some(&v2));
    assert!(report.passed, "{}", report.render());
    assert!(!check(&atts, &[&k1, &k2, &k3], 3, Some(&v2)).passed);
}

#[test]
fn artifact_proofs_verify_offline_and_refuse_what_they_do_not_prove() {
    use cmbuild_trust::artifact::{prove, ArtifactProof, ArtifactProofError};
    use cmbuild_trust::tlog::Log;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let evil = tmp.path().join("evil");
    common::write_build(&good, "a", "r");
    common::write_build(&evil, "backdoor", "r");
    let atts = tmp.path().join("atts");
    let (k1, k2, k3, logkey) = (key(1), key(2), key(3), key(4));
    let a1 = attest_into(&good, &k1, &atts, "one");
    let a2 = attest_into(&good, &k2, &atts, "two");
    attest_into(&good, &k3, &atts, "three");
    attest_into(&evil, &k3, &tmp.path().join("evil-atts"), "three-evil");
    let mut log = Log::open_or_create(&tmp.path().join("log"), &logkey).unwrap();
    log.append(&logkey, &[a1, a2]).unwrap();
    drop(log);
    let log = Log::open(&tmp.path().join("log")).unwrap();
    let name = "x86_64-unknown-linux-gnu/hello";
    let proof = prove(&good, name, &atts, Some(&log)).unwrap();
    assert_eq!(proof.attestations.len(), 3);
    assert_eq!(
        proof
            .attestations
            .iter()
            .filter(|a| a.inclusion.is_some())
            .count(),
        2
    );
    // Through the file format.
    let path = tmp.path().join("hello.proof.json");
    std::fs::write(&path, proof.to_file_bytes().unwrap()).unwrap();
    let proof = ArtifactProof::read(&path).unwrap();
    let bin = std::fs::read(good.join(name)).unwrap();
    let trusted = [k1.public(), k2.public(), k3.public()];
    let lk = logkey.public();
    assert!(proof.verify(Some(&bin), &trusted, 3, None).unwrap().passed);
    let v = proof.verify(Some(&bin), &trusted, 2, Some(&lk)).unwrap();
    assert!(v.passed, "{}", v.report.render());
    // With the log required, the unlogged attestation is left out: 2 of 3 is not 3.
    let v = proof.verify(Some(&bin), &trusted, 3, Some(&lk)).unwrap();
    assert!(!v.passed);
    assert_eq!(v.excluded.len(), 1);
    // Another binary is not the one proven.
    let evil_bin = std::fs::read(evil.join(name)).unwrap();
    assert!(matches!(
        proof.verify(Some(&evil_bin), &trusted, 2, None),
        Err(ArtifactProofError::WrongArtifact { .. })
    ));
    // Renaming the proof to the evil digest: the attested build does not list it.
    let mut forged = proof.clone();
    forged.artifact.sha256 = hex::encode(Sha256::digest(&evil_bin));
    let v = forged.verify(Some(&evil_bin), &trusted, 2, None).unwrap();
    assert!(!v.passed);
    // An artifact that no attestation names has no proof.
    assert!(matches!(
        prove(&evil, name, &atts, None),
        Err(ArtifactProofError::Unattested { .. })
    ));
    assert!(matches!(
        prove(&good, "x86_64-unknown-linux-gnu/nope", &atts, None),
        Err(ArtifactProofError::NoArtifact(_))
    ));
}
