//! Differential test of the whole hart against QEMU, and determinism of the machine.
//!
//! `differential_against_qemu`: seeded random blocks of RV64IMAFDC code (see
//! `differential/gen.rs`) run once under `qemu-riscv64` (Linux user mode) and once on the
//! machine (bare metal, the blocks in U-mode); each block's registers, `fcsr`, scratch
//! buffer and illegal-instruction traps must come out identical. A differing block is
//! shrunk by removing instructions while it still differs, and the report lists the
//! shrunken block with its starting values.
//!
//! Environment: `DIFFTEST_SEED` (default fixed), `DIFFTEST_BLOCKS` (default 200),
//! `DIFFTEST_LEN` (items per block, default 64), `DIFFTEST_SHRINK` (how many differing
//! blocks to shrink, default 3), `DIFFTEST_ENCODINGS` (extra percentage of random
//! instruction encodings, default 0). Without the cross tools or QEMU the tests print a loud
//! SKIP, or fail when `CI=true`.
//!
//! `mmu_and_traps_against_qemu_system`: random page tables, privilege and `mstatus`
//! bits, with loads, stores, AMOs and jumps through them, in bare metal on the machine and
//! on `qemu-system-riscv64 -M spike` (see `differential/mmu.rs`): registers, the log of
//! traps (`mcause`, `mtval`, `mepc`), the page-table entries (A/D bits) and the data pages
//! must agree. `DIFFTEST_MMU_BLOCKS` (default 200) sets the number of blocks.
//!
//! The determinism tests run a bare-metal program with timer interrupts, `wfi` and console
//! output twice, interrupted and resumed, and through a saved state, and require the same
//! `mcycle`, console bytes and state hash every time.

#[path = "differential/gen.rs"]
mod gen;
#[path = "differential/mmu.rs"]
mod mmu;
#[path = "differential/program.rs"]
mod program;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use cmbuild_machine::machine::{Break, Machine, MachineConfig};
use gen::{Block, Generator, Item, Rng};
use program::{judge, Verdict, CC, NM, OBJCOPY, QEMU};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        }
        Err(_) => default,
    }
}

fn tool_exists(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the tools in `needed` exist; otherwise a loud SKIP (or a panic under CI).
fn tools_present(test: &str, needed: &[&str]) -> bool {
    let missing: Vec<&str> = needed.iter().copied().filter(|t| !tool_exists(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test} needs {} (Debian: gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu qemu-user qemu-system-misc)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!!!! SKIP: {msg} !!!!!!!!!!\n");
    false
}

fn work_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn still_differs(v: &Verdict) -> bool {
    matches!(v, Verdict::Differ(_) | Verdict::MachineStopped(_))
}

/// Shrinks `block` (which differs from QEMU) by removing items while it keeps differing.
/// Each round runs every single-item removal as one program; if several removals keep the
/// difference, removing all of them at once is tried first.
fn shrink(dir: &Path, block: &Block) -> (Block, Verdict) {
    let mut cur = block.clone();
    let mut verdict = Verdict::Unknown("not run".into());
    for round in 0.. {
        let removable: Vec<usize> = (0..cur.items.len())
            .filter(|&i| cur.items[i].removable)
            .collect();
        let without = |drop: &[usize]| Block {
            init: cur.init.clone(),
            items: cur
                .items
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, it)| it.clone())
                .collect::<Vec<Item>>(),
        };
        let mut candidates: Vec<Block> = removable.iter().map(|&i| without(&[i])).collect();
        candidates.push(cur.clone());
        let (verdicts, _) = match judge(dir, &format!("shrink{round}"), &candidates) {
            Ok(r) => r,
            Err(e) => panic!("shrinking: {e}"),
        };
        verdict = verdicts.last().expect("current block").clone();
        let keep: Vec<usize> = removable
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| still_differs(v))
            .map(|(&i, _)| i)
            .collect();
        if keep.is_empty() {
            break;
        }
        let all = without(&keep);
        let (v, _) = judge(
            dir,
            &format!("shrink{round}all"),
            std::slice::from_ref(&all),
        )
        .unwrap_or_else(|e| panic!("shrinking: {e}"));
        cur = if still_differs(&v[0]) {
            all
        } else {
            without(&keep[..1])
        };
    }
    (cur, verdict)
}

