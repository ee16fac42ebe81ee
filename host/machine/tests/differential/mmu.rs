//! Differential test of virtual memory and traps against `qemu-system-riscv64 -M spike`.
//!
//! Each block gets random Sv39 or Sv48 page tables (random permission bits, A/D bits,
//! superpages, misaligned superpages, reserved encodings), a random privilege (S, U, or M
//! with `mstatus.MPRV` so that only loads and stores translate) and random
//! `mstatus.SUM`/`MXR`, then runs loads, stores (some misaligned across pages), AMOs,
//! LR/SC, `sfence.vma` and jumps through a 16-page virtual window. An M-mode handler logs every trap (`mcause`, `mtval`, `mepc`)
//! and resumes after the faulting instruction (after the jump, for fetch faults). At the
//! block's `ecall` the handler dumps the registers, the trap log, the page-table entries
//! (hardware sets A and D in them) and a checksum of the data pages into the block's slot.
//!
//! Both programs are bare metal and laid out identically; only the end differs: the QEMU
//! build prints the slots in hex through HTIF (the spike board finds `tohost` by symbol),
//! the machine build halts through the machine's HTIF and the test reads RAM.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use cmbuild_machine::machine::{Break, Machine, MachineConfig};

use super::gen::Rng;
use super::program::{run_tool, symbols, CC, OBJCOPY};

pub const QEMU_SYSTEM: &str = "qemu-system-riscv64";
const QEMU_CPU: &str = "rv64i,m=true,a=true,f=true,d=true,c=true,zicsr=true,zifencei=true,\
                        priv_spec=v1.12.0,s=true,u=true,sv39=true,sv48=true,pmp=true,mmu=true";

const SLOT: usize = 1024;
/// Per block: 16 pages. 0: Sv39 root / Sv48 level 2, 1: level 1, 2: level 0, 3: Sv48
/// root, 4..8: data, 8: a page of `ret` instructions (the jump target).
const AREA_BASE: u64 = 0x8080_0000;
const AREA_SIZE: u64 = 0x1_0000;
/// The 2 MiB a megapage maps.
const MEGA_PA: u64 = 0x8040_0000;
/// The virtual window: level-0 pages at `WINDOW`, the megapage at `WINDOW + 2 MiB`.
const WINDOW: u64 = 0x4000_0000;
const MAX_TRAPS: usize = 16;

const X_AT: usize = 0;
const NTRAPS_AT: usize = 248;
const LOG_AT: usize = 256;
const PTE0_AT: usize = 640;
const PTE1_AT: usize = 768;
const PTE2_AT: usize = 800;
const PTE3_AT: usize = 832;
const SUM_AT: usize = 840;
const DUMP_END: usize = 848;
const _: () = assert!(LOG_AT + 24 * MAX_TRAPS <= PTE0_AT && DUMP_END <= SLOT);

const LINKER_SCRIPT: &str = "OUTPUT_ARCH(riscv)
ENTRY(_start)
SECTIONS
{
  . = 0x80000000;
  .text.init : { *(.text.init) }
  . = 0x80010000;
  .text : { *(.text) }
  . = ALIGN(4096);
  .rodata : { *(.rodata) }
  . = ALIGN(4096);
  .data : { *(.data) }
}
";

/// The M-mode side: start, trap handler, end of block, finish. `area` holds the handler's
/// save area (x1..x31 at 8*i), the current slot at 256, the next block at 264 and the
/// block's page area at 272.
const WRAPPER: &str = r#"
	.section .text.init, "ax"
	.globl _start
_start:
	li t0, -1                   /* PMP entry 0: all memory, RWX, for S and U */
	csrw pmpaddr0, t0
	li t0, 0x1f
	csrw pmpcfg0, t0
	lla t0, trap
	csrw mtvec, t0
	lla t0, area
	csrw mscratch, t0
	lla t0, blocks
	jr t0

	.align 2
trap:
	csrrw sp, mscratch, sp
	.irp r, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	sd x\r, \r*8(sp)
	.endr
	csrr t0, mscratch
	sd t0, 16(sp)               /* the interrupted sp */
	csrr t0, mcause
	addi t1, t0, -8
	addi t2, t0, -9
	beqz t1, block_end
	beqz t2, block_end
	addi t1, t0, -11            /* ecall from M (MPRV blocks) */
	beqz t1, block_end
	ld t1, 256(sp)              /* log the trap in the slot */
	ld t2, 248(t1)
	li t3, 16
	bgeu t2, t3, 1f
	li t3, 24
	mul t3, t3, t2
	add t3, t3, t1
	sd t0, 256(t3)
	csrr t4, mtval
	sd t4, 264(t3)
	csrr t4, mepc
	sd t4, 272(t3)
