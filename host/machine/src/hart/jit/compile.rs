//! Translation of one block: which instructions, which host registers, and the code.

use super::exec::ExecMem;
use super::x86::*;
use super::{exec_helper, fetch_helper, load_helper, Env};
use crate::hart::csr::{num, Csrs, MSTATUS_FS, MSTATUS_MXR, MSTATUS_SIE, MSTATUS_SUM};
use crate::hart::csr::{SSTATUS_VISIBLE, SSTATUS_WRITABLE};
use crate::hart::dcache::BLOCK_NONE;
use crate::hart::m::M;
use crate::hart::mmu::{Mmu, TlbEntry, TLB_SIZE};
use crate::hart::rv64i::I;
use crate::hart::zicsr::Csr;
use crate::hart::{decode, Hart, Insn, Op};
use std::mem::offset_of;

// The inline TLB index masks the virtual page number.
const _: () = assert!(TLB_SIZE.is_power_of_two() && TLB_SIZE <= 1 << 16);

/// Offset of `inline_tag` in a TLB entry.
const INLINE_TAG: i32 = 24;
const _: () = assert!(std::mem::offset_of!(TlbEntry, inline_tag) == INLINE_TAG as usize);
/// Offset of `frame` (the page's offset in its region, in pages: a `u32`) in a TLB entry.
const FRAME: i32 = TlbEntry::FRAME_AT as i32;
/// Offset of `delta` in a TLB entry.
const DELTA: i32 = 8;
const _: () = assert!(std::mem::offset_of!(TlbEntry, delta) == DELTA as usize);

/// Most instructions in a block (keeps spans under 256 halfwords).
const MAX_INSNS: usize = 64;

/// Host registers that hold guest registers; rax, rcx and rdx are scratch, rbx points
/// at the hart, rsp is the stack. The first [`GLOBALS`]`.len()` hold the global guest
/// registers, the rest whatever each block uses most.
const POOL: [u8; 10] = [R12, R13, R14, R15, RSI, RDI, R8, R9, R10, R11];

/// The host register that holds `mcycle - stop` inside translated code (callee-saved;
/// negative while instructions fit before the stop): loaded by the trampoline, stored
/// back as `mcycle` by the epilogue and before every call into Rust, reloaded after it (a
/// helper may move `mcycle` or `stop`) — see [`load_mcycle`]. Every block adds to it and
/// checks on entry that its instructions fit (`cmp` with an immediate, no load), so it
/// never goes through memory between chained blocks. `Hart::run` keeps `stop` within
/// 2^62 of `mcycle`, so the signed difference never wraps.
const MCYCLE: u8 = RBP;

/// [`MCYCLE`] = the hart's `mcycle - stop`.
fn load_mcycle(a: &mut Asm) {
    a.mov_load(W::B64, MCYCLE, Rm::at(RBX, mcycle_at()));
    a.alu(W::B64, Alu::Sub, MCYCLE, Rm::at(RBX, stop_at()));
}

/// The hart's `mcycle` = [`MCYCLE`] + `stop` ([`MCYCLE`] unchanged, flags changed).
fn store_mcycle(a: &mut Asm) {
    a.alu(W::B64, Alu::Add, MCYCLE, Rm::at(RBX, stop_at()));
    a.mov_store(W::B64, Rm::at(RBX, mcycle_at()), MCYCLE);
    a.alu(W::B64, Alu::Sub, MCYCLE, Rm::at(RBX, stop_at()));
}

/// The guest registers kept in the same host register (the first of [`POOL`], in order)
/// in every block: the trampoline loads them, chained blocks hand them on in place, and
/// the epilogue stores them back, so between blocks they never go through memory. They
/// are sp, a0, a1 and ra: the most used by the rustc workload, weighted by how often
/// each block ran (ra counts for more than its uses, since `jal` writes it in one block
/// and the `ret` that reads it ends another). Their host registers are callee-saved, so
/// helper calls need not save them; more globals (in caller-saved registers, fewer left
/// for each block) measured no faster, and the fifth callee-saved register does more
/// for `mcycle` ([`MCYCLE`]) than for a2 (`docs/performance.md`).
const GLOBALS: [u8; 4] = [2, 10, 11, 1];
const _: () = assert!(GLOBALS.len() <= POOL.len());

/// The globals' host registers are callee-saved.
const _: () = {
    let mut i = 0;
    while i < GLOBALS.len() {
        assert!(matches!(POOL[i], R12 | R13 | R14 | R15));
        i += 1;
    }
};

/// Biases rbx (the hart, from the trampoline) by [`BIAS`] and loads the global guest
/// registers into their host registers: the trampoline's last step before it jumps to a
/// block.
pub(super) fn load_globals(a: &mut Asm) {
    a.lea(RBX, RBX, BIAS);
    for (&g, &h) in GLOBALS.iter().zip(POOL.iter()) {
        a.mov_load(W::B64, h, Rm::at(RBX, x_at(g)));
    }
    load_mcycle(a);
}

/// Stores the global guest registers back to the hart: the epilogue's first step (the
/// trampoline then restores rbx itself).
pub(super) fn store_globals(a: &mut Asm) {
    for (&g, &h) in GLOBALS.iter().zip(POOL.iter()) {
        a.mov_store(W::B64, Rm::at(RBX, x_at(g)), h);
    }
    store_mcycle(a);
}

/// What rbx points at inside translated code: the hart plus this many bytes, so that
/// the 256 bytes of it that translated code uses most (the TLB contexts, `env`, `stop`,
/// `mcycle`, `pc`, then the first integer registers: see [`Hart`]'s layout) are within a
/// one-byte displacement of it. The trampoline adds it ([`load_globals`]); calls into
/// Rust take it off again.
const BIAS: i32 = (offset_of!(Hart, mmu) + offset_of!(Mmu, fetch_ctx)) as i32 + 128;

/// Whether the hart field at `off` is within a one-byte displacement of rbx. (The checks
/// below fail the build if a layout change takes the fields read most out of reach: that
/// would only cost code size and speed, but it should be noticed.)
const fn in_reach(off: usize) -> bool {
    let d = off as i32 - BIAS;
    -128 <= d && d < 128
}
const _: () = {
    assert!(in_reach(offset_of!(Hart, mmu) + offset_of!(Mmu, data_ctx)));
    assert!(
        in_reach(offset_of!(Hart, env)) && in_reach(offset_of!(Hart, env) + size_of::<Env>() - 8)
    );
    assert!(in_reach(offset_of!(Hart, stop)) && in_reach(offset_of!(Hart, mcycle)));
    assert!(in_reach(offset_of!(Hart, pc)));
    // x0 to x17 (a7): every argument register.
    assert!(in_reach(offset_of!(Hart, x) + 8 * 17));
};

/// The displacement from rbx of the hart field at `off`.
fn disp(off: usize) -> i32 {
    off as i32 - BIAS
}

/// Offsets (from the `Hart`) of what translated code reads and writes.
fn x_at(g: u8) -> i32 {
    disp(offset_of!(Hart, x) + 8 * g as usize)
}
fn pc_at() -> i32 {
    disp(offset_of!(Hart, pc))
}
fn mcycle_at() -> i32 {
    disp(offset_of!(Hart, mcycle))
}
fn stop_at() -> i32 {
    disp(offset_of!(Hart, stop))
}
fn data_ctx_at() -> i32 {
    disp(offset_of!(Hart, mmu) + offset_of!(Mmu, data_ctx))
}
fn fetch_ctx_at() -> i32 {
    disp(offset_of!(Hart, mmu) + offset_of!(Mmu, fetch_ctx))
}
fn env_at(field: usize) -> i32 {
    disp(offset_of!(Hart, env) + field)
}

/// What a translated instruction is, for the code generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Computes `rd` from registers and immediates only.
    Alu,
    /// A load of `size` bytes.
    Load,
    /// A store.
    Store,
    /// A conditional branch (ends the block).
    Branch,
    /// `jal` (ends the block).
    Jal,
    /// `jalr` (ends the block).
    Jalr,
    /// Run by the interpreter's own `execute` through [`exec_helper`], in the block: F
    /// and D, and the CSR instructions.
    Helper,
    /// An A instruction (LR, SC, AMO): inline when its address is aligned and the TLB
    /// entries the interpreter would use hit on RAM translated code may reach; else
    /// through [`exec_helper`], like [`Kind::Helper`].
    Atomic,
}

impl Kind {
    /// Whether a block ends with this instruction (a jump or branch).
    fn ends_block(self) -> bool {
        matches!(self, Kind::Branch | Kind::Jal | Kind::Jalr)
    }
}

