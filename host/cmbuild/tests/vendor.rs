//! `cmbuild vendor` end to end: vendor the repository's example project (four crates.io
//! dependencies) into a fresh mirror, build it with cargo offline from an empty CARGO_HOME,
//! and the error paths (no lock, malformed lock, doctored checksum, git and outside path
//! dependencies, network failure), each leaving nothing partial in the mirror.
//!
//! Needs https://static.crates.io (the four `.crate` files, about 75 KiB).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CMBUILD: &str = env!("CARGO_BIN_EXE_cmbuild");

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello")
}

/// A copy of examples/hello (sources, manifest, lock) in `dir`, so that nothing is written
/// into the repository.
fn copy_example(dir: &Path) -> PathBuf {
    let project = dir.join("hello");
    fs::create_dir_all(project.join("src")).unwrap();
    for file in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        fs::copy(example().join(file), project.join(file)).unwrap();
    }
    project
}

fn vendor(project: &Path, mirror: &Path, extra: &[&str]) -> Output {
    Command::new(CMBUILD)
        .arg("vendor")
        .arg("--crates-only")
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .arg("--mirror")
        .arg(mirror)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every file under the mirror's blobs/ (temporary files included).
fn blob_names(mirror: &Path) -> Vec<String> {
    let Ok(listing) = fs::read_dir(mirror.join("blobs")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = listing
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn index_keys(mirror: &Path) -> Vec<String> {
    let Ok(text) = fs::read(mirror.join("index.json")) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
    json["entries"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn vendored_example_builds_offline_from_an_empty_cargo_home() {
    let tmp = tempfile::tempdir().unwrap();
    let project = copy_example(tmp.path());
    let mirror = tmp.path().join("mirror");
    let config = tmp.path().join("offline.toml");

    let first = vendor(
        &project,
        &mirror,
        &["--cargo-config", config.to_str().unwrap()],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("4 downloaded"),
        "{}",
        stderr(&first)
    );
    assert_eq!(
        index_keys(&mirror),
        [
            "crate/fnv/1.0.7",
            "crate/hex/0.4.3",
            "crate/itoa/1.0.18",
            "crate/smallvec/1.16.5"
        ]
    );
    assert_eq!(blob_names(&mirror).len(), 4);
    assert!(config
        .with_extension("crates")
        .join("itoa-1.0.18/.cargo-checksum.json")
        .is_file());

    // Offline, locked, with a CARGO_HOME that holds nothing: only the mirror can serve.
    let home = tmp.path().join("empty-cargo-home");
    fs::create_dir(&home).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(cargo)
        .current_dir(&project)
        .env("CARGO_HOME", &home)
        .env("CARGO_TARGET_DIR", tmp.path().join("target"))
        .args(["build", "--offline", "--locked", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", stderr(&build));
    let run = Command::new(tmp.path().join("target/debug/hello"))
        .args(["b", "a", "b"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        "hello from cmbuild (2 distinct words)\n61 a 1\n62 b 2\n"
    );

    // Again: nothing is downloaded.
    let second = vendor(
        &project,
        &mirror,
        &["--cargo-config", config.to_str().unwrap()],
    );
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("crates: 0 downloaded (0 B), 4 already there"),
        "{}",
        stderr(&second)
    );

    // A tampered blob: `mirror verify` names it and exits 1; vendor replaces it.
    let victim = blob_names(&mirror)[0].clone();
    fs::write(mirror.join("blobs").join(&victim), b"tampered").unwrap();
    let verify = Command::new(CMBUILD)
        .args(["mirror", "verify", "--mirror"])
        .arg(&mirror)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1));
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(report.contains(&victim), "{report}");
    assert!(report.contains("3 blobs verified, 1 problems"), "{report}");

    let repair = vendor(&project, &mirror, &[]);
    assert!(
        stderr(&repair).contains("1 downloaded"),
        "{}",
        stderr(&repair)
    );
    let verify = Command::new(CMBUILD)
        .args(["mirror", "verify", "--mirror"])
        .arg(&mirror)
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn missing_lock_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let project = copy_example(tmp.path());
    fs::remove_file(project.join("Cargo.lock")).unwrap();
    let mirror = tmp.path().join("mirror");
    let out = vendor(&project, &mirror, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no Cargo.lock at"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("cargo generate-lockfile"),
        "{}",
        stderr(&out)
    );
    assert!(blob_names(&mirror).is_empty());
}

#[test]
fn a_package_name_that_is_a_path_is_refused_and_the_index_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let project = copy_example(tmp.path());
    let lock = fs::read_to_string(project.join("Cargo.lock")).unwrap();
    let evil = format!(
        "{lock}\n[[package]]\nname = \"evil/x\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"{}\"\n",
        "ab".repeat(32)
    );
    fs::write(project.join("Cargo.lock"), evil).unwrap();
    let mirror = tmp.path().join("mirror");
    let out = vendor(&project, &mirror, &[]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"evil/x\" is not a crate name"),
        "{}",
        stderr(&out)
    );
    assert!(blob_names(&mirror).is_empty());
    // Nothing was recorded, and what is there loads.
    assert!(index_keys(&mirror).iter().all(|k| !k.contains("evil")));
    cmbuild_store::mirror::Mirror::open(&mirror)
        .unwrap()
        .load_index()
        .unwrap();
}

#[test]
fn malformed_lock_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let project = copy_example(tmp.path());
    fs::write(
        project.join("Cargo.lock"),
        "version = 4\n[[package]\nname = \"x\"\n",
    )
    .unwrap();
    let mirror = tmp.path().join("mirror");
    let out = vendor(&project, &mirror, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a valid Cargo.lock"),
        "{}",
        stderr(&out)
    );
    assert!(blob_names(&mirror).is_empty());
}

#[test]
fn doctored_checksum_stores_nothing_for_that_crate() {
    let tmp = tempfile::tempdir().unwrap();
    let project = copy_example(tmp.path());
    let real = "8f42a60cbdf9a97f5d2305f08a87dc4e09308d1276d28c869c684d7777685682";
    let fake = "0000000000000000000000000000000000000000000000000000000000000000";
    let lock = fs::read_to_string(project.join("Cargo.lock")).unwrap();
    assert!(lock.contains(real), "examples/hello pins itoa 1.0.18");
    fs::write(project.join("Cargo.lock"), lock.replace(real, fake)).unwrap();
    let mirror = tmp.path().join("mirror");
    let out = vendor(&project, &mirror, &[]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("crate/itoa/1.0.18"), "{text}");
    assert!(
        text.contains(&format!("expected {fake}, got {real}")),
        "{text}"
    );
    assert!(!index_keys(&mirror).contains(&"crate/itoa/1.0.18".to_owned()));
    // Only whole, verified blobs of other crates; no temporary file, nothing for itoa.
    let names = blob_names(&mirror);
    assert!(names.iter().all(|n| n.starts_with("bafk")), "{names:?}");
    assert_eq!(names.len(), index_keys(&mirror).len());
}

#[test]
fn git_and_outside_path_dependencies_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("app");
    fs::create_dir_all(project.join("src")).unwrap();
    fs::create_dir_all(tmp.path().join("outside/src")).unwrap();
    fs::write(project.join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(tmp.path().join("outside/src/lib.rs"), "").unwrap();
    fs::write(
        tmp.path().join("outside/Cargo.toml"),
        "[package]\nname = \"outside\"\nversion = \"0.3.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    fs::write(
        project.join("Cargo.toml"),
        r#"[package]
name = "app"
version = "0.1.0"
edition = "2021"

[dependencies]
foo = { git = "https://example.invalid/foo.git", rev = "0123456789abcdef0123456789abcdef01234567" }
outside = { path = "../outside" }
"#,
    )
    .unwrap();
    fs::write(
        project.join("Cargo.lock"),
        r#"version = 4

[[package]]
name = "app"
version = "0.1.0"
dependencies = ["foo", "outside"]

[[package]]
name = "foo"
version = "0.2.0"
source = "git+https://example.invalid/foo.git?rev=0123456789abcdef0123456789abcdef01234567#0123456789abcdef0123456789abcdef01234567"

[[package]]
name = "outside"
version = "0.3.0"
"#,
    )
    .unwrap();
    let mirror = tmp.path().join("mirror");
    let out = vendor(&project, &mirror, &[]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("foo 0.2.0 (git dependency git+https://example.invalid/foo.git"),
        "{text}"
    );
    assert!(
        text.contains("outside 0.3.0 (a path dependency outside the workspace)"),
        "{text}"
    );
    assert!(
        !text.contains("app 0.1.0"),
        "the project itself is fine: {text}"
    );
    assert!(blob_names(&mirror).is_empty());
}

#[test]
fn network_failure_is_reported_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let project = copy_example(tmp.path());
    let mirror = tmp.path().join("mirror");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(CMBUILD)
        .env(
            "CMBUILD_CRATES_URL",
            format!("http://127.0.0.1:{port}/crates"),
        )
        .arg("vendor")
        .arg("--crates-only")
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .arg("--mirror")
        .arg(&mirror)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("downloading crate/fnv/1.0.7"), "{text}");
    assert!(text.contains("cannot reach"), "{text}");
    assert!(blob_names(&mirror).is_empty());
    assert!(index_keys(&mirror).is_empty());
}
