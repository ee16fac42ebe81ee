//! `cmbuild image build` end to end, on the real locked Debian packages.
//!
//! Both tests are `#[ignore]`d in the default run (they need ~550 MB of packages, fetched
//! once by pinned sha256 into `$CMBUILD_CACHE` or `~/.cache/cmbuild`, and minutes of CPU);
//! `.ci/run` runs them with `cargo test -p cmbuild --test image_build -- --ignored`.
//!
//! - `image_build_is_byte_identical_and_check_names_drift`: two builds under different
//!   umasks and time zones give identical files; `--check` passes on the pins the build
//!   wrote and fails naming `rootfs.erofs` when its pin is altered.
//! - `image_boots_under_qemu_and_cross_builds_hello`: the image boots under Debian's
//!   `qemu-system-riscv64 -M virt` (root on virtio-blk `/dev/vda`), cross-builds
//!   `examples/hello` with cargo `--offline` for x86_64, aarch64 and riscv64, and the
//!   x86_64 binary runs on the host.
//!
//! The lock is `guest-image/lock.json`, or the file `$CMBUILD_IMAGE_LOCK` names.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cmbuild_image::http::{default_cache_dir, HttpArchive};
use cmbuild_image::lock::Lock;
use cmbuild_image::locking::{self, MirrorDebStore};
use cmbuild_store::mirror::Mirror;