#[inline(always)]
fn kind(op: Op) -> Option<Kind> {
    Some(match op {
        Op::I(i) => match i {
            I::Lb | I::Lh | I::Lw | I::Ld | I::Lbu | I::Lhu | I::Lwu => Kind::Load,
            I::Sb | I::Sh | I::Sw | I::Sd => Kind::Store,
            I::Beq | I::Bne | I::Blt | I::Bge | I::Bltu | I::Bgeu => Kind::Branch,
            I::Jal => Kind::Jal,
            I::Jalr => Kind::Jalr,
            _ => Kind::Alu,
        },
        Op::M(_) => Kind::Alu,
        Op::A(_) => Kind::Atomic,
        Op::F(_) | Op::Csr(_) => Kind::Helper,
        _ => return None,
    })
}

/// Whether a block can start right after `op`: it ends blocks (a jump or branch), or no
/// block holds it.
#[inline(always)]
pub(crate) fn block_boundary(op: Op) -> bool {
    kind(op).is_none_or(Kind::ends_block)
}

/// Which source registers an operation reads: (rs1, rs2).
fn reads(op: Op) -> (bool, bool) {
    match op {
        Op::I(I::Lui | I::Auipc | I::Jal | I::Fence) => (false, false),
        Op::I(
            I::Jalr
            | I::Lb
            | I::Lh
            | I::Lw
            | I::Ld
            | I::Lbu
            | I::Lhu
            | I::Lwu
            | I::Addi
            | I::Slti
            | I::Sltiu
            | I::Xori
            | I::Ori
            | I::Andi
            | I::Slli
            | I::Srli
            | I::Srai
            | I::Addiw
            | I::Slliw
            | I::Srliw
            | I::Sraiw,
        ) => (true, false),
        _ => (true, true),
    }
}

/// Whether an operation writes `rd`.
fn writes(op: Op) -> bool {
    !matches!(
        op,
        Op::I(
            I::Sb
                | I::Sh
                | I::Sw
                | I::Sd
                | I::Beq
                | I::Bne
                | I::Blt
                | I::Bge
                | I::Bltu
                | I::Bgeu
                | I::Fence
        )
    )
}

/// One instruction of a block: page offset, decoded form, kind.
#[derive(Debug, Clone, Copy)]
pub(super) struct Item {
    off: usize,
    insn: Insn,
    kind: Kind,
}

/// The instructions of the block starting at page offset `start` of the 4 KiB `page`, in
/// `items` (emptied first).
pub(super) fn collect(page: &[u8], start: usize, items: &mut Vec<Item>) {
    items.clear();
    let mut off = start;
    while items.len() < MAX_INSNS && off + 2 <= page.len() {
        let lo = u16::from_le_bytes([page[off], page[off + 1]]) as u32;
        let raw = if lo & 3 == 3 {
            if off + 4 > page.len() {
                break; // straddles the page: the interpreter's
            }
            lo | (u16::from_le_bytes([page[off + 2], page[off + 3]]) as u32) << 16
        } else {
            lo
        };
        let insn = decode(raw);
        let Some(kind) = kind(insn.op) else { break };
        items.push(Item { off, insn, kind });
        off += insn.len as usize;
        if kind.ends_block() {
            break;
        }
    }
}

/// Halfwords covered by a block from `start`.
pub(super) fn span(items: &[Item], start: usize) -> u8 {
    let last = items.last().expect("a block has instructions");
    ((last.off + last.insn.len as usize - start) / 2) as u8
}

/// For the virtual address in rax: rcx = its TLB tag (page number | the context at
/// `ctx_at`), rdx = the address of its entry in the TLB whose address is in the `Env`
/// field at `tlb` (32-byte entries, see `mmu::TlbEntry`). The caller compares rcx with
/// the entry's `inline_tag` at `INLINE_TAG`: equal means a hit on a page translated code
/// may reach inline (see `mmu::TlbEntry::inline_tag`).
fn tlb_entry(a: &mut Asm, tlb: usize, ctx_at: i32) {
    a.mov_rr(RCX, RAX);
    tlb_index(a, RAX, 0, tlb, ctx_at);
}

/// [`tlb_entry`] for the address `base + off`, with the address whose page number goes
/// into the tag already in rcx (`base + off` still picks the entry).
fn tlb_index(a: &mut Asm, base: u8, off: i32, tlb: usize, ctx_at: i32) {
    a.shift_imm(W::B64, Shift::Shr, Rm::Reg(RCX), 12);
    // edx = (page number % TLB_SIZE) * 32, straight from the address.
    if off == 0 {
        a.mov_load(W::B32, RDX, Rm::Reg(base));
    } else {
        a.lea(RDX, base, off);
    }
    a.shift_imm(W::B32, Shift::Shr, Rm::Reg(RDX), 12 - 5);
    a.alu_imm(W::B32, Alu::And, Rm::Reg(RDX), (TLB_SIZE as i32 - 1) << 5);
    a.alu(W::B64, Alu::Add, RDX, Rm::at(RBX, env_at(tlb)));
    a.alu(W::B64, Alu::Or, RCX, Rm::at(RBX, ctx_at));
}

/// `dst = base + off` (a `mov`, or nothing, when `off` is 0).
fn base_plus(a: &mut Asm, dst: u8, base: u8, off: i32) {
    if off == 0 {
        a.mov_rr(dst, base);
    } else {
        a.lea(dst, base, off);
    }
}

/// The inline path of a load or store of `size` bytes at the virtual address `base + off`
/// (`base` kept): falls through with `[rcx + base + off]` the host address of those bytes
/// when the TLB
/// of loads (or of stores) allows it — a hit on a RAM or flash page for every byte; for a
/// store, a RAM page already marked dirty and holding no decoded code
/// (`TlbEntry::inline_tag`) — and
/// returns the jump taken otherwise (a miss, or an access that runs into the next
/// page). The tag compared is the last byte's, with the entry of the first byte's page:
/// they agree only when both bytes are in that page, so one compare covers both. An
/// access misaligned inside one page goes inline: the interpreter reads or writes its
/// bytes one by one through the same TLB entry, to the same effect.
fn tlb_hit(a: &mut Asm, base: u8, off: i32, store: bool, size: u8) -> usize {
    let tlb = if store {
        offset_of!(Env, store_tlb)
    } else {
        offset_of!(Env, load_tlb)
    };
    // rcx = the last byte's address.
    base_plus(a, RCX, base, off + size as i32 - 1);
    tlb_index(a, base, off, tlb, data_ctx_at());
    a.alu(W::B64, Alu::Cmp, RCX, Rm::at(RDX, INLINE_TAG));
    let miss = a.jcc_fwd(Cond::Ne);
    // rcx = the page's delta: its host address less its virtual address.
    a.mov_load(W::B64, RCX, Rm::at(RDX, DELTA));
    miss
}

/// Code shared by every block, placed once after the epilogue: the chaining lookup of an
/// exit to another page or after a `jalr`, which would otherwise be copied into every such
/// exit (about 100 bytes each) and crowd the host's caches, and the calls into Rust of
/// loads and of instructions run by the interpreter (about 70 bytes each inline, for the
/// `mcycle` store, the pool registers' saves and the call's set-up). (The TLB lookups of
/// loads and stores were shared the same way for a while: inline they measured faster,
/// see docs/performance.md.) Blocks `call` them.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Thunks {
    /// rax = the new `pc` (already stored): on success rax = the host address of its
    /// block, found as the interpreter's fetch would (fetch TLB, decode cache, the
    /// page's table), walking the page tables through [`fetch_helper`] on a TLB miss.
    /// Returns with ZF clear on success, set when the block must leave instead. Called
    /// where its block leaves (every pool register written back), it may change any
    /// register the C ABI lets a callee change.
    chain: usize,
    /// [`load_helper`] for the load at the virtual address in rax of edx bytes, ecx
    /// instructions into its block: returns with the value in rax and rdx 1, or rdx 0 if
    /// the block must leave. Keeps every pool register.
    load: usize,
    /// [`exec_helper`] for the instruction in rax, edx bytes past its block's start and ecx
    /// instructions into it (the registers it names already in the hart): returns eax 1
    /// to go on, 2 to leave. Keeps every pool register.
    exec: usize,
}

