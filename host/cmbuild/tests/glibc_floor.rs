//! The glibc floor (`glibc = "2.36"` in `cmbuild.toml`, `cmbuild::floor`).
//!
//! A floor that is not pinned is refused, listing the pinned ones, before anything is read
//! from the mirror (by `run`) or downloaded (by `vendor`); a pinned one goes on to the
//! mirror.
//!
//! `#[ignore]`d (heavy: the pinned packages and crates are fetched once into
//! `$CMBUILD_CACHE`, and each build runs billions of guest instructions): `examples/glibc-floor`
//! (C through the `cc` crate with `_GNU_SOURCE` and `strtol`, and std's process spawning,
//! which reaches for glibc 2.39's `pidfd_spawnp`) built under the 2.36 floor for x86_64,
//! aarch64 and riscv64 in one build machine, its rustc jobs offloaded (each triple's
//! binary linked in a sibling machine against the floor's sysroot), then again with
//! `--no-offload`: the same artifacts' bytes. Every artifact needs at most `GLIBC_2.36` (read
//! from its ELF), records the floor in `manifest.json`, and prints `parse(0b101)=0`: its C
//! was compiled against glibc 2.36's headers (2.38's would have made `strtol` C23's
//! `__isoc23_strtol`, which reads `0b101` as 5). The x86_64 artifact runs on the host; the
//! others run under `qemu-<arch>` (when installed) with nothing but the floor's own C
//! runtime, glibc 2.36, as their root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cmbuild::glibc::{inspect, GlibcVersion, Linkage};
use cmbuild::manifest::{read_machine_record, read_manifest};
use cmbuild_image::sysroot::{build_sysroot, SysrootNode};
use cmbuild_store::mirror::Mirror;
use common::{cache_dir, copy_tree, git, repo_root, s};

/// A committed project: a package with no dependencies and `cmbuild_toml`.
fn project(root: &Path, cmbuild_toml: &str) -> PathBuf {
    common::tiny_project(&root.join("p"), "", &[("cmbuild.toml", cmbuild_toml)])
}

/// Runs cmbuild; returns (exit code, stderr).
fn cmbuild(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .env("CMBUILD_CRATES_URL", "http://127.0.0.1:9/never")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unpinned_floor_is_refused_before_anything_is_read() {
    let root = tempfile::tempdir().unwrap();
    let mirror = root.path().join("mirror");
    let out = root.path().join("builds");
    let run = |dir: &Path| cmbuild(&common::run_release("v0.1.0", dir, &mirror, &out));
    let dir = project(root.path(), "glibc = \"2.35\"\n");
    let (code, stderr) = run(&dir);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "cmbuild.toml asks for glibc floor 2.35, which this cmbuild does not pin; the \
             pinned floors are: 2.36 (Debian 12."
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("checking inputs in the mirror"),
        "{stderr}"
    );
    // `vendor` refuses it too, before any download.
    let (code, stderr) = cmbuild(&[
        "vendor",
        "--manifest-path",
        s(&dir.join("Cargo.toml")),
        "--mirror",
        s(&mirror),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the pinned floors are: 2.36"), "{stderr}");
    assert!(!stderr.contains("downloaded"), "{stderr}");

    // Not a version at all: refused as such.
    std::fs::remove_dir_all(root.path().join("p")).unwrap();
    let dir = project(root.path(), "glibc = \"bookworm\"\n");
    let (code, stderr) = run(&dir);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("glibc = \"bookworm\" is not a glibc version like \"2.36\""),
        "{stderr}"
    );

    // A pinned floor passes selection and the run goes on to the (empty) mirror, offloaded
    // as any other project (`--offload` says so explicitly).
    std::fs::remove_dir_all(root.path().join("p")).unwrap();
    let dir = project(root.path(), "glibc = \"2.36\"\n");
    let (code, stderr) = run(&dir);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("checking inputs in the mirror"), "{stderr}");
    assert!(!stderr.contains("builds in one machine"), "{stderr}");
    let mut args = common::run_release("v0.1.0", &dir, &mirror, &out);
    args.push("--offload");
    let (code, stderr) = cmbuild(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("checking inputs in the mirror"), "{stderr}");
}