const TRIPLES: &[(&str, u16)] = &[
    ("x86_64-unknown-linux-gnu", 0x3e),
    ("aarch64-unknown-linux-gnu", 0xb7),
    ("riscv64gc-unknown-linux-gnu", 0xf3),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache_dir() -> PathBuf {
    default_cache_dir().expect("HOME or CMBUILD_CACHE must be set")
}

/// The lock and a mirror holding every package it names (downloaded once, verified).
fn locked_mirror() -> Option<(PathBuf, PathBuf)> {
    let lock_path = std::env::var_os("CMBUILD_IMAGE_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("guest-image/lock.json"));
    let Ok(text) = std::fs::read_to_string(&lock_path) else {
        eprintln!(
            "SKIPPED: no guest-image lock at {} (run `cmbuild image lock`)",
            lock_path.display()
        );
        return None;
    };
    let lock = Lock::parse(&text).expect("the lock parses");
    let mirror_dir = cache_dir().join("image-test-mirror");
    let mirror = Mirror::open(&mirror_dir).expect("mirror opens");
    let mut archive = HttpArchive::new(&lock.mirror, Some(cache_dir()));
    let mut store = MirrorDebStore::new(&mirror, &lock.mirror);
    // The base and every toolchain layer (the build makes and pins them all).
    let layers = cmbuild_image::layers::shipped().expect("the toolchain locks parse");
    let mut report = locking::vendor_locked_packages(&lock, &mut archive, &mut store, &mut |_| {});
    for layer in layers.toolchains.values() {
        if report.is_ok() {
            report = locking::vendor_locked_packages(layer, &mut archive, &mut store, &mut |_| {});
        }
    }
    match report {
        Ok(report) => eprintln!("packages: {report:?}"),
        Err(err) => {
            // Debian drops superseded packages from its pool; a lock that no longer
            // downloads is a maintenance task (re-lock), not a broken build.
            let mut chain = format!("{err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                chain.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!(
                "SKIPPED LOUDLY: a locked package cannot be fetched any more ({chain}); \
                 re-lock with `cmbuild image lock` and commit the new pins"
            );
            return None;
        }
    }
    Some((lock_path, mirror_dir))
}

fn build(
    lock: &Path,
    mirror: &Path,
    out: &Path,
    digests: &Path,
    extra: &[&str],
    umask: &str,
    tz: &str,
) -> std::process::Output {
    let mut command = Command::new("sh");
    command
        .env("TZ", tz)
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_cmbuild"))
        .args(["image", "build", "--lock"])
        .arg(lock)
        .arg("--toolchains")
        .arg(repo_root().join("guest-image/toolchains.lock.json"))
        .arg("--mirror")
        .arg(mirror)
        .arg("--out")
        .arg(out)
        .arg("--digests")
        .arg(digests)
        .args(extra);
    command.output().expect("cmbuild runs")
}

/// The end of a command's error output, where its error is (an image build prints a line per
/// package before it, which would push the error out of a truncated log).
fn last_lines(stderr: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    let skipped = if from > 0 {
        format!("[{from} lines before]\n")
    } else {
        String::new()
    };
    format!("{skipped}{}", lines[from..].join("\n"))
}

fn built_image(work: &Path, lock: &Path, mirror: &Path, umask: &str, tz: &str) -> PathBuf {
    let out = work.join(format!("out-{umask}"));
    let started = Instant::now();
    let result = build(
        lock,
        mirror,
        &out,
        &work.join("digests.lock.env"),
        &[],
        umask,
        tz,
    );
    assert!(
        result.status.success(),
        "image build failed: {}",
        last_lines(&result.stderr, 12)
    );
    eprintln!(
        "image build (umask {umask}, TZ {tz}): {:.1?}",
        started.elapsed()
    );
    out
}

const FILES: &[&str] = &[
    "fw_jump.bin",
    "initramfs.cpio",
    "rootfs.erofs",
    "vmlinux",
    "toolchain-1.85.1.erofs",
];

#[test]
#[ignore = "heavy: downloads the locked packages and builds the image twice"]
fn image_build_is_byte_identical_and_check_names_drift() {
    let Some((lock, mirror)) = locked_mirror() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let first = built_image(work.path(), &lock, &mirror, "022", "UTC");
    let pins = std::fs::read_to_string(work.path().join("digests.lock.env")).unwrap();
    let second = built_image(work.path(), &lock, &mirror, "077", "Asia/Kolkata");
    for file in FILES {
        let (a, b) = (
            std::fs::read(first.join(file)).unwrap(),
            std::fs::read(second.join(file)).unwrap(),
        );
        assert!(!a.is_empty(), "{file} is empty");
        assert!(a == b, "{file} differs between two builds");
    }
    assert_eq!(
        pins,
        std::fs::read_to_string(work.path().join("digests.lock.env")).unwrap()
    );
    for key in [
        "GUEST_FIRMWARE_CID=",
        "GUEST_INITRD_CID=",
        "GUEST_KERNEL_CID=",
        "GUEST_ROOTFS_CID=",
    ] {
        assert!(pins.contains(key), "{key} missing from {pins}");
    }
    assert!(pins.contains("GUEST_TOOLCHAIN_1_85_1_CID=bafy"), "{pins}");
    assert!(!pins.contains("RUST_TOOLCHAIN__"), "{pins}");
    let lines: Vec<&str> = pins.lines().filter(|l| !l.starts_with('#')).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(sorted, lines, "pins are not sorted");

    // The committed pins are what this build gives (when the lock is the committed one).
    if std::env::var_os("CMBUILD_IMAGE_LOCK").is_none() {
        let committed = std::fs::read_to_string(repo_root().join("digests.lock.env")).unwrap();
        let committed = cmbuild_image::pins::parse(&committed).unwrap();
        for (key, value) in cmbuild_image::pins::parse(&pins).unwrap() {
            assert_eq!(
                committed.get(&key),
                Some(&value),
                "digests.lock.env does not reproduce {key}: run `cmbuild image build` and commit"
            );
        }
    }

    // --check reproduces the pins...
    let digests = work.path().join("digests.lock.env");
    let check = build(
        &lock,
        &mirror,
        &work.path().join("check"),
        &digests,
        &["--check"],
        "022",
        "UTC",
    );
    assert!(check.status.success(), "{}", last_lines(&check.stderr, 12));
    // ...and names the file whose pin does not match.
    let tampered: String = pins
        .lines()
        .map(|l| {
            if l.starts_with("GUEST_ROOTFS_CID=") {
                "GUEST_ROOTFS_CID=bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
                    .to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&digests, tampered).unwrap();
    let check = build(
        &lock,
        &mirror,
        &work.path().join("check"),
        &digests,
        &["--check"],
        "022",
        "UTC",
    );
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rootfs.erofs") && stderr.contains("GUEST_ROOTFS_CID"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("vmlinux: "),
        "only the altered pin may be reported: {stderr}"
    );
}

/// A tar of the files below `dir` (relative paths, sorted, owner root, fixed mtime).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut builder = tar::Builder::new(Vec::new());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        let rel = path.strip_prefix(dir).unwrap();
        builder.append_data(&mut header, rel, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

/// The input drive of PROTOCOL.md for `examples/hello`, vendored by the host's cargo and
/// made by the run pipeline's own `plan::build_input_drive`.
fn hello_input_drive(work: &Path) -> Vec<u8> {
    let project = repo_root().join("examples/hello");
    let vendor = work.join("vendor");
    let result = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["vendor", "--locked", "--versioned-dirs", "--manifest-path"])
        .arg(project.join("Cargo.toml"))
        .arg(&vendor)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "cargo vendor: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let source = work.join("source");
    for file in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        std::fs::create_dir_all(source.join(file).parent().unwrap()).unwrap();
        std::fs::copy(project.join(file), source.join(file)).unwrap();
    }
    let plan = cmbuild::plan::Plan {
        source_date_epoch: 1_700_000_000,
        targets: TRIPLES.iter().map(|t| t.0.parse().unwrap()).collect(),
        cargo_flags: Vec::new(),
        bins: vec![cmbuild::plan::PlannedBin {
            package: "hello".into(),
            version: "0.1.0".into(),
            bin: "hello".into(),
        }],
        offload: false,
    };
    cmbuild::plan::build_input_drive(
        &plan,
        &tar_dir(&source),
        &tar_dir(&vendor),
        cmbuild::plan::GUEST_CARGO_CONFIG,
        None,
    )
    .unwrap()
}

#[test]
#[ignore = "heavy: builds the image and cross-builds a crate inside QEMU (tens of minutes)"]
fn image_boots_under_qemu_and_cross_builds_hello() {
    if Command::new("qemu-system-riscv64")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("qemu-system-riscv64 is missing: run .ci/install-deps");
    }
    let Some((lock, mirror)) = locked_mirror() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let image = built_image(work.path(), &lock, &mirror, "022", "UTC");
    let input = hello_input_drive(work.path());
    // The default toolchain's layer is the fourth disk, stacked over the root by /init.
    let files = cmbuild::qemu::ImageFiles::in_dir(&image, "toolchain-1.85.1.erofs");
    let started = Instant::now();
    let outcome = cmbuild::qemu::QemuBuild {
        image: &files,
        input: &input,
        ram_mib: 4096,
        output_bytes: 256 << 20,
        cpus: 2,
        icount: false,
        work: work.path(),
        deadline: Duration::from_secs(75 * 60),
    }
    .run()
    .unwrap();
    eprintln!("guest ran {:.0?}", started.elapsed());
    assert!(
        outcome.finished(),
        "the guest did not finish:\n{}",
        outcome.console_tail(60)
    );

    let mut archive = tar::Archive::new(outcome.open_output().unwrap());
    let outputs = work.path().join("outputs");
    archive.unpack(&outputs).unwrap();
    for (triple, machine) in TRIPLES {
        let dir = outputs.join(triple);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let log = std::fs::read_to_string(dir.join("build.log")).unwrap_or_default();
        assert_eq!(status.trim(), "0", "{triple} failed:\n{log}");
        let binary = std::fs::read(dir.join("hello")).unwrap();
        assert_eq!(&binary[..4], b"\x7fELF", "{triple}: not an ELF file");
        assert_eq!(
            u16::from_le_bytes([binary[18], binary[19]]),
            *machine,
            "{triple}: wrong machine"
        );
        assert!(
            !binary.windows(7).any(|w| w == b"/build/"),
            "{triple}: a build path leaked into the binary"
        );
    }
    let x86 = outputs.join("x86_64-unknown-linux-gnu/hello");
    let mut perms = std::fs::metadata(&x86).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&x86, perms).unwrap();
    let run = Command::new(&x86).args(["b", "a", "b"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello from cmbuild (2 distinct words)\n61 a 1\n62 b 2\n"
    );
}
