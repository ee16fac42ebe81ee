//! Builds from a Dockerfile inside the machine (issue 15), end to end with real components:
//! a base image assembled from Debian's riscv64 `busybox-static` (pinned by the guest-image
//! lock), pushed by the test to Debian's `docker-registry` on loopback beside an amd64
//! image under one index; `cmbuild vendor --dockerfile` takes it by digest; the registry is
//! stopped; `cmbuild run --dockerfile` builds a multi-stage Dockerfile with buildah in the
//! machine, twice, offline.
//!
//! `#[ignore]`d (heavy: the container layer's packages are fetched once, the first run
//! assembles the layer and derives the container template, and each build runs billions
//! of guest instructions); `.ci/run` runs it with the other heavy tests when time allows.
//!
//! What it proves: both runs give the same image digest, archive and root hash (and
//! `cmbuild compare` and `cmbuild verify` agree); the image
//! is linux/riscv64, and its one file is what the RUN step of the first stage wrote, inside
//! the machine (riscv64), at the commit's time; `--target-stage` builds the named stage; a
//! Dockerfile naming an image that was not vendored is refused before any machine boots.

mod common;
mod oci_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cmbuild::container::{read_layout, ContainerManifest};
use cmbuild_store::oci;
use common::{cache_dir, commit_tagged, copy_tree, repo_root, s};
use oci_support::{digest, TestImage, TestRegistry};

use common::cmbuild_shown as cmbuild;

/// `cmbuild ARGS` with its stderr captured (for the messages a test reads).
fn cmbuild_quiet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .output()
        .unwrap()
}

/// `cmbuild vendor` of `project` and the images of its Dockerfile (from the loopback
/// registry `host`) into `mirror`.
fn vendor(project: &Path, host: &str, mirror: &Path) {
    let vendored = cmbuild(&[
        "vendor",
        "--manifest-path",
        s(&project.join("Cargo.toml")),
        "--dockerfile",
        s(&project.join("Dockerfile")),
        "--insecure-registry",
        host,
        "--mirror",
        s(mirror),
    ]);
    assert!(vendored.status.success(), "vendor failed");
}

/// `cmbuild run --release v0.1.0 --dockerfile DOCKERFILE` of `project` into `out`, with
/// `extra` flags; `quiet` captures its stderr (for the messages a test reads).
fn run_dockerfile(
    project: &Path,
    dockerfile: &str,
    mirror: &Path,
    out: &Path,
    extra: &[&str],
    quiet: bool,
) -> Output {
    let mut args = common::run_release("v0.1.0", project, mirror, out);
    args.extend(["--dockerfile", dockerfile]);
    args.extend_from_slice(extra);
    match quiet {
        true => cmbuild_quiet(&args),
        false => cmbuild(&args),
    }
}

fn manifest(dir: &Path) -> ContainerManifest {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The files of the image at `release/image.tar`, its layers applied in order.
fn image_files(release: &Path, scratch: &Path) -> Vec<(String, Vec<u8>)> {
    let layout = scratch.join("layout");
    fs::create_dir_all(&layout).unwrap();
    tar::Archive::new(&fs::read(release.join("image.tar")).unwrap()[..])
        .unpack(&layout)
        .unwrap();
    let files = read_layout(&layout).unwrap().files;
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        let name = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        files.iter().find(|(n, _)| *n == name).unwrap().1.clone()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
    let mut out = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let bytes = blob(layer["digest"].as_str().unwrap());
        let media = layer["mediaType"].as_str().unwrap();
        let reader: Box<dyn std::io::Read> = if media.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type().is_file() {
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                out.push((path, data));
            }
        }
    }
    out
}

/// A copy of examples/hello with `dockerfile` as its Dockerfile, committed and tagged.
fn project(dir: &Path, dockerfile: &str) -> PathBuf {
    let project = dir.join("project");
    copy_tree(&repo_root().join("examples/hello"), &project);
    fs::write(project.join("Dockerfile"), dockerfile).unwrap();
    commit_tagged(&project, "v0.1.0");
    project
}

