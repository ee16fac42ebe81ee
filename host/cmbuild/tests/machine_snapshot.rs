//! `cmbuild machine run --store DIR` / `--load DIR`, through the real binary: a run cut into
//! pieces by --max-mcycle, stored and resumed (from another working directory) prints the
//! same console bytes, ends with the same summary line, exit code and root hash, and leaves
//! the same shared flash drive file as an uninterrupted run; misuse and corrupted snapshots
//! exit 2 with a clear message.
//!
//! The bare-metal program (host/machine/tests/snapshot/ticks.S) is assembled with Debian's
//! riscv64-linux-gnu-gcc; without it the test fails under CI=true and prints a loud SKIP
//! otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PROGRAM: &str = include_str!("../../machine/tests/snapshot/ticks.S");
const RAM_LENGTH: u64 = 16 << 20;

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg = format!(
            "{tool} not found (needed to build the snapshot test program); install the Debian \
             packages in .ci/install-deps"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    found
}

/// Assembles the program for a flash drive right above 16 MiB of RAM.
fn build_program(dir: &Path) -> Option<PathBuf> {
    if !have("riscv64-linux-gnu-gcc") || !have("riscv64-linux-gnu-objcopy") {
        return None;
    }
    let src = dir.join("ticks.S");
    let elf = dir.join("ticks.elf");
    let bin = dir.join("ticks.bin");
    std::fs::write(&src, PROGRAM).unwrap();
    let link = Path::new(env!("CARGO_MANIFEST_DIR")).join("../machine/tests/isa/link.ld");
    let flash_base = (0x8000_0000 + RAM_LENGTH).div_ceil(2 << 20) * (2 << 20);
    let o = Command::new("riscv64-linux-gnu-gcc")
        .args([
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-march=rv64gc",
            "-mabi=lp64d",
        ])
        .args(["-mcmodel=medany", "-Wl,--no-relax", "-Wl,--build-id=none"])
        .arg(format!("-DFLASH_BASE={flash_base:#x}"))
        .arg("-T")
        .arg(link)
        .arg("-o")
        .arg(&elf)
        .arg(&src)
        .output()
        .expect("run riscv64-linux-gnu-gcc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("riscv64-linux-gnu-objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .output()
        .expect("run riscv64-linux-gnu-objcopy");
    assert!(o.status.success());
    Some(bin)
}

fn cmbuild(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .current_dir(cwd)
        .args(["machine", "run"])
        .args(args)
        .output()
        .expect("run cmbuild")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cmbuild machine run` from reset with the program and a shared drive at `drive`.
fn fresh(cwd: &Path, image: &Path, drive: &str, extra: &[&str]) -> Output {
    let flash = format!("label:data,filename:{drive},shared");
    let mut args = vec![
        "--ram-length",
        "16Mi",
        "--ram-image",
        image.to_str().unwrap(),
        "--flash-drive",
        &flash,
    ];
    args.extend_from_slice(extra);
    cmbuild(cwd, &args)
}

#[test]
fn store_and_load_resume_exactly_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(image) = build_program(dir) else {
        return;
    };
    let drive: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("whole.img"), &drive).unwrap();
    std::fs::write(dir.join("cut.img"), &drive).unwrap();

    let whole = fresh(dir, &image, "whole.img", &["--final-hash"]);
    assert_eq!(whole.status.code(), Some(3), "{}", stderr(&whole));
    let whole_err = stderr(&whole);
    let (summary, hash) = whole_err.trim_end().split_once('\n').expect("two lines");
    assert!(
        summary.starts_with("cmbuild-machine: break=halted exit_code=3 mcycle="),
        "{whole_err}"
    );
    assert!(hash.starts_with("root_hash=cmvm-sha256-v1:"), "{whole_err}");
    let end: u64 = summary.rsplit('=').next().unwrap().parse().unwrap();
    assert!(String::from_utf8_lossy(&whole.stdout).starts_with("A.B.C."));

    // Three pieces; the later pieces run from another directory. A snapshot names no host
    // files: the last piece names the shared drive's file again to have it written back.
    let (c1, c2) = (end / 3, end * 2 / 3 + 12_345);
    let p1 = fresh(
        dir,
        &image,
        "cut.img",
        &["--max-mcycle", &c1.to_string(), "--store", "s1"],
    );
    assert_eq!(p1.status.code(), Some(124), "{}", stderr(&p1));
    assert_eq!(
        stderr(&p1),
        format!("cmbuild-machine: break=max-mcycle mcycle={c1}\n")
    );
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let s1 = dir.join("s1");
    let s2 = dir.join("s2");
    let p2 = cmbuild(
        &elsewhere,
        &[
            "--load",
            s1.to_str().unwrap(),
            "--max-mcycle",
            &c2.to_string(),
            "--store",
            s2.to_str().unwrap(),
        ],
    );
    assert_eq!(p2.status.code(), Some(124), "{}", stderr(&p2));
    assert!(
        stderr(&p2).contains("shared flash drive \"data\" is not written back"),
        "{}",
        stderr(&p2)
    );
    assert_eq!(
        std::fs::read(dir.join("cut.img")).unwrap(),
        drive,
        "nothing names the drive's file: it is left alone"
    );
    let back = format!(
        "label:data,filename:{},shared",
        dir.join("cut.img").display()
    );
    let p3 = cmbuild(
        &elsewhere,
        &[
            "--load",
            s2.to_str().unwrap(),
            "--final-hash",
            "--flash-drive",
            &back,
        ],
    );
    assert_eq!(p3.status.code(), Some(3), "{}", stderr(&p3));
    assert_eq!(stderr(&p3), whole_err, "same summary line and root hash");
    let console: Vec<u8> = [&p1.stdout, &p2.stdout, &p3.stdout]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(console, whole.stdout, "same console bytes");
    assert_eq!(
        std::fs::read(dir.join("cut.img")).unwrap(),
        std::fs::read(dir.join("whole.img")).unwrap(),
        "the shared drive's host file ends the same"
    );
    assert_ne!(
        std::fs::read(dir.join("whole.img")).unwrap(),
        drive,
        "the guest wrote the drive"
    );

    // --flash-drive beside --load must match the snapshot's drives.
    let o = cmbuild(
        dir,
        &[
            "--load",
            "s1",
            "--flash-drive",
            "label:other,filename:x.img,shared",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no drive of that label"),
        "{}",
        stderr(&o)
    );
    let o = cmbuild(
        dir,
        &["--load", "s1", "--flash-drive", "label:data,filename:x.img"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("add ,shared"), "{}", stderr(&o));
    assert!(!dir.join("x.img").exists());

    // A snapshot taken at the halt resumes halted: no console output, same end.
    std::fs::write(dir.join("halt.img"), &drive).unwrap();
    let at_halt = fresh(dir, &image, "halt.img", &["--store", "halted"]);
    assert_eq!(at_halt.status.code(), Some(3), "{}", stderr(&at_halt));
    let again = cmbuild(
        dir,
        &[
            "--load",
            "halted",
            "--final-hash",
            "--flash-drive",
            "label:data,filename:halt.img,shared",
        ],
    );
    assert_eq!(again.status.code(), Some(3));
    assert!(again.stdout.is_empty());
    assert_eq!(stderr(&again), whole_err);

    // Machine flags beside --load are a usage error.
    let o = cmbuild(
        dir,
        &["--load", "s1", "--ram-image", image.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    // An existing --store target is refused before running.
    let o = cmbuild(dir, &["--load", "s1", "--store", "s2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty(), "refused before running");
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    // A corrupted snapshot is refused with the file named.
    let bad = dir.join("bad");
    std::fs::create_dir(&bad).unwrap();
    for e in std::fs::read_dir(&s1).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let mut pages = std::fs::read(bad.join("ram.pages")).unwrap();
    *pages.last_mut().unwrap() ^= 0x10;
    std::fs::write(bad.join("ram.pages"), pages).unwrap();
    let o = cmbuild(dir, &["--load", "bad"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.contains("--load bad: refusing the snapshot") && err.contains("ram.pages"),
        "{err}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    cmbuild_store::sha256::Sha256::of(bytes).to_string()
}

/// A snapshot handed over by someone else, whose manifest names a host file for its shared
/// drive and is resealed (its checksum is a plain SHA-256): resuming it writes nothing
/// there. Older builds wrote the drive's final contents to whatever path the manifest
/// named.
#[test]
fn a_snapshot_naming_a_host_file_never_makes_load_write_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(image) = build_program(dir) else {
        return;
    };
    let drive: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("d.img"), &drive).unwrap();
    let o = fresh(
        dir,
        &image,
        "d.img",
        &["--max-mcycle", "20000", "--store", "snap"],
    );
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let manifest = std::fs::read_to_string(dir.join("snap/manifest")).unwrap();
    assert!(manifest.contains("\nhost-file \n"), "{manifest}");
    let forged = manifest.replace(
        "\nhost-file \n",
        &format!("\nhost-file {}\n", victim.display()),
    );
    let body = &forged[..forged.rfind("checksum ").unwrap()];
    let sealed = format!("{body}checksum {}\nend\n", sha256_hex(body.as_bytes()));
    std::fs::write(dir.join("snap/manifest"), sealed).unwrap();
    let o = cmbuild(dir, &["--load", "snap"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}
