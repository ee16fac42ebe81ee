//! `cmbuild machine run` through the real binary: the output contract of docs/design.md
//! (console bytes on stdout, one summary line on stderr, the guest's exit code, 124 at
//! `--max-mcycle`, 2 with a message on usage errors) and a deterministic `--final-hash`.

use std::path::Path;
use std::process::{Command, Output};

/// Prints "A" through HTIF, then halts with exit code 3: seven instructions.
const PRINT_A_EXIT_3: [u32; 8] = [
    0x4000_82b7, // lui t0, 0x40008          (HTIF tohost)
    0x0101_03b7, // lui t2, 0x1010
    0x0203_9393, // slli t2, t2, 32          (dev 1, cmd 1)
    0x0413_8393, // addi t2, t2, 'A'
    0x0072_b023, // sd t2, 0(t0)             (putchar)
    0x0070_0313, // addi t1, zero, 7         (3 << 1 | 1)
    0x0062_b023, // sd t1, 0(t0)             (halt)
    0x0000_006f, // j .
];

fn write_image(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("prog.bin");
    let bytes: Vec<u8> = PRINT_A_EXIT_3
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn cmbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(["machine", "run"])
        .args(args)
        .output()
        .expect("run cmbuild")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn halting_program_prints_and_exits_with_its_code() {
    let tmp = tempfile::tempdir().unwrap();
    let image = write_image(tmp.path());
    let image = image.to_str().unwrap();
    let o = cmbuild(&["--ram-length", "1Mi", "--ram-image", image, "--final-hash"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(o.stdout, b"A");
    let lines: Vec<String> = stderr(&o).lines().map(str::to_owned).collect();
    assert_eq!(
        lines[0],
        "cmbuild-machine: break=halted exit_code=3 mcycle=7"
    );
    let hash = lines[1]
        .strip_prefix("root_hash=cmvm-sha256-v1:")
        .expect("hash line");
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    // Same inputs, same hash; another RAM size is another machine.
    let again = cmbuild(&["--ram-length", "1Mi", "--ram-image", image, "--final-hash"]);
    assert_eq!(stderr(&again), stderr(&o));
    let other = cmbuild(&["--ram-length", "2Mi", "--ram-image", image, "--final-hash"]);
    assert_ne!(stderr(&other).lines().nth(1), Some(lines[1].as_str()));
}

#[test]
fn max_mcycle_stops_with_124() {
    let tmp = tempfile::tempdir().unwrap();
    let image = write_image(tmp.path());
    let o = cmbuild(&[
        "--ram-length",
        "1Mi",
        "--ram-image",
        image.to_str().unwrap(),
        "--max-mcycle",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(124));
    assert_eq!(o.stdout, b"A", "the putchar is the fifth instruction");
    assert_eq!(stderr(&o), "cmbuild-machine: break=max-mcycle mcycle=5\n");
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let o = cmbuild(&["--ram-image", "/nonexistent/prog.bin"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/prog.bin"),
        "{}",
        stderr(&o)
    );
    let o = cmbuild(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nothing to run"), "{}", stderr(&o));
    let o = cmbuild(&["--ram-length", "12Q", "--ram-image", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cmbuild(&["--flash-drive", "label:x", "--ram-image", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("filename:PATH"), "{}", stderr(&o));
}

#[test]
fn no_jit_interprets_with_identical_results() {
    // A loop hot enough to be translated: 98304 iterations of addi + bnez, then halt.
    const LOOP: [u32; 7] = [
        0x0001_82b7, // lui t0, 0x18
        0xfff2_8293, // addi t0, t0, -1
        0xfe02_9ee3, // bnez t0, -4
        0x4000_82b7, // lui t0, 0x40008
        0x0010_0313, // addi t1, zero, 1      (exit code 0)
        0x0062_b023, // sd t1, 0(t0)
        0x0000_006f, // j .
    ];
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("loop.bin");
    let bytes: Vec<u8> = LOOP.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let path = path.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--ram-length", "1Mi", "--ram-image", path, "--final-hash"];
        args.extend_from_slice(extra);
        let o = cmbuild(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stderr(&o)
    };
    let translated = run(&[]);
    let interpreted = run(&["--no-jit"]);
    assert!(
        translated.starts_with("cmbuild-machine: break=halted exit_code=0 mcycle=196612\n"),
        "{translated}"
    );
    assert_eq!(translated, interpreted);
}

#[test]
fn the_guest_console_reaches_the_terminal_sanitised() {
    // The same program printing ESC instead of "A": an escape sequence could forge output.
    let mut program = PRINT_A_EXIT_3;
    program[3] = 0x01b3_8393; // addi t2, t2, 0x1b
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("esc.bin");
    let bytes: Vec<u8> = program.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let o = cmbuild(&["--ram-length", "1Mi", "--ram-image", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(o.stdout, b"\\x1b");
}

/// `--perf-map` appends one well-formed `START SIZE name` line per piece of translated
/// code (blocks, their slow paths, the shared code) to /tmp/perf-<pid>.map, the ranges
/// disjoint, and changes no result.
#[test]
fn perf_map_names_translated_blocks_and_changes_nothing() {
    use cmbuild_machine::bench::{memory_loop, Platform};
    let tmp = tempfile::tempdir().unwrap();
    let program = memory_loop(2_000_000, Platform::Cmvm);
    let image = tmp.path().join("loop.bin");
    std::fs::write(&image, &program.image).unwrap();
    let args = [
        "machine",
        "run",
        "--ram-length",
        "16Mi",
        "--ram-image",
        image.to_str().unwrap(),
        "--final-hash",
    ];
    let plain = Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .output()
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .arg("--perf-map")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let map_path = format!("/tmp/perf-{}.map", child.id());
    let mapped = child.wait_with_output().unwrap();
    let map = std::fs::read_to_string(&map_path).unwrap();
    std::fs::remove_file(&map_path).unwrap();
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert_eq!(
        (mapped.status.code(), stderr(&mapped)),
        (plain.status.code(), stderr(&plain))
    );
    let mut ranges = Vec::new();
    let (mut blocks, mut cold) = (0, 0);
    for line in map.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "{line:?}");
        let start = u64::from_str_radix(f[0], 16).unwrap();
        let size = u64::from_str_radix(f[1], 16).unwrap();
        assert!(size > 0, "{line:?}");
        match f[2].split(':').collect::<Vec<_>>()[..] {
            ["rv", "entry" | "exit" | "chain" | "load" | "exec"] => {}
            ["rv", pc, "cold"] => {
                assert!(
                    u64::from_str_radix(pc, 16).unwrap() >= 0x8000_0000,
                    "{line:?}"
                );
                cold += 1;
            }
            ["rv", pc, insns] => {
                let pc = u64::from_str_radix(pc, 16).unwrap();
                let insns: u32 = insns.parse().unwrap();
                assert!(pc >= 0x8000_0000 && (1..=64).contains(&insns), "{line:?}");
                blocks += 1;
            }
            _ => panic!("{line:?}"),
        }
        ranges.push((start, start + size));
    }
    assert!(blocks > 0 && cold > 0 && cold <= blocks, "{map}");
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {w:x?}");
    }
    // All inside one code region (256 MiB).
    assert!(ranges.last().unwrap().1 - ranges[0].0 <= 256 << 20);
}