#[test]
#[ignore]
fn a_dockerfile_builds_the_same_riscv64_image_twice_offline() {
    let registry = TestRegistry::start();
    let (base, index) = oci_support::push_busybox_base(&registry);
    let host = registry.host.clone();
    let reference = format!("{host}/debian/busybox:trixie@{}", digest(&index));

    let tmp = tempfile::tempdir().unwrap();
    let dockerfile = format!(
        "FROM {reference} AS build\n\
         RUN busybox mkdir -p /result && \\\n    \
         echo \"built on $(busybox uname -m) at $(busybox date -u +%Y)\" > /result/greeting\n\
         \n\
         FROM scratch\n\
         COPY --from=build /result/greeting /greeting\n"
    );
    let project = project(tmp.path(), &dockerfile);
    let mirror = cache_dir().join("image-test-mirror");
    vendor(&project, &host, &mirror);
    drop(registry); // from here on, nothing can be fetched

    let out = tmp.path().join("out");
    let run = run_dockerfile(
        &project,
        "Dockerfile",
        &mirror,
        &out,
        &["--test-reproduce"],
        false,
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "run failed:\n{stdout}");
    assert!(
        stdout.contains("reproduced: both runs gave image sha256:"),
        "{stdout}"
    );
    let (one, two) = (out.join("run1/v0.1.0"), out.join("run2/v0.1.0"));
    let (m1, m2) = (manifest(&one), manifest(&two));
    assert_eq!(m1, m2);
    assert_eq!(
        fs::read(one.join("image.tar")).unwrap(),
        fs::read(two.join("image.tar")).unwrap()
    );
    assert_eq!(m1.image.platform, "linux/riscv64");
    assert_eq!(
        m1.base_images[0].manifest.to_string(),
        digest(&base.manifest)
    );
    assert_eq!(
        m1.image.archive_cid,
        cmbuild_store::cid::cid_of_bytes(&fs::read(one.join("image.tar")).unwrap())
    );
    let machine1 = fs::read_to_string(one.join("machine.json")).unwrap();
    assert_eq!(
        machine1,
        fs::read_to_string(two.join("machine.json")).unwrap()
    );
    // `cmbuild compare` checks both directories' claims and agrees.
    let compared = cmbuild_quiet(&["compare", s(&one), s(&two)]);
    assert!(
        compared.status.success(),
        "{}",
        String::from_utf8_lossy(&compared.stdout)
    );
    // `cmbuild verify` rebuilds the published directory from the project and agrees.
    let verified = cmbuild(&[
        "verify",
        s(&one),
        "--project",
        s(&project),
        "--mirror",
        s(&mirror),
        "--out",
        s(&tmp.path().join("verify")),
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let files = image_files(&one, &tmp.path().join("x1"));
    assert_eq!(
        files,
        vec![(
            "greeting".to_owned(),
            b"built on riscv64 at 2026\n".to_vec()
        )],
        "the final stage holds only what the build stage wrote"
    );

    // The first stage alone: busybox and the result.
    let staged = run_dockerfile(
        &project,
        "Dockerfile",
        &mirror,
        &tmp.path().join("out-stage"),
        &["--target-stage", "build"],
        false,
    );
    assert!(staged.status.success());
    let files = image_files(&tmp.path().join("out-stage/v0.1.0"), &tmp.path().join("x2"));
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"usr/bin/busybox") && names.contains(&"result/greeting"),
        "{names:?}"
    );
}