impl Thunks {
    /// Emits the shared code into `a` (to be placed at `a.base` of the region at host
    /// address `code_base`); returns where each piece is and each one's (start, end,
    /// name) for a profiler's map.
    pub(super) fn emit(a: &mut Asm, code_base: u64) -> (Self, Vec<(usize, usize, &'static str)>) {
        let chain = a.here();
        Self::chain(a, code_base);
        let load = a.here();
        Self::call_rust(a, load_helper as *const () as u64);
        let exec = a.here();
        Self::call_rust(a, exec_helper as *const () as u64);
        let end = a.here();
        let symbols = vec![
            (chain, load, "rv:chain"),
            (load, exec, "rv:load"),
            (exec, end, "rv:exec"),
        ];
        (Self { chain, load, exec }, symbols)
    }

    /// A call of the Rust function at `f` with the hart in rdi, rsi = rax, rdx and rcx as
    /// the block set them: `mcycle` stored first and loaded after
    /// (the function may move it), every caller-saved pool register kept. Entered by a
    /// `call` from a block (rsp 16-byte aligned here: blocks run with it 8 past), so six
    /// pushes leave it aligned for the next.
    fn call_rust(a: &mut Asm, f: u64) {
        const _: () = assert!(CALLER_SAVED.len() % 2 == 0);
        store_mcycle(a);
        for r in CALLER_SAVED {
            a.push(r);
        }
        a.mov_rr(RSI, RAX);
        a.lea(RDI, RBX, -BIAS);
        a.mov_imm(RAX, f);
        a.call_reg(RAX);
        for r in CALLER_SAVED.iter().rev() {
            a.pop(*r);
        }
        load_mcycle(a);
        a.ret();
    }

    fn fail(a: &mut Asm) {
        // ZF set, rax unchanged.
        a.alu(W::B32, Alu::Cmp, RAX, Rm::Reg(RAX));
        a.ret();
    }

    fn chain(a: &mut Asm, code_base: u64) {
        let retry = a.here();
        tlb_entry(a, offset_of!(Env, fetch_tlb), fetch_ctx_at());
        a.alu(W::B64, Alu::Cmp, RCX, Rm::at(RDX, INLINE_TAG));
        let miss = a.jcc_fwd(Cond::Ne);
        let mut fail = Vec::new();
        // ecx = decode-cache page of the RAM page (the entry's frame: an inline fetch
        // entry is RAM's), if it has one.
        a.mov_load(W::B32, RCX, Rm::at(RDX, FRAME));
        a.mov_load(W::B64, RDX, Rm::at(RBX, env_at(offset_of!(Env, slot_of))));
        a.mov_load(W::B32, RCX, Rm::indexed(RDX, RCX, 4));
        a.alu_imm(W::B32, Alu::Cmp, Rm::Reg(RCX), -1);
        fail.push(a.jcc_fwd(Cond::E));
        // rdx = that page's block table; eax = the entry of the target's slot.
        a.mov_load(W::B64, RDX, Rm::at(RBX, env_at(offset_of!(Env, tables))));
        a.mov_load(W::B64, RDX, Rm::indexed(RDX, RCX, 8));
        a.alu_imm(W::B32, Alu::And, Rm::Reg(RAX), 0xffe);
        a.mov_load(W::B32, RAX, Rm::indexed(RDX, RAX, 2));
        // An entry below 2 is no block (`BLOCK_UNKNOWN`, `BLOCK_NONE`).
        a.alu_imm(W::B32, Alu::Cmp, Rm::Reg(RAX), 2);
        fail.push(a.jcc_fwd(Cond::B));
        a.mov_imm(RCX, code_base);
        a.alu(W::B64, Alu::Add, RAX, Rm::Reg(RCX));
        a.ret();
        // A fetch-TLB miss: if the interpreter would fetch from `pc` next (an instruction
        // fits before the stop), make the walk its fetch would make, and try again. Every
        // guest register is in the hart here (the exit wrote them back) but the global
        // ones, which are in callee-saved host registers: nothing to save. The block's
        // `call` left rsp 16-byte aligned for this one.
        a.bind(miss);
        a.test(W::B64, Rm::Reg(MCYCLE), MCYCLE);
        fail.push(a.jcc_fwd(Cond::Ge));
        store_mcycle(a);
        a.lea(RDI, RBX, -BIAS);
        a.mov_rr(RSI, RAX);
        a.mov_imm(RAX, fetch_helper as *const () as u64);
        a.call_reg(RAX);
        load_mcycle(a);
        a.test(W::B32, Rm::Reg(RAX), RAX);
        fail.push(a.jcc_fwd(Cond::E));
        a.mov_load(W::B64, RAX, Rm::at(RBX, pc_at()));
        a.jmp_to(retry);
        for f in fail {
            a.bind(f);
        }
        Self::fail(a);
    }
}

/// Pool registers the C ABI lets a callee change: saved around helper calls.
const CALLER_SAVED: [u8; 6] = [RSI, RDI, R8, R9, R10, R11];

/// A load's call to [`load_helper`], emitted after the block's body: entered from the
/// inline path's misses, back at `join` with the value in `t`; or, when the helper
/// declines (a fault, or a device the interpreter reaches), on to the load's exit to the
/// interpreter, which writes back `dirty`, counts `retired` and moves `pc` by `delta`.
#[derive(Debug)]
struct LoadCall {
    /// The jump from the inline path's miss.
    from: usize,
    /// The virtual address is this host register's value (unchanged at the miss)...
    base: u8,
    /// ... plus this.
    off: i32,
    /// The jump taken when the helper declines (set when the call is emitted).
    declined: usize,
    op: I,
    size: u8,
    /// Instructions before this one in the block.
    retired: usize,
    /// Page offset of the instruction from the block's start.
    delta: i64,
    /// The dirty registers before the instruction.
    dirty: u32,
    /// Where the value goes.
    t: u8,
    /// Where the inline path continues with the value in `t`.
    join: usize,
}

/// A store's or an atomic's call to [`exec_helper`] when its inline path misses, emitted
/// after the block's body; back at `join` when the instruction is done.
#[derive(Debug)]
struct HelperCall {
    /// The jumps from the inline path's misses.
    from: Jumps,
    insn: Insn,
    /// Instructions before this one in the block.
    retired: usize,
    /// Page offset of the instruction from the block's start.
    delta: i64,
    /// Where the inline path continues.
    join: usize,
    /// The dirty registers before the instruction (for the exit after it).
    dirty: u32,
}

/// A few forward jumps to one place (the ways an instruction reaches its slow path, the
/// ends of a division's cases): at most [`Jumps::MAX`], kept without allocating.
#[derive(Debug, Default, Clone, Copy)]
struct Jumps {
    at: [usize; Jumps::MAX],
    n: usize,
}

impl Jumps {
    const MAX: usize = 4;

    fn one(at: usize) -> Self {
        let mut j = Self::default();
        j.push(at);
        j
    }

    fn push(&mut self, at: usize) {
        self.at[self.n] = at;
        self.n += 1;
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.at[..self.n].iter().copied()
    }
}

/// The vectors a translation fills, kept by the translator from one block to the next so
/// that, once they have grown, translating a block allocates nothing: a build translates
/// hundreds of thousands of blocks, and fresh vectors for each were about 2.5 % of its
/// time (malloc and free in the profile of the rustc workload).
#[derive(Debug, Default)]
pub(super) struct Buffers {
    /// The block's instructions ([`collect`]).
    pub(super) items: Vec<Item>,
    /// The rest, which [`Block`] borrows.
    pub(super) emit: EmitBuffers,
}

/// What [`Block::emit`] writes, and its work lists.
#[derive(Debug, Default)]
pub(super) struct EmitBuffers {
    /// The block's code, for [`ExecMem::place`], after [`Block::emit`].
    pub(super) code: Vec<u8>,
    /// Its slow paths, for [`ExecMem::place_cold`].
    pub(super) cold: Vec<u8>,
    /// Its exits waiting for a block of the page, for
    /// [`DecodeCache::add_links`](crate::hart::dcache::DecodeCache::add_links).
    pub(super) links: Vec<(u16, u32)>,
    calls: Vec<LoadCall>,
    helper_calls: Vec<HelperCall>,
    after: Vec<(usize, u32, bool)>,
    rungs: Vec<usize>,
}

/// The vector in `v`, emptied, leaving an empty one without capacity in its place.
fn take_cleared<T>(v: &mut Vec<T>) -> Vec<T> {
    let mut v = std::mem::take(v);
    v.clear();
    v
}

/// Where an exit from a block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The block at this offset of the same page, through the page's table.
    InPage(usize),
    /// The block at the new `pc`, wherever the fetch TLB maps it.
    Anywhere,
    /// Back to Rust (the interpreter runs the next instruction, or the budget ran out).
    Rust,
}

/// The code generator for one block.
pub(super) struct Block<'a> {
    items: &'a [Item],
    start: usize,
    /// Host register of each guest register, if cached.
    map: [Option<u8>; 32],
    /// The global guest registers (bit per register; see [`GLOBALS`]): always live in
    /// their host registers, never loaded on entry nor written back at a chained exit.
    global: u32,
    /// Cached guest registers other than the global ones written so far (bit per
    /// register): what exits write back.
    dirty: u32,
    /// The page's block entries (see [`crate::hart::dcache::BlockTable`]): an exit to a
    /// block translated by now jumps to its code directly, any other becomes a link.
    entries: &'a [u32],
    /// The shared lookups.
    thunks: Thunks,
    epilogue: usize,
    /// In-page exits to blocks not translated yet: (the target's halfword slot, offset in
    /// the code of a `jmp` to the epilogue, patched to the target's code once it is
    /// translated).
    links: Vec<(u16, u32)>,
    /// Where code goes: the hot buffer while the body is emitted, then the cold one.
    a: Asm,
    /// The other buffer (the cold one, then the hot one).
    other: Asm,
    /// Where the vectors come from and go back to, the results with them.
    bufs: &'a mut EmitBuffers,
}