/// Writes the floor's sysroot of `triple` (from the mirror's pinned packages) under `dir`.
fn unpack_sysroot(mirror: &Path, triple: &str, dir: &Path) {
    let floor = cmbuild::floor::select(Some("2.36"), &cmbuild::floor::shipped().unwrap())
        .unwrap()
        .unwrap();
    let mirror = Mirror::open(mirror).unwrap();
    let spec = triple
        .parse::<cmbuild_image::triple::Triple>()
        .unwrap()
        .spec();
    let sysroot = build_sysroot(&floor.lock, spec, |p| Ok(mirror.read_verified(&p.cid)?)).unwrap();
    for (path, node) in &sysroot.nodes {
        let at = dir.join(path);
        match node {
            SysrootNode::Dir => std::fs::create_dir_all(&at).unwrap(),
            SysrootNode::File { data, executable } => {
                std::fs::write(&at, &data[..]).unwrap();
                let mode = if *executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .unwrap();
            }
            SysrootNode::Symlink(target) => std::os::unix::fs::symlink(target, &at).unwrap(),
        }
    }
}

const EXPECTED: &str = "parse(0b101)=0 child=Ok(Some(3))";

#[test]
#[ignore = "heavy: pinned packages, crates.io downloads, billions of guest instructions"]
fn artifacts_built_under_the_floor_start_on_glibc_2_36() {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("glibc-floor");
    copy_tree(&repo_root().join("examples/glibc-floor"), &project);
    std::fs::write(
        project.join("cmbuild.toml"),
        "glibc = \"2.36\"\ntargets = [\"x86_64-unknown-linux-gnu\", \
         \"aarch64-unknown-linux-gnu\", \"riscv64gc-unknown-linux-gnu\"]\n",
    )
    .unwrap();
    git(&project, &["init", "-q"]);
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-q", "-m", "v0.1.0"]);
    git(&project, &["tag", "v0.1.0"]);
    let mirror = cache_dir().join("image-test-mirror");
    let out = work.path().join("builds");
    eprintln!("$ cmbuild vendor (the crates and the floor's packages)");
    let (code, stderr) = cmbuild_online(&[
        "vendor",
        "--manifest-path",
        s(&project.join("Cargo.toml")),
        "--mirror",
        s(&mirror),
    ]);
    if code != 0 {
        eprintln!(
            "SKIPPED LOUDLY: `cmbuild vendor` could not fetch every input (crates.io or a \
             Debian package that left the archive: re-lock with `cmbuild image lock`):\n{stderr}"
        );
        return;
    }
    assert!(
        stderr.contains("glibc floor 2.36: 24 Debian bookworm packages"),
        "{stderr}"
    );
    // Vendoring made the floor's sysroots' image (or found it) under its pinned CID.
    let pinned = cmbuild::floor::shipped().unwrap().images["2.36"];
    assert!(
        stderr.contains(&format!("glibc floor 2.36: sysroots image {pinned} (")),
        "{stderr}"
    );
    // Offloaded (the default), every job computed in a sibling whatever the test mirror's
    // cache holds.
    let run = release_command(&project, &mirror, &out, "--recompute-jobs")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(run.status.success(), "{stdout}");
    // The run mapped the image vendoring kept, and made none.
    let image_line = stderr
        .lines()
        .find(|l| l.contains(&format!("sysroots image {pinned} (")))
        .unwrap_or_default();
    assert!(image_line.contains(", from the mirror in "), "{stderr}");
    // Each triple's binary was linked in a sibling (a job of its own per triple).
    let linked = stderr
        .lines()
        .filter(|l| l.contains("offload: glibc_floor: "))
        .count();
    assert!(linked >= 3, "{linked} binary jobs computed in siblings");
    assert!(
        !stderr.contains("the build machine compiles it itself"),
        "a sibling failed"
    );
    let release = out.join("v0.1.0");

    let manifest = read_manifest(&release.join("manifest.json")).unwrap();
    assert_eq!(manifest.artifacts.len(), 3);
    let floor = GlibcVersion(2, 36, 0);
    for artifact in &manifest.artifacts {
        assert_eq!(
            artifact.glibc_floor.as_deref(),
            Some("2.36"),
            "{}",
            artifact.target
        );
        let bytes = std::fs::read(release.join(&artifact.bin_path)).unwrap();
        let needs = inspect(&bytes).unwrap();
        assert_eq!(needs.linkage, Linkage::Dynamic);
        let (symbol, version) = needs.glibc.unwrap();
        assert!(version <= floor, "{}: needs {symbol}", artifact.target);
        assert_eq!(
            artifact.abi.as_ref().unwrap().glibc_min.as_deref(),
            Some(version.to_string().as_str())
        );
    }
    let machine = read_machine_record(&release.join("machine.json")).unwrap();
    assert_eq!(machine.inputs.get(cmbuild::floor::INPUT_KEY), Some(&pinned));
    assert!(machine.offload.is_some());
    assert!(machine.machines.iter().all(|m| m.jobs.len() >= 3));

    // Not offloaded: each triple's binary linked in the build machine itself, and the same
    // bytes.
    let alone = work.path().join("alone");
    let run = release_command(&project, &mirror, &alone, "--no-offload")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let by_itself = read_manifest(&alone.join("v0.1.0/manifest.json")).unwrap();
    let digests = |m: &cmbuild::manifest::Manifest| -> Vec<(String, String)> {
        m.artifacts
            .iter()
            .map(|a| (a.target.clone(), a.sha256.to_string()))
            .collect()
    };
    assert_eq!(digests(&manifest), digests(&by_itself));
    let machine_alone = read_machine_record(&alone.join("v0.1.0/machine.json")).unwrap();
    assert!(machine_alone.offload.is_none());

    // x86_64: on this host (a glibc of 2.36 or newer runs it).
    let ran = Command::new(release.join("x86_64-unknown-linux-gnu/glibc-floor"))
        .output()
        .unwrap();
    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), EXPECTED);

    // The others: under qemu-user, with the floor's own glibc 2.36 as their only C runtime.
    for (triple, gnu, qemu) in [
        (
            "aarch64-unknown-linux-gnu",
            "aarch64-linux-gnu",
            "qemu-aarch64",
        ),
        (
            "riscv64gc-unknown-linux-gnu",
            "riscv64-linux-gnu",
            "qemu-riscv64",
        ),
    ] {
        if Command::new(qemu).arg("--version").output().is_err() {
            eprintln!("{qemu} is not installed: the {triple} artifact was not run");
            continue;
        }
        let sysroot = work.path().join(format!("sysroot-{triple}"));
        unpack_sysroot(&mirror, triple, &sysroot);
        let ran = Command::new(qemu)
            .arg("-L")
            .arg(sysroot.join("usr").join(gnu))
            .arg(release.join(triple).join("glibc-floor"))
            .output()
            .unwrap();
        assert!(ran.status.success(), "{triple}: {ran:?}");
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout).trim(),
            EXPECTED,
            "{triple}"
        );
    }
}

/// `cmbuild run` of the project's v0.1.0, all its triples in one build machine, with `extra`.
fn release_command(project: &Path, mirror: &Path, out: &Path, extra: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cmbuild"));
    command
        .args(common::run_release("v0.1.0", project, mirror, out))
        .args(["--single-machine", extra]);
    command
}

/// cmbuild with the real crates.io (the heavy test vendors).
fn cmbuild_online(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprint!("{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}