/// A Dockerfile naming its base by a Docker Hub short name (`busybox@sha256:…`, which means
/// docker.io/library/busybox) builds from the image of that digest in the mirror, wherever
/// it was vendored from (here a loopback registry; this machine reaches no Docker Hub).
#[test]
#[ignore]
fn a_docker_hub_short_name_builds_from_the_vendored_image_of_its_digest() {
    let registry = TestRegistry::start();
    let (_, index) = oci_support::push_busybox_base(&registry);
    let host = registry.host.clone();
    let tmp = tempfile::tempdir().unwrap();
    let project = project(
        tmp.path(),
        &format!(
            "FROM busybox@{}\nRUN busybox mkdir -p /from && busybox uname -m > /from/arch\n",
            digest(&index)
        ),
    );
    let mirror = cache_dir().join("image-test-mirror");
    let vendored = cmbuild(&[
        "vendor",
        "--manifest-path",
        s(&project.join("Cargo.toml")),
        "--container-layer",
        "--oci-image",
        &format!("{host}/debian/busybox:trixie@{}", digest(&index)),
        "--insecure-registry",
        &host,
        "--mirror",
        s(&mirror),
    ]);
    assert!(vendored.status.success(), "vendor failed");
    drop(registry);
    let out = tmp.path().join("out");
    let run = run_dockerfile(&project, "Dockerfile", &mirror, &out, &[], false);
    assert!(
        run.status.success(),
        "run failed:\n{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let files = image_files(&out.join("v0.1.0"), &tmp.path().join("x"));
    let arch = files
        .iter()
        .find(|(n, _)| n == "from/arch")
        .map(|(_, b)| b.clone());
    assert_eq!(arch.as_deref(), Some(&b"riscv64\n"[..]));
}

/// The riscv64 packages a `rustc` that links with gcc needs (the closure of rustc,
/// libstd-rust-dev, gcc and libc6-dev in the guest-image locks), and busybox for a shell.
const RUST_BASE: &[&str] = &[
    "binutils",
    "binutils-common",
    "binutils-riscv64-linux-gnu",
    "busybox-static",
    "cpp",
    "cpp-14",
    "cpp-14-riscv64-linux-gnu",
    "cpp-riscv64-linux-gnu",
    "gcc",
    "gcc-14",
    "gcc-14-base",
    "gcc-14-riscv64-linux-gnu",
    "gcc-riscv64-linux-gnu",
    "libasan8",
    "libatomic1",
    "libbinutils",
    "libbsd0",
    "libc-dev-bin",
    "libc6",
    "libc6-dev",
    "libcc1-0",
    "libcrypt-dev",
    "libcrypt1",
    "libctf-nobfd0",
    "libctf0",
    "libedit2",
    "libffi8",
    "libgcc-14-dev",
    "libgcc-s1",
    "libgmp10",
    "libgomp1",
    "libgprofng0",
    "libisl23",
    "libitm1",
    "libjansson4",
    "libllvm19",
    "liblsan0",
    "liblzma5",
    "libmd0",
    "libmpc3",
    "libmpfr6",
    "libsframe1",
    "libstd-rust-1.85",
    "libstd-rust-dev",
    "libstdc++6",
    "libtinfo6",
    "libtsan2",
    "libubsan1",
    "libxml2",
    "libz3-4",
    "libzstd1",
    "linux-libc-dev",
    "rpcsvc-proto",
    "rustc",
    "zlib1g",
];

/// A two-stage Dockerfile: the first compiles a Rust program with the pinned toolchain's
/// rustc (from Debian's packages of the default toolchain layer, in a base image the test
/// assembles and pushes), statically linked; the second is `scratch` with the program alone.
/// The program from the image runs under qemu-riscv64 on the host.
#[test]
#[ignore]
fn a_dockerfile_compiles_rust_with_the_pinned_toolchain_into_a_slim_image() {
    let layer_tar = oci_support::debian_riscv64_layer(
        RUST_BASE,
        &[
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("sbin", "usr/sbin"),
            ("usr/bin/sh", "busybox"),
            ("usr/bin/cc", "gcc"),
        ],
    );
    let registry = TestRegistry::start();
    let base = TestImage::from_layer(&layer_tar, "riscv64", oci_support::OCI);
    drop(layer_tar);
    registry.push_image("debian/rust", &base);
    registry.push_manifest(
        "debian/rust",
        "1.85.1",
        oci::MEDIA_OCI_MANIFEST,
        &base.manifest,
    );
    let host = registry.host.clone();
    let reference = format!("{host}/debian/rust:1.85.1@{}", digest(&base.manifest));

    let tmp = tempfile::tempdir().unwrap();
    let dockerfile = format!(
        "FROM {reference} AS build\n\
         WORKDIR /work\n\
         ENV TMPDIR=/work\n\
         COPY greet.rs .\n\
         RUN [\"rustc\", \"-C\", \"opt-level=2\", \"-C\", \"target-feature=+crt-static\", \
         \"-o\", \"/work/greet\", \"greet.rs\"]\n\
         \n\
         FROM scratch\n\
         COPY --from=build /work/greet /greet\n\
         ENTRYPOINT [\"/greet\"]\n"
    );
    let project = tmp.path().join("project");
    copy_tree(&repo_root().join("examples/hello"), &project);
    fs::write(project.join("Dockerfile"), dockerfile).unwrap();
    fs::write(
        project.join("greet.rs"),
        "fn main() {\n    let v: u64 = (1..=20).product();\n    \
         println!(\"greetings from {} in a container: 20! = {v}\", std::env::consts::ARCH);\n}\n",
    )
    .unwrap();
    commit_tagged(&project, "v0.1.0");
    let mirror = cache_dir().join("image-test-mirror");
    vendor(&project, &host, &mirror);
    drop(registry);

    let out = tmp.path().join("out");
    let run = run_dockerfile(&project, "Dockerfile", &mirror, &out, &[], false);
    assert!(
        run.status.success(),
        "run failed:\n{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let release = out.join("v0.1.0");
    let files = image_files(&release, &tmp.path().join("x"));
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["greet"], "the slim stage holds the program alone");
    let program = tmp.path().join("greet");
    fs::write(&program, &files[0].1).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let ran = Command::new("qemu-riscv64")
        .arg(&program)
        .output()
        .expect("qemu-riscv64 runs (package qemu-user, installed by .ci/install-deps)");
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "greetings from riscv64 in a container: 20! = 2432902008176640000\n"
    );
    let manifest = manifest(&release);
    assert_eq!(
        manifest.base_images[0].manifest.to_string(),
        digest(&base.manifest)
    );
}