impl<'a> Block<'a> {
    /// Plans the block at page offset `start`, to be placed at `mem.next()` and its slow
    /// paths at `mem.next_cold()`.
    pub(super) fn new(
        items: &'a [Item],
        start: usize,
        entries: &'a [u32],
        mem: &ExecMem,
        thunks: Thunks,
        bufs: &'a mut EmitBuffers,
    ) -> Self {
        // Cache the most used guest registers (ties: lower number first, for a stable
        // translation).
        let mut uses = [0u32; 32];
        for it in items {
            let (r1, r2) = reads(it.insn.op);
            if r1 {
                uses[it.insn.rs1 as usize] += 1;
            }
            if r2 {
                uses[it.insn.rs2 as usize] += 1;
            }
            if writes(it.insn.op) {
                uses[it.insn.rd as usize] += 1;
            }
        }
        uses[0] = 0;
        let mut map = [None; 32];
        let mut global = 0u32;
        for (&g, &h) in GLOBALS.iter().zip(POOL.iter()) {
            map[g as usize] = Some(h);
            global |= 1 << g;
        }
        let mut order = [0u8; 31];
        let mut used = 0;
        for g in 1..32u8 {
            if uses[g as usize] > 0 && global >> g & 1 == 0 {
                order[used] = g;
                used += 1;
            }
        }
        let order = &mut order[..used];
        order.sort_by_key(|&g| std::cmp::Reverse(uses[g as usize]));
        for (&g, &h) in order.iter().zip(POOL[GLOBALS.len()..].iter()) {
            map[g as usize] = Some(h);
        }
        Self {
            items,
            start,
            map,
            global,
            dirty: 0,
            entries,
            thunks,
            epilogue: mem.epilogue(),
            links: take_cleared(&mut bufs.links),
            a: Asm::with_buf(mem.next(), std::mem::take(&mut bufs.code)),
            other: Asm::with_buf(mem.next_cold(), std::mem::take(&mut bufs.cold)),
            bufs,
        }
    }

    /// The operand for guest register `g` (x0 reads the hart's `x[0]`, always 0).
    fn rm(&self, g: u8) -> Rm {
        match self.map[g as usize] {
            Some(h) => Rm::Reg(h),
            None => Rm::at(RBX, x_at(g)),
        }
    }

    /// `dst = x[g]` (flags unchanged).
    fn get(&mut self, dst: u8, g: u8) {
        if g == 0 {
            // x0 is 0: no load from the hart.
            self.a.mov_imm(dst, 0);
            return;
        }
        match self.rm(g) {
            Rm::Reg(h) => self.a.mov_rr(dst, h),
            m => self.a.mov_load(W::B64, dst, m),
        }
    }

    /// A host register holding guest register `g`: its own, or rdx loaded with it.
    fn in_register(&mut self, g: u8) -> u8 {
        match self.map[g as usize] {
            Some(h) => h,
            None => {
                self.get(RDX, g);
                RDX
            }
        }
    }

    /// `x[g] = src` (nothing for x0).
    fn put(&mut self, g: u8, src: u8) {
        if g == 0 {
            return;
        }
        match self.map[g as usize] {
            Some(h) => {
                self.a.mov_rr(h, src);
                self.dirty |= 1 << g & !self.global;
            }
            None => self.a.mov_store(W::B64, Rm::at(RBX, x_at(g)), src),
        }
    }

    /// Where to compute a value for `rd`: its host register unless that is also the
    /// register of `avoid` (a source read after the first), else rax.
    fn target(&self, rd: u8, avoid: Option<u8>) -> u8 {
        match self.map[rd as usize] {
            Some(h) if rd != 0 && avoid.is_none_or(|s| self.map[s as usize] != Some(h)) => h,
            _ => RAX,
        }
    }

    fn write_back(&mut self, dirty: u32) {
        for g in 1..32u8 {
            if dirty >> g & 1 != 0 {
                let h = self.map[g as usize].expect("dirty registers are cached");
                self.a.mov_store(W::B64, Rm::at(RBX, x_at(g)), h);
            }
        }
    }

    /// Leaves the block: write back, count `retired`, move `pc` by `delta`, then go `to`.
    fn exit(&mut self, dirty: u32, retired: usize, delta: i64, to: Next) {
        self.write_back(dirty);
        if retired > 0 {
            self.a
                .alu_imm(W::B64, Alu::Add, Rm::Reg(MCYCLE), retired as i32);
        }
        if delta != 0 {
            self.a
                .alu_imm(W::B64, Alu::Add, Rm::at(RBX, pc_at()), delta as i32);
        }
        match to {
            Next::InPage(off) if self.entries[off / 2] > BLOCK_NONE => {
                // Its block is translated: go there directly. Should that block be
                // dropped while this one lives, its entry is patched to leave
                // (`Hart::bury_dropped_blocks`).
                self.a.jmp_to(self.entries[off / 2] as usize);
            }
            Next::InPage(off) => {
                // Back to Rust until its block is translated: then this jump is patched
                // to it (`DecodeCache::links_to`).
                self.links.push(((off / 2) as u16, self.a.buf.len() as u32));
                self.a.jmp_to(self.epilogue);
            }
            Next::Anywhere => {
                self.a.mov_load(W::B64, RAX, Rm::at(RBX, pc_at()));
                self.chain_va();
            }
            Next::Rust => self.a.jmp_to(self.epilogue),
        }
    }

    /// With the new `pc` in rax (already stored): jump to its block if the fetch TLB maps
    /// its page to RAM in the current context (as the interpreter's fetch would find it)
    /// and that page has a block there; else return to Rust ([`Thunks::chain`]).
    fn chain_va(&mut self) {
        self.a.call_to(self.thunks.chain);
        self.a.jcc_to(Cond::E, self.epilogue);
        self.a.jmp_reg(RAX);
    }

    /// Compares mcycle + n with `stop` (mcycle - stop with -n): `jle` then goes where
    /// the n instructions fit before the stop, `jg` where they do not.
    fn budget_check(&mut self, n: usize) {
        self.a
            .alu_imm(W::B64, Alu::Cmp, Rm::Reg(MCYCLE), -(n as i32));
    }

    /// Where a jump to page offset `to` continues.
    fn next(to: i64) -> Next {
        if (0..4096).contains(&to) {
            Next::InPage(to as usize)
        } else {
            Next::Anywhere
        }
    }

    /// A jump to page offset `to` after all `n` instructions of the block, which are
    /// already counted in [`MCYCLE`] if `counted`.
    fn jump(&mut self, to: i64, n: usize, counted: bool, body: usize) {
        if to == self.start as i64 {
            // A loop on this block: stay in host registers while the budget lasts.
            if !counted {
                self.a.alu_imm(W::B64, Alu::Add, Rm::Reg(MCYCLE), n as i32);
            }
            self.budget_check(n);
            self.a.jcc_to(Cond::Le, body);
            self.exit(self.dirty, 0, 0, Next::Rust);
        } else {
            let delta = to - self.start as i64;
            let retired = if counted { 0 } else { n };
            self.exit(self.dirty, retired, delta, Self::next(to));
        }
    }