/// The block's code and the starting values of the registers it names.
fn describe(block: &Block) -> String {
    let mut s = String::new();
    // Labels nothing jumps to any more are noise.
    let code: Vec<&str> = block
        .items
        .iter()
        .map(|i| i.text.as_str())
        .filter(|t| match t.strip_suffix(':') {
            Some(label) => block.items.iter().any(|i| {
                i.text
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '@'))
                    .any(|tok| tok == label)
                    && !i.text.ends_with(':')
            }),
            None => true,
        })
        .collect();
    let code = code.join("\n\t");
    s += &format!("\t{code}\n");
    let mut regs: Vec<String> = Vec::new();
    for tok in code.split(|c: char| !c.is_ascii_alphanumeric()) {
        let is_reg = tok.len() > 1
            && (tok.starts_with('x') || tok.starts_with('f'))
            && tok[1..].parse::<usize>().is_ok_and(|n| n < 32);
        if is_reg && !regs.iter().any(|r| r == tok) {
            regs.push(tok.to_string());
        }
    }
    s += "  starting values:";
    for r in &regs {
        let n: usize = r[1..].parse().expect("register number");
        let v = match (r.as_bytes()[0], n) {
            (b'x', 2 | 8) => {
                s += &format!(" {r}=buffer");
                continue;
            }
            (b'x', _) => block.init.x[n],
            _ => block.init.f[n],
        };
        s += &format!(" {r}={v:#x}");
    }
    s += &format!(" fcsr={:#x}\n", block.init.fcsr);
    if code.contains('(') {
        s += "  buffer (64-bit words from offset 0):";
        for (i, w) in block.init.buf.chunks(8).enumerate() {
            if i % 4 == 0 {
                s += "\n   ";
            }
            s += &format!(" {:#018x}", u64::from_le_bytes(w.try_into().expect("8")));
        }
        s += "\n";
    }
    s
}

#[test]
fn differential_against_qemu() {
    if !tools_present("the differential test", &[CC, OBJCOPY, NM, QEMU]) {
        return;
    }
    let seed = env_u64("DIFFTEST_SEED", 0x5eed_0001);
    let nblocks = env_u64("DIFFTEST_BLOCKS", 200) as usize;
    let len = env_u64("DIFFTEST_LEN", 64) as usize;
    let nshrink = env_u64("DIFFTEST_SHRINK", 3) as usize;
    let encodings = env_u64("DIFFTEST_ENCODINGS", 0).min(100);
    const PER_PROGRAM: usize = 50;
    let dir = work_dir("differential");
    let mut rng = Rng::new(seed);
    let blocks: Vec<Block> = (0..nblocks)
        .map(|_| Generator::block(&mut rng, len, encodings))
        .collect();

    let mut failures: Vec<(usize, Verdict)> = Vec::new();
    let mut same = 0;
    for (p, chunk) in blocks.chunks(PER_PROGRAM).enumerate() {
        let (verdicts, _) =
            judge(&dir, &format!("prog{p}"), chunk).unwrap_or_else(|e| panic!("{e}"));
        for (i, v) in verdicts.into_iter().enumerate() {
            let k = p * PER_PROGRAM + i;
            match v {
                Verdict::Same => same += 1,
                Verdict::Unknown(why) if why.starts_with("an earlier") => {}
                Verdict::Unknown(why) => {
                    panic!("QEMU did not run block {k} (a harness bug): {why}")
                }
                v => failures.push((k, v)),
            }
        }
    }
    eprintln!("differential: seed {seed:#x}: {same} of {nblocks} blocks of {len} items identical");
    if failures.is_empty() {
        assert_eq!(same, nblocks, "every block must have run on both sides");
        return;
    }
    let mut report = format!(
        "{} of {nblocks} blocks differ from QEMU (DIFFTEST_SEED={seed:#x}, DIFFTEST_LEN={len})\n",
        failures.len()
    );
    for (k, v) in failures.iter().take(nshrink) {
        let (small, sv) = shrink(&dir, &blocks[*k]);
        report += &format!("\nblock {k}: {v:?}\nshrunk to:\n{}", describe(&small));
        match sv {
            Verdict::Differ(lines) => {
                for l in lines {
                    report += &format!("  {l}\n");
                }
            }
            other => report += &format!("  {other:?}\n"),
        }
    }
    let rest: Vec<String> = failures
        .iter()
        .skip(nshrink)
        .map(|(k, _)| k.to_string())
        .collect();
    if !rest.is_empty() {
        report += &format!("\nalso differing (not shrunk): blocks {}\n", rest.join(" "));
    }
    panic!("{report}");
}