#[test]
fn a_dockerfile_naming_an_image_not_vendored_is_refused_before_any_machine_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("127.0.0.1:1/nowhere/base@sha256:{}", "ab".repeat(32));
    let project = project(tmp.path(), &format!("FROM {missing}\nRUN true\n"));
    let mirror = tmp.path().join("mirror");
    fs::create_dir(&mirror).unwrap();
    let out = tmp.path().join("out");
    let run = run_dockerfile(&project, "Dockerfile", &mirror, &out, &[], true);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&format!(
            "the base image {missing} (Dockerfile line 1) is not in the mirror"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("cmbuild vendor --dockerfile Dockerfile"),
        "{stderr}"
    );
    assert!(!out.join("v0.1.0").exists(), "nothing is published");

    // Without a digest, the line is named.
    let project = tmp.path().join("p2");
    fs::create_dir(&project).unwrap();
    let project = self::project(&project, "FROM debian:trixie\n");
    let run = run_dockerfile(&project, "Dockerfile", &mirror, &out, &[], true);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("Dockerfile:1:") && stderr.contains("debian:trixie"),
        "{stderr}"
    );
    // A path out of the project is refused before anything is read.
    let run = run_dockerfile(&project, "../Dockerfile", &mirror, &out, &[], true);
    assert!(String::from_utf8_lossy(&run.stderr).contains("--dockerfile \"../Dockerfile\""));
}