1:	addi t2, t2, 1
	sd t2, 248(t1)
	addi t1, t0, -1             /* fetch faults resume at the return address */
	addi t2, t0, -12
	beqz t1, 2f
	beqz t2, 2f
	csrr t1, mepc               /* others after the instruction (2 or 4 bytes) */
	lhu t2, 0(t1)
	andi t2, t2, 3
	xori t2, t2, 3
	seqz t2, t2
	slli t2, t2, 1
	addi t1, t1, 2
	add t1, t1, t2
	csrw mepc, t1
	j 3f
2:	ld t1, 8(sp)
	csrw mepc, t1
3:	.irp r, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	ld x\r, \r*8(sp)
	.endr
	csrrw sp, mscratch, sp
	mret

block_end:
	ld t0, 256(sp)              /* registers to the slot */
	li t1, 1
4:	slli t2, t1, 3
	add t3, sp, t2
	ld t3, 0(t3)
	add t4, t0, t2
	sd t3, -8(t4)
	addi t1, t1, 1
	li t2, 32
	bltu t1, t2, 4b
	ld t1, 272(sp)              /* page-table entries: level 0 [0..16], 1 [0..4], 2 [0..4], 3 [0] */
	li t2, 0x2000
	add t2, t1, t2
	addi t3, t0, 640
	li t4, 16
	call copy
	li t2, 0x1000
	add t2, t1, t2
	addi t3, t0, 768
	li t4, 4
	call copy
	mv t2, t1
	addi t3, t0, 800
	li t4, 4
	call copy
	li t2, 0x3000
	add t2, t1, t2
	addi t3, t0, 832
	li t4, 1
	call copy
	li t2, 0x4000               /* checksum of the four data pages */
	add t2, t1, t2
	li t4, 2048
	li t5, 0
	li t6, 0x100000001b3
5:	ld t3, 0(t2)
	xor t5, t5, t3
	mul t5, t5, t6
	addi t2, t2, 8
	addi t4, t4, -1
	bnez t4, 5b
	sd t5, 840(t0)
	csrw mscratch, sp           /* the save area again, for the next block */
	ld t0, 264(sp)
	jr t0

/* Copies t4 words from t2 to t3. */
copy:
	ld t5, 0(t2)
	sd t5, 0(t3)
	addi t2, t2, 8
	addi t3, t3, 8
	addi t4, t4, -1
	bnez t4, copy
	ret

finish:
#ifdef QEMU
	lla s0, slots               /* hex of every slot, through HTIF */
	lla s1, slots_end
6:	ld s2, 0(s0)
	li s3, 60
7:	srl a0, s2, s3
	andi a0, a0, 15
	addi a0, a0, '0'
	li t0, '9'
	ble a0, t0, 8f
	addi a0, a0, 'a' - '9' - 1
8:	call putchar
	addi s3, s3, -4
	bgez s3, 7b
	li a0, '\n'
	call putchar
	addi s0, s0, 8
	bltu s0, s1, 6b
	li t0, 1
	lla t1, tohost
	sd t0, 0(t1)
9:	j 9b
putchar:
	li t0, 0x0101000000000000
	or t0, t0, a0
	lla t1, tohost
	sd t0, 0(t1)
10:	ld t0, 0(t1)
	bnez t0, 10b
	ret
#else
	li t0, 1
	li t1, 0x40008000
	sd t0, 0(t1)
11:	j 11b
#endif
"#;

/// One block: its page tables, mode and code.
struct MmuBlock {
    /// (physical address, value) of every page-table entry written.
    ptes: Vec<(u64, u64)>,
    satp: u64,
    /// `mstatus` bits: MPP, SUM, MXR, MPRV.
    mstatus: u64,
    /// The body runs in M-mode with MPRV set (loads and stores translated as MPP).
    mprv: bool,
    x: [u64; 32],
    seed: u64,
    code: Vec<String>,
}

const V: u64 = 1;
const R: u64 = 2;
const W: u64 = 4;
const X: u64 = 8;
const U: u64 = 16;
const A: u64 = 64;
const D: u64 = 128;

