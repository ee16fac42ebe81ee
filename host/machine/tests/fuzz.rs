//! Property tests on random inputs (stable toolchain, no extra dependencies; a seeded
//! xorshift generator, so every failure names the seed that reproduces it).
//!
//! - Random programs — hot loops over ALU, multiply/divide, aligned and misaligned loads
//!   and stores, CSR instructions (`sstatus` and the trap registers), self-modifying code
//!   (a loop rewrites one of its own instructions), and S-mode phases that switch `satp`
//!   between page tables (with `sfence.vma`, in the hot loop too) and access memory
//!   through aliased mappings (a user page, reached while SUM is set, and a read-only
//!   one) — run to the same
//!   `mcycle`, console and state hash translated and interpreted, and also when the run
//!   is cut at a random `mcycle`, stored as a snapshot and resumed.
//! - Random mutations of a valid snapshot's files (the manifest, the state, the device
//!   tree, the pages files; resealed as a forger would, with the state hash recomputed)
//!   are loaded: loading never panics, and gives either a clear error or a machine, which
//!   then runs 10,000 instructions translated and interpreted to the same state hash.
//!
//! Budget: `CMBUILD_FUZZ_CASES` cases per property (default 64, a few seconds); the heavy
//! run (`--ignored`) runs 2000 of each, with seeds that do not overlap the default run's.
//! `CMBUILD_FUZZ_SEED` picks the first seed. Each property prints its executions per
//! second.

use std::collections::BTreeMap;
use std::time::Instant;

use cmbuild_machine::board::RAM_BASE;
use cmbuild_machine::machine::{Break, FlashConfig, Machine, MachineConfig};
use cmbuild_machine::snapshot::{self, SnapshotConfig, SnapshotError};
use sha2::Digest;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Host time, for the executions-per-second report only (it never reaches a machine).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// The default run's budget and first seed.
fn light() -> (u64, u64) {
    (
        env_u64("CMBUILD_FUZZ_CASES", 64),
        env_u64("CMBUILD_FUZZ_SEED", 0x00c0_ffee),
    )
}

/// The heavy run's budget and first seed.
fn heavy() -> (u64, u64) {
    (
        env_u64("CMBUILD_FUZZ_CASES", 2000),
        env_u64("CMBUILD_FUZZ_SEED", 0x0100_0000),
    )
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Prints the failing seed when a case panics.
struct Seed(&'static str, u64);

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {:#x}: rerun with CMBUILD_FUZZ_SEED={} CMBUILD_FUZZ_CASES=1",
                self.0, self.1, self.1
            );
        }
    }
}

// ---- A small RV64 encoder. ----

fn r(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    f7 << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op
}
fn i(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    ((imm as u32) & 0xfff) << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op
}
fn s(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let imm = imm as u32;
    (imm >> 5 & 0x7f) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (imm & 31) << 7 | 0x23
}
fn b(off: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let o = off as u32;
    (o >> 12 & 1) << 31
        | (o >> 5 & 0x3f) << 25
        | rs2 << 20
        | rs1 << 15
        | f3 << 12
        | (o >> 1 & 0xf) << 8
        | (o >> 11 & 1) << 7
        | 0x63
}
fn jal(off: i32, rd: u32) -> u32 {
    let o = off as u32;
    (o >> 20 & 1) << 31
        | (o >> 1 & 0x3ff) << 21
        | (o >> 11 & 1) << 20
        | (o >> 12 & 0xff) << 12
        | rd << 7
        | 0x6f
}
fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 & 0xfffff) << 12 | rd << 7 | 0x37
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(imm, rs1, 0, rd, 0x13)
}
fn csr(f3: u32, rd: u32, csr: u32, rs1: u32) -> u32 {
    csr << 20 | rs1 << 15 | f3 << 12 | rd << 7 | 0x73
}
const MRET: u32 = 0x3020_0073;
const ECALL: u32 = 0x0000_0073;
const SFENCE_VMA: u32 = 0x1200_0073;
const FENCE_I: u32 = 0x0000_100f;