    /// Emits the whole block into the buffers it was made with (`code`, `cold`, `links`).
    pub(super) fn emit(mut self) {
        let n = self.items.len();
        // Entry: all n instructions must fit before the stop.
        self.budget_check(n);
        // Leave unless they fit (falling through is the common case).
        self.a.jcc_to(Cond::G, self.epilogue);
        // Load the cached registers the block reads before writing.
        let mut seen = 0u32;
        let mut load = 0u32;
        for it in self.items {
            let (r1, r2) = reads(it.insn.op);
            for (r, g) in [(r1, it.insn.rs1), (r2, it.insn.rs2)] {
                if r {
                    load |= !seen & 1 << g;
                    seen |= 1 << g;
                }
            }
            if matches!(it.kind, Kind::Helper | Kind::Atomic) {
                // The helper takes rd to the hart and back, whatever the instruction
                // does with it (an F instruction's rd is a float register; an atomic
                // that traps leaves it): it must hold the guest value from the start.
                load |= !seen & 1 << it.insn.rd;
                seen |= 1 << it.insn.rd;
            }
            if writes(it.insn.op) {
                seen |= 1 << it.insn.rd;
            }
        }
        // A block that loops on itself reaches each exit with whatever the earlier
        // iterations wrote, so there every cached register holds a live value (all are
        // loaded) and every one the block writes counts as dirty from the start.
        let loops = self.items.iter().any(|it| {
            let to = it.off as i64 + it.insn.imm as i64;
            matches!(it.kind, Kind::Branch | Kind::Jal) && to == self.start as i64
        });
        if loops {
            load = !0;
            for it in self.items {
                if writes(it.insn.op) && self.map[it.insn.rd as usize].is_some() {
                    self.dirty |= 1 << it.insn.rd & !self.global;
                }
            }
        }
        let load = load & !self.global;
        for g in 1..32u8 {
            if let Some(h) = self.map[g as usize] {
                if load >> g & 1 != 0 {
                    self.a.mov_load(W::B64, h, Rm::at(RBX, x_at(g)));
                }
            }
        }
        let body = self.a.here();
        // Loads' calls to the helper and their exits to the interpreter, emitted after the
        // body; stores that miss go through the helper whole (`HelperCall`).
        let mut calls = take_cleared(&mut self.bufs.calls);
        let mut helper_calls = take_cleared(&mut self.bufs.helper_calls);
        // Exits after an instruction the helper ran, which set `pc` and `mcycle` itself:
        // (jump, dirty registers, whether the jump is in the hot buffer).
        let mut after = take_cleared(&mut self.bufs.after);
        let items = self.items;
        for (k, it) in items.iter().enumerate() {
            let d = it.insn;
            let delta = (it.off - self.start) as i64;
            match it.kind {
                Kind::Alu => self.alu(d, delta),
                Kind::Load | Kind::Store => {
                    // What was dirty before this instruction, for a store's exit after the
                    // helper (a load's call keeps its own).
                    let dirty = self.dirty;
                    match self.memory(d, k, delta) {
                        Ok(c) => calls.push(c),
                        Err(from) => helper_calls.push(HelperCall {
                            from: Jumps::one(from),
                            insn: d,
                            retired: k,
                            delta,
                            join: self.a.here(),
                            dirty,
                        }),
                    }
                }
                Kind::Helper | Kind::Atomic => {
                    let dirty = self.dirty;
                    // An inline path (every atomic, some CSR instructions), whose slow
                    // path runs the whole instruction through the helper; or the helper.
                    let inline = match it.kind {
                        Kind::Atomic => Some(self.atomic(d)),
                        _ => self.csr(d),
                    };
                    match inline {
                        Some(from) => helper_calls.push(HelperCall {
                            from,
                            insn: d,
                            retired: k,
                            delta,
                            join: self.a.here(),
                            dirty,
                        }),
                        None => {
                            let leave = self.helper(d, k, delta);
                            after.push((leave, self.dirty, true));
                        }
                    }
                }
                Kind::Branch => {
                    let cond = match d.op {
                        Op::I(I::Beq) => Cond::E,
                        Op::I(I::Bne) => Cond::Ne,
                        Op::I(I::Blt) => Cond::L,
                        Op::I(I::Bge) => Cond::Ge,
                        Op::I(I::Bltu) => Cond::B,
                        _ => Cond::Ae,
                    };
                    // rs1 in its own host register, else in rax.
                    let r1 = match self.map[d.rs1 as usize] {
                        Some(h) if d.rs1 != 0 => h,
                        _ => {
                            self.get(RAX, d.rs1);
                            RAX
                        }
                    };
                    if d.rs2 == 0 {
                        // Against x0: `test` sets the flags `cmp r1, 0` would (CF and
                        // OF clear, ZF and SF from r1).
                        self.a.test(W::B64, Rm::Reg(r1), r1);
                    } else {
                        let rs2 = self.rm(d.rs2);
                        self.a.alu(W::B64, Alu::Cmp, r1, rs2);
                    }
                    let next = (it.off + d.len as usize) as i64;
                    let to = it.off as i64 + d.imm as i64;
                    if next != self.start as i64 && to != self.start as i64 {
                        // Both ways leave the block with the same registers to write
                        // back: once, before the jump (a `mov` keeps the flags).
                        self.write_back(self.dirty);
                        self.dirty = 0;
                    }
                    // Both ways count the block's instructions: once, before the jump
                    // (`lea` keeps the flags).
                    self.a.lea(MCYCLE, MCYCLE, n as i32);
                    let taken = self.a.jcc_fwd(cond);
                    self.jump(next, n, true, body);
                    self.a.bind(taken);
                    self.jump(to, n, true, body);
                }
                Kind::Jal => {
                    if d.rd != 0 {
                        let t = self.target(d.rd, None);
                        self.a.mov_load(W::B64, t, Rm::at(RBX, pc_at()));
                        self.a
                            .alu_imm(W::B64, Alu::Add, Rm::Reg(t), (delta + d.len as i64) as i32);
                        self.put(d.rd, t);
                    }
                    self.jump(it.off as i64 + d.imm as i64, n, false, body);
                }
                Kind::Jalr => self.jalr(d, delta, n),
            }
        }
        if let Some(last) = items.last() {
            if !last.kind.ends_block() {
                // The block ran into an instruction it does not translate, or its size
                // limit: continue at the next one.
                let to = last.off + last.insn.len as usize;
                let delta = (to - self.start) as i64;
                self.exit(self.dirty, n, delta, Self::next(to as i64));
            }
        }
        // The rest is cold.
        std::mem::swap(&mut self.a, &mut self.other);
        self.emit_load_calls(&mut calls);
        for c in &helper_calls {
            for from in c.from.iter() {
                self.bind_hot(from);
            }
            let leave = self.helper(c.insn, c.retired, c.delta);
            after.push((leave, c.dirty, false));
            self.a.jmp_to(c.join);
        }
        for &(leave, dirty, hot) in &after {
            if hot {
                self.bind_hot(leave);
            } else {
                self.a.bind(leave);
            }
            self.exit(dirty, 0, 0, Next::Rust);
        }
        self.emit_slow_exits(&calls);
        let bufs = self.bufs;
        bufs.code = self.other.buf;
        bufs.cold = self.a.buf;
        bufs.links = self.links;
        bufs.calls = calls;
        bufs.helper_calls = helper_calls;
        bufs.after = after;
    }

    /// Points the jump `fixup` of the hot buffer at the current (cold) position.
    fn bind_hot(&mut self, fixup: usize) {
        let here = self.a.here();
        self.other.bind_to(fixup, here);
    }

    /// Runs `d` (at pc offset `delta`, `retired` instructions into the block) through
    /// [`exec_helper`]: its source registers (and rd, which the interpreter may leave
    /// unchanged) go to the hart first, rd comes back after. Returns the jump taken when
    /// the helper asks the block to leave (having set `pc` and `mcycle` itself).
    fn helper(&mut self, d: Insn, retired: usize, delta: i64) -> usize {
        // A store's rd field holds immediate bits: it names no register.
        let rd = (!matches!(d.op, Op::I(I::Sb | I::Sh | I::Sw | I::Sd))).then_some(d.rd);
        let regs = [Some(d.rs1), Some(d.rs2), rd];
        for g in regs.into_iter().flatten() {
            if let Some(h) = self.map[g as usize] {
                self.a.mov_store(W::B64, Rm::at(RBX, x_at(g)), h);
            }
        }
        self.a.mov_imm(RAX, d.raw as u64);
        self.a.mov_imm(RDX, delta as u64);
        self.a.mov_imm(RCX, retired as u64);
        self.a.call_to(self.thunks.exec);
        if let Some(rd) = rd.filter(|&g| g != 0) {
            if let Some(h) = self.map[rd as usize] {
                self.a.mov_load(W::B64, h, Rm::at(RBX, x_at(rd)));
                self.dirty |= 1 << rd & !self.global;
            }
        }
        // eax: 1 go on, 2 leave.
        self.a.alu_imm(W::B32, Alu::Cmp, Rm::Reg(RAX), 1);
        self.a.jcc_fwd(Cond::Ne)
    }

    /// The calls of loads to [`load_helper`] (va in rax) through the shared code
    /// ([`Thunks`]'s `load`), then either on with the value or to the load's slow exit
    /// (its `declined` jump, bound by [`Block::emit_slow_exits`]).
    fn emit_load_calls(&mut self, calls: &mut [LoadCall]) {
        for c in calls {
            self.bind_hot(c.from);
            base_plus(&mut self.a, RAX, c.base, c.off);
            self.a.mov_imm(RDX, c.size as u64);
            self.a.mov_imm(RCX, c.retired as u64);
            self.a.call_to(self.thunks.load);
            self.a.test(W::B32, Rm::Reg(RDX), RDX);
            c.declined = self.a.jcc_fwd(Cond::E);
            let value = Rm::Reg(RAX);
            match c.op {
                I::Lb => self.a.movsx(W::B8, c.t, value),
                I::Lh => self.a.movsx(W::B16, c.t, value),
                I::Lw => self.a.movsx(W::B32, c.t, value),
                // The helper zero-extends.
                _ => self.a.mov_rr(c.t, RAX),
            }
            self.a.jmp_to(c.join);
        }
    }