#[test]
fn mmu_and_traps_against_qemu_system() {
    if !tools_present(
        "the MMU differential test",
        &[CC, OBJCOPY, NM, mmu::QEMU_SYSTEM],
    ) {
        return;
    }
    let seed = env_u64("DIFFTEST_SEED", 0x5eed_0001);
    let nblocks = env_u64("DIFFTEST_MMU_BLOCKS", 200) as usize;
    let dir = work_dir("mmu");
    let mut same = 0;
    let mut reports = Vec::new();
    // Programs of at most 100 blocks (each block's page tables need 64 KiB of RAM).
    for (p, start) in (0..nblocks).step_by(100).enumerate() {
        let n = (nblocks - start).min(100);
        let (ok, r) =
            mmu::run(&dir, seed.wrapping_add(p as u64), n, start).unwrap_or_else(|e| panic!("{e}"));
        same += ok;
        reports.extend(r);
    }
    eprintln!("mmu differential: seed {seed:#x}: {same} of {nblocks} blocks identical");
    if !reports.is_empty() {
        panic!(
            "{} of {nblocks} MMU blocks differ from QEMU (DIFFTEST_SEED={seed:#x}); first ones:\n{}",
            reports.len(),
            reports.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
                + "\nfirst difference of each block:\n"
                + &reports
                    .iter()
                    .map(|r| r.lines().take(2).collect::<Vec<_>>().join(""))
                    .collect::<Vec<_>>()
                    .join("\n")
        );
    }
}

/// A block of the given code, starting from a fixed random state.
fn block_of(code: &[&str]) -> Block {
    Block {
        init: gen::Init::random(&mut Rng::new(1)),
        items: code
            .iter()
            .map(|t| Item {
                text: t.to_string(),
                removable: true,
            })
            .collect(),
    }
}

/// The harness must see what is there: illegal instructions counted and skipped alike on
/// both sides, a difference (`emit` sits at different addresses in the two wrappers), and
/// a stop (an `ecall` other than the final exit stops the machine while Linux serves it).
#[test]
fn harness_reports_planted_differences() {
    if !tools_present("the differential harness test", &[CC, OBJCOPY, NM, QEMU]) {
        return;
    }
    let blocks = [
        block_of(&[
            "addi x6, x7, 1",
            ".4byte 0x0000007b",
            ".2byte 0",
            "addi x6, x6, 1",
        ]),
        block_of(&["lla x5, emit", "addi x6, x7, 1"]),
        block_of(&["li x17, 172", "ecall"]),
        block_of(&["addi x6, x7, 1"]),
    ];
    let (verdicts, built) =
        judge(&work_dir("planted"), "planted", &blocks).unwrap_or_else(|e| panic!("{e}"));
    // Both sides skipped the two illegal instructions (custom-3 and the all-zero
    // compressed word), and agree on where they were.
    assert_eq!(verdicts[0], Verdict::Same);
    let slot = &built.run_qemu(blocks.len()).slots[0];
    let word = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8"));
    assert_eq!(word(program::TRAPS_AT), 2);
    assert_eq!(
        word(program::TRAP_PC_SUM_AT),
        built.symbol("i0_1") + built.symbol("i0_2")
    );
    match &verdicts[1] {
        Verdict::Differ(lines) => {
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(lines[0].starts_with("x5: qemu 0x00000000800"), "{lines:?}");
        }
        v => panic!("expected a difference in x5, got {v:?}"),
    }
    match &verdicts[2] {
        Verdict::MachineStopped(why) => {
            assert!(
                why.contains("block 2 at i2_1") && why.contains("mcause 8"),
                "{why}"
            )
        }
        v => panic!("expected the machine to trap, got {v:?}"),
    }
    assert!(
        matches!(&verdicts[3], Verdict::Unknown(_)),
        "{:?}",
        verdicts[3]
    );
}

/// Everything a run's outcome consists of.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    brk: Break,
    mcycle: u64,
    console: Vec<u8>,
    hash: String,
}