fn pte(pa: u64, flags: u64) -> u64 {
    ((pa >> 12) << 10) | flags
}

fn bit(r: &mut Rng, percent: u64, b: u64) -> u64 {
    if r.below(100) < percent {
        b
    } else {
        0
    }
}

/// Random leaf permissions, biased to valid entries.
fn leaf_flags(r: &mut Rng, user: bool) -> u64 {
    let mut f = bit(r, 95, V) | bit(r, 75, R) | bit(r, 50, W) | bit(r, 30, X);
    f |= bit(r, if user { 85 } else { 20 }, U) | bit(r, 70, A) | bit(r, 50, D);
    if f & (R | W | X) == 0 || f & (R | W | X) == X {
        f |= R; // a leaf (pointers at level 0 are rare, below), not only executable
    }
    if r.one_in(30) {
        f |= 1 << (54 + r.below(10)); // reserved / N / PBMT bits
    }
    f
}

impl MmuBlock {
    fn random(r: &mut Rng, k: usize) -> Self {
        let area = AREA_BASE + k as u64 * AREA_SIZE;
        let page = |i: u64| area + i * 4096;
        // U, S, or M with MPRV (data accesses as U or S, fetches untranslated).
        let mprv = r.one_in(4);
        let user = r.one_in(2);
        let sv48 = r.one_in(3);
        let mut ptes = Vec::new();
        // Code: identity gigapage at 0x8000_0000, user-accessible in U-mode.
        let code_u = if user { U } else { 0 };
        ptes.push((
            page(0) + 2 * 8,
            pte(0x8000_0000, V | R | W | X | A | D | code_u),
        ));
        // The window: level 2 [1] -> level 1 -> level 0.
        ptes.push((page(0) + 8, pte(page(1), V)));
        ptes.push((page(1), pte(page(2), V)));
        // A megapage (sometimes misaligned: a page fault), and an alias of level 0.
        let mega_pa = if r.one_in(6) {
            MEGA_PA + 0x1000
        } else {
            MEGA_PA
        };
        ptes.push((page(1) + 8, pte(mega_pa, leaf_flags(r, user))));
        ptes.push((page(1) + 16, pte(page(2), V | bit(r, 20, W))));
        let mut accessed = Vec::new();
        for i in 0..16 {
            // Data is never executable (it is not code), the `ret` page never writable.
            let (target, mask) = if r.one_in(8) {
                (page(8), !W)
            } else {
                (page(4 + r.below(4)), !X)
            };
            let flags = if r.one_in(25) {
                V // a pointer at level 0: page fault
            } else {
                leaf_flags(r, user) & mask
            };
            ptes.push((page(2) + 8 * i, pte(target, flags)));
            if flags & A != 0 {
                accessed.push(i);
            }
        }
        let root = if sv48 {
            ptes.push((page(3), pte(page(0), V)));
            page(3)
        } else {
            page(0)
        };
        let satp = ((if sv48 { 9 } else { 8 }) << 60) | (root >> 12);
        let mstatus = (if user { 0 } else { 1 << 11 })
            | bit(r, 50, 1 << 18)
            | bit(r, 30, 1 << 19)
            | if mprv { 1 << 17 } else { 0 };
        let mut x = [0u64; 32];
        for v in x.iter_mut().skip(1) {
            *v = r.next() >> r.below(64);
        }
        let mut code = Vec::new();
        let len = 24 + r.below(24);
        while code.len() < len as usize {
            code.push(item(r, user, &accessed));
        }
        Self {
            ptes,
            satp,
            mstatus,
            mprv,
            x,
            seed: r.next(),
            code,
        }
    }
}

/// Registers a block may write: not sp (the handler does not need it, but keep the
/// test's own conventions simple) and not x0.
fn wreg(r: &mut Rng) -> u32 {
    loop {
        let v = r.range(1, 31) as u32;
        if v != 2 {
            return v;
        }
    }
}

/// A virtual address in the window: a level-0 page, or the megapage.
fn window_va(r: &mut Rng, size: u64) -> u64 {
    let page = if r.one_in(5) {
        WINDOW + 0x20_0000 + r.below(512) * 4096
    } else if r.one_in(10) {
        WINDOW + 0x40_0000 + r.below(16) * 4096 // level-1 entry 2: W-only pointer or level 0
    } else {
        WINDOW + r.below(17) * 4096 // page 16 is unmapped (level 0 entry zero)
    };
    let off = match r.below(10) {
        0 => 4096 - size + 1 + r.below(size.max(2) - 1), // crosses into the next page
        1 => r.below(4096 - size),                       // misaligned
        _ => r.below(4096 / size) * size,
    };
    page + off.min(4095)
}