/// A program being assembled at `RAM_BASE + 4 * words.len()`.
#[derive(Default)]
struct Asm {
    words: Vec<u32>,
}

impl Asm {
    fn pc(&self) -> i64 {
        4 * self.words.len() as i64
    }
    fn emit(&mut self, w: u32) {
        self.words.push(w);
    }
    /// `rd` = the sign-extended 32-bit `v`.
    fn li32(&mut self, rd: u32, v: u32) {
        let lo = ((v & 0xfff) as i32) << 20 >> 20;
        let hi = v.wrapping_sub(lo as u32) >> 12;
        self.emit(lui(rd, hi));
        self.emit(addi(rd, rd, lo));
    }
    /// `rd` = the zero-extended 32-bit `v`.
    fn li32u(&mut self, rd: u32, v: u32) {
        self.li32(rd, v);
        self.emit(i(32, rd, 1, rd, 0x13)); // slli
        self.emit(i(32, rd, 5, rd, 0x13)); // srli
    }
    /// `rd` = `RAM_BASE + at` (an absolute address).
    fn la(&mut self, rd: u32, at: i64) {
        self.li32u(rd, (RAM_BASE as i64 + at) as u32);
    }
}

const RAM: u64 = 2 << 20;
const DATA: u64 = 0x1_0000;
const TABLE_A: u64 = 0x2_0000;
const TABLE_B: u64 = 0x2_1000;
/// Virtual address of a second (aliased) mapping of RAM, a writable user page under table A
/// (S-mode reaches it with `sstatus.SUM` set) and read-only under table B.
const ALIAS: u64 = 0xc000_0000;
/// Registers random instructions write.
const DEST: [u32; 12] = [10, 11, 12, 13, 14, 15, 16, 17, 28, 29, 30, 31];