    /// The exits of loads to the interpreter, compactly: each site sets eax to
    /// the instructions retired before it and ecx to its `pc` offset, then enters a
    /// ladder of write-backs at its own rung. Sites come in program order and the dirty
    /// set only grows along the block, so the rung of site i writes back what became
    /// dirty since site i-1 and falls into the rung below: every site writes back
    /// exactly its own dirty set, each register's store appearing once.
    fn emit_slow_exits(&mut self, slow: &[LoadCall]) {
        if slow.is_empty() {
            return;
        }
        let mut to_rung = take_cleared(&mut self.bufs.rungs);
        for s in slow {
            self.a.bind(s.declined);
            self.a.mov_imm(RAX, s.retired as u64);
            self.a.mov_imm(RCX, s.delta as u64);
            to_rung.push(self.a.jmp_fwd());
        }
        for i in (0..slow.len()).rev() {
            self.a.bind(to_rung[i]);
            let below = if i > 0 { slow[i - 1].dirty } else { 0 };
            debug_assert_eq!(below & !slow[i].dirty, 0, "dirty sets only grow");
            self.write_back(slow[i].dirty & !below);
        }
        self.bufs.rungs = to_rung;
        self.a.alu_to(W::B64, Alu::Add, Rm::Reg(MCYCLE), RAX);
        self.a.alu_to(W::B64, Alu::Add, Rm::at(RBX, pc_at()), RCX);
        self.a.jmp_to(self.epilogue);
    }

    fn jalr(&mut self, d: Insn, delta: i64, n: usize) {
        // Target first: rd may be rs1.
        self.get(RAX, d.rs1);
        if d.imm != 0 {
            self.a.alu_imm(W::B64, Alu::Add, Rm::Reg(RAX), d.imm);
        }
        self.a.alu_imm(W::B64, Alu::And, Rm::Reg(RAX), -2);
        if d.rd != 0 {
            self.a.mov_load(W::B64, RCX, Rm::at(RBX, pc_at()));
            self.a.alu_imm(
                W::B64,
                Alu::Add,
                Rm::Reg(RCX),
                (delta + d.len as i64) as i32,
            );
            self.put(d.rd, RCX);
        }
        self.write_back(self.dirty);
        self.a.alu_imm(W::B64, Alu::Add, Rm::Reg(MCYCLE), n as i32);
        // pc = target; chain to its block wherever it is.
        self.a.mov_store(W::B64, Rm::at(RBX, pc_at()), RAX);
        self.chain_va();
    }

    /// Integer operations without memory access.
    fn alu(&mut self, d: Insn, delta: i64) {
        let Insn {
            rd, rs1, rs2, imm, ..
        } = d;
        if rd == 0 {
            return; // no effect at all
        }
        let a64 = |s: &mut Self, op: Alu| {
            let t = s.target(rd, Some(rs2));
            s.get(t, rs1);
            let r = s.rm(rs2);
            s.a.alu(W::B64, op, t, r);
            s.put(rd, t);
        };
        let a32 = |s: &mut Self, op: Alu| {
            let t = s.target(rd, Some(rs2));
            s.get(t, rs1);
            let r = s.rm(rs2);
            s.a.alu(W::B32, op, t, r);
            s.a.movsx(W::B32, t, Rm::Reg(t));
            s.put(rd, t);
        };
        let imm64 = |s: &mut Self, op: Alu| {
            let t = s.target(rd, None);
            if rs1 == 0 {
                // x0 op imm is a constant (`li`).
                let v = match op {
                    Alu::Add | Alu::Or | Alu::Xor => imm as i64 as u64,
                    Alu::And => 0,
                    _ => unreachable!("{op:?} is not an immediate operation"),
                };
                s.a.mov_imm(t, v);
                s.put(rd, t);
                return;
            }
            s.get(t, rs1);
            s.a.alu_imm(W::B64, op, Rm::Reg(t), imm);
            s.put(rd, t);
        };
        let shift = |s: &mut Self, w: W, op: Shift, by_reg: bool| {
            if by_reg {
                s.get(RCX, rs2);
            }
            let t = s.target(rd, None);
            s.get(t, rs1);
            if by_reg {
                s.a.shift_cl(w, op, Rm::Reg(t));
            } else {
                let mask = if w == W::B64 { 63 } else { 31 };
                s.a.shift_imm(w, op, Rm::Reg(t), (imm & mask) as u8);
            }
            if w == W::B32 {
                s.a.movsx(W::B32, t, Rm::Reg(t));
            }
            s.put(rd, t);
        };
        let set = |s: &mut Self, cond: Cond, with_imm: bool| {
            s.get(RAX, rs1);
            if with_imm {
                s.a.alu_imm(W::B64, Alu::Cmp, Rm::Reg(RAX), imm);
            } else {
                let r = s.rm(rs2);
                s.a.alu(W::B64, Alu::Cmp, RAX, r);
            }
            s.a.set_rax(cond);
            s.put(rd, RAX);
        };
        match d.op {
            Op::I(I::Lui) => {
                let t = self.target(rd, None);
                self.a.mov_imm(t, imm as i64 as u64);
                self.put(rd, t);
            }
            Op::I(I::Auipc) => {
                let t = self.target(rd, None);
                self.a.mov_load(W::B64, t, Rm::at(RBX, pc_at()));
                let v = delta + imm as i64;
                if v == v as i32 as i64 {
                    self.a.alu_imm(W::B64, Alu::Add, Rm::Reg(t), v as i32);
                } else {
                    self.a.mov_imm(RCX, v as u64);
                    self.a.alu(W::B64, Alu::Add, t, Rm::Reg(RCX));
                }
                self.put(rd, t);
            }
            Op::I(I::Addi) => imm64(self, Alu::Add),
            Op::I(I::Xori) => imm64(self, Alu::Xor),
            Op::I(I::Ori) => imm64(self, Alu::Or),
            Op::I(I::Andi) => imm64(self, Alu::And),
            Op::I(I::Slti) => set(self, Cond::L, true),
            Op::I(I::Sltiu) => set(self, Cond::B, true),
            Op::I(I::Slli) => shift(self, W::B64, Shift::Shl, false),
            Op::I(I::Srli) => shift(self, W::B64, Shift::Shr, false),
            Op::I(I::Srai) => shift(self, W::B64, Shift::Sar, false),
            Op::I(I::Add) => a64(self, Alu::Add),
            Op::I(I::Sub) => a64(self, Alu::Sub),
            Op::I(I::Xor) => a64(self, Alu::Xor),
            Op::I(I::Or) => a64(self, Alu::Or),
            Op::I(I::And) => a64(self, Alu::And),
            Op::I(I::Sll) => shift(self, W::B64, Shift::Shl, true),
            Op::I(I::Srl) => shift(self, W::B64, Shift::Shr, true),
            Op::I(I::Sra) => shift(self, W::B64, Shift::Sar, true),
            Op::I(I::Slt) => set(self, Cond::L, false),
            Op::I(I::Sltu) => set(self, Cond::B, false),
            Op::I(I::Addiw) => {
                let t = self.target(rd, None);
                self.get(t, rs1);
                self.a.alu_imm(W::B32, Alu::Add, Rm::Reg(t), imm);
                self.a.movsx(W::B32, t, Rm::Reg(t));
                self.put(rd, t);
            }
            Op::I(I::Slliw) => shift(self, W::B32, Shift::Shl, false),
            Op::I(I::Srliw) => shift(self, W::B32, Shift::Shr, false),
            Op::I(I::Sraiw) => shift(self, W::B32, Shift::Sar, false),
            Op::I(I::Addw) => a32(self, Alu::Add),
            Op::I(I::Subw) => a32(self, Alu::Sub),
            Op::I(I::Sllw) => shift(self, W::B32, Shift::Shl, true),
            Op::I(I::Srlw) => shift(self, W::B32, Shift::Shr, true),
            Op::I(I::Sraw) => shift(self, W::B32, Shift::Sar, true),
            Op::I(I::Fence) => {}
            Op::M(M::Mul) => {
                let t = self.target(rd, Some(rs2));
                self.get(t, rs1);
                let r = self.rm(rs2);
                self.a.imul(W::B64, t, r);
                self.put(rd, t);
            }
            Op::M(M::Mulw) => {
                let t = self.target(rd, Some(rs2));
                self.get(t, rs1);
                let r = self.rm(rs2);
                self.a.imul(W::B32, t, r);
                self.a.movsx(W::B32, t, Rm::Reg(t));
                self.put(rd, t);
            }
            Op::M(op @ (M::Mulh | M::Mulhu)) => {
                self.get(RAX, rs1);
                let r = self.rm(rs2);
                self.a.mul_wide(op == M::Mulh, r);
                self.put(rd, RDX);
            }
            Op::M(M::Mulhsu) => {
                // Signed rs1 times unsigned rs2: the unsigned high half, less rs2 when
                // rs1 is negative.
                self.get(RAX, rs1);
                let r = self.rm(rs2);
                self.a.mul_wide(false, r);
                self.get(RCX, rs1);
                self.a.shift_imm(W::B64, Shift::Sar, Rm::Reg(RCX), 63);
                self.a.alu(W::B64, Alu::And, RCX, r);
                self.a.alu(W::B64, Alu::Sub, RDX, Rm::Reg(RCX));
                self.put(rd, RDX);
            }
            Op::M(op @ (M::Div | M::Divu | M::Rem | M::Remu)) => {
                self.divide(W::B64, op, rs1, rs2);
                self.put(rd, RAX);
            }
            Op::M(op @ (M::Divw | M::Divuw | M::Remw | M::Remuw)) => {
                self.divide(W::B32, op, rs1, rs2);
                self.a.movsx(W::B32, RAX, Rm::Reg(RAX));
                self.put(rd, RAX);
            }
            op => unreachable!("{op:?} is not translated as ALU"),
        }
    }

