//! The stall watchdog through `cmbuild machine run`: a program that prints, then sleeps in
//! WFI forever with timer interrupts, is stopped after the stall time (default 600 guest
//! seconds) with a clear message, its last console lines (sanitised) and a snapshot that
//! loads and resumes; programs that keep printing, keep writing their drive, or compute
//! without printing are not stopped.
//!
//! The program (tests/stall/idle.S) is assembled with Debian's riscv64-linux-gnu-gcc;
//! without it the test fails under CI=true and prints a loud SKIP otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PROGRAM: &str = include_str!("stall/idle.S");
/// 1 MiB of RAM: the first flash drive sits at the next 2 MiB boundary.
const FLASH_BASE: u64 = 0x8020_0000;
/// One guest second.
const SECOND: u64 = 128_000_000;

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg = format!(
            "{tool} not found (needed to build the stall test program); install the Debian \
             packages in .ci/install-deps"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    found
}

/// Assembles a variant of the program (`-D` flags) into `dir/NAME.bin`.
fn build(dir: &Path, name: &str, defines: &[&str]) -> Option<PathBuf> {
    if !have("riscv64-linux-gnu-gcc") || !have("riscv64-linux-gnu-objcopy") {
        return None;
    }
    let src = dir.join("idle.S");
    std::fs::write(&src, PROGRAM).unwrap();
    let elf = dir.join(format!("{name}.elf"));
    let bin = dir.join(format!("{name}.bin"));
    let link = Path::new(env!("CARGO_MANIFEST_DIR")).join("../machine/tests/isa/link.ld");
    let o = Command::new("riscv64-linux-gnu-gcc")
        .args(["-nostdlib", "-nostartfiles", "-static"])
        .args(["-march=rv64gc", "-mabi=lp64d", "-mcmodel=medany"])
        .args(["-Wl,--no-relax", "-Wl,--build-id=none"])
        .arg(format!("-DFLASH_BASE={FLASH_BASE:#x}"))
        .args(defines.iter().map(|d| format!("-D{d}")))
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

fn machine_run(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .current_dir(cwd)
        .args(["machine", "run"])
        // A resumed machine takes its RAM size from the snapshot.
        .args(if args.contains(&"--load") {
            &[][..]
        } else {
            &["--ram-length", "1Mi"][..]
        })
        .args(args)
        .output()
        .expect("run cmbuild")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The mcycle of a `... mcycle=N` summary line.
fn summary_mcycle(err: &str) -> u64 {
    let line = err
        .lines()
        .find(|l| l.starts_with("cmbuild-machine: break="))
        .unwrap_or_else(|| panic!("no summary line in {err}"));
    line.rsplit_once("mcycle=").unwrap().1.parse().unwrap()
}

#[test]
fn an_idle_silent_machine_is_stopped_with_its_console_and_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(image) = build(dir, "idle", &[]) else {
        return;
    };
    let image = image.to_str().unwrap();

    // The default: 600 guest seconds. The snapshot goes to ./stalled-at-MCYCLE. (The
    // mcycle limit only keeps a broken watchdog from hanging the test.)
    let guard = (700 * SECOND).to_string();
    let o = machine_run(dir, &["--ram-image", image, "--max-mcycle", &guard]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("made no visible progress (no console byte, no drive write, idle) for 600 guest seconds"),
        "{err}"
    );
    // The last console lines, with the escape sequence shown rather than sent.
    assert!(
        err.contains("last console lines:\nstall test: booted\nnow waiting \\x1b[31mfor nothing\n"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "stall test: booted\nnow waiting \\x1b[31mfor nothing\n"
    );
    let mcycle: u64 = err
        .split("; stopped")
        .next()
        .and_then(|s| s.rsplit_once(" to "))
        .map(|(_, n)| n.parse().unwrap())
        .unwrap_or_else(|| panic!("no stop mcycle in {err}"));
    assert!(
        (600 * SECOND..601 * SECOND).contains(&mcycle),
        "stopped at {mcycle}"
    );
    let snapshot = dir.join(format!("stalled-at-{mcycle}"));
    assert!(
        err.contains(&format!("a snapshot to debug from: stalled-at-{mcycle}")),
        "{err}"
    );
    assert!(snapshot.join("manifest").is_file(), "{err}");

    // Deterministic: the same run stops at the same mcycle (the snapshot exists now, so it
    // says it could not write one — and still reports the stall).
    let again = machine_run(dir, &["--ram-image", image, "--max-mcycle", &guard]);
    let again_err = stderr(&again);
    assert_eq!(again.status.code(), Some(2), "{again_err}");
    assert!(
        again_err.contains(&format!("to {mcycle}; stopped")),
        "{again_err}"
    );
    assert!(
        again_err.contains("the snapshot could not be written")
            && again_err.contains("already exists"),
        "{again_err}"
    );

    // The snapshot loads and runs on from where the machine was stopped.
    let resumed = machine_run(
        dir,
        &[
            "--load",
            snapshot.to_str().unwrap(),
            "--max-mcycle",
            &(mcycle + SECOND).to_string(),
        ],
    );
    assert_eq!(resumed.status.code(), Some(124), "{}", stderr(&resumed));
    assert_eq!(summary_mcycle(&stderr(&resumed)), mcycle + SECOND);

    // A shorter limit, with the snapshot where --store says.
    let stored = dir.join("stored");
    let o = machine_run(
        dir,
        &[
            "--ram-image",
            image,
            "--stall-seconds",
            "3",
            "--max-mcycle",
            &guard,
            "--store",
            stored.to_str().unwrap(),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("for 3 guest seconds"), "{err}");
    assert!(stored.join("manifest").is_file(), "{err}");
}

#[test]
fn machines_that_print_write_or_compute_are_not_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(chatty) = build(dir, "chatty", &["CHATTY"]) else {
        return;
    };
    let drive = build(dir, "drive", &["DRIVE"]).unwrap();
    let busy = build(dir, "busy", &["BUSY"]).unwrap();
    std::fs::write(dir.join("data.img"), vec![0u8; 8192]).unwrap();
    let limit = (20 * SECOND).to_string();
    for (image, extra) in [
        (&chatty, vec![]),
        (
            &drive,
            vec!["--flash-drive", "label:data,filename:data.img"],
        ),
        (&busy, vec![]),
    ] {
        let mut args = vec![
            "--ram-image",
            image.to_str().unwrap(),
            "--stall-seconds",
            "2",
            "--max-mcycle",
            &limit,
        ];
        args.extend(extra);
        let o = machine_run(dir, &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(124), "{}: {err}", image.display());
        assert_eq!(summary_mcycle(&err), 20 * SECOND, "{err}");
        assert!(!err.contains("no visible progress"), "{err}");
    }
    // The same silent, idle program is stopped under the same limits: the three above
    // were spared for what they did.
    let idle = build(dir, "idle", &[]).unwrap();
    let o = machine_run(
        dir,
        &[
            "--ram-image",
            idle.to_str().unwrap(),
            "--stall-seconds",
            "2",
            "--max-mcycle",
            &limit,
            "--store",
            "s",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("for 2 guest seconds"), "{}", stderr(&o));
}