/// One instruction (with its address set-up). AMOs and LR/SC only go to level-0 pages
/// whose PTE already has A set: QEMU sets A on the walk of an AMO that then faults for
/// want of W (which the specification permits, as a speculative update, but does not
/// require), so a page with A clear would differ for no fault of the machine's.
fn item(r: &mut Rng, user: bool, accessed: &[u64]) -> String {
    let t = wreg(r);
    let rd = wreg(r);
    let rs = r.range(0, 31) as u32;
    match r.below(20) {
        0..=5 => {
            let (op, size) = *r.pick(&[
                ("lb", 1),
                ("lbu", 1),
                ("lh", 2),
                ("lhu", 2),
                ("lw", 4),
                ("lwu", 4),
                ("ld", 8),
            ]);
            format!("li x{t}, {:#x}\n\t{op} x{rd}, 0(x{t})", window_va(r, size))
        }
        6..=10 => {
            let (op, size) = *r.pick(&[("sb", 1), ("sh", 2), ("sw", 4), ("sd", 8)]);
            let mut rs = rs;
            while rs == t {
                rs = r.range(0, 31) as u32;
            }
            format!("li x{t}, {:#x}\n\t{op} x{rs}, 0(x{t})", window_va(r, size))
        }
        11..=12 if !accessed.is_empty() => {
            let (sz, size) = *r.pick(&[("w", 4u64), ("d", 8)]);
            let va = WINDOW + r.pick(accessed) * 4096 + r.below(4096 / size) * size;
            let op = r.pick(&["amoadd", "amoswap", "amoor", "amomaxu"]);
            format!("li x{t}, {va:#x}\n\t{op}.{sz} x{rd}, x{rs}, (x{t})")
        }
        13 if !accessed.is_empty() => {
            let (sz, size) = *r.pick(&[("w", 4u64), ("d", 8)]);
            let va = WINDOW + r.pick(accessed) * 4096 + r.below(4096 / size) * size;
            let mut rd = rd;
            while rd == t {
                rd = wreg(r);
            }
            format!(
                "li x{t}, {va:#x}\n\tlr.{sz} x{rd}, (x{t})\n\tsc.{sz} x{}, x{rs}, (x{t})",
                wreg(r)
            )
        }
        14..=15 => {
            // A call into the window: a `ret` page, data (garbage, so only when it
            // cannot execute: the test avoids executable data below), or a fault.
            let va = WINDOW + r.below(17) * 4096 + r.below(1024) * 4;
            format!("li x{t}, {va:#x}\n\tjalr x1, 0(x{t})")
        }
        16 => {
            if user || r.one_in(2) {
                "sfence.vma".to_string()
            } else {
                format!("sfence.vma x{t}, x0")
            }
        }
        17 => format!("csrr x{rd}, satp"),
        _ => {
            let op = r.pick(&["add", "xor", "sub", "or", "and", "sltu"]);
            format!("{op} x{rd}, x{}, x{}", r.range(0, 31), r.range(0, 31))
        }
    }
}