    /// rax = the quotient or remainder (by `op`) of rs1 by rs2, at width `w` (for 32
    /// bits the upper half of rax is left for the caller to sign-extend). RISC-V's
    /// division never traps: a zero divisor gives a quotient of all ones and the dividend
    /// as remainder, and the signed overflow (most negative / -1) gives the dividend and
    /// 0. x86's `div` faults on both, so they are taken apart first.
    fn divide(&mut self, w: W, op: M, rs1: u8, rs2: u8) {
        let signed = matches!(op, M::Div | M::Rem | M::Divw | M::Remw);
        let quotient = matches!(op, M::Div | M::Divu | M::Divw | M::Divuw);
        self.get(RCX, rs2);
        self.get(RAX, rs1);
        self.a.test(w, Rm::Reg(RCX), RCX);
        let by_zero = self.a.jcc_fwd(Cond::E);
        let mut done = Jumps::default();
        if signed {
            // Divisor -1: the quotient is the negated dividend (wrapping, which is the
            // overflow case's result too) and the remainder 0.
            self.a.alu_imm(w, Alu::Cmp, Rm::Reg(RCX), -1);
            let general = self.a.jcc_fwd(Cond::Ne);
            if quotient {
                self.a.neg(w, Rm::Reg(RAX));
            } else {
                self.a.mov_imm(RAX, 0);
            }
            done.push(self.a.jmp_fwd());
            self.a.bind(general);
            self.a.sign_extend_rax(w);
        } else {
            self.a.mov_imm(RDX, 0);
        }
        self.a.div(w, signed, Rm::Reg(RCX));
        if !quotient {
            self.a.mov_rr(RAX, RDX);
        }
        done.push(self.a.jmp_fwd());
        self.a.bind(by_zero);
        if quotient {
            // All ones (for 32 bits, sign-extended by the caller to all ones as well).
            self.a.mov_imm(RAX, u64::MAX);
        }
        // (The remainder of a division by zero is the dividend, already in rax.)
        for j in done.iter() {
            self.a.bind(j);
        }
    }

    /// An A instruction inline, as the interpreter's `exec_a` runs it when nothing traps
    /// and no TLB is filled; returns the jumps to take to [`exec_helper`] instead (the
    /// address misaligned, or a TLB entry the interpreter would use missing or not
    /// reachable inline). LR loads through the load TLB and reserves the address; SC
    /// stores through the store TLB when the reservation is that address, and either way
    /// drops it (failing, it touches no memory); an AMO needs both the store entry (the
    /// interpreter checks it first) and the load entry, reads the old value through the
    /// one and writes the new through the other, as the interpreter does. The helper
    /// runs the whole instruction again from the start, so a miss leaves nothing half
    /// done (the old value waits in `Jit::scratch`, which only translated code uses).
    fn atomic(&mut self, d: Insn) -> Jumps {
        use crate::hart::a::A::*;
        let Op::A(op) = d.op else {
            unreachable!("atomics are A")
        };
        let word = op.is_word();
        let (size, w) = if word { (4u8, W::B32) } else { (8, W::B64) };
        let reservation = Rm::at(RBX, disp(offset_of!(Hart, reservation)));
        let scratch = Rm::at(
            RBX,
            disp(offset_of!(Hart, jit) + offset_of!(super::Jit, scratch)),
        );
        let mut misses = Jumps::default();
        // rax = address; misaligned ones trap in the interpreter.
        self.get(RAX, d.rs1);
        self.a.test_al(size - 1);
        misses.push(self.a.jcc_fwd(Cond::Ne));
        let at = Rm::indexed(RCX, RAX, 1);
        match op {
            LrW | LrD => {
                misses.push(tlb_hit(&mut self.a, RAX, 0, false, size));
                // Not rax: it is the address to reserve.
                let t = match self.map[d.rd as usize] {
                    Some(h) if d.rd != 0 => h,
                    _ => RDX,
                };
                match word {
                    true => self.a.movsx(W::B32, t, at),
                    false => self.a.mov_load(W::B64, t, at),
                }
                self.a.mov_store(W::B64, reservation, RAX);
                self.put(d.rd, t);
            }
            ScW | ScD => {
                self.a.alu(W::B64, Alu::Cmp, RAX, reservation);
                let fail = self.a.jcc_fwd(Cond::Ne);
                misses.push(tlb_hit(&mut self.a, RAX, 0, true, size));
                let src = self.in_register(d.rs2);
                self.a.mov_store(w, at, src);
                // rd = 0 (success), 1 (failure); either way no reservation is left.
                let t = self.target(d.rd, Some(src));
                self.a.mov_imm(t, 0);
                let done = self.a.jmp_fwd();
                self.a.bind(fail);
                self.a.mov_imm(t, 1);
                self.a.bind(done);
                self.a.mov_imm(RCX, crate::hart::NO_RESERVATION);
                self.a.mov_store(W::B64, reservation, RCX);
                self.put(d.rd, t);
            }
            _ => {
                // The load entry first, its host address kept, then the store entry's.
                misses.push(tlb_hit(&mut self.a, RAX, 0, false, size));
                self.a.lea_indexed(RCX, RCX, RAX);
                self.a.mov_store(W::B64, scratch, RCX);
                misses.push(tlb_hit(&mut self.a, RAX, 0, true, size));
                // old (zero-extended for a word) to the scratch, new into rdx.
                self.a.mov_load(W::B64, RDX, scratch);
                self.a.mov_load(w, RDX, Rm::at(RDX, 0));
                self.a.mov_store(W::B64, scratch, RDX);
                let src = self.rm(d.rs2);
                match op {
                    AmoswapW | AmoswapD => self.a.mov_load(w, RDX, src),
                    AmoaddW | AmoaddD => self.a.alu(w, Alu::Add, RDX, src),
                    AmoxorW | AmoxorD => self.a.alu(w, Alu::Xor, RDX, src),
                    AmoandW | AmoandD => self.a.alu(w, Alu::And, RDX, src),
                    AmoorW | AmoorD => self.a.alu(w, Alu::Or, RDX, src),
                    _ => {
                        // new = src where it wins the comparison with old, else old.
                        let take_src = match op {
                            AmominW | AmominD => Cond::G,
                            AmomaxW | AmomaxD => Cond::L,
                            AmominuW | AmominuD => Cond::A,
                            _ => Cond::B,
                        };
                        self.a.alu(w, Alu::Cmp, RDX, src);
                        self.a.cmov(w, take_src, RDX, src);
                    }
                }
                self.a.mov_store(w, at, RDX);
                // rd = old, sign-extended from a word.
                let t = if d.rd == 0 {
                    RDX
                } else {
                    self.target(d.rd, None)
                };
                match word {
                    true => self.a.movsx(W::B32, t, scratch),
                    false => self.a.mov_load(W::B64, t, scratch),
                }
                self.put(d.rd, t);
            }
        }
        misses
    }