/// The determinism program's machine configuration, built once for all tests (they run
/// in parallel and would otherwise race on the build directory).
fn determinism_config() -> Option<MachineConfig> {
    static IMAGE: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let image = IMAGE.get_or_init(|| {
        if !tools_present("the determinism tests", &[CC, OBJCOPY]) {
            return None;
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential/determinism.S");
        let image = program::build_bare_image(&work_dir("determinism"), &src)
            .unwrap_or_else(|e| panic!("{e}"));
        Some(image)
    });
    Some(MachineConfig {
        ram_length: 8 << 20,
        ram_image: Some(image.clone()?),
        ..MachineConfig::default()
    })
}

/// Far more than the program needs (about half a million instructions).
const LIMIT: u64 = 50_000_000;

/// Runs a fresh machine to the end.
fn run_whole(config: &MachineConfig) -> Outcome {
    let mut m = Machine::new(config).expect("machine");
    let brk = m.run(LIMIT);
    let console = m.drain_console();
    Outcome {
        brk,
        mcycle: m.mcycle(),
        console,
        hash: m.root_hash(),
    }
}

/// Runs `m` on to the end, prefixing the console bytes already collected.
fn finish(mut m: Machine, mut console: Vec<u8>) -> Outcome {
    let brk = m.run(LIMIT);
    console.extend(m.drain_console());
    let hash = m.root_hash();
    let scratch = m.root_hash_bytes();
    assert_eq!(
        scratch,
        m.root_hash_from_scratch(),
        "the incremental state hash must equal the one recomputed from scratch"
    );
    Outcome {
        brk,
        mcycle: m.mcycle(),
        console,
        hash,
    }
}

#[test]
fn same_program_twice_gives_same_mcycle_console_and_hash() {
    let Some(config) = determinism_config() else {
        return;
    };
    let first = run_whole(&config);
    assert_eq!(first.brk, Break::Halted(0), "console: {:?}", first.console);
    // 24 ticks, each printing a letter, then the checksum line.
    let text = String::from_utf8_lossy(&first.console).to_string();
    assert!(
        text.starts_with("bcdefghijklmnopabcdefghi\n") && text.len() == 24 + 1 + 16 + 1,
        "unexpected console output {text:?}"
    );
    let second = run_whole(&config);
    assert_eq!(first, second);
    eprintln!(
        "determinism: mcycle {} console {:?} {}",
        first.mcycle, text, first.hash
    );
}

#[test]
fn interrupted_run_resumes_identically() {
    let Some(config) = determinism_config() else {
        return;
    };
    let whole = run_whole(&config);
    assert_eq!(whole.brk, Break::Halted(0));
    // Stop at several odd points (between ticks, inside the work loop), hashing each time
    // so that the incremental page trees are updated mid-run too.
    let mut m = Machine::new(&config).expect("machine");
    let mut console = Vec::new();
    for k in 1..=31u64 {
        let limit = whole.mcycle * k / 32 + k;
        assert_eq!(m.run(limit), Break::MaxMcycle);
        assert_eq!(m.mcycle(), limit, "a run must stop exactly at its limit");
        console.extend(m.drain_console());
        let _ = m.root_hash();
    }
    assert_eq!(finish(m, console), whole);
}

#[test]
fn saved_state_resumes_identically() {
    let Some(config) = determinism_config() else {
        return;
    };
    let whole = run_whole(&config);
    assert_eq!(whole.brk, Break::Halted(0));
    for limit in [1, whole.mcycle / 3, whole.mcycle - 1] {
        let mut m = Machine::new(&config).expect("machine");
        assert_eq!(m.run(limit), Break::MaxMcycle);
        let console = m.drain_console();
        let mut state = Vec::new();
        m.save_state(&mut state);
        let hash_at_stop = m.root_hash();

        // A fresh machine, its state and RAM replaced by the saved ones.
        let mut r = Machine::new(&config).expect("machine");
        r.load_state(&state).expect("load the saved state");
        assert!(r.bus.ram.write_bytes(0, m.bus.ram.bytes()), "RAM fits");
        r.memory_replaced();
        assert_eq!(
            r.root_hash(),
            hash_at_stop,
            "restored state hashes as saved"
        );
        assert_eq!(finish(r, console), whole, "resumed from mcycle {limit}");
    }
}