fn source(blocks: &[MmuBlock], qemu: bool) -> String {
    let mut s = String::new();
    if qemu {
        s += "#define QEMU 1\n";
    }
    s += WRAPPER;
    s += "\n\t.text\nblocks:\n";
    for (k, b) in blocks.iter().enumerate() {
        let area = AREA_BASE + k as u64 * AREA_SIZE;
        // MPRV off first: the previous block may have left it on.
        let _ = writeln!(s, "blk{k}:\n\tli t0, 1 << 17\n\tcsrc mstatus, t0");
        // Zero the page tables, fill the data pages from a seed, the jump page with `ret`.
        let _ = writeln!(
            s,
            "\tli t0, {area:#x}\n\tli t1, {}\n1:\tsd zero, 0(t0)\n\taddi t0, t0, 8\n\taddi t1, t1, -1\n\tbnez t1, 1b",
            4 * 512
        );
        let _ = writeln!(
            s,
            "\tli t1, {}\n\tli t2, {:#x}\n\tli t3, 0x9e3779b97f4a7c15\n2:\tsd t2, 0(t0)\n\tmul t2, t2, t3\n\taddi t2, t2, 1\n\taddi t0, t0, 8\n\taddi t1, t1, -1\n\tbnez t1, 2b",
            4 * 512,
            b.seed
        );
        let _ = writeln!(
            s,
            "\tli t1, 1024\n\tli t2, 0x00008067\n3:\tsw t2, 0(t0)\n\taddi t0, t0, 4\n\taddi t1, t1, -1\n\tbnez t1, 3b"
        );
        for (pa, v) in &b.ptes {
            let _ = writeln!(s, "\tli t0, {pa:#x}\n\tli t1, {v:#x}\n\tsd t1, 0(t0)");
        }
        let next = if k + 1 < blocks.len() {
            format!("blk{}", k + 1)
        } else {
            "finish".to_string()
        };
        let _ = writeln!(
            s,
            "\tlla t0, area\n\tlla t1, slot{k}\n\tsd t1, 256(t0)\n\tlla t1, {next}\n\tsd t1, 264(t0)\n\tli t1, {area:#x}\n\tsd t1, 272(t0)"
        );
        let _ = writeln!(
            s,
            "\tli t0, {:#x}\n\tcsrw satp, t0\n\tsfence.vma\n\tli t0, {:#x}\n\tcsrc mstatus, t0\n\tli t0, {:#x}\n\tcsrs mstatus, t0\n\tlla t0, body{k}\n\tcsrw mepc, t0",
            b.satp,
            (3u64 << 11) | (1 << 17) | (1 << 18) | (1 << 19),
            b.mstatus
        );
        for i in 1..32 {
            let _ = writeln!(s, "\tli x{i}, {:#x}", b.x[i]);
        }
        // M-mode blocks fall through into the body: `mret` would reset MPP.
        let _ = writeln!(s, "\t{}\nbody{k}:", if b.mprv { "" } else { "mret" });
        for (j, c) in b.code.iter().enumerate() {
            let _ = writeln!(s, "i{k}_{j}:\n\t{c}");
        }
        let _ = writeln!(s, "\tecall");
    }
    s += "\n\t.data\n\t.balign 64\n\t.globl tohost\ntohost:\t.quad 0\n\t.size tohost, 8\n";
    s += "\t.globl fromhost\nfromhost:\t.quad 0\n\t.size fromhost, 8\n";
    s += "\t.balign 64\narea:\t.zero 512\n\t.balign 64\nslots:\n";
    for k in 0..blocks.len() {
        let _ = writeln!(s, "slot{k}:\t.zero {SLOT}");
    }
    s += "slots_end:\n";
    s
}