    /// The CSR instructions translated code runs itself, and Linux runs most (3.2 M of
    /// them went to the helper in the rustc workload, `sstatus` 1.7 M of them): reads and
    /// writes of the trap registers (`sscratch`, `sepc`, `scause`, `stval` and their M-mode
    /// twins), reads of `sstatus`, and writes of `sstatus` that set no SIE (clearing SIE
    /// around every stretch without interrupts, setting and clearing SUM around every
    /// access to user memory). Each checks the privilege first; a write of `sstatus`
    /// that would set SIE (the interpreter then looks for a pending interrupt) goes to
    /// the helper, as does an access from too low a privilege: the jumps returned lead
    /// to [`exec_helper`] running the whole instruction, since nothing is changed before
    /// them. `None` for the instructions left to the helper whole.
    ///
    /// An `sstatus` write changes the data context (`Mmu::update_ctx`) in its SUM and
    /// MXR bits alone, which are `mstatus`'s bits 18 and 19 moved to 59 and 60 whatever
    /// the privilege; the write updates them with `mstatus`.
    fn csr(&mut self, d: Insn) -> Option<Jumps> {
        const SUM_MXR: u64 = MSTATUS_SUM | MSTATUS_MXR;
        const CTX_SHIFT: u8 = 59 - 18;
        const _: () = {
            // The masks fit the immediates they are used as; what a write can set, a read sees.
            assert!(SSTATUS_WRITABLE < 1 << 31 && MSTATUS_SIE < 0x80);
            assert!(SSTATUS_WRITABLE & !SSTATUS_VISIBLE == 0);
            assert!(SUM_MXR == 3 << 18 && MSTATUS_FS == 3 << 13);
        };
        let Op::Csr(op) = d.op else { return None };
        let csr = d.imm as u16;
        let csrs = offset_of!(Hart, csr);
        let field = |f: usize| disp(csrs + f);
        let (at, status, epc) = match csr {
            num::SSTATUS => (field(offset_of!(Csrs, mstatus)), true, false),
            num::SSCRATCH => (field(offset_of!(Csrs, sscratch)), false, false),
            num::SEPC => (field(offset_of!(Csrs, sepc)), false, true),
            num::SCAUSE => (field(offset_of!(Csrs, scause)), false, false),
            num::STVAL => (field(offset_of!(Csrs, stval)), false, false),
            num::MSCRATCH => (field(offset_of!(Csrs, mscratch)), false, false),
            num::MEPC => (field(offset_of!(Csrs, mepc)), false, true),
            num::MCAUSE => (field(offset_of!(Csrs, mcause)), false, false),
            num::MTVAL => (field(offset_of!(Csrs, mtval)), false, false),
            _ => return None,
        };
        let imm = matches!(op, Csr::Rwi | Csr::Rsi | Csr::Rci);
        let writes = matches!(op, Csr::Rw | Csr::Rwi) || d.rs1 != 0;
        let mut slow = Jumps::default();
        // The privilege: at least the CSR's (its number's bits 9:8).
        let level = (csr >> 8 & 3) as i32;
        self.a
            .movzx(W::B8, RAX, Rm::at(RBX, disp(offset_of!(Hart, prv))));
        self.a.alu_imm(W::B32, Alu::Cmp, Rm::Reg(RAX), level);
        slow.push(self.a.jcc_fwd(Cond::B));
        // rcx = the operand; rdx = the new value.
        if writes {
            if imm {
                self.a.mov_imm(RCX, d.rs1 as u64);
            } else {
                self.get(RCX, d.rs1);
            }
            if status {
                self.a
                    .alu_imm(W::B64, Alu::And, Rm::Reg(RCX), SSTATUS_WRITABLE as i32);
            }
            match op {
                Csr::Rw | Csr::Rwi if status => {
                    self.a.mov_load(W::B64, RDX, Rm::at(RBX, at));
                    self.a
                        .alu_imm(W::B64, Alu::And, Rm::Reg(RDX), !(SSTATUS_WRITABLE as i32));
                    self.a.alu(W::B64, Alu::Or, RDX, Rm::Reg(RCX));
                }
                Csr::Rw | Csr::Rwi => self.a.mov_rr(RDX, RCX),
                Csr::Rs | Csr::Rsi => {
                    self.a.mov_load(W::B64, RDX, Rm::at(RBX, at));
                    self.a.alu(W::B64, Alu::Or, RDX, Rm::Reg(RCX));
                }
                Csr::Rc | Csr::Rci => {
                    self.a.alu_imm(W::B64, Alu::Xor, Rm::Reg(RCX), -1);
                    self.a.mov_load(W::B64, RDX, Rm::at(RBX, at));
                    self.a.alu(W::B64, Alu::And, RDX, Rm::Reg(RCX));
                }
            }
            if epc {
                self.a.alu_imm(W::B64, Alu::And, Rm::Reg(RDX), -2);
            }
            let may_enable = match op {
                Csr::Rc | Csr::Rci => false,
                Csr::Rsi => d.rs1 as u64 & MSTATUS_SIE != 0,
                _ => true,
            };
            if status && may_enable {
                // SIE set where it was clear: the helper's (a pending interrupt is taken
                // right after).
                self.a.mov_load(W::B64, RAX, Rm::at(RBX, at));
                self.a.alu_imm(W::B64, Alu::Xor, Rm::Reg(RAX), -1);
                self.a.alu(W::B64, Alu::And, RAX, Rm::Reg(RDX));
                self.a.test_al(MSTATUS_SIE as u8);
                slow.push(self.a.jcc_fwd(Cond::Ne));
            }
        }
        // rd = the old value (as read: `sstatus` is `mstatus` seen through its mask, with
        // SD set when FS is 3).
        if d.rd != 0 {
            let t = if status { RAX } else { self.target(d.rd, None) };
            self.a.mov_load(W::B64, t, Rm::at(RBX, at));
            if status {
                self.a.mov_rr(RCX, RAX);
                self.a.shift_imm(W::B64, Shift::Shr, Rm::Reg(RCX), 13);
                self.a.alu_imm(W::B32, Alu::And, Rm::Reg(RCX), 3);
                // FS = 3 gives 4, the rest less: bit 2 is SD.
                self.a.alu_imm(W::B32, Alu::Add, Rm::Reg(RCX), 1);
                self.a.shift_imm(W::B64, Shift::Shl, Rm::Reg(RCX), 61);
                self.a.alu(W::B64, Alu::Or, RAX, Rm::Reg(RCX));
                self.a.mov_imm(RCX, SSTATUS_VISIBLE);
                self.a.alu(W::B64, Alu::And, RAX, Rm::Reg(RCX));
            }
            self.put(d.rd, t);
        }
        if writes {
            self.a.mov_store(W::B64, Rm::at(RBX, at), RDX);
            if status && !matches!(op, Csr::Rsi | Csr::Rci) {
                // The data context's SUM and MXR bits follow the register's (an immediate
                // set or clear cannot reach them).
                self.a.shift_imm(W::B64, Shift::Shr, Rm::Reg(RDX), 18);
                self.a.alu_imm(W::B32, Alu::And, Rm::Reg(RDX), 3);
                self.a
                    .shift_imm(W::B64, Shift::Shl, Rm::Reg(RDX), 18 + CTX_SHIFT);
                self.a.mov_imm(RAX, !(SUM_MXR << CTX_SHIFT));
                self.a
                    .alu(W::B64, Alu::And, RAX, Rm::at(RBX, data_ctx_at()));
                self.a.alu(W::B64, Alu::Or, RAX, Rm::Reg(RDX));
                self.a.mov_store(W::B64, Rm::at(RBX, data_ctx_at()), RAX);
            }
        }
        Some(slow)
    }

    /// A load or store through the inline TLB (`retired` instructions into the block,
    /// `delta` bytes past its start); returns, for a load, its call to the load helper,
    /// for a store, the jump from its miss.
    fn memory(&mut self, d: Insn, retired: usize, delta: i64) -> Result<LoadCall, usize> {
        let dirty = self.dirty;
        let Op::I(op) = d.op else {
            unreachable!("memory operations are RV64I")
        };
        let (size, store) = match op {
            I::Lb | I::Lbu => (1u8, false),
            I::Lh | I::Lhu => (2, false),
            I::Lw | I::Lwu => (4, false),
            I::Ld => (8, false),
            I::Sb => (1, true),
            I::Sh => (2, true),
            I::Sw => (4, true),
            _ => (8, true),
        };
        // The virtual address is base + imm: the base in its own host register, or in
        // rax (a load's call to the helper computes the address into rax).
        let base = match self.map[d.rs1 as usize] {
            Some(h) if d.rs1 != 0 => h,
            _ => {
                self.get(RAX, d.rs1);
                RAX
            }
        };
        let miss = tlb_hit(&mut self.a, base, d.imm, store, size);
        let at = Rm::Mem {
            base: RCX,
            index: Some((base, 1)),
            disp: d.imm,
        };
        if store {
            let w = match size {
                1 => W::B8,
                2 => W::B16,
                4 => W::B32,
                _ => W::B64,
            };
            let src = self.in_register(d.rs2);
            self.a.mov_store(w, at, src);
        } else {
            let t = if d.rd == 0 {
                RAX
            } else {
                self.target(d.rd, None)
            };
            match op {
                I::Lb => self.a.movsx(W::B8, t, at),
                I::Lh => self.a.movsx(W::B16, t, at),
                I::Lw => self.a.movsx(W::B32, t, at),
                I::Ld => self.a.mov_load(W::B64, t, at),
                I::Lbu => self.a.movzx(W::B8, t, at),
                I::Lhu => self.a.movzx(W::B16, t, at),
                _ => self.a.mov_load(W::B32, t, at),
            }
            let join = self.a.here();
            self.put(d.rd, t);
            // Every miss of the inline path (`base` still the base) calls the helper.
            let call = LoadCall {
                from: miss,
                base,
                off: d.imm,
                declined: usize::MAX,
                op,
                size,
                retired,
                delta,
                dirty,
                t,
                join,
            };
            return Ok(call);
        }
        // A store that misses runs through the helper (see `HelperCall`).
        Err(miss)
    }
}