/// One random instruction that writes only `DEST` registers and memory in the data area
/// (addressed from x5).
fn random_insn(rng: &mut Rng) -> u32 {
    let rd = rng.pick(&DEST);
    let src = |rng: &mut Rng| {
        if rng.one_in(6) {
            0
        } else {
            rng.pick(&DEST)
        }
    };
    let (rs1, rs2) = (src(rng), src(rng));
    match rng.below(10) {
        // Register-register, 64- and 32-bit (some 32-bit encodings do not exist: those
        // are illegal instructions, which the handler skips).
        0 | 1 => {
            let (f7, f3) = rng.pick(&[
                (0, 0),
                (0x20, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (0, 4),
                (0, 5),
                (0x20, 5),
                (0, 6),
                (0, 7),
            ]);
            r(f7, rs2, rs1, f3, rd, rng.pick(&[0x33, 0x3b]))
        }
        // M.
        2 => r(
            1,
            rs2,
            rs1,
            rng.below(8) as u32,
            rd,
            rng.pick(&[0x33, 0x3b]),
        ),
        3 | 4 => {
            let f3 = rng.pick(&[0, 2, 3, 4, 6, 7]);
            i(rng.below(4096) as i32 - 2048, rs1, f3, rd, 0x13)
        }
        5 => {
            let (f3, top) = rng.pick(&[(1, 0), (5, 0), (5, 0x400)]);
            i(top | rng.below(64) as i32, rs1, f3, rd, 0x13)
        }
        6 => lui(rd, rng.next() as u32),
        7 => {
            let f3 = rng.pick(&[0, 1, 2, 3, 4, 5, 6]);
            i(rng.below(2040) as i32, 5, f3, rd, 0x03)
        }
        // The CSRs translated code reads and writes itself: `sstatus` (SUM and MXR change
        // what the S-mode loops may access through the alias, a user page under table A),
        // the trap registers of S and M (M's are illegal from S: the handler skips them).
        8 if rng.one_in(2) => {
            let which = rng.pick(&[0x100, 0x100, 0x140, 0x141, 0x142, 0x143, 0x340, 0x343]);
            let f3 = rng.pick(&[1, 2, 3, 5, 6, 7]);
            // An immediate form's rs1 field is the immediate.
            let rs1 = if f3 >= 5 { rng.below(32) as u32 } else { rs1 };
            csr(f3, rd, which, rs1)
        }
        _ => s(rng.below(2040) as i32, rs2, 5, rng.below(4) as u32),
    }
}

/// A loop of `n` iterations over a random body; with `patch`, the body rewrites one of
/// its own instructions each time round (and executes it), with `satp`, it switches
/// between the two page tables (held in x20, x21) in the middle.
fn random_loop(a: &mut Asm, rng: &mut Rng, patch: bool, satp: bool) {
    let n = 1 + rng.below(400) as u32;
    a.li32(6, n);
    let top = a.pc();
    let body = 3 + rng.below(12);
    let slot_at = rng.below(body);
    for k in 0..body {
        if patch && k == slot_at {
            // x9 = the slot's address, x7 = a new ALU instruction (never a memory access,
            // so that its address register needs no care); store it over the slot, which
            // comes right after: la (4 words), li32 (2), sw, fence.i.
            let slot = a.pc() + 8 * 4;
            a.la(9, slot);
            let new = if rng.one_in(2) {
                let f3 = rng.pick(&[0, 4, 6, 7]);
                r(
                    0,
                    rng.pick(&DEST),
                    rng.pick(&DEST),
                    f3,
                    rng.pick(&DEST),
                    0x33,
                )
            } else {
                addi(
                    rng.pick(&DEST),
                    rng.pick(&DEST),
                    rng.below(4096) as i32 - 2048,
                )
            };
            a.li32(7, new);
            a.emit(s(0, 7, 9, 2)); // sw x7, 0(x9)
            a.emit(FENCE_I);
            assert_eq!(a.pc(), slot);
            a.emit(addi(0, 0, 0)); // the slot
            continue;
        }
        if satp && k == body / 2 {
            let which = if rng.one_in(2) { 20 } else { 21 };
            a.emit(csr(1, 0, 0x180, which)); // csrw satp
            a.emit(SFENCE_VMA);
        }
        if rng.one_in(6) {
            // A forward branch over the next instruction.
            let (r1, r2) = (rng.pick(&DEST), rng.pick(&DEST));
            a.emit(b(8, r2, r1, rng.pick(&[0, 1, 4, 5, 6, 7])));
        }
        a.emit(random_insn(rng));
    }
    a.emit(addi(6, 6, -1));
    let back = top - a.pc();
    a.emit(b(back as i32, 0, 6, 1)); // bnez x6, top
}

/// A random program (see the module docs) and the RAM image holding it, its data and
/// its page tables.
fn random_image(rng: &mut Rng) -> Vec<u8> {
    let mut a = Asm::default();
    a.emit(0); // j start, patched below
               // The M-mode trap handler at +4: ecall (from S or M) halts; anything else (a fault
               // through the read-only alias, a misaligned access that faults) is skipped.
    let handler = a.pc();
    a.emit(csr(2, 3, 0x342, 0)); // csrr x3, mcause
    a.emit(addi(4, 0, 9));
    let to_halt_1 = a.words.len();
    a.emit(0);
    a.emit(addi(4, 0, 11));
    let to_halt_2 = a.words.len();
    a.emit(0);
    a.emit(csr(2, 3, 0x341, 0)); // csrr x3, mepc
    a.emit(addi(3, 3, 4));
    a.emit(csr(1, 0, 0x341, 3)); // csrw mepc, x3
    a.emit(MRET);
    let halt = a.pc();
    a.words[to_halt_1] = b((halt - 4 * to_halt_1 as i64) as i32, 4, 3, 0);
    a.words[to_halt_2] = b((halt - 4 * to_halt_2 as i64) as i32, 4, 3, 0);
    a.li32(3, 0x4000_8000);
    a.emit(addi(4, 0, 1));
    a.emit(s(0, 4, 3, 3)); // sd x4, 0(x3): tohost = 1, halt with code 0
    a.emit(jal(0, 0));
    let start = a.pc();
    a.words[0] = jal(start as i32, 0);
    a.la(3, handler);
    a.emit(csr(1, 0, 0x305, 3)); // csrw mtvec
    for &rd in &DEST {
        a.li32(rd, rng.next() as u32);
    }
    a.la(5, DATA as i64);
    // Phase 1: M-mode, no translation.
    for _ in 0..1 + rng.below(3) {
        let patch = rng.one_in(2);
        random_loop(&mut a, rng, patch, false);
    }
    // Phase 2: S-mode through the page tables.
    for (rd, table) in [(20, TABLE_A), (21, TABLE_B)] {
        a.li32u(rd, ((RAM_BASE + table) >> 12) as u32);
        a.emit(addi(3, 0, 8));
        a.emit(i(60, 3, 1, 3, 0x13)); // slli x3, x3, 60
        a.emit(r(0, 3, rd, 6, rd, 0x33)); // or rd, rd, x3
    }
    a.emit(lui(3, 1)); // x3 = 0x1000 ...
    a.emit(addi(3, 3, -0x800)); // ... - 0x800 = MPP bit 11 (S)
    a.emit(csr(2, 0, 0x300, 3)); // csrs mstatus
    let sphase_ref = a.words.len();
    a.emit(0); // la x3, sphase: four words, patched below
    a.emit(0);
    a.emit(0);
    a.emit(0);
    a.emit(csr(1, 0, 0x341, 3)); // csrw mepc
    a.emit(MRET);
    let sphase = a.pc();
    let mut tmp = Asm::default();
    tmp.la(3, sphase);
    a.words[sphase_ref..sphase_ref + 4].copy_from_slice(&tmp.words);
    a.emit(csr(1, 0, 0x180, 20)); // csrw satp, x20 (table A)
    a.emit(SFENCE_VMA);
    for _ in 0..1 + rng.below(3) {
        if rng.one_in(2) {
            a.li32u(5, (ALIAS + DATA) as u32); // through the alias
        } else {
            a.la(5, DATA as i64);
        }
        let (patch, satp) = (rng.one_in(3), rng.one_in(2));
        random_loop(&mut a, rng, patch, satp);
    }
    a.emit(ECALL);

    let mut image = vec![0u8; (TABLE_B + 4096) as usize];
    for (k, w) in a.words.iter().enumerate() {
        image[4 * k..4 * k + 4].copy_from_slice(&w.to_le_bytes());
    }
    assert!((4 * a.words.len() as u64) < DATA, "program too long");
    for k in 0..512 {
        image[DATA as usize + 8 * k..][..8].copy_from_slice(&rng.next().to_le_bytes());
    }
    // Sv39 gigapages: VA 0x8000_0000 and the alias both map PA 0x8000_0000.
    let pte = |flags: u64| (RAM_BASE >> 12) << 10 | flags;
    let (rwx, r) = (0xcf, 0xcb); // V R W X A D; V R X A D
    let user = rwx | 0x10; // S-mode reaches it only with SUM set
    for (table, alias_flags) in [(TABLE_A, user), (TABLE_B, r)] {
        let t = table as usize;
        image[t + 8 * 2..][..8].copy_from_slice(&pte(rwx).to_le_bytes());
        image[t + 8 * 3..][..8].copy_from_slice(&pte(alias_flags).to_le_bytes());
    }
    image
}

fn program_config(image: Vec<u8>) -> MachineConfig {
    MachineConfig {
        ram_length: RAM,
        ram_image: Some(image),
        bootargs: "fuzz".into(),
        flash_drives: vec![FlashConfig {
            label: "d".into(),
            image: vec![0x5a; 5000],
            shared: false,
        }],
        ..MachineConfig::default()
    }
}

/// What a run ends in.
#[derive(Debug, PartialEq, Eq)]
struct End {
    brk: Break,
    mcycle: u64,
    hash: String,
    console: Vec<u8>,
}

fn finish(m: &mut Machine, brk: Break, mut console: Vec<u8>) -> End {
    console.extend(m.drain_console());
    End {
        brk,
        mcycle: m.mcycle(),
        hash: m.root_hash(),
        console,
    }
}

const LIMIT: u64 = 2_000_000;

#[test]
fn random_programs_agree_translated_interpreted_and_resumed() {
    random_programs(light());
}

#[test]
#[ignore = "heavy: 2000 random programs (a few minutes)"]
fn random_programs_agree_translated_interpreted_and_resumed_heavy() {
    random_programs(heavy());
}

fn random_programs((cases, first_seed): (u64, u64)) {
    let t = now();
    let (mut runs, mut instructions) = (0u64, 0u64);
    for case in 0..cases {
        let seed = first_seed.wrapping_add(case);
        let _guard = Seed("random program", seed);
        let mut rng = Rng::new(seed);
        let config = program_config(random_image(&mut rng));
        let mut jit = Machine::new(&config).unwrap();
        let brk = jit.run(LIMIT);
        let whole = finish(&mut jit, brk, Vec::new());
        assert_eq!(
            whole.brk,
            Break::Halted(0),
            "seed {seed:#x}: the program must end by its ecall"
        );
        let mut interp = Machine::new(&config).unwrap();
        interp.hart.set_jit(false);
        let brk = interp.run(LIMIT);
        assert_eq!(
            finish(&mut interp, brk, Vec::new()),
            whole,
            "seed {seed:#x}: interpreted"
        );
        // Cut at a random mcycle, through snapshot bytes, and resume.
        let cut = 1 + rng.below(whole.mcycle);
        let mut first = Machine::new(&config).unwrap();
        first.run(cut);
        let console = first.drain_console();
        let files = snapshot::encode(&mut first, &SnapshotConfig::from_config(&config))
            .unwrap()
            .to_map();
        let mut resumed = snapshot::load_files(&files).unwrap().machine;
        resumed.hart.set_jit(rng.one_in(2));
        let brk = resumed.run(LIMIT);
        assert_eq!(
            finish(&mut resumed, brk, console),
            whole,
            "seed {seed:#x}: cut at {cut}"
        );
        runs += 4;
        instructions += 3 * whole.mcycle;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "random programs: {} cases ({} instructions each on average), {runs} runs, {:.0} cases/s, {:.1} M instructions/s",
        cases,
        instructions / 3 / cases.max(1),
        cases as f64 / secs,
        instructions as f64 / secs / 1e6
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reseals the manifest, as anyone can (its checksum is a plain SHA-256).
fn reseal(manifest: &str) -> Vec<u8> {
    let body = match manifest.rfind("checksum ") {
        Some(at) => &manifest[..at],
        None => manifest,
    };
    format!(
        "{body}checksum {}\nend\n",
        hex(&sha2::Sha256::digest(body.as_bytes()))
    )
    .into_bytes()
}

/// Rewrites the manifest's line starting with `key ` (the first one after `after`, if
/// given) to `key value`.
fn set_line(manifest: &str, key: &str, value: &str, after: Option<&str>) -> String {
    let from = after.and_then(|a| manifest.find(a)).unwrap_or(0);
    let needle = format!("\n{key} ");
    let Some(at) = manifest[from..].find(&needle).map(|p| p + from + 1) else {
        return manifest.to_string();
    };
    let end = at + manifest[at..].find('\n').unwrap_or(manifest.len() - at);
    format!("{}{key} {value}{}", &manifest[..at], &manifest[end..])
}

/// Mutates one file of `files` at random; for a file other than the manifest, its
/// manifest entry is updated and resealed (so that the checks behind the digest run).
fn mutate(rng: &mut Rng, files: &mut BTreeMap<String, Vec<u8>>) {
    let names: Vec<String> = files.keys().cloned().collect();
    let name = names[rng.below(names.len() as u64) as usize].clone();
    let bytes = files.get_mut(&name).unwrap();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            _ if bytes.is_empty() => bytes.push(rng.next() as u8),
            0 | 1 => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            2 => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
            3 => {
                // A random or boundary 64-bit value at a random 8-byte-aligned offset.
                let at = (rng.below(bytes.len() as u64) & !7) as usize;
                let random = rng.next();
                let v = rng.pick(&[random, 0, 1, u64::MAX, 1 << 63, RAM_BASE + RAM - 1, 2]);
                for (k, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
            4 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
            _ => bytes.extend((0..1 + rng.below(64)).map(|_| rng.next() as u8)),
        }
    }
    let manifest = String::from_utf8_lossy(&files["manifest"]).into_owned();
    let manifest = if name == "manifest" {
        if rng.one_in(4) {
            return; // leave the seal broken
        }
        manifest
    } else {
        let b = &files[&name];
        set_line(
            &manifest,
            "file",
            &format!("{name} {} {}", b.len(), hex(&sha2::Sha256::digest(b))),
            Some(&format!("\nfile {name} ")),
        )
    };
    files.insert("manifest".into(), reseal(&manifest));
}

/// Loads `files`; where only the recorded mcycle or state hash disagrees with the mutated
/// contents, fixes the manifest as a forger would and loads again.
fn load_forged(files: &mut BTreeMap<String, Vec<u8>>) -> Result<Machine, SnapshotError> {
    for _ in 0..3 {
        let manifest = String::from_utf8_lossy(&files["manifest"]).into_owned();
        let fixed = match snapshot::load_files(files) {
            Ok(s) => return Ok(s.machine),
            Err(SnapshotError::RootHash { computed, .. }) => {
                set_line(&manifest, "root-hash", &computed, None)
            }
            Err(SnapshotError::Mcycle { state, .. }) => {
                set_line(&manifest, "mcycle", &state.to_string(), None)
            }
            Err(e) => return Err(e),
        };
        files.insert("manifest".into(), reseal(&fixed));
    }
    snapshot::load_files(files).map(|s| s.machine)
}

#[test]
fn mutated_snapshots_load_or_fail_cleanly_and_run_the_same_both_ways() {
    mutated_snapshots(light());
}

#[test]
#[ignore = "heavy: 2000 mutated snapshots (about a minute)"]
fn mutated_snapshots_load_or_fail_cleanly_and_run_the_same_both_ways_heavy() {
    mutated_snapshots(heavy());
}

fn mutated_snapshots((cases, first_seed): (u64, u64)) {
    let t = now();
    let (mut loaded, mut refused) = (0u64, BTreeMap::<String, u64>::new());
    let mut rng = Rng::new(first_seed ^ 0x5eed);
    // A few base snapshots, cut at random points of random programs.
    let bases: Vec<BTreeMap<String, Vec<u8>>> = (0..4)
        .map(|_| {
            let config = program_config(random_image(&mut rng));
            let mut m = Machine::new(&config).unwrap();
            m.run(1 + rng.below(200_000));
            snapshot::encode(&mut m, &SnapshotConfig::from_config(&config))
                .unwrap()
                .to_map()
        })
        .collect();
    for case in 0..cases {
        let seed = first_seed.wrapping_add(case);
        let _guard = Seed("snapshot mutation", seed);
        let mut rng = Rng::new(seed);
        let mut files = bases[rng.below(bases.len() as u64) as usize].clone();
        mutate(&mut rng, &mut files);
        let mut a = match load_forged(&mut files) {
            Ok(m) => m,
            Err(e) => {
                let kind = format!("{e:?}");
                let kind = kind.split(['(', ' ', '{']).next().unwrap_or("").to_string();
                assert!(!e.to_string().is_empty());
                *refused.entry(kind).or_default() += 1;
                continue;
            }
        };
        loaded += 1;
        let mut b = snapshot::load_files(&files).unwrap().machine;
        b.hart.set_jit(false);
        let end = a.mcycle().saturating_add(10_000);
        let (ba, bb) = (a.run(end), b.run(end));
        assert_eq!(ba, bb, "seed {seed:#x}");
        assert_eq!(a.mcycle(), b.mcycle(), "seed {seed:#x}");
        assert_eq!(a.drain_console(), b.drain_console(), "seed {seed:#x}");
        assert_eq!(a.root_hash(), b.root_hash(), "seed {seed:#x}");
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "snapshot mutations: {} cases ({loaded} loaded and ran, refused: {refused:?}), {:.0} cases/s",
        cases,
        cases as f64 / secs
    );
    assert!(
        loaded > 0,
        "no mutated snapshot loaded: the harness explores nothing"
    );
}