/// The description of a block for a report.
fn describe(b: &MmuBlock) -> String {
    let mut s = format!(
        "  satp {:#x} mstatus(MPP|SUM|MXR|MPRV) {:#x}{}\n  ptes:",
        b.satp,
        b.mstatus,
        if b.mprv { " (body in M-mode)" } else { "" }
    );
    for (pa, v) in &b.ptes {
        let _ = write!(s, " [{pa:#x}]={v:#x}");
    }
    s += "\n  code:\n";
    for c in &b.code {
        let _ = writeln!(s, "\t{}", c.replace('\n', "\n\t"));
    }
    s
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Field-by-field differences of two slots.
fn diff(q: &[u8], m: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: String, at: usize| {
        let (a, b) = (word(q, at), word(m, at));
        if a != b {
            out.push(format!("{name}: qemu {a:#x} machine {b:#x}"));
        }
    };
    for i in 1..32 {
        field(format!("x{i}"), X_AT + 8 * (i - 1));
    }
    field("trap count".into(), NTRAPS_AT);
    for t in 0..MAX_TRAPS {
        field(format!("trap {t} mcause"), LOG_AT + 24 * t);
        field(format!("trap {t} mtval"), LOG_AT + 24 * t + 8);
        field(format!("trap {t} mepc"), LOG_AT + 24 * t + 16);
    }
    for i in 0..16 {
        field(format!("level-0 pte {i}"), PTE0_AT + 8 * i);
    }
    for i in 0..4 {
        field(format!("level-1 pte {i}"), PTE1_AT + 8 * i);
        field(format!("level-2 pte {i}"), PTE2_AT + 8 * i);
    }
    field("level-3 pte 0".into(), PTE3_AT);
    field("data checksum".into(), SUM_AT);
    out
}

/// Runs `nblocks` random blocks from `seed` on both sides; returns how many agreed and the
/// report of every differing block (numbered from `first`), or an error when the harness
/// itself failed.
pub fn run(
    dir: &Path,
    seed: u64,
    nblocks: usize,
    first: usize,
) -> Result<(usize, Vec<String>), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    let blocks: Vec<MmuBlock> = (0..nblocks)
        .map(|k| MmuBlock::random(&mut rng, k))
        .collect();
    let ld = dir.join("link.ld");
    std::fs::write(&ld, LINKER_SCRIPT).map_err(|e| e.to_string())?;
    let mut elfs = Vec::new();
    for qemu in [true, false] {
        let name = if qemu { "mmu-qemu" } else { "mmu-machine" };
        let src = dir.join(format!("{name}.S"));
        std::fs::write(&src, source(&blocks, qemu)).map_err(|e| e.to_string())?;
        let elf = dir.join(format!("{name}.elf"));
        run_tool(
            Command::new(CC)
                .args([
                    "-march=rv64gc",
                    "-mabi=lp64d",
                    "-mno-relax",
                    "-nostdlib",
                    "-static",
                ])
                .args(["-Wl,--no-relax", "-Wl,--build-id=none"])
                .arg(format!("-Wl,-T,{}", ld.display()))
                .arg("-o")
                .arg(&elf)
                .arg(&src),
            &format!("assembling {}", src.display()),
        )?;
        elfs.push(elf);
    }
    let syms = symbols(&elfs[1])?;
    let sym = |name: &str| {
        syms.iter()
            .find(|(_, n)| n == name)
            .map(|s| s.0)
            .ok_or(format!("no symbol {name}"))
    };
    // Blocks and slots must sit at the same addresses in both builds.
    let qsyms = symbols(&elfs[0])?;
    for name in ["blocks", "slots", "area"] {
        let q = qsyms.iter().find(|(_, n)| n == name).map(|s| s.0);
        if q != Some(sym(name)?) {
            return Err(format!("layouts differ at {name}"));
        }
    }

    // QEMU: the slots in hex, one 64-bit word per line.
    let out = Command::new("timeout")
        .args([
            "60",
            QEMU_SYSTEM,
            "-M",
            "spike",
            "-cpu",
            QEMU_CPU,
            "-m",
            "64M",
            "-bios",
            "none",
        ])
        .arg("-kernel")
        .arg(&elfs[0])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run {QEMU_SYSTEM}: {e}"))?;
    let mut qbytes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let w = u64::from_str_radix(line.trim(), 16)
            .map_err(|_| format!("unexpected QEMU output line {line:?}"))?;
        qbytes.extend_from_slice(&w.to_le_bytes());
    }
    if qbytes.len() != nblocks * SLOT {
        return Err(format!(
            "QEMU printed {} of {} bytes ({}): {}",
            qbytes.len(),
            nblocks * SLOT,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let image = {
        let bin = dir.join("mmu-machine.bin");
        run_tool(
            Command::new(OBJCOPY)
                .args(["-O", "binary"])
                .arg(&elfs[1])
                .arg(&bin),
            "objcopy",
        )?;
        std::fs::read(&bin).map_err(|e| e.to_string())?
    };
    let mut m = Machine::new(&MachineConfig {
        ram_length: 16 << 20,
        ram_image: Some(image),
        ..MachineConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let brk = m.run(200_000_000);
    if brk != Break::Halted(0) {
        return Err(format!(
            "the machine did not finish: {brk:?} at pc {:#x} (mcause {} mepc {:#x})",
            m.hart.pc, m.hart.csr.mcause, m.hart.csr.mepc
        ));
    }
    let base = (sym("slots")? - 0x8000_0000) as usize;
    let mbytes = &m.bus.ram.bytes()[base..base + nblocks * SLOT];

    let mut reports = Vec::new();
    for (k, b) in blocks.iter().enumerate() {
        let (q, mm) = (
            &qbytes[k * SLOT..(k + 1) * SLOT],
            &mbytes[k * SLOT..(k + 1) * SLOT],
        );
        let d = diff(q, mm);
        if !d.is_empty() {
            let mut r = format!("mmu block {} differs:\n", first + k);
            for l in d.iter().take(12) {
                let _ = writeln!(r, "  {l}");
            }
            r += &describe(b);
            let _ = writeln!(r, "  (body starts at {:#x})", sym(&format!("body{k}"))?);
            reports.push(r);
        }
    }
    Ok((nblocks - reports.len(), reports))
}
